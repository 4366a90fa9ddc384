//! Task routes — submit, batch, read, list, cancel, retry, explain — and the
//! read-only views of workers, queues and metrics.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::Deserialize;
use taskgrid_api::{
    BatchRequest, BatchResponse, CancelOutcomeKind, CancelResponse, CancelTagRequest,
    CancelTagResponse, ListOrder, ListQuery, SubmitRequest, SubmitResponse, TaskDetail, TaskPage,
    TaskView, WorkerView,
};
use taskgrid_core::{CancelOutcome, Explanation, MetricsSnapshot, QueueStats, State as TaskState};
use taskgrid_core::{Submitted, WorkerId};
use taskgrid_store::TaskQuery;

use super::AppState;
use super::audit::AuditCall;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, TaskPath};
use taskgrid_runtime::Task;

/// The engine's task for an API request, relative times still relative.
fn to_task(req: SubmitRequest) -> Task {
    let (spec, times) = req.into_spec();
    let mut task = Task::from_spec(spec);
    if let Some(d) = times.delay {
        task = task.delay(d);
    }
    if let Some(d) = times.expires_in {
        task = task.expires_in(d);
    }
    task
}

/// `POST /tasks`: 201 when created, 200 when a live task with the same
/// unique key was returned. The call's audit entry is committed with the
/// submit.
pub(crate) async fn submit(
    State(s): State<AppState>,
    Extension(call): Extension<AuditCall>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let submitted = s
        .system
        .submit_audited(vec![to_task(req)], move |r| call.entry(submit_status(r)))
        .await?;
    let status = submit_status(&submitted);
    let (first, state) = *submitted
        .first()
        .ok_or_else(|| ApiError::from(taskgrid_runtime::Error::ShutDown))?;
    let created = matches!(first, Submitted::Created(_));
    Ok((
        status,
        Json(SubmitResponse {
            id: first.id(),
            state,
            created,
        }),
    ))
}

/// The answer to a submit of one task: 201 when it was created, 200 when
/// a live task with its unique key was returned.
fn submit_status(submitted: &[(Submitted, TaskState)]) -> StatusCode {
    match submitted.first() {
        Some((Submitted::Created(_), _)) => StatusCode::CREATED,
        _ => StatusCode::OK,
    }
}

/// `POST /tasks/batch`: all or none, in one commit.
pub(crate) async fn submit_batch(
    State(s): State<AppState>,
    Extension(call): Extension<AuditCall>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchResponse>)> {
    if req.tasks.len() > s.config.max_batch {
        return Err(ApiError::invalid(
            "tasks",
            format!("a batch holds at most {} tasks", s.config.max_batch),
        ));
    }
    let one = req.tasks.len() == 1;
    let tasks = req.tasks.into_iter().map(to_task).collect();
    // The call's audit entry, with the answer's status, in the submit's
    // own commit.
    let status = StatusCode::CREATED;
    let submitted = s
        .system
        .submit_audited(tasks, move |_| call.entry(status))
        .await
        .map_err(|e| match e {
            // The engine names a task's place only in batches of more than one.
            taskgrid_runtime::Error::Submit(error) if one && error.is_field_error() => {
                taskgrid_runtime::Error::Submit(taskgrid_core::SubmitError::InBatch {
                    index: 0,
                    error: Box::new(error),
                })
            }
            e => e,
        })?;
    let ids = submitted.iter().map(|(r, _)| r.id()).collect();
    Ok((status, Json(BatchResponse { ids })))
}

