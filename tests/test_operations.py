"""What an operator sees: health, readiness, metrics, systemd notify, check, logs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector import Config, DataSource, SourceError
from connector.adapters.sql import SQLSource
from connector.daemon.connection import open_websocket
from connector.daemon.supervisor import Connector
from connector.dev.engine import DevEngine
from connector.errors import ConnectFailure
from connector.ops import logs
from connector.ops.logs import configure_logging
from connector.wire.frames import RequestFrame
from connector.wire.signing import sign_request
from tests.handlers import TestSource
from tests.helpers import connector_args, eventually, free_port, process

KEY = "sk_test_ops_71c3a0e5"
ENV = {"ABLO_API_KEY": KEY}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, url)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_readyz_follows_the_connection_and_metrics_count_requests() -> None:
    port = free_port()
    engine = DevEngine(KEY, port=port)
    config = Config(
        api_key=KEY,
        base_url=f"http://127.0.0.1:{port}",
        health_addr="127.0.0.1:0",
        request_timeout=0.3,
    )
    connector = Connector(config, TestSource())
    task = asyncio.create_task(connector.run())
    try:
        await eventually(lambda: connector.health is not None and connector.health.port != 0)
        assert connector.health is not None
        base = f"http://127.0.0.1:{connector.health.port}"
        status, body = await get(base + "/readyz")
        assert status == 503
        assert json.loads(body)["state"] in ("connecting", "backoff")
        assert (await get(base + "/healthz"))[0] == 200

        await engine.start()
        await connector.wait_ready(10)
        status, body = await get(base + "/readyz")
        payload = json.loads(body)
        assert status == 200
        assert payload["state"] == "ready" and payload["sourceId"] == "src_dev"
        assert payload["secondsReady"] >= 0

        for _ in range(3):
            await engine.request({"type": "load", "model": "secret_model_name", "id": "row_1"})
        await engine.request({"type": "load", "model": "m", "id": "hang"})
        forged_body = json.dumps({"type": "load", "model": "m", "id": "x"})
        forged = RequestFrame(
            id="f1",
            method="POST",
            url="u",
            headers=sign_request("sk_test_other", "msg_f", forged_body),
            body=forged_body,
        )
        await engine.exchange(forged, "f1")
        await engine.send_raw("not a frame")
        # Frames are read in order: once this is answered, the one above was seen.
        assert (await engine.request({"type": "list", "model": "m"})).status == 200

        status, text = await get(base + "/metrics")
        assert status == 200
        assert _metric(text, "ablo_connector_requests_total", operation="load", status="200") == 3
        assert _metric(text, "ablo_connector_request_timeouts_total") == 1
        assert (
            _metric(
                text, "ablo_connector_signature_failures_total", code="source_signature_invalid"
            )
            == 1
        )
        assert _metric(text, "ablo_connector_frames_rejected_total", reason="malformed") == 1
        assert _metric(text, "ablo_connector_connection_attempts_total", outcome="ready") == 1
        assert _metric(text, "ablo_connector_connection_attempts_total", outcome="failed") >= 1
        assert (
            _metric(
                text, "ablo_connector_connection_state", ablo_connector_connection_state="ready"
            )
            == 1
        )
        assert _metric(text, "ablo_connector_request_duration_seconds_count", operation="load") == 4
        assert "secret_model_name" not in text and "row_1" not in text and KEY not in text

        await engine.close()
        await eventually(lambda: not connector.status.is_ready, timeout=5)
        status, body = await get(base + "/readyz")
        assert status == 503 and json.loads(body)["lastError"]
        status, text = await get(base + "/metrics")
        assert _metric(text, "ablo_connector_seconds_since_last_ready") >= 0
    finally:
        connector.stop()
        await asyncio.wait_for(task, 10)
        await engine.close()


async def test_health_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with process(
            connector_args(
                "http://127.0.0.1:9",
                "tests.handlers:TestSource",
                "--health-addr",
                f"127.0.0.1:{port}",
            ),
            ENV,
        ) as connector:
            assert await connector.wait(10) == 78
            assert "cannot serve health endpoints" in connector.output()


async def test_systemd_notify_ready_watchdog_and_stopping() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        messages: list[str] = []

        def drain() -> list[str]:
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except BlockingIOError:
                    return messages

        try:
            async with (
                DevEngine(KEY) as engine,
                process(
                    connector_args(engine.base_url, "tests.handlers:TestSource"),
                    {**ENV, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
                ) as connector,
            ):
                await engine.wait_attached(10)
                await eventually(lambda: any("READY=1" in m for m in drain()), timeout=5)
                await asyncio.sleep(0.5)
                assert sum("WATCHDOG=1" in m for m in drain()) >= 3
                ready = next(m for m in messages if "READY=1" in m)
                assert "STATUS=ready: serving source src_dev" in ready
                connector.signal(signal.SIGTERM)
                assert await connector.wait(10) == 0
                drain()
                assert any("STOPPING=1" in m for m in messages)
                assert sum("READY=1" in m for m in messages) == 1
        finally:
            sock.close()


class NotifySocket:
    """Stands in for systemd's notify socket: collects what a connector sends."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.messages: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.setblocking(False)

    def received(self) -> list[str]:
        while True:
            try:
                self.messages.append(self._socket.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def count(self, line: str) -> int:
        return sum(line in message.splitlines() for message in self.received())

    def close(self) -> None:
        self._socket.close()


async def test_systemd_notify_ready_from_a_standby_replica(tmp_path: Path) -> None:
    # Under Type=notify a replica that never sends READY=1 fails its start
    # (TimeoutStartSec) and is restarted forever: a standby must send it too.
    lock = f"file://{tmp_path / 'leader.lock'}"
    leader_socket = NotifySocket(tmp_path / "leader")
    standby_socket = NotifySocket(tmp_path / "standby")

    def replica(engine: DevEngine, notify: NotifySocket) -> Any:
        args = connector_args(engine.base_url, "tests.handlers:TestSource", "--ha-lock", lock)
        return process(args, {**ENV, "NOTIFY_SOCKET": notify.path})

    serving = "STATUS=ready: serving source src_dev"
    try:
        async with DevEngine(KEY) as engine, replica(engine, leader_socket) as leader:
            await engine.wait_attached(15)
            await eventually(lambda: leader_socket.count(serving) == 1, timeout=5)
            async with replica(engine, standby_socket):
                await eventually(lambda: standby_socket.count("READY=1") == 1, timeout=10)
                ready = next(m for m in standby_socket.messages if "READY=1" in m)
                assert "STATUS=standby: another replica holds the HA lock" in ready.splitlines()
                assert engine.attaches == 1, "the standby did not dial"

                # The leader stops; the standby takes over and says so, but a
                # started service is never told READY twice.
                leader.signal(signal.SIGTERM)
                assert await leader.wait(10) == 0
                await eventually(lambda: standby_socket.count(serving) == 1, timeout=10)
                assert engine.attaches == 2
                assert standby_socket.count("READY=1") == 1
        assert leader_socket.count("READY=1") == 1
        assert leader_socket.count("STOPPING=1") == 1
    finally:
        leader_socket.close()
        standby_socket.close()


async def test_check_passes_against_the_dev_engine() -> None:
    args = ["check", "--base-url", "BASE", "--handler", "tests.handlers:TestSource", "--register"]
    async with DevEngine(KEY, environment="sandbox") as engine:
        async with process([engine.base_url if a == "BASE" else a for a in args], ENV) as check:
            assert await check.wait(20) == 0, check.output()
            output = check.output()
        assert engine.attaches == 1  # --register registered
    for step in ("configuration", "handler", "proxy", "dns", "tcp", "tls", "websocket", "register"):
        assert step in output
    assert "ok    register: ready" in output
    assert '"source": "src_dev"' in output and '"environment": "sandbox"' in output
    assert "all checks passed" in output
    assert KEY not in output


async def test_check_leaves_a_running_connector_serving() -> None:
    """By default check stops before registering, which would supersede the service."""
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), ENV) as running,
    ):
        await engine.wait_attached(15)
        async with process(["check", "--base-url", engine.base_url], ENV) as check:
            assert await check.wait(20) == 0, check.output()
            output = check.output()
        answered = await engine.request({"type": "load", "model": "task", "id": "t1"})
        assert running.returncode is None
        assert (engine.attaches, engine.supersedes) == (1, 0)
    assert answered.status == 200, answered.body
    assert "ok    websocket: upgraded, subprotocol ablo.source.v1" in output
    skipped = [line for line in output.splitlines() if line.startswith("skip  register:")]
    assert len(skipped) == 1 and "not checked" in skipped[0] and "--register" in skipped[0]
    assert "all checks passed" in output


