"""Handlers the worker tests run (also as `python -m taskgrid.worker app:worker`)."""

import os
import threading

from taskgrid.worker import Fatal, RetryAfter, Worker


def make_worker(server=None, id=None, slots=4):  # type: ignore[no-untyped-def]
    w = Worker(server=server, id=id, slots=slots, cancel_grace=2.0, drain_grace=10.0)

    @w.handler("double")
    def double(ctx):  # type: ignore[no-untyped-def]
        return {"n": ctx.payload["n"] * 2}

    @w.handler("adouble")
    async def adouble(ctx):  # type: ignore[no-untyped-def]
        return {"n": ctx.payload["n"] * 2}

    @w.handler("boom")
    def boom(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("it went wrong")

    @w.handler("fatal")
    def fatal(ctx):  # type: ignore[no-untyped-def]
        raise Fatal("no point retrying")

    @w.handler("flaky")
    def flaky(ctx):  # type: ignore[no-untyped-def]
        # Fails its first attempt, asking for a retry 10 ms later.
        if ctx.attempt == 1:
            raise RetryAfter(0.01, "not yet")
        return {"attempt": ctx.attempt}

    @w.handler("resume")
    async def resume(ctx):  # type: ignore[no-untyped-def]
        # Saves a checkpoint and fails its first attempt; the retry gets it.
        if ctx.checkpoint is None:
            ctx.progress(0.5, "half way")
            ctx.log("saving")
            await ctx.save_checkpoint({"done": 21})
            raise RuntimeError("crashed after the checkpoint")
        return {"resumed_from": ctx.checkpoint["done"]}

    @w.handler("parent")
    async def parent(ctx):  # type: ignore[no-untyped-def]
        child = await ctx.spawn({"kind": {"type": "handler", "name": "double", "payload": {"n": 5}}})
        return {"child": child}

    @w.handler("wait_cancel")
    async def wait_cancel(ctx):  # type: ignore[no-untyped-def]
        ctx.log("waiting")
        await ctx.wait_cancelled()
        return "stopped"

    @w.handler("block")
    def block(ctx):  # type: ignore[no-untyped-def]
        # Runs until the test writes a line to the FIFO named by the payload.
        with open(ctx.payload["fifo"]) as f:
            f.read()
        return {"pid": os.getpid(), "attempt": ctx.attempt}

    @w.handler("hang")
    def hang(ctx):  # type: ignore[no-untyped-def]
        # Never returns, and ignores its cancel.
        threading.Event().wait()

    @w.handler("quick_log")
    async def quick_log(ctx):  # type: ignore[no-untyped-def]
        ctx.progress(1.0, "done")
        ctx.log("said before returning")
        return "ok"

    @w.handler("noop")
    async def noop(ctx):  # type: ignore[no-untyped-def]
        return None

    return w


worker = make_worker()
