"""Who may dial? Leader election for standby replicas.

The engine keeps one connector per source, so replicas must not all dial:
with ``--ha-lock URL`` a replica dials only while it holds the lock, and the
others wait. A backend is a :class:`LeaderLock`: try to take the lock, say
when it was lost, give it back. ``file:///path`` (``flock``, for replicas on
one host), ``postgresql://…`` (a session advisory lock, for replicas on
any hosts that reach the database) and ``k8s://namespace/lease`` (a
Kubernetes Lease); others plug in through :func:`lock_from_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["FileLock", "LeaderLock", "LeaseLock", "PostgresLock", "lock_from_url"]

log = logging.getLogger("connector.ha")


class LeaderLock:
    """One lock per source, held by at most one replica at a time."""

    description = "lock"
    # After taking the lock, wait this long before dialing: time for a leader
    # that lost the lock to notice and fence itself, so two never overlap.
    settle_delay = 0.0

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits for a holder."""
        raise NotImplementedError

    async def wait_lost(self) -> None:
        """Return when the lock is no longer ours (backend gone, lock stolen)."""
        raise NotImplementedError

    async def release(self) -> None:
        """Give the lock back at once, so the next replica can take over."""
        raise NotImplementedError


class FileLock(LeaderLock):
    """An exclusive ``flock`` on a file, for replicas on one host.

    The lock dies with the process (the kernel drops it), so a killed leader
    is replaced at the next standby's attempt. Deleting or replacing the file
    counts as losing the lock: the leader fences itself.
    """

    def __init__(self, path: str, *, check_interval: float = 0.25) -> None:
        self.path = path
        self.description = f"file://{path}"
        self._check_interval = check_interval
        self.settle_delay = 2 * check_interval
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not self._same_file(fd):  # replaced between open and flock: try again later
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    async def wait_lost(self) -> None:
        while self._fd is not None and self._same_file(self._fd):
            await asyncio.sleep(self._check_interval)

    async def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None


class PostgresLock(LeaderLock):
    """A session-level advisory lock on a dedicated PostgreSQL connection.

    The lock lives exactly as long as the session: a killed leader's lock is
    released by the server when its connection drops, and a leader that
    loses its connection (TCP keepalives and a 1 s probe notice) has lost the
    lock. The lock key is derived from ``name`` (the URL's ``name`` query
    parameter, default ``default``), never from the API key: give each
    source's replica group its own name.
    """

    def __init__(self, conninfo: str, name: str, *, probe_interval: float = 1.0) -> None:
        self._conninfo = conninfo
        self.name = name
        self.key = int.from_bytes(
            hashlib.sha256(f"ablo-connector:{name}".encode()).digest()[:8], "big", signed=True
        )
        self.description = f"postgresql advisory lock {name!r}"
        self._probe_interval = probe_interval
        self.settle_delay = 0.0  # the server drops a dead session's lock itself
        self._connection: Any = None

    async def try_acquire(self) -> bool:
        import psycopg

        try:
            connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=5, keepalives=1,
                keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                application_name="ablo-connector-ha",
            )  # fmt: skip
        except psycopg.Error as error:
            raise OSError(f"cannot connect to PostgreSQL: {error}".strip()) from None
        try:
            cursor = await connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cursor.fetchone()
        except psycopg.Error as error:
            await connection.close()
            raise OSError(f"advisory lock query failed: {error}".strip()) from None
        if not row or not row[0]:
            await connection.close()
            return False
        self._connection = connection
        return True

    async def wait_lost(self) -> None:
        import psycopg

        while self._connection is not None:
            await asyncio.sleep(self._probe_interval)
            try:
                await asyncio.wait_for(
                    self._connection.execute("SELECT 1"), self._probe_interval * 3
                )
            except (psycopg.Error, OSError, TimeoutError) as error:
                log.warning("the PostgreSQL session holding the HA lock failed: %s", error)
                return

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            with contextlib.suppress(Exception):
                await connection.close()


