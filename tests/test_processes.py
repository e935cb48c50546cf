"""The daemon as real processes: start, serve, kill, freeze, restart, stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

from connector.dev.engine import DevEngine
from tests.helpers import Process, connector_args, eventually, free_port, process, wait_for_port

KEY = "sk_test_cli_9d1e44b7c2"
ENV = {"ABLO_API_KEY": KEY}


def _http(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class EngineProcess:
    """``ablo-connector dev-engine`` in its own process."""

    def __init__(self, port: int, api_port: int, *extra: str) -> None:
        self.port, self.api_port = port, api_port
        self.base_url = f"http://127.0.0.1:{port}"
        self.args = [
            "dev-engine",
            "--port",
            str(port),
            "--api-port",
            str(api_port),
            "--api-key",
            KEY,
            *extra,
        ]
        self.process: Process | None = None

    async def start(self) -> float:
        self.process = await Process(self.args).start()
        await wait_for_port(self.api_port)
        return await wait_for_port(self.port)

    async def status(self) -> dict[str, Any]:
        _, payload = await asyncio.to_thread(_http, f"http://127.0.0.1:{self.api_port}/v1/status")
        return dict(payload)

    async def request(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await asyncio.to_thread(
            _http, f"http://127.0.0.1:{self.api_port}/v1/source/requests", body
        )

    async def wait_attached(self, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while not (await self.status())["attached"]:
            if time.monotonic() > deadline:
                raise AssertionError("no connector attached")
            await asyncio.sleep(0.02)
        return time.monotonic()

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()


@contextlib.asynccontextmanager
async def engine_process(*extra: str) -> AsyncIterator[EngineProcess]:
    engine = EngineProcess(free_port(), free_port(), *extra)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_readme_flow_dev_engine_run_and_request(tmp_path: Any) -> None:
    env = {**ENV, "ABLO_EXAMPLE_DB": str(tmp_path / "readme.db")}
    async with (
        engine_process() as engine,
        process(
            connector_args(engine.base_url, "examples.sqlite_source:SQLiteSource"), env
        ) as connector,
    ):
        await engine.wait_attached()
        api = f"http://127.0.0.1:{engine.api_port}"
        async with process(["request", "load", "task", "t1", "--engine", api]) as cli:
            assert await cli.wait() == 0, cli.output()
            assert '"title": "Try ablo-connector"' in cli.output()
        async with process(
            ["request", "commit", "update", "task", "t1", '{"done": true}', "--engine", api]
        ) as cli:
            assert await cli.wait() == 0, cli.output()
        async with process(
            ["request", "list", "task", "--where", "done=true", "--engine", api]
        ) as cli:
            assert await cli.wait() == 0
            assert cli.output().count('"id"') == 2
        async with process(["request", "events", "--engine", api]) as cli:
            assert await cli.wait() == 0
            assert '"type": "UPDATE"' in cli.output()
        connector.signal(signal.SIGTERM)
        assert await connector.wait() == 0
        assert "ready: serving source src_dev" in connector.output()


async def test_engine_killed_and_restarted_the_connector_is_back_within_2s() -> None:
    engine = EngineProcess(free_port(), free_port())
    await engine.start()
    try:
        # Redial every half second while the engine is down: when it is back,
        # the next attempt is at most 0.55 s away; the rest of the bound is
        # the handshake on a busy machine.
        args = connector_args(
            engine.base_url, "tests.handlers:TestSource", "--stable-after", "1",
            "--reconnect-schedule", "0,0.5",
        )  # fmt: skip
        async with process(args, ENV) as connector:
            await engine.wait_attached()
            await asyncio.sleep(1.2)
            assert engine.process is not None
            engine.process.signal(signal.SIGKILL)
            await engine.process.wait()
            back = await engine.start()
            ready = await engine.wait_attached(timeout=10)
            assert ready - back <= 2.0, f"ready {ready - back:.2f} s after the engine came back"
            status, payload = await engine.request({"type": "load", "model": "m", "id": "after"})
            assert (status, payload["row"]["id"]) == (200, "after")
            assert connector.returncode is None
    finally:
        await engine.stop()


async def test_frozen_engine_is_detected_by_keepalive_and_replaced() -> None:
    async with engine_process() as engine, process(
        connector_args(
            engine.base_url, "tests.handlers:TestSource",
            "--ping-interval", "0.5", "--ping-timeout", "0.5", "--open-timeout", "2",
        ),
        ENV,
    ) as connector:  # fmt: skip
        await engine.wait_attached()
        assert engine.process is not None
        engine.process.signal(signal.SIGSTOP)
        await eventually(lambda: "keepalive ping timed out" in connector.output(), timeout=10)
        engine.process.signal(signal.SIGCONT)
        await eventually(lambda: connector.output().count("ready: serving source") >= 2, timeout=15)
        status, payload = await engine.request({"type": "load", "model": "m", "id": "thawed"})
        assert (status, payload["row"]["id"]) == (200, "thawed")
        assert (await engine.status())["attaches"] >= 2


async def test_sigterm_lets_a_running_handler_answer_then_exits_0() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), ENV) as connector,
    ):
        await engine.wait_attached(10)
        pending = asyncio.create_task(
            engine.request({"type": "load", "model": "m", "id": "sleep:2"})
        )
        await asyncio.sleep(0.5)
        connector.signal(signal.SIGTERM)
        result = await pending
        assert (result.status, result.attempts) == (200, 1)
        assert await connector.wait(10) == 0
        assert "draining 1 in-flight request" in connector.output()


async def test_sigterm_exits_while_a_plain_probe_is_stuck_in_its_thread() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(engine.base_url, "tests.handlers:StuckProbeSource"), ENV
        ) as connector,
    ):
        await engine.wait_attached(10)  # the first probe has started by now, and never returns
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0
        assert "connector stopped" in connector.output()


async def test_a_second_signal_exits_at_once() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), ENV) as connector,
    ):
        await engine.wait_attached(10)
        pending = asyncio.create_task(
            engine.request({"type": "load", "model": "m", "id": "hang"}, timeout=1)
        )
        await asyncio.sleep(0.3)
        connector.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        connector.signal(signal.SIGTERM)
        assert await connector.wait(5) == 1
        assert time.monotonic() - started < 3
        pending.cancel()


async def test_wrong_key_with_exit_on_auth_failure_exits_78_without_the_key() -> None:
    wrong = "sk_test_wrong_0e7d6c5b4a"
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(engine.base_url, "tests.handlers:TestSource", "--exit-on-auth-failure"),
            {"ABLO_API_KEY": wrong},
        ) as connector,
    ):
        assert await connector.wait(15) == 78
        output = connector.output()
        assert "HTTP 401 (source_connector_unauthenticated)" in output
        assert "revoked" in output
        assert wrong not in output and KEY not in output


async def test_wrong_key_without_the_flag_keeps_trying_slowly() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(
                engine.base_url, "tests.handlers:TestSource", "--reconnect-schedule", "0,1"
            ),
            {"ABLO_API_KEY": "sk_test_wrong_again_11"},
        ) as connector,
    ):
        await eventually(lambda: engine.rejected_handshakes >= 3, timeout=30)
        assert connector.returncode is None
    rejected = [at for at, what, _ in engine.history if what == "rejected"]
    # Every retry waits the slowest step of the schedule (1 s here, ±10 %).
    gaps = [later - earlier for earlier, later in itertools.pairwise(rejected)]
    assert gaps and all(gap >= 0.85 for gap in gaps), gaps


async def test_supersede_between_processes_then_a_clean_rolling_stop() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), ENV) as old,
    ):
        await engine.wait_attached(10)
        async with process(
            connector_args(engine.base_url, "tests.handlers:TestSource"), ENV
        ) as new:
            await eventually(lambda: engine.supersedes == 1, timeout=10)
            await eventually(
                lambda: "superseded: a newer connector took this source" in old.output()
            )
            await asyncio.sleep(10)
            assert (engine.attaches, engine.supersedes) == (2, 1), "no steal-back"
            result = await engine.request({"type": "load", "model": "m", "id": "who"})
            assert result.json()["row"]["pid"] == new.pid
            old.signal(signal.SIGTERM)
            assert await old.wait(10) == 0
            assert engine.attached


async def test_no_log_line_at_any_level_contains_the_key() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(
                engine.base_url,
                "tests.handlers:TestSource",
                "--log-level",
                "debug",
                "--request-timeout",
                "0.5",
            ),
            ENV,
        ) as connector,
    ):
        await engine.wait_attached(10)
        for request_id in ("ok", "boom", "hang"):
            await engine.request({"type": "load", "model": "m", "id": request_id})
        await engine.request({"type": "nonsense"})
        await engine.send_raw("garbage")
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0
        output = connector.output()
    assert "request req_" in output and "-> 500 source_connector_handler_error" in output
    assert "handler raised" in output
    assert "[redacted]" in output  # the handler's own message carried the key
    assert KEY not in output


async def test_key_on_the_command_line_draws_a_warning_but_is_never_printed() -> None:
    async with (
        DevEngine(KEY) as engine,
        process(
            [
                "run",
                "--base-url",
                engine.base_url,
                "--handler",
                "tests.handlers:TestSource",
                "--api-key",
                KEY,
            ]
        ) as connector,
    ):
        await engine.wait_attached(10)
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0
        assert "visible" in connector.output() or "can see it" in connector.output()
        assert KEY not in connector.output()


async def test_api_key_file(tmp_path: Any) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    async with (
        DevEngine(KEY) as engine,
        process(
            connector_args(
                engine.base_url, "tests.handlers:TestSource", "--api-key-file", str(key_file)
            )
        ) as connector,
    ):
        await engine.wait_attached(10)
        connector.signal(signal.SIGTERM)
        assert await connector.wait(10) == 0


async def _connect_proxy(port_holder: list[int], tunnels: list[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ")[1].decode()
        tunnels.append(target)
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_holder.append(server.sockets[0].getsockname()[1])
    return server


async def test_serves_through_an_http_connect_proxy_from_the_environment() -> None:
    tunnels: list[str] = []
    ports: list[int] = []
    proxy = await _connect_proxy(ports, tunnels)
    try:
        proxy_env = {**ENV, "https_proxy": f"http://127.0.0.1:{ports[0]}", "no_proxy": ""}
        async with (
            DevEngine(KEY) as engine,
            process(connector_args(engine.base_url, "tests.handlers:TestSource"), proxy_env),
        ):
            await engine.wait_attached(10)
            result = await engine.request({"type": "load", "model": "m", "id": "via-proxy"})
            assert result.status == 200
            assert tunnels == [f"127.0.0.1:{engine.port}"]
        bypass_env = {**proxy_env, "no_proxy": "127.0.0.1"}
        async with (
            DevEngine(KEY) as engine,
            process(connector_args(engine.base_url, "tests.handlers:TestSource"), bypass_env),
        ):
            await engine.wait_attached(10)
            assert len(tunnels) == 1, "no_proxy must bypass the proxy"
    finally:
        proxy.close()
