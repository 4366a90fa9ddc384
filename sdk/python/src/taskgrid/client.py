"""Clients of the taskgrid coordinator's HTTP API (``/api/v1``, docs/api.md).

`Client` is synchronous (httpx.Client), `AsyncClient` the same methods on
asyncio (httpx.AsyncClient). Answers are the API's JSON as dicts; errors
are `taskgrid.errors.TaskgridError` and its subclasses::

    from taskgrid.client import Client, shell

    with Client("http://127.0.0.1:7070") as c:
        task = c.submit(shell(["echo", "hello"]), queue="ci", tags=["build-42"])
        for chunk in c.follow_output(task["id"]):
            print(chunk["data"], end="")
        print(c.wait(task["id"])["task"]["status"]["state"])

Both classes share the request building and answer parsing below; only the
sending (blocking or awaited) is written twice.
"""

import asyncio
import json
import os
import time
import urllib.parse
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    Generic,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import httpx

from .errors import ConnectError, TaskgridError, WaitTimeout, error_from_response

__all__ = [
    "Client",
    "AsyncClient",
    "EventStream",
    "AsyncEventStream",
    "shell",
    "handler",
    "container",
    "task_request",
    "TASK_FIELDS",
    "TERMINAL_STATES",
    "DEFAULT_URL",
]

Json = Dict[str, Any]

DEFAULT_URL = "http://127.0.0.1:7070"
API = "/api/v1"
#: States a task does not leave.
TERMINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "expired"})
#: The optional fields of a submit (docs/api.md), accepted as keyword arguments.
TASK_FIELDS = (
    "queue", "priority", "tags", "labels", "slots", "timeout_ms", "run_at", "delay_ms",
    "expires_at", "expires_in_ms", "dispatch_timeout_ms", "retry", "after", "unique_key",
    "min_trust", "concurrency_key", "resources", "stdin", "parent",
)  # fmt: skip
#: The coordinator sends a keep-alive every 15 s: a stream silent for this
#: long is taken as dropped and reconnected.
STREAM_IDLE_S = 45.0

Env = Union[Mapping[str, str], Iterable[Sequence[str]]]


# ---------------------------------------------------------------- task kinds


def _env(env: Optional[Env]) -> Optional[List[List[str]]]:
    if env is None:
        return None
    pairs = env.items() if isinstance(env, Mapping) else env
    return [[str(k), str(v)] for k, v in pairs]


def shell(
    argv: Optional[Sequence[str]] = None,
    *,
    script: Optional[str] = None,
    env: Optional[Env] = None,
    cwd: Optional[str] = None,
) -> Json:
    """A shell task's kind: a program and its arguments (``argv``), or a
    ``script`` for ``sh -c``; ``env`` as a mapping or (key, value) pairs."""
    if isinstance(argv, str):
        raise TypeError("shell(argv) takes a list of arguments; use shell(script=...) for a script")
    if (argv is None) == (script is None):
        raise TypeError("shell() takes exactly one of argv and script")
    command: Json = {"argv": list(argv)} if argv is not None else {"script": script}
    kind: Json = {"type": "shell", "command": command}
    if env is not None:
        kind["env"] = _env(env)
    if cwd is not None:
        kind["cwd"] = cwd
    return kind


def handler(name: str, payload: Any = None) -> Json:
    """A task for the worker handler `name`, with any JSON `payload`."""
    return {"type": "handler", "name": name, "payload": payload}


def container(
    image: str, command: Optional[Sequence[str]] = None, env: Optional[Env] = None
) -> Json:
    """A container task: `image`, optionally its `command` and `env`."""
    kind: Json = {"type": "container", "image": image}
    if command is not None:
        kind["command"] = list(command)
    if env is not None:
        kind["env"] = _env(env)
    return kind


def task_request(kind_or_request: Mapping[str, Any], **fields: Any) -> Json:
    """A submit body: a kind (`shell`, `handler`, `container`) or a whole
    request dict (with ``kind``), with `fields` (any of `TASK_FIELDS`; None
    leaves a field out) set on it."""
    if "kind" in kind_or_request:
        req = dict(kind_or_request)
    elif "type" in kind_or_request:
        req = {"kind": dict(kind_or_request)}
    else:
        raise TypeError(
            "expected a task kind (shell(...), handler(...), container(...)) "
            "or a request dict with a 'kind'"
        )
    unknown = sorted(set(fields) - set(TASK_FIELDS))
    if unknown:
        raise TypeError(f"unknown task field(s) {', '.join(unknown)}; known: {', '.join(TASK_FIELDS)}")
    req.update((k, v) for k, v in fields.items() if v is not None)
    return req


