//! [`FailStop`]: the state of a system whose commit failed. From the first
//! failed commit the engine is ahead of the store; nothing more may be
//! committed, dispatched or sent, and only a restart (which rebuilds the
//! engine from the store) recovers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use taskgrid_store::StoreError;
use tokio::sync::Notify;

use crate::sync::relock;

/// Whether a commit failed, and why.
#[derive(Default)]
pub(crate) struct FailStop {
    failed: AtomicBool,
    /// The commit failed because another coordinator took the store over.
    superseded: AtomicBool,
    /// The first failed commit's error, for `/readyz` and the logs.
    reason: Mutex<Option<String>>,
    /// Told when a commit fails.
    seen: Notify,
}

impl FailStop {
    /// Marks the system failed by `e`, keeping the first reason.
    pub(crate) fn fail(&self, e: &StoreError) {
        if matches!(e, StoreError::Fenced { .. }) {
            self.superseded.store(true, Ordering::Release);
        }
        relock(&self.reason).get_or_insert_with(|| e.to_string());
        self.failed.store(true, Ordering::Release);
        self.seen.notify_waiters();
    }

    /// Whether a commit has failed.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Whether a commit failed because another coordinator took over.
    pub(crate) fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Why the system stopped taking work, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.is_failed() {
            return None;
        }
        Some(
            relock(&self.reason)
                .clone()
                .unwrap_or_else(|| "a store commit failed".to_owned()),
        )
    }

    /// `e`, unless it only says the writer had stopped ([`StoreError::Closed`])
    /// after a commit failed: then that commit's error, which says why.
    pub(crate) fn explain(&self, e: StoreError) -> StoreError {
        match (e, self.failure()) {
            (StoreError::Closed, Some(why)) => StoreError::Backend(why.into()),
            (e, _) => e,
        }
    }

    /// Resolves once a commit has failed (at once if one has).
    pub(crate) async fn failed(&self) -> String {
        loop {
            let seen = self.seen.notified();
            if let Some(why) = self.failure() {
                return why;
            }
            seen.await;
        }
    }
}
