"""Regenerates the gRPC stubs of the worker protocol from the repository's
.proto (the one source of truth) into src/taskgrid/worker/v1/.

    python gen_proto.py            # write them
    python gen_proto.py --check    # exit 1 if the checked-in ones differ

Needs grpcio-tools (the `test` extra).
"""

import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "crates" / "taskgrid-proto" / "proto"
PROTO = "taskgrid/worker/v1/worker.proto"
OUT = HERE / "src"
FILES = ["worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"]


def generate(out: pathlib.Path) -> None:
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(pathlib.Path(tmp))
            stale = [
                f
                for f in FILES
                if (pathlib.Path(tmp) / "taskgrid/worker/v1" / f).read_text()
                != (OUT / "taskgrid/worker/v1" / f).read_text()
            ]
        if stale:
            print(f"stale stubs (run python gen_proto.py): {', '.join(stale)}")
            return 1
        return 0
    generate(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
