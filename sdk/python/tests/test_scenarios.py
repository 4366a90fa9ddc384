"""The end-to-end scenarios both workers run — this Python worker here,
the Rust SDK's worker in the repository's tests/worker_scenarios.rs — from
one list, scenarios.json: each task, what to do with it, and how it must
end, against a real coordinator."""

import json
import pathlib
from typing import Any, Dict

import httpx
import pytest

from conftest import Server
from test_worker import InProcess, result, wait_end, wait_state

SCENARIOS = json.loads((pathlib.Path(__file__).resolve().parent / "scenarios.json").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = Server(str(tmp_path_factory.mktemp("grid")))
    w = InProcess(s, id="py-scenarios")
    try:
        yield s
    finally:
        w.stop()
        s.stop()


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario(grid: Server, sc: Dict[str, Any]) -> None:
    r = httpx.post(f"{grid.url}/api/v1/tasks", json=sc["task"], timeout=10)
    assert r.status_code == 201, r.text
    id = r.json()["id"]
    if sc.get("cancel_when_running"):
        wait_state(grid, id, "running")
        assert httpx.post(f"{grid.url}/api/v1/tasks/{id}/cancel", timeout=10).status_code == 200
    d = wait_end(grid, id)
    st, want = d["task"]["status"], sc["expect"]
    assert st["state"] == want["state"], d
    if "result" in want:
        assert result(d) == want["result"]
    if "attempts" in want:
        assert len(d["attempts"]) == want["attempts"], d["attempts"]
    if "error_contains" in want:
        assert want["error_contains"] in st["error"]["message"], st["error"]
    if "error_code" in want:
        assert st["error"]["code"] == want["error_code"], st["error"]
    if "progress" in want:
        assert d["task"]["progress"]["message"] == want["progress"]
    if "output" in want:
        out = httpx.get(f"{grid.url}/api/v1/tasks/{id}/output", timeout=10).json()
        assert [c["data"] for c in out["chunks"]] == want["output"]
    if "child_result" in want:
        child = wait_end(grid, result(d)["child"])
        assert result(child) == want["child_result"]
        assert child["task"]["spec"]["parent"] == id
