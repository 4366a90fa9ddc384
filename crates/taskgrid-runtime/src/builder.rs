//! [`SystemConfig`] and [`TaskSystemBuilder`]: how a [`TaskSystem`] is
//! configured, opened on its store, and rebuilt from it.

use std::collections::HashMap;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskgrid_core::{Engine, EngineConfig, Outbox, TaskId, WorkerId, WorkerInfo};
#[cfg(feature = "sqlite")]
use taskgrid_store::SqliteOptions;
use taskgrid_store::{MemoryStore, Store, StoreConfig, Writer};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::clock::Clock;
use crate::executor::Local;
use crate::inner::Inner;
use crate::link::Links;
use crate::system::Lifecycle;
use crate::{Error, TaskSystem};
use taskgrid_sdk::{Handler, HandlerResult, TaskContext, handler_fn};

/// Settings of a [`TaskSystem`]; `Default` works.
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
        }
    }
}

/// Builds a [`TaskSystem`].
pub struct TaskSystemBuilder {
    config: SystemConfig,
    store: Option<Arc<dyn Store>>,
    config_store: Option<StoreConfig>,
    handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
}

impl TaskSystemBuilder {
    pub(crate) fn new() -> Self {
        TaskSystemBuilder {
            config: SystemConfig::default(),
            store: None,
            config_store: None,
            handlers: HashMap::new(),
        }
    }

    /// Uses this store (default: in memory, lost at exit).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
    /// Opens the store `config` names when the system is built (unless
    /// [`store`](Self::store) gave one already).
    pub fn store_config(mut self, config: StoreConfig) -> Self {
        self.config_store = Some(config);
        self
    }
    /// Uses a SQLite database file, created if missing.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(self, path: impl AsRef<Path>, options: SqliteOptions) -> Self {
        self.store_config(StoreConfig::Sqlite {
            path: path.as_ref().to_owned(),
            options,
        })
    }
    /// Handler calls run at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.config.concurrency = n.max(1);
        self
    }
    /// Serves only these queues (default: every queue). Tasks for other
    /// queues are accepted and wait.
    pub fn queues<S: AsRef<str>>(mut self, queues: impl IntoIterator<Item = S>) -> Self {
        self.config.queues = queues.into_iter().map(|q| q.as_ref().to_owned()).collect();
        self
    }
    /// Limits a queue to `depth` waiting tasks.
    pub fn queue_limit(mut self, queue: &str, depth: usize) -> Self {
        self.config
            .engine
            .queue_limits
            .insert(queue.to_owned(), depth);
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: SystemConfig) -> Self {
        self.config = config;
        self
    }
    /// Registers an async closure as handler `name`.
    pub fn handler<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.handler_impl(name, handler_fn(f))
    }
    /// Registers a [`Handler`] (with hooks) as `name`.
    pub fn handler_impl(mut self, name: &str, h: impl Handler) -> Self {
        self.handlers.insert(Arc::from(name), Arc::new(h));
        self
    }

    /// Opens the store and rebuilds the engine from it: tasks that were
    /// running when the last process died go back to their queue as a new
    /// attempt. Call [`TaskSystem::start`] to begin running them.
    ///
    /// Blocking: it opens and reads the store. From async code, call it
    /// through `tokio::task::spawn_blocking` (as `taskgrid server` does)
    /// when the store may be slow (a network database, a large file).
    pub fn build(self) -> Result<TaskSystem, Error> {
        let store: Arc<dyn Store> = match (self.store, self.config_store) {
            (Some(s), _) => s,
            (None, Some(config)) => config.open()?,
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let clock = Clock::system();
        let now = clock.now();
        let mut engine = Engine::new(self.config.engine.clone());
        let records = store.load_active()?;
        let live: std::collections::HashSet<TaskId> = records.iter().map(|r| r.id).collect();
        for rec in &records {
            for dep in engine
                .unresolved_dependencies(&rec.spec.after)
                .collect::<Vec<_>>()
            {
                if !live.contains(&dep)
                    && let Some(d) = store.get(dep)?
                {
                    engine.note_finished(dep, d.status.state);
                }
            }
        }
        let mut out = Outbox::default();
        engine.restore(records, now, &mut out);
        for queue in store.paused_queues()? {
            engine.restore_queue_paused(&queue);
        }
        let worker = WorkerId::new("local");
        let names: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        if !names.is_empty() {
            let mut local = WorkerInfo::local("local", self.config.concurrency, names);
            local.queues = self.config.queues.clone();
            engine.register_worker(local, now);
        }

        // Fail-stop: after a failed commit nothing later may be committed
        // (it could depend on what failed).
        let writer = Writer::try_spawn_fail_stop(store.clone())?;
        let (completions, completions_rx) = mpsc::unbounded_channel();
        let (committed, committed_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(self.config.event_capacity.max(1));
        let event_base = crate::event::seq_base();
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            engine: Mutex::new(engine),
            store,
            writer,
            handlers: self.handlers,
            events,
            waiters: Mutex::new(HashMap::new()),
            recent: Mutex::new((event_base, std::collections::VecDeque::new())),
            running: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            links: Mutex::new({
                let mut links = Links::default();
                links.attach(worker.clone(), Arc::new(Local { inner: me.clone() }));
                links
            }),
            completions,
            committed,
            wake: Notify::new(),
            idle: Notify::new(),
            all_done: Notify::new(),
            clock,
            worker,
            config: self.config,
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            failure_seen: Notify::new(),
            event_base,
            rt: std::sync::OnceLock::new(),
        });
        inner.persist(&inner.lock(), std::mem::take(&mut out.changes), None);
        Ok(TaskSystem {
            inner,
            tasks: Mutex::new(Lifecycle::Built {
                completions: completions_rx,
                committed: committed_rx,
            }),
            shut_down: tokio::sync::Mutex::new(false),
        })
    }
}
