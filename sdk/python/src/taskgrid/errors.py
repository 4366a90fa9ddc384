"""Errors of the taskgrid client.

Every error the client raises is a `TaskgridError`. An answer of the
coordinator keeps its HTTP `status`, the API's error `code` (e.g.
``queue_full``, ``not_found``, ``invalid_value``), its `message` and the
parsed error object as `body` (``{"code", "message", "field"?, ...}``), so
a caller can act on the code without parsing text.
"""

from typing import Any, Dict, Optional

import httpx

__all__ = [
    "TaskgridError",
    "NotFound",
    "Unauthorized",
    "Conflict",
    "QueueFull",
    "ConnectError",
    "WaitTimeout",
    "error_from_response",
    "raise_for_response",
]


class TaskgridError(Exception):
    """An error answer of the coordinator, or a failure to talk to it.

    `status` is the HTTP status (None when there was no answer), `code` the
    API's error code, `message` its message, `body` the parsed error object
    (empty when the answer had none) and `field` the request field at
    fault, when the coordinator named one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        body: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body: Dict[str, Any] = dict(body or {})
        field = self.body.get("field")
        self.field: Optional[str] = field if isinstance(field, str) else None

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        code = f"{self.code}: " if self.code else ""
        return f"{code}{self.message}{where}"


class NotFound(TaskgridError):
    """404: no such task, schedule or route."""


class Unauthorized(TaskgridError):
    """401: the coordinator wants a client token, and none or another was sent."""


class Conflict(TaskgridError):
    """409: the call does not apply now (e.g. ``not_finished``)."""


class QueueFull(TaskgridError):
    """429 ``queue_full``: the queue is at its depth limit; `retry_after` is the
    seconds the coordinator asks to wait (None if it did not say)."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ConnectError(TaskgridError):
    """The coordinator at `url` could not be reached."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the taskgrid coordinator at {url} ({reason}): check that "
            "`taskgrid server` runs there and listens on that address, and that the "
            "URL (the client's url argument or TASKGRID_SERVER) is right",
            code="connect_error",
        )
        self.url = url


class WaitTimeout(TaskgridError, TimeoutError):
    """`wait()` gave up before the task finished."""


def _retry_after(response: httpx.Response) -> Optional[float]:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def error_from_response(response: httpx.Response) -> TaskgridError:
    """The error an unsuccessful answer stands for. Its body must have been
    read (`response.read()` / `await response.aread()` for a stream)."""
    status = response.status_code
    body: Dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            body = parsed["error"]
    except ValueError:
        pass
    code = str(body.get("code") or f"http_{status}")
    message = str(body.get("message") or response.text[:200] or response.reason_phrase)
    kw: Dict[str, Any] = {"status": status, "code": code, "body": body}
    if code == "queue_full":
        return QueueFull(message, retry_after=_retry_after(response), **kw)
    if status == 401:
        hint = " (pass token= to the client, or set TASKGRID_TOKEN)"
        return Unauthorized(message + hint, **kw)
    if status == 404:
        return NotFound(message, **kw)
    if status == 409:
        return Conflict(message, **kw)
    return TaskgridError(message, **kw)


def raise_for_response(response: httpx.Response) -> None:
    """Raises the fitting `TaskgridError` if `response` is not a success."""
    if not response.is_success:
        raise error_from_response(response)
