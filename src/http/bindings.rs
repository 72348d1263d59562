//! `/api/bindings` and the per-exchange / per-queue binding lists: list, create (`POST`,
//! answering 201 with a `Location` naming the new binding's properties key), show and
//! delete one binding by its properties key.
//!
//! The properties key is RabbitMQ's (`rabbit_mgmt_format:pack_binding_props`): `~` for an
//! empty routing key without arguments, else the routing key quoted as a form value (`~`
//! written `%7E`), followed by `~` and a hash of the arguments when there are any. Lists
//! include the default exchange's implicit binding of every queue, as RabbitMQ's do.
//! Talks to `crate::broker::vhost` and `crate::broker::exchange`.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult, parse_body};
use super::exchanges::path_name;
use super::pagination::{ListQuery, shape};
use super::values::{json_to_table, table_to_json};
use crate::auth::{Kind, Perm};
use crate::broker::exchange::Dest;
use crate::broker::vhost::VHost;

/// What mochiweb's `quote_plus` leaves alone: letters, digits and `.-_` (`~` too, but
/// RabbitMQ then writes it `%7E`, so it is escaped here directly).
const FORM: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');
/// A path segment in a `Location` header: RFC 3986's unreserved characters stay.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn quote_plus(s: &str) -> String {
    s.split(' ')
        .map(|part| utf8_percent_encode(part, FORM).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// A short hash of binding arguments, base64url without padding (6 characters).
// compat: RabbitMQ hashes the Erlang term with `erlang:phash2`, which only an Erlang node
// computes; Warren's hash (FNV-1a over the arguments' JSON) differs, so a properties key
// with arguments must be read from Warren's own listing, as clients do anyway.
fn args_hash(args: &FieldTable) -> String {
    let text = table_to_json(args).to_string();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.to_be_bytes())
}

/// RabbitMQ's properties key of a binding.
pub fn properties_key(key: &str, args: &FieldTable) -> String {
    if args.inner().is_empty() {
        if key.is_empty() {
            "~".into()
        } else {
            quote_plus(key)
        }
    } else {
        format!("{}~{}", quote_plus(key), args_hash(args))
    }
}

/// One binding, flattened.
#[derive(Debug, Clone)]
pub struct Row {
    /// Source exchange (`""` for the default exchange's implicit bindings).
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// The destination is an exchange.
    pub to_exchange: bool,
    /// Routing key.
    pub key: String,
    /// Arguments.
    pub args: FieldTable,
}

impl Row {
    /// RabbitMQ's JSON, with or without the `properties_key` (definitions have none).
    pub fn json(&self, vhost: &str, with_key: bool) -> Value {
        let mut v = json!({
            "source": self.source,
            "vhost": vhost,
            "destination": self.destination,
            "destination_type": if self.to_exchange { "exchange" } else { "queue" },
            "routing_key": self.key,
            "arguments": table_to_json(&self.args),
        });
        if with_key {
            v["properties_key"] = Value::String(properties_key(&self.key, &self.args));
        }
        v
    }
}

/// Every binding of a vhost; `implicit` adds the default exchange's binding of each queue.
pub fn rows(v: &VHost, implicit: bool) -> Vec<Row> {
    let mut out = Vec::new();
    if implicit {
        for q in v.queues() {
            out.push(Row {
                source: String::new(),
                destination: q.name.to_string(),
                to_exchange: false,
                key: q.name.to_string(),
                args: FieldTable::default(),
            });
        }
    }
    for x in v.exchanges() {
        if x.name.is_empty() {
            continue;
        }
        for b in x.bindings() {
            let (destination, to_exchange) = match &b.dest {
                Dest::Queue(q) => (q.name.to_string(), false),
                Dest::Exchange(n) => (n.to_string(), true),
            };
            out.push(Row {
                source: x.name.to_string(),
                destination,
                to_exchange,
                key: b.key.clone(),
                args: b.args.clone(),
            });
        }
    }
    out
}

fn list(
    api: &Api,
    vhost: Option<&str>,
    q: &ListQuery,
    keep: impl Fn(&Row) -> bool,
) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for v in api.vhosts(vhost)? {
        items.extend(
            rows(&v, true)
                .iter()
                .filter(|r| keep(r))
                .map(|r| r.json(&v.name, true)),
        );
    }
    Ok(Json(shape(items, q)?))
}

/// `GET /api/bindings`.
pub async fn list_all(
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, None, &q, |_| true))
}

