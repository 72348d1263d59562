//! RabbitMQ's definitions JSON: export of users, vhosts, permissions, topic permissions,
//! limits, exchanges, queues and bindings, and import of the same (a file exported from
//! RabbitMQ 3.10.8 loads, and what Warren exports loads into RabbitMQ).
//!
//! Used at boot (`load_definitions` in rabbit.toml) and by the management API. Talks to the
//! broker's vhosts and the auth registry; knows nothing of HTTP. What Warren does not
//! implement (runtime parameters other than vhost limits, global parameters, policy keys
//! such as `ha-mode`) is skipped with a warning naming it.

use amq_protocol::types::AMQPValue;
use serde_json::{Map, Value, json};

use crate::protocol::json::{json_to_table, table_to_json};

use crate::auth::{Algorithm, Password};
use crate::broker::Broker;
use crate::broker::exchange::Dest;
use crate::broker::vhost::{ExchangeFlags, QueueFlags};
use crate::store::definitions::{PolicyDef, TopicPermissionDef, VhostDef};

/// A user as RabbitMQ's definitions and `/api/users` show it.
pub fn user_json(u: &crate::auth::User) -> Value {
    let mut limits = Map::new();
    if let Some(n) = u.max_connections {
        limits.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = u.max_channels {
        limits.insert("max-channels".into(), json!(n));
    }
    json!({"name": u.name, "password_hash": u.password_hash,
           "hashing_algorithm": u.algorithm.name(), "tags": u.tags, "limits": limits})
}

/// A permission as RabbitMQ's definitions and `/api/permissions` show it.
pub fn permission_json(p: &crate::store::definitions::PermissionDef) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure,
           "write": p.write, "read": p.read})
}

/// A topic permission as RabbitMQ's definitions and `/api/topic-permissions` show it.
pub fn topic_json(t: &TopicPermissionDef) -> Value {
    json!({"user": t.user, "vhost": t.vhost, "exchange": t.exchange,
           "write": t.write, "read": t.read})
}

