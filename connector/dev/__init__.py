"""The engine's side, for development and tests: shipped, beside the layers.

- :mod:`.engine`: a local engine that connectors dial (no account, no cloud);
- :mod:`.demo`: the SQLite database ``ablo-connector dev`` serves.
"""
