//! The audit log over HTTP: every state-changing call (`POST`, `PUT`,
//! `PATCH`, `DELETE`) is recorded with who made it, from where, and how it
//! ended — committed before the answer leaves, so that no acknowledged
//! change goes unrecorded — and `GET /audit` reads the log back.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use taskgrid_api::AuditQuery;
use taskgrid_core::{AuditEntry, AuditRecord, Timestamp};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;

/// Page size of `GET /audit` when none is asked for.
const LIMIT_DEFAULT: usize = 100;

/// Largest error body read for its code (an API error is far smaller).
const ERROR_BODY_MAX: usize = 64 * 1024;

/// `GET /audit`: entries newest first.
pub(crate) async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = q.limit.unwrap_or(LIMIT_DEFAULT).min(s.config.max_page);
    if limit == 0 {
        return Err(ApiError::invalid("limit", "limit must be at least 1"));
    }
    Ok(Json(s.system.audit_log(q.before, limit).await?))
}

/// Where a request came from: its connection's remote address (plain or
/// TLS).
pub(crate) fn remote_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<crate::tls::Peer>>()
                .map(|c| c.0.addr)
        })
}

/// A state-changing call on its way through, as its handler sees it (a
/// request extension): a handler whose command commits may put the call's
/// entry in that commit ([`AuditCall::entry`]), and the entry is then not
/// recorded again.
#[derive(Clone)]
pub(crate) struct AuditCall {
    /// Who made it, once past the token guard (a handler runs only then).
    actor: &'static str,
    remote: Option<String>,
    action: String,
    /// The status of the entry a handler's commit holds.
    recorded: Arc<OnceLock<u16>>,
}

impl AuditCall {
    /// The call's entry, answered with `status`: for a handler to commit
    /// with the call's own changes. The middleware records nothing more
    /// if the answer is `status`; any other answer (the commit failed, say)
    /// is recorded as before, on its own.
    pub(crate) fn entry(&self, status: StatusCode) -> AuditRecord {
        let _ = self.recorded.set(status.as_u16());
        self.record(self.actor, status, None)
    }

    /// The call's entry by `actor`, answered with `status` and `error`
    /// (its time is set when it is committed).
    fn record(&self, actor: &str, status: StatusCode, error: Option<String>) -> AuditRecord {
        AuditRecord {
            at: Timestamp::from_micros(0),
            actor: actor.to_owned(),
            remote: self.remote.clone(),
            action: self.action.clone(),
            status: status.as_u16(),
            error,
        }
    }
}

/// Records a state-changing call once it is answered (outside the token
/// guard: refused calls are recorded too), unless its handler committed
/// the entry with the call's changes.
pub(crate) async fn record(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    // Nested under the API's prefix, which the router took off the path.
    let call = AuditCall {
        actor: authorized(&s),
        remote: remote_of(&req).map(|a| a.to_string()),
        action: format!("{} {}{}", req.method(), super::API_PREFIX, req.uri().path()),
        recorded: Arc::new(OnceLock::new()),
    };
    req.extensions_mut().insert(call.clone());
    let response = next.run(req).await;
    let status = response.status();
    if call.recorded.get() == Some(&status.as_u16()) {
        return response;
    }
    let (response, error) = if status.is_success() {
        (response, None)
    } else {
        error_code(response).await
    };
    let actor = if status == StatusCode::UNAUTHORIZED {
        "unauthenticated"
    } else {
        authorized(&s)
    };
    if let Err(e) = s
        .system
        .record_audit(call.record(actor, status, error))
        .await
    {
        // The call itself is done (and committed, if it changed anything):
        // answering an error now would invite a retry of what succeeded.
        tracing::error!(error = %e, "the audit log could not record a call");
    }
    response
}

/// Who a call that passed the token guard came from.
fn authorized(s: &AppState) -> &'static str {
    if s.config.client_token.is_some() {
        "client"
    } else {
        "anonymous"
    }
}

/// The `code` of an API error body, and the response rebuilt around it.
async fn error_code(response: Response) -> (Response, Option<String>) {
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, ERROR_BODY_MAX).await {
        Ok(bytes) => {
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            (Response::from_parts(parts, bytes.into()), code)
        }
        Err(_) => (
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the error could not be read",
            )
            .into_response(),
            None,
        ),
    }
}
