"""`python -m taskgrid.worker MODULE:ATTRIBUTE [--server URL] [--token T]
[--id ID] [--slots N] [--drain-grace SECONDS]`: imports MODULE, takes its Worker ATTRIBUTE and runs
it until SIGTERM or SIGINT (then drains)."""

import argparse
import importlib
import logging
import os
import sys

from . import Worker


def main(argv=None) -> int:  # type: ignore[no-untyped-def]
    p = argparse.ArgumentParser(prog="python -m taskgrid.worker", description=__doc__)
    p.add_argument("target", help="MODULE:ATTRIBUTE naming a taskgrid.worker.Worker")
    p.add_argument("--server", help="the coordinator's URL (default $TASKGRID_SERVER)")
    p.add_argument("--token", help="the worker token (default $TASKGRID_WORKER_TOKEN)")
    p.add_argument("--id", help="a stable worker id")
    p.add_argument("--slots", type=int, help="tasks run at once")
    p.add_argument("--drain-grace", type=float, help="seconds a drain lets running tasks finish")
    p.add_argument("--log", default=os.environ.get("TASKGRID_LOG", "warning"), help="log level")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, _, attr = a.target.partition(":")
    if not module or not attr:
        p.error(f"{a.target!r}: write MODULE:ATTRIBUTE, e.g. app:worker")
    sys.path.insert(0, os.getcwd())
    worker = getattr(importlib.import_module(module), attr, None)
    if not isinstance(worker, Worker):
        p.error(f"{a.target} is not a taskgrid.worker.Worker")
    if a.server:
        worker.server = a.server
    if a.token:
        worker.token = a.token
    if a.id:
        worker.id = a.id
    if a.slots:
        worker.slots = a.slots
    if a.drain_grace is not None:
        worker.drain_grace = a.drain_grace
    try:
        worker.run_forever()
    except RuntimeError as e:
        print(f"taskgrid worker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
