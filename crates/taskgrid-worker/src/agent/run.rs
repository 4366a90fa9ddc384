//! Running one assignment: accept or refuse it, run it with the right
//! executor, stream its output, report its result.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use taskgrid_core::{Outcome, StopReason, TaskId, TaskKind};
use taskgrid_proto::worker::{self, worker_message::Msg as In};
use tokio::sync::{mpsc, watch};

use super::backend::Remote;
use super::session::Shared;
use crate::ExecReport;

/// Takes an assignment: refuses what this worker cannot run, else accepts
/// it and runs it in the background.
pub(super) fn start(shared: &Arc<Shared>, a: worker::Assignment, draining: bool) {
    let Ok((id, attempt)) = taskgrid_proto::task_id(a.attempt.as_ref()) else {
        tracing::warn!("ignored an assignment without a valid attempt");
        return;
    };
    let refuse = |reason: String| {
        shared.emit(In::Reject(worker::Reject {
            attempt: a.attempt.clone(),
            reason,
            release: false,
        }));
    };
    let kind = match taskgrid_proto::kind_to_core(&a) {
        Ok(k) => k,
        Err(e) => return refuse(format!("malformed assignment: {e}")),
    };
    if draining {
        return refuse("the worker is draining".into());
    }
    let capable = match &kind {
        TaskKind::Handler { name, .. } => shared
            .handlers
            .contains_key(&**name)
            .then_some(())
            .ok_or(format!("no handler {name:?} here")),
        TaskKind::Shell(spec) => shared
            .config
            .shell
            .admit(&spec.command, &spec.env)
            .map(|_| ()),
        TaskKind::Container(_) if shared.config.container.is_none() => {
            Err("no container runtime here".into())
        }
        _ => Ok(()),
    };
    if let Err(reason) = capable {
        return refuse(reason);
    }
    let need = a.slots.max(1);
    let stop = shared.track((id, attempt));
    let held = Held {
        a,
        id,
        attempt,
        kind,
        need,
        stop,
        since: tokio::time::Instant::now(),
    };
    let mut slots = relock(&shared.slots);
    if slots.held.is_empty() && slots.fits(need, shared.config.slots) {
        slots.busy += need;
        drop(slots);
        launch(shared, held);
    } else {
        // Offered beyond the slots (the prefetch): it starts, and is
        // accepted, when a slot frees.
        slots.held.push_back(held);
    }
}

/// The slots in use and the assignments waiting for one.
#[derive(Default)]
pub(super) struct Slots {
    busy: u32,
    pub(super) held: VecDeque<Held>,
}

impl Slots {
    /// Whether `need` more slots fit in `total` (a task bigger than the
    /// worker, which the coordinator never sends, runs alone).
    fn fits(&self, need: u32, total: u32) -> bool {
        self.busy + need <= total || self.busy == 0
    }
}

/// An assignment taken but not started yet.
pub(super) struct Held {
    a: worker::Assignment,
    id: TaskId,
    attempt: u32,
    kind: TaskKind,
    need: u32,
    stop: watch::Receiver<Option<StopReason>>,
    /// When it was taken.
    since: tokio::time::Instant,
}

impl Held {
    /// Its task and attempt.
    pub(super) fn key(&self) -> (TaskId, u32) {
        (self.id, self.attempt)
    }
}

impl Slots {
    /// Takes the held assignments that have waited `hold` or longer (the
    /// oldest are first).
    pub(super) fn take_stale(
        &mut self,
        hold: std::time::Duration,
        now: tokio::time::Instant,
    ) -> Vec<Held> {
        let mut stale = Vec::new();
        while self.held.front().is_some_and(|h| h.since + hold <= now) {
            stale.extend(self.held.pop_front());
        }
        stale
    }

    /// When the oldest held assignment will have waited `hold`.
    pub(super) fn hold_deadline(&self, hold: std::time::Duration) -> Option<tokio::time::Instant> {
        self.held.front().map(|h| h.since + hold)
    }
}

/// Accepts a taken assignment and runs it in the background; when it has
/// finished, its slots go to the next held assignment.
///
/// Order matters for short tasks: the accept is queued from the task itself,
/// whose first poll then starts the work before the connection gets to run
/// (and the accept shares a write with whatever else was queued); and a
/// finished attempt starts the next held one before its own result goes
/// out. So a slot never waits for the network.
fn launch(shared: &Arc<Shared>, h: Held) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let Held {
            a,
            id,
            attempt,
            kind,
            need,
            stop,
            since: _,
        } = h;
        // Gives the slots back however this ends; after a panic, reports
        // the attempt failed so that it is not left running.
        let guard = SlotsBack {
            shared: shared.clone(),
            need,
            attempt: (id, attempt),
            reported: false,
        };
        shared.emit(In::Accept(worker::Accept {
            attempt: a.attempt.clone(),
        }));
        let report = execute(&shared, id, attempt, kind, &a, stop).await;
        let mut result = taskgrid_proto::result_from_outcome(id, attempt, &report.outcome);
        result.exit_code = report.exit_code.or(result.exit_code);
        result.signal = report.signal;
        result.duration_ms = taskgrid_core::duration_millis(report.duration);
        result.cpu_seconds = report.cpu_seconds;
        result.peak_rss_bytes = report.peak_rss_bytes;
        guard.release_then_report(result);
    });
}

