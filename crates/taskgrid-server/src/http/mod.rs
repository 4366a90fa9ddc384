//! The HTTP JSON API of a [`TaskSystem`]: tasks, output, workers, queues,
//! metrics and a server-sent event stream under `/api/v1`, plus `/healthz`
//! and `/readyz` at the root, and `/metrics` (Prometheus text) at the root
//! behind the same guard as the API. The web dashboard is served at `/`
//! (its static files need no token; the data it reads does).
//!
//! [`router`] builds an [`axum::Router`] and listens nowhere: whoever runs
//! the coordinator serves it (next to the worker gateway), and tests call
//! it directly with `tower::ServiceExt::oneshot`. Handlers are thin —
//! decode, one [`TaskSystem`] call, encode — and every failure goes through
//! one error type, so the answer is always
//! `{"error":{"code":"…","message":"…"}}` with a fitting status code.
//! The wire types live in [`taskgrid_api`]; `docs/api.md` and
//! `GET /api/v1/openapi.json` describe the routes.

mod audit;
pub(crate) mod auth;
mod dashboard;
pub(crate) mod error;
mod events;
mod extract;
mod metrics;
mod output;
mod queues;
mod schedules;
mod summary;
mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use taskgrid_api::{API_PREFIX, CoordinatorView, Coordinators, Health};
use taskgrid_store::TaskQuery;

use error::ApiError;
use taskgrid_runtime::TaskSystem;

/// Settings of the HTTP API; `Default` works (no token, 2 MiB bodies).
#[derive(Clone)]
pub struct ApiConfig {
    /// When set, every `/api/v1` route requires
    /// `Authorization: Bearer <token>`.
    pub client_token: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest page of tasks or output chunks one request returns.
    pub max_page: usize,
    /// Most tasks one batch submit may hold.
    pub max_batch: usize,
    /// The API is served over TLS: the origin browsers must send with a
    /// write is `https://host`, not `http://host`.
    pub https: bool,
    /// Where clients and workers reach this coordinator
    /// (`http://HOST:PORT`), as `/api/v1/coordinators` names it.
    pub address: String,
}

impl ApiConfig {
    /// Default body limit: 2 MiB.
    pub const MAX_BODY_BYTES_DEFAULT: usize = 2 * 1024 * 1024;
    /// Default page cap: 1,000.
    pub const MAX_PAGE_DEFAULT: usize = 1000;
    /// Default batch cap: 10,000 tasks.
    pub const MAX_BATCH_DEFAULT: usize = 10_000;
    /// Page size of `GET /tasks` when none is asked for.
    pub const LIST_LIMIT_DEFAULT: usize = 100;
}

impl ApiConfig {
    /// The scheme the API is served on.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            client_token: None,
            max_body_bytes: Self::MAX_BODY_BYTES_DEFAULT,
            max_page: Self::MAX_PAGE_DEFAULT,
            max_batch: Self::MAX_BATCH_DEFAULT,
            https: false,
            address: String::new(),
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("client_token", &self.client_token.as_ref().map(|_| "<set>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_page", &self.max_page)
            .field("max_batch", &self.max_batch)
            .field("https", &self.https)
            .field("address", &self.address)
            .finish()
    }
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) system: Arc<TaskSystem>,
    pub(crate) config: Arc<ApiConfig>,
    /// The shared source of `/events/summary`.
    pub(crate) pulse: Arc<summary::Pulse>,
}

/// The OpenAPI 3.1 description of every route.
const OPENAPI: &str = include_str!("openapi.json");

