"""The Python worker against real `taskgrid server` processes: handlers
that succeed, fail, retry, checkpoint, spawn, get cancelled, time out; a
worker killed with SIGKILL mid-task; a coordinator killed and restarted."""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import httpx
import pytest

from app import make_worker
from conftest import Server

HERE = pathlib.Path(__file__).resolve().parent
SRC = HERE.parent / "src"


# ---- a little HTTP, independent of the SDK's client ----

def submit(server: Server, name: str, payload: Any = None, **fields: Any) -> str:
    body = {"kind": {"type": "handler", "name": name, "payload": payload}, **fields}
    r = httpx.post(f"{server.url}/api/v1/tasks", json=body, timeout=10)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def task(server: Server, id: str) -> Dict[str, Any]:
    r = httpx.get(f"{server.url}/api/v1/tasks/{id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def sse(response: httpx.Response) -> Iterator[Dict[str, Any]]:
    """The events of an SSE response: {"event", "id", "data"}."""
    event: Dict[str, Any] = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            k, _, v = line.partition(":")
            event[k] = v[1:] if v.startswith(" ") else v


def wait_end(server: Server, id: str, timeout: float = 30) -> Dict[str, Any]:
    """Waits for the task to end (its output stream's `end` event, sent
    once it is terminal); its detail."""
    url = f"{server.url}/api/v1/tasks/{id}/output?follow=true"
    with httpx.stream("GET", url, timeout=timeout) as r:
        for e in sse(r):
            if e.get("event") == "end":
                break
    return task(server, id)


def wait_state(server: Server, id: str, state: str, attempt: int = 1, timeout: float = 30) -> None:
    """Waits, on the task's event stream, until it is in `state` with
    attempt `attempt` or a later one."""
    def now() -> bool:
        st = task(server, id)["task"]["status"]
        return st["state"] == state and st["attempt"] >= attempt

    url = f"{server.url}/api/v1/events?task={id}"
    with httpx.stream("GET", url, timeout=timeout) as r:
        if now():
            return
        for e in sse(r):
            data = json.loads(e["data"])
            if data.get("event") == "state" and data.get("to") == state and data.get("attempt", 0) >= attempt:
                return
            if e.get("event") == "reset" and now():
                return
    raise AssertionError(f"{id} never reached {state} (attempt {attempt})")


def result(detail: Dict[str, Any]) -> Any:
    raw = detail["task"]["status"].get("result")
    return json.loads(raw) if raw is not None else None


# ---- workers ----

class InProcess:
    """A Python worker on its own thread and event loop in this process."""

    def __init__(self, server: Server, id: str = "py-1", slots: int = 4) -> None:
        self.worker = make_worker(server=server.url, id=id, slots=slots)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.worker.registered.wait(15), "the worker never registered"

    def _run(self) -> None:
        try:
            asyncio.run(self.worker.run())
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the worker did not drain"
        if self.error:
            raise self.error


@pytest.fixture
def worker(server: Server) -> Iterator[InProcess]:
    w = InProcess(server)
    try:
        yield w
    finally:
        w.stop()


def spawn_worker(server: Server, id: str, *extra: str) -> subprocess.Popen:
    """`python -m taskgrid.worker app:worker` as a child process; returns
    once its log says it registered."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]))
    p = subprocess.Popen(
        [sys.executable, "-m", "taskgrid.worker", "app:worker", "--server", server.url,
         "--id", id, "--log", "info", *extra],
        cwd=HERE, env=env, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "registered as" in line:
            # Keep reading its log, so that it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()  # type: ignore[union-attr]
            return p
    raise AssertionError(f"worker {id} exited before registering: {''.join(seen)}")


# ---- the tests ----

def test_sync_and_async_handlers_return_results(server: Server, worker: InProcess) -> None:
    a = submit(server, "double", {"n": 21})
    b = submit(server, "adouble", {"n": 4})
    assert result(wait_end(server, a)) == {"n": 42}
    d = wait_end(server, b)
    assert (d["task"]["status"]["state"], result(d)) == ("succeeded", {"n": 8})
    assert d["task"]["status"]["worker"] == "py-1"


def test_failures_retry_as_told(server: Server, worker: InProcess) -> None:
    boom = submit(server, "boom", retry={"max_retries": 1, "initial_backoff": 10})
    d = wait_end(server, boom)
    assert d["task"]["status"]["state"] == "failed"
    assert "ValueError: it went wrong" in d["task"]["status"]["error"]["message"]
    assert len(d["attempts"]) == 2, "the policy's one retry ran"

    fatal = submit(server, "fatal", retry={"max_retries": 3})
    d = wait_end(server, fatal)
    assert d["task"]["status"]["state"] == "failed"
    assert len(d["attempts"]) == 1, "Fatal is never retried"

    flaky = submit(server, "flaky", retry={"max_retries": 2})
    d = wait_end(server, flaky)
    assert (d["task"]["status"]["state"], result(d)) == ("succeeded", {"attempt": 2})


def test_a_checkpoint_reaches_the_next_attempt_with_progress_and_log(server: Server, worker: InProcess) -> None:
    id = submit(server, "resume", retry={"max_retries": 1, "initial_backoff": 10})
    d = wait_end(server, id)
    assert result(d) == {"resumed_from": 21}
    assert d["task"]["progress"]["fraction"] == 0.5
    out = httpx.get(f"{server.url}/api/v1/tasks/{id}/output", timeout=10).json()
    assert [c["data"] for c in out["chunks"]] == ["saving"]


def test_a_handler_spawns_a_subtask(server: Server, worker: InProcess) -> None:
    id = submit(server, "parent")
    child = result(wait_end(server, id))["child"]
    d = wait_end(server, child)
    assert (result(d), d["task"]["spec"]["parent"]) == ({"n": 10}, id)


def test_cancel_and_timeout_stop_a_handler(server: Server, worker: InProcess) -> None:
    id = submit(server, "wait_cancel")
    wait_state(server, id, "running")
    r = httpx.post(f"{server.url}/api/v1/tasks/{id}/cancel", timeout=10)
    assert r.status_code == 200, r.text
    assert wait_end(server, id)["task"]["status"]["state"] == "cancelled"

    id = submit(server, "wait_cancel", timeout_ms=200)
    assert wait_end(server, id)["task"]["status"]["state"] == "timed_out"


def test_an_unknown_handler_is_refused_and_a_bad_registration_says_why(server: Server, worker: InProcess) -> None:
    id = submit(server, "nobody-has-this", dispatch_timeout_ms=300)
    d = wait_end(server, id)
    assert d["task"]["status"]["state"] == "failed"
    assert d["task"]["status"]["error"]["code"] == "no_capable_worker"

    bad = make_worker(server=server.url, id="local")
    with pytest.raises(RuntimeError, match="refused the registration"):
        asyncio.run(bad.run())


def test_a_worker_killed_mid_task_hands_it_to_another(server_factory: Callable[..., Server], tmp_path: pathlib.Path) -> None:
    server = server_factory(["--heartbeat-ms", "200"])
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    first = spawn_worker(server, "py-doomed")
    try:
        id = submit(server, "block", {"fifo": str(fifo)})
        wait_state(server, id, "running")
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = spawn_worker(server, "py-heir")
        try:
            wait_state(server, id, "running", attempt=2)
            with open(fifo, "w") as f:
                f.write("go\n")
            d = wait_end(server, id)
            assert d["task"]["status"]["state"] == "succeeded"
            assert d["task"]["status"]["worker"] == "py-heir"
            assert [a["outcome"] for a in d["attempts"]] == ["lost", "succeeded"]
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, "a SIGTERM drains and exits 0"
    finally:
        if first.poll() is None:
            first.kill()


def test_the_worker_reconnects_to_a_restarted_coordinator(server: Server, worker: InProcess) -> None:
    assert result(wait_end(server, submit(server, "double", {"n": 1}))) == {"n": 2}
    sessions = worker.worker.sessions
    server.restart()
    assert worker.worker.wait_registered(after=sessions, timeout=30), "it never came back"
    assert result(wait_end(server, submit(server, "double", {"n": 2}))) == {"n": 4}


def test_a_quick_handlers_progress_and_log_are_kept(server: Server, worker: InProcess) -> None:
    id = submit(server, "quick_log")
    d = wait_end(server, id)
    assert d["task"]["status"]["state"] == "succeeded"
    assert d["task"]["progress"]["message"] == "done"
    out = httpx.get(f"{server.url}/api/v1/tasks/{id}/output", timeout=10).json()
    assert [c["data"] for c in out["chunks"]] == ["said before returning"]


def test_a_drain_ends_even_without_a_coordinator(server: Server) -> None:
    w = InProcess(server, id="py-alone")
    server.kill9()
    w.stop()  # joins the worker's thread: run() returned


def test_a_handler_that_never_returns_does_not_keep_the_worker_alive(server: Server) -> None:
    p = spawn_worker(server, "py-hung", "--drain-grace", "0.2")
    try:
        id = submit(server, "hang")
        wait_state(server, id, "running")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, "the drain gave up on the hung handler and the process exited"
        # Not reported as cancelled (final): handed back by the goodbye.
        wait_state(server, id, "queued", attempt=1)
    finally:
        if p.poll() is None:
            p.kill()
