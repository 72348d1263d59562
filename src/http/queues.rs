//! `/api/queues`: list, show, declare (`PUT`), delete, purge (`DELETE .../contents`) and
//! get messages (`POST .../get`).
//!
//! A queue's JSON is RabbitMQ's object with the fields Warren can fill from live state
//! (ready count, bytes, memory, consumers, under the queue's lock once) and from the
//! counters the queue keeps (`message_stats`); rates come from the statistics sampler
//! (`crate::broker::stats`). Declares and deletes go
//! through the vhost's own operations, so the checks and reply texts are the AMQP ones,
//! answered 400. Talks to `crate::broker::vhost` and `crate::broker::queue`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult, parse_body};
use super::pagination::{ListQuery, Window, shape_by_name};
use super::values::{json_to_table, lenient_bool, lenient_u64, properties_to_json, table_to_json};
use crate::auth::{Kind, Perm};
use crate::broker::queue::{Operation, Queue};
use crate::broker::stats::{Figures, fig};
use crate::broker::vhost::{QueueFlags, VHost};

/// RabbitMQ's `message_stats` object for these counts, with the sampled rates.
pub fn stats_json(f: &Figures, rates: &[f64; fig::N]) -> Value {
    let mut o = serde_json::Map::new();
    for (name, i) in [
        ("publish", fig::PUBLISH),
        ("deliver_get", fig::DELIVER_GET),
        ("ack", fig::ACK),
        ("redeliver", fig::REDELIVER),
    ] {
        o.insert(name.into(), f.0[i].into());
        o.insert(format!("{name}_details"), json!({"rate": rates[i]}));
    }
    Value::Object(o)
}

/// The depth fields (`messages`, `messages_ready`, `messages_unacknowledged` and their
/// `_details` rates) of a queue, a vhost or the overview's `queue_totals`.
pub fn depth_json(f: &Figures, rates: &[f64; fig::N]) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    for (name, i) in [
        ("messages", fig::MESSAGES),
        ("messages_ready", fig::READY),
        ("messages_unacknowledged", fig::UNACKED),
    ] {
        o.insert(name.into(), f.0[i].into());
        o.insert(format!("{name}_details"), json!({"rate": rates[i]}));
    }
    o
}

/// One queue as RabbitMQ's management API shows it: live figures, rates from the last
/// statistics sample.
pub fn queue_json(api: &Api, vhost: &VHost, q: &Queue) -> Value {
    let s = q.snapshot();
    let live = q.figures_with(&s);
    let rates = q.stats.sampled.lock().rates;
    let args = q.args.load();
    let policy = &args.policy;
    let mut o = json!({
        "name": &*q.name,
        "vhost": vhost.name,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.owner.is_some(),
        "exclusive_consumer_tag": null,
        "arguments": table_to_json(&q.arguments),
        "type": q.type_name(),
        "state": "running",
        "node": &*api.node,
        "policy": policy.as_ref().map(|(n, _)| n.as_str()),
        "operator_policy": null,
        "effective_policy_definition": policy.as_ref().map_or(json!({}), |(_, d)| json!(d)),
        "consumers": s.consumers,
        "memory": s.memory,
        "message_bytes": s.ready_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_stats": stats_json(&live, &rates),
    });
    if let Value::Object(m) = &mut o {
        m.extend(depth_json(&live, &rates));
    }
    o
}

fn list(api: &Api, vhost: Option<&str>, q: &ListQuery) -> ApiResult<Json<Value>> {
    let vhosts = api.vhosts(vhost)?;
    if Window::natural(q, vhosts.len() <= 1) {
        return page_in_order(api, &vhosts, q).map(Json);
    }
    let mut items = Vec::new();
    for v in vhosts {
        items.extend(v.queues().into_iter().map(|q| (v.clone(), q)));
    }
    Ok(Json(shape_by_name(
        items,
        |(_, q)| &q.name,
        |(v, q)| queue_json(api, v, q),
        q,
    )?))
}

/// A page of queues in (vhost, name) order, read from each vhost's name index: at 100,000
/// queues the first page costs 100 lookups, not a sort of every name.
fn page_in_order(api: &Api, vhosts: &[Arc<VHost>], q: &ListQuery) -> ApiResult<Value> {
    let total: usize = vhosts.iter().map(|v| v.queue_count()).sum();
    let w = Window::of(q, total, total)?;
    let reverse = Window::reverse(q);
    let (mut skip, mut chunk) = (w.skip, Vec::with_capacity(w.take.min(total)));
    let ordered: Box<dyn Iterator<Item = &Arc<VHost>>> = if reverse {
        Box::new(vhosts.iter().rev())
    } else {
        Box::new(vhosts.iter())
    };
    for v in ordered {
        if chunk.len() == w.take {
            break;
        }
        let n = v.queue_count();
        if skip >= n {
            skip -= n;
            continue;
        }
        for queue in v.queue_range(skip, w.take - chunk.len(), reverse) {
            chunk.push(queue_json(api, v, &queue));
        }
        skip = 0;
    }
    w.envelope(chunk, q)
}

/// `GET /api/queues`.
pub async fn list_all(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, None, &q))
}

/// `GET /api/queues/{vhost}`.
pub async fn list_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, Some(&vhost), &q))
}