async def test_check_names_the_failing_step() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            ["check", "--base-url", engine.base_url], {"ABLO_API_KEY": "sk_test_nope_123"}
        ) as check,
    ):
        assert await check.wait(20) == 78
        output = check.output()
    assert "FAIL  websocket: the engine rejected the connection: HTTP 401" in output
    assert "what to check:" in output and "sk_test_nope_123" not in output

    async with process(["check", "--base-url", f"http://127.0.0.1:{free_port()}"], ENV) as check:
        assert await check.wait(20) == 69
        assert "FAIL  tcp" in check.output()


async def test_json_logs_and_a_quiet_idle_connector() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(engine.base_url, "tests.handlers:TestSource", "--log-format", "json"),
            ENV,
        ) as connector,
    ):
        await engine.wait_attached(10)
        await asyncio.sleep(0.3)
        lines_when_ready = connector.output().strip().splitlines()
        for _ in range(20):
            await engine.request({"type": "load", "model": "m", "id": "x"})
        await asyncio.sleep(1.5)
        assert connector.output().strip().splitlines() == lines_when_ready, (
            "requests at INFO are silent"
        )
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0
        lines = connector.output().strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(r["message"].startswith("ready: serving source src_dev") for r in records)


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_json_lines_carry_the_request_and_connection_fields() -> None:
    port = free_port()
    args = connector_args(
        f"http://127.0.0.1:{port}", "tests.handlers:TestSource",
        "--log-format", "json", "--log-level", "debug", "--request-timeout", "0.3",
    )  # fmt: skip
    async with process(args, {**ENV, "ABLO_API_KEY": KEY}) as connector:
        # Nothing listens yet: each failed attempt is a WARNING naming why, and which attempt.
        await eventually(lambda: connector.output().count('"error_code": "refused"') >= 2)
        async with DevEngine(KEY, port=port) as engine:
            await engine.wait_attached(15)
            ok = await engine.request({"type": "load", "model": "task", "id": "t1"})
            failed = await engine.request({"type": "load", "model": "task", "id": "boom"})
            slow = await engine.request({"type": "load", "model": "task", "id": "hang"})
            assert (ok.status, failed.status, slow.status) == (200, 500, 504)
            connector.signal(signal.SIGTERM)
            assert await connector.wait(10) == 0
        output = connector.output()
    records = _records(output)
    assert len(records) == len(output.strip().splitlines()), "every line is one JSON object"
    assert KEY not in output

    refused = [r for r in records if r.get("error_code") == "refused"]
    assert [r["attempt"] for r in refused[:2]] == [1, 2]
    assert all(r["level"] == "warning" and "cannot connect" in r["message"] for r in refused)

    fields = ("request_id", "message_id", "operation", "model", "status", "duration_ms")
    by_status = {r["status"]: r for r in records if r.get("logger") == "connector.requests"}
    served = by_status[200]
    assert served["level"] == "debug"
    assert {k: served[k] for k in fields[2:5]} == {
        "operation": "load",
        "model": "task",
        "status": 200,
    }
    assert served["request_id"].startswith("req_") and served["message_id"] == ok.message_id
    assert served["duration_ms"] >= 0 and served["error_code"] is None
    assert served["source_id"] == "src_dev"

    # A timeout is a WARNING, not a silent 504.
    (timed_out,) = [r for r in records if r["level"] == "warning" and r.get("status") == 504]
    assert timed_out["error_code"] == "source_connector_timeout"
    assert timed_out["message_id"] == slow.message_id and timed_out["duration_ms"] >= 300
    assert all(timed_out[k] is not None for k in fields) and timed_out["source_id"] == "src_dev"

    # A handler's exception: an ERROR with the traceback under the reference the engine got.
    (raised,) = [r for r in records if r["level"] == "error" and r.get("status") == 500]
    assert raised["reference"] == failed.json()["reference"]
    assert raised["error_code"] == "source_connector_handler_error"
    assert raised["message_id"] == failed.message_id
    assert "RuntimeError: database refused credentials [redacted]" in raised["exception"]
    assert "database refused" not in failed.body, "the detail stays in the local log"


