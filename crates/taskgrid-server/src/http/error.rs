//! [`ApiError`]: the one error type of the HTTP API. Every failure — a
//! rejected request body, a refused submit, an unknown task, a store fault —
//! becomes a status code and `{"error":{"code","message"}}`, and nothing
//! internal (store messages, paths, types) reaches the client.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use taskgrid_api::{ErrorBody, ErrorDetail};
use taskgrid_core::{CommandError, ScheduleError, SubmitError};

use taskgrid_runtime::Error;

/// An error answer: status, stable code, message, and the field at fault.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after_secs: Option<u64>,
    leader: Option<String>,
}

/// What handlers return.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_secs: None,
            leader: None,
        }
    }

    /// 503 from a coordinator that does not lead: `why`, and where the
    /// leader is when known.
    pub(crate) fn not_leader(why: String, leader: Option<String>) -> Self {
        ApiError {
            leader,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", why)
        }
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 for a value that parsed but is not acceptable.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", message).field(field)
    }

    /// 401: no or wrong bearer token.
    pub(crate) fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }

    /// 404 for a path no route serves.
    pub(crate) fn no_route() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 500, logging what happened instead of showing it.
    fn internal(what: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %what, "http api: internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
                leader: self.leader,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Seconds a client is asked to wait after `queue_full`.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 1;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            Error::Submit(s) => submit_error(s, msg),
            Error::UnknownHandler(_) => {
                ApiError::new(S::BAD_REQUEST, "unknown_handler", msg).field("kind.name")
            }
            Error::NotRunnable(_) => {
                ApiError::new(S::BAD_REQUEST, "not_runnable", msg).field("kind")
            }
            Error::StoreFailed => ApiError::new(S::SERVICE_UNAVAILABLE, "store_failed", msg),
            Error::InvalidPayload(_) => {
                ApiError::new(S::BAD_REQUEST, "invalid_payload", msg).field("kind.payload")
            }
            Error::NotFound(_) | Error::Command(CommandError::NotFound(_)) => {
                ApiError::new(S::NOT_FOUND, "not_found", msg)
            }
            Error::NotFinished(..) => ApiError::new(S::CONFLICT, "not_finished", msg),
            Error::UnknownParent(_) => {
                ApiError::new(S::BAD_REQUEST, "unknown_parent", msg).field("parent")
            }
            Error::Command(_) => ApiError::new(S::CONFLICT, "conflict", msg),
            Error::ShutDown => ApiError::new(S::SERVICE_UNAVAILABLE, "shutting_down", msg),
            Error::Schedule(e) => match e {
                ScheduleError::NotFound(_) => ApiError::new(S::NOT_FOUND, "not_found", msg),
                ScheduleError::Exists(_) => ApiError::new(S::CONFLICT, "schedule_exists", msg),
                ScheduleError::Bad(b) => ApiError::invalid(schedule_field(b.field), msg),
                ScheduleError::Template(SubmitError::Invalid { field, .. }) => {
                    ApiError::invalid(&format!("task.{}", api_field(field)), msg)
                }
                ScheduleError::Template(_) => ApiError::invalid("task", msg),
                _ => ApiError::new(S::BAD_REQUEST, "invalid_schedule", msg),
            },
            other => ApiError::internal(&other),
        }
    }
}

/// The request field behind a schedule spec's field name.
fn schedule_field(core: &str) -> &str {
    match core {
        "every" => "every_ms",
        "phase" => "phase_ms",
        "jitter" => "jitter_ms",
        "catch_up" => "catch_up_ms",
        "template.run_at" => "task.run_at",
        "template.expires_at" => "task.expires_at",
        "template.after" => "task.after",
        "template.parent" => "task.parent",
        "template.tags" => "task.tags",
        other => other,
    }
}

/// The request field behind an engine field name.
/// The answer to a submit the engine refused; a task of a batch is named
/// by its place (`tasks[1].slots`).
fn submit_error(s: SubmitError, msg: String) -> ApiError {
    use StatusCode as S;
    match s {
        SubmitError::Invalid { field, .. } => ApiError::invalid(api_field(field), msg),
        SubmitError::PayloadTooLarge { .. } => {
            ApiError::new(S::PAYLOAD_TOO_LARGE, "payload_too_large", msg).field("kind")
        }
        SubmitError::UnknownDependency(_) => {
            ApiError::new(S::BAD_REQUEST, "unknown_dependency", msg).field("after")
        }
        SubmitError::CyclicDependency(_) => {
            ApiError::new(S::BAD_REQUEST, "cyclic_dependency", msg).field("after")
        }
        SubmitError::QueueFull { .. } => ApiError {
            retry_after_secs: Some(QUEUE_FULL_RETRY_AFTER_SECS),
            ..ApiError::new(S::TOO_MANY_REQUESTS, "queue_full", msg).field("queue")
        },
        SubmitError::DuplicateId(_) => ApiError::new(S::CONFLICT, "duplicate_id", msg),
        SubmitError::InBatch { index, error } => {
            let mut e = submit_error(*error, msg);
            e.field = Some(match e.field.take() {
                Some(f) => format!("tasks[{index}].{f}"),
                None => format!("tasks[{index}]"),
            });
            e
        }
        _ => ApiError::new(S::BAD_REQUEST, "invalid_task", msg),
    }
}

fn api_field(engine: &str) -> &str {
    match engine {
        "handler" => "kind.name",
        "command" => "kind.command",
        "image" => "kind.image",
        "timeout" => "timeout_ms",
        "dispatch_timeout" => "dispatch_timeout_ms",
        "max_retries" => "retry.max_retries",
        other => other,
    }
}

/// Drops axum's "Failed to …: " lead-in, keeping serde's own words (which
/// name the field: ``unknown field `prio` ``, `tasks[1].kind: …`).
fn serde_message(text: &str) -> String {
    match text.split_once(": ") {
        Some((lead, rest)) if lead.starts_with("Failed to") => rest.to_owned(),
        _ => text.to_owned(),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        match r {
            JsonRejection::JsonDataError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                serde_message(&e.body_text()),
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                serde_message(&e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                status,
                "body_too_large",
                "request body exceeds the size limit",
            ),
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                "request body exceeds the size limit",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            serde_message(&r.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            serde_message(&r.body_text()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_faults_are_hidden_and_queue_full_asks_to_retry() {
        let e = ApiError::from(Error::Store(taskgrid_store::StoreError::Duplicate(
            taskgrid_core::TaskId::from_u128(1),
        )));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.message, "internal error");
        let e = ApiError::from(Error::Submit(SubmitError::QueueFull {
            queue: "q".into(),
            limit: 1,
        }));
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn serde_messages_lose_only_the_lead_in() {
        assert_eq!(
            serde_message("Failed to deserialize the JSON body into the target type: prio: x"),
            "prio: x"
        );
        assert_eq!(serde_message("plain"), "plain");
    }
}
