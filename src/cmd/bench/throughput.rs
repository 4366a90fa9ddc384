//! The throughput run: K clients submit N tasks (in batches, or one by
//! one) as fast as the coordinator acknowledges them, M workers run them,
//! and the run ends when the coordinator counts N more finished tasks (on
//! its summary stream, which costs it next to nothing, unlike polling its
//! metrics or following every event).
//! The figures come from three places: this process's clock (submit rate,
//! wall time), /proc (the coordinator's CPU and peak memory, read when the
//! last task is seen finished, before the records are read back), and the
//! task records (latencies and end-to-end span, on the coordinator's clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use taskgrid_api::SubmitRequest;
use taskgrid_client::Client;
use taskgrid_core::{State, TaskCounts, TaskId};
use tokio::task::JoinSet;

use super::coordinator::Target;
use super::records::{self, Timings};
use super::report::{Setup, ThroughputReport, Usage};
use super::{Plan, note, usage};

/// Runs `tasks` tasks through a coordinator and workers started for the
/// run, and stops them.
pub(super) async fn run(plan: &Plan, tasks: u64) -> anyhow::Result<ThroughputReport> {
    super::with_fleet(
        plan,
        |t| {
            format!(
                "coordinator {} ({}), {} worker(s) × {} slots; submitting {tasks} {} tasks",
                t.url,
                t.placement(),
                plan.workers,
                plan.slots,
                super::kind_name(plan.kind)
            )
        },
        async |target, route| measure(plan, tasks, target, route).await,
    )
    .await
}

/// Tasks the coordinator has seen finish since it started.
fn finished(t: &TaskCounts) -> u64 {
    t.succeeded + t.failed + t.timed_out + t.cancelled + t.expired
}

/// Submits, waits for the end, samples the coordinator's use, reads the
/// records back.
async fn measure(
    plan: &Plan,
    tasks: u64,
    target: &Target,
    route: Option<&str>,
) -> anyhow::Result<ThroughputReport> {
    let client = target.client()?;
    let mut summaries = client
        .summary(&[])
        .await
        .context("following the coordinator's summary")?;
    let first = summaries
        .next()
        .await
        .context("the summary stream ended at once")?
        .context("reading the coordinator's summary")?;
    let base = finished(&first.totals);
    let before = target.pid().and_then(|p| usage::sample(p).ok());
    let req = plan.request(route);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let next = Arc::new(AtomicU64::new(0));
    let mut submitters = JoinSet::new();
    for _ in 0..plan.clients {
        let c = target.client()?;
        submitters.spawn(submit(
            c,
            req.clone(),
            plan.batch,
            tasks,
            plan.keys,
            next.clone(),
        ));
    }
    let mut ids: Vec<TaskId> = Vec::with_capacity(usize::try_from(tasks).unwrap_or(0));
    let mut submitted = start;
    while let Some(joined) = submitters.join_next().await {
        let (mine, last) = joined.context("a submitting client panicked")??;
        ids.extend(mine);
        submitted = submitted.max(last);
    }
    let submit_secs = submitted.duration_since(start).as_secs_f64();
    note(format_args!(
        "submitted {} in {submit_secs:.2} s; waiting for them to finish",
        ids.len()
    ));
    let mut done = 0;
    while done < tasks {
        let Ok(next) = tokio::time::timeout_at(deadline, summaries.next()).await else {
            bail!(
                "only {done} of {tasks} tasks finished within --timeout {:?}",
                plan.timeout
            );
        };
        let summary = next
            .context("the coordinator's summary stream ended")?
            .context("reading the coordinator's summary")?;
        done = finished(&summary.totals).saturating_sub(base);
    }
    let wall_secs = start.elapsed().as_secs_f64();
    let after = target.pid().and_then(|p| usage::sample(p).ok());
    note("all finished; reading the task records");
    let records = records::fetch(&client, &ids, deadline).await?;
    let timings = Timings::of(&records);
    let e2e_secs = timings.span.as_secs_f64();
    Ok(ThroughputReport {
        setup: Setup::of(plan, target),
        tasks,
        clients: plan.clients,
        batch: plan.batch,
        succeeded: timings.count(State::Succeeded),
        states: timings.states.clone(),
        submit_secs,
        submit_per_sec: tasks as f64 / submit_secs.max(1e-9),
        e2e_secs,
        e2e_per_sec: tasks as f64 / e2e_secs.max(1e-9),
        wall_secs,
        submit_to_start: timings.to_start,
        submit_to_done: timings.to_done,
        coordinator: Usage::between(target.scope(Some(plan.worker_mode)), before, after),
        store_bytes: target.store_bytes(),
    })
}

/// One client: takes the next `batch` tasks of `total` until none are
/// left; returns their ids and when its last submit was acknowledged.
async fn submit(
    client: Client,
    req: SubmitRequest,
    batch: u32,
    total: u64,
    keys: u32,
    next: Arc<AtomicU64>,
) -> anyhow::Result<(Vec<TaskId>, Instant)> {
    let mut template = vec![req; batch as usize];
    let keyed = |template: &mut [SubmitRequest], from: u64| {
        for (i, r) in template.iter_mut().enumerate() {
            r.concurrency_key = Some(format!("k{}", (from + i as u64) % u64::from(keys)));
        }
    };
    let mut ids = Vec::new();
    loop {
        let from = next.fetch_add(u64::from(batch), Ordering::Relaxed);
        if from >= total {
            return Ok((ids, Instant::now()));
        }
        let n = usize::try_from((total - from).min(u64::from(batch))).unwrap_or(1);
        if keys > 0 {
            keyed(&mut template, from);
        }
        if batch == 1 {
            let r = client
                .submit(&template[0])
                .await
                .context("submitting a task")?;
            ids.push(r.id);
        } else {
            let r = client
                .submit_batch(&template[..n])
                .await
                .context("submitting a batch")?;
            ids.extend(r);
        }
    }
}
