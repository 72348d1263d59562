//! `/api/definitions` and `/api/definitions/{vhost}`: export (`GET`) and import (`POST`)
//! of RabbitMQ's definitions JSON, through `crate::broker::definitions_json` (the same code
//! `load_definitions` uses at boot).
//!
//! The whole-broker export needs `administrator` (it carries password hashes), as do
//! imports; a vhost's export needs `management`. The HTTP export adds RabbitMQ's
//! `product_name` / `product_version` keys; a per-vhost export has no `vhost` fields, as
//! RabbitMQ's. Work proportional to the broker's size runs through `offload`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::Api;
use super::auth::Principal;
use super::error::{ApiError, ApiResult, parse_body};
use crate::broker::definitions_json;

/// The shape RabbitMQ 3.10.8's HTTP export has, which differs from `rabbitmqctl
/// export_definitions` (what `definitions_json::export` writes): `product_*` keys, vhosts
/// by name only (their limits are still in `parameters`), queues without `type`.
fn http_shape(mut v: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.insert("product_name".into(), "Warren".into());
        o.insert("product_version".into(), env!("CARGO_PKG_VERSION").into());
        if let Some(Value::Array(vhosts)) = o.get_mut("vhosts") {
            for vh in vhosts {
                if let Value::Object(m) = vh {
                    m.retain(|k, _| k == "name");
                }
            }
        }
        if let Some(Value::Array(queues)) = o.get_mut("queues") {
            for q in queues {
                if let Value::Object(m) = q {
                    m.remove("type");
                }
            }
        }
    }
    v
}

/// `GET /api/definitions`.
pub async fn export_all(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    Ok(Json(http_shape(super::offload(|| {
        definitions_json::export(&api.broker, None)
    }))))
}

/// `GET /api/definitions/{vhost}`: that vhost's definitions, without `vhost` fields.
pub async fn export_vhost(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("management")?;
    api.vhost(&vhost)?;
    let mut v = super::offload(|| definitions_json::export(&api.broker, Some(&vhost)));
    for key in ["parameters", "policies", "queues", "exchanges", "bindings"] {
        if let Some(Value::Array(items)) = v.get_mut(key) {
            for item in items {
                if let Value::Object(o) = item {
                    o.remove("vhost");
                }
            }
        }
    }
    Ok(Json(http_shape(v)))
}

fn import(api: &Api, body: &[u8], vhost: Option<&str>) -> ApiResult<StatusCode> {
    let defs: Value = parse_body(body)?;
    super::offload(|| definitions_json::import(&api.broker, &defs, vhost))
        .map_err(|e| ApiError::bad_request(e.0))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/definitions`.
pub async fn import_all(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    import(&api, &body, None)
}

/// `POST /api/definitions/{vhost}`.
pub async fn import_vhost(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    api.vhost(&vhost)?;
    import(&api, &body, Some(&vhost))
}
