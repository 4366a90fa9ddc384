"""The coordinator's OpenAPI document makes a working client: generate one
with openapi-python-client and submit, read and list through it against a
real coordinator."""

import importlib
import json
import pathlib
import subprocess
import sys

import httpx
import pytest

from conftest import REPO, Server, taskgrid_bin

OPENAPI = REPO / "crates" / "taskgrid-server" / "src" / "http" / "openapi.json"


def test_a_generated_client_submits_reads_and_lists(server: Server, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("openapi_python_client", reason="the generator needs Python 3.11+")
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\n")
    gen = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(OPENAPI),
         "--config", str(config), "--output-path", str(tmp_path / "client")],
        capture_output=True, text=True, cwd=tmp_path)
    assert gen.returncode == 0, gen.stdout + gen.stderr
    # Every schema made it: nothing was dropped as unreadable.
    assert "Unable to process schema" not in gen.stdout + gen.stderr, gen.stdout + gen.stderr
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        pkg = "taskgrid_coordinator_api_client"
        client_mod = importlib.import_module(pkg)
        submit = importlib.import_module(f"{pkg}.api.tasks.submit_task")
        get = importlib.import_module(f"{pkg}.api.tasks.get_task")
        list_tasks = importlib.import_module(f"{pkg}.api.tasks.list_tasks")
        models = importlib.import_module(f"{pkg}.models")

        client = client_mod.Client(base_url=server.url)
        ids = []
        for body in (
            {"kind": {"type": "shell", "command": {"argv": ["true"]}}, "queue": "gen", "tags": ["g"]},
            {"kind": {"type": "shell", "command": {"script": "echo hi"}}, "queue": "gen"},
            {"kind": {"type": "handler", "name": "h", "payload": {"n": 1}}, "queue": "gen"},
        ):
            r = submit.sync(client=client, body=models.SubmitRequest.from_dict(body))
            assert isinstance(r, models.SubmitResponse), r
            assert r.created
            ids.append(r.id)
        detail = get.sync(client=client, id=ids[0])
        assert isinstance(detail, models.TaskDetail), detail
        assert detail.task.spec.queue == "gen"
        assert detail.task.spec.kind.command.argv == ["true"]
        script = get.sync(client=client, id=ids[1])
        assert script.task.spec.kind.command.script == "echo hi"
        page = list_tasks.sync(client=client, queue="gen", limit=2)
        assert isinstance(page, models.TaskPage), page
        assert [t.id for t in page.tasks] == ids[:2]
        rest = list_tasks.sync(client=client, queue="gen", limit=2, cursor=page.next_cursor)
        assert [t.id for t in rest.tasks] == ids[2:]
        missing = get.sync(client=client, id="01a20308-6a3d-7171-9c0d-103a0f055d7a")
        assert isinstance(missing, models.ErrorBody) and missing.error.code == "not_found"
    finally:
        sys.path.remove(str(tmp_path / "client"))


def _validator(name: str):  # type: ignore[no-untyped-def]
    """A JSON Schema validator for components/schemas/NAME of the document."""
    import jsonschema

    doc = json.loads(OPENAPI.read_text())
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def _check(name: str, value: object) -> None:
    errors = sorted(_validator(name).iter_errors(value), key=str)
    assert not errors, f"{name} does not describe {json.dumps(value)[:400]}: {errors[0].message} at {list(errors[0].absolute_path)}"


def test_what_the_server_sends_matches_the_document(server: Server) -> None:
    """Every event of a run (submitted, state with errors and results,
    output, progress, checkpoint), a stream reset, and the answers of the
    main routes, validated against their schemas."""
    from test_worker import InProcess, sse  # a Python worker, for progress and checkpoints

    rust = subprocess.Popen([taskgrid_bin(), "worker", "--server", server.url, "--id", "rust", "--slots", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    py = InProcess(server, id="py")
    http = httpx.Client(base_url=server.url, timeout=30)
    try:
        events = []
        with httpx.stream("GET", f"{server.url}/api/v1/events", timeout=30) as stream:
            ids = [
                http.post("/api/v1/tasks", json=body).json()["id"]
                for body in (
                    {"kind": {"type": "shell", "command": {"script": "echo out; echo err >&2"}}},
                    {"kind": {"type": "shell", "command": {"argv": ["false"]}}},
                    {"kind": {"type": "handler", "name": "resume", "payload": None},
                     "retry": {"max_retries": 1, "initial_backoff": 10}},
                )
            ]
            ended = set()
            for raw in sse(stream):
                ev = json.loads(raw["data"])
                events.append(ev)
                if ev["event"] == "state" and ev["to"] in ("succeeded", "failed", "cancelled", "timed_out", "expired"):
                    ended.add(ev["id"])
                if ended >= set(ids):
                    break
        kinds = {e["event"] for e in events}
        assert kinds >= {"submitted", "state", "output", "progress", "checkpoint"}, kinds
        for e in events:
            _check("TaskEvent", e)
        # A resume from an id of no process of this coordinator: a reset.
        with httpx.stream("GET", f"{server.url}/api/v1/events", headers={"Last-Event-ID": "1"}, timeout=30) as stream:
            first = next(sse(stream))
            event, data = first.get("event"), json.loads(first["data"])
        assert event == "reset", (event, data)
        _check("StreamReset", data)
        for id in ids:
            _check("TaskDetail", http.get(f"/api/v1/tasks/{id}").json())
            _check("Explanation", http.get(f"/api/v1/tasks/{id}/explain").json())
            _check("OutputPage", http.get(f"/api/v1/tasks/{id}/output").json())
        _check("TaskPage", http.get("/api/v1/tasks", params={"limit": 2, "counts": "true"}).json())
        _check("MetricsSnapshot", http.get("/api/v1/metrics").json())
        for w in http.get("/api/v1/workers").json():
            _check("WorkerView", w)
        for q in http.get("/api/v1/queues").json():
            _check("QueueStats", q)
    finally:
        http.close()
        py.stop()
        rust.kill()
        rust.wait()
