"""No pages: the project is served through the connector."""

urlpatterns: list[object] = []
