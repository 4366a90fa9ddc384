//! taskgrid's wire types: the gRPC worker protocol generated from
//! `proto/taskgrid/worker/v1/worker.proto`, and conversions between its
//! messages and the core model.
//!
//! It owns the gRPC wire format only. The generated code uses tonic's
//! `codegen` without a transport: the server (`taskgrid-server`) adds
//! tonic's server, a worker its channel, so neither compiles the other's
//! half. It must never depend on the runtime, the store or the HTTP types.

/// The generated worker protocol (`taskgrid.worker.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod worker {
    tonic::include_proto!("taskgrid.worker.v1");
}

mod convert;

/// The metadata key a standby coordinator names the leader in when it
/// refuses a worker's session with `UNAVAILABLE` (`http://HOST:PORT`,
/// empty while no leader is known). The HTTP API uses the same header.
pub const LEADER_METADATA: &str = "taskgrid-leader";

pub use convert::{
    ConvertError, assignment_from_core, attempt_ref, kind_to_core, outcome_from_result,
    resources_of, result_from_outcome, stream_from_core, stream_to_core, task_id, timeout_of,
};
