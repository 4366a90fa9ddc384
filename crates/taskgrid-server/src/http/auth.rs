//! Who may call the API: the bearer token check, and a guard against
//! browsers on other sites posting to a coordinator on the loopback.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::gateway::token_matches;

/// Refuses a request without the configured bearer token (when one is set),
/// and a state-changing request sent by a page of another origin.
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.config.client_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        if !given.is_some_and(|g| token_matches(g, token)) {
            return ApiError::unauthorized().into_response();
        }
    } else if !loopback_host(&req) {
        // With no token the API trusts whoever reaches it, which is only
        // safe on loopback. A page of a rebound DNS name reaches it with
        // that name as Host: refuse any Host that is not a loopback one.
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "non_loopback_host",
            "without a client token only loopback host names are served",
        )
        .into_response();
    }
    // Behind a TLS-terminating proxy the page's origin is `https://…`; the
    // proxy says so. (A browser cannot add this header to a cross-site
    // request without a CORS preflight, which this API never grants.)
    let scheme = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("http"))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| state.config.scheme().to_owned());
    if is_cross_origin_write(&req, &scheme) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "state-changing requests from another origin are refused",
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether the request's `Host` is a loopback name or address (or absent,
/// as from HTTP/1.0 clients and tests).
fn loopback_host(req: &Request) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    // Strip the port; keep IPv6 literals' brackets off.
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in
/// any case, as HTTP says; workers' gRPC metadata is read the same way).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// A browser sends `Origin` with a cross-site POST; a page elsewhere must
/// not be able to submit shell tasks to an unauthenticated local
/// coordinator. Requests without `Origin` (curl, the client) pass. The
/// origin must match in scheme too: `https://host` is another origin than
/// the `http://host` this API is served on.
fn is_cross_origin_write(req: &Request, scheme: &str) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    !matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn only_loopback_host_names_pass_without_a_token() {
        let with_host = |h: &str| {
            Request::builder()
                .uri("/api/v1/tasks")
                .header(header::HOST, h)
                .body(axum::body::Body::empty())
                .expect("valid request")
        };
        for ok in [
            "127.0.0.1:7070",
            "localhost:7070",
            "[::1]:7070",
            "127.0.0.1",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "10.0.0.5:7070",
            "rebound.attacker.test",
        ] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn only_cross_origin_writes_are_refused() {
        let req = |method: Method, origin: Option<&str>| {
            let mut b = Request::builder()
                .method(method)
                .uri("/api/v1/tasks")
                .header(header::HOST, "127.0.0.1:7070");
            if let Some(o) = origin {
                b = b.header(header::ORIGIN, o);
            }
            b.body(axum::body::Body::empty()).expect("valid request")
        };
        let cross = |r| is_cross_origin_write(&r, "http");
        assert!(cross(req(Method::POST, Some("https://evil.example"))));
        assert!(!cross(req(Method::POST, Some("http://127.0.0.1:7070"))));
        assert!(!cross(req(Method::POST, None)));
        assert!(!cross(req(Method::GET, Some("https://evil.example"))));
        // Same host and port, another scheme: another origin.
        assert!(cross(req(Method::POST, Some("https://127.0.0.1:7070"))));
        assert!(cross(req(Method::POST, Some("ftp://127.0.0.1:7070"))));
        assert!(!is_cross_origin_write(
            &req(Method::POST, Some("https://127.0.0.1:7070")),
            "https"
        ));
    }
}