async def test_start_up_errors_are_json_when_the_logs_are() -> None:
    async with process(
        ["run", "--log-format", "json", "--handler", "tests.handlers:TestSource"]
    ) as cli:
        assert await cli.wait(20) == 78
        (line,) = cli.stderr_path.read_text().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["exit_status"] == 78
    assert record["message"].startswith("an API key is required")

    env = {**ENV, "ABLO_LOG_FORMAT": "json"}
    async with process(["run", "--max-in-flight", "many"], env) as cli:
        assert await cli.wait(20) == 2
        (line,) = cli.stderr_path.read_text().splitlines()
    record = json.loads(line)
    assert record["exit_status"] == 2 and "'many' is not a valid integer" in record["message"]


def test_a_secret_is_redacted_in_its_json_escaped_form_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A database password may hold characters JSON escapes: " and \ and beyond ASCII.
    password = 'Qz"x\\wördQ'
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logs, "_installed", logs.installed_formatter())
    stream = io.StringIO()
    formatter = configure_logging("info", "json", secrets=[password])
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("connector.sql").warning(
        "cannot connect with %s", password, extra={"detail": f"password={password}"}
    )
    line = stream.getvalue()
    assert formatter.is_json and json.loads(line)["detail"] == "password=[redacted]"
    assert line.count("[redacted]") == 2, line
    assert "Qz" not in line and "rdQ" not in line, line


