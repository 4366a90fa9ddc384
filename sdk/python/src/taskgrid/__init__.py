"""taskgrid: the Python client and worker of the taskgrid task system.

- `taskgrid.Client` / `taskgrid.AsyncClient`: the HTTP API (submit, get,
  list, cancel, retry, explain, output, events, wait).
- `taskgrid.worker.Worker`: run Python functions as task handlers.

The client is imported on first use, so a worker does not load it.
"""

from typing import Any

__all__ = ["Client", "AsyncClient", "TaskgridError", "shell", "handler", "container"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "shell", "handler", "container"):
        from . import client

        return getattr(client, name)
    if name == "TaskgridError":
        from .errors import TaskgridError

        return TaskgridError
    raise AttributeError(f"module 'taskgrid' has no attribute {name!r}")
