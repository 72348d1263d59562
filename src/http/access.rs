//! `/api/users`, `/api/permissions`, `/api/topic-permissions`, `/api/user-limits`,
//! `/api/vhost-limits`, `/api/policies`, and creating and deleting vhosts (`PUT`/`DELETE
//! /api/vhosts/{name}`): the multi-tenancy half of RabbitMQ's management API.
//!
//! Reads and writes go to `crate::auth::Registry` (users, permissions) and the broker's
//! vhost operations; every change is in the definitions store before the answer. Changing
//! users, vhosts and permissions needs the `administrator` tag, policies `policymaker`, as
//! in RabbitMQ. Created answers 201, updated and deleted 204, missing 404.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::auth::Principal;
use super::error::{ApiError, ApiResult, parse_body};
use super::pagination::{ListQuery, shape};
use crate::auth::{Algorithm, Password};
use crate::broker::definitions_json::{
    limits_object, permission_json, tags_of, topic_json, user_json,
};
use crate::store::definitions::{PolicyDef, TopicPermissionDef, VhostDef};

fn io_error(e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::InvalidInput => ApiError::bad_request(e.to_string()),
        std::io::ErrorKind::NotFound => ApiError::not_found(),
        _ => ApiError::internal(e.to_string()),
    }
}

fn created(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// `GET /api/users`.
pub async fn users(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let items = api
        .broker
        .auth
        .users()
        .iter()
        .map(|u| user_json(u))
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// `GET /api/users/{name}`.
pub async fn user(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let u = api
        .broker
        .auth
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&u)))
}

/// `PUT /api/users/{name}`: `password` or `password_hash` (+ `hashing_algorithm`), `tags`.
pub async fn put_user(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    let b: Value = parse_body(&body)?;
    let algorithm = match b.get("hashing_algorithm").and_then(Value::as_str) {
        None => Algorithm::Sha256,
        Some(a) => Algorithm::parse(a)
            .ok_or_else(|| ApiError::bad_request(format!("unknown hashing algorithm {a}")))?,
    };
    let password = match (
        b.get("password").and_then(Value::as_str),
        b.get("password_hash").and_then(Value::as_str),
    ) {
        (Some(p), _) => Password::Clear(p.into()),
        (None, Some(h)) => Password::Hashed {
            hash: h.into(),
            algorithm,
        },
        (None, None) if api.broker.auth.user(&name).is_some() => Password::Keep,
        // RabbitMQ wants one of the two for a new user.
        (None, None) => {
            return Err(ApiError::bad_request(
                "Mandatory fields missing: password or password_hash",
            ));
        }
    };
    let new = api
        .broker
        .auth
        .put_user(&name, password, tags_of(b.get("tags")), None)
        .map_err(io_error)?;
    Ok(created(new))
}

/// `DELETE /api/users/{name}`: the user's connections are closed too, as RabbitMQ does.
pub async fn delete_user(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    if !api.broker.auth.delete_user(&name).map_err(io_error)? {
        return Err(ApiError::not_found());
    }
    api.broker
        .connections
        .close_user(&name, &format!("user '{name}' is deleted"));
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/permissions`.
pub async fn permissions(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let items = api
        .broker
        .auth
        .permissions()
        .iter()
        .map(permission_json)
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// `GET /api/users/{name}/permissions`.
pub async fn user_permissions(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    api.broker
        .auth
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    let items: Vec<Value> = api
        .broker
        .auth
        .permissions()
        .iter()
        .filter(|p| p.user == name)
        .map(permission_json)
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `GET /api/vhosts/{vhost}/permissions`.
pub async fn vhost_permissions(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    api.vhost(&vhost)?;
    let items: Vec<Value> = api
        .broker
        .auth
        .permissions()
        .iter()
        .filter(|p| p.vhost == vhost)
        .map(permission_json)
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `GET /api/permissions/{vhost}/{user}`.
pub async fn permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    api.broker
        .auth
        .permissions()
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .map(|p| Json(permission_json(p)))
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
struct PermissionBody {
    #[serde(default)]
    configure: String,
    #[serde(default)]
    write: String,
    #[serde(default)]
    read: String,
}

/// `PUT /api/permissions/{vhost}/{user}`: `configure`, `write`, `read` regexes.
pub async fn put_permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    api.vhost(&vhost)?;
    if api.broker.auth.user(&user).is_none() {
        return Err(ApiError::bad_request(format!("no_such_user {user}")));
    }
    let b: PermissionBody = parse_body(&body)?;
    let new = !api.broker.auth.has_access(&vhost, &user);
    api.broker
        .auth
        .set_permission(&vhost, &user, &b.configure, &b.write, &b.read)
        .map_err(io_error)?;
    Ok(created(new))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub async fn delete_permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    if !api
        .broker
        .auth
        .clear_permission(&vhost, &user)
        .map_err(io_error)?
    {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/topic-permissions`.
pub async fn topic_permissions(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let items = api
        .broker
        .auth
        .topic_permissions()
        .iter()
        .map(topic_json)
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// `GET /api/topic-permissions/{vhost}/{user}`.
pub async fn topic_permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let items: Vec<Value> = api
        .broker
        .auth
        .topic_permissions()
        .iter()
        .filter(|t| t.vhost == vhost && t.user == user)
        .map(topic_json)
        .collect();
    if items.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(Value::Array(items)))
}