/// Every `/api/v1` route: method, path below the prefix, handler. The
/// router and [`routes`] are both built from this one table.
fn api_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/tasks", post(tasks::submit)),
        (Method::GET, "/tasks", get(tasks::list)),
        (Method::POST, "/tasks/batch", post(tasks::submit_batch)),
        (Method::POST, "/tasks/cancel", post(tasks::cancel_tag)),
        (Method::GET, "/tasks/{id}", get(tasks::detail)),
        (Method::DELETE, "/tasks/{id}", delete(tasks::delete)),
        (Method::POST, "/tasks/{id}/cancel", post(tasks::cancel)),
        (Method::POST, "/tasks/{id}/retry", post(tasks::retry)),
        (Method::GET, "/tasks/{id}/output", get(output::output)),
        (Method::GET, "/tasks/{id}/explain", get(tasks::explain)),
        (Method::GET, "/workers", get(tasks::workers)),
        (Method::GET, "/queues", get(tasks::queues)),
        (Method::GET, "/limits", get(tasks::limits)),
        (Method::GET, "/coordinators", get(coordinators)),
        (Method::POST, "/queues/{name}/pause", post(queues::pause)),
        (Method::POST, "/queues/{name}/resume", post(queues::resume)),
        (Method::GET, "/schedules", get(schedules::list)),
        (Method::POST, "/schedules", post(schedules::create)),
        (Method::GET, "/schedules/{name}", get(schedules::detail)),
        (Method::PUT, "/schedules/{name}", put(schedules::put)),
        (
            Method::DELETE,
            "/schedules/{name}",
            delete(schedules::delete),
        ),
        (
            Method::GET,
            "/schedules/{name}/fires",
            get(schedules::fires),
        ),
        (
            Method::POST,
            "/schedules/{name}/pause",
            post(schedules::pause),
        ),
        (
            Method::POST,
            "/schedules/{name}/resume",
            post(schedules::resume),
        ),
        (
            Method::POST,
            "/schedules/{name}/trigger",
            post(schedules::trigger),
        ),
        (
            Method::POST,
            "/schedules/{name}/backfill",
            post(schedules::backfill),
        ),
        (Method::GET, "/metrics", get(tasks::metrics)),
        (Method::GET, "/events", get(events::events)),
        (Method::GET, "/events/summary", get(summary::summary)),
        (Method::GET, "/events/schedules", get(schedules::events)),
        (Method::GET, "/openapi.json", get(openapi)),
        (Method::GET, "/audit", get(audit::list)),
    ]
}

/// Routes served at the root, without auth.
const ROOT_ROUTES: [(Method, &str); 2] = [(Method::GET, "/healthz"), (Method::GET, "/readyz")];

/// Routes served at the root behind the API's guard (token, loopback host).
fn guarded_root_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![(Method::GET, "/metrics", get(metrics::prometheus))]
}

/// Every route the router serves, as (method, full path), e.g.
/// `(POST, "/api/v1/tasks/{id}/cancel")` — but for the dashboard's static
/// files (`GET /`, `GET /assets/{file}`), which are no part of the API.
pub fn routes() -> Vec<(Method, String)> {
    ROOT_ROUTES
        .iter()
        .map(|(m, p)| (m.clone(), (*p).to_owned()))
        .chain(
            guarded_root_routes()
                .into_iter()
                .map(|(m, p, _)| (m, p.to_owned())),
        )
        .chain(
            api_routes()
                .into_iter()
                .map(|(m, p, _)| (m, format!("{API_PREFIX}{p}"))),
        )
        .collect()
}

/// The API as a router, ready to be served (or called in tests).
///
/// `/api/v1/*` and `/metrics` are guarded by the client token when one is
/// configured; `/healthz` and `/readyz` never are.
pub fn router(system: Arc<TaskSystem>, config: ApiConfig) -> Router {
    let state = AppState {
        system,
        config: Arc::new(config),
        pulse: Arc::default(),
    };
    let mut api = Router::new();
    for (_, path, route) in api_routes() {
        api = api.route(path, route);
    }
    let api = api
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        // Outside the guard: refused calls are recorded too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .with_state(state.clone());
    let mut guarded = Router::new();
    for (_, path, route) in guarded_root_routes() {
        guarded = guarded.route(path, route);
    }
    let guarded = guarded
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(guarded)
        .nest(API_PREFIX, api)
        .merge(dashboard::routes())
        .fallback(no_route)
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// 200 whenever the process serves requests.
/// Who leads and who stands by: the store's roster where several
/// coordinators share it, else this coordinator alone.
async fn coordinators(State(state): State<AppState>) -> Result<Json<Coordinators>, ApiError> {
    Ok(Json(match state.system.cluster().await? {
        Some(c) => crate::front::view(&c),
        None => Coordinators {
            shared: false,
            term: 0,
            leader: Some(CoordinatorView {
                name: format!("pid {}", std::process::id()),
                address: state.config.address.clone(),
            }),
            standbys: Vec::new(),
        },
    }))
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// 200 when this coordinator can take work: no commit has failed and the
/// store answers a read; 503 with the reason otherwise.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if let Some(why) = state.system.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("store failed: {why}"),
            }),
        );
    }
    let probe = TaskQuery {
        limit: 1,
        ..TaskQuery::default()
    };
    match state.system.list(&probe).await {
        Ok(_) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".to_owned(),
            }),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "store unavailable".to_owned(),
                }),
            )
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
