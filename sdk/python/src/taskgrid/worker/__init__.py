"""A taskgrid worker in Python: your functions as task handlers.

    from taskgrid.worker import Worker, RetryAfter

    worker = Worker(slots=8)

    @worker.handler("resize")
    async def resize(ctx):
        ctx.progress(0.5, "half way")
        return {"size": ctx.payload["size"] * 2}

    worker.run_forever()          # or: python -m taskgrid.worker app:worker

It speaks the worker protocol (docs/protocol.md) over one gRPC stream to
the coordinator: it registers its handlers, accepts what it is offered,
reports progress, output, checkpoints and results, reconnects with backoff
listing what it still runs, and on SIGTERM drains (finishes what runs,
then says goodbye).
"""

import asyncio
import inspect
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import urllib.parse
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import grpc
import grpc.aio

from .v1 import worker_pb2 as pb
from .v1 import worker_pb2_grpc as pb_grpc

__all__ = ["Worker", "Context", "RetryAfter", "Fatal", "Cancelled"]

log = logging.getLogger("taskgrid.worker")

VERSION = "taskgrid-python/0.1.0"

#: How long an attempt runs before the worker says it accepted it (a
#: quicker one is reported by its result alone).
ACCEPT_AFTER = 0.002

#: How long a worker whose id is connected already keeps trying (its own
#: predecessor's stream may not have been seen to end yet).
DUPLICATE_ID_GRACE = 3.0

#: How long a checkpoint or spawn made while disconnected waits for the
#: worker to register again.
REQUEST_RECONNECT_WAIT = 30.0

Handler = Callable[["Context"], Union[Any, Awaitable[Any]]]