/// Releases an attempt's slots when dropped, first reporting it failed if
/// no result went out (its executor panicked).
struct SlotsBack {
    shared: Arc<Shared>,
    need: u32,
    attempt: (TaskId, u32),
    reported: bool,
}

impl SlotsBack {
    /// Frees the slots (starting held work), then sends `result`.
    fn release_then_report(mut self, result: worker::Result) {
        self.reported = true;
        let shared = self.shared.clone();
        drop(self);
        shared.emit(In::Result(result));
    }
}

impl Drop for SlotsBack {
    fn drop(&mut self) {
        if !self.reported {
            let (id, attempt) = self.attempt;
            let outcome = Outcome::Failed {
                message: "the worker's executor panicked".to_owned(),
                retry: taskgrid_core::RetryHint::Policy,
                exit_code: None,
            };
            self.shared
                .emit(In::Result(taskgrid_proto::result_from_outcome(
                    id, attempt, &outcome,
                )));
        }
        release(&self.shared, self.need);
    }
}

/// Frees `need` slots and starts the held assignments that now fit, in
/// the order they came; those stopped meanwhile (cancelled, or given to
/// another worker) are dropped without running.
fn release(shared: &Arc<Shared>, need: u32) {
    let mut start = Vec::new();
    {
        let mut slots = relock(&shared.slots);
        slots.busy = slots.busy.saturating_sub(need);
        while let Some(next) = slots.held.front() {
            if next.stop.borrow().is_some() {
                if let Some(h) = slots.held.pop_front() {
                    shared.forget(h.key());
                }
                continue;
            }
            if !slots.fits(next.need, shared.config.slots) {
                break;
            }
            if let Some(h) = slots.held.pop_front() {
                slots.busy += h.need;
                start.push(h);
            }
        }
    }
    for h in start {
        launch(shared, h);
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The variable that tells a shell task its task id.
pub const TASK_ID_VAR: &str = "TASKGRID_TASK_ID";
/// The variable that tells a shell task its attempt number (1 for the
/// first run; never the same twice for one task).
pub const ATTEMPT_VAR: &str = "TASKGRID_ATTEMPT";

async fn execute(
    shared: &Arc<Shared>,
    id: TaskId,
    attempt: u32,
    kind: TaskKind,
    a: &worker::Assignment,
    stop: watch::Receiver<Option<StopReason>>,
) -> ExecReport {
    let timeout = taskgrid_proto::timeout_of(a);
    let (out_tx, mut out_rx) = mpsc::channel::<(taskgrid_core::Stream, String)>(64);
    let forward = async {
        while let Some((stream, data)) = out_rx.recv().await {
            shared.emit(In::Output(worker::Output {
                attempt: a.attempt.clone(),
                stream: taskgrid_proto::stream_from_core(stream),
                data,
            }));
        }
    };
    let c = &shared.config;
    let work = async move {
        match kind {
            TaskKind::Shell(mut spec) => {
                // Who it is, for scripts that record or key on it (set
                // last: the task's own variables cannot fake them).
                spec.env
                    .retain(|(k, _)| k != TASK_ID_VAR && k != ATTEMPT_VAR);
                spec.env.push((TASK_ID_VAR.to_owned(), id.to_string()));
                spec.env.push((ATTEMPT_VAR.to_owned(), attempt.to_string()));
                let input = crate::ShellInput {
                    resources: taskgrid_proto::resources_of(a),
                    stdin: a.stdin.as_deref(),
                    own_cgroup: c.cgroup_every_task,
                    spawner: shared.spawner.as_ref(),
                };
                crate::run_shell(&spec, input, timeout, &c.limits, &c.shell, stop, out_tx).await
            }
            TaskKind::Container(spec) => match &c.container {
                Some(rt) => crate::run_container(&spec, rt, timeout, &c.limits, stop, out_tx).await,
                None => not_run("no container runtime here"),
            },
            TaskKind::Handler { name, payload } => {
                drop(out_tx);
                match shared.handlers.get(&*name).cloned() {
                    Some(h) => {
                        let backend = Arc::new(Remote::new(shared.clone(), attempt));
                        let checkpoint = Some(a.checkpoint_json.clone().into_boxed_str())
                            .filter(|c| !c.is_empty());
                        super::backend::run_handler(
                            h, backend, id, attempt, payload, checkpoint, timeout, &c.limits, stop,
                        )
                        .await
                    }
                    None => not_run("no such handler here"),
                }
            }
        }
    };
    // One task for both: no hand-off between them when the work ends.
    let (report, ()) = tokio::join!(work, forward);
    report
}

fn not_run(message: &str) -> ExecReport {
    ExecReport {
        outcome: Outcome::Failed {
            message: message.to_owned(),
            retry: taskgrid_core::RetryHint::Policy,
            exit_code: None,
        },
        exit_code: None,
        signal: None,
        duration: Instant::now().elapsed(),
        cpu_seconds: 0.0,
        peak_rss_bytes: 0,
        output_truncated: false,
    }
}
