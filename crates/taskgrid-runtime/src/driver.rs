//! The two loops that drive a started system.
//!
//! One driver task owns the rhythm: it takes finished attempts, fires the
//! engine's timers and dispatches, all under one engine lock; the resulting
//! changes go to the group-commit writer in order. One publisher task
//! receives each batch once it is committed and carries out what it
//! released: stops and assignments through the workers' links, then the
//! events to subscribers, waiters and hooks.

use std::sync::Arc;
use std::time::Duration;

use taskgrid_core::Outbox;
use tokio::sync::{mpsc, oneshot};

use crate::inner::{Committed, Effects, Inner, relock};
use crate::report::Report;

/// How long the changes of a driver step (results, timeouts, dispatch) may
/// wait to share a commit while other attempts are still out (counted
/// before the step dispatches more). Results of short tasks arrive close
/// together, and each commit costs the store a WAL append (or an fsync);
/// this many milliseconds late, nobody notices. With nothing else out (one
/// task at a time, or one after another on one slot) the commit goes at
/// once.
const RESULT_WINDOW: Duration = Duration::from_millis(2);

impl Inner {
    /// One turn of the driver: finished attempts, timers, dispatch.
    pub(crate) fn step(&self, completions: &mut Vec<Report>) {
        let now = self.clock.now();
        let mut out = Outbox::default();
        {
            let mut engine = self.lock();
            for r in completions.drain(..) {
                match r {
                    Report::Attempt(c) => {
                        if let Some(u) = c.usage {
                            engine.record_usage(c.id, c.attempt, u);
                        }
                        let _ = engine.report(&c.worker, c.id, c.attempt, c.outcome, now, &mut out);
                    }
                    Report::Left(w) => {
                        // A worker that said goodbye and registered again
                        // since keeps its new registration.
                        if !relock(&self.sessions).contains_key(&w) {
                            engine.remove_worker(&w, now, &mut out);
                        }
                    }
                }
            }
            engine.tick(now, &mut out);
            // Attempts still out before this step hands out more: those will
            // report soon, and usually close together.
            let others_out = engine.attempts_out() > 0;
            self.dispatch_into(&mut engine, now, &mut out);
            // Let their results share one commit with these changes —
            // unless it carries offers: a worker waits for those, and they
            // may leave only once committed.
            let window = if others_out && out.assignments.is_empty() {
                RESULT_WINDOW
            } else {
                Duration::ZERO
            };
            let effects = Effects {
                assignments: std::mem::take(&mut out.assignments),
                stops: std::mem::take(&mut out.stops),
                then: None,
            };
            self.persist_then(
                &engine,
                std::mem::take(&mut out.changes),
                window,
                effects,
                None,
            );
            if engine.live_tasks() == 0 {
                self.all_done.notify_waiters();
            }
        }
    }

    /// The engine's next timer, or when gathered notes must be sent if
    /// sooner.
    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let timer = self.lock().next_wake().map(|t| self.clock.instant_at(t));
        timer.into_iter().chain(self.lazy_due()).min()
    }
}

pub(crate) async fn drive(
    inner: Arc<Inner>,
    mut completions: mpsc::UnboundedReceiver<Report>,
    mut stop: oneshot::Receiver<()>,
) {
    // `TaskSystem::start` took the first step.
    let mut batch = Vec::with_capacity(1024);
    loop {
        let wake_at = inner.next_wake();
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            n = completions.recv_many(&mut batch, 4096) => {
                if n == 0 { break; }
            }
            _ = inner.wake.notified() => {}
            // Gathered notes opened a window: sleep again, to its end at
            // the latest.
            _ = inner.rewake.notified() => continue,
            _ = sleep => {}
        }
        inner.step(&mut batch);
    }
    // Record what finished while stopping.
    while let Ok(c) = completions.try_recv() {
        batch.push(c);
    }
    inner.step(&mut batch);
}

pub(crate) async fn publish(
    inner: Arc<Inner>,
    mut committed: mpsc::UnboundedReceiver<Option<Committed>>,
) {
    while let Some(Some(Committed {
        events,
        schedules,
        effects,
    })) = committed.recv().await
    {
        // Executors first: a worker waits for its assignments.
        inner.carry_out(effects);
        if !events.is_empty() {
            inner.publisher.publish(events, &inner.handlers);
        }
        if !schedules.is_empty() {
            inner.publisher.publish_schedules(schedules);
        }
    }
}
