"""Benchmark: the connector against a bare websockets echo peer, in one run.

The load generator plays the engine (pre-signed request frames, a closed
loop with N requests in flight) on 127.0.0.1. It serves two peers in turn,
each a separate process: the connector under test (``ablo-connector run``
with a trivial handler) and a bare ``websockets`` client that answers each
request frame without verifying or parsing it (the practical ceiling).

    python bench/run.py                 # 1, 16, 64, 256 in flight, medians of 5 rounds
    python bench/run.py --soak 600      # 10 minutes at moderate load, RSS/fds sampled
    python bench/run.py --inspect       # a third peer: the connector with --inspect on
    python bench/run.py --inspect --control   # the third peer without it: the order's own effect

Prints a table and one JSON line. Nothing here asserts on time: targets
are read off the output (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connector.wire.frames import RequestFrame, encode_frame  # noqa: E402
from connector.wire.signing import sign_request  # noqa: E402

KEY = "sk_test_bench_0123456789"
BODY = json.dumps({"type": "load", "model": "task", "id": "t1"}, separators=(",", ":"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def presigned_frames(count: int, prefix: str) -> list[str]:
    return presign([BODY] * count, prefix)


def presign(bodies: list[str], prefix: str) -> list[str]:
    """One request frame per body, each signed with its own webhook-id."""
    now = int(time.time())
    frames = []
    for i, body in enumerate(bodies):
        message_id = f"msg_{prefix}_{i}"
        headers = {"content-type": "application/json", **sign_request(KEY, message_id, body, now)}
        frame = RequestFrame(
            id=f"r{i}",
            method="POST",
            url="https://source.ablo.invalid/v1/source",
            headers=headers,
            body=body,
        )
        frames.append(encode_frame(frame))
    return frames


@dataclass
class Result:
    peer: str
    in_flight: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    peer_cpu_percent: float
    generator_cpu_percent: float
    peer_peak_rss_mib: float
    errors: int


class Engine:
    """The engine side: accepts one peer, then drives closed-loop load."""

    def __init__(self) -> None:
        self.peer: ServerConnection | None = None
        self.attached = asyncio.Event()
        self.pending: dict[str, tuple[float, asyncio.Future[str]]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        await ws.recv()  # register
        await ws.send('{"type":"ready","protocolVersion":1,"sourceId":"src_bench"}')
        self.peer = ws
        self.attached.set()
        with contextlib.suppress(ConnectionClosed):  # the peer is stopped at the end
            async for message in ws:
                text = message if isinstance(message, str) else message.decode()
                start = text.index('"id":"') + 6
                request_id = text[start : text.index('"', start)]
                entry = self.pending.pop(request_id, None)
                if entry is not None:
                    entry[1].set_result(text)

    async def drive(self, frames: list[str], in_flight: int) -> tuple[list[float], int, float]:
        assert self.peer is not None
        ws = self.peer
        latencies: list[float] = []
        errors = 0
        loop = asyncio.get_running_loop()
        iterator = iter(frames)

        async def worker() -> None:
            nonlocal errors
            for text in iterator:
                request_id = text[text.index('"id":"') + 6 : text.index('","method"')]
                future: asyncio.Future[str] = loop.create_future()
                sent = time.perf_counter()
                self.pending[request_id] = (sent, future)
                await ws.send(text)
                answer = await future
                latencies.append(time.perf_counter() - sent)
                if '"status":200' not in answer:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return latencies, errors, time.perf_counter() - started


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index] * 1000


def spawn_peer(kind: str, port: int, *, control: bool = False) -> subprocess.Popen[bytes]:
    base_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ABLO_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    if kind in ("connector", "inspected"):
        args = [sys.executable, "-m", "connector", "run", "--base-url", base_url,
                "--handler", "bench.handlers:Trivial", "--log-level", "warning"]  # fmt: skip
        if kind == "inspected" and not control:  # the inspector on, no page open
            args += ["--inspect", "127.0.0.1:0"]
    else:
        args = [sys.executable, str(REPO / "bench" / "echo_peer.py"), base_url]
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def one_round(engine: Engine, peer: subprocess.Popen[bytes], kind: str, level: int, count: int, tag: str) -> Result:  # fmt: skip
    frames = presigned_frames(count, tag)
    cpu_peer, cpu_self = proc_cpu_seconds(peer.pid), own_cpu_seconds()
    latencies, errors, seconds = await engine.drive(frames, level)
    latencies.sort()
    return Result(
        peer=kind, in_flight=level, requests=count, seconds=round(seconds, 3),
        rps=round(count / seconds, 1),
        p50_ms=round(percentile(latencies, 0.50), 3),
        p95_ms=round(percentile(latencies, 0.95), 3),
        p99_ms=round(percentile(latencies, 0.99), 3),
        peer_cpu_percent=round(100 * (proc_cpu_seconds(peer.pid) - cpu_peer) / seconds, 1),
        generator_cpu_percent=round(100 * (own_cpu_seconds() - cpu_self) / seconds, 1),
        peer_peak_rss_mib=round(proc_status(peer.pid, "VmHWM") / 1024, 1),
        errors=errors,
    )  # fmt: skip


def median(samples: list[Result], key: str) -> Result:
    ordered = sorted(samples, key=lambda r: getattr(r, key))
    return ordered[len(ordered) // 2]


Ratios = dict[int, dict[str, float]]


def cpu_us_per_request(result: Result) -> float:
    return result.peer_cpu_percent / 100 / result.rps * 1e6


async def measure(
    levels: list[int], rounds: int, requests: int, inspect: bool = False, control: bool = False
) -> tuple[list[Result], Ratios]:
    """Both peers attached at once; every round runs the echo peer, then the
    connector, so drift in the machine's speed hits both alike. With
    ``inspect``, a third: the connector with the inspector on, right after
    (with ``control``, without it: what running third does to the ratios)."""
    kinds: tuple[str, ...] = (
        ("echo", "connector", "inspected") if inspect else ("echo", "connector")
    )
    async with contextlib.AsyncExitStack() as stack:
        attached: dict[str, tuple[Engine, subprocess.Popen[bytes]]] = {}
        for kind in kinds:
            engine = Engine()
            server = await stack.enter_async_context(
                serve(engine.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ablo.source.v1")],
                      compression=None, max_size=None)
            )  # fmt: skip
            peer = spawn_peer(kind, server.sockets[0].getsockname()[1], control=control)
            stack.callback(stop_peer, peer)
            await asyncio.wait_for(engine.attached.wait(), 20)
            await engine.drive(presigned_frames(2000, f"{kind}_warm"), 16)
            attached[kind] = (engine, peer)

        samples: dict[tuple[str, int], list[Result]] = {}
        for level in levels:
            count = max(2000, requests // 5) if level == 1 else requests
            for round_ in range(rounds):
                for kind in kinds:
                    engine, peer = attached[kind]
                    result = await one_round(
                        engine, peer, kind, level, count, f"{kind}_{level}_{round_}"
                    )
                    samples.setdefault((kind, level), []).append(result)

        results = [
            median(samples[(kind, level)], "p50_ms" if level == 1 else "rps")
            for kind in kinds
            for level in levels
        ]
        # Rounds ran in pairs (echo, then connector, back to back); the
        # summary uses the median of the per-pair ratios.
        ratios = {
            level: {
                "rps": statistics.median(
                    c.rps / e.rps
                    for e, c in zip(
                        samples[("echo", level)], samples[("connector", level)], strict=True
                    )
                ),
                "p50": statistics.median(
                    c.p50_ms / e.p50_ms
                    for e, c in zip(
                        samples[("echo", level)], samples[("connector", level)], strict=True
                    )
                ),
            }
            for level in levels
        }
        if inspect:  # the inspector's cost, round by round against the connector without it
            for level in levels:
                pairs = list(
                    zip(samples[("connector", level)], samples[("inspected", level)], strict=True)
                )
                ratios[level]["inspected_rps"] = statistics.median(i.rps / c.rps for c, i in pairs)
                ratios[level]["inspected_p50"] = statistics.median(
                    i.p50_ms / c.p50_ms for c, i in pairs
                )
                ratios[level]["inspected_cpu"] = statistics.median(
                    cpu_us_per_request(i) / cpu_us_per_request(c) for c, i in pairs
                )
                ratios[level]["connector_cpu_us"] = statistics.median(
                    cpu_us_per_request(c) for c, _ in pairs
                )
                ratios[level]["inspected_cpu_us"] = statistics.median(
                    cpu_us_per_request(i) for _, i in pairs
                )
        _, connector = attached["connector"]
        before = proc_cpu_seconds(connector.pid)
        await asyncio.sleep(5)
        idle = 100 * (proc_cpu_seconds(connector.pid) - before) / 5
        peak = round(proc_status(connector.pid, "VmHWM") / 1024, 1)
        results.append(Result("connector", 0, 0, 5.0, 0, 0, 0, 0, round(idle, 2), 0, peak, 0))
    return results, ratios


def stop_peer(peer: subprocess.Popen[bytes]) -> None:
    peer.terminate()
    peer.wait(10)


async def soak(seconds: float, in_flight: int) -> dict[str, Any]:
    engine = Engine()
    samples = []
    async with serve(
        engine.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol("ablo.source.v1")],
        compression=None,
    ) as server:
        peer = spawn_peer("connector", server.sockets[0].getsockname()[1])
        try:
            await asyncio.wait_for(engine.attached.wait(), 20)
            deadline = time.monotonic() + seconds
            batch = 0
            total = 0
            while time.monotonic() < deadline:
                frames = presigned_frames(5000, f"soak_{batch}")
                _, errors, _ = await engine.drive(frames, in_flight)
                total += len(frames)
                batch += 1
                fds = len(os.listdir(f"/proc/{peer.pid}/fd"))
                samples.append(
                    {
                        "t": round(seconds - (deadline - time.monotonic()), 1),
                        "rss_mib": round(proc_status(peer.pid, "VmRSS") / 1024, 1),
                        "fds": fds,
                        "errors": errors,
                    }
                )
                await asyncio.sleep(max(0.0, 5 - (time.monotonic() % 5)))
        finally:
            peer.terminate()
            peer.wait(10)
    rss = [s["rss_mib"] for s in samples]
    every = max(1, len(samples) // 10)
    return {"requests": total, "samples": len(samples), "rss_first_mib": rss[0], "rss_last_mib": rss[-1],
            "rss_max_mib": max(rss), "fds_first": samples[0]["fds"], "fds_last": samples[-1]["fds"],
            "errors": sum(s["errors"] for s in samples),
            "rss_series_mib": [(s["t"], s["rss_mib"]) for s in samples[::every]]}  # fmt: skip


def table(results: list[Result]) -> str:
    lines = [
        "peer       in-flight   req/s    p50 ms  p95 ms  p99 ms  peer CPU%  gen CPU%  peak RSS MiB"
    ]
    for r in results:
        label = "idle" if r.in_flight == 0 else str(r.in_flight)
        lines.append(
            f"{r.peer:<10} {label:>9} {r.rps:>8.0f} {r.p50_ms:>8.3f} {r.p95_ms:>7.3f} {r.p99_ms:>7.3f}"
            f" {r.peer_cpu_percent:>10.1f} {r.generator_cpu_percent:>9.1f} {r.peer_peak_rss_mib:>13.1f}"
        )
    return "\n".join(lines)


def summary(results: list[Result], ratios: Ratios) -> dict[str, Any]:
    def get(peer: str, level: int) -> Result:
        return next(r for r in results if r.peer == peer and r.in_flight == level)

    inspected = {
        f"inspector_{name}_at_{level}": round(value, 3)
        for level, values in ratios.items()
        for name, value in values.items()
        if name.startswith(("inspected", "connector_cpu"))
    }
    return {
        **inspected,
        "throughput_ratio_at_64": round(ratios[64]["rps"], 3) if 64 in ratios else None,
        "p50_ratio_at_1": round(ratios[1]["p50"], 3) if 1 in ratios else None,
        "connector_peak_rss_mib": max(
            r.peer_peak_rss_mib for r in results if r.peer == "connector"
        ),
        "connector_idle_cpu_percent": get("connector", 0).peer_cpu_percent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--requests", type=int, default=20000, help="requests per round (a fifth at 1 in flight)"
    )
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="run the soak instead")
    parser.add_argument("--soak-in-flight", type=int, default=16)
    parser.add_argument(
        "--inspect", action="store_true", help="also run the connector with the inspector on"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="with --inspect, the third peer runs without the inspector (an A/A control)",
    )
    args = parser.parse_args()
    if args.soak:
        print(json.dumps({"soak": asyncio.run(soak(args.soak, args.soak_in_flight))}))
        return
    levels = [int(x) for x in args.levels.split(",")]
    results, ratios = asyncio.run(
        measure(levels, args.rounds, args.requests, args.inspect, args.control)
    )
    print(table(results))
    print(
        json.dumps({"results": [asdict(r) for r in results], "summary": summary(results, ratios)})
    )


if __name__ == "__main__":
    main()
