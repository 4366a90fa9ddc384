//! The store conformance suite: one set of behaviours every backend must
//! show. Public behind the `testing` feature, so a backend in another crate
//! runs the same suite:
//!
//! ```toml
//! [dev-dependencies]
//! taskgrid-store = { version = "…", features = ["testing"] }
//! ```
//!
//! ```ignore
//! // one #[test] per check, each on a fresh, empty store
//! taskgrid_store::conformance_tests!(postgres, || -> Box<dyn Store> { … });
//! ```
//!
//! Each check in [`checks`] is a plain function over an empty `&dyn Store`
//! that panics (it asserts) when the backend misbehaves. A durable backend
//! also runs [`checks::schedules_survive_reopening`], which opens its store
//! twice.
#![allow(clippy::unwrap_used)] // a test suite: a failed call is a failed check

pub mod checks;
mod fixtures;

#[cfg(all(test, feature = "sqlite"))]
use taskgrid_core::{AttemptRecord, Change, OutputChunk, State, TaskId, TaskRecord};

#[cfg(all(test, feature = "sqlite"))]
pub(crate) use fixtures::{Life, audit, fire, output, schedule, submit, task, tid, ts};

#[cfg(test)]
use crate::{MemoryStore, Store};
#[cfg(all(test, feature = "sqlite"))]
use crate::{SqliteOptions, SqliteStore, StoreError, TaskQuery};

/// Generates one `#[test]` per conformance check in a module `$name`, each
/// on a fresh store from `$make`: a closure returning a store, a
/// `Box<dyn Store>`, or anything that dereferences to a store (a guard that
/// cleans up after it). The module sees the caller's items through
/// `use super::*`.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_tests!(@tests ($make);
                round_trip_every_field,
                duplicate_submit_is_refused,
                conflict_rolls_back_the_whole_batch,
                status_of_unknown_task_is_not_found,
                a_change_before_its_submit_fails_as_one_by_one,
                failed_batch_leaves_no_trace,
                attempts_follow_the_lifecycle,
                bad_assignments_are_invalid,
                load_active_returns_exactly_the_live_tasks,
                list_filters_and_paginates,
                progress_and_checkpoint_overwrite,
                output_is_ordered_and_paged,
                count_by_state_counts_every_state,
                empty_apply_is_a_no_op,
                queue_pauses_are_kept,
                chained_changes_in_one_batch,
                any_text_round_trips,
                schedules_round_trip_in_name_order,
                deleting_a_schedule_removes_its_fires,
                fires_are_newest_first_within_bounds,
                a_duplicate_fire_fails_the_whole_batch,
                failed_batch_keeps_schedules_and_fires,
                a_fire_commits_with_its_tasks_submit,
                finished_tasks_are_found_by_their_end,
                a_deleted_task_leaves_nothing_behind,
                schedules_are_read_a_page_at_a_time,
                audit_entries_are_numbered_paged_and_pruned,
            );
        }
    };
    (@tests ($make:expr); $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let store = ($make)();
                $crate::conformance::checks::$check(&*store);
            }
        )*
    };
}

#[cfg(test)]
conformance_tests!(memory, || -> Box<dyn Store> {
    Box::new(MemoryStore::new())
});
#[cfg(all(test, feature = "sqlite"))]
conformance_tests!(sqlite_file, || -> Box<dyn Store> {
    Box::new(TempSqlite::new())
});
#[cfg(all(test, feature = "sqlite"))]
conformance_tests!(sqlite_in_memory, || -> Box<dyn Store> {
    Box::new(SqliteStore::open_in_memory().unwrap())
});

#[cfg(all(test, feature = "sqlite"))]
/// A [`SqliteStore`] on a file in a temporary directory removed on drop.
pub(crate) struct TempSqlite {
    // Fields drop in order: the database closes before its directory goes.
    pub(crate) store: SqliteStore,
    _dir: tempfile::TempDir,
}

#[cfg(all(test, feature = "sqlite"))]
impl TempSqlite {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path().join("db").join("taskgrid.db"),
            SqliteOptions::default(),
        )
        .unwrap();
        TempSqlite { store, _dir: dir }
    }
}

#[cfg(all(test, feature = "sqlite"))]
impl Store for TempSqlite {
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.store.apply(changes)
    }
    fn load_active(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.load_active()
    }
    fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.store.get(id)
    }
    fn list(&self, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.store.list(q)
    }
    fn attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        self.store.attempts(id)
    }
    fn output(
        &self,
        id: TaskId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
        self.store.output(id, after_seq, limit)
    }
    fn count_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
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
    ) -> Result<crate::FinishedScan, StoreError> {
        self.store.finished_before(cutoff, after, limit)
    }
    fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        self.store.paused_queues()
    }
    fn schedules(&self) -> Result<Vec<taskgrid_core::ScheduleRecord>, StoreError> {
        self.store.schedules()
    }
    fn fires(
        &self,
        schedule: &str,
        from: Option<taskgrid_core::Timestamp>,
        to: Option<taskgrid_core::Timestamp>,
        limit: usize,
    ) -> Result<Vec<taskgrid_core::FireRecord>, StoreError> {
        self.store.fires(schedule, from, to, limit)
    }
}
