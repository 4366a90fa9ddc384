//! [`WorkerLink`]: the one interface through which the driver hands work to
//! a worker and stops it. Two implementations: the local executor
//! ([`crate::executor::Local`]), which runs handlers on this runtime, and a
//! remote worker's gRPC stream (`Remote` in `taskgrid-server`'s gateway). The driver looks a
//! worker's link up by id and knows no other difference between them.

use std::collections::HashMap;
use std::sync::Arc;

use taskgrid_core::{Assignment, StopAttempt, TaskId, WorkerId};

/// Where a worker's committed assignments and stops go.
///
/// [`offer`](Self::offer), [`stop`](Self::stop),
/// [`registered`](Self::registered), [`abandon`](Self::abandon) and
/// [`replaced`](Self::replaced) are called by the publisher once the batch
/// they belong to is committed (nothing leaves before its commit), in
/// commit order; none may block.
pub trait WorkerLink: Send + Sync + 'static {
    /// Whether this worker takes every offer at once (the local executor):
    /// the driver then accepts the offer in the same commit as the offer
    /// itself and tells [`accepted`](Self::accepted). Default: no; a remote
    /// worker answers with an accept of its own.
    fn accepts_at_once(&self) -> bool {
        false
    }

    /// Attempt `attempt` of task `id` was offered and accepted at once
    /// (only when [`accepts_at_once`](Self::accepts_at_once)); called under
    /// the engine lock, before the commit, so a stop that follows finds it.
    fn accepted(&self, _id: TaskId, _attempt: u32) {}

    /// The worker's registration is committed; `cancel` lists the attempts
    /// it said it runs that the coordinator no longer wants (stop them).
    /// Sent before any offer or stop.
    fn registered(&self, _cancel: &[(TaskId, u32)]) {}

    /// Hands over committed assignments, all for this worker, in order.
    fn offer(&self, assignments: Vec<Assignment>);

    /// Stops one attempt (a committed cancel or timeout).
    fn stop(&self, stop: StopAttempt);

    /// The commit that carried these offers failed: they never left, and
    /// nothing may wait for them.
    fn abandon(&self, _assignments: &[Assignment]) {}

    /// Another link took this worker's place (its process connected
    /// again): end this one.
    fn replaced(&self) {}
}

/// The link of each worker the driver can reach, by worker id.
#[derive(Default)]
pub(crate) struct Links {
    links: HashMap<WorkerId, Arc<dyn WorkerLink>>,
}

impl Links {
    /// Makes `link` the worker's link; the one it replaces, if any.
    pub(crate) fn attach(
        &mut self,
        worker: WorkerId,
        link: Arc<dyn WorkerLink>,
    ) -> Option<Arc<dyn WorkerLink>> {
        self.links.insert(worker, link)
    }

    /// Removes the worker's link if it is still `link` (a newer one that
    /// replaced it stays).
    pub(crate) fn detach(&mut self, worker: &WorkerId, link: &Arc<dyn WorkerLink>) {
        if self
            .links
            .get(worker)
            .is_some_and(|l| std::ptr::addr_eq(Arc::as_ptr(l), Arc::as_ptr(link)))
        {
            self.links.remove(worker);
        }
    }

    /// The worker's link, if it has one.
    pub(crate) fn get(&self, worker: &WorkerId) -> Option<&Arc<dyn WorkerLink>> {
        self.links.get(worker)
    }

    /// `items` grouped by the link of their worker, in their order; items
    /// for a worker without a link are dropped (a remote worker that
    /// vanished keeps its offers until its heartbeat times out, which
    /// re-queues them).
    pub(crate) fn group<T>(
        &self,
        items: Vec<T>,
        worker: impl Fn(&T) -> &WorkerId,
    ) -> Vec<(Arc<dyn WorkerLink>, Vec<T>)> {
        let mut groups: Vec<(Arc<dyn WorkerLink>, Vec<T>)> = Vec::new();
        let mut index: HashMap<&WorkerId, usize> = HashMap::new();
        for item in items {
            let w = worker(&item);
            if let Some(&i) = index.get(w) {
                groups[i].1.push(item);
            } else if let Some((w, link)) = self.links.get_key_value(w) {
                index.insert(w, groups.len());
                groups.push((link.clone(), vec![item]));
            }
        }
        groups
    }
}

/// A worker's current session, recorded when it registers (before the
/// registration is committed and its link published).
pub(crate) struct SessionRecord {
    pub(crate) conn: u64,
    /// The worker process's instance id (see `Register.instance`).
    pub(crate) instance: String,
}
