//! `/api/overview`, `/api/whoami`, `/api/nodes`, `/api/vhosts`, the aliveness test and the
//! health checks: the broker-wide views.
//!
//! Object counts are live (map sizes, the connection registry); message totals and rates
//! are the statistics sampler's last sums (`crate::broker::stats`), so these answers cost
//! the same at 100,000 queues as at one.
//! Talks to `crate::broker` (vhosts, queues, connections) and the sibling resource modules
//! for their JSON shapes.

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::pagination::{ListQuery, shape};
use super::{Api, RABBITMQ_VERSION, exchanges, queues};
use crate::broker::stats::Slot;
use crate::broker::vhost::{QueueFlags, VHost};

/// `message_stats` and `queue_totals` of a sampled sum.
fn sums(slot: &Slot) -> (Value, Value) {
    (
        queues::stats_json(&slot.figures, &slot.rates),
        Value::Object(queues::depth_json(&slot.figures, &slot.rates)),
    )
}

fn listeners(api: &Api) -> Vec<Value> {
    let mut out: Vec<Value> = api
        .amqp
        .iter()
        .map(|a| {
            json!({"node": &*api.node, "protocol": "amqp", "ip_address": a.ip().to_string(),
                   "port": a.port(), "socket_opts": {}})
        })
        .collect();
    out.push(json!({"node": &*api.node, "protocol": "http",
                    "ip_address": api.http.ip().to_string(), "port": api.http.port(),
                    "socket_opts": {"port": api.http.port()}}));
    out
}

/// `GET /api/overview`.
pub async fn overview(State(api): State<Api>) -> Json<Value> {
    super::offload(|| overview_now(&api))
}

fn overview_now(api: &Api) -> Json<Value> {
    // Admins' totals are the broker's last sample; other users' sum their vhosts' samples.
    let visible = api.vhosts(None).unwrap_or_default();
    let (mut exchanges, mut queues) = (0, 0);
    let mut slot = Slot::default();
    for v in &visible {
        exchanges += v.exchange_count();
        queues += v.queue_count();
    }
    if visible.len() == api.broker.vhost_count() {
        slot = *api.broker.sampled.lock();
    } else {
        for v in &visible {
            let s = *v.sampled.lock();
            for i in 0..slot.rates.len() {
                slot.figures.0[i] += s.figures.0[i];
                slot.rates[i] += s.rates[i];
            }
            slot.consumers += s.consumers;
        }
    }
    let (message_stats, queue_totals) = sums(&slot);
    let conns = api.broker.connections.list();
    let channels: u64 = conns.iter().map(|c| u64::from(c.channel_count())).sum();
    let types: Vec<Value> = [
        (
            "direct",
            "AMQP direct exchange, as per the AMQP specification",
        ),
        (
            "fanout",
            "AMQP fanout exchange, as per the AMQP specification",
        ),
        (
            "headers",
            "AMQP headers exchange, as per the AMQP specification",
        ),
        (
            "topic",
            "AMQP topic exchange, as per the AMQP specification",
        ),
    ]
    .iter()
    .map(|(n, d)| json!({"name": n, "description": d, "enabled": true}))
    .collect();
    Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "exchange_types": types,
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": &*api.node,
        "erlang_version": "none",
        "erlang_full_version": "none",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": message_stats,
        "queue_totals": queue_totals,
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": slot.consumers,
        },
        "statistics_db_event_queue": 0,
        "node": &*api.node,
        "listeners": listeners(api),
        // Not in RabbitMQ's overview (its dashboard reads /api/nodes): the raised alarms,
        // so one request tells a script whether publishers are blocked.
        "alarms": super::alarms::alarms_json(api),
        "contexts": [{"node": &*api.node, "description": "RabbitMQ Management",
                      "path": "/", "port": api.http.port().to_string()}],
    }))
}

/// `GET /api/whoami`.
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<Value> {
    Json(json!({"name": p.name, "tags": p.tags}))
}

