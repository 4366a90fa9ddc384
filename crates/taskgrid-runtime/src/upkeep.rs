//! Upkeep in the background: finished tasks are deleted from the store,
//! with their attempts and output, once they ended longer ago than
//! [`SystemConfig::retention`](crate::SystemConfig::retention) (their
//! output sooner with `output_retention`), a bounded batch per commit;
//! and the metrics and worker trust, which count what happened and not
//! the rows left, are saved in the store every [`METRICS_SAVE_EVERY`] and
//! at shutdown, and read back at start-up. (Deleting on demand is
//! `TaskSystem::delete` and `TaskSystem::prune`.)

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use taskgrid_core::{
    Change, Engine, Outbox, SavedMetrics, TaskCounts, TaskId, Timestamp, WorkerId,
};

use crate::Error;
use crate::config::RetentionStats;
use crate::inner::Inner;
use taskgrid_store::FinishedTask;

/// The [`Change::Meta`] key of the saved metrics.
pub(crate) const METRICS_KEY: &str = "metrics";
/// The [`Change::Meta`] key of the saved worker trust.
pub(crate) const TRUST_KEY: &str = "trust";
/// How often the metrics are saved (when they changed): a crash loses at
/// most this much of them; a shutdown loses nothing.
pub const METRICS_SAVE_EVERY: Duration = Duration::from_secs(10);

/// How long after the output cutoff a task may still be re-read by the
/// output sweep (see `prune_output`).
const OUTPUT_SETTLE: Duration = Duration::from_secs(60);

/// Tasks read per step of a sweep.
const SCAN_BATCH: usize = 1_000;
/// Tasks deleted per commit: small, so that no commit keeps the store's
/// writer busy for more than a few milliseconds.
pub const DELETE_BATCH: usize = 100;

/// How long finished tasks are kept: `default`, or their queue's own.
#[derive(Debug, Clone, Default)]
pub(crate) struct Keep {
    /// For the tasks of every queue not in `queues` (`None`: forever).
    pub(crate) default: Option<Duration>,
    /// Per queue (`None`: forever).
    pub(crate) queues: HashMap<String, Option<Duration>>,
}

impl Keep {
    /// Whether any task is ever deleted.
    pub(crate) fn any(&self) -> bool {
        self.default.is_some() || self.queues.values().any(Option::is_some)
    }

    /// The shortest retention of all: the sweep reads what finished before
    /// now less this.
    fn shortest(&self) -> Option<Duration> {
        self.queues
            .values()
            .flatten()
            .chain(&self.default)
            .min()
            .copied()
    }

    /// The retention of the tasks of `queue`.
    fn of(&self, queue: &str) -> Option<Duration> {
        self.queues.get(queue).copied().unwrap_or(self.default)
    }
}

/// Deletes every task that finished before `cutoff`; returns how many.
pub(crate) async fn prune(inner: &Inner, cutoff: Timestamp) -> Result<usize, Error> {
    sweep(inner, cutoff, &mut None, &|_| true, |e, ids, out| {
        e.delete_finished(&ids, out).len()
    })
    .await
}

/// Deletes every task that finished longer ago than its queue's retention
/// in `keep`; returns how many.
async fn prune_kept(inner: &Inner, now: Timestamp, keep: &Keep) -> Result<usize, Error> {
    let Some(shortest) = keep.shortest() else {
        return Ok(0);
    };
    let select = |f: &FinishedTask| {
        keep.of(&f.queue)
            .is_some_and(|k| f.finished_at < before(now, k))
    };
    sweep(
        inner,
        before(now, shortest),
        &mut None,
        &select,
        |e, ids, out| e.delete_finished(&ids, out).len(),
    )
    .await
}

/// Deletes the output of the tasks that finished before `cutoff`; returns
/// how many tasks lost theirs. Reads on from `cursor`, and moves it on
/// only over the tasks created more than `settle` before the cutoff: a
/// task read while still running, or that ended just after this sweep's
/// cutoff, is read again by later sweeps until it is that old (a task that
/// ran longer keeps its output until the task's own retention).
async fn prune_output(
    inner: &Inner,
    cutoff: Timestamp,
    settle: Duration,
    cursor: &mut Option<TaskId>,
) -> Result<usize, Error> {
    let n = sweep(
        inner,
        cutoff,
        &mut cursor.clone(),
        &|_| true,
        |e, ids, out| {
            let mut n = 0;
            for id in ids {
                // Never the output of a task the engine holds live.
                if e.get(id).is_none_or(|r| r.status.state.is_terminal()) {
                    out.changes.push(Change::OutputDeleted { id });
                    n += 1;
                }
            }
            n
        },
    )
    .await?;
    let settled = TaskId::created_before(before(cutoff, settle)).as_u128();
    let settled = TaskId::from_u128(settled.saturating_sub(1));
    *cursor = Some(cursor.map_or(settled, |c| c.max(settled)));
    Ok(n)
}

/// Reads the tasks that finished before `cutoff`, after `cursor` (moved
/// on as it reads), and commits `act` on those `select` takes,
/// [`DELETE_BATCH`] at a time; the sum of what `act` returned.
async fn sweep(
    inner: &Inner,
    cutoff: Timestamp,
    cursor: &mut Option<TaskId>,
    select: &(dyn Fn(&FinishedTask) -> bool + Sync),
    act: fn(&mut Engine, Vec<TaskId>, &mut Outbox) -> usize,
) -> Result<usize, Error> {
    let mut total = 0;
    loop {
        let after = *cursor;
        let scan = inner
            .read_store(move |s| s.finished_before(cutoff, after, SCAN_BATCH))
            .await?;
        let chosen: Vec<TaskId> = scan
            .finished
            .iter()
            .filter(|f| select(f))
            .map(|f| f.id)
            .collect();
        for chunk in chosen.chunks(DELETE_BATCH) {
            let ids = chunk.to_vec();
            total += inner
                .committed_command(move |e, _, out| act(e, ids, out))
                .await?;
        }
        match scan.last {
            Some(last) => *cursor = Some(last),
            None => return Ok(total),
        }
    }
}

