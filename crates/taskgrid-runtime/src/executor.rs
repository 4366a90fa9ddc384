//! The local executor ([`Local`]): runs assignments as tokio tasks and
//! reports how they ended. It owns the table of the attempts it runs.
//!
//! Each accepted attempt gets an entry in that table while the engine lock
//! is still held ([`WorkerLink::accepted`]), so a cancel or timeout that
//! arrives before the handler starts finds it. Whoever removes the entry
//! reports the attempt — the handler when it returns, or the stop path when
//! a timeout or an ignored cancel makes it drop the handler — so every
//! attempt is reported exactly once and its slot is always freed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use taskgrid_core::{Assignment, Outcome, StopAttempt, StopReason, TaskId, TaskKind};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::inner::Inner;
use crate::link::WorkerLink;
use crate::report::{Completion, Report};
use crate::sync::relock;
use taskgrid_sdk::{TaskContext, catch_unwind, outcome_of};

/// A running (or about to run) handler call.
struct Running {
    cancel: watch::Sender<bool>,
    abort: Option<AbortHandle>,
}

impl Running {
    fn abort(&self) {
        let _ = self.cancel.send(true);
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}

/// The local executor. As the driver sees it, a [`WorkerLink`] that
/// accepts its offers at once and runs them as tokio tasks.
pub(crate) struct Local {
    me: Weak<Local>,
    inner: Weak<Inner>,
    running: Mutex<HashMap<(TaskId, u32), Running>>,
    /// Told when the table empties.
    idle: Notify,
}

impl Local {
    pub(crate) fn new(inner: Weak<Inner>) -> Arc<Local> {
        Arc::new_cyclic(|me| Local {
            me: me.clone(),
            inner,
            running: Mutex::new(HashMap::new()),
            idle: Notify::new(),
        })
    }

    fn running(&self) -> MutexGuard<'_, HashMap<(TaskId, u32), Running>> {
        relock(&self.running)
    }

    /// Resolves once no attempt runs here.
    pub(crate) async fn until_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.running().is_empty() {
                return;
            }
            idle.await;
        }
    }

    /// Aborts every attempt still running, unreported: their tasks go back
    /// to the queue with the worker (shutdown), or at the next start.
    pub(crate) fn abort_all(&self) {
        let abandoned: Vec<Running> = self.running().drain().map(|(_, r)| r).collect();
        for r in &abandoned {
            r.abort();
        }
    }

    /// Runs a prepared assignment on the tokio runtime. An attempt stopped
    /// before it started (its entry is gone) has been reported already.
    fn start(&self, inner: &Arc<Inner>, a: Assignment) {
        let key = (a.id, a.attempt);
        let TaskKind::Handler { name, payload } = a.kind else {
            self.finish_with(
                inner,
                key,
                Outcome::failed("the embedded executor runs only handler tasks"),
            );
            return;
        };
        let Some(handler) = inner.handlers.get(&name).cloned() else {
            self.finish_with(
                inner,
                key,
                Outcome::failed(format!("no handler {name:?} here")),
            );
            return;
        };
        let Some(local) = self.me.upgrade() else {
            return;
        };
        // Hold the table while spawning, so the task cannot finish and look
        // for its entry before the abort handle is in it.
        let mut running = self.running();
        let Some(entry) = running.get_mut(&key) else {
            return;
        };
        let backend: Arc<dyn crate::ContextBackend> = inner.clone();
        let ctx = TaskContext::new(
            backend,
            a.id,
            a.attempt,
            Arc::from(payload),
            a.checkpoint,
            entry.cancel.subscribe(),
        );
        let fut = catch_unwind(handler.call(ctx));
        let me = inner.clone();
        let task = inner.runtime().spawn(async move {
            let outcome = outcome_of(fut.await);
            local.finish_with(&me, key, outcome);
        });
        entry.abort = Some(task.abort_handle());
    }

    /// Reports an attempt if nobody has yet: only the caller that removes
    /// the running entry reports.
    fn finish_with(&self, inner: &Inner, key: (TaskId, u32), outcome: Outcome) {
        let removed = {
            let mut running = self.running();
            let r = running.remove(&key);
            if running.is_empty() {
                self.idle.notify_waiters();
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
}

impl WorkerLink for Local {
    fn accepts_at_once(&self) -> bool {
        true
    }

    /// Registers the accepted attempt (called with the engine locked).
    fn accepted(&self, id: TaskId, attempt: u32) {
        let (cancel, _) = watch::channel(false);
        self.running().insert(
            (id, attempt),
            Running {
                cancel,
                abort: None,
            },
        );
    }

    fn offer(&self, assignments: Vec<Assignment>) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        for a in assignments {
            self.start(&inner, a);
        }
    }

    /// Stops an attempt: at once for a timeout; for a cancel, the handler
    /// is told and dropped only if it has not returned within the cancel
    /// grace.
    fn stop(&self, s: StopAttempt) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let key = (s.id, s.attempt);
        match s.reason {
            StopReason::Timeout => {
                if let Some(r) = self.running().get(&key) {
                    r.abort();
                }
                self.finish_with(&inner, key, Outcome::TimedOut);
            }
            StopReason::Cancel => {
                let Some(r) = self.running().get(&key).map(|r| r.cancel.clone()) else {
                    return;
                };
                // `send_replace`, not `send`: between `accepted` and `start`
                // the channel has no receiver, and `send` would then drop
                // the value, so a handler started after this cancel would
                // never see it.
                r.send_replace(true);
                let Some(local) = self.me.upgrade() else {
                    return;
                };
                let grace = inner.config.cancel_grace;
                let me = inner.clone();
                inner.runtime().spawn(async move {
                    tokio::time::sleep(grace).await;
                    let still_running = local.running().get(&key).map(Running::abort).is_some();
                    if still_running {
                        local.finish_with(&me, key, Outcome::Cancelled);
                    }
                });
            }
        }
    }

    /// The prepared attempts are forgotten (never started), so nothing
    /// waits for them.
    fn abandon(&self, assignments: &[Assignment]) {
        let mut running = self.running();
        for a in assignments {
            running.remove(&(a.id, a.attempt));
        }
        if running.is_empty() {
            self.idle.notify_waiters();
        }
    }
}