fn find(api: &Api, vhost: &str, name: &str) -> ApiResult<(Arc<VHost>, Arc<Queue>)> {
    let v = api.vhost(vhost)?;
    let q = v.find_queue(name).ok_or_else(ApiError::not_found)?;
    Ok((v, q))
}

/// `GET /api/queues/{vhost}/{name}`.
pub async fn show(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (v, q) = find(&api, &vhost, &name)?;
    Ok(Json(queue_json(&api, &v, &q)))
}

/// The body of `PUT /api/queues/{vhost}/{name}`.
#[derive(Debug, Deserialize)]
struct QueueBody {
    #[serde(default, deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

/// `PUT /api/queues/{vhost}/{name}`: 201 when created, 204 when it already existed.
pub async fn declare(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let v = api.vhost(&vhost)?;
    api.allow(&vhost, Perm::Configure, Kind::Queue, &name)?;
    let b: QueueBody = parse_body(&body)?;
    let args = json_to_table(&b.arguments)
        .ok_or_else(|| ApiError::bad_request("arguments must be an object"))?;
    if name.starts_with("amq.") {
        return Err(ApiError::access_refused());
    }
    let flags = QueueFlags {
        durable: b.durable,
        auto_delete: b.auto_delete,
        ..Default::default()
    };
    let d = v.declare_queue(&name, flags, &args, 0)?;
    Ok(if d.created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

/// `if-unused` / `if-empty` on a queue delete.
#[derive(Debug, Default, Deserialize)]
pub struct DeleteQuery {
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
}

/// `DELETE /api/queues/{vhost}/{name}` (exclusive queues too, as RabbitMQ allows).
pub async fn delete(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(dq): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let (v, q) = find(&api, &vhost, &name)?;
    api.allow(&vhost, Perm::Configure, Kind::Queue, &name)?;
    let s = q.snapshot();
    if dq.if_unused.as_deref() == Some("true") && s.consumers > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' in use"
        )));
    }
    if dq.if_empty.as_deref() == Some("true") && s.ready > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' not empty"
        )));
    }
    v.remove_queue(&q);
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge.
pub async fn purge(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (_, q) = find(&api, &vhost, &name)?;
    api.allow(&vhost, Perm::Read, Kind::Queue, &name)?;
    q.supports(Operation::Purge, &vhost)
        .map_err(|e| ApiError::bad_request(e.text))?;
    q.purge();
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /api/queues/{vhost}/{name}/get`.
#[derive(Debug, Deserialize)]
struct GetBody {
    #[serde(default, deserialize_with = "lenient_u64")]
    count: Option<u64>,
    ackmode: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    truncate: Option<u64>,
}

/// A message body as the API returns it: text when it is UTF-8 (with `auto`), else base64.
fn payload(body: &[u8], encoding: &str, truncate: Option<u64>) -> (Value, &'static str) {
    let body = match truncate {
        Some(n) if (n as usize) < body.len() => &body[..n as usize],
        _ => body,
    };
    match (encoding, std::str::from_utf8(body)) {
        ("auto", Ok(s)) => (Value::String(s.into()), "string"),
        _ => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            "base64",
        ),
    }
}

/// `POST /api/queues/{vhost}/{name}/get`: takes up to `count` messages, then acks,
/// requeues or rejects them all by `ackmode`.
pub async fn get_messages(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (_, q) = find(&api, &vhost, &name)?;
    api.allow(&vhost, Perm::Read, Kind::Queue, &name)?;
    let b: GetBody = parse_body(&body)?;
    let ackmode = b.ackmode.as_deref().unwrap_or("");
    let (requeue, ack) = match ackmode {
        "ack_requeue_true" | "reject_requeue_true" => (true, false),
        "ack_requeue_false" => (false, true),
        "reject_requeue_false" => (false, false),
        other => {
            return Err(ApiError::bad_request(format!("Unknown ackmode: '{other}'")));
        }
    };
    let encoding = b.encoding.as_deref().unwrap_or("auto");
    if !matches!(encoding, "auto" | "base64") {
        return Err(ApiError::bad_request(format!(
            "Unsupported encoding: '{encoding}'"
        )));
    }
    q.supports(Operation::Get, &vhost)
        .map_err(|e| ApiError::bad_request(e.text))?;
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..b.count.unwrap_or(1) {
        let Some((e, left)) = q.get(false) else { break };
        let (p, enc) = payload(&e.msg.body, encoding, b.truncate);
        let props = properties_to_json(&e.msg.properties);
        out.push(json!({
            "payload_bytes": e.msg.body.len(),
            "redelivered": e.redelivered,
            "exchange": e.msg.exchange.as_str(),
            "routing_key": e.msg.routing_key.as_str(),
            "message_count": left,
            // RabbitMQ shows a message without properties as an empty list.
            "properties": if props.as_object().is_some_and(|m| m.is_empty()) { json!([]) } else { props },
            "payload": p,
            "payload_encoding": enc,
        }));
        taken.push(e);
    }
    if requeue {
        q.requeue(taken);
        q.dispatch();
    } else if ack {
        for e in &taken {
            q.acked(e);
        }
    } else {
        q.discard(taken);
    }
    Ok(Json(Value::Array(out)).into_response())
}
