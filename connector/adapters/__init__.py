"""Serve a database with no handler code.

``connector.adapters.sql`` serves SQLite, PostgreSQL, MySQL and MariaDB
tables through SQLAlchemy Core. Adapters are imported only when used, so a connector with
its own handler never loads a database library.
"""