def test_text_lines_give_the_time_in_utc_whatever_the_process_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Django project sets the process's TZ to its TIME_ZONE: the lines an
    operator greps still say when in UTC, as the JSON lines do."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logs, "_installed", logs.installed_formatter())
    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        stream = io.StringIO()
        configure_logging("info", "text")
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        before = time.time()
        logging.getLogger("connector.test").info("a line")
        stamp = stream.getvalue().split(" ", 1)[0]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert stamp.endswith("Z"), stamp
    written = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs(written.timestamp() - before) < 60, (stamp, before)


def _head(url: str) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Length"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Length"]


async def test_readyz_names_each_reason_and_clears_it_once_ready() -> None:
    port = free_port()
    config = Config(
        api_key=KEY, base_url=f"http://127.0.0.1:{port}", health_addr="127.0.0.1:0",
        reconnect_schedule=(0.05,),
    )  # fmt: skip
    connector = Connector(config, TestSource())
    task = asyncio.create_task(connector.run())
    try:
        await eventually(lambda: connector.status.last_error is not None)
        assert connector.health is not None
        base = f"http://127.0.0.1:{connector.health.port}"
        status, body = await get(base + "/readyz")
        payload = json.loads(body)
        assert (status, payload["ready"], payload["lastError"]) == (503, False, "refused")
        assert "Connect call failed" in payload["lastErrorMessage"]
        # HEAD: the same status and headers, no body.
        status, head_body, length = await asyncio.to_thread(_head, base + "/readyz")
        assert (status, head_body) == (503, b"") and int(length or 0) > 0

        async with DevEngine(KEY, port=port) as engine:
            await connector.wait_ready(10)
            status, body = await get(base + "/readyz")
            payload = json.loads(body)
            assert (status, payload["lastError"], payload["lastErrorMessage"]) == (200, None, None)
            status, text = await get(base + "/metrics")
            assert _metric(text, "process_resident_memory_bytes") > 1e6
            assert _metric(text, "process_open_fds") > 0
            assert _metric(text, "process_cpu_seconds_total") > 0

            # A newer connector takes the source: this one stands down, and says why.
            newer = Connector(Config(api_key=KEY, base_url=engine.base_url), TestSource())
            newer_task = asyncio.create_task(newer.run())
            try:
                await newer.wait_ready(10)
                await eventually(lambda: connector.status.state.value == "stood_down")
                status, body = await get(base + "/readyz")
                payload = json.loads(body)
                assert (status, payload["lastError"]) == (503, "source_connector_superseded")
            finally:
                newer.stop()
                await asyncio.wait_for(newer_task, 10)
    finally:
        connector.stop()
        await asyncio.wait_for(task, 10)


