"""What is on the wire, and is it authentic? Pure data and functions, no I/O.

- :mod:`.frames`: the five ``ablo.source.v1`` frames and the connection constants;
- :mod:`.bodies`: the Data Source request bodies and the answers a handler gives;
- :mod:`.signing`: Standard Webhooks verification (and signing, for the engine's side);
- :mod:`.session`: the connector's side of one connection, as a sans-I/O state machine;
- :mod:`.strict_json`: JSON as the engine (JavaScript) reads and writes it.
"""
