//! The audit log: [`TaskSystem::record_audit`] appends what a front end
//! (the HTTP API, the worker gateway) answered; [`TaskSystem::audit_log`]
//! reads it back. Retention deletes entries with the finished tasks
//! (`upkeep`).

use taskgrid_core::{AuditEntry, AuditRecord};

use crate::inner::{Inner, add_audit};
use crate::{Error, TaskSystem};

/// Most audit entries one read returns.
pub const AUDIT_PAGE_MAX: usize = 1_000;

impl TaskSystem {
    /// Appends `record` to the audit log, its `at` set to now; returns
    /// once it is committed (a front end answers its caller only then, so
    /// that nothing acknowledged goes unrecorded).
    pub async fn record_audit(&self, record: AuditRecord) -> Result<(), Error> {
        record_in(&self.inner, record).await
    }

    /// Audit entries numbered below `before` (all when `None`), newest
    /// first, at most `limit` (capped at [`AUDIT_PAGE_MAX`]).
    pub async fn audit_log(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, Error> {
        let limit = limit.min(AUDIT_PAGE_MAX);
        self.inner.read_store(move |s| s.audit(before, limit)).await
    }
}

/// Commits `record` to `inner`'s audit log, stamped with the time of the
/// command.
pub(crate) async fn record_in(inner: &Inner, record: AuditRecord) -> Result<(), Error> {
    inner
        .committed_command(move |_, now, out| add_audit(out, record, now))
        .await
}
