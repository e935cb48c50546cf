"""How do we stay connected and stop cleanly? The connector as a long-lived process.

- :mod:`.config`: every setting, its default and its command-line form;
- :mod:`.connection`: one socket, from dial to close;
- :mod:`.supervisor`: :class:`~.supervisor.Connector`, reconnects, HA, draining;
- :mod:`.signals`: SIGTERM/SIGINT for the daemon;
- :mod:`.transport`: writes of one loop turn in one send;
- :mod:`.failures`: why a connection failed, as a short reason for ``/readyz``;
- :mod:`.ha`: leader locks for standby replicas (:mod:`.ha_mysql`: the ``mysql://`` one).
"""
