from django.apps import AppConfig


class TodoConfig(AppConfig):
    name = "todo"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the post_save receiver)
