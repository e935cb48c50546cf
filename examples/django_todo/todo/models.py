"""A task list whose rules live in the models, and apply to the engine's writes too.

The primary key is a CharField, not a UUIDField: the engine sends string ids
its clients chose (``t1`` as readily as a UUID), and a CharField keeps each
exactly as sent, so a row created through the engine loads back under the
id it was created with. A UUIDField would refuse an id that is not a UUID
and rewrite one in another spelling (upper case, braces). Rows the
application creates itself get a uuid4 default.
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.text import slugify


def new_id() -> str:
    return uuid.uuid4().hex


def validate_title(value: str) -> None:
    if not value.strip():
        raise ValidationError("a task needs a title")


class Task(models.Model):
    id = models.CharField(primary_key=True, max_length=64, default=new_id)
    title = models.CharField(max_length=200, validators=[validate_title])
    slug = models.SlugField(max_length=200, blank=True, editable=False)
    done = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def save(self, *args: object, **kwargs: object) -> None:
        self.slug = slugify(self.title)[:200]
        super().save(*args, **kwargs)

    def __str__(self) -> str:
        return self.title


class AuditEntry(models.Model):
    """One row per save of a task, written by the post_save signal (signals.py)."""

    task_id = models.CharField(max_length=64)
    action = models.CharField(max_length=16)
    title = models.CharField(max_length=200)
    at = models.DateTimeField(auto_now_add=True)
