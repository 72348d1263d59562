//! `/api/definitions` and `/api/definitions/{vhost}`: export (`GET`) and import (`POST`)
//! of RabbitMQ's definitions JSON.
//!
//! Export: the configured user (as `administrator`, with a RabbitMQ SHA-256 password hash
//! so the file imports into RabbitMQ), its permissions on every vhost, the configured
//! policies, and the vhosts' durable-or-not queues (exclusive ones left out), exchanges
//! (neither the default nor `amq.*` ones) and bindings (not the default exchange's), as
//! RabbitMQ's management export lists them. Import: exchanges, then queues, then bindings,
//! through the vhosts' AMQP operations (so writes go through `crate::broker::blocking`);
//! users, permissions, vhosts that do not exist and policies are skipped with a warning
//! for now (users, permissions and vhosts come with the broker's auth module). Talks to
//! `crate::broker` and the sibling `bindings` module.

use amq_protocol::types::FieldTable;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::Api;
use super::bindings::rows;
use super::error::{ApiError, ApiResult, parse_body};
use super::values::{json_to_table, table_to_json};
use super::{RABBITMQ_VERSION, exchanges::path_name};
use crate::broker::vhost::{ExchangeFlags, QueueFlags, VHost, reserved};
use crate::config::Policy;

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password))
/// with a 4-byte random salt.
fn password_hash(pass: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(pass.as_bytes());
    let salt = (h.finish() as u32).to_be_bytes();
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(pass.as_bytes())
        .finalize();
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn policy_json(p: &Policy) -> Value {
    let d = &p.definition;
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("message-ttl", d.message_ttl.map(Into::into));
    put("expires", d.expires.map(Into::into));
    put("max-length", d.max_length.map(Into::into));
    put("max-length-bytes", d.max_length_bytes.map(Into::into));
    put("overflow", d.overflow.clone().map(Into::into));
    put(
        "dead-letter-exchange",
        d.dead_letter_exchange.clone().map(Into::into),
    );
    put(
        "dead-letter-routing-key",
        d.dead_letter_routing_key.clone().map(Into::into),
    );
    put("delivery-limit", d.delivery_limit.map(Into::into));
    put(
        "alternate-exchange",
        d.alternate_exchange.clone().map(Into::into),
    );
    json!({"name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
           "definition": m, "priority": p.priority})
}

/// Adds a `vhost` field (whole-broker export) to an object.
fn in_vhost(mut v: Value, vhost: &str, with: bool) -> Value {
    if let Value::Object(m) = &mut v {
        if with {
            m.insert("vhost".into(), vhost.into());
        } else {
            m.remove("vhost");
        }
    }
    v
}

/// The topology part of an export: (policies, queues, exchanges, bindings).
fn topology(api: &Api, v: &VHost, with_vhost: bool) -> [Vec<Value>; 4] {
    let policies = api
        .broker
        .config
        .policies
        .iter()
        .map(|p| in_vhost(policy_json(p), &v.name, with_vhost))
        .collect();
    let queues = v
        .queues()
        .iter()
        .filter(|q| q.owner.is_none())
        .map(|q| {
            in_vhost(
                json!({"name": &*q.name, "durable": q.durable, "auto_delete": q.auto_delete,
                       "arguments": table_to_json(&q.arguments)}),
                &v.name,
                with_vhost,
            )
        })
        .collect();
    let exchanges = v
        .exchanges()
        .iter()
        .filter(|x| !x.name.is_empty() && !reserved(&x.name))
        .map(|x| {
            in_vhost(
                json!({"name": &*x.name, "type": x.kind.name(), "durable": x.durable,
                       "auto_delete": x.auto_delete, "internal": x.internal,
                       "arguments": table_to_json(&x.arguments)}),
                &v.name,
                with_vhost,
            )
        })
        .collect();
    let bindings = rows(v, false)
        .iter()
        .map(|r| in_vhost(r.json(&v.name, false), &v.name, with_vhost))
        .collect();
    [policies, queues, exchanges, bindings]
}

/// `GET /api/definitions`.
pub async fn export_all(State(api): State<Api>) -> Json<Value> {
    super::offload(|| export_all_now(&api))
}

fn export_all_now(api: &Api) -> Json<Value> {
    let cfg = &api.broker.config;
    let vhosts = api.broker.vhosts();
    let mut all: [Vec<Value>; 4] = Default::default();
    for v in &vhosts {
        for (into, from) in all.iter_mut().zip(topology(api, v, true)) {
            into.extend(from);
        }
    }
    let [policies, queues, exchanges, bindings] = all;
    Json(json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": [{
            "name": cfg.default_user,
            "password_hash": password_hash(&cfg.default_pass),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": ["administrator"],
            "limits": {},
        }],
        "vhosts": vhosts.iter().map(|v| json!({"name": v.name})).collect::<Vec<_>>(),
        "permissions": vhosts.iter().map(|v| json!({
            "user": cfg.default_user, "vhost": v.name,
            "configure": ".*", "write": ".*", "read": ".*",
        })).collect::<Vec<_>>(),
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }))
}

