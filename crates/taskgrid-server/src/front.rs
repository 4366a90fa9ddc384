//! [`Front`]: what a coordinator serves from the moment it listens. Before
//! it leads (a standby waiting for the lease, or a coordinator still
//! opening its store) it changes nothing and points everyone to the
//! leader: the API answers 503 `not_leader` with the leader's address in
//! the [`LEADER_HEADER`] header (empty while none is known) and the JSON
//! error, the worker gateway answers gRPC `UNAVAILABLE` with the same
//! header in its metadata,
//! `/readyz` answers 503 with the reason, `/healthz` 200, and
//! `/api/v1/coordinators` who leads and who stands by. Once
//! [`promoted`](Front::promote), every request goes to the full router.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use taskgrid_api::{API_PREFIX, CoordinatorView, Coordinators, Health, LEADER_HEADER};
use taskgrid_proto::worker::worker_gateway_server::WorkerGatewayServer;
use taskgrid_store::{Cluster, Member};
use tower::ServiceExt;

use crate::Gateway;
use crate::http::error::ApiError;

/// The router a coordinator serves before and after it leads.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Shared>,
}

struct Shared {
    /// The full router, once this coordinator leads.
    serving: OnceLock<Router>,
    /// What it last learned of the shared store's coordinators; `None`
    /// while it has learned nothing (opening a store of its own).
    cluster: RwLock<Option<Cluster>>,
    client_token: Option<String>,
}

impl Front {
    /// A front that refuses work until [`promote`](Self::promote)d;
    /// `client_token` guards `/api/v1/coordinators` as it guards the API.
    pub fn new(client_token: Option<String>) -> Front {
        Front {
            inner: Arc::new(Shared {
                serving: OnceLock::new(),
                cluster: RwLock::new(None),
                client_token,
            }),
        }
    }

    /// The router to serve: this front's answers until promoted, then the
    /// full router's.
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(answer)
            .with_state(self.inner.clone())
    }

    /// What a standby learned of who leads (from the store's lease).
    pub fn set_cluster(&self, cluster: Cluster) {
        *self
            .inner
            .cluster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(cluster);
    }

    /// This coordinator leads: from now on `app` answers everything.
    pub fn promote(&self, app: Router) {
        let _ = self.inner.serving.set(app);
    }

    /// Whether [`promote`](Self::promote) has been called.
    pub fn leads(&self) -> bool {
        self.inner.serving.get().is_some()
    }
}

/// The one handler: the full router's answer once promoted, else the
/// standby's.
async fn answer(State(s): State<Arc<Shared>>, req: Request) -> Response {
    if let Some(app) = s.serving.get() {
        return match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let cluster = s
        .cluster
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let leader = cluster
        .as_ref()
        .and_then(|c| c.leader.as_ref())
        .map(|m| m.address.clone())
        .filter(|a| !a.is_empty());
    let why = reason(cluster.as_ref());
    let path = req.uri().path();
    if path == "/healthz" {
        return Json(Health {
            status: "ok".to_owned(),
        })
        .into_response();
    }
    if path == "/readyz" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: why.clone(),
            }),
        )
            .into_response();
    }
    if path == format!("{API_PREFIX}/coordinators") {
        if let Some(token) = &s.client_token {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| crate::gateway::token_matches(g, token)) {
                return ApiError::unauthorized().into_response();
            }
        }
        if let Some(c) = &cluster {
            return Json(view(c)).into_response();
        }
    }
    let grpc = format!(
        "/{}/",
        <WorkerGatewayServer<Gateway> as tonic::server::NamedService>::NAME
    );
    // The header is there on every refusal, empty while no leader is
    // known: it says "not the leader", its value where the leader is.
    let named = HeaderValue::from_str(leader.as_deref().unwrap_or_default())
        .unwrap_or(HeaderValue::from_static(""));
    if path.starts_with(&grpc) {
        let mut res = tonic::Status::unavailable(why).into_http::<Body>();
        res.headers_mut()
            .insert(taskgrid_proto::LEADER_METADATA, named);
        return res;
    }
    let mut res = ApiError::not_leader(why, leader).into_response();
    res.headers_mut().insert(LEADER_HEADER, named);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// Why this coordinator takes no work, in words.
