"""A minimal fake of the Kubernetes Lease API: get, create, update with
resourceVersion conflicts. Enough to test leader election without a cluster."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from connector import _http

_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


class FakeLeaseAPI:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.conflicts = 0
        self.down = False
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> FakeLeaseAPI:
        self._server = await _http.start_http_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def _handle(self, request: _http.Request) -> _http.Reply:
        if self.down:
            return _http.Reply.json(503, {"kind": "Status", "code": 503})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _http.Reply.json(401, {"kind": "Status", "code": 401})
        match = _PATH.match(request.path)
        if match is None:
            return _http.Reply.json(404, {"kind": "Status", "code": 404})
        namespace, name = match.groups()
        if request.method == "GET" and name:
            lease = self.leases.get((namespace, name))
            return _http.Reply.json(200, lease) if lease else _http.Reply.json(404, {"code": 404})
        body = json.loads(request.body or b"{}")
        if request.method == "POST" and not name:
            key = (namespace, body["metadata"]["name"])
            if key in self.leases:
                self.conflicts += 1
                return _http.Reply.json(409, {"code": 409, "reason": "AlreadyExists"})
            body["metadata"].update(namespace=namespace, resourceVersion=self._next_version())
            self.leases[key] = body
            return _http.Reply.json(201, body)
        if request.method == "PUT" and name:
            current = self.leases.get((namespace, name))
            if current is None:
                return _http.Reply.json(404, {"code": 404})
            if (
                body.get("metadata", {}).get("resourceVersion")
                != current["metadata"]["resourceVersion"]
            ):
                self.conflicts += 1
                return _http.Reply.json(409, {"code": 409, "reason": "Conflict"})
            body["metadata"]["resourceVersion"] = self._next_version()
            self.leases[(namespace, name)] = body
            return _http.Reply.json(200, body)
        return _http.Reply.json(405, {"code": 405})

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.leases.get((namespace, name))
        return None if lease is None else lease["spec"].get("holderIdentity") or None
