"""The Python client against a real coordinator (the `server` fixture of
conftest.py) and, where tasks must run, a real Rust worker process.

Nothing here waits with fixed sleeps: waits are on the event stream, or
bounded retries with a deadline."""

import asyncio
import os
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

import conftest
from taskgrid.client import (
    AsyncClient,
    Client,
    container,
    handler,
    shell,
    task_request,
)
from taskgrid.errors import (
    Conflict,
    ConnectError,
    NotFound,
    QueueFull,
    TaskgridError,
    Unauthorized,
    WaitTimeout,
)

Json = Dict[str, Any]
UNKNOWN_ID = "0190a0a0-0000-7000-8000-000000000000"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reads these: keep the developer's out of the tests."""
    monkeypatch.delenv("TASKGRID_SERVER", raising=False)
    monkeypatch.delenv("TASKGRID_TOKEN", raising=False)


@pytest.fixture
def client(server: conftest.Server) -> Iterator[Client]:
    with Client(server.url, timeout=10) as c:
        yield c


@pytest.fixture
def worker(server: conftest.Server, client: Client) -> Iterator[str]:
    """A real Rust worker (shell tasks, 2 slots), registered: its log says
    so (at info level) once the coordinator has answered its register."""
    proc = subprocess.Popen(
        [conftest.taskgrid_bin(), "worker", "--server", server.url, "--id", "w1", "--slots", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TASKGRID_LOG="warn,taskgrid_worker=info", NO_COLOR="1"),
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "registered" in line:
                break
        else:
            raise AssertionError(f"worker w1 exited before registering: {''.join(seen)}")
        # Keep reading its log, so that it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        yield "w1"
    finally:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- submit


def test_submit_shell_task_with_fields_reads_them_back(client: Client) -> None:
    kind = shell(["echo", "hi"], env={"A": "1"}, cwd="/tmp")
    answer = client.submit(
        kind,
        queue="ci",
        priority="high",
        tags=["build-42", "py"],
        labels=["os=linux"],
        slots=2,
        timeout_ms=5000,
        delay_ms=60_000,
        expires_in_ms=120_000,
        dispatch_timeout_ms=900_000,
        retry={"max_retries": 2, "initial_backoff": 10},
        unique_key="fields-1",
        min_trust=0.5,
        concurrency_key="customer-42",
        resources={"cpus": 1.5, "memory_bytes": 512 * 1024 * 1024},
        stdin="input",
    )
    assert answer["created"] is True
    assert answer["state"] == "pending"  # delayed

    detail = client.get(answer["id"])
    task = detail["task"]
    spec = task["spec"]
    assert task["id"] == answer["id"]
    assert spec["kind"] == {
        "type": "shell",
        "command": {"argv": ["echo", "hi"]},
        "env": [["A", "1"]],
        "cwd": "/tmp",
    }
    assert spec["queue"] == "ci"
    assert spec["priority"] == "high"
    assert spec["tags"] == ["build-42", "py"]
    assert spec["labels"] == ["os=linux"]
    assert spec["slots"] == 2
    assert spec["timeout_ms"] == 5000
    assert spec["dispatch_timeout_ms"] == 900_000
    assert spec["retry"]["max_retries"] == 2
    assert spec["retry"]["initial_backoff"] == 10
    assert spec["unique_key"] == "fields-1"
    assert spec["min_trust"] == 0.5
    assert spec["concurrency_key"] == "customer-42"
    assert spec["resources"] == {"cpus": 1.5, "memory_bytes": 512 * 1024 * 1024}
    assert spec["stdin"] == "input"
    # delay_ms and expires_in_ms are resolved into instants (microseconds).
    assert abs(spec["run_at"] - (task["created_at"] + 60_000_000)) < 1_000_000
    assert spec["expires_at"] - spec["run_at"] == 120_000_000
    assert task["status"]["state"] == "pending"
    assert detail["attempts"] == []


def test_other_kinds_and_a_request_dict(client: Client) -> None:
    h = client.submit(handler("resize", {"image": "cat.png"}), priority=7)
    c = client.submit(container("alpine:3", ["echo", "x"], env=[("K", "V")]))
    s = client.submit({"kind": shell(script="echo $0"), "queue": "raw"}, tags=["t"])
    assert client.get(h["id"])["task"]["spec"]["kind"] == {
        "type": "handler",
        "name": "resize",
        "payload": {"image": "cat.png"},
    }
    assert client.get(h["id"])["task"]["spec"]["priority"] == 7
    assert client.get(c["id"])["task"]["spec"]["kind"] == {
        "type": "container",
        "image": "alpine:3",
        "command": ["echo", "x"],
        "env": [["K", "V"]],
    }
    spec = client.get(s["id"])["task"]["spec"]
    assert spec["kind"]["command"] == {"script": "echo $0"}
    assert (spec["queue"], spec["tags"]) == ("raw", ["t"])


def test_unique_key_returns_the_live_task(client: Client) -> None:
    first = client.submit(shell(["true"]), unique_key="only-one")
    again = client.submit(shell(["false"]), unique_key="only-one")
    assert first["created"] is True
    assert again == {"id": first["id"], "state": first["state"], "created": False}
    # Once it is no longer live, the key is free again.
    client.cancel(first["id"])
    third = client.submit(shell(["true"]), unique_key="only-one")
    assert third["created"] is True and third["id"] != first["id"]


def test_api_errors_carry_status_and_code(client: Client) -> None:
    with pytest.raises(TaskgridError) as bad:
        client.submit(shell(["true"]), slots=0)
    assert (bad.value.status, bad.value.code, bad.value.field) == (400, "invalid_value", "slots")
    assert "slots" in bad.value.message
    assert bad.value.body["code"] == "invalid_value"

    with pytest.raises(TaskgridError) as unknown:
        client.submit({"kind": shell(["true"]), "prio": 1})
    assert (unknown.value.status, unknown.value.code) == (400, "invalid_request")
    assert "prio" in unknown.value.message

    with pytest.raises(TypeError, match="prio"):
        client.submit(shell(["true"]), prio=1)

    with pytest.raises(NotFound) as missing:
        client.get(UNKNOWN_ID)
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(NotFound):
        client.cancel(UNKNOWN_ID)
    with pytest.raises(NotFound):
        client.explain(UNKNOWN_ID)

    with pytest.raises(TaskgridError) as bad_id:
        client.get("not-an-id")
    assert (bad_id.value.status, bad_id.value.code) == (400, "invalid_value")

    live = client.submit(shell(["true"]))["id"]
    for call in (client.retry, client.delete):
        with pytest.raises(Conflict) as conflict:
            call(live)
        assert (conflict.value.status, conflict.value.code) == (409, "not_finished")


def test_queue_full(server_factory: Callable[..., conftest.Server]) -> None:
    s = server_factory(["--queue-limit", "small=1"])
    with Client(s.url) as c:
        c.submit(shell(["true"]), queue="small")
        with pytest.raises(QueueFull) as full:
            c.submit(shell(["true"]), queue="small")
        assert (full.value.status, full.value.code) == (429, "queue_full")
        assert full.value.retry_after is not None and full.value.retry_after > 0
        assert c.submit(shell(["true"]), queue="other")["created"]


def test_submit_batch(client: Client) -> None:
    ids = client.submit_batch(
        [
            shell(["echo", "a"]),
            task_request(shell(["echo", "b"]), tags=["batch"]),
            {"kind": handler("h"), "queue": "hq"},
        ]
    )
    assert len(ids) == 3 and len(set(ids)) == 3
    assert client.get(ids[1])["task"]["spec"]["tags"] == ["batch"]
    assert client.get(ids[2])["task"]["spec"]["queue"] == "hq"
    # All or none: one bad task refuses the batch and stores nothing.
    with pytest.raises(TaskgridError) as bad:
        client.submit_batch([task_request(shell(["true"]), tags=["nope"]), {"kind": shell(["x"]), "slots": 0}])
    assert bad.value.code == "invalid_value"
    assert list(client.list(tag="nope")) == []


# ---------------------------------------------------------------- list


def test_list_follows_the_cursor_to_the_end(client: Client) -> None:
    ids = client.submit_batch([task_request(shell(["true"]), tags=["page"]) for _ in range(7)])
    client.submit(shell(["true"]), tags=["other"])

    # Small pages: 2 + 2 + 2 + 1.
    assert [t["id"] for t in client.list(tag="page", limit=2)] == ids
    pages: List[Json] = []
    cursor = None
    while True:
        page = client.list_page(tag="page", limit=2, cursor=cursor)
        pages.append(page)
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert [len(p["tasks"]) for p in pages] == [2, 2, 2, 1]

    # Pages that divide the tasks exactly end too.
    assert [t["id"] for t in client.list(tag="page", limit=7)] == ids
    assert [t["id"] for t in client.list(tag="page", limit=1)] == ids
    assert [t["id"] for t in client.list(tag="page", limit=3, order="newest")] == ids[::-1]
    assert len(list(client.list(state="queued", limit=3))) == 8
    assert list(client.list(state="running")) == []


# ---------------------------------------------------------------- cancel, retry, delete, explain


def test_cancel_and_cancel_tag_of_queued_tasks(client: Client) -> None:
    one = client.submit(shell(["true"]))["id"]
    assert client.cancel(one) == {"outcome": "cancelled", "state": "cancelled"}
    assert client.cancel(one) == {"outcome": "already_finished", "state": "cancelled"}
    assert client.get(one)["task"]["status"]["state"] == "cancelled"

    tagged = client.submit_batch([task_request(shell(["true"]), tags=["bulk"]) for _ in range(3)])
    spared = client.submit(shell(["true"]), tags=["keep"])["id"]
    assert client.cancel_tag("bulk") == 3
    assert client.cancel_tag("bulk") == 0
    assert {client.get(i)["task"]["status"]["state"] for i in tagged} == {"cancelled"}
    assert client.get(spared)["task"]["status"]["state"] == "queued"
    assert [t["id"] for t in client.list(tag="bulk", state="cancelled")] == tagged


def test_retry_and_delete_a_finished_task(client: Client) -> None:
    old = client.submit(shell(["echo", "again"]), tags=["r"])["id"]
    client.cancel(old)
    new = client.retry(old)
    assert new["created"] is True and new["id"] != old and new["state"] == "queued"
    assert client.get(new["id"])["task"]["spec"]["kind"] == client.get(old)["task"]["spec"]["kind"]
    client.delete(old)
    with pytest.raises(NotFound):
        client.get(old)
    with pytest.raises(NotFound):
        client.delete(old)


def test_explain_names_what_holds_a_task_back(client: Client) -> None:
    queued = client.submit(shell(["true"]))["id"]
    why = client.explain(queued)
    assert (why["task"], why["state"], why["worker"]) == (queued, "queued", None)
    gates = {g["gate"]: g for g in why["gates"]}
    assert gates["no_capable_worker"]["requirement"] == "shell"

    later = client.submit(shell(["true"]), delay_ms=60_000)["id"]
    gates = {g["gate"]: g for g in client.explain(later)["gates"]}
    assert gates["run_at"]["at"] == client.get(later)["task"]["spec"]["run_at"]


def test_wait_gives_up_after_its_timeout(client: Client) -> None:
    queued = client.submit(shell(["true"]))["id"]  # no worker: it never runs
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.wait(queued, timeout=0.3)
    assert time.monotonic() - started < 5
    # A finished task answers at once.
    client.cancel(queued)
    assert client.wait(queued, timeout=5)["task"]["status"]["state"] == "cancelled"


# ---------------------------------------------------------------- with a worker


def test_wait_and_follow_output_with_a_worker(client: Client, worker: str) -> None:
    task = client.submit(shell(["echo", "hello"]))
    done = client.wait(task["id"], timeout=30)
    status = done["task"]["status"]
    assert (status["state"], status["exit_code"], status["worker"]) == ("succeeded", 0, worker)
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]

    page = client.output(task["id"])
    assert [(c["stream"], c["data"]) for c in page["chunks"]] == [("stdout", "hello\n")]
    assert page["next_after"] == page["chunks"][-1]["seq"]
    assert client.output(task["id"], after=page["next_after"])["chunks"] == []


