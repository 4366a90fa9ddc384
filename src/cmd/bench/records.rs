//! A run's task records, read back over the HTTP API once it is over, and
//! the timings they hold — all on the coordinator's clock: `created_at`
//! (accepted), `started_at` (the attempt began running) and `finished_at`
//! (the terminal state was reached).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_api::{ListQuery, TaskView};
use taskgrid_client::Client;
use taskgrid_core::{State, TaskId};

use super::stats::Percentiles;

/// Tasks read per page (the coordinator's page cap).
const PAGE: usize = 1000;

/// Reads the records of `ids` (in any order), waiting until every one is
/// terminal or `deadline` passes.
pub(super) async fn fetch(
    client: &Client,
    ids: &[TaskId],
    deadline: tokio::time::Instant,
) -> anyhow::Result<Vec<TaskView>> {
    loop {
        let records = list(client, ids).await?;
        let live = records
            .iter()
            .filter(|r| !r.status.state.is_terminal())
            .count();
        if records.len() == ids.len() && live == 0 {
            return Ok(records);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} of {} tasks were not found and {live} have not finished before the timeout",
                ids.len() - records.len(),
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pass over the task list from the run's first id, keeping the run's.
/// Ids are time-ordered, so nothing older needs to be read.
async fn list(client: &Client, ids: &[TaskId]) -> anyhow::Result<Vec<TaskView>> {
    let wanted: HashSet<TaskId> = ids.iter().copied().collect();
    let Some(first) = ids.iter().min() else {
        return Ok(Vec::new());
    };
    let mut query = ListQuery {
        cursor: first.as_u128().checked_sub(1).map(TaskId::from_u128),
        limit: Some(PAGE),
        ..ListQuery::default()
    };
    let mut out = Vec::with_capacity(ids.len());
    loop {
        let page = client.list(&query).await.context("listing tasks")?;
        out.extend(page.tasks.into_iter().filter(|t| wanted.contains(&t.id)));
        match page.next_cursor {
            Some(c) if out.len() < wanted.len() => query.cursor = Some(c),
            _ => return Ok(out),
        }
    }
}

/// What the records of a run say.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Timings {
    /// Tasks per terminal (or other) state, by name.
    pub(super) states: BTreeMap<&'static str, usize>,
    /// Accepted → started running, per task that started.
    pub(super) to_start: Option<Percentiles>,
    /// Accepted → finished, per finished task.
    pub(super) to_done: Option<Percentiles>,
    /// First accepted → last finished.
    pub(super) span: Duration,
}

impl Timings {
    /// The timings of `records`.
    pub(super) fn of(records: &[TaskView]) -> Timings {
        let mut states = BTreeMap::new();
        let mut to_start = Vec::with_capacity(records.len());
        let mut to_done = Vec::with_capacity(records.len());
        let mut first = u64::MAX;
        let mut last = 0;
        for r in records {
            *states.entry(r.status.state.as_str()).or_insert(0) += 1;
            let created = r.created_at.as_micros();
            first = first.min(created);
            if let Some(s) = r.status.started_at {
                to_start.push(s.as_micros().saturating_sub(created));
            }
            if let Some(f) = r.status.finished_at {
                to_done.push(f.as_micros().saturating_sub(created));
                last = last.max(f.as_micros());
            }
        }
        Timings {
            states,
            to_start: Percentiles::of(&mut to_start),
            to_done: Percentiles::of(&mut to_done),
            span: Duration::from_micros(last.saturating_sub(first)),
        }
    }

    /// How many tasks ended in `state`.
    pub(super) fn count(&self, state: State) -> usize {
        self.states.get(state.as_str()).copied().unwrap_or(0)
    }
}