fn reason(cluster: Option<&Cluster>) -> String {
    match cluster {
        None => "starting: opening the store".to_owned(),
        Some(Cluster {
            term,
            leader: Some(l),
            ..
        }) => format!(
            "standby: {} leads (term {term}) at {}",
            l.holder,
            if l.address.is_empty() {
                "an address it did not say"
            } else {
                &l.address
            }
        ),
        Some(c) => format!(
            "standby: no coordinator leads right now (term {} lapsed); one will take over",
            c.term
        ),
    }
}

/// The API's view of a shared store's coordinators.
pub(crate) fn view(c: &Cluster) -> Coordinators {
    let member = |m: &Member| CoordinatorView {
        name: m.holder.clone(),
        address: m.address.clone(),
    };
    Coordinators {
        shared: true,
        term: c.term,
        leader: c.leader.as_ref().map(member),
        standbys: c.standbys.iter().map(member).collect(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use taskgrid_api::ErrorBody;

    use super::*;

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    async fn call(front: &Front, req: Request<Body>) -> Response {
        front.router().oneshot(req).await.unwrap()
    }

    fn led_by(address: &str) -> Cluster {
        Cluster {
            term: 7,
            leader: Some(Member {
                holder: "pid 1 on a".to_owned(),
                address: address.to_owned(),
            }),
            standbys: vec![Member {
                holder: "pid 2 on b".to_owned(),
                address: "http://b:7070".to_owned(),
            }],
        }
    }

    /// A standby changes nothing and names the leader: in a header and the
    /// JSON error for the API, in gRPC metadata for workers; `/readyz` says
    /// why it is not ready, `/healthz` that it is alive.
    #[tokio::test]
    async fn a_standby_points_to_the_leader() {
        let front = Front::new(None);
        front.set_cluster(led_by("http://a:7070"));

        let res = call(
            &front,
            Request::post("/api/v1/tasks")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"kind":{"shell":{"argv":["true"]}}}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[LEADER_HEADER], "http://a:7070");
        let body: ErrorBody =
            serde_json::from_slice(&to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
        assert_eq!(body.error.code, "not_leader");
        assert_eq!(body.error.leader.as_deref(), Some("http://a:7070"));
        assert!(
            body.error.message.contains("term 7"),
            "{}",
            body.error.message
        );

        let name = <WorkerGatewayServer<Gateway> as tonic::server::NamedService>::NAME;
        let res = call(&front, get(&format!("/{name}/Session"))).await;
        let status = tonic::Status::from_header_map(res.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(LEADER_HEADER, taskgrid_proto::LEADER_METADATA);
        assert_eq!(res.headers()[LEADER_HEADER], "http://a:7070");

        let res = call(&front, get("/readyz")).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("standby"));
        assert_eq!(call(&front, get("/healthz")).await.status(), StatusCode::OK);

        let res = call(&front, get("/api/v1/coordinators")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let c: Coordinators =
            serde_json::from_slice(&to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
        assert_eq!(c, view(&led_by("http://a:7070")));
    }

    /// Before it knows anything (a store still opening) there is no leader
    /// to name; the coordinators' roster is guarded by the client token.
    #[tokio::test]
    async fn a_starting_coordinator_names_no_leader_and_guards_the_roster() {
        let front = Front::new(Some("s3cret".to_owned()));
        let res = call(&front, get("/api/v1/tasks")).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()[LEADER_HEADER],
            "",
            "not the leader, none known"
        );
        front.set_cluster(led_by("http://a:7070"));
        let res = call(&front, get("/api/v1/coordinators")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = call(
            &front,
            Request::get("/api/v1/coordinators")
                .header(header::AUTHORIZATION, "Bearer s3cret")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// Once promoted, the full router answers everything.
    #[tokio::test]
    async fn a_promoted_front_serves_the_full_router() {
        let front = Front::new(None);
        front.set_cluster(led_by("http://a:7070"));
        assert!(!front.leads());
        front
            .promote(Router::new().route("/api/v1/tasks", axum::routing::get(|| async { "here" })));
        assert!(front.leads());
        let res = call(&front, get("/api/v1/tasks")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], b"here");
    }
}