async def _fails_with(config: Config) -> ConnectFailure:
    try:
        ws = await open_websocket(config, max_size=1024)
    except ConnectFailure as failure:
        return failure
    await ws.close()
    raise AssertionError("the connection opened")


@contextlib.asynccontextmanager
async def _tcp_server(reply: bytes | None) -> AsyncIterator[int]:
    """A loopback server that answers every connection with ``reply`` (None: silence)."""
    held: list[asyncio.StreamWriter] = []

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reply is None:
            held.append(writer)
            return
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_each_way_a_connection_fails_has_its_own_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def config(url: str) -> Config:
        return Config(api_key=KEY, base_url=url, open_timeout=0.5)

    refused = await _fails_with(config(f"http://127.0.0.1:{free_port()}"))
    assert refused.code == "refused"

    async with _tcp_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        tls = await _fails_with(config(f"https://127.0.0.1:{port}"))  # TLS to a plain server
        assert tls.code == "tls", tls
    async with _tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as port:
        assert (await _fails_with(config(f"http://127.0.0.1:{port}"))).code == "handshake"
    async with _tcp_server(None) as port:
        assert (await _fails_with(config(f"http://127.0.0.1:{port}"))).code == "timeout"

    # DNS: no name server is asked; the resolver says the name does not exist.
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "engine.example.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    dns = await _fails_with(config("https://engine.example.invalid"))
    assert dns.code == "dns" and "Name or service not known" in str(dns)


class ProbedSource(TestSource):
    """A source whose probe fails while ``down`` is set, like a database that went away."""

    def __init__(self) -> None:
        self.down = False

    def probe(self) -> None:
        if self.down:
            raise SourceError("database_unreachable", "connection refused by db.internal:5432")


@contextlib.asynccontextmanager
async def probed(
    source: DataSource, base_url: str, interval: float
) -> AsyncIterator[tuple[Connector, str]]:
    """A ready connector with health endpoints, its source probed every ``interval`` s."""
    config = Config(
        api_key=KEY, base_url=base_url, health_addr="127.0.0.1:0", probe_interval=interval
    )
    connector = Connector(config, source)
    task = asyncio.create_task(connector.run())
    try:
        await connector.wait_ready(10)
        assert connector.health is not None
        yield connector, f"http://127.0.0.1:{connector.health.port}"
    finally:
        connector.stop()
        await asyncio.wait_for(task, 10)


async def test_a_source_that_cannot_serve_makes_readyz_503_until_it_can() -> None:
    source = ProbedSource()
    async with DevEngine(KEY) as engine, probed(source, engine.base_url, 0.05) as (connector, base):
        await eventually(lambda: connector.status.source_healthy is True)
        status, text = await get(base + "/metrics")
        assert _metric(text, "ablo_connector_source_up") == 1

        source.down = True
        await eventually(lambda: connector.status.source_healthy is False)
        status, body = await get(base + "/readyz")
        payload = json.loads(body)
        # Connected, but not ready: the state says why, and the ready clock stops.
        assert (status, payload["state"], payload["ready"], payload["lastError"]) == (
            503, "source_down", False, "database_unreachable",
        )  # fmt: skip
        assert payload["secondsReady"] is None
        assert payload["lastErrorMessage"] == "connection refused by db.internal:5432"
        status, text = await get(base + "/metrics")
        assert _metric(text, "ablo_connector_source_up") == 0
        assert _metric(text, "ablo_connector_ready_duration_seconds") == 0
        assert _metric(text, "ablo_connector_seconds_since_last_ready") > 0
        connected_since = connector.status.ready_since
        assert connected_since is not None

        source.down = False
        await eventually(lambda: connector.status.source_healthy is True)
        status, body = await get(base + "/readyz")
        payload = json.loads(body)
        assert (status, payload["state"], payload["lastError"]) == (200, "ready", None)
        # Counted from the recovery, not from when the connection became ready.
        assert payload["secondsReady"] < time.monotonic() - connected_since
        assert connector.status.ready_since == connected_since  # the same connection


