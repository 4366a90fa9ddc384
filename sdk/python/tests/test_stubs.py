"""The checked-in gRPC stubs are what the repository's .proto makes: a
change to worker.proto without `python gen_proto.py` fails here."""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_the_stubs_match_the_proto() -> None:
    r = subprocess.run([sys.executable, str(HERE.parent / "gen_proto.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