# ---------------------------------------------------------------- calls


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise TaskgridError(
            f"the coordinator's answer is not JSON: {response.text[:200]!r}",
            status=response.status_code,
            code="invalid_response",
        ) from e


def _object(response: httpx.Response) -> Json:
    value = _json(response)
    if not isinstance(value, dict):
        raise TaskgridError(f"expected a JSON object, got {value!r:.200}", code="invalid_response")
    return value


def _array(response: httpx.Response) -> List[Json]:
    value = _json(response)
    if not isinstance(value, list):
        raise TaskgridError(f"expected a JSON array, got {value!r:.200}", code="invalid_response")
    return value


def _ids(response: httpx.Response) -> List[str]:
    return [str(i) for i in _object(response)["ids"]]


def _cancelled(response: httpx.Response) -> int:
    return int(_object(response)["cancelled"])


def _nothing(response: httpx.Response) -> None:
    return None


T = TypeVar("T")


class _Call(Generic[T]):
    """One request and how to read its answer: built once, sent by either
    client."""

    def __init__(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        params: Optional[Dict[str, str]] = None,
        body: Any = None,
    ) -> None:
        self.method, self.path, self.parse, self.params, self.body = method, path, parse, params, body


def _task_path(id: str, rest: str = "") -> str:
    return f"{API}/tasks/{urllib.parse.quote(str(id), safe='')}{rest}"


def _params(**values: Any) -> Dict[str, str]:
    """Query parameters, without the unset ones."""
    out: Dict[str, str] = {}
    for k, v in values.items():
        if v is not None:
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def _get(path: str, params: Optional[Dict[str, str]] = None) -> _Call[Json]:
    return _Call("GET", path, _object, params)


def _get_list(path: str) -> _Call[List[Json]]:
    return _Call("GET", path, _array)


def _post(path: str, body: Any = None) -> _Call[Json]:
    return _Call("POST", path, _object, body=body)


def _submit(kind_or_request: Mapping[str, Any], fields: Dict[str, Any]) -> _Call[Json]:
    return _post(f"{API}/tasks", task_request(kind_or_request, **fields))


def _submit_batch(tasks: Iterable[Mapping[str, Any]]) -> _Call[List[str]]:
    body = {"tasks": [task_request(t) for t in tasks]}
    return _Call("POST", f"{API}/tasks/batch", _ids, body=body)


def _cancel_tag(tag: str) -> _Call[int]:
    return _Call("POST", f"{API}/tasks/cancel", _cancelled, body={"tag": tag})


def _delete(id: str) -> _Call[None]:
    return _Call("DELETE", _task_path(id), _nothing)


def _output(id: str, after: Optional[int], limit: Optional[int]) -> _Call[Json]:
    return _get(_task_path(id, "/output"), _params(after=after, limit=limit))


def _next_cursor(page: Json, previous: Optional[str]) -> Optional[str]:
    """The cursor of the page after `page`, None at the end (a missing or
    null ``next_cursor``, and, defensively, an empty page or a cursor that
    does not move)."""
    cursor = page.get("next_cursor")
    if not cursor or not page.get("tasks") or cursor == previous:
        return None
    return str(cursor)


def _transport_error(url: str, e: httpx.TransportError) -> TaskgridError:
    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ConnectError(url, str(e) or type(e).__name__)
    return TaskgridError(
        f"no answer from the taskgrid coordinator at {url}: {e or type(e).__name__}",
        code="transport_error",
    )


# ---------------------------------------------------------------- SSE


class _RawEvent(NamedTuple):
    event: str
    data: str
    id: Optional[str]


