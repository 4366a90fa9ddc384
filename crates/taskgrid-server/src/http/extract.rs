//! Request extractors whose rejections are [`ApiError`]s, so a bad body,
//! query or path gets the same JSON error shape as every other failure.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use taskgrid_core::TaskId;

use super::error::ApiError;

/// A JSON body (`Content-Type: application/json`, within the body limit).
///
/// Decoded by `serde_json` alone; only a body it refuses is decoded again
/// by axum's `Json`, whose error names the path of the bad field
/// (`tasks[3].kind: …`). Tracking that path on every body made decoding a
/// task 40–50 % dearer (BENCHMARKS.md, "Request bodies decoded without
/// tracking their path").
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !plain_json(req.headers()) {
            // Any other media type gets axum's answer: `+json` types are
            // JSON, others are refused.
            let Json(v) = Json::<T>::from_request(req, state).await?;
            return Ok(ApiJson(v));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(JsonRejection::from)?;
        decode(&bytes).map(ApiJson)
    }
}

/// Whether the request says `Content-Type: application/json` in so many
/// words (which axum's `Json` takes as JSON too). Any other form, such as
/// with `; charset=utf-8` or a `+json` type, takes axum's own (slower but
/// equal) path, which parses the media type.
fn plain_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"))
}

/// `bytes` as a `T`; where `serde_json` refuses them, the error is axum's
/// `Json`'s, which names the path of the bad field.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).or_else(|_| {
        let Json(v) = Json::<T>::from_bytes(bytes)?;
        Ok(v)
    })
}

/// A JSON body that may be left out: an empty body reads as
/// `T::default()`; one that is there must be JSON as for [`ApiJson`].
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
                .await
                .map_err(|e| ApiError::invalid("body", e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if plain_json(&parts.headers) {
            return decode(&bytes).map(OptionalJson);
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(OptionalJson(v))
    }
}

/// A query string.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// The `{id}` of a task route.
pub(crate) struct TaskPath(pub(crate) TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        raw.parse()
            .map(TaskPath)
            .map_err(|e: taskgrid_core::ParseIdError| ApiError::invalid("id", e.to_string()))
    }
}

/// The SSE `Last-Event-ID` header: where a reconnecting client left off.
pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Last-Event-ID", "Last-Event-ID must be a number"))
}