/// `GET /tasks/{id}`: the task and its attempts.
pub(crate) async fn detail(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<TaskDetail>> {
    let task = TaskView::from(s.system.get_committed(id).await?);
    let attempts = s.system.attempts(id).await?;
    Ok(Json(TaskDetail { task, attempts }))
}

/// `GET /tasks`: filtered, oldest or newest first, a page at a time, with
/// the grid's tasks per state when asked.
pub(crate) async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<TaskPage>> {
    let limit = q
        .limit
        .unwrap_or(super::ApiConfig::LIST_LIMIT_DEFAULT)
        .min(s.config.max_page);
    if limit == 0 {
        return Err(ApiError::invalid("limit", "limit must be at least 1"));
    }
    let query = TaskQuery {
        state: q.state,
        queue: q.queue,
        tag: q.tag,
        parent: q.parent,
        worker: q.worker.map(WorkerId::new),
        after: q.cursor,
        newest_first: q.order == Some(ListOrder::Newest),
        // One more than asked: whether there is a next page.
        limit: limit.saturating_add(1),
    };
    let mut tasks: Vec<TaskView> = s
        .system
        .list(&query)
        .await?
        .into_iter()
        .map(TaskView::from)
        .collect();
    let more = tasks.len() > limit;
    tasks.truncate(limit);
    let next_cursor = more.then(|| tasks.last().map(|t| t.id)).flatten();
    let counts = if q.counts {
        Some(s.system.counts().await?.into_iter().collect())
    } else {
        None
    };
    Ok(Json(TaskPage {
        tasks,
        next_cursor,
        counts,
    }))
}

/// `POST /tasks/{id}/cancel`.
pub(crate) async fn cancel(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<CancelResponse>> {
    let (outcome, state) = match s.system.cancel(id).await? {
        CancelOutcome::Cancelled => (CancelOutcomeKind::Cancelled, TaskState::Cancelled),
        CancelOutcome::Requested => (
            CancelOutcomeKind::Requested,
            s.system.get_committed(id).await?.status.state,
        ),
        CancelOutcome::AlreadyFinished(st) => (CancelOutcomeKind::AlreadyFinished, st),
    };
    Ok(Json(CancelResponse { outcome, state }))
}

/// The tag of `POST /tasks/cancel?tag=T`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TagQuery {
    tag: Option<String>,
}

/// `POST /tasks/cancel`: every live task with a tag, given as `?tag=` or
/// as a body `{"tag": …}`.
pub(crate) async fn cancel_tag(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<TagQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CancelTagResponse>> {
    let body = body?;
    let tag = match (q.tag, body.is_empty()) {
        (Some(tag), true) => tag,
        (None, false) => {
            serde_json::from_slice::<CancelTagRequest>(&body)
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
                })?
                .tag
        }
        (Some(_), false) => return Err(ApiError::invalid("tag", "give the tag once")),
        (None, true) => return Err(ApiError::invalid("tag", "a tag is required")),
    };
    if tag.is_empty() {
        return Err(ApiError::invalid("tag", "the tag must not be empty"));
    }
    let cancelled = s.system.cancel_tag(&tag).await?;
    Ok(Json(CancelTagResponse { cancelled }))
}

/// `POST /tasks/{id}/retry`: a new task with the same spec; 409 while the
/// task has not finished.
pub(crate) async fn retry(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let new = s.system.retry(id).await?.id();
    let state = s.system.get_committed(new).await?.status.state;
    let body = SubmitResponse {
        id: new,
        state,
        created: true,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /tasks/{id}`: deletes a finished task with its attempts and
/// output (204, once committed); 409 `not_finished` for a live one.
pub(crate) async fn delete(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
) -> ApiResult<StatusCode> {
    s.system.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /tasks/{id}/explain`: why it is not running, or where it stands.
pub(crate) async fn explain(
    State(s): State<AppState>,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Explanation>> {
    Ok(Json(s.system.explain_committed(id).await?))
}

/// `GET /workers`.
pub(crate) async fn workers(State(s): State<AppState>) -> ApiResult<Json<Vec<WorkerView>>> {
    Ok(Json(s.system.workers_committed().await?))
}

/// `GET /limits`: the limited concurrency keys with tasks waiting or
/// running.
pub(crate) async fn limits(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<taskgrid_core::KeyLimitView>>> {
    Ok(Json(s.system.key_limits_committed().await?))
}

/// `GET /queues`.
pub(crate) async fn queues(State(s): State<AppState>) -> ApiResult<Json<Vec<QueueStats>>> {
    Ok(Json(s.system.queue_stats_committed().await?))
}

/// `GET /metrics`: totals and the breakdowns by queue, kind, (queue, kind)
/// and worker as JSON (the same figures as Prometheus text at the root's
/// `/metrics`).
pub(crate) async fn metrics(State(s): State<AppState>) -> Json<MetricsSnapshot> {
    Json(s.system.metrics())
}