/// `GET /api/bindings/{vhost}`.
pub async fn list_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    super::offload(|| list(&api, Some(&vhost), &q, |_| true))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/source`.
pub async fn exchange_source(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let name = path_name(&name).to_string();
    api.vhost(&vhost)?
        .exchange(&name)
        .ok_or_else(ApiError::not_found)?;
    list(&api, Some(&vhost), &q, |r| r.source == name)
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/destination`.
pub async fn exchange_destination(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let name = path_name(&name).to_string();
    api.vhost(&vhost)?
        .exchange(&name)
        .ok_or_else(ApiError::not_found)?;
    list(&api, Some(&vhost), &q, |r| {
        r.to_exchange && r.destination == name
    })
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub async fn queue_bindings(
    State(api): State<Api>,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    api.vhost(&vhost)?
        .find_queue(&name)
        .ok_or_else(ApiError::not_found)?;
    list(&api, Some(&vhost), &q, |r| {
        !r.to_exchange && r.destination == name
    })
}

/// Checks a `/e/{source}/{q|e}/{dest}` path; returns the vhost and whether `dest` is an
/// exchange.
fn ends(
    api: &Api,
    vhost: &str,
    source: &str,
    kind: &str,
    dest: &str,
) -> ApiResult<(Arc<VHost>, bool)> {
    let v = api.vhost(vhost)?;
    let to_exchange = match kind {
        "q" => false,
        "e" => true,
        _ => return Err(ApiError::not_found()),
    };
    v.exchange(path_name(source))
        .ok_or_else(ApiError::not_found)?;
    let found = if to_exchange {
        v.exchange(path_name(dest)).is_some()
    } else {
        v.find_queue(dest).is_some()
    };
    if !found {
        return Err(ApiError::not_found());
    }
    Ok((v, to_exchange))
}

fn between_rows(v: &VHost, source: &str, to_exchange: bool, dest: &str) -> Vec<Row> {
    let source = path_name(source);
    let dest = if to_exchange { path_name(dest) } else { dest };
    rows(v, true)
        .into_iter()
        .filter(|r| r.source == source && r.to_exchange == to_exchange && r.destination == dest)
        .collect()
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{dest}`.
pub async fn between(
    State(api): State<Api>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let (v, to_exchange) = ends(&api, &vhost, &source, &kind, &dest)?;
    let items = between_rows(&v, &source, to_exchange, &dest)
        .iter()
        .map(|r| r.json(&v.name, true))
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// The body of a binding `POST`.
#[derive(Debug, Deserialize)]
struct BindBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{dest}`: 201 with `Location:
/// DEST/PROPS`, relative as RabbitMQ writes it.
pub async fn create(
    State(api): State<Api>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (v, to_exchange) = ends(&api, &vhost, &source, &kind, &dest)?;
    allow_binding(&api, &vhost, path_name(&source), to_exchange, &dest)?;
    let b: BindBody = parse_body(&body)?;
    let args = json_to_table(&b.arguments)
        .ok_or_else(|| ApiError::bad_request("arguments must be an object"))?;
    let src = path_name(&source);
    if to_exchange {
        v.bind_exchange(path_name(&dest), src, &b.routing_key, &args)?;
    } else {
        v.bind_queue(&dest, src, &b.routing_key, &args, 0)?;
    }
    let props = properties_key(&b.routing_key, &args);
    let location = format!(
        "{}/{}",
        utf8_percent_encode(&dest, SEGMENT),
        utf8_percent_encode(&props, SEGMENT)
    );
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(h) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(r)
}

/// A binding's permissions, in RabbitMQ's order: write on the destination, read on the
/// source.
fn allow_binding(
    api: &Api,
    vhost: &str,
    source: &str,
    to_exchange: bool,
    dest: &str,
) -> ApiResult<()> {
    let kind = if to_exchange {
        Kind::Exchange
    } else {
        Kind::Queue
    };
    let dest = if to_exchange { path_name(dest) } else { dest };
    api.allow(vhost, Perm::Write, kind, dest)?;
    api.allow(vhost, Perm::Read, Kind::Exchange, source)
}

fn find_one(
    api: &Api,
    (vhost, source, kind, dest, props): &(String, String, String, String, String),
) -> ApiResult<(Arc<VHost>, Row)> {
    let (v, to_exchange) = ends(api, vhost, source, kind, dest)?;
    let row = between_rows(&v, source, to_exchange, dest)
        .into_iter()
        .find(|r| properties_key(&r.key, &r.args) == *props)
        .ok_or_else(ApiError::not_found)?;
    Ok((v, row))
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}`.
pub async fn show(
    State(api): State<Api>,
    Path(p): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (v, row) = find_one(&api, &p)?;
    Ok(Json(row.json(&v.name, true)))
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}`.
pub async fn delete(
    State(api): State<Api>,
    Path(p): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let (v, row) = find_one(&api, &p)?;
    allow_binding(&api, &p.0, &row.source, row.to_exchange, &row.destination)?;
    if row.to_exchange {
        v.unbind_exchange(&row.destination, &row.source, &row.key, &row.args)?;
    } else {
        v.unbind_queue(&row.destination, &row.source, &row.key, &row.args, 0)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_are_rabbitmqs() {
        let none = FieldTable::default();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("a.b", &none), "a.b");
        assert_eq!(properties_key("a b/c~", &none), "a+b%2Fc%7E");
        let mut args = FieldTable::default();
        args.insert("x".into(), amq_protocol::types::AMQPValue::LongLongInt(1));
        let k = properties_key("a b/c", &args);
        assert!(
            k.starts_with("a+b%2Fc~") && k.len() == "a+b%2Fc~".len() + 6,
            "{k}"
        );
    }
}