def test_systemd_hears_that_a_ready_connection_cannot_serve(tmp_path: Path) -> None:
    from connector.ops.status import ConnectorStatus, State
    from connector.ops.systemd import SystemdNotifier

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.settimeout(5)
        notifier = SystemdNotifier(path, None)
        status = ConnectorStatus(source_id="src_1")
        status.subscribe(notifier._on_status)
        status.set(State.READY)
        assert systemd.recv(4096).decode() == "READY=1\nSTATUS=ready: serving source src_1"
        status.set_source_health("database_unreachable", "refused")
        assert systemd.recv(4096).decode() == (
            "STATUS=ready, but the source cannot serve: database_unreachable"
        )
        status.set_source_health(None)
        assert systemd.recv(4096).decode() == "STATUS=ready: serving source src_1"
        notifier.close()


@pytest.mark.parametrize("server", ["postgres", "mariadb"])
async def test_the_sql_source_reports_its_database(
    server: str, request: pytest.FixtureRequest
) -> None:
    """A real PostgreSQL or MariaDB stopped and started under a serving connector."""
    import sqlalchemy as sa

    from connector.adapters.sql import create_database_engine, migrate
    from tests.helpers import TASKS_DDL, execute

    postgres = request.getfixturevalue(server)  # either: stop() and start() alike
    execute(postgres.dsn, TASKS_DDL[sa.make_url(postgres.dsn).get_backend_name()])
    engine = create_database_engine(postgres.dsn)
    migrate(engine)
    engine.dispose()
    source = SQLSource(postgres.dsn)
    try:
        async with (
            DevEngine(KEY) as engine,
            probed(source, engine.base_url, 0.2) as (
                connector,
                base,
            ),
        ):
            await eventually(lambda: connector.status.source_healthy is True)
            assert _metric((await get(base + "/metrics"))[1], "ablo_connector_source_up") == 1

            await asyncio.to_thread(postgres.stop)
            await eventually(lambda: connector.status.source_healthy is False)
            assert _metric((await get(base + "/metrics"))[1], "ablo_connector_source_up") == 0
            status, body = await get(base + "/readyz")
            payload = json.loads(body)
            assert (status, payload["lastError"]) == (503, "database_unreachable")
            assert (payload["state"], payload["secondsReady"]) == ("source_down", None)
            # The database's own one-line reason (which depends on how it went away).
            assert payload["lastErrorMessage"] and "SELECT" not in payload["lastErrorMessage"]

            await asyncio.to_thread(postgres.start)
            await eventually(lambda: connector.status.source_healthy is True, timeout=15)
            assert (await get(base + "/readyz"))[0] == 200
            assert _metric((await get(base + "/metrics"))[1], "ablo_connector_source_up") == 1
    finally:
        source.close()


async def test_a_plain_probe_runs_on_one_thread_every_time() -> None:
    """A probe keeping a per-thread connection (as examples/sqlite_source.py
    does) opens it once, not at every probe."""
    threads: list[threading.Thread] = []  # the objects: an ended thread's ident is reused

    class Source(TestSource):
        def probe(self) -> None:
            threads.append(threading.current_thread())

    async with DevEngine(KEY) as engine, probed(Source(), engine.base_url, 0.02):
        await eventually(lambda: len(threads) >= 5)
    assert len({id(thread) for thread in threads}) == 1
    assert threads[0] is not threading.current_thread()