def lock_from_url(url: str) -> LeaderLock:
    """The lock backend a ``--ha-lock`` URL names; ValueError if unknown."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qsl(parts.query, keep_blank_values=True)
        name = next((value for key, value in query if key == "name"), "default") or "default"
        rest = urlencode([(key, value) for key, value in query if key != "name"])
        return PostgresLock(urlunsplit(parts._replace(query=rest)), name)
    if parts.scheme == "k8s":
        segments = [unquote(p) for p in (parts.netloc + parts.path).split("/") if p]
        if len(segments) not in (1, 2):
            raise ValueError(
                f"--ha-lock {url!r}: use k8s://namespace/lease-name (or k8s:///lease-name)"
            )
        namespace, name = (None, segments[0]) if len(segments) == 1 else (segments[0], segments[1])
        api = os.environ.get("ABLO_K8S_API_URL")  # tests and out-of-cluster use
        if api:
            return LeaseLock(
                api, namespace or "default", name, token=os.environ.get("ABLO_K8S_TOKEN")
            )
        return _DeferredLease(namespace, name)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if not path or parts.netloc not in ("", "localhost"):
            raise ValueError(f"--ha-lock {url!r}: use file:///absolute/path")
        return FileLock(path)
    raise ValueError(
        f"--ha-lock {url!r}: unsupported scheme {parts.scheme!r} (supported: file://, postgresql://, k8s://)"
    )


class LeaseLock(LeaderLock):
    """A Kubernetes ``coordination.k8s.io/v1`` Lease, as client-go's leader
    election uses it: take the lease when it is free or expired, renew it
    every ``retry_period``, count it lost when it could not be renewed within
    ``renew_deadline`` (shorter than ``lease_duration``, so the leader has
    fenced itself before anyone may take over). Plain HTTPS to the API
    server with the pod's service account; no client library.
    """

    def __init__(
        self,
        api_url: str,
        namespace: str,
        name: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        self._api = api_url.rstrip("/")
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._token = token
        self._ssl = ssl_context
        self.identity = identity or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.description = f"Kubernetes lease {namespace}/{name}"
        self._held = False
        self._last_renewed = 0.0
        self._lease: dict[str, Any] | None = None

    @classmethod
    def in_cluster(cls, namespace: str | None, name: str) -> LeaseLock:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        account = "/var/run/secrets/kubernetes.io/serviceaccount"
        if not host:
            raise ValueError(
                "k8s:// locks need to run in a pod (KUBERNETES_SERVICE_HOST is not set)"
            )
        with open(f"{account}/token", encoding="utf-8") as handle:
            token = handle.read().strip()
        if namespace is None:
            with open(f"{account}/namespace", encoding="utf-8") as handle:
                namespace = handle.read().strip()
        context = ssl.create_default_context(cafile=f"{account}/ca.crt")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", namespace, name, token=token, ssl_context=context)

    # -- HTTP, in a worker thread so the event loop never blocks

    def _request_sync(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self._api + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._ssl) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None
        except (urllib.error.URLError, TimeoutError, ValueError) as error:
            raise OSError(f"Kubernetes API unreachable: {error}") from None

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request_sync, method, path, body)

    # -- lease logic

    def _spec(self, *, acquire: bool, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        spec["acquireTime"] = (
            now if acquire else (self._lease or {}).get("spec", {}).get("acquireTime", now)
        )
        return spec

    async def try_acquire(self) -> bool:
        status, lease = await self._request("GET", self._path)
        if status == 404:
            name = self._path.rsplit("/", 1)[1]
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
                    "spec": self._spec(acquire=True, transitions=0)}  # fmt: skip
            status, created = await self._request("POST", self._path.rsplit("/", 1)[0], body)
            return self._took(status, created)
        if status != 200 or not isinstance(lease, dict):
            raise OSError(f"reading the lease failed: HTTP {status}")
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if holder and holder != self.identity and not _expired(spec):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        lease["spec"] = self._spec(acquire=holder != self.identity, transitions=transitions)
        status, updated = await self._request("PUT", self._path, lease)  # carries resourceVersion
        return self._took(status, updated)

    def _took(self, status: int, lease: Any) -> bool:
        if status in (200, 201) and isinstance(lease, dict):
            self._lease = lease
            self._held = True
            self._last_renewed = time.monotonic()
            return True
        if status == 409:  # another replica won the race
            return False
        raise OSError(f"writing the lease failed: HTTP {status}")

    async def _renew(self) -> bool:
        lease = self._lease
        if lease is None:
            return False
        spec = lease.get("spec") or {}
        renewed = dict(
            lease, spec=dict(spec, renewTime=_micro_time(), holderIdentity=self.identity)
        )
        try:
            status, updated = await self._request("PUT", self._path, renewed)
        except OSError as error:
            log.warning("renewing %s failed: %s", self.description, error)
            return False
        if status == 200 and isinstance(updated, dict):
            self._lease = updated
            self._last_renewed = time.monotonic()
            return True
        if status == 409:  # someone else wrote the lease: it is not ours any more
            self._lease = None
        log.warning("renewing %s failed: HTTP %s", self.description, status)
        return False

    async def wait_lost(self) -> None:
        while self._held:
            await asyncio.sleep(self.retry_period)
            if not await self._renew() and (
                self._lease is None or time.monotonic() - self._last_renewed > self.renew_deadline
            ):
                self._held = False

    async def release(self) -> None:
        lease, self._lease, self._held = self._lease, None, False
        if lease is None:
            return
        spec = dict(lease.get("spec") or {}, holderIdentity="", leaseDurationSeconds=1)
        with contextlib.suppress(OSError):
            await self._request("PUT", self._path, dict(lease, spec=spec))


def _micro_time(when: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expired(spec: dict[str, Any]) -> bool:
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    try:
        moment = datetime.strptime(renewed.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            moment = datetime.strptime(renewed.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            return True
    duration = float(spec.get("leaseDurationSeconds") or 15)
    return time.time() > moment.timestamp() + duration


class _DeferredLease(LeaderLock):
    """A Lease whose in-cluster credentials are read when first used, so a
    configuration can be validated outside the pod."""

    def __init__(self, namespace: str | None, name: str) -> None:
        self._namespace, self._name = namespace, name
        self.description = f"Kubernetes lease {namespace or '(pod namespace)'}/{name}"
        self._lease: LeaseLock | None = None

    def _resolve(self) -> LeaseLock:
        if self._lease is None:
            try:
                self._lease = LeaseLock.in_cluster(self._namespace, self._name)
            except (ValueError, OSError) as error:
                raise OSError(str(error)) from None
        return self._lease

    async def try_acquire(self) -> bool:
        return await self._resolve().try_acquire()

    async def wait_lost(self) -> None:
        await self._resolve().wait_lost()

    async def release(self) -> None:
        if self._lease is not None:
            await self._lease.release()
