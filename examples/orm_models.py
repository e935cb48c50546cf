"""An application's SQLAlchemy classes, served as they are.

    python -m examples.orm_models sqlite:///orm.db         # create the tables
    ablo-connector migrate --database-url sqlite:///orm.db --models examples.orm_models:Base
    ablo-connector dev --database-url sqlite:///orm.db --models examples.orm_models:Base

serves ``task`` (class ``Task``), ``project`` (class ``Project``) and
``member`` (class ``Person``, named by ``__ablo_model__``). A ``CREATE``
of a task needs only its id and title: ``slug``, ``createdAt`` and
``updatedAt`` are the class's Python-side defaults, which the connector
applies as the application's own inserts would, and every ``UPDATE``
renews ``updatedAt``. ``secret`` is never served (``__ablo_exclude__``),
nor are the relationship, the hybrid property and the column property.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def slug_of_title(context: Any) -> str:
    """A context-sensitive default: the slug of the title being inserted."""
    title = str(context.get_current_parameters()["title"])
    return "-".join(title.lower().split())


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    tasks: Mapped[list[Task]] = relationship(back_populates="project")


class Task(Base):
    __tablename__ = "tasks"
    __ablo_exclude__ = ("secret",)

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    slug: Mapped[str] = mapped_column(sa.String(200), default=slug_of_title)
    done: Mapped[bool] = mapped_column(default=False)
    # The attribute is `due`, the column `due_at`: served as `due`.
    due: Mapped[dt.datetime | None] = mapped_column("due_at", sa.DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), default=utc_now, onupdate=utc_now
    )
    secret: Mapped[str | None] = mapped_column(sa.String(200))
    project_id: Mapped[str | None] = mapped_column(sa.ForeignKey("projects.id"))
    project: Mapped[Project | None] = relationship(back_populates="tasks")
    title_length: Mapped[int] = column_property(sa.func.length(title))

    @hybrid_property
    def late(self) -> bool:
        return self.due is not None and not self.done and self.due < utc_now()


class Person(Base):
    __tablename__ = "people"
    __ablo_model__ = "member"
    __ablo_typename__ = "Member"

    # The primary key's attribute is `handle`: served as the row id.
    handle: Mapped[str] = mapped_column("user_handle", sa.String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(200))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m examples.orm_models DATABASE_URL")
    # The connector's engine: a postgresql:// or mysql:// URL gets the driver
    # the connector installs, as the connector itself would connect.
    from connector.adapters.sql import create_database_engine

    engine = create_database_engine(sys.argv[1])
    Base.metadata.create_all(engine)
    engine.dispose()
