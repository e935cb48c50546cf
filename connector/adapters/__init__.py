"""Serve a database with no handler code.

``connector.adapters.sql`` serves SQLite and PostgreSQL tables through
SQLAlchemy Core. Adapters are imported only when used, so a connector with
its own handler never loads a database library.
"""
