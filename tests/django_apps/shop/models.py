"""Models the Django adapter's settings tests name in ``settings.ABLO``."""

from __future__ import annotations

import django
from django.db import models


class Project(models.Model):  # type: ignore[misc]
    name = models.CharField(max_length=100)
    internal_notes = models.TextField(blank=True)


class Task(models.Model):  # type: ignore[misc]
    id = models.CharField(primary_key=True, max_length=64)
    title = models.CharField(max_length=200)
    due_at = models.DateTimeField(null=True)
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    watchers = models.ManyToManyField(Project, related_name="watched")


class Camel(models.Model):  # type: ignore[misc]
    """Two fields whose camelCase is the same name."""

    due_at = models.IntegerField()
    dueAt = models.IntegerField()


if django.VERSION >= (5, 2):

    class Line(models.Model):  # type: ignore[misc]
        pk = models.CompositePrimaryKey("order", "number")
        order = models.IntegerField()
        number = models.IntegerField()