class _SSEParser:
    """`text/event-stream` bytes to events (lines end at LF, an optional CR
    before it dropped; comments and unknown fields ignored)."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None

    def feed(self, chunk: bytes) -> List[_RawEvent]:
        self._buf += chunk
        out: List[_RawEvent] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            line = self._buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            ev = self._line(line.decode("utf-8", "replace"))
            if ev is not None:
                out.append(ev)
        self._buf = self._buf[start:]
        return out

    def _line(self, line: str) -> Optional[_RawEvent]:
        if not line:
            ev = _RawEvent(self._event, "\n".join(self._data), self._id) if self._data else None
            self._event, self._data, self._id = "", [], None
            return ev
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None


#: Yielded by the internal stream loops after each (re)connection.
_OPEN: Json = {"event": ":open"}
#: A stream ended without its end, or fell silent: reconnect.
_DROPPED = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class _Resumable:
    """Where a resumable SSE stream (events, or output with follow) stands:
    what to ask on (re)connection and what each event means."""

    def __init__(
        self,
        path: str,
        params: Dict[str, str],
        last_event_id: Optional[int],
        follow: bool = False,
        deadline: Optional[float] = None,
    ) -> None:
        self.path = path
        self.params = params
        self.last_event_id = last_event_id
        self.follow = follow
        self.deadline = deadline
        self.end: Optional[Json] = None
        self.connected = False

    def request(self, timeout: float) -> Dict[str, Any]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        read = STREAM_IDLE_S
        if self.deadline is not None:
            read = max(0.001, min(read, self.deadline - time.monotonic()))
        return {
            "method": "GET",
            "url": self.path,
            "params": self.params,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, read=read),
        }

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimeout("the task did not finish in time", code="timeout")

    def handle(self, raw: _RawEvent) -> Tuple[Optional[Json], bool]:
        """The item `raw` gives (None: nothing), and whether the stream is done."""
        if raw.event not in ("", "message", "reset", "end"):
            return None, False
        try:
            data = json.loads(raw.data)
        except ValueError as e:
            raise TaskgridError(f"unreadable event {raw.data[:200]!r}", code="invalid_response") from e
        if raw.id is not None and raw.id.isdigit():
            self.last_event_id = int(raw.id)
        if raw.event == "end":
            self.end = data
            return None, self.follow
        if raw.event == "reset":
            return {"event": "reset", **data}, False
        if not self.follow and "seq" not in data and raw.id is not None:
            data["seq"] = self.last_event_id
        return data, False

    def dropped(self) -> Optional[Json]:
        """After a dropped connection: a `reset` to pass on when events may
        have been missed that a resume cannot replay (none was seen yet)."""
        if self.follow or self.last_event_id is not None:
            return None
        return {"event": "reset", "after": None}


class _Backoff:
    """Reconnection attempts for up to `seconds` (none when 0)."""

    def __init__(self, seconds: float) -> None:
        self.give_up = time.monotonic() + seconds
        self.delay = 0.05

    def next_delay(self, url: str, e: httpx.TransportError) -> float:
        if time.monotonic() + self.delay >= self.give_up:
            raise _transport_error(url, e) from e
        delay, self.delay = self.delay, min(self.delay * 2, 1.0)
        return delay


def _terminal(detail: Json) -> bool:
    return detail["task"]["status"]["state"] in TERMINAL_STATES


def _may_end(ev: Json) -> bool:
    """Whether the task should be read again after event `ev` of `wait`."""
    kind = ev.get("event")
    return ev is _OPEN or kind == "reset" or (kind == "state" and ev.get("to") in TERMINAL_STATES)


class _Base:
    def __init__(self, url: Optional[str], token: Optional[str], timeout: float) -> None:
        url = url or os.environ.get("TASKGRID_SERVER") or DEFAULT_URL
        url = url.split(",")[0].strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"taskgrid coordinator URL must be http:// or https://, not {url!r}")
        self.url = url
        self.token = token if token is not None else (os.environ.get("TASKGRID_TOKEN") or None)
        self.timeout = timeout

    def _headers(self) -> Dict[str, str]:
        headers = {"User-Agent": "taskgrid-python/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @staticmethod
    def _events_stream(
        task: Optional[str], queue: Optional[str], tag: Optional[str], last_event_id: Optional[int]
    ) -> _Resumable:
        return _Resumable(f"{API}/events", _params(task=task, queue=queue, tag=tag), last_event_id)

    @staticmethod
    def _follow_stream(id: str, after: int) -> _Resumable:
        return _Resumable(_task_path(id, "/output"), _params(follow=True, after=after), None, True)

    @staticmethod
    def _wait_stream(id: str, timeout: Optional[float]) -> _Resumable:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _Resumable(f"{API}/events", _params(task=id), None, deadline=deadline)


# ---------------------------------------------------------------- streams


class EventStream(Iterator[Json]):
    """The items of an SSE route: task events (`Client.events`) or output
    chunks (`Client.follow_output`). It connects on the first `next()`, or
    at once with `open()` / ``with``: from then on nothing committed is
    missed. `last_event_id` is the id of the last event received (pass it
    as `last_event_id` to resume); after `follow_output`, `end` is the
    task's end (``{"id", "state", "exit_code", "result", "error"}``)."""

    def __init__(self, state: _Resumable, items: Generator[Json, None, None]) -> None:
        self._state = state
        self._items = items

    @property
    def last_event_id(self) -> Optional[int]:
        return self._state.last_event_id

    @property
    def end(self) -> Optional[Json]:
        return self._state.end

    def open(self) -> "EventStream":
        """Connects now (a no-op once connected)."""
        if not self._state.connected:
            next(self._items)  # the connection's _OPEN marker
        return self

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Json:
        while True:
            item = next(self._items)
            if item is not _OPEN:
                return item

    def close(self) -> None:
        self._items.close()

    def __enter__(self) -> "EventStream":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncEventStream(AsyncIterator[Json]):
    """`EventStream` for `AsyncClient`: ``async for``, ``await open()``,
    ``async with``, ``await aclose()``."""

    def __init__(self, state: _Resumable, items: AsyncGenerator[Json, None]) -> None:
        self._state = state
        self._items = items

    @property
    def last_event_id(self) -> Optional[int]:
        return self._state.last_event_id

    @property
    def end(self) -> Optional[Json]:
        return self._state.end

    async def open(self) -> "AsyncEventStream":
        if not self._state.connected:
            await self._items.__anext__()
        return self

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Json:
        while True:
            item = await self._items.__anext__()
            if item is not _OPEN:
                return item

    async def aclose(self) -> None:
        await self._items.aclose()

    async def __aenter__(self) -> "AsyncEventStream":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


