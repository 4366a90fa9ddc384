//! [`SystemConfig`]: how a [`TaskSystem`](crate::TaskSystem) behaves.

use std::collections::HashMap;
use std::time::Duration;

use taskgrid_core::EngineConfig;

/// Settings of a [`TaskSystem`](crate::TaskSystem); `Default` works.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Handler calls run at once by the local executor.
    pub concurrency: u32,
    /// Engine limits and tuning.
    pub engine: EngineConfig,
    /// How long a cancelled handler may take to notice before it is dropped.
    pub cancel_grace: Duration,
    /// How long shutdown waits for running handlers before handing their
    /// tasks back to the queue.
    pub shutdown_grace: Duration,
    /// Events buffered per subscriber before a slow one starts missing them.
    pub event_capacity: usize,
    /// Queues the local executor serves; every queue when empty.
    pub queues: Vec<String>,
    /// Refuse handler tasks no local handler is registered for. Off in a
    /// coordinator, where remote workers bring their own handlers.
    pub check_handlers: bool,
    /// Recent events kept for subscribers that resume (SSE `Last-Event-ID`).
    pub replay_capacity: usize,
    /// Finished tasks are deleted from the store, with their attempts and
    /// output, once they ended longer ago than this (`None`: kept forever).
    pub retention: Option<Duration>,
    /// The output of finished tasks is deleted sooner, once they ended
    /// longer ago than this (`None`: it goes with its task). Output of a
    /// task that ran (from its creation to its end) longer than the shorter
    /// of this and a minute is kept until `retention`.
    pub output_retention: Option<Duration>,
    /// How often retention looks for tasks to delete.
    pub retention_every: Duration,
    /// A retention per queue, in place of `retention` for the tasks of
    /// that queue (`None`: kept forever).
    pub queue_retention: HashMap<String, Option<Duration>>,
}

impl SystemConfig {
    /// Default concurrency: 8.
    pub const CONCURRENCY_DEFAULT: u32 = 8;
    /// Default cancel grace: 10 s.
    pub const CANCEL_GRACE_DEFAULT: Duration = Duration::from_secs(10);
    /// Default shutdown grace: 30 s.
    pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
    /// Default event buffer: 4,096.
    pub const EVENT_CAPACITY_DEFAULT: usize = 4096;
    /// Default replay buffer: 10,000 events.
    pub const REPLAY_CAPACITY_DEFAULT: usize = 10_000;
    /// Default retention of finished tasks: 7 days.
    pub const RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Default retention interval: a minute.
    pub const RETENTION_EVERY_DEFAULT: Duration = Duration::from_secs(60);
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            concurrency: Self::CONCURRENCY_DEFAULT,
            engine: EngineConfig::default(),
            cancel_grace: Self::CANCEL_GRACE_DEFAULT,
            shutdown_grace: Self::SHUTDOWN_GRACE_DEFAULT,
            event_capacity: Self::EVENT_CAPACITY_DEFAULT,
            queues: Vec::new(),
            check_handlers: true,
            replay_capacity: Self::REPLAY_CAPACITY_DEFAULT,
            retention: Some(Self::RETENTION_DEFAULT),
            output_retention: None,
            retention_every: Self::RETENTION_EVERY_DEFAULT,
            queue_retention: HashMap::new(),
        }
    }
}

/// What the background retention sweeps have done since the system
/// started ([`TaskSystem::retention_stats`](crate::TaskSystem::retention_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    /// Sweeps finished.
    pub sweeps: u64,
    /// Finished tasks deleted.
    pub tasks_deleted: u64,
    /// Finished tasks whose output was deleted (output retention).
    pub outputs_deleted: u64,
}
