"""Models with what the ORM runs on a write: a save() override, a post_save
signal of the app's own, a default callable, auto_now, a validator, a unique
field and a foreign key."""

from __future__ import annotations

import secrets
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.signals import post_save
from django.dispatch import receiver

#: The ids the app's own post_save receiver saw, in order.
SAVED: list[str] = []


def new_token() -> str:
    return secrets.token_hex(4)


def not_forbidden(value: str) -> None:
    if value == "forbidden":
        raise ValidationError("this title is forbidden", code="forbidden")


class Project(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=100)

    class Meta:
        app_label = "django_todo"


class Task(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    title = models.TextField(null=True, blank=True, validators=[not_forbidden])
    priority = models.IntegerField(null=True, blank=True)
    done = models.BooleanField(default=False)
    slug = models.CharField(max_length=100, unique=True, null=True, blank=True)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE)
    token = models.CharField(max_length=16, default=new_token)
    search = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "django_todo"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.search = (self.title or "").lower()  # what the app's save() adds
        super().save(*args, **kwargs)


@receiver(post_save, sender=Task)
def _saved(sender: Any, instance: Task, **_: Any) -> None:
    SAVED.append(instance.pk)


class Note(models.Model):
    """A note that outlives its task (``SET_NULL``: a queryset update, no
    signal), with values a trigger stores as text or JSON."""

    id = models.CharField(primary_key=True, max_length=64)
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.SET_NULL)
    amount = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    extra = models.JSONField(null=True, blank=True)
    written_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "django_todo"