# ---------------------------------------------------------------- Client


class Client(_Base):
    """A blocking client of one coordinator.

    `url` defaults to $TASKGRID_SERVER, else http://127.0.0.1:7070; `token`
    to $TASKGRID_TOKEN (sent as ``Authorization: Bearer``); `timeout` is in
    seconds, per request (streams wait for events as long as they must)."""

    def __init__(
        self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.Client(base_url=self.url, headers=self._headers(), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _do(self, call: _Call[T]) -> T:
        try:
            r = self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as e:
            raise _transport_error(self.url, e) from e
        if not r.is_success:
            raise error_from_response(r)
        return call.parse(r)

    def _connect(self, s: _Resumable, retry: bool) -> httpx.Response:
        backoff = _Backoff(self.timeout if retry else 0.0)
        while True:
            try:
                r = self._http.send(self._http.build_request(**s.request(self.timeout)), stream=True)
                break
            except httpx.TransportError as e:
                delay = backoff.next_delay(self.url, e)
            s.check_deadline()
            time.sleep(delay)
        if not r.is_success:
            try:
                r.read()
            finally:
                r.close()
            raise error_from_response(r)
        return r

    def _sse(self, s: _Resumable) -> Generator[Json, None, None]:
        """The stream's items, reconnecting (with Last-Event-ID) when the
        connection drops; `_OPEN` after each connection."""
        while True:
            r = self._connect(s, retry=s.connected)
            try:
                s.connected = True
                yield _OPEN
                parser = _SSEParser()
                for chunk in r.iter_bytes():
                    for raw in parser.feed(chunk):
                        item, done = s.handle(raw)
                        if item is not None:
                            yield item
                        if done:
                            return
            except _DROPPED:
                s.check_deadline()
            finally:
                r.close()
            lost = s.dropped()
            if lost is not None:
                yield lost

    # -- tasks

    def submit(self, kind_or_request: Mapping[str, Any], **fields: Any) -> Json:
        """Submits a task: a kind (`shell`, `handler`, `container`) or a
        request dict, with any of `TASK_FIELDS` as keywords. Answers
        ``{"id", "state", "created"}``; ``created`` is False when a live
        task with the same ``unique_key`` was returned instead."""
        return self._do(_submit(kind_or_request, fields))

    def submit_batch(self, tasks: Iterable[Mapping[str, Any]]) -> List[str]:
        """Submits tasks (kinds or request dicts) all or none; their ids."""
        return self._do(_submit_batch(tasks))

    def get(self, id: str) -> Json:
        """A task and its attempts: ``{"task": {...}, "attempts": [...]}``."""
        return self._do(_get(_task_path(id)))

    def list_page(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        worker: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        parent: Optional[str] = None,
        order: Optional[str] = None,
        counts: Optional[bool] = None,
    ) -> Json:
        """One page: ``{"tasks": [...], "next_cursor", "counts"?}``."""
        query = _params(state=state, queue=queue, tag=tag, worker=worker, limit=limit,
                        cursor=cursor, parent=parent, order=order, counts=counts)  # fmt: skip
        return self._do(_get(f"{API}/tasks", query))

    def list(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        worker: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        parent: Optional[str] = None,
        order: Optional[str] = None,
    ) -> Iterator[Json]:
        """Every matching task, oldest first (or newest with
        ``order="newest"``), read `limit` (the page size) at a time."""
        while True:
            page = self.list_page(state, queue, tag, worker, limit, cursor, parent, order)
            yield from page["tasks"]
            cursor = _next_cursor(page, cursor)
            if cursor is None:
                return

    def cancel(self, id: str) -> Json:
        """``{"outcome": "cancelled"|"requested"|"already_finished", "state"}``."""
        return self._do(_post(_task_path(id, "/cancel")))

    def cancel_tag(self, tag: str) -> int:
        """Cancels every live task with `tag`; how many."""
        return self._do(_cancel_tag(tag))

    def retry(self, id: str) -> Json:
        """Submits a finished task's spec again: the new task's submit answer."""
        return self._do(_post(_task_path(id, "/retry")))

    def delete(self, id: str) -> None:
        """Deletes a finished task (`Conflict` ``not_finished`` otherwise)."""
        self._do(_delete(id))

    def explain(self, id: str) -> Json:
        """``{"task", "state", "worker", "gates": [{"gate", ...}]}``."""
        return self._do(_get(_task_path(id, "/explain")))

    def output(self, id: str, after: Optional[int] = None, limit: Optional[int] = None) -> Json:
        """A page of output after seq `after`: ``{"chunks", "next_after"}``."""
        return self._do(_output(id, after, limit))

    def follow_output(self, id: str, after: int = 0) -> EventStream:
        """The task's output chunks (``{"seq", "attempt", "stream", "data"}``)
        after seq `after`, as they are produced, until the task ends
        (then `.end` holds how it ended)."""
        s = self._follow_stream(id, after)
        return EventStream(s, self._sse(s))

    def wait(self, id: str, timeout: Optional[float] = None) -> Json:
        """Waits, on the event stream, until the task is terminal; its
        detail (as `get`). `WaitTimeout` after `timeout` seconds."""
        s = self._wait_stream(id, timeout)
        items = self._sse(s)
        try:
            for ev in items:
                if _may_end(ev):
                    detail = self.get(id)
                    if _terminal(detail):
                        return detail
                s.check_deadline()
        finally:
            items.close()
        raise AssertionError("the event stream ended")  # pragma: no cover

    # -- the cluster

    def workers(self) -> List[Json]:
        return self._do(_get_list(f"{API}/workers"))

    def queues(self) -> List[Json]:
        return self._do(_get_list(f"{API}/queues"))

    def limits(self) -> List[Json]:
        return self._do(_get_list(f"{API}/limits"))

    def metrics(self) -> Json:
        return self._do(_get(f"{API}/metrics"))

    def events(
        self,
        task: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        last_event_id: Optional[int] = None,
    ) -> EventStream:
        """Task events as they are committed (dicts with ``seq``, the SSE
        id, ``id`` the task, ``at``, ``event``...), resumed after
        `last_event_id` when given. An item ``{"event": "reset", "after"}``
        says that events after ``after`` may be missing: re-read the tasks
        you care about. A dropped connection is resumed from the last id."""
        s = self._events_stream(task, queue, tag, last_event_id)
        return EventStream(s, self._sse(s))


# ---------------------------------------------------------------- AsyncClient


class AsyncClient(_Base):
    """`Client` on asyncio: the same methods, awaited; `list` is an async
    generator and `events` / `follow_output` give an `AsyncEventStream`."""

    def __init__(
        self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30.0
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers(), timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _do(self, call: _Call[T]) -> T:
        try:
            r = await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as e:
            raise _transport_error(self.url, e) from e
        if not r.is_success:
            raise error_from_response(r)
        return call.parse(r)

    async def _connect(self, s: _Resumable, retry: bool) -> httpx.Response:
        backoff = _Backoff(self.timeout if retry else 0.0)
        while True:
            req = self._http.build_request(**s.request(self.timeout))
            try:
                r = await self._http.send(req, stream=True)
                break
            except httpx.TransportError as e:
                delay = backoff.next_delay(self.url, e)
            s.check_deadline()
            await asyncio.sleep(delay)
        if not r.is_success:
            try:
                await r.aread()
            finally:
                await r.aclose()
            raise error_from_response(r)
        return r

    async def _sse(self, s: _Resumable) -> AsyncGenerator[Json, None]:
        while True:
            r = await self._connect(s, retry=s.connected)
            try:
                s.connected = True
                yield _OPEN
                parser = _SSEParser()
                async for chunk in r.aiter_bytes():
                    for raw in parser.feed(chunk):
                        item, done = s.handle(raw)
                        if item is not None:
                            yield item
                        if done:
                            return
            except _DROPPED:
                s.check_deadline()
            finally:
                await r.aclose()
            lost = s.dropped()
            if lost is not None:
                yield lost

    async def submit(self, kind_or_request: Mapping[str, Any], **fields: Any) -> Json:
        return await self._do(_submit(kind_or_request, fields))

    async def submit_batch(self, tasks: Iterable[Mapping[str, Any]]) -> List[str]:
        return await self._do(_submit_batch(tasks))

    async def get(self, id: str) -> Json:
        return await self._do(_get(_task_path(id)))

    async def list_page(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        worker: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        parent: Optional[str] = None,
        order: Optional[str] = None,
        counts: Optional[bool] = None,
    ) -> Json:
        query = _params(state=state, queue=queue, tag=tag, worker=worker, limit=limit,
                        cursor=cursor, parent=parent, order=order, counts=counts)  # fmt: skip
        return await self._do(_get(f"{API}/tasks", query))

    async def list(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        worker: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        parent: Optional[str] = None,
        order: Optional[str] = None,
    ) -> AsyncIterator[Json]:
        while True:
            page = await self.list_page(state, queue, tag, worker, limit, cursor, parent, order)
            for t in page["tasks"]:
                yield t
            cursor = _next_cursor(page, cursor)
            if cursor is None:
                return

    async def cancel(self, id: str) -> Json:
        return await self._do(_post(_task_path(id, "/cancel")))

    async def cancel_tag(self, tag: str) -> int:
        return await self._do(_cancel_tag(tag))

    async def retry(self, id: str) -> Json:
        return await self._do(_post(_task_path(id, "/retry")))

    async def delete(self, id: str) -> None:
        await self._do(_delete(id))

    async def explain(self, id: str) -> Json:
        return await self._do(_get(_task_path(id, "/explain")))

    async def output(
        self, id: str, after: Optional[int] = None, limit: Optional[int] = None
    ) -> Json:
        return await self._do(_output(id, after, limit))

    def follow_output(self, id: str, after: int = 0) -> AsyncEventStream:
        s = self._follow_stream(id, after)
        return AsyncEventStream(s, self._sse(s))

    async def wait(self, id: str, timeout: Optional[float] = None) -> Json:
        s = self._wait_stream(id, timeout)
        items = self._sse(s)
        try:
            async for ev in items:
                if _may_end(ev):
                    detail = await self.get(id)
                    if _terminal(detail):
                        return detail
                s.check_deadline()
        finally:
            await items.aclose()
        raise AssertionError("the event stream ended")  # pragma: no cover

    async def workers(self) -> List[Json]:
        return await self._do(_get_list(f"{API}/workers"))

    async def queues(self) -> List[Json]:
        return await self._do(_get_list(f"{API}/queues"))

    async def limits(self) -> List[Json]:
        return await self._do(_get_list(f"{API}/limits"))

    async def metrics(self) -> Json:
        return await self._do(_get(f"{API}/metrics"))

    def events(
        self,
        task: Optional[str] = None,
        queue: Optional[str] = None,
        tag: Optional[str] = None,
        last_event_id: Optional[int] = None,
    ) -> AsyncEventStream:
        s = self._events_stream(task, queue, tag, last_event_id)
        return AsyncEventStream(s, self._sse(s))
