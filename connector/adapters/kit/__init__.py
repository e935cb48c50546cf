"""What every adapter shares, whatever it talks to (SQLAlchemy, Django's ORM).

Nothing here imports a database library: each adapter renders these rules
in its own terms (:mod:`.listing` for ``list`` pages).
"""
