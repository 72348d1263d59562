//! `/api/connections` (list, show, close with `DELETE`), `/api/channels` and
//! `/api/consumers`, from the broker's connection registry and the queues' consumer lists.
//!
//! Closing a connection asks its task, through the registry, to send `connection.close`
//! 320 `CONNECTION_FORCED - <reason>`, the reason being the request's `X-Reason` header
//! (RabbitMQ's default text otherwise). Talks to `crate::broker::connections` and the
//! vhosts' queues.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};
use super::pagination::{ListQuery, shape};
use super::values::table_to_json;
use std::sync::atomic::Ordering::Relaxed;

use crate::broker::connections::{ChannelView, ConnEntry};

/// RabbitMQ's connection states under an alarm: `blocked` once it holds a publish,
/// `blocking` (every other connection) while an alarm is raised, else `running`.
fn connection_state(api: &Api, c: &ConnEntry) -> &'static str {
    if c.blocked.load(Relaxed) {
        "blocked"
    } else if api.broker.alarms.raised() != 0 {
        "blocking"
    } else {
        "running"
    }
}

/// One connection as RabbitMQ's management API shows it.
pub fn connection_json(api: &Api, c: &ConnEntry) -> Value {
    json!({
        "name": c.name,
        "node": &*api.node,
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": connection_state(api, c),
        "ssl": c.ssl,
        "auth_mechanism": c.auth_mechanism,
        "channels": c.channel_count(),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "connected_at": c.connected_at,
        "client_properties": table_to_json(&c.client_properties),
    })
}

fn list_of(api: &Api, vhost: Option<&str>, q: &ListQuery) -> ApiResult<Json<Value>> {
    if let Some(v) = vhost {
        api.vhost(v)?;
    }
    let items = api
        .broker
        .connections
        .list()
        .iter()
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .map(|c| connection_json(api, c))
        .collect();
    Ok(Json(shape(items, q)?))
}

/// `GET /api/connections`.
pub async fn list(State(api): State<Api>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    list_of(&api, None, &q)
}

/// `GET /api/vhosts/{vhost}/connections`.
pub async fn list_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    list_of(&api, Some(&vhost), &q)
}

/// `GET /api/connections/{name}`.
pub async fn show(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let c = api
        .broker
        .connections
        .get_by_name(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(connection_json(&api, &c)))
}

/// `DELETE /api/connections/{name}`: closes it with 320 and the `X-Reason` text.
pub async fn close(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let c = api
        .broker
        .connections
        .get_by_name(&name)
        .ok_or_else(ApiError::not_found)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    tracing::info!(connection = %c.name, "closing connection on request of the management API: {reason}");
    api.broker.connections.close(c.id, reason);
    Ok(StatusCode::NO_CONTENT)
}

/// One channel as RabbitMQ's management API shows it.
fn channel_json(api: &Api, c: &ConnEntry, n: u16, v: &ChannelView) -> Value {
    json!({
        "name": format!("{} ({n})", c.name),
        "number": n,
        "node": &*api.node,
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "state": "running",
        "prefetch_count": v.prefetch_count.load(Relaxed),
        "global_prefetch_count": v.global_prefetch_count.load(Relaxed),
        "confirm": v.confirm.load(Relaxed),
        "transactional": v.transactional.load(Relaxed),
        "consumer_count": v.consumer_count.load(Relaxed),
        "messages_unacknowledged": v.messages_unacknowledged.load(Relaxed),
        "messages_unconfirmed": v.messages_unconfirmed.load(Relaxed),
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "connection_details": {"name": c.name, "peer_host": c.peer.ip().to_string(),
                               "peer_port": c.peer.port()},
    })
}

/// `GET /api/channels`.
pub async fn channels(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for c in api.broker.connections.list() {
        for (n, v) in c.channel_views() {
            items.push(channel_json(&api, &c, n, &v));
        }
    }
    Ok(Json(shape(items, &q)?))
}

fn consumers_of(api: &Api, vhost: Option<&str>, q: &ListQuery) -> ApiResult<Json<Value>> {
    let conns: HashMap<u64, _> = api
        .broker
        .connections
        .list()
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut items = Vec::new();
    for v in api.vhosts(vhost)? {
        for queue in v.queues() {
            for c in queue.consumers() {
                let conn = conns.get(&c.conn_id);
                let conn_name = conn.map_or(String::new(), |e| e.name.clone());
                items.push(json!({
                    "consumer_tag": &*c.tag,
                    "queue": {"name": &*queue.name, "vhost": v.name},
                    "channel_details": {
                        "name": format!("{conn_name} ({})", c.channel),
                        "number": c.channel,
                        "connection_name": conn_name,
                        "peer_host": conn.map(|e| e.peer.ip().to_string()),
                        "peer_port": conn.map(|e| e.peer.port()),
                        "user": conn.map(|e| e.user.clone()),
                        "node": &*api.node,
                    },
                    "ack_required": !c.no_ack,
                    "exclusive": c.exclusive,
                    "prefetch_count": c.prefetch,
                    "active": true,
                    "activity_status": "up",
                    "arguments": if c.priority != 0 { json!({"x-priority": c.priority}) } else { json!({}) },
                }));
            }
        }
    }
    Ok(Json(shape(items, q)?))
}

/// `GET /api/consumers`.
pub async fn consumers(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| consumers_of(&api, None, &q))
}

/// `GET /api/consumers/{vhost}`.
pub async fn consumers_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    consumers_of(&api, Some(&vhost), &q)
}