/// Limits as a JSON object (`{"max-queues": 10}`).
pub fn limits_object(limits: &std::collections::BTreeMap<String, i64>) -> Value {
    Value::Object(limits.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// The definitions of the whole broker (`vhost` None) or of one vhost, as RabbitMQ exports
/// them (one vhost: no users, vhosts or permissions, as RabbitMQ's per-vhost export).
pub fn export(broker: &Broker, vhost: Option<&str>) -> Value {
    let vhosts: Vec<_> = broker
        .vhosts()
        .into_iter()
        .filter(|v| vhost.is_none_or(|n| n == v.name))
        .collect();
    let mut exchanges = Vec::new();
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    let mut parameters = Vec::new();
    for v in &vhosts {
        let meta = v.meta();
        if !meta.limits.is_empty() {
            parameters.push(json!({"vhost": v.name, "component": "vhost-limits",
                                   "name": "limits", "value": limits_object(&meta.limits)}));
        }
        for q in v.queues() {
            // Exclusive queues are the connection's, not definitions (as RabbitMQ).
            if q.owner.is_some() {
                continue;
            }
            queues.push(json!({
                "name": &*q.name, "vhost": v.name, "durable": q.durable,
                "auto_delete": q.auto_delete,
                "type": q.type_name(),
                "arguments": table_to_json(&q.arguments),
            }));
        }
        for x in v.exchanges() {
            // The default and amq.* exchanges are the broker's (not exported, as RabbitMQ).
            if x.name.is_empty() || crate::broker::vhost::reserved(&x.name) {
                continue;
            }
            exchanges.push(json!({
                "name": &*x.name, "vhost": v.name, "type": x.type_name(),
                "durable": x.durable, "auto_delete": x.auto_delete, "internal": x.internal,
                "arguments": table_to_json(&x.arguments),
            }));
        }
        for x in v.exchanges() {
            if x.name.is_empty() {
                continue;
            }
            for b in x.bindings() {
                let (destination, kind) = match &b.dest {
                    Dest::Queue(q) => (q.name.to_string(), "queue"),
                    Dest::Exchange(e) => (e.to_string(), "exchange"),
                };
                bindings.push(json!({
                    "source": &*x.name, "vhost": v.name, "destination": destination,
                    "destination_type": kind, "routing_key": b.key,
                    "arguments": table_to_json(&b.args),
                }));
            }
        }
    }
    let mut out = Map::new();
    out.insert("rabbit_version".into(), json!(crate::RABBITMQ_VERSION));
    out.insert("rabbitmq_version".into(), json!(crate::RABBITMQ_VERSION));
    if vhost.is_none() {
        let users: Vec<Value> = broker.auth.users().iter().map(|u| user_json(u)).collect();
        out.insert("users".into(), Value::Array(users));
        let vh: Vec<Value> = vhosts
            .iter()
            .map(|v| {
                let m = v.meta();
                let mut metadata = json!({"description": m.description, "tags": m.tags});
                if let Some(t) = &m.default_queue_type {
                    metadata["default_queue_type"] = json!(t);
                }
                let limits: Vec<Value> = m.limits.iter().map(|(k, n)| json!([k, n])).collect();
                json!({"name": v.name, "limits": limits, "metadata": metadata})
            })
            .collect();
        out.insert("vhosts".into(), Value::Array(vh));
        let perms: Vec<Value> = broker
            .auth
            .permissions()
            .iter()
            .map(permission_json)
            .collect();
        out.insert("permissions".into(), Value::Array(perms));
        let topics: Vec<Value> = broker
            .auth
            .topic_permissions()
            .iter()
            .map(topic_json)
            .collect();
        out.insert("topic_permissions".into(), Value::Array(topics));
    }
    out.insert("parameters".into(), Value::Array(parameters));
    if vhost.is_none() {
        out.insert("global_parameters".into(), json!([]));
    }
    let policies: Vec<Value> = vhosts
        .iter()
        .flat_map(|v| v.runtime_policies())
        .map(|p| {
            json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern,
                        "apply-to": p.apply_to, "definition": p.definition,
                        "priority": p.priority})
        })
        .collect();
    out.insert("policies".into(), Value::Array(policies));
    out.insert("queues".into(), Value::Array(queues));
    out.insert("exchanges".into(), Value::Array(exchanges));
    out.insert("bindings".into(), Value::Array(bindings));
    Value::Object(out)
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string (older exports and
/// `rabbitmqadmin`).
pub fn tags_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(t)) => t
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(pub String);

fn s<'a>(o: &'a Value, k: &str) -> &'a str {
    o.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn b(o: &Value, k: &str, default: bool) -> bool {
    o.get(k).and_then(Value::as_bool).unwrap_or(default)
}

fn limit_pairs(v: Option<&Value>) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        // RabbitMQ writes vhost limits as [["max-queues", 10]], user limits as an object.
        Some(Value::Array(pairs)) => {
            for p in pairs {
                if let (Some(k), Some(n)) = (
                    p.get(0).and_then(Value::as_str),
                    p.get(1).and_then(Value::as_i64),
                ) {
                    out.insert(k.to_owned(), n);
                }
            }
        }
        Some(Value::Object(m)) => {
            for (k, n) in m {
                if let Some(n) = n.as_i64() {
                    out.insert(k.clone(), n);
                }
            }
        }
        _ => {}
    }
    out
}