/// `GET /api/definitions/{vhost}`: that vhost's topology, without `vhost` fields.
pub async fn export_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = api.vhost(&vhost)?;
    let [policies, queues, exchanges, bindings] = super::offload(|| topology(&api, &v, false));
    Ok(Json(json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })))
}

fn str_field<'a>(o: &'a Value, k: &str) -> &'a str {
    o.get(k).and_then(Value::as_str).unwrap_or("")
}

fn bool_field(o: &Value, k: &str, default: bool) -> bool {
    super::values::bool_in(o, k, default)
}

fn args_field(o: &Value) -> ApiResult<FieldTable> {
    json_to_table(o.get("arguments").unwrap_or(&Value::Null))
        .ok_or_else(|| ApiError::bad_request("arguments must be an object"))
}

/// Imports the topology in `defs`; `only` is the vhost of a per-vhost import (whose
/// items carry no `vhost`).
fn import(api: &Api, defs: &Value, only: Option<&str>) -> ApiResult<()> {
    if !defs.is_object() {
        return Err(ApiError::bad_request("not_json"));
    }
    for key in [
        "users",
        "permissions",
        "topic_permissions",
        "vhosts",
        "policies",
        "parameters",
        "global_parameters",
    ] {
        if defs
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            tracing::warn!("definitions import: '{key}' are not imported yet; skipped");
        }
    }
    let items = |key: &str| -> Vec<Value> {
        defs.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let vhost_of = |o: &Value| -> Option<std::sync::Arc<VHost>> {
        let name = only.unwrap_or_else(|| str_field(o, "vhost"));
        let v = api.broker.vhost(name);
        if v.is_none() {
            tracing::warn!("definitions import: vhost '{name}' does not exist; its item skipped");
        }
        v
    };
    for x in items("exchanges") {
        let Some(v) = vhost_of(&x) else { continue };
        let flags = ExchangeFlags {
            durable: bool_field(&x, "durable", true),
            auto_delete: bool_field(&x, "auto_delete", false),
            internal: bool_field(&x, "internal", false),
            ..Default::default()
        };
        let kind = x.get("type").and_then(Value::as_str).unwrap_or("direct");
        v.declare_exchange(
            path_name(str_field(&x, "name")),
            kind,
            flags,
            &args_field(&x)?,
        )?;
    }
    for q in items("queues") {
        let Some(v) = vhost_of(&q) else { continue };
        let flags = QueueFlags {
            durable: bool_field(&q, "durable", true),
            auto_delete: bool_field(&q, "auto_delete", false),
            ..Default::default()
        };
        v.declare_queue(str_field(&q, "name"), flags, &args_field(&q)?, 0)?;
    }
    for b in items("bindings") {
        let Some(v) = vhost_of(&b) else { continue };
        let (src, dest, key) = (
            str_field(&b, "source"),
            str_field(&b, "destination"),
            str_field(&b, "routing_key"),
        );
        let args = args_field(&b)?;
        if str_field(&b, "destination_type") == "exchange" {
            v.bind_exchange(dest, src, key, &args)?;
        } else {
            v.bind_queue(dest, src, key, &args, 0)?;
        }
    }
    Ok(())
}

/// `POST /api/definitions`.
pub async fn import_all(State(api): State<Api>, body: Bytes) -> ApiResult<StatusCode> {
    let defs: Value = parse_body(&body)?;
    super::offload(|| import(&api, &defs, None))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/definitions/{vhost}`.
pub async fn import_vhost(
    State(api): State<Api>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    api.vhost(&vhost)?;
    let defs: Value = parse_body(&body)?;
    super::offload(|| import(&api, &defs, Some(&vhost)))?;
    Ok(StatusCode::NO_CONTENT)
}