fn node_json(api: &Api) -> Value {
    let procs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let r = api.broker.alarms.readings();
    json!({
        "mem_used": crate::alarms::resident_memory(),
        // RabbitMQ's mem_limit is the high watermark in bytes.
        "mem_limit": r.mem_limit,
        "mem_calculation_strategy": "rss",
        "disk_free": r.disk_free,
        "disk_free_limit": r.disk_free_limit,
        "uptime": api.started.elapsed().as_millis() as u64,
        "name": &*api.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "processors": procs,
        "partitions": [],
        "applications": [],
        "exchange_types": [],
        "auth_mechanisms": [{"name": "PLAIN", "enabled": true}, {"name": "AMQPLAIN", "enabled": true}],
        "listeners": listeners(api),
        "mem_alarm": r.raised & crate::alarms::MEMORY != 0,
        "disk_free_alarm": r.raised & crate::alarms::DISK != 0,
        "being_drained": false,
    })
}

/// `GET /api/nodes`: this one node.
pub async fn nodes(State(api): State<Api>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    Ok(Json(shape(vec![node_json(&api)], &q)?))
}

/// `GET /api/nodes/{node}`.
pub async fn node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    if name != *api.node {
        return Err(ApiError::not_found());
    }
    Ok(Json(node_json(&api)))
}

fn vhost_json(api: &Api, v: &VHost) -> Value {
    let (message_stats, totals) = sums(&v.sampled.lock());
    let meta = v.meta();
    let mut o = json!({
        "name": v.name,
        "description": meta.description,
        "tags": meta.tags,
        "metadata": {"description": meta.description, "tags": meta.tags},
        "default_queue_type": meta.default_queue_type.as_deref().unwrap_or("undefined"),
        "tracing": false,
        "cluster_state": {&*api.node: "running"},
        "message_stats": message_stats,
    });
    if let (Value::Object(o), Value::Object(q)) = (&mut o, totals) {
        o.extend(q);
    }
    o
}

/// `GET /api/vhosts`.
pub async fn vhosts(State(api): State<Api>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let items = api
        .vhosts(None)?
        .iter()
        .map(|v| vhost_json(&api, v))
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// `GET /api/vhosts/{vhost}`.
pub async fn vhost(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let v = api.vhost(&name)?;
    Ok(Json(vhost_json(&api, &v)))
}

/// `GET /api/aliveness-test/{vhost}`: declares the queue `aliveness-test`, publishes a
/// message to it and reads it back, as RabbitMQ does (the queue is left behind).
pub async fn aliveness(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let v = api.vhost(&name)?;
    let q = "aliveness-test";
    v.declare_queue(q, QueueFlags::default(), &Default::default(), 0)?;
    let body = bytes::Bytes::from_static(b"test_message");
    exchanges::publish_message(&v, "", q, Default::default(), body.clone())?;
    let got = v.find_queue(q).and_then(|q| q.get(true));
    match got {
        Some((e, _)) if e.msg.body == body => Ok(Json(json!({"status": "ok"}))),
        _ => Ok(Json(
            json!({"status": "failed", "reason": "aliveness test message not received"}),
        )),
    }
}

/// `GET /api/health/checks/virtual-hosts`: every vhost is served by this process.
pub async fn health_vhosts() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /api/health/checks/port-listener/{port}`.
pub async fn health_port(State(api): State<Api>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return ApiError::bad_request(format!("{port} is not a port")).into_response();
    };
    let mut ports: Vec<u16> = api.amqp.iter().map(|a| a.port()).collect();
    ports.push(api.http.port());
    ports.dedup();
    if ports.contains(&port) {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "No active listener",
                        "missing": port, "ports": ports})),
        )
            .into_response()
    }
}

/// `GET /api/health/checks/node-is-quorum-critical`: one node, no quorum queues.
pub async fn health_quorum() -> Json<Value> {
    Json(json!({"status": "ok", "reason": "single node cluster"}))
}