class RetryAfter(Exception):
    """Raise from a handler to be retried after `seconds` (counts against
    the task's `max_retries`)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds} s")
        self.seconds = seconds


class Fatal(Exception):
    """Raise from a handler to fail the task for good, whatever retries it
    has left."""


class Cancelled(Exception):
    """Raised by `Context.check_cancelled()` once the attempt is cancelled."""


class Context:
    """What a handler gets: the task's payload and ways to talk back."""

    def __init__(self, worker: "Worker", task_id: str, attempt: int, payload: Any,
                 checkpoint: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._worker = worker
        self._loop = loop
        #: The task's id.
        self.task_id = task_id
        #: The attempt number (1 for the first run).
        self.attempt = attempt
        #: The payload, decoded from JSON.
        self.payload = payload
        #: The last checkpoint an earlier attempt saved (decoded), or None.
        self.checkpoint = checkpoint
        self._cancel = asyncio.Event()
        self._reason: Optional[int] = None

    @property
    def cancelled(self) -> bool:
        """Whether the attempt was cancelled (or ran past its timeout): stop soon."""
        return self._reason is not None

    def check_cancelled(self) -> None:
        """Raises `Cancelled` once the attempt is cancelled."""
        if self.cancelled:
            raise Cancelled("cancelled")

    async def wait_cancelled(self) -> None:
        """Returns once the attempt is cancelled."""
        await self._cancel.wait()

    def _ref(self) -> "pb.AttemptRef":
        return pb.AttemptRef(task_id=self.task_id, attempt=self.attempt)

    def progress(self, fraction: float, message: str = "") -> None:
        """Reports progress, 0 to 1 (from any thread; does not wait)."""
        msg = pb.WorkerMessage(progress=pb.Progress(
            attempt=self._ref(), fraction=max(0.0, min(1.0, float(fraction))), message=message))
        self._loop.call_soon_threadsafe(self._worker._send_for, self, msg)

    def log(self, text: str) -> None:
        """Adds a line to the task's output (stream `log`, as given, as the
        Rust SDK's `ctx.log` does; from any thread)."""
        msg = pb.WorkerMessage(output=pb.Output(attempt=self._ref(), stream=pb.STREAM_LOG, data=text))
        self._loop.call_soon_threadsafe(self._worker._send_for, self, msg)

    async def save_checkpoint(self, data: Any) -> None:
        """Saves a checkpoint (JSON-encodable); returns once it is durable.
        A later attempt of the task gets it as `ctx.checkpoint`."""
        msg = pb.WorkerMessage(checkpoint=pb.Checkpoint(attempt=self._ref(), data_json=json.dumps(data)))
        await self._worker._request(msg, "checkpoint", self)

    async def spawn(self, request: Dict[str, Any]) -> str:
        """Submits a subtask (the HTTP API's submit form, e.g.
        ``{"kind": {"type": "handler", "name": "x", "payload": 1}}``) whose
        parent is this task; returns its id once it is committed."""
        msg = pb.WorkerMessage(spawn=pb.Spawn(parent=self._ref(), api_spec_json=json.dumps(request)))
        ack = await self._worker._request(msg, "spawn", self)
        return ack.task_id

    def save_checkpoint_blocking(self, data: Any) -> None:
        """`save_checkpoint` for a synchronous handler (runs in a thread)."""
        asyncio.run_coroutine_threadsafe(self.save_checkpoint(data), self._loop).result()

    def spawn_blocking(self, request: Dict[str, Any]) -> str:
        """`spawn` for a synchronous handler (runs in a thread)."""
        return asyncio.run_coroutine_threadsafe(self.spawn(request), self._loop).result()


class _Running:
    """An attempt this worker runs (or whose result waits to be sent)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.task: Optional["asyncio.Task[None]"] = None
        #: Its result message once it ended, until a stream took it.
        self.result: Optional[pb.WorkerMessage] = None
        #: The coordinator said it is no longer ours: report nothing.
        self.dropped = False
        #: Its accept was sent.
        self.accepted = False


def _target(url: str) -> Tuple[str, bool]:
    """host:port and whether TLS, from an http(s):// URL."""
    u = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    if u.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: the coordinator's URL is http://HOST:PORT or https://HOST:PORT")
    port = u.port or (443 if u.scheme == "https" else 7070)
    return f"{u.hostname}:{port}", u.scheme == "https"


class Worker:
    """A worker: register handlers with `@worker.handler(...)`, then `run()`.

    `server` defaults to $TASKGRID_SERVER (else http://127.0.0.1:7070),
    `token` to $TASKGRID_WORKER_TOKEN. `id` must be stable across restarts
    (the coordinator recognises a worker that comes back by it); it
    defaults to ``py-HOST-PID``. At most `slots` tasks run at once;
    a synchronous handler runs on a daemon thread of its own.
    """

    def __init__(self, server: Optional[str] = None, token: Optional[str] = None,
                 id: Optional[str] = None, name: Optional[str] = None, slots: int = 4,
                 labels: Optional[Dict[str, str]] = None, queues: Optional[List[str]] = None,
                 ca_file: Optional[str] = None, cancel_grace: float = 5.0,
                 drain_grace: float = 30.0) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.server = server or os.environ.get("TASKGRID_SERVER") or "http://127.0.0.1:7070"
        self.token = token if token is not None else os.environ.get("TASKGRID_WORKER_TOKEN")
        self.id = id or f"py-{socket.gethostname()}-{os.getpid()}"
        self.name = name or socket.gethostname()
        self.slots = slots
        self.labels = dict(labels or {})
        self.queues = list(queues or [])
        self.ca_file = ca_file
        self.cancel_grace = cancel_grace
        self.drain_grace = drain_grace
        self._handlers: Dict[str, Handler] = {}
        self._instance = f"{random.getrandbits(64):016x}"
        self._running: Dict[Tuple[str, int], _Running] = {}
        self._out: Optional["asyncio.Queue[Optional[pb.WorkerMessage]]"] = None
        self._acks: Dict[int, "asyncio.Future[pb.Ack]"] = {}
        self._next_request = 0
        self._draining = False
        self._stop: Optional[asyncio.Event] = None
        self._drained: Optional[asyncio.Event] = None
        self._connected: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._heartbeat_s = 5.0
        #: Ended attempts whose results go out together at the loop's next turn.
        self._to_report: List[_Running] = []
        #: Set while registered with a coordinator.
        self.registered = threading.Event()
        #: Sessions registered so far (see `wait_registered`).
        self.sessions = 0
        self._sessions_changed = threading.Condition()

    # ---- handlers ----

    def handler(self, name: Optional[str] = None) -> Callable[[Handler], Handler]:
        """Registers a function as the handler `name` (default: its own name).
        It gets a `Context`; it may be async or not. Its return value
        (JSON-encodable) is the task's result; raising fails the attempt
        (`RetryAfter`, `Fatal` say how it is retried)."""

        def register(fn: Handler) -> Handler:
            self._handlers[name or fn.__name__] = fn
            return fn

        return register

    def wait_registered(self, after: int = 0, timeout: Optional[float] = None) -> bool:
        """Waits (from any thread) until more than `after` sessions have
        registered — `after=worker.sessions` waits for the next one, e.g.
        after the coordinator restarted. False on timeout."""
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: self.sessions > after, timeout)

    # ---- running ----

    def run_forever(self) -> None:
        """Runs until SIGTERM or SIGINT, then drains: what runs finishes
        (within `drain_grace`), and the worker says goodbye."""
        asyncio.run(self.run(install_signals=True))

    async def run(self, install_signals: bool = False) -> None:
        """Connects and works until `stop()` (or a signal, with
        `install_signals`) has drained it; reconnects with backoff when the
        stream breaks."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()
        self._connected = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
        backoff = 0.1
        refused_since: Optional[float] = None
        while not self._drained.is_set():
            started = time.monotonic()
            try:
                await self._session()
                refused_since = None
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise RuntimeError(
                        f"the coordinator at {self.server} refused the worker token "
                        f"({e.details()})") from None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise RuntimeError(f"the coordinator refused the registration: {e.details()}") from None
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    # Perhaps our own predecessor, whose stream the
                    # coordinator has not seen end yet: for a moment only.
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since > DUPLICATE_ID_GRACE:
                        raise RuntimeError(
                            f"worker id {self.id} is already connected to the coordinator "
                            "(another worker with this id is running)") from None
                log.warning("lost the coordinator at %s: %s %s", self.server, code.name, e.details())
            self.registered.clear()
            if self._drained.is_set():
                return
            if time.monotonic() - started > 5:
                backoff = 0.1
            # Sleep the backoff, or less if the drain ends meanwhile.
            try:
                await asyncio.wait_for(self._drained.wait(), backoff)
                return
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 1.0)

    def stop(self) -> None:
        """Starts a drain: takes nothing new, lets what runs finish (within
        `drain_grace`), reports it, says goodbye and leaves (thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        assert self._stop is not None
        self._stop.set()
        self._send_soon(pb.WorkerMessage(heartbeat=self._heartbeat()))
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_grace
        while time.monotonic() < deadline and any(
                r.task is not None and not r.task.done() for r in self._running.values()):
            await asyncio.sleep(0.05)
        # What did not finish in time is stopped and not reported: goodbye
        # (or the heartbeat timeout) hands it back to the queue, where a
        # `cancelled` result would have ended it for good.
        for r in list(self._running.values()):
            if r.task is not None and not r.task.done():
                r.dropped = True
                r.ctx._reason = pb.Cancel.REASON_CANCEL
                r.ctx._cancel.set()
                r.task.cancel()
        self._leave()

    def _leave(self) -> None:
        """The drain is over: on a live stream, the last results, then
        goodbye, then the end of the stream; without one, just stop (the
        coordinator's heartbeat timeout re-queues what was held)."""
        assert self._drained is not None
        if self._out is not None:
            self._flush_results()
            self._out.put_nowait(pb.WorkerMessage(goodbye=pb.Goodbye()))
            self._out.put_nowait(None)
        self._drained.set()

    # ---- the session ----

    def _channel(self) -> grpc.aio.Channel:
        target, tls = _target(self.server)
        options = [("grpc.keepalive_time_ms", 30000)]
        if tls:
            roots = None
            if self.ca_file or os.environ.get("TASKGRID_CA"):
                with open(self.ca_file or os.environ["TASKGRID_CA"], "rb") as f:
                    roots = f.read()
            return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots), options)
        return grpc.aio.insecure_channel(target, options)

    def _register(self) -> pb.WorkerMessage:
        return pb.WorkerMessage(register=pb.Register(
            worker_id=self.id, name=self.name, labels=self.labels,
            handlers=sorted(self._handlers), shell=False, container=False,
            slots=self.slots, version=VERSION, queues=self.queues,
            running=[pb.AttemptRef(task_id=t, attempt=a) for (t, a), r in self._running.items()
                     if not r.dropped],
            instance=self._instance, cpus=float(os.cpu_count() or 0)))

    def _heartbeat(self) -> pb.Heartbeat:
        try:
            load = os.getloadavg()[0] / (os.cpu_count() or 1)
        except OSError:
            load = -1.0
        return pb.Heartbeat(
            running=[pb.AttemptRef(task_id=t, attempt=a) for (t, a) in self._running],
            load=load, draining=self._draining)

    def _send_soon(self, msg: pb.WorkerMessage) -> None:
        """Queues a message on the live stream (dropped while disconnected:
        progress and output are best effort; results are kept apart)."""
        if self._out is not None:
            self._out.put_nowait(msg)

    async def _request(self, msg: pb.WorkerMessage, field: str, ctx: Context) -> pb.Ack:
        """Sends a checkpoint or spawn of `ctx`'s attempt and waits for its ack."""
        assert self._loop is not None and self._connected is not None
        if self._out is None:
            # Disconnected: wait for the next registration rather than fail.
            try:
                await asyncio.wait_for(self._connected.wait(), REQUEST_RECONNECT_WAIT)
            except asyncio.TimeoutError:
                raise ConnectionError(f"no coordinator to send the {field} to") from None
        self._accept_for(ctx)
        self._next_request += 1
        rid = self._next_request
        getattr(msg, field).request_id = rid
        fut: "asyncio.Future[pb.Ack]" = self._loop.create_future()
        self._acks[rid] = fut
        self._send_soon(msg)
        try:
            ack = await fut
        finally:
            self._acks.pop(rid, None)
        if ack.error:
            raise RuntimeError(f"the coordinator refused the {field}: {ack.error}")
        return ack

    async def _session(self) -> None:
        out: "asyncio.Queue[Optional[pb.WorkerMessage]]" = asyncio.Queue()
        out.put_nowait(self._register())

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                m = await out.get()
                if m is None:
                    return
                yield m

        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        async with self._channel() as channel:
            stub = pb_grpc.WorkerGatewayStub(channel)
            call = stub.Session(outgoing(), metadata=metadata)
            beat: Optional["asyncio.Task[None]"] = None
            try:
                async for msg in call:
                    kind = msg.WhichOneof("msg")
                    if kind == "registered":
                        self._heartbeat_s = max(msg.registered.heartbeat_interval_ms, 100) / 1000
                        for ref in msg.registered.cancel:
                            self._drop((ref.task_id, ref.attempt))
                        self._out = out
                        if self._draining:
                            out.put_nowait(pb.WorkerMessage(heartbeat=self._heartbeat()))
                        for r in list(self._running.values()):
                            if r.result is not None:
                                # Ended while away: its result goes now.
                                self._finish_sent(r)
                            elif r.accepted:
                                # Its accept may have been lost with the old stream.
                                out.put_nowait(pb.WorkerMessage(accept=pb.Accept(attempt=r.ctx._ref())))
                        if self._drained is not None and self._drained.is_set():
                            self._leave()
                        assert self._connected is not None
                        self._connected.set()
                        beat = asyncio.ensure_future(self._beat(out))
                        self.registered.set()
                        with self._sessions_changed:
                            self.sessions += 1
                            self._sessions_changed.notify_all()
                        log.info("registered as %s at %s", self.id, self.server)
                    elif kind == "assignments":
                        for a in msg.assignments.assignments:
                            self._start(a)
                    elif kind == "cancel":
                        c = msg.cancel
                        r = self._running.get((c.attempt.task_id, c.attempt.attempt))
                        if r is not None:
                            r.ctx._reason = c.reason
                            r.ctx._cancel.set()
                            asyncio.ensure_future(self._stop_after_grace(r))
                    elif kind == "drain":
                        self.drain_grace = min(self.drain_grace, msg.drain.grace_ms / 1000)
                        self._begin_drain()
                    elif kind == "ack":
                        fut = self._acks.get(msg.ack.request_id)
                        if fut is not None and not fut.done():
                            fut.set_result(msg.ack)
            finally:
                self._out = None
                if self._connected is not None:
                    self._connected.clear()
                if beat is not None:
                    beat.cancel()
                for fut in self._acks.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("the stream to the coordinator broke"))
                self._acks.clear()

    async def _beat(self, out: "asyncio.Queue[Optional[pb.WorkerMessage]]") -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            out.put_nowait(pb.WorkerMessage(heartbeat=self._heartbeat()))

    def _drop(self, key: Tuple[str, int]) -> None:
        """The coordinator says the attempt is no longer ours: stop it and
        report nothing."""
        r = self._running.pop(key, None)
        if r is not None:
            r.dropped = True
            r.ctx._reason = pb.Cancel.REASON_CANCEL
            r.ctx._cancel.set()
            if r.task is not None and not r.task.done():
                r.task.cancel()

    def _start(self, a: pb.Assignment) -> None:
        ref = pb.WorkerMessage
        key = (a.attempt.task_id, a.attempt.attempt)
        kind = a.WhichOneof("kind")
        fn = self._handlers.get(a.handler.name) if kind == "handler" else None
        if fn is None or self._draining:
            reason = "draining" if self._draining else (
                f"no handler {a.handler.name!r}" if kind == "handler" else f"python worker runs no {kind} tasks")
            self._send_soon(ref(reject=pb.Reject(attempt=a.attempt, reason=reason)))
            return
        assert self._loop is not None
        try:
            payload = json.loads(a.handler.payload_json) if a.handler.payload_json else None
            checkpoint = json.loads(a.checkpoint_json) if a.checkpoint_json else None
        except ValueError as e:
            self._send_soon(ref(accept=pb.Accept(attempt=a.attempt)))
            bad = (f"payload is not JSON: {e}", pb.Failed.RETRY_NEVER, 0)
            self._send_soon(self._result_msg(a.attempt, failed=bad, started=time.monotonic()))
            return
        ctx = Context(self, key[0], key[1], payload, checkpoint, self._loop)
        r = _Running(ctx)
        self._running[key] = r
        r.task = asyncio.ensure_future(self._run(r, fn))
        # The accept waits a moment: a handler done by then is reported by
        # its result alone (the coordinator takes a result for an attempt
        # it has not seen accepted), one message instead of two.
        self._loop.call_later(ACCEPT_AFTER, self._accept, r)

    def _accept(self, r: _Running) -> None:
        """The deferred accept: only for an attempt still running."""
        if r.result is None:
            self._accept_once(r)

    def _accept_once(self, r: _Running) -> bool:
        """Sends `r`'s accept unless it went already; whether the attempt
        is still this worker's."""
        if r.dropped:
            return False
        if not r.accepted:
            r.accepted = True
            self._send_soon(pb.WorkerMessage(accept=pb.Accept(attempt=r.ctx._ref())))
        return True

    def _accept_for(self, ctx: Context) -> bool:
        """Accepts `ctx`'s attempt now if it was not yet (the coordinator
        takes what an attempt says only once it runs, even when its result
        is already on its way); whether it is still this worker's."""
        r = self._running.get((ctx.task_id, ctx.attempt))
        return r is not None and self._accept_once(r)

    def _send_for(self, ctx: Context, msg: pb.WorkerMessage) -> None:
        """Sends a message about `ctx`'s attempt (on the loop's thread)."""
        if self._accept_for(ctx):
            self._send_soon(msg)

    async def _run(self, r: _Running, fn: Handler) -> None:
        ctx = r.ctx
        started = time.monotonic()
        ref = ctx._ref()
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn(ctx)
            else:
                value = await self._in_thread(fn, ctx)
                if inspect.isawaitable(value):
                    value = await value
            msg = self._result_msg(ref, value=value, started=started, ctx=ctx)
        except asyncio.CancelledError:
            msg = self._result_msg(ref, started=started, ctx=ctx, stopped=True)
        except RetryAfter as e:
            msg = self._result_msg(ref, failed=(str(e), pb.Failed.RETRY_AFTER, int(e.seconds * 1000)), started=started, ctx=ctx)
        except Fatal as e:
            msg = self._result_msg(ref, failed=(str(e) or "fatal", pb.Failed.RETRY_NEVER, 0), started=started, ctx=ctx)
        except Cancelled:
            msg = self._result_msg(ref, started=started, ctx=ctx, stopped=True)
        except Exception as e:  # noqa: BLE001 - a handler's failure is the task's
            log.debug("handler of %s failed", ctx.task_id, exc_info=True)
            msg = self._result_msg(ref, failed=(f"{type(e).__name__}: {e}", pb.Failed.RETRY_POLICY, 0), started=started, ctx=ctx)
        if r.dropped:
            return
        r.result = msg
        if self._out is not None:
            self._finish_sent(r)

    def _in_thread(self, fn: Handler, ctx: Context) -> "asyncio.Future[Any]":
        """Runs a synchronous handler on a daemon thread of its own: one
        that never returns holds no pool slot, and does not keep the
        process from exiting after a drain."""
        assert self._loop is not None
        loop = self._loop
        fut: "asyncio.Future[Any]" = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def work() -> None:
            try:
                value = fn(ctx)
            except BaseException as e:  # noqa: BLE001 - handed to the loop
                loop.call_soon_threadsafe(settle, False, e)
            else:
                loop.call_soon_threadsafe(settle, True, value)

        threading.Thread(target=work, name=f"taskgrid-{ctx.task_id}", daemon=True).start()
        return fut

    def _finish_sent(self, r: _Running) -> None:
        """Queues an ended attempt's result for the live stream: the
        results of attempts that end in the same turn of the event loop go
        in one `results` message."""
        assert r.result is not None
        if not self._to_report:
            assert self._loop is not None
            self._loop.call_soon(self._flush_results)
        self._to_report.append(r)

    def _flush_results(self) -> None:
        batch, self._to_report = self._to_report, []
        if self._out is None:
            return  # sent after the next registration (still listed as running)
        results = [r.result.result for r in batch if not r.dropped and r.result is not None]
        if len(results) == 1:
            self._send_soon(pb.WorkerMessage(result=results[0]))
        elif results:
            self._send_soon(pb.WorkerMessage(results=pb.Results(results=results)))
        for r in batch:
            self._running.pop((r.ctx.task_id, r.ctx.attempt), None)

    async def _stop_after_grace(self, r: _Running) -> None:
        await asyncio.sleep(self.cancel_grace)
        if r.task is not None and not r.task.done():
            r.task.cancel()

    def _result_msg(self, ref: pb.AttemptRef, value: Any = None,
                    failed: Optional[Tuple[str, int, int]] = None, started: float = 0.0,
                    ctx: Optional[Context] = None, stopped: bool = False) -> pb.WorkerMessage:
        res = pb.Result(attempt=ref, duration_ms=int((time.monotonic() - started) * 1000))
        if ctx is not None and ctx._reason is not None:
            # Cancelled or past its timeout: that is how it ended, whatever
            # the handler did after it was told.
            if ctx._reason == pb.Cancel.REASON_TIMEOUT:
                res.timed_out.SetInParent()
            else:
                res.cancelled.SetInParent()
        elif stopped:
            res.cancelled.SetInParent()
        elif failed is not None:
            message, retry, after_ms = failed
            res.failed.CopyFrom(pb.Failed(message=message, retry=retry, retry_after_ms=after_ms))
        else:
            try:
                encoded = json.dumps(value)
            except (TypeError, ValueError) as e:
                res.failed.CopyFrom(pb.Failed(message=f"the result is not JSON-encodable: {e}",
                                              retry=pb.Failed.RETRY_NEVER))
            else:
                res.succeeded.CopyFrom(pb.Succeeded(result_json=encoded))
        return pb.WorkerMessage(result=res)
