//! Handlers on a remote worker: their [`TaskContext`] talks to the
//! coordinator over the worker's stream.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskgrid_core::{
    Outcome, Progress, StopReason, Stream, TaskId, TaskSpec, Timestamp, duration_micros,
};
use taskgrid_proto::worker::{self, worker_message::Msg as In};
use taskgrid_sdk::{BoxFuture, ContextBackend, Handler, TaskContext, TaskError};
use tokio::sync::watch;

use super::session::Shared;
use crate::{ExecLimits, ExecReport};

/// A [`ContextBackend`] over the worker's stream.
pub(super) struct Remote {
    shared: Arc<Shared>,
    /// The attempt this context belongs to (spawns name it as the parent).
    attempt: u32,
}

impl Remote {
    pub(super) fn new(shared: Arc<Shared>, attempt: u32) -> Self {
        Remote { shared, attempt }
    }
}

impl ContextBackend for Remote {
    fn progress(&self, id: TaskId, attempt: u32, progress: Progress) {
        self.shared.emit(In::Progress(worker::Progress {
            attempt: Some(taskgrid_proto::attempt_ref(id, attempt)),
            fraction: progress.fraction,
            message: progress.message.unwrap_or_default(),
        }));
    }

    fn output(&self, id: TaskId, attempt: u32, stream: Stream, data: String) {
        self.shared.emit(In::Output(worker::Output {
            attempt: Some(taskgrid_proto::attempt_ref(id, attempt)),
            stream: taskgrid_proto::stream_from_core(stream),
            data,
        }));
    }

    fn checkpoint(
        &self,
        id: TaskId,
        attempt: u32,
        data: Box<str>,
    ) -> BoxFuture<Result<(), TaskError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let ack = shared
                .request(|request_id| {
                    In::Checkpoint(worker::Checkpoint {
                        attempt: Some(taskgrid_proto::attempt_ref(id, attempt)),
                        data_json: data.into(),
                        request_id,
                    })
                })
                .await
                .map_err(TaskError::Failed)?;
            if ack.error.is_empty() {
                Ok(())
            } else {
                Err(TaskError::Failed(ack.error))
            }
        })
    }

    fn spawn(&self, parent: TaskId, spec: TaskSpec) -> BoxFuture<Result<TaskId, TaskError>> {
        let shared = self.shared.clone();
        let self_attempt = self.attempt;
        Box::pin(async move {
            // Both forms: coordinators that predate `api_spec_json` read
            // `spec_json`.
            let api_spec_json = api_form(&spec).map_err(TaskError::fatal)?;
            let spec_json = serde_json::to_string(&spec).map_err(TaskError::fatal)?;
            let ack = shared
                .request(|request_id| {
                    In::Spawn(worker::Spawn {
                        parent: Some(taskgrid_proto::attempt_ref(parent, self_attempt)),
                        spec_json,
                        request_id,
                        api_spec_json,
                    })
                })
                .await
                .map_err(TaskError::Failed)?;
            if !ack.error.is_empty() {
                return Err(TaskError::Failed(ack.error));
            }
            ack.task_id.parse().map_err(TaskError::failed)
        })
    }

    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_micros(duration_micros(d))
    }
}

/// Runs a handler attempt: until it returns, or until it is stopped — at
/// once for a timeout, after the kill grace for an ignored cancel.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_handler(
    handler: Arc<dyn Handler>,
    backend: Arc<Remote>,
    id: TaskId,
    attempt: u32,
    payload: Box<str>,
    checkpoint: Option<Box<str>>,
    timeout: Option<Duration>,
    limits: &ExecLimits,
    mut stop: watch::Receiver<Option<StopReason>>,
) -> ExecReport {
    let started = Instant::now();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let ctx = TaskContext::new(
        backend,
        id,
        attempt,
        Arc::from(payload),
        checkpoint,
        cancel_rx,
    );
    let call = taskgrid_sdk::catch_unwind(handler.call(ctx));
    tokio::pin!(call);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let outcome = tokio::select! {
        r = &mut call => taskgrid_sdk::outcome_of(r),
        _ = &mut deadline => {
            let _ = cancel_tx.send(true);
            Outcome::TimedOut
        }
        reason = async { stop.wait_for(Option::is_some).await.ok().and_then(|r| *r) } => {
            let reason = reason.unwrap_or(StopReason::Cancel);
            let _ = cancel_tx.send(true);
            match reason {
                StopReason::Timeout => Outcome::TimedOut,
                StopReason::Cancel => {
                    // Give the handler the grace to notice and return.
                    let _ = tokio::time::timeout(limits.kill_grace, &mut call).await;
                    Outcome::Cancelled
                }
            }
        }
    };
    ExecReport {
        outcome,
        exit_code: None,
        signal: None,
        duration: started.elapsed(),
        cpu_seconds: 0.0,
        peak_rss_bytes: 0,
        output_truncated: false,
    }
}

/// The HTTP API's submit form of `spec`, which the protocol's `spawn`
/// carries: the engine's own form but for a handler's payload (the JSON
/// itself, not its text) and the timeouts' names (`timeout_ms`,
/// `dispatch_timeout_ms`). (Written here rather than taken from
/// `taskgrid-api`, which a remote worker does not compile.)
fn api_form(spec: &TaskSpec) -> serde_json::Result<String> {
    use serde_json::Value;
    let mut v = serde_json::to_value(spec)?;
    if let Some(obj) = v.as_object_mut() {
        for (from, to) in [
            ("timeout", "timeout_ms"),
            ("dispatch_timeout", "dispatch_timeout_ms"),
        ] {
            if let Some(x) = obj.remove(from) {
                obj.insert(to.into(), x);
            }
        }
        if let Some(kind) = obj.get_mut("kind").and_then(Value::as_object_mut)
            && let Some(Value::String(text)) = kind.get("payload")
        {
            // A payload is JSON text (the SDK builds it so); one that is not
            // is refused rather than sent on changed.
            let payload: Value = serde_json::from_str(text)?;
            kind.insert("payload".into(), payload);
        }
    }
    serde_json::to_string(&v)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use taskgrid_core::{Priority, RetryPolicy, TaskKind, TaskSpec, Timestamp};

    use super::api_form;

    #[test]
    fn a_spawned_spec_reads_back_through_the_apis_submit_form() {
        let mut spec = TaskSpec::new(TaskKind::handler("resize", r#"{"tags":["a"],"w":640}"#));
        spec.queue = "images".into();
        spec.priority = Priority::HIGH;
        spec.tags = vec!["t".into()];
        spec.labels = vec!["gpu".parse().unwrap()];
        spec.slots = 2;
        spec.timeout = Some(Duration::from_millis(1500));
        spec.dispatch_timeout = Some(Duration::from_secs(60));
        spec.run_at = Some(Timestamp::from_micros(1_000_000));
        spec.expires_at = Some(Timestamp::from_micros(9_000_000));
        spec.retry = RetryPolicy::retries(3);
        spec.unique_key = Some("u".into());
        spec.min_trust = Some(0.5);
        spec.concurrency_key = Some("customer-1".into());
        spec.stdin = Some(std::sync::Arc::new("in".into()));
        let json = api_form(&spec).unwrap();
        let req: taskgrid_api::SubmitRequest = serde_json::from_str(&json).unwrap();
        let (back, times) = req.into_spec();
        assert_eq!(back, spec, "{json}");
        assert_eq!((times.delay, times.expires_in), (None, None));
        // A payload that is not JSON text is refused, not sent on changed.
        let bad = TaskSpec::new(TaskKind::handler("resize", "not json"));
        assert!(api_form(&bad).is_err());
    }
}
