"""Every save of a task leaves an audit row, whoever saved it."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import AuditEntry, Task


@receiver(post_save, sender=Task)
def audit_task_save(sender: type[Task], instance: Task, created: bool, **kwargs: Any) -> None:
    AuditEntry.objects.create(
        task_id=instance.pk, action="created" if created else "updated", title=instance.title
    )
