"""What the inspector costs a request, and what a kept request costs in memory.

    python bench/inspector.py

Feeds distinct request frames (decoded from their JSON, as the connection
decodes them) and answers through the inspector's two hooks, as the
connection calls them for every request, and prints:

- the CPU time of recording one request (``request_started`` and
  ``request_done``), the best of several rounds;
- the memory the process holds for one kept request (tracemalloc), its
  strings included, with 500 kept.

The end-to-end figure is ``bench/run.py``'s, with the inspector on
(``ABLO_INSPECT=127.0.0.1:0``) and off: see the README.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from connector.ops.inspector import Inspector  # noqa: E402
from connector.ops.status import ConnectorStatus  # noqa: E402
from connector.serve.answer import Answer  # noqa: E402
from connector.wire.frames import RequestFrame, decode_frame, encode_frame  # noqa: E402
from connector.wire.signing import sign_request  # noqa: E402

KEY = "sk_test_bench_0123456789"
KEPT = 500


def requests(count: int) -> list[tuple[RequestFrame, Answer]]:
    served = []
    for n in range(count):
        body = json.dumps({"type": "load", "model": "task", "id": f"t{n}"}, separators=(",", ":"))
        headers = {"content-type": "application/json", **sign_request(KEY, f"msg_{n}", body)}
        text = encode_frame(
            RequestFrame(id=f"r{n}", method="POST", url="u", headers=headers, body=body)
        )
        frame = decode_frame(text)
        assert isinstance(frame, RequestFrame)
        answer = Answer(200, json.dumps({"row": {"id": f"t{n}"}}), operation="load", model="task")
        served.append((frame, answer))
    return served


def cpu_per_request(rounds: int = 7, count: int = 20_000) -> float:
    served = requests(count)
    best = float("inf")
    for _ in range(rounds):
        inspector = Inspector(ConnectorStatus(), "127.0.0.1:0", max_requests=KEPT)
        started = time.process_time()
        for frame, answer in served:
            inspector.request_started(frame)
            inspector.request_done(frame, answer, 0.001)
        best = min(best, (time.process_time() - started) / count)
    return best


def memory_per_kept_request() -> float:
    """What the process holds for each kept request, its strings included: the
    frames are decoded in the loop and let go, as the connection lets them go."""
    texts = [encode_frame(frame) for frame, _ in requests(KEPT)]
    inspector = Inspector(ConnectorStatus(), "127.0.0.1:0", max_requests=KEPT)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n, text in enumerate(texts):
        frame = decode_frame(text)
        assert isinstance(frame, RequestFrame)
        answer = Answer(200, json.dumps({"row": {"id": f"t{n}"}}), operation="load", model="task")
        inspector.request_started(frame)
        inspector.request_done(frame, answer, 0.001)
        del frame, answer
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return kept / KEPT


def main() -> None:
    cpu = cpu_per_request()
    memory = memory_per_kept_request()
    print(f"recording one request: {cpu * 1e6:.2f} µs of CPU (best of 7 rounds of 20,000)")
    print(f"one kept request holds {memory:.0f} bytes (a small load and its answer; {KEPT} kept)")
    print(json.dumps({"cpu_us_per_request": round(cpu * 1e6, 3), "bytes_per_kept": round(memory)}))


if __name__ == "__main__":
    main()
