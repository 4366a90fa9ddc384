"""Real `taskgrid server` processes for the tests: on 127.0.0.1, a port
the OS picks, a fresh data dir each. The binary is $TASKGRID_BIN, or the
repository's target/debug/taskgrid (built by `cargo build` or `cargo test`)."""

import os
import pathlib
import signal
import subprocess
import tempfile
from typing import Iterator, List, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


def taskgrid_bin() -> str:
    path = os.environ.get("TASKGRID_BIN") or str(REPO / "target" / "debug" / "taskgrid")
    if not os.path.exists(path):
        raise RuntimeError(f"no taskgrid binary at {path}: run `cargo build` or set TASKGRID_BIN")
    return path


class Server:
    """A coordinator process; `url` is where it listens."""

    def __init__(self, data_dir: str, extra: Optional[List[str]] = None, port: int = 0):
        self.data_dir = data_dir
        self.extra = list(extra or [])
        self.port = port
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [taskgrid_bin(), "server", "--listen", f"127.0.0.1:{self.port}", "--no-mdns",
             "--data-dir", self.data_dir, *self.extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        addr = next((w for w in line.split() if w.startswith("127.0.0.1:")), None)
        if addr is None:
            raise RuntimeError(f"no address in the server's first line: {line!r}")
        self.port = int(addr.rsplit(":", 1)[1])
        self.url = f"http://{addr}"

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        """kill -9, then a new process on the same data dir and port."""
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def server() -> Iterator[Server]:
    with tempfile.TemporaryDirectory() as d:
        s = Server(d)
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture
def server_factory() -> Iterator:
    made: List[Server] = []
    with tempfile.TemporaryDirectory() as d:

        def make(extra: Optional[List[str]] = None) -> Server:
            s = Server(tempfile.mkdtemp(dir=d), extra)
            made.append(s)
            return s

        try:
            yield make
        finally:
            for s in made:
                s.stop()
