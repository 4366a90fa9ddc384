"""Throughput of one Python worker process with a no-op async handler.

    python sdk/python/bench.py --server http://127.0.0.1:7070 [--tasks 20000] [--slots 256]

Against a coordinator started for it (a release `taskgrid server`, nothing
else connected): starts one `taskgrid.worker.Worker` in this process
(asyncio), submits `--tasks` handler tasks in batches of 1,000, and measures
from the first submit until the coordinator counts them all succeeded (its
summary stream's totals). Prints one JSON line.
"""

import argparse
import asyncio
import json
import threading
import time

import httpx

from taskgrid.worker import Worker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--slots", type=int, default=256)
    p.add_argument("--batch", type=int, default=1000)
    a = p.parse_args()

    worker = Worker(server=a.server, id="py-bench", slots=a.slots)

    @worker.handler("noop")
    async def noop(ctx):  # type: ignore[no-untyped-def]
        return None

    thread = threading.Thread(target=lambda: asyncio.run(worker.run()), daemon=True)
    thread.start()
    if not worker.registered.wait(30):
        raise SystemExit("the worker never registered")

    http = httpx.Client(base_url=a.server, timeout=60)
    base = http.get("/api/v1/metrics").json()["succeeded"]
    body = {"kind": {"type": "handler", "name": "noop", "payload": None}}
    cpu0 = time.process_time()
    start = time.monotonic()
    with httpx.stream("GET", f"{a.server}/api/v1/events/summary", timeout=120) as events:
        left = a.tasks
        while left > 0:
            n = min(a.batch, left)
            r = http.post("/api/v1/tasks/batch", json={"tasks": [body] * n})
            r.raise_for_status()
            left -= n
        submitted = time.monotonic()
        for line in events.iter_lines():
            if line.startswith("data:"):
                totals = json.loads(line[5:])["totals"]
                if totals["succeeded"] - base >= a.tasks:
                    break
    end = time.monotonic()
    cpu = time.process_time() - cpu0
    worker.stop()
    thread.join(30)
    print(json.dumps({
        "tasks": a.tasks,
        "slots": a.slots,
        "submit_secs": round(submitted - start, 3),
        "e2e_secs": round(end - start, 3),
        "e2e_per_sec": round(a.tasks / (end - start)),
        "worker_process_cpu_secs": round(cpu, 2),
    }))


if __name__ == "__main__":
    main()
