"""A small Django app the Django adapter's tests serve (see tests/django_project.py)."""
