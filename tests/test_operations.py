"""What an operator sees: health, readiness, metrics, systemd notify, check, logs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from connector import Config
from connector.daemon.supervisor import Connector
from connector.dev.engine import DevEngine
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
    async with (
        DevEngine(KEY, environment="sandbox") as engine,
        process(
            ["check", "--base-url", engine.base_url, "--handler", "tests.handlers:TestSource"], ENV
        ) as check,
    ):
        assert await check.wait(20) == 0, check.output()
        output = check.output()
    for step in ("configuration", "handler", "proxy", "dns", "tcp", "tls", "websocket", "register"):
        assert step in output
    assert '"source": "src_dev"' in output and '"environment": "sandbox"' in output
    assert "all checks passed" in output
    assert KEY not in output


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
