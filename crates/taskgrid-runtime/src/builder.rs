//! [`TaskSystemBuilder`]: how a [`TaskSystem`] is configured, opened on its
//! store, and rebuilt from it.

use std::collections::HashMap;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use taskgrid_core::{Engine, Outbox, ScheduleSpec, State, TaskId, TaskSpec, WorkerId, WorkerInfo};
#[cfg(feature = "sqlite")]
use taskgrid_store::SqliteOptions;
use taskgrid_store::{MemoryStore, Store, StoreConfig, Writer};

/// Schedules read from the store per page at start-up.
const RESTORE_PAGE: usize = 1_000;
use tokio::sync::{Notify, mpsc};

use crate::clock::Clock;
use crate::config::SystemConfig;
use crate::executor::Local;
use crate::failstop::FailStop;
use crate::inner::Inner;
use crate::link::Links;
use crate::publisher::Publisher;
use crate::system::Lifecycle;
use crate::{Error, TaskSystem};
use taskgrid_sdk::{Handler, HandlerResult, TaskContext, handler_fn};

impl TaskSystem {
    /// Starts building a system.
    pub fn builder() -> TaskSystemBuilder {
        TaskSystemBuilder::new()
    }
}

/// Builds a [`TaskSystem`].
pub struct TaskSystemBuilder {
    config: SystemConfig,
    store: Option<Arc<dyn Store>>,
    config_store: Option<StoreConfig>,
    handlers: HashMap<Arc<str>, Arc<dyn Handler>>,
    schedules: Vec<(String, ScheduleSpec, TaskSpec)>,
}

impl TaskSystemBuilder {
    pub(crate) fn new() -> Self {
        TaskSystemBuilder {
            config: SystemConfig::default(),
            store: None,
            config_store: None,
            handlers: HashMap::new(),
            schedules: Vec::new(),
        }
    }

    /// Declares a schedule in code: [`build`](Self::build) creates it, or
    /// brings the stored one with this name to this spec and template
    /// (keeping its history); one already equal is left alone. So a
    /// program that declares its schedules at every start-up changes
    /// nothing on the second start.
    pub fn schedule(mut self, name: &str, spec: ScheduleSpec, template: TaskSpec) -> Self {
        self.schedules.push((name.to_owned(), spec, template));
        self
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
                if live.contains(&dep) {
                    continue;
                }
                // Gone from the store: deleted by retention or an operator,
                // which only takes finished tasks; and a dependency that
                // ended otherwise would have settled this task already
                // (it would not be live). So it succeeded.
                let state = store.get(dep)?.map_or(State::Succeeded, |d| d.status.state);
                engine.note_finished(dep, state);
            }
        }
        let mut out = Outbox::default();
        engine.restore(records, now, &mut out);
        for queue in store.paused_queues()? {
            engine.restore_queue_paused(&queue);
        }
        // After the tasks: a fire may find its schedule's last task live.
        // A page at a time: a hundred thousand schedules are never all
        // decoded at once (their memory would stay with the allocator).
        let mut after: Option<String> = None;
        loop {
            let page = store.schedules_after(after.as_deref(), RESTORE_PAGE)?;
            let full = page.len() == RESTORE_PAGE;
            after = page.last().map(|r| r.name.clone());
            engine.restore_schedules(page, now, &mut out);
            if !full {
                break;
            }
        }
        store.release_memory();
        crate::upkeep::restore_metrics(
            &mut engine,
            store.meta(crate::upkeep::METRICS_KEY)?,
            store.meta(crate::upkeep::TRUST_KEY)?,
        );
        for (name, spec, template) in self.schedules {
            let same = engine
                .schedule(&name)
                .is_some_and(|v| v.record.spec == spec && v.record.template == template);
            if !same {
                engine.put_schedule(&name, spec, template, now, &mut out)?;
            }
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
        let publisher = Publisher::new(self.config.event_capacity, self.config.replay_capacity);
        let mut local = None;
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            retention: tokio::sync::watch::Sender::new(crate::RetentionStats::default()),
            engine: Mutex::new(engine),
            store,
            writer,
            handlers: self.handlers,
            publisher,
            sessions: Mutex::new(HashMap::new()),
            links: Mutex::new({
                let mut links = Links::default();
                let executor = Local::new(me.clone());
                links.attach(worker.clone(), executor.clone());
                local = Some(executor);
                links
            }),
            completions,
            committed,
            wake: Notify::new(),
            rewake: Notify::new(),
            all_done: Notify::new(),
            clock,
            worker,
            config: self.config,
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            fail_stop: FailStop::default(),
            lazy: Default::default(),
            offer_batches: Default::default(),
            rt: std::sync::OnceLock::new(),
        });
        inner.persist(&inner.lock(), std::mem::take(&mut out.changes), None);
        // `new_cyclic` ran its closure, which made the executor.
        let local = local.ok_or(Error::ShutDown)?;
        Ok(TaskSystem {
            inner,
            local,
            tasks: Mutex::new(Lifecycle::Built {
                completions: completions_rx,
                committed: committed_rx,
            }),
            shut_down: tokio::sync::Mutex::new(false),
        })
    }
}