def test_follow_output_streams_until_the_end(client: Client, worker: str) -> None:
    # Followed from its submission: chunks arrive as produced, then the end.
    task = client.submit(shell(script="echo hello; echo oops >&2; echo bye"))
    stream = client.follow_output(task["id"])
    chunks = list(stream)
    # How the output is cut into chunks is the worker's business.
    assert "".join(c["data"] for c in chunks if c["stream"] == "stdout") == "hello\nbye\n"
    assert "".join(c["data"] for c in chunks if c["stream"] == "stderr") == "oops\n"
    assert [c["seq"] for c in chunks] == sorted(c["seq"] for c in chunks)
    assert stream.end is not None and stream.end["state"] == "succeeded"
    assert stream.end["exit_code"] == 0
    # Resumed after the first chunk: the rest.
    assert list(client.follow_output(task["id"], after=chunks[0]["seq"])) == chunks[1:]


def test_wait_reports_a_failure(client: Client, worker: str) -> None:
    task = client.submit(shell(script="exit 3"))
    status = client.wait(task["id"], timeout=30)["task"]["status"]
    assert (status["state"], status["exit_code"]) == ("failed", 3)


# ---------------------------------------------------------------- events


def test_events_resume_after_an_id(client: Client) -> None:
    with client.events() as stream:  # connected: nothing from here on is missed
        ids = client.submit_batch([shell(["true"]) for _ in range(3)])
        seen = [next(stream) for _ in range(3)]
        assert [e["id"] for e in seen] == ids
        assert {e["event"] for e in seen} == {"submitted"}
        assert [e["seq"] for e in seen] == list(range(seen[0]["seq"], seen[0]["seq"] + 3))
        assert stream.last_event_id == seen[-1]["seq"]

    # From the first one's id: the two after it, replayed without a reset.
    with client.events(last_event_id=seen[0]["seq"]) as resumed:
        assert [next(resumed), next(resumed)] == seen[1:]
        client.cancel(ids[0])
        cancelled = next(resumed)
    assert (cancelled["event"], cancelled["id"], cancelled["to"]) == ("state", ids[0], "cancelled")
    assert cancelled["seq"] == seen[-1]["seq"] + 1

    # Filtered by task.
    with client.events(task=ids[1]) as only:
        client.cancel(ids[2])
        client.cancel(ids[1])
        ev = next(only)
    assert (ev["id"], ev["to"]) == (ids[1], "cancelled")


