//! Running one assignment: accept or refuse it, run it with the right
//! executor, stream its output, report its result.

use std::sync::Arc;
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
    let stop = shared.track((id, attempt));
    shared.emit(In::Accept(worker::Accept {
        attempt: a.attempt.clone(),
    }));
    let shared = shared.clone();
    tokio::spawn(async move {
        let report = execute(&shared, id, attempt, kind, &a, stop).await;
        let mut result = taskgrid_proto::result_from_outcome(id, attempt, &report.outcome);
        result.exit_code = report.exit_code.or(result.exit_code);
        result.signal = report.signal;
        result.duration_ms = taskgrid_core::duration_millis(report.duration);
        result.cpu_seconds = report.cpu_seconds;
        result.peak_rss_bytes = report.peak_rss_bytes;
        shared.emit(In::Result(result));
    });
}

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
    let forward = {
        let shared = shared.clone();
        let attempt_ref = a.attempt.clone();
        tokio::spawn(async move {
            while let Some((stream, data)) = out_rx.recv().await {
                shared.emit(In::Output(worker::Output {
                    attempt: attempt_ref.clone(),
                    stream: taskgrid_proto::stream_from_core(stream),
                    data,
                }));
            }
        })
    };
    let c = &shared.config;
    let report = match kind {
        TaskKind::Shell(spec) => {
            crate::run_shell(&spec, timeout, &c.limits, &c.shell, stop, out_tx).await
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
                    let checkpoint =
                        Some(a.checkpoint_json.clone().into_boxed_str()).filter(|c| !c.is_empty());
                    super::backend::run_handler(
                        h, backend, id, attempt, payload, checkpoint, timeout, &c.limits, stop,
                    )
                    .await
                }
                None => not_run("no such handler here"),
            }
        }
    };
    let _ = forward.await;
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
