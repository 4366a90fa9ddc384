//! The audit log's entries: who changed what, when, and how it ended.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One mutating call (or a worker's registration), as the audit log keeps
/// it ([`Change::Audit`](crate::Change::Audit)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the coordinator answered it.
    pub at: Timestamp,
    /// Who: `client` (it sent the client token), `anonymous` (no token is
    /// required), `unauthenticated` (a wrong or missing token), or
    /// `worker:ID` (a worker's registration).
    pub actor: String,
    /// Where from (`IP:PORT`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// What: `POST /api/v1/tasks/ID/cancel`, `worker register`…
    pub action: String,
    /// How it ended: the HTTP status (a worker's registration: 200, or the
    /// gRPC refusal as 401/400/409).
    pub status: u16,
    /// The error code of a refused call (`not_found`, `queue_full`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An [`AuditRecord`] with the number the store gave it (increasing in
/// the order of commits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number.
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}
