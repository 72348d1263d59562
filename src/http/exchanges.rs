//! `/api/exchanges`: list, show, declare (`PUT`), delete, and publish (`POST .../publish`).
//!
//! The default exchange is listed with the name `""` and addressed in paths as
//! `amq.default`, as in RabbitMQ. Declares and deletes are the vhost's AMQP operations
//! (same checks, texts answered 400); publishing builds a message and routes it like
//! `basic.publish` does, through `VHost::route` and `Queue::publish`. Talks to
//! `crate::broker::vhost`, `crate::broker::exchange` and `crate::broker::message`.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult, parse_body};
use super::pagination::{ListQuery, shape};
use super::values::{json_to_properties, json_to_table, lenient_bool, table_to_json};
use crate::auth::{Kind, Perm};
use crate::broker::exchange::Exchange;
use crate::broker::message::Message;
use crate::broker::queue::Published;
use crate::broker::vhost::{ExchangeFlags, VHost};

/// The name a path uses for an exchange: `amq.default` is the default exchange.
pub fn path_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

/// One exchange as RabbitMQ's management API shows it.
pub fn exchange_json(vhost: &VHost, x: &Exchange) -> Value {
    let mut v = json!({
        "name": &*x.name,
        "vhost": vhost.name,
        "type": x.type_name(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "policy": null,
    });
    // The plugin's info item; only delayed exchanges have it.
    if let Some(d) = &x.delayed {
        v["messages_delayed"] = d.messages_delayed().into();
    }
    v
}

fn list(api: &Api, vhost: Option<&str>, q: &ListQuery) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for v in api.vhosts(vhost)? {
        items.extend(v.exchanges().iter().map(|x| exchange_json(&v, x)));
    }
    Ok(Json(shape(items, q)?))
}

/// `GET /api/exchanges`.
pub async fn list_all(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, None, &q))
}

/// `GET /api/exchanges/{vhost}`.
pub async fn list_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, Some(&vhost), &q))
}

fn find(api: &Api, vhost: &str, name: &str) -> ApiResult<(Arc<VHost>, Arc<Exchange>)> {
    let v = api.vhost(vhost)?;
    let x = v
        .exchange(path_name(name))
        .ok_or_else(ApiError::not_found)?;
    Ok((v, x))
}

/// `GET /api/exchanges/{vhost}/{name}`.
pub async fn show(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (v, x) = find(&api, &vhost, &name)?;
    Ok(Json(exchange_json(&v, &x)))
}

/// The body of `PUT /api/exchanges/{vhost}/{name}`.
#[derive(Debug, Deserialize)]
struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

/// `PUT /api/exchanges/{vhost}/{name}`: 201 when created, 204 when it already existed.
pub async fn declare(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let v = api.vhost(&vhost)?;
    api.allow(&vhost, Perm::Configure, Kind::Exchange, path_name(&name))?;
    let b: ExchangeBody = parse_body(&body)?;
    // As RabbitMQ: without a type, a direct exchange.
    let kind = b.kind.unwrap_or_else(|| "direct".into());
    let args = json_to_table(&b.arguments)
        .ok_or_else(|| ApiError::bad_request("arguments must be an object"))?;
    let existed = v.exchange(path_name(&name)).is_some();
    let flags = ExchangeFlags {
        durable: b.durable,
        auto_delete: b.auto_delete,
        internal: b.internal,
        ..Default::default()
    };
    v.declare_exchange(path_name(&name), &kind, flags, &args)?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

/// `if-unused` on an exchange delete.
#[derive(Debug, Default, Deserialize)]
pub struct DeleteQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

/// `DELETE /api/exchanges/{vhost}/{name}`.
pub async fn delete(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(dq): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let (v, x) = find(&api, &vhost, &name)?;
    api.allow(&vhost, Perm::Configure, Kind::Exchange, &x.name)?;
    v.delete_exchange(&x.name, dq.if_unused.as_deref() == Some("true"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Routes one message from `exchange` as `basic.publish` does; returns whether it reached
/// any queue.
///
/// # Errors
/// 404 for a missing exchange, 400 for an internal one or a refused store write.
pub fn publish_message(
    v: &VHost,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
    body: Bytes,
) -> ApiResult<bool> {
    let x = v.exchange(exchange).ok_or_else(ApiError::not_found)?;
    if x.internal {
        return Err(ApiError::bad_request(format!(
            "cannot publish to internal exchange '{}' in vhost '{}'",
            x.name, v.name
        )));
    }
    let msg = Arc::new(Message {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        raw_properties: crate::protocol::encode_properties(&properties),
        properties: crate::protocol::Properties::new(properties),
        body,
    });
    let mut targets = Vec::new();
    let routed = v.route(&x, &msg, &mut targets);
    let msg = routed.message.unwrap_or(msg);
    let mut failed = false;
    for q in &targets {
        failed |= q.publish(msg.clone()) == Published::Failed;
    }
    if failed {
        return Err(ApiError::internal(
            "the message store failed; persistent messages are not accepted",
        ));
    }
    Ok(!targets.is_empty() || routed.replied)
}

/// The body of `POST /api/exchanges/{vhost}/{name}/publish`.
#[derive(Debug, Deserialize)]
struct PublishBody {
    #[serde(default)]
    properties: Value,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: Option<String>,
}

/// `POST /api/exchanges/{vhost}/{name}/publish` → `{"routed": bool}`.
pub async fn publish(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (v, x) = find(&api, &vhost, &name)?;
    api.allow(&vhost, Perm::Write, Kind::Exchange, &x.name)?;
    let b: PublishBody = parse_body(&body)?;
    let payload = match b.payload_encoding.as_deref().unwrap_or("string") {
        "string" => Bytes::from(b.payload.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(b.payload.trim())
            .map(Bytes::from)
            .map_err(|_| ApiError::bad_request("not_base64"))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "unsupported payload_encoding '{other}'"
            )));
        }
    };
    if payload.len() as u64 > api.broker.config.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {}",
            payload.len(),
            api.broker.config.max_message_size
        )));
    }
    let props = json_to_properties(&b.properties)
        .map_err(|k| ApiError::bad_request(format!("invalid property '{k}'")))?;
    let routed = publish_message(&v, &x.name, &b.routing_key, props, payload)?;
    Ok(Json(json!({"routed": routed})))
}
