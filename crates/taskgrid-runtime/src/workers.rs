//! [`WorkerService`]: what a remote worker may do, as typed calls with
//! typed errors. The gRPC gateway decodes a worker's messages and calls
//! these; it never touches the engine, the sessions or the links itself.
//!
//! Every call is one engine command under the engine lock, persisted with
//! the commit discipline of `inner` (DESIGN §6): what a worker says is
//! recorded lazily (it rides in the next commit); what someone waits for (a
//! checkpoint's ack, a spawned subtask's id, the registration's answer) is
//! answered only once committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskgrid_core::{
    CommandError, Outbox, Outcome, Progress, StopAttempt, StopReason, Stream, TaskId, TaskSpec,
    Usage, WorkerId, WorkerInfo,
};
use tokio::sync::oneshot;

use crate::inner::{Effects, Inner, relock};
use crate::link::{SessionRecord, WorkerLink};
use crate::report::{Completion, Report};
use crate::{Error, Task, TaskSystem};

/// What a worker says about itself when it connects.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Who it is and what it can run.
    pub info: WorkerInfo,
    /// Its process's instance id: the same process reconnecting replaces
    /// its old session; another process with a connected worker's id is
    /// refused.
    pub instance: String,
    /// The attempts it still runs (after a reconnect).
    pub running: Vec<(TaskId, u32)>,
}

/// Why the service refused what a worker asked or said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Another process is connected under this worker id.
    #[error("a worker with id {0:?} is connected; give each worker its own --id")]
    IdInUse(WorkerId),
    /// The worker was dropped (missed heartbeats): it must register again.
    #[error("this worker was dropped; register again")]
    Dropped,
    /// A subtask was asked for by an attempt this worker does not run.
    #[error("attempt {attempt} of {task} is not running on this worker")]
    NotRunningHere {
        /// The parent task.
        task: TaskId,
        /// The attempt named.
        attempt: u32,
    },
    /// The engine refused the report (stale attempt, unknown task…).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The task system refused (shut down, store failed, invalid task…).
    #[error(transparent)]
    System(#[from] Error),
}

/// What a worker says of an attempt it holds that is only recorded (see
/// [`WorkerService::notes`]).
#[derive(Debug)]
pub enum Note {
    /// It took an offered attempt.
    Accept {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Output of a running attempt.
    Output {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
        /// Which stream.
        stream: Stream,
        /// The text.
        data: String,
    },
    /// Progress of a running attempt.
    Progress {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
        /// How far it is.
        progress: Progress,
    },
}

/// One worker's session with the service, from [`WorkerService::register`]
/// to [`WorkerService::detach`].
pub struct Session {
    worker: WorkerId,
    conn: u64,
    link: Arc<dyn WorkerLink>,
    linked: Option<oneshot::Receiver<()>>,
}

impl Session {
    /// The worker.
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// This session's number, unique in this process (for logs).
    pub fn conn(&self) -> u64 {
        self.conn
    }

