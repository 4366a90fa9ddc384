//! The runtime never reads the store from an async thread: a store read is
//! blocking IO (a SQLite page, or a round trip to a network database) and
//! would stall every task sharing that thread. On a current-thread runtime
//! every async task runs on the test's own thread, so a store that notes
//! the thread of each call shows any read made from async code. (A small
//! write may be committed on an async thread where the store says its
//! commits are quick, `Store::quick_commits`; this store's are not, unless
//! a test sets `quick`.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use serde_json::json;
use taskgrid_core::{
    AttemptRecord, Change, OutputChunk, State, TaskId, TaskKind, TaskRecord, TaskSpec,
};
use taskgrid_runtime::{Task, TaskSystem};
use taskgrid_store::{MemoryStore, Store, StoreError, TaskQuery};

const LIMIT: Duration = Duration::from_secs(20);

/// A [`MemoryStore`] that records, once armed, every read made on the
/// thread it was told to watch.
struct Watched {
    store: MemoryStore,
    armed: AtomicBool,
    watched: Mutex<Option<ThreadId>>,
    reads: AtomicUsize,
    on_watched: Mutex<Vec<&'static str>>,
    /// How many output chunks each batch that carried any brought.
    output_batches: Mutex<Vec<usize>>,
    /// Its [`Store::quick_commits`].
    quick: AtomicBool,
    /// Commits made, once armed, on the watched thread.
    applies_on_watched: AtomicUsize,
}

impl Watched {
    fn new() -> Self {
        Watched {
            store: MemoryStore::new(),
            armed: AtomicBool::new(false),
            watched: Mutex::new(None),
            reads: AtomicUsize::new(0),
            on_watched: Mutex::new(Vec::new()),
            output_batches: Mutex::new(Vec::new()),
            quick: AtomicBool::new(false),
            applies_on_watched: AtomicUsize::new(0),
        }
    }

    /// Whether this call, once armed, is made on the watched thread.
    fn on_watched(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
            && *self.watched.lock().unwrap_or_else(|p| p.into_inner())
                == Some(std::thread::current().id())
    }

    fn read(&self, what: &'static str) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.on_watched() {
            self.on_watched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(what);
        }
    }
}

impl Store for Watched {
    fn quick_commits(&self) -> bool {
        self.quick.load(Ordering::SeqCst)
    }
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if self.on_watched() {
            self.applies_on_watched.fetch_add(1, Ordering::SeqCst);
        }
        let chunks = changes
            .iter()
            .filter(|c| matches!(c, Change::Output(_)))
            .count();
        if chunks > 0 {
            self.output_batches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(chunks);
        }
        self.store.apply(changes)
    }
    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.read("load_active");
        self.store.load_active()
    }
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.read("get");
        self.store.get(id)
    }
    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.read("list");
        self.store.list(q)
    }
    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.read("attempts");
        self.store.attempts(id)
    }
    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        self.read("output");
        self.store.output(id, after_seq, limit)
    }
    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        self.read("count_by_state");
        self.store.count_by_state()
    }
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.store.meta(key)
    }
    fn audit(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::AuditEntry>, StoreError> {
        self.store.audit(before, limit)
    }
    fn finished_before(
        &self,
        cutoff: taskgrid_core::Timestamp,
        after: Option<taskgrid_core::TaskId>,
        limit: usize,
    ) -> Result<taskgrid_store::FinishedScan, StoreError> {
        self.read("finished_before");
        self.store.finished_before(cutoff, after, limit)
    }
    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        self.read("paused_queues");
        self.store.paused_queues()
    }
    fn schedules(&self) -> Result<Vec<taskgrid_core::ScheduleRecord>, StoreError> {
        self.read("schedules");
        self.store.schedules()
    }
    fn fires(
        &self,
        schedule: &str,
        from: Option<taskgrid_core::Timestamp>,
        to: Option<taskgrid_core::Timestamp>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::FireRecord>, StoreError> {
        self.read("fires");
        self.store.fires(schedule, from, to, limit)
    }
}

// A backend written outside the store crate runs the store's own
// conformance suite (feature `testing`): this wrapper must behave as a
// store in every respect the runtime relies on.
taskgrid_store::conformance_tests!(watched_store_conforms, || -> Box<dyn Store> {
    Box::new(Watched::new())
});