def test_events_after_a_restart_start_with_reset(server: conftest.Server, client: Client) -> None:
    stream = client.events().open()
    try:
        client.submit(shell(["true"]))
        before = next(stream)
        server.restart()
        # The dropped stream reconnects with its last id, from another
        # coordinator process: the replay cannot vouch for what it missed.
        assert next(stream) == {"event": "reset", "after": before["seq"]}
        task = client.submit(shell(["true"]))
        after = next(stream)
        assert (after["event"], after["id"]) == ("submitted", task["id"])
        assert after["seq"] > before["seq"]
    finally:
        stream.close()

    # Resuming with an old id on a fresh connection: reset first too.
    with client.events(last_event_id=before["seq"]) as again:
        assert next(again) == {"event": "reset", "after": before["seq"]}


# ---------------------------------------------------------------- AsyncClient


def test_async_client_core_path(server: conftest.Server, worker: str) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, timeout=10) as c:
            async with c.events(tag="async") as events:
                task = await c.submit(shell(["echo", "async"]), tags=["async"])
                first = await events.__anext__()
            assert (first["event"], first["id"]) == ("submitted", task["id"])
            assert (await c.get(task["id"]))["task"]["spec"]["tags"] == ["async"]
            done = await c.wait(task["id"], timeout=30)
            assert done["task"]["status"]["state"] == "succeeded"
            out = c.follow_output(task["id"])
            assert [ch["data"] async for ch in out] == ["async\n"]
            assert out.end is not None and out.end["state"] == "succeeded"
            more = await c.submit_batch([task_request(shell(["true"]), tags=["async"])] * 2)
            listed = [t["id"] async for t in c.list(tag="async", limit=1)]
            assert listed == [task["id"], *more]
            assert any(w["id"] == worker for w in await c.workers())
            with pytest.raises(NotFound):
                await c.get(UNKNOWN_ID)

    asyncio.run(main())