#[derive(Deserialize)]
struct TopicBody {
    exchange: String,
    #[serde(default)]
    write: String,
    #[serde(default)]
    read: String,
}

/// `PUT /api/topic-permissions/{vhost}/{user}`: `exchange`, `write`, `read`.
pub async fn put_topic_permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    api.vhost(&vhost)?;
    if api.broker.auth.user(&user).is_none() {
        return Err(ApiError::bad_request(format!("no_such_user {user}")));
    }
    let b: TopicBody = parse_body(&body)?;
    let new = !api
        .broker
        .auth
        .topic_permissions()
        .iter()
        .any(|t| t.vhost == vhost && t.user == user && t.exchange == b.exchange);
    api.broker
        .auth
        .set_topic_permission(&TopicPermissionDef {
            user,
            vhost,
            exchange: b.exchange,
            write: b.write,
            read: b.read,
        })
        .map_err(io_error)?;
    Ok(created(new))
}

/// `DELETE /api/topic-permissions/{vhost}/{user}` (all exchanges).
pub async fn delete_topic_permission(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    api.broker
        .auth
        .clear_topic_permissions(&vhost, &user, None)
        .map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/vhosts/{name}`: `description`, `tags`, `default_queue_type`.
pub async fn put_vhost(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    let b: Value = parse_body(&body)?;
    let mut def = api
        .broker
        .vhost(&name)
        .map(|v| v.meta())
        .unwrap_or(VhostDef {
            name: name.clone(),
            description: String::new(),
            tags: Vec::new(),
            default_queue_type: None,
            limits: Default::default(),
        });
    if let Some(d) = b.get("description").and_then(Value::as_str) {
        def.description = d.into();
    }
    if b.get("tags").is_some() {
        def.tags = tags_of(b.get("tags"));
    }
    if let Some(t) = b.get("default_queue_type").and_then(Value::as_str) {
        def.default_queue_type = Some(t.into());
    }
    let new = api.broker.add_vhost(def).map_err(io_error)?;
    if new {
        // RabbitMQ gives the creating user full permissions in a vhost it creates.
        api.broker
            .auth
            .set_permission(&name, &who.name, ".*", ".*", ".*")
            .map_err(io_error)?;
    }
    Ok(created(new))
}

/// `DELETE /api/vhosts/{name}`: closes its connections with 320, then removes it and
/// everything in it.
pub async fn delete_vhost(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    if api.broker.vhost(&name).is_none() {
        return Err(ApiError::not_found());
    }
    api.broker
        .connections
        .close_vhost(&name, &format!("vhost '{name}' is deleted"));
    api.broker.delete_vhost(&name).map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/vhost-limits` and `/api/vhost-limits/{vhost}`.
pub async fn vhost_limits(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    vhost: Option<Path<String>>,
) -> ApiResult<Json<Value>> {
    who.require("monitoring")?;
    let items: Vec<Value> = api
        .vhosts(vhost.as_ref().map(|p| p.0.as_str()))?
        .iter()
        .map(|v| v.meta())
        .filter(|m| !m.limits.is_empty())
        .map(|m| json!({"vhost": m.name, "value": limits_object(&m.limits)}))
        .collect();
    Ok(Json(Value::Array(items)))
}

#[derive(Deserialize)]
struct LimitBody {
    value: i64,
}

/// `PUT /api/vhost-limits/{vhost}/{name}` (`max-connections`, `max-queues`): `{"value": N}`
/// (negative: unlimited).
pub async fn put_vhost_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, limit)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    if !matches!(limit.as_str(), "max-connections" | "max-queues") {
        return Err(ApiError::bad_request(format!(
            "unknown vhost limit {limit}"
        )));
    }
    let b: LimitBody = parse_body(&body)?;
    let mut def = api.vhost(&vhost)?.meta();
    def.limits.insert(limit, b.value);
    api.broker.add_vhost(def).map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/vhost-limits/{vhost}/{name}`.
pub async fn delete_vhost_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, limit)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    let mut def = api.vhost(&vhost)?.meta();
    def.limits.remove(&limit);
    api.broker.add_vhost(def).map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/user-limits` and `/api/user-limits/{user}`.