#[tokio::test(flavor = "current_thread")]
async fn no_store_read_runs_on_an_async_thread() {
    let store = Arc::new(Watched::new());
    *store.watched.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
    let sys = TaskSystem::builder()
        .store(store.clone())
        .handler("echo", |ctx| async move {
            ctx.log("hello");
            ctx.payload::<serde_json::Value>()
        })
        .build()
        .expect("build");
    sys.start().expect("start");
    // Start-up reads the store before anything runs; from here on, every
    // read is made while the runtime serves tasks.
    store.armed.store(true, Ordering::SeqCst);

    let first = sys
        .submit(Task::handler("echo", &json!(1)))
        .await
        .expect("submit");
    assert!(first.wait_timeout(LIMIT).await.expect("wait").is_success());
    // A dependency and a parent the engine may have forgotten are looked
    // up in the store.
    let mut spec = TaskSpec::new(TaskKind::handler("echo", "2"));
    spec.parent = Some(first.id());
    let second = sys
        .submit(Task::from_spec(spec).after(first.id()))
        .await
        .expect("submit after");
    assert!(second.wait_timeout(LIMIT).await.expect("wait").is_success());

    for id in [first.id(), second.id()] {
        assert_eq!(
            sys.get(id).await.expect("get").status.state,
            State::Succeeded
        );
        assert_eq!(
            sys.get_committed(id).await.expect("get").status.state,
            State::Succeeded
        );
        assert_eq!(sys.attempts(id).await.expect("attempts").len(), 1);
        assert!(!sys.output(id).await.expect("output").is_empty());
        assert!(
            !sys.output_since(id, 0, 10)
                .await
                .expect("output")
                .is_empty()
        );
        assert_eq!(
            sys.explain(id).await.expect("explain").state,
            State::Succeeded
        );
        assert_eq!(
            sys.handle(id).status().await.expect("status"),
            State::Succeeded
        );
        assert!(sys.handle(id).wait().await.expect("wait").is_success());
        assert!(matches!(
            sys.cancel(id).await.expect("cancel"),
            taskgrid_core::CancelOutcome::AlreadyFinished(State::Succeeded)
        ));
    }
    assert_eq!(sys.children(first.id()).await.expect("children").len(), 1);
    assert_eq!(
        sys.list(&TaskQuery::default()).await.expect("list").len(),
        2
    );
    let counts = sys.counts().await.expect("counts");
    assert!(counts.contains(&(State::Succeeded, 2)), "{counts:?}");
    assert!(sys.get(TaskId::from_u128(7)).await.is_err());

    sys.shutdown().await.expect("shutdown");
    // At least: list and children (2), attempts, output and output_since
    // for each task (6), counts (1), and each wait's check of the stored
    // end (4).
    assert!(
        store.reads.load(Ordering::SeqCst) >= 13,
        "the store was read while serving: {} reads",
        store.reads.load(Ordering::SeqCst)
    );
    let on_async = store
        .on_watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        on_async.is_empty(),
        "store reads on the async thread: {on_async:?}"
    );
    // Nor a commit: this store's are not quick.
    assert_eq!(store.applies_on_watched.load(Ordering::SeqCst), 0);
}

/// Where the store's commits are quick, a light load's commits are made by
/// the async thread that made the change, as it lets go of the engine
/// (no wake-up of the writer thread), and a submit is still answered only
/// once its task is committed.
#[tokio::test(flavor = "current_thread")]
async fn at_light_load_the_async_thread_commits_before_it_answers() {
    let store = Arc::new(Watched::new());
    store.quick.store(true, Ordering::SeqCst);
    *store.watched.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
    let sys = TaskSystem::builder()
        .store(store.clone())
        .handler(
            "echo",
            |ctx| async move { ctx.payload::<serde_json::Value>() },
        )
        .build()
        .expect("build");
    sys.start().expect("start");
    store.armed.store(true, Ordering::SeqCst);
    for i in 0..20 {
        let task = sys
            .submit(Task::handler("echo", &json!(i)))
            .await
            .expect("submit");
        assert!(
            store.store.get(task.id()).expect("get").is_some(),
            "task {i} answered before its commit"
        );
        assert!(task.wait_timeout(LIMIT).await.expect("wait").is_success());
    }
    // Each task's submit and end could be; a commit the writer thread was
    // still finishing as the next came is not.
    let helped = store.applies_on_watched.load(Ordering::SeqCst);
    assert!(
        helped >= 10,
        "{helped} of 40 commits made by the async thread"
    );
    sys.shutdown().await.expect("shutdown");
}

/// What a running task says that only needs recording (here: output) is
/// gathered into the next batch, not committed line by line: 50 lines
/// logged one after another, yielding between them (so the driver and the
/// writer could run after each), reach the store in a few batches at most.
/// Paused time: the 10 ms window for gathered notes cannot close while the
/// task runs (it is always ready to run again), so the count does not
/// depend on this machine's speed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn notes_of_a_running_task_are_not_committed_one_by_one() {
    let store = Arc::new(Watched::new());
    let sys = TaskSystem::builder()
        .store(store.clone())
        .handler("chatty", |ctx| async move {
            for i in 0..50 {
                ctx.log(format!("line {i}"));
                tokio::task::yield_now().await;
            }
            Ok(serde_json::Value::Null)
        })
        .build()
        .expect("build");
    sys.start().expect("start");
    let h = sys
        .submit(Task::handler("chatty", &json!(null)))
        .await
        .expect("submit");
    // No timeout: in paused time it would lapse while the writer thread
    // commits (the runtime is idle then, so tokio jumps the clock).
    assert!(h.wait().await.expect("wait").is_success());
    sys.flush().expect("flush");
    assert_eq!(sys.output(h.id()).await.expect("output").len(), 50);
    let batches = store
        .output_batches
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // A note never wakes the driver to send it: the lines leave with the
    // task's end, or with a batch the start itself caused (the submit's
    // wake, a second dispatch, the offer's commit) if one leaves while the
    // task runs — never a batch of their own each.
    assert_eq!(batches.iter().sum::<usize>(), 50, "{batches:?}");
    assert!(batches.len() <= 4, "{batches:?}");
    sys.shutdown().await.expect("shutdown");
}