/// Imports definitions: vhosts first, then users, permissions, limits, exchanges, queues,
/// bindings (so each finds what it refers to). `vhost`: import a per-vhost file into that
/// vhost (objects' own `vhost` fields are ignored). Things Warren does not implement are
/// skipped with a warning; anything Warren refuses stops the import with its reason (what
/// was imported before it stays, as in RabbitMQ).
///
/// # Errors
/// The first definition refused, named.
pub fn import(broker: &Broker, defs: &Value, vhost: Option<&str>) -> Result<(), ImportError> {
    if !defs.is_object() {
        return Err(ImportError("definitions must be a JSON object".into()));
    }
    let list = |k: &str| {
        defs.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let vh_of = |o: &Value| vhost.map_or_else(|| s(o, "vhost").to_owned(), str::to_owned);
    let fail = |what: String| move |e: std::io::Error| ImportError(format!("{what}: {e}"));
    for v in list("vhosts") {
        let meta = v.get("metadata").cloned().unwrap_or(Value::Null);
        let pick = |k: &str| meta.get(k).or_else(|| v.get(k));
        let tags = tags_of(pick("tags"));
        let name = s(&v, "name").to_owned();
        let mut def = broker.vhost(&name).map(|x| x.meta()).unwrap_or(VhostDef {
            name: name.clone(),
            description: String::new(),
            tags: Vec::new(),
            default_queue_type: None,
            limits: Default::default(),
        });
        def.description = pick("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into();
        def.tags = tags;
        def.default_queue_type = pick("default_queue_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let limits = limit_pairs(v.get("limits"));
        if !limits.is_empty() {
            def.limits = limits;
        }
        broker
            .add_vhost(def)
            .map_err(fail(format!("vhost '{name}'")))?;
    }
    if let Some(v) = vhost
        && broker.vhost(v).is_none()
    {
        return Err(ImportError(format!("vhost '{v}' does not exist")));
    }
    for u in list("users") {
        let name = s(&u, "name");
        let algorithm_name = u
            .get("hashing_algorithm")
            .and_then(Value::as_str)
            .unwrap_or("rabbit_password_hashing_sha256");
        let Some(algorithm) = Algorithm::parse(algorithm_name) else {
            return Err(ImportError(format!(
                "user '{name}': unknown hashing_algorithm '{algorithm_name}'"
            )));
        };
        let password = match (
            u.get("password_hash").and_then(Value::as_str),
            u.get("password").and_then(Value::as_str),
        ) {
            (_, Some(p)) => Password::Clear(p.into()),
            (Some(h), None) => Password::Hashed {
                hash: h.into(),
                algorithm,
            },
            (None, None) => Password::Hashed {
                hash: String::new(),
                algorithm,
            },
        };
        let tags = tags_of(u.get("tags"));
        let limits = limit_pairs(u.get("limits"));
        let get = |k: &str| limits.get(k).and_then(|&n| u64::try_from(n).ok());
        broker
            .auth
            .put_user(
                name,
                password,
                tags,
                Some((get("max-connections"), get("max-channels"))),
            )
            .map_err(fail(format!("user '{name}'")))?;
    }
    for p in list("permissions") {
        let (user, vh) = (s(&p, "user"), vh_of(&p));
        if broker.vhost(&vh).is_none() || broker.auth.user(user).is_none() {
            return Err(ImportError(format!(
                "permissions of '{user}' in vhost '{vh}': no such user or vhost"
            )));
        }
        broker
            .auth
            .set_permission(&vh, user, s(&p, "configure"), s(&p, "write"), s(&p, "read"))
            .map_err(fail(format!("permissions of '{user}' in vhost '{vh}'")))?;
    }
    for t in list("topic_permissions") {
        let def = TopicPermissionDef {
            user: s(&t, "user").into(),
            vhost: vh_of(&t),
            exchange: s(&t, "exchange").into(),
            write: s(&t, "write").into(),
            read: s(&t, "read").into(),
        };
        broker
            .auth
            .set_topic_permission(&def)
            .map_err(fail(format!(
                "topic permissions of '{}' in vhost '{}'",
                def.user, def.vhost
            )))?;
    }
    for p in list("parameters") {
        let (component, vh) = (s(&p, "component"), vh_of(&p));
        if component != "vhost-limits" {
            tracing::warn!(component, vhost = %vh, name = s(&p, "name"), "definitions: skipping a runtime parameter Warren does not implement");
            continue;
        }
        let Some(v) = broker.vhost(&vh) else { continue };
        let mut def = v.meta();
        def.limits = limit_pairs(p.get("value"));
        broker
            .add_vhost(def)
            .map_err(fail(format!("limits of vhost '{vh}'")))?;
    }
    for g in list("global_parameters") {
        tracing::warn!(
            name = s(&g, "name"),
            "definitions: skipping a global parameter"
        );
    }
    for p in list("policies") {
        let (name, vh) = (s(&p, "name").to_owned(), vh_of(&p));
        let def = PolicyDef {
            vhost: vh.clone(),
            name: name.clone(),
            pattern: s(&p, "pattern").into(),
            apply_to: p
                .get("apply-to")
                .and_then(Value::as_str)
                .unwrap_or("all")
                .into(),
            priority: p.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
            definition: p.get("definition").cloned().unwrap_or(Value::Null),
        };
        let skipped = broker
            .put_policy(def)
            .map_err(fail(format!("policy '{name}' in vhost '{vh}'")))?;
        if !skipped.is_empty() {
            tracing::warn!(policy = %name, vhost = %vh, keys = ?skipped, "definitions: policy keys Warren does not implement were left out");
        }
    }
    for x in list("exchanges") {
        let (name, vh) = (s(&x, "name"), vh_of(&x));
        let Some(v) = broker.vhost(&vh) else {
            return Err(ImportError(format!("exchange '{name}': no vhost '{vh}'")));
        };
        let flags = ExchangeFlags {
            passive: false,
            durable: b(&x, "durable", true),
            auto_delete: b(&x, "auto_delete", false),
            internal: b(&x, "internal", false),
        };
        v.declare_exchange(
            name,
            s(&x, "type"),
            flags,
            &json_to_table(x.get("arguments").unwrap_or(&Value::Null)).unwrap_or_default(),
        )
        .map_err(|e| ImportError(format!("exchange '{name}' in vhost '{vh}': {}", e.text)))?;
    }
    for q in list("queues") {
        let (name, vh) = (s(&q, "name"), vh_of(&q));
        let Some(v) = broker.vhost(&vh) else {
            return Err(ImportError(format!("queue '{name}': no vhost '{vh}'")));
        };
        let mut args =
            json_to_table(q.get("arguments").unwrap_or(&Value::Null)).unwrap_or_default();
        // `type` outside the arguments is how RabbitMQ 3.10 exports a queue's type.
        if let Some(t) = q.get("type").and_then(Value::as_str)
            && !args.contains_key("x-queue-type")
            && t != "classic"
        {
            args.insert("x-queue-type".into(), AMQPValue::LongString(t.into()));
        }
        let flags = QueueFlags {
            passive: false,
            durable: b(&q, "durable", true),
            exclusive: false,
            auto_delete: b(&q, "auto_delete", false),
        };
        v.declare_queue(name, flags, &args, 0)
            .map_err(|e| ImportError(format!("queue '{name}' in vhost '{vh}': {}", e.text)))?;
    }
    for bd in list("bindings") {
        let vh = vh_of(&bd);
        let Some(v) = broker.vhost(&vh) else {
            return Err(ImportError(format!("binding: no vhost '{vh}'")));
        };
        let (src, dst, key) = (
            s(&bd, "source"),
            s(&bd, "destination"),
            s(&bd, "routing_key"),
        );
        let args = json_to_table(bd.get("arguments").unwrap_or(&Value::Null)).unwrap_or_default();
        let r = if s(&bd, "destination_type") == "exchange" {
            v.bind_exchange(dst, src, key, &args)
        } else {
            v.bind_queue(dst, src, key, &args, 0)
        };
        r.map_err(|e| {
            ImportError(format!(
                "binding '{src}' -> '{dst}' in vhost '{vh}': {}",
                e.text
            ))
        })?;
    }
    Ok(())
}