    /// Waits until the registration is committed and the worker's link is
    /// published: nothing the worker says counts before. False if it never
    /// will be (the commit failed, or the system stopped).
    pub async fn linked(&mut self) -> bool {
        match self.linked.take() {
            Some(rx) => rx.await.is_ok(),
            None => true,
        }
    }
}

/// Session numbers, unique in this process.
static CONNS: AtomicU64 = AtomicU64::new(0);

/// The typed API remote workers are served through; get one with
/// [`TaskSystem::worker_service`].
#[derive(Clone)]
pub struct WorkerService {
    inner: Arc<Inner>,
}

impl WorkerService {
    /// Appends a worker's registration (or its refusal) to the audit log;
    /// returns once it is committed. See [`TaskSystem::record_audit`].
    pub async fn record_audit(&self, record: taskgrid_core::AuditRecord) -> Result<(), Error> {
        crate::audit::record_in(&self.inner, record).await
    }
}

impl TaskSystem {
    /// The service a worker gateway (gRPC, or any other transport) calls.
    pub fn worker_service(&self) -> WorkerService {
        WorkerService {
            inner: self.inner.clone(),
        }
    }
}

impl WorkerService {
    /// Registers a worker reached through `link`, reconciling what it says
    /// it runs with what the coordinator expects. Once committed, `link`
    /// hears [`WorkerLink::registered`] (with the attempts to stop), then
    /// any cancels it missed while away, and only then becomes the worker's
    /// link (so no offer overtakes the answer).
    pub fn register(
        &self,
        reg: Registration,
        link: Arc<dyn WorkerLink>,
    ) -> Result<Session, WorkerError> {
        let inner = &self.inner;
        let Registration {
            info,
            instance,
            running,
        } = reg;
        let id = info.id.clone();
        let conn = CONNS.fetch_add(1, Ordering::Relaxed) + 1;
        let (linked_tx, linked) = oneshot::channel::<()>();
        let now = inner.clock.now();
        let mut engine = inner.lock();
        {
            let mut sessions = relock(&inner.sessions);
            if let Some(old) = sessions.get(&id)
                && engine.has_worker(&id)
                && old.instance != instance
            {
                return Err(WorkerError::IdInUse(id));
            }
            sessions.insert(id.clone(), SessionRecord { conn, instance });
        }
        let mut out = Outbox::default();
        engine.register_worker(info, now);
        let stale = engine.reconcile_worker(&id, &running, now, &mut out);
        // Cancels issued while it was away are sent again.
        let pending: Vec<(TaskId, u32)> = running
            .iter()
            .copied()
            .filter(|k| !stale.contains(k) && engine.cancel_pending(k.0))
            .collect();
        let (worker, published) = (id.clone(), link.clone());
        let then = Box::new(move |inner: &Inner| {
            published.registered(&stale);
            for (task, attempt) in pending {
                published.stop(StopAttempt {
                    id: task,
                    attempt,
                    worker: worker.clone(),
                    reason: StopReason::Cancel,
                });
            }
            let old = relock(&inner.links).attach(worker.clone(), published);
            if let Some(old) = old {
                old.replaced();
            }
            // The old session of a reconnecting worker may have ended
            // between this registration and its commit, and paused the
            // worker as it detached: this session is its link now.
            let _ = inner.lock().set_worker_paused(&worker, false);
            inner.wake.notify_one();
            let _ = linked_tx.send(());
        });
        let effects = Effects {
            stops: out.stops,
            then: Some(then),
            ..Effects::default()
        };
        inner.persist_then(&engine, out.changes, Duration::ZERO, effects, None);
        drop(engine);
        inner.wake.notify_one();
        Ok(Session {
            worker: id,
            conn,
            link,
            linked: Some(linked),
        })
    }

    /// The session ended. After a goodbye the worker is removed and what
    /// it held goes back to the queue at once; after anything else it is
    /// offered nothing until it comes back or its heartbeat times out.
    pub fn detach(&self, session: Session, goodbye: bool) {
        let inner = &self.inner;
        let id = &session.worker;
        {
            // Under the engine lock, like a registration: a newer session of
            // the same worker either registered before (and owns it now) or
            // registers after this.
            let mut engine = inner.lock();
            let mut sessions = relock(&inner.sessions);
            if sessions.get(id).is_none_or(|s| s.conn != session.conn) {
                return; // a newer session of the same worker owns it now
            }
            sessions.remove(id);
            drop(sessions);
            if !goodbye {
                let _ = engine.set_worker_paused(id, true);
            }
        }
        relock(&inner.links).detach(id, &session.link);
        if goodbye {
            // Through the driver's channel, after the results sent before
            // it; ignored if the worker has registered again by then.
            let _ = inner.completions.send(Report::Left(id.clone()));
            inner.wake.notify_one();
        }
    }

