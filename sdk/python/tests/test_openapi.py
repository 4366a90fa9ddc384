"""The coordinator's OpenAPI document makes a working client: generate one
with openapi-python-client and submit, read and list through it against a
real coordinator."""

import importlib
import pathlib
import subprocess
import sys

from conftest import REPO, Server

OPENAPI = REPO / "crates" / "taskgrid-server" / "src" / "http" / "openapi.json"


def test_a_generated_client_submits_reads_and_lists(server: Server, tmp_path: pathlib.Path) -> None:
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
