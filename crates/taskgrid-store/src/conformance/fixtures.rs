//! Test data for the conformance suite and the backends' own tests: ids,
//! task records, schedules and fires, and [`Life`], which drives a task
//! through its states the way the engine would.

use std::time::Duration;

use taskgrid_core::{
    AttemptOutcome, Change, FailureCode, FireOutcome, FireRecord, LabelReq, OutputChunk, Overlap,
    Priority, Progress, Recurrence, RetryPolicy, ScheduleRecord, ScheduleSpec, ScheduleState,
    State, Stream, TaskFailure, TaskId, TaskKind, TaskRecord, TaskSpec, TaskStatus, Timestamp,
    WorkerId,
};

use crate::Store;

pub(crate) fn tid(n: u128) -> TaskId {
    TaskId::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0000 + n)
}

pub(crate) fn ts(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

/// A queued handler task in the default queue.
pub(crate) fn task(n: u128) -> TaskRecord {
    TaskRecord {
        id: tid(n),
        spec: TaskSpec::new(TaskKind::handler("echo", r#"{"n":1}"#)),
        created_at: ts(1_000 + n as u64),
        status: TaskStatus::new(State::Queued),
        progress: None,
        checkpoint: None,
    }
}

pub(crate) fn submit(rec: TaskRecord) -> Change {
    Change::Submitted(Box::new(rec))
}

/// An audit entry at `at`: a client's call `action` from 127.0.0.1:5000,
/// answered 200.
pub(crate) fn audit(at: u64, action: &str) -> Change {
    Change::Audit(Box::new(taskgrid_core::AuditRecord {
        at: ts(at),
        actor: "client".into(),
        remote: Some("127.0.0.1:5000".into()),
        action: action.into(),
        status: 200,
        error: None,
    }))
}

/// A task record with every field set.
pub(crate) fn full_record() -> TaskRecord {
    let mut spec = TaskSpec::new(TaskKind::handler("resize", r#"{"w":640,"h":"é\"x"}"#));
    spec.queue = "images".into();
    spec.priority = Priority(7);
    spec.tags = vec!["batch-7".into(), "urgent".into()];
    spec.labels = vec![
        "os=linux".parse::<LabelReq>().unwrap(),
        "gpu".parse().unwrap(),
    ];
    spec.slots = 3;
    spec.timeout = Some(Duration::from_millis(1_500));
    spec.expires_at = Some(ts(9_000_000));
    spec.run_at = Some(ts(2_000_000));
    spec.dispatch_timeout = Some(Duration::from_secs(3));
    spec.retry = RetryPolicy {
        max_retries: 4,
        initial_backoff: Duration::from_millis(250),
        max_backoff: Duration::from_secs(60),
        // Floats whose shortest decimal form has 17 digits.
        multiplier: 0.994_141_423_413_993_5,
        jitter: 0.1 + 0.2,
    };
    spec.after = vec![tid(100), tid(101)];
    spec.unique_key = Some("thumb:42".into());
    spec.min_trust = Some(0.112_907_741_606_880_77);
    spec.parent = Some(tid(99));
    TaskRecord {
        id: tid(1),
        spec,
        created_at: ts(1_700_000_000_000_000),
        status: TaskStatus {
            state: State::Running,
            attempt: 3,
            retries: 2,
            worker: Some(WorkerId::new("gpu-box-1")),
            wake_at: Some(ts(5)),
            queued_at: Some(ts(6)),
            started_at: Some(ts(7)),
            finished_at: Some(ts(8)),
            cancel_requested: true,
            result: Some(r#"{"ok":true}"#.into()),
            error: Some(TaskFailure::new(FailureCode::Timeout, "took too long")),
            exit_code: Some(-9),
            usage: Some(taskgrid_core::Usage {
                cpu_seconds: 1.25,
                peak_rss_bytes: 1 << 30,
                signal: Some(9),
            }),
        },
        progress: Some(Progress {
            fraction: 0.625,
            message: Some("resizing".into()),
        }),
        checkpoint: Some(r#"{"done":[1,2]}"#.into()),
    }
}

/// Drives one task through states, producing the changes the engine would.
pub(crate) struct Life {
    pub(crate) id: TaskId,
    pub(crate) status: TaskStatus,
}

impl Life {
    pub(crate) fn of(rec: &TaskRecord) -> Self {
        Life {
            id: rec.id,
            status: rec.status.clone(),
        }
    }

    /// Moves to `state` at `at`, after `edit` adjusts the new status.
    pub(crate) fn to(
        &mut self,
        state: State,
        at: u64,
        outcome: Option<AttemptOutcome>,
        edit: impl FnOnce(&mut TaskStatus),
    ) -> Change {
        let from = self.status.state;
        self.status.state = state;
        edit(&mut self.status);
        Change::Status {
            id: self.id,
            from,
            at: ts(at),
            status: Box::new(self.status.clone()),
            attempt_outcome: outcome,
        }
    }

    /// queued → assigned to `worker` as the next attempt.
    pub(crate) fn assign(&mut self, worker: &str, at: u64) -> Change {
        self.to(State::Assigned, at, None, |s| {
            s.attempt += 1;
            s.worker = Some(WorkerId::new(worker));
        })
    }
}

pub(crate) fn ids(recs: &[TaskRecord]) -> Vec<TaskId> {
    recs.iter().map(|r| r.id).collect()
}

pub(crate) fn state_of(store: &dyn Store, id: TaskId) -> State {
    store.get(id).unwrap().unwrap().status.state
}

pub(crate) fn output(task: u128, attempt: u32, data: &str) -> Change {
    Change::Output(Box::new(OutputChunk {
        task: tid(task),
        attempt,
        stream: if data.starts_with("err") {
            Stream::Stderr
        } else {
            Stream::Stdout
        },
        data: data.into(),
    }))
}

/// A schedule named `name` with every field set, its template the task of
/// [`full_record`] (floats included).
pub(crate) fn schedule(name: &str) -> ScheduleRecord {
    let mut template = full_record().spec;
    template.parent = None;
    template.run_at = None;
    ScheduleRecord {
        name: name.to_owned(),
        spec: ScheduleSpec {
            recurrence: Recurrence::Cron("30 2 * * MON-FRI".into()),
            tz: Some("Europe/Berlin".into()),
            jitter: Duration::from_millis(1_500),
            start: Some(ts(1_000_000)),
            end: Some(ts(9_000_000_000_000)),
            max_runs: Some(12),
            overlap: Overlap::BufferAll,
            catch_up: Duration::from_secs(300),
        },
        template,
        created_at: ts(1_700_000_000_000_000),
        updated_at: ts(1_700_000_000_000_001),
        paused: true,
        note: Some("paused for the \"migration\" — é".into()),
        state: ScheduleState {
            cursor: ts(1_700_000_100_000_000),
            runs: 3,
            buffered: vec![ts(1_700_000_050_000_000), ts(1_700_000_060_000_000)],
            active: vec![tid(7), tid(8)],
            last_task: Some(tid(8)),
        },
    }
}

/// A schedule named `name` with every default: a fixed interval, UTC.
pub(crate) fn plain_schedule(name: &str) -> ScheduleRecord {
    ScheduleRecord {
        name: name.to_owned(),
        spec: ScheduleSpec::new(Recurrence::Every {
            every: Duration::from_secs(300),
            phase: Duration::from_secs(30),
        }),
        template: TaskSpec::new(TaskKind::handler("tick", "{}")),
        created_at: ts(10),
        updated_at: ts(10),
        paused: false,
        note: None,
        state: ScheduleState::default(),
    }
}

pub(crate) fn upsert(rec: ScheduleRecord) -> Change {
    Change::Schedule(Box::new(rec))
}

pub(crate) fn delete_schedule(name: &str) -> Change {
    Change::ScheduleDeleted {
        name: name.to_owned(),
    }
}

/// A skipped fire of `schedule` scheduled at `at`, acted on a little later.
pub(crate) fn fire(schedule: &str, at: u64) -> FireRecord {
    FireRecord {
        schedule: schedule.to_owned(),
        at: ts(at),
        fired_at: ts(at + 7),
        outcome: FireOutcome::Skipped,
        task: None,
        reason: Some(format!("the previous task is still live ({at})")),
        until: None,
        count: 1,
        manual: false,
    }
}

pub(crate) fn fired(rec: FireRecord) -> Change {
    Change::Fire(Box::new(rec))
}