    /// A heartbeat; a draining worker is offered nothing more.
    ///
    /// `health` is what the heartbeat said of the worker's host (its `at`
    /// is set to now): a worker over the `max_load` it registered with is
    /// offered nothing until it reports a load under it.
    pub fn heartbeat(
        &self,
        worker: &WorkerId,
        draining: bool,
        health: Option<taskgrid_core::WorkerHealth>,
    ) -> Result<(), WorkerError> {
        let now = self.inner.clock.now();
        let mut engine = self.inner.lock();
        if engine.heartbeat(worker, now).is_err() {
            return Err(WorkerError::Dropped);
        }
        if draining {
            let _ = engine.set_worker_paused(worker, true);
        }
        let freed = health.is_some_and(|mut h| {
            h.at = now;
            engine.set_worker_health(worker, h).unwrap_or(false)
        });
        drop(engine);
        if freed {
            // Under its threshold again: what waited may go to it now.
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    /// Records what a worker said in a row (accepts, output, progress) under
    /// one engine lock, in one store batch: a busy worker's stream carries
    /// many at once, and each alone would cost a lock, a batch and a wake
    /// of the publisher. Returns each note's result, in order.
    pub fn notes(&self, worker: &WorkerId, notes: Vec<Note>) -> Vec<Result<(), WorkerError>> {
        let now = self.inner.clock.now();
        self.inner.note(|e, out| {
            notes
                .into_iter()
                .map(|n| {
                    Ok(match n {
                        Note::Accept { id, attempt } => e.accept(worker, id, attempt, now, out),
                        Note::Output {
                            id,
                            attempt,
                            stream,
                            data,
                        } => e.output(worker, id, attempt, stream, data, out),
                        Note::Progress {
                            id,
                            attempt,
                            progress,
                        } => e.progress(worker, id, attempt, progress, out),
                    }?)
                })
                .collect()
        })
    }

    /// The worker refused an offered attempt.
    pub fn reject(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        reason: &str,
    ) -> Result<(), WorkerError> {
        let now = self.inner.clock.now();
        Ok(self
            .inner
            .command(|e, out| e.reject(worker, id, attempt, reason, now, out))?)
    }

    /// The worker hands back an attempt it held beyond its slots (its
    /// prefetch) and did not start; see [`Engine::release`].
    ///
    /// [`Engine::release`]: taskgrid_core::Engine::release
    pub fn release(&self, worker: &WorkerId, id: TaskId, attempt: u32) -> Result<(), WorkerError> {
        let now = self.inner.clock.now();
        Ok(self
            .inner
            .command(|e, out| e.release(worker, id, attempt, now, out))?)
    }

    /// An attempt ended. Reports go to the driver in the order they come,
    /// and a stale one is ignored there.
    pub fn report(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        outcome: Outcome,
        usage: Option<Usage>,
    ) {
        let _ = self.inner.completions.send(Report::Attempt(Completion {
            worker: worker.clone(),
            id,
            attempt,
            outcome,
            usage,
        }));
    }

    /// Saves a checkpoint of a running attempt; answers once committed.
    pub async fn checkpoint(
        &self,
        worker: &WorkerId,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> Result<(), WorkerError> {
        Ok(self.inner.checkpoint(worker, id, attempt, data).await?)
    }

    /// Submits a subtask of a running attempt; its id once committed.
    pub async fn spawn(
        &self,
        worker: &WorkerId,
        parent: TaskId,
        attempt: u32,
        mut spec: TaskSpec,
    ) -> Result<TaskId, WorkerError> {
        if !self.inner.lock().attempt_is_live(worker, parent, attempt) {
            return Err(WorkerError::NotRunningHere {
                task: parent,
                attempt,
            });
        }
        spec.parent = Some(parent);
        let ids = self.inner.submit(vec![Task::from_spec(spec)]).await?;
        ids.first()
            .copied()
            .ok_or(WorkerError::System(Error::ShutDown))
    }
}
