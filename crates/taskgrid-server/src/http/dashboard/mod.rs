//! The web dashboard: one page of plain HTML, JavaScript and CSS embedded
//! in the binary and served at `/` and `/assets/…`, outside the API's
//! guard. The page holds no data: it reads everything from `/api/v1` with
//! the token the user enters (kept in the browser's `localStorage`), and
//! follows the SSE streams with `fetch`, so the token travels in the
//! `Authorization` header and never in a URL.
//!
//! Assets are answered with `Cache-Control: no-cache` and a strong `ETag`
//! of their content: a browser revalidates cheaply (304) and never keeps
//! an old script after an upgrade.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;

/// One embedded file.
struct Asset {
    /// Its bytes.
    body: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
}

/// The page itself.
const INDEX: Asset = Asset {
    body: include_str!("index.html"),
    content_type: "text/html; charset=utf-8",
};

/// Files below `/assets/`, by name.
const ASSETS: [(&str, Asset); 2] = [
    (
        "app.js",
        Asset {
            body: include_str!("app.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "app.css",
        Asset {
            body: include_str!("app.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
];

/// What the page may load and talk to: only this origin, no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes: `GET /` and `GET /assets/{file}`, unguarded
/// (they carry no data; the API behind them keeps its guard).
pub(crate) fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route("/assets/{file}", get(asset))
}

/// `GET /assets/{file}`: an embedded file, or 404.
async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(name, _)| *name == file) {
        Some((_, a)) => serve(a, &headers),
        None => ApiError::no_route().into_response(),
    }
}

/// The asset with its headers, or `304 Not Modified` when the browser's
/// copy (`If-None-Match`) is current.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::ETAG, HeaderValue::from_str(&etag).ok()),
        (
            header::CACHE_CONTROL,
            Some(HeaderValue::from_static("no-cache")),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            Some(HeaderValue::from_static("nosniff")),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            Some(HeaderValue::from_static(CSP)),
        ),
        (
            header::REFERRER_POLICY,
            Some(HeaderValue::from_static("no-referrer")),
        ),
    ];
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    for (name, value) in common {
        if let Some(v) = value {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// A strong validator of `body`: its 64-bit FNV-1a hash, quoted.
fn etag(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_the_content() {
        assert_eq!(etag("a"), etag("a"));
        assert_ne!(etag("a"), etag("b"));
        assert!(etag("").starts_with('"') && etag("").ends_with('"'));
    }

    #[test]
    fn the_page_links_every_asset() {
        for (name, _) in &ASSETS {
            assert!(
                INDEX.body.contains(&format!("/assets/{name}")),
                "index.html does not load {name}"
            );
        }
    }
}