pub async fn user_limits(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    user: Option<Path<String>>,
) -> ApiResult<Json<Value>> {
    who.require("administrator")?;
    let items: Vec<Value> = api
        .broker
        .auth
        .users()
        .iter()
        .filter(|u| user.as_ref().is_none_or(|p| p.0 == u.name))
        .filter(|u| u.max_connections.is_some() || u.max_channels.is_some())
        .map(|u| json!({"user": u.name, "value": user_json(u)["limits"]}))
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `PUT /api/user-limits/{user}/{name}` (`max-connections`, `max-channels`).
pub async fn put_user_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((user, limit)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    let b: LimitBody = parse_body(&body)?;
    let u = api
        .broker
        .auth
        .user(&user)
        .ok_or_else(ApiError::not_found)?;
    let value = u64::try_from(b.value).ok();
    let (conns, chans) = match limit.as_str() {
        "max-connections" => (value, u.max_channels),
        "max-channels" => (u.max_connections, value),
        _ => return Err(ApiError::bad_request(format!("unknown user limit {limit}"))),
    };
    api.broker
        .auth
        .set_user_limits(&user, conns, chans)
        .map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/user-limits/{user}/{name}`.
pub async fn delete_user_limit(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((user, limit)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    who.require("administrator")?;
    let u = api
        .broker
        .auth
        .user(&user)
        .ok_or_else(ApiError::not_found)?;
    let (conns, chans) = match limit.as_str() {
        "max-connections" => (None, u.max_channels),
        "max-channels" => (u.max_connections, None),
        _ => return Err(ApiError::not_found()),
    };
    api.broker
        .auth
        .set_user_limits(&user, conns, chans)
        .map_err(io_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn policy_json(p: &PolicyDef) -> Value {
    json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
           "definition": p.definition, "priority": p.priority})
}

/// `GET /api/policies` and `/api/policies/{vhost}`.
pub async fn policies(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    vhost: Option<Path<String>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    who.require("management")?;
    let items = api
        .vhosts(vhost.as_ref().map(|p| p.0.as_str()))?
        .iter()
        .flat_map(|v| v.runtime_policies())
        .map(|p| policy_json(&p))
        .collect();
    Ok(Json(shape(items, &q)?))
}

/// `GET /api/policies/{vhost}/{name}`.
pub async fn policy(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    who.require("management")?;
    api.vhost(&vhost)?
        .runtime_policies()
        .iter()
        .find(|p| p.name == name)
        .map(|p| Json(policy_json(p)))
        .ok_or_else(ApiError::not_found)
}

/// `PUT /api/policies/{vhost}/{name}`: `pattern`, `definition`, `priority`, `apply-to`.
pub async fn put_policy(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    who.require("policymaker")?;
    let v = api.vhost(&vhost)?;
    let b: Value = parse_body(&body)?;
    let new = !v.runtime_policies().iter().any(|p| p.name == name);
    let priority = match b.get("priority") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    };
    let def = PolicyDef {
        vhost,
        name,
        pattern: b
            .get("pattern")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        apply_to: b
            .get("apply-to")
            .and_then(Value::as_str)
            .unwrap_or("all")
            .into(),
        priority: priority as i32,
        definition: b.get("definition").cloned().unwrap_or(json!({})),
    };
    api.broker.put_policy(def).map_err(io_error)?;
    Ok(created(new))
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub async fn delete_policy(
    State(api): State<Api>,
    Extension(who): Extension<Principal>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    who.require("policymaker")?;
    if !api.broker.delete_policy(&vhost, &name).map_err(io_error)? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
