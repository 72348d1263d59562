//! AMQP values as the management API writes and reads them: field tables (arguments,
//! headers, client properties) to and from JSON, and message properties to and from
//! RabbitMQ's `properties` object.
//!
//! JSON numbers become `long` (signed 64-bit) and strings `longstr`, as RabbitMQ's
//! management plugin converts them; byte arrays come out as strings. Pure: no broker access.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use serde_json::{Map, Value};

pub use crate::protocol::json::{json_to_table, json_to_value, table_to_json, value_to_json};

/// Message properties as RabbitMQ's management API shows them (only those set).
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.as_str().into()));
        }
    };
    s("content_type", p.content_type());
    s("content_encoding", p.content_encoding());
    s("correlation_id", p.correlation_id());
    s("reply_to", p.reply_to());
    s("expiration", p.expiration());
    s("message_id", p.message_id());
    s("type", p.kind());
    s("user_id", p.user_id());
    s("app_id", p.app_id());
    s("cluster_id", p.cluster_id());
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), (*d).into());
    }
    if let Some(d) = p.priority() {
        m.insert("priority".into(), (*d).into());
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), (*t).into());
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    Value::Object(m)
}

/// RabbitMQ's `properties` object as message properties.
///
/// # Errors
/// The name of a property whose value has the wrong type.
pub fn json_to_properties(v: &Value) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let Some(m) = v.as_object() else {
        return if v.is_null() {
            Ok(p)
        } else {
            Err("properties".into())
        };
    };
    for (k, v) in m {
        let text = || -> Result<ShortString, String> {
            match v {
                Value::String(s) => Ok(s.as_str().into()),
                _ => Err(k.clone()),
            }
        };
        let int = || -> Result<u64, String> { v.as_u64().ok_or_else(|| k.clone()) };
        p = match k.as_str() {
            "content_type" => p.with_content_type(text()?),
            "content_encoding" => p.with_content_encoding(text()?),
            "correlation_id" => p.with_correlation_id(text()?),
            "reply_to" => p.with_reply_to(text()?),
            "expiration" => p.with_expiration(text()?),
            "message_id" => p.with_message_id(text()?),
            "type" => p.with_type(text()?),
            "user_id" => p.with_user_id(text()?),
            "app_id" => p.with_app_id(text()?),
            "cluster_id" => p.with_cluster_id(text()?),
            "delivery_mode" => p.with_delivery_mode(u8::try_from(int()?).map_err(|_| k.clone())?),
            "priority" => p.with_priority(u8::try_from(int()?).map_err(|_| k.clone())?),
            "timestamp" => p.with_timestamp(int()?),
            "headers" => p.with_headers(json_to_table(v).ok_or_else(|| k.clone())?),
            // RabbitMQ ignores properties it does not know.
            _ => p,
        };
    }
    Ok(p)
}

/// A boolean field as RabbitMQ's management plugin reads it: `true`/`false`, or the strings
/// `"true"`/`"false"` (what `rabbitmqadmin` sends).
pub fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::de::Error;
    match <Value as serde::Deserialize>::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        Value::Null => Ok(false),
        other => Err(D::Error::custom(format!("{other} is not a boolean"))),
    }
}

/// A count as RabbitMQ's management plugin reads it: a number, or a string of digits.
pub fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match <Value as serde::Deserialize>::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a count"))),
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("'{s}' is not a count"))),
        Value::Null => Ok(None),
        other => Err(D::Error::custom(format!("{other} is not a count"))),
    }
}

/// A boolean in a JSON object, strings `"true"`/`"false"` included.
pub fn bool_in(o: &Value, key: &str, default: bool) -> bool {
    match o.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" => true,
        Some(Value::String(s)) if s == "false" => false,
        _ => default,
    }
}
