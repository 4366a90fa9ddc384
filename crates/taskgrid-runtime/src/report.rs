//! [`Report`]: what the driver learns from executors, local and remote, in
//! the order it happened.

use taskgrid_core::{Outcome, TaskId};

/// What the driver learns from executors, in order.
#[derive(Debug)]
pub(crate) enum Report {
    /// An attempt ended.
    Attempt(Completion),
    /// A remote worker said goodbye: after its last results (which come
    /// first on this channel), hand back whatever it still holds.
    Left(taskgrid_core::WorkerId),
}

/// An attempt that ended, for the driver to report.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) worker: taskgrid_core::WorkerId,
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) outcome: Outcome,
    /// What the attempt cost, when the executor measured it.
    pub(crate) usage: Option<taskgrid_core::Usage>,
}
