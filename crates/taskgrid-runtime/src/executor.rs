//! The local executor: runs assignments as tokio tasks and reports how they
//! ended.
//!
//! Each accepted attempt gets an entry in `Inner::running` while the engine
//! lock is still held ([`prepare`]), so a cancel or timeout that arrives
//! before the handler starts finds it. Whoever removes the entry reports
//! the attempt — the handler when it returns, or the stop path when a
//! timeout or an ignored cancel makes it drop the handler — so every attempt
//! is reported exactly once and its slot is always freed.

use std::sync::{Arc, Weak};

use taskgrid_core::{Assignment, Outcome, StopAttempt, StopReason, TaskId, TaskKind};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::inner::Inner;
use crate::link::WorkerLink;
use taskgrid_sdk::{TaskContext, catch_unwind, outcome_of};

/// What the driver learns from executors, in order.
#[derive(Debug)]
pub(crate) enum Report {
    /// An attempt ended.
    Attempt(Completion),
    /// A remote worker said goodbye: after its last results (which come
    /// first on this channel), hand back whatever it still holds.
    Left(taskgrid_core::WorkerId),
}

/// An attempt that ended, for the driver to report.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) worker: taskgrid_core::WorkerId,
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) outcome: Outcome,
    /// What the attempt cost, when the executor measured it.
    pub(crate) usage: Option<taskgrid_core::Usage>,
}

/// A running (or about to run) handler call.
pub(crate) struct Running {
    cancel: watch::Sender<bool>,
    abort: Option<AbortHandle>,
}

impl Running {
    pub(crate) fn abort(&self) {
        let _ = self.cancel.send(true);
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

/// The local executor as the driver sees it: a [`WorkerLink`] that
/// accepts its offers at once and runs them as tokio tasks.
pub(crate) struct Local {
    pub(crate) inner: Weak<Inner>,
}

impl WorkerLink for Local {
    fn accepts_at_once(&self) -> bool {
        true
    }

    fn accepted(&self, id: TaskId, attempt: u32) {
        if let Some(inner) = self.inner.upgrade() {
            prepare(&inner, id, attempt);
        }
    }

    fn offer(&self, assignments: Vec<Assignment>) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        for a in assignments {
            start(&inner, a);
        }
    }

    fn stop(&self, s: StopAttempt) {
        if let Some(inner) = self.inner.upgrade() {
            stop(&inner, s);
        }
    }

    /// The prepared attempts are forgotten (never started), so nothing
    /// waits for them.
    fn abandon(&self, assignments: &[Assignment]) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut running = inner.running();
        for a in assignments {
            running.remove(&(a.id, a.attempt));
        }
        if running.is_empty() {
            inner.idle.notify_waiters();
        }
    }
}

/// Registers an accepted attempt (call with the engine locked).
fn prepare(inner: &Inner, id: TaskId, attempt: u32) {
    let (cancel, _) = watch::channel(false);
    inner.running().insert(
        (id, attempt),
        Running {
            cancel,
            abort: None,
        },
    );
}

/// Runs a prepared assignment on the tokio runtime. An attempt stopped
/// before it started (its entry is gone) has been reported already.
fn start(inner: &Inner, a: Assignment) {
    let key = (a.id, a.attempt);
    let TaskKind::Handler { name, payload } = a.kind else {
        finish_with(
            inner,
            key,
            Outcome::failed("the embedded executor runs only handler tasks"),
        );
        return;
    };
    let Some(handler) = inner.handlers.get(&name).cloned() else {
        finish_with(
            inner,
            key,
            Outcome::failed(format!("no handler {name:?} here")),
        );
        return;
    };
    let Some(me) = inner.me.upgrade() else { return };
    // Hold the map while spawning, so the task cannot finish and look for
    // its entry before the abort handle is in it.
    let mut running = inner.running();
    let Some(entry) = running.get_mut(&key) else {
        return;
    };
    let backend: Arc<dyn crate::ContextBackend> = me.clone();
    let ctx = TaskContext::new(
        backend,
        a.id,
        a.attempt,
        Arc::from(payload),
        a.checkpoint,
        entry.cancel.subscribe(),
    );
    let fut = catch_unwind(handler.call(ctx));
    let task = inner.runtime().spawn(async move {
        let outcome = outcome_of(fut.await);
        finish_with(&me, key, outcome);
    });
    entry.abort = Some(task.abort_handle());
}

/// Reports an attempt if nobody has yet: only the caller that removes the
/// running entry reports.
fn finish_with(inner: &Inner, key: (TaskId, u32), outcome: Outcome) {
    let removed = {
        let mut running = inner.running();
        let r = running.remove(&key);
        if running.is_empty() {
            inner.idle.notify_waiters();
        }
        r.is_some()
    };
    if removed {
        let _ = inner.completions.send(Report::Attempt(Completion {
            worker: inner.worker.clone(),
            id: key.0,
            attempt: key.1,
            outcome,
            usage: None,
        }));
    }
}

/// Stops an attempt: at once for a timeout; for a cancel, the handler is
/// told and dropped only if it has not returned within the cancel grace.
fn stop(inner: &Inner, s: StopAttempt) {
    let key = (s.id, s.attempt);
    match s.reason {
        StopReason::Timeout => {
            if let Some(r) = inner.running().get(&key) {
                r.abort();
            }
            finish_with(inner, key, Outcome::TimedOut);
        }
        StopReason::Cancel => {
            let Some(r) = inner.running().get(&key).map(|r| r.cancel.clone()) else {
                return;
            };
            // `send_replace`, not `send`: between `prepare` and `start` the
            // channel has no receiver, and `send` would then drop the value,
            // so a handler started after this cancel would never see it.
            r.send_replace(true);
            let Some(me) = inner.me.upgrade() else { return };
            let grace = inner.config.cancel_grace;
            inner.runtime().spawn(async move {
                tokio::time::sleep(grace).await;
                let still_running = me.running().get(&key).map(Running::abort).is_some();
                if still_running {
                    finish_with(&me, key, Outcome::Cancelled);
                }
            });
        }
    }
}
