//! `POST /queues/{name}/pause` and `/resume`: stop and restart dispatching
//! from a queue. Tasks keep being accepted into a paused queue; none of
//! them is handed to a worker until it is resumed. Running tasks go on.
//! Both answer once the change is committed: a paused queue stays paused
//! across a restart.

use axum::extract::{Path, State};
use axum::response::Json;
use taskgrid_core::QueueStats;

use super::AppState;
use super::error::{ApiError, ApiResult};

/// Longest queue name these routes take (bytes).
const NAME_MAX: usize = 256;

/// `POST /queues/{name}/pause`: the queue's stats, now paused.
pub(crate) async fn pause(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueStats>> {
    check_name(&name)?;
    s.system.pause_queue(&name).await?;
    stats(&s, &name).await
}

/// `POST /queues/{name}/resume`: the queue's stats, dispatching again.
pub(crate) async fn resume(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueStats>> {
    check_name(&name)?;
    s.system.resume_queue(&name).await?;
    stats(&s, &name).await
}

/// Refuses a name no queue could have (empty, overlong, control chars).
fn check_name(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            format!("a queue name is 1 to {NAME_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The stats of `name` (the engine knows every queue it was told about).
async fn stats(s: &AppState, name: &str) -> ApiResult<Json<QueueStats>> {
    s.system
        .queue_stats_committed()
        .await?
        .into_iter()
        .find(|q| q.name == name)
        .map(Json)
        .ok_or_else(ApiError::no_route)
}
