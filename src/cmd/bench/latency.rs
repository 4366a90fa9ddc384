//! The light-load latency run: one task at a time — submit, wait until it
//! has finished, repeat. The end is seen on the coordinator's event stream
//! (`/api/v1/events`, opened before the first submit), so the client's
//! figure includes the event's way out; the records give the
//! coordinator's own figure (accepted → finished) next to it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskgrid_api::EventFilter;
use taskgrid_client::ServerEvent;
use taskgrid_core::{State, TaskId};
use tokio::sync::mpsc;

use super::Plan;
use super::coordinator::Target;
use super::records::{self, Timings};
use super::report::{LatencyReport, Setup};
use super::stats::Percentiles;

/// Tasks run first and not measured: connections, caches and the
/// allocator warm up.
const WARMUP: u64 = 10;

/// Runs `tasks` tasks one at a time through a coordinator and workers
/// started for the run, and stops them.
pub(super) async fn run(plan: &Plan, tasks: u64) -> anyhow::Result<LatencyReport> {
    super::with_fleet(
        plan,
        |t| {
            format!(
                "coordinator {} ({}); running {tasks} {} tasks one at a time",
                t.url,
                t.placement(),
                super::kind_name(plan.kind)
            )
        },
        async |target, route| measure(plan, tasks, target, route).await,
    )
    .await
}

/// A duration in whole microseconds.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Opens the event stream, runs the warm-up and the measured tasks one
/// by one, then reads their records.
async fn measure(
    plan: &Plan,
    tasks: u64,
    target: &Target,
    route: Option<&str>,
) -> anyhow::Result<LatencyReport> {
    let client = target.client()?;
    let deadline = tokio::time::Instant::now() + plan.timeout;
    // Subscribed once the call returns: no end can be missed.
    let mut events = client
        .events(&EventFilter::default(), None)
        .await
        .context("opening the event stream")?;
    let (ends_tx, mut ends) = mpsc::unbounded_channel::<(TaskId, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(item) = events.next().await {
            let Ok(ServerEvent::Task(ev)) = item else {
                if item.is_err() {
                    break;
                }
                continue;
            };
            if ev.new_state().is_some_and(State::is_terminal)
                && ends_tx.send((ev.id, Instant::now())).is_err()
            {
                break;
            }
        }
    });
    let req = plan.request(route);
    let mut ack = Vec::new();
    let mut done = Vec::new();
    let mut ids = Vec::new();
    let mut measured_from = Instant::now();
    for i in 0..WARMUP + tasks {
        if i == WARMUP {
            measured_from = Instant::now();
        }
        let sent = Instant::now();
        let id = client.submit(&req).await.context("submitting a task")?.id;
        let acked = sent.elapsed();
        // The end may have arrived before the acknowledgement: it waits in
        // the channel.
        let ended = loop {
            match tokio::time::timeout_at(deadline, ends.recv()).await {
                Ok(Some((ended, at))) if ended == id => break at,
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the coordinator's event stream ended"),
                Err(_) => bail!(
                    "task {id} did not finish within --timeout {:?}",
                    plan.timeout
                ),
            }
        };
        if i >= WARMUP {
            ack.push(micros(acked));
            done.push(micros(ended.duration_since(sent)));
            ids.push(id);
        }
    }
    let wall_secs = measured_from.elapsed().as_secs_f64();
    reader.abort();
    let records = records::fetch(&client, &ids, deadline).await?;
    let timings = Timings::of(&records);
    Ok(LatencyReport {
        setup: Setup::of(plan, target),
        tasks,
        warmup: WARMUP,
        states: timings.states,
        client_submit_to_done: Percentiles::of(&mut done),
        client_submit_ack: Percentiles::of(&mut ack),
        submit_to_start: timings.to_start,
        submit_to_done: timings.to_done,
        wall_secs,
    })
}
