//! The resource alarms over HTTP: RabbitMQ's alarm health checks
//! (`/api/health/checks/alarms`, `.../local-alarms`: 503 while one is raised) and Warren's
//! run-time limits (`PUT /api/nodes/{node}/memory-high-watermark` and
//! `.../disk-free-limit`, what `rabbitmqctl set_vm_memory_high_watermark` and
//! `set_disk_free_limit` do; RabbitMQ has no HTTP path for them).
//!
//! Talks to `crate::alarms` through the broker; `overview` shows the same state in
//! `/api/overview` and `/api/nodes` with [`alarms_json`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Api;
use super::auth::Principal;
use super::error::{ApiError, ApiResult, parse_body};
use crate::config::ResourceLimit;

/// `[{"node": ..., "resource": "memory"}, ...]` for the raised alarms, RabbitMQ's shape
/// (its resources are named `memory` and `disk space`).
pub fn alarms_json(api: &Api) -> Vec<Value> {
    crate::alarms::resources(api.broker.alarms.raised())
        .into_iter()
        .map(|r| json!({"node": &*api.node, "resource": r}))
        .collect()
}

fn health(api: &Api, scope: &str) -> Response {
    let alarms = alarms_json(api);
    if alarms.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let body = json!({
        "status": "failed",
        "reason": format!("There are alarms in effect {scope}"),
        "alarms": alarms,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /api/health/checks/alarms`.
pub async fn health_alarms(State(api): State<Api>) -> Response {
    health(&api, "in the cluster")
}

/// `GET /api/health/checks/local-alarms`.
pub async fn health_local_alarms(State(api): State<Api>) -> Response {
    health(&api, "on the node")
}

fn parse_limit(api: &Api, who: &Principal, node: &str, body: &[u8]) -> ApiResult<ResourceLimit> {
    who.require("administrator")?;
    if node != &*api.node {
        return Err(ApiError::not_found());
    }
    // The same form as rabbit.toml's: {"relative": 0.4} or {"absolute": "2GiB"}.
    let limit: ResourceLimit = parse_body(body)?;
    if let ResourceLimit::Relative(f) = limit
        && !(f >= 0.0 && f.is_finite())
    {
        return Err(ApiError::bad_request(format!("{f} is not a fraction")));
    }
    Ok(limit)
}

/// `PUT /api/nodes/{node}/memory-high-watermark`: moves the memory alarm's limit now
/// (until the next boot, as `rabbitmqctl set_vm_memory_high_watermark`).
pub async fn put_memory_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let limit = parse_limit(&api, &who, &node, &body)?;
    super::offload(|| api.broker.alarms.set_memory_limit(limit));
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/nodes/{node}/disk-free-limit`: moves the disk alarm's limit now (until the
/// next boot, as `rabbitmqctl set_disk_free_limit`).
pub async fn put_disk_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let limit = parse_limit(&api, &who, &node, &body)?;
    super::offload(|| api.broker.alarms.set_disk_limit(limit));
    Ok(StatusCode::NO_CONTENT)
}