# ---------------------------------------------------------------- token, connection, environment


def test_client_token(server_factory: Callable[..., conftest.Server], monkeypatch: pytest.MonkeyPatch) -> None:
    s = server_factory(["--client-token", "secret"])
    for token in (None, "wrong"):
        with Client(s.url, token=token) as c:
            with pytest.raises(Unauthorized) as denied:
                c.submit(shell(["true"]))
            assert (denied.value.status, denied.value.code) == (401, "unauthorized")
            with pytest.raises(Unauthorized):
                list(c.list())
            with pytest.raises(Unauthorized):
                c.events().open()
    with Client(s.url, token="secret") as c:
        task = c.submit(shell(["true"]))
        assert c.get(task["id"])["task"]["id"] == task["id"]
        assert [t["id"] for t in c.list()] == [task["id"]]
    monkeypatch.setenv("TASKGRID_TOKEN", "secret")
    monkeypatch.setenv("TASKGRID_SERVER", s.url)
    with Client() as c:
        assert c.url == s.url
        assert [t["id"] for t in c.list()] == [task["id"]]

    async def main() -> None:
        async with AsyncClient(s.url, token="wrong") as c:
            with pytest.raises(Unauthorized):
                await c.get(task["id"])

    asyncio.run(main())


def test_connect_error_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, timeout=5) as c:
        with pytest.raises(ConnectError) as failed:
            c.get(UNKNOWN_ID)
        assert url in str(failed.value) and failed.value.url == url
        assert failed.value.status is None
        with pytest.raises(ConnectError):
            c.events().open()

    async def main() -> None:
        async with AsyncClient(url, timeout=5) as c:
            with pytest.raises(ConnectError, match=url):
                await c.submit(shell(["true"]))

    asyncio.run(main())


def test_helpers_refuse_ambiguous_commands() -> None:
    with pytest.raises(TypeError):
        shell("echo hi")  # a string is a script: shell(script=...)
    with pytest.raises(TypeError):
        shell(["a"], script="b")
    with pytest.raises(TypeError):
        task_request({"name": "x"})
    with pytest.raises(ValueError):
        Client("127.0.0.1:7070")
    assert task_request(shell(["a"]), queue=None, tags=["t"]) == {
        "kind": {"type": "shell", "command": {"argv": ["a"]}},
        "tags": ["t"],
    }
    assert uuid.UUID(UNKNOWN_ID)