/// `now` less `keep`.
fn before(now: Timestamp, keep: Duration) -> Timestamp {
    Timestamp::from_micros(
        now.as_micros()
            .saturating_sub(u64::try_from(keep.as_micros()).unwrap_or(u64::MAX)),
    )
}

/// Every `every`, deletes the tasks that finished longer ago than their
/// queue's retention in `keep` (and the audit entries older than its
/// default), and the output of those that finished more than
/// `keep_output` ago, until the system is gone or shut down.
pub(crate) async fn run(
    inner: Weak<Inner>,
    keep: Keep,
    keep_output: Option<Duration>,
    every: Duration,
) {
    // The first sweep one period after the start.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut output_cursor = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.clock.now();
        let mut done = RetentionStats::default();
        if let Some(keep_output) = keep_output {
            match prune_output(
                &inner,
                before(now, keep_output),
                keep_output.min(OUTPUT_SETTLE),
                &mut output_cursor,
            )
            .await
            {
                Ok(n) => done.outputs_deleted = n as u64,
                Err(Error::ShutDown | Error::StoreFailed) => return,
                Err(e) => tracing::warn!(error = %e, "retention: could not delete output"),
            }
        }
        if keep.any() {
            match prune_kept(&inner, now, &keep).await {
                Ok(n) => done.tasks_deleted = n as u64,
                // Nothing more can be committed: stop sweeping.
                Err(Error::ShutDown | Error::StoreFailed) => return,
                Err(e) => tracing::warn!(error = %e, "retention: could not delete finished tasks"),
            }
        }
        // The audit log is kept as long as the tasks of the default
        // retention.
        if let Some(default) = keep.default {
            let cutoff = before(now, default);
            let pruned = inner
                .committed_command(move |_, _, out| {
                    out.changes.push(Change::AuditPruned { before: cutoff });
                })
                .await;
            match pruned {
                Ok(()) => {}
                Err(Error::ShutDown | Error::StoreFailed) => return,
                Err(e) => tracing::warn!(error = %e, "retention: could not delete audit entries"),
            }
        }
        if done.tasks_deleted + done.outputs_deleted > 0 {
            tracing::info!(
                tasks = done.tasks_deleted,
                outputs = done.outputs_deleted,
                "retention: deleted finished tasks and output"
            );
        }
        inner.retention.send_modify(|s| {
            s.sweeps += 1;
            s.tasks_deleted += done.tasks_deleted;
            s.outputs_deleted += done.outputs_deleted;
        });
    }
}

/// Adds the metrics and worker trust saved before a restart to
/// `engine`'s; unreadable ones are reported and left out.
pub(crate) fn restore_metrics(engine: &mut Engine, metrics: Option<String>, trust: Option<String>) {
    if let Some(json) = metrics {
        match serde_json::from_str::<SavedMetrics>(&json) {
            Ok(saved) => {
                if !engine.restore_metrics(&saved) {
                    tracing::warn!("some saved metrics were inconsistent and are left out");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the saved metrics cannot be read; counting from zero");
            }
        }
    }
    if let Some(json) = trust {
        match serde_json::from_str::<Vec<(WorkerId, f64, f64)>>(&json) {
            Ok(saved) => engine.restore_trust(&saved),
            Err(e) => tracing::warn!(error = %e, "the saved worker trust cannot be read"),
        }
    }
}

/// The changes that save `engine`'s metrics and worker trust.
pub(crate) fn metrics_change(engine: &Engine) -> Vec<Change> {
    saving(&engine.metrics().saved(), &engine.worker_trust())
}

/// The changes that store these metrics and this worker trust.
fn saving(metrics: &SavedMetrics, trust: &[(WorkerId, f64, f64)]) -> Vec<Change> {
    let metrics = serde_json::to_string(metrics);
    let trust = serde_json::to_string(trust);
    let mut changes = Vec::with_capacity(2);
    for (key, value) in [(METRICS_KEY, metrics), (TRUST_KEY, trust)] {
        match value {
            Ok(value) => changes.push(Change::Meta {
                key: key.to_owned(),
                value,
            }),
            Err(e) => tracing::warn!(error = %e, key, "cannot be saved"),
        }
    }
    changes
}

/// Every [`METRICS_SAVE_EVERY`], saves the metrics if they changed, until
/// the system is gone or shut down.
pub(crate) async fn save_metrics(inner: Weak<Inner>) {
    // The first save one period after the start (what was read back at
    // start-up is in the store already).
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + METRICS_SAVE_EVERY,
        METRICS_SAVE_EVERY,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved: Option<TaskCounts> = inner.upgrade().map(|i| i.lock().metrics().totals());
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Copied under the engine's lock, written as JSON outside it.
        let (totals, metrics, trust) = {
            let engine = inner.lock();
            let m = engine.metrics();
            if saved == Some(m.totals()) {
                continue;
            }
            (m.totals(), m.saved(), engine.worker_trust())
        };
        let changes = saving(&metrics, &trust);
        let r = inner
            .committed_command(move |_, _, out| {
                out.changes.extend(changes);
                totals
            })
            .await;
        match r {
            Ok(now) => saved = Some(now),
            Err(Error::ShutDown | Error::StoreFailed) => return,
            Err(e) => tracing::warn!(error = %e, "the metrics could not be saved"),
        }
    }
}
