//! The web dashboard: one HTML page, its script and its style sheet, embedded in the binary
//! and served by the management listener at `/` (and `/dashboard/...`) without
//! authentication; the page logs in itself and does everything through the `/api` routes
//! with HTTP basic auth, so anything it can do, a script can.
//!
//! Talks to nothing in the broker: the assets are static bytes. No build step and no CDN:
//! `app.js` is plain JavaScript as written, and it draws its rate chart on a canvas itself.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const APP: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The assets change only with the binary: a short cache lifetime lets an upgraded broker's
/// page load within a minute without a cache-busting scheme.
const CACHE: &str = "public, max-age=60";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, CACHE)],
        body,
    )
}

/// The dashboard's routes, for the API router to merge outside its auth layer.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
