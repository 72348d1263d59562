//! Typed views of `x-` arguments: reading numbers and strings out of field tables, and the
//! queue arguments RabbitMQ validates at declare time with their exact 406 texts.
//!
//! Pure functions; used by the vhost when declaring queues and by the headers exchange.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::error::{AmqpError, Result};

/// The integer inside any AMQP integer type.
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::Timestamp(n) => i64::try_from(n).ok()?,
        _ => return None,
    })
}

/// The bytes inside a string-like value (short string, long string, byte array).
pub fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// RabbitMQ's name for a value's type, used in 406 texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => "byte",
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => "short",
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) => "signedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A value as RabbitMQ prints it in equivalence errors.
pub fn display(v: &AMQPValue) -> String {
    if let Some(n) = as_int(v) {
        return n.to_string();
    }
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        v if as_bytes(v).is_some() => {
            String::from_utf8_lossy(as_bytes(v).unwrap_or_default()).into()
        }
        other => format!("{other:?}"),
    }
}

/// Equality with RabbitMQ's loose numeric rules: an integer equals the same integer of any
/// width, and a string equals a byte array with the same bytes.
pub fn loosely_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    let float = |v: &AMQPValue| match *v {
        AMQPValue::Float(f) => Some(f64::from(f)),
        AMQPValue::Double(d) => Some(d),
        _ => as_int(v).map(|n| n as f64),
    };
    if matches!(a, AMQPValue::Float(_) | AMQPValue::Double(_))
        || matches!(b, AMQPValue::Float(_) | AMQPValue::Double(_))
    {
        return matches!((float(a), float(b)), (Some(x), Some(y)) if x == y);
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    a == b
}

/// Queue arguments RabbitMQ understands and compares on redeclare. Others are stored and
/// ignored, as RabbitMQ does.
pub const QUEUE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-delivery-limit",
    "x-queue-master-locator",
    "x-queue-version",
    "x-delivery-limit-exchange",
];

fn invalid(name: &str, why: String) -> AmqpError {
    AmqpError::precondition_failed(format!("invalid arg '{name}' for queue {why}"))
}

/// The longest `x-message-ttl` and `x-expires` RabbitMQ accepts: ten years, in ms.
pub const MAX_EXPIRY_MS: i64 = 315_360_000_000;

/// The bytes of a string argument. Unlike [`as_bytes`], a byte array is not a string here:
/// RabbitMQ refuses one where it wants a name or a keyword.
fn as_string(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Validates the queue arguments RabbitMQ validates, with RabbitMQ 3.10.8's 406 texts
/// (pinned by `conformance/python/scenarios/test_interop_arguments.py`).
///
/// # Errors
/// 406 PRECONDITION_FAILED naming the argument.
pub fn validate_queue_args(args: &FieldTable, queue: &str, vhost: &str) -> Result<()> {
    let target = format!("'{queue}' in vhost '{vhost}'");
    for (k, v) in args {
        let k = k.as_str();
        let int = |min: i64, zero_ok: bool, max: i64| -> Result<()> {
            match as_int(v) {
                None => Err(invalid(
                    k,
                    format!("{target}: \"expected integer, got {}\"", type_name(v)),
                )),
                Some(n) if n < min => Err(invalid(k, format!("{target}: {{value_negative,{n}}}"))),
                Some(0) if !zero_ok => Err(invalid(k, format!("{target}: {{value_zero,0}}"))),
                Some(n) if n > max => Err(invalid(k, format!("{target}: {{value_too_large,{n}}}"))),
                Some(_) => Ok(()),
            }
        };
        let unacceptable = || {
            invalid(
                k,
                format!("{target}: {{unacceptable_type,{}}}", type_name(v)),
            )
        };
        let wrong_type = || {
            AmqpError::precondition_failed(format!(
                "invalid type '{}' for arg '{k}' in queue {target}",
                type_name(v)
            ))
        };
        // A keyword argument: a string among `allowed`, else `unknown(value)`.
        let keyword = |allowed: &[&[u8]], unknown: &dyn Fn(&str) -> String| -> Result<()> {
            match as_string(v) {
                None => Err(unacceptable()),
                Some(b) if allowed.contains(&b) => Ok(()),
                Some(b) => Err(invalid(
                    k,
                    format!("{target}: {}", unknown(&String::from_utf8_lossy(b))),
                )),
            }
        };
        match k {
            "x-message-ttl" => int(0, true, MAX_EXPIRY_MS)?,
            "x-expires" => int(0, false, MAX_EXPIRY_MS)?,
            "x-max-length" | "x-max-length-bytes" => int(0, true, i64::MAX)?,
            // compat: RabbitMQ refuses x-delivery-limit on classic queues ("... of queue type
            // rabbit_classic_queue"); Warren implements it there (README: retry limits).
            "x-delivery-limit" => int(-1, true, i64::MAX)?,
            "x-max-priority" => {
                int(0, true, i64::MAX)?;
                let n = as_int(v).unwrap_or(0);
                if n > 255 {
                    return Err(invalid(k, format!("{target}: {{max_value_exceeded,{n}}}")));
                }
            }
            "x-overflow" => keyword(
                &[b"drop-head", b"reject-publish", b"reject-publish-dlx"],
                &|_| "invalid_overflow".into(),
            )?,
            "x-queue-mode" => keyword(&[b"default", b"lazy"], &|m| {
                format!("\"unsupported queue mode '{m}'\"")
            })?,
            // Streams are validated by `queue::stream` and never get here.
            "x-queue-type" => keyword(&[b"classic", b"quorum"], &|t| {
                format!("\"unsupported queue type '{t}'\"")
            })?,
            "x-dead-letter-exchange" | "x-queue-master-locator" | "x-delivery-limit-exchange"
                if as_string(v).is_none() =>
            {
                return Err(wrong_type());
            }
            "x-dead-letter-routing-key" => {
                if as_string(v).is_none() {
                    return Err(unacceptable());
                }
                if !args.contains_key("x-dead-letter-exchange") {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid arg '{k}' for queue {target}: routing_key_but_no_dlx_defined"
                    )));
                }
            }
            "x-single-active-consumer" if !matches!(v, AMQPValue::Boolean(_)) => {
                return Err(unacceptable());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates the exchange arguments RabbitMQ validates: `alternate-exchange` must be a
/// string.
///
/// # Errors
/// 406 PRECONDITION_FAILED naming the argument and its type.
pub fn validate_exchange_args(args: &FieldTable, exchange: &str, vhost: &str) -> Result<()> {
    match args.inner().get("alternate-exchange") {
        Some(v) if as_string(v).is_none() => Err(AmqpError::precondition_failed(format!(
            "invalid type '{}' for arg 'alternate-exchange' in exchange '{exchange}' in vhost '{vhost}'",
            type_name(v)
        ))),
        _ => Ok(()),
    }
}

/// Parses a per-message `expiration` the way RabbitMQ does (Erlang's `string:to_integer`),
/// with its error texts.
///
/// # Errors
/// 406 `invalid expiration '…': no_integer` / `{leftover_string,"…"}` / `{value_negative,N}`.
pub fn parse_expiration(s: &str) -> Result<u64> {
    let fail =
        |why: String| AmqpError::precondition_failed(format!("invalid expiration '{s}': {why}"));
    let digits_from = usize::from(s.starts_with(['-', '+']));
    let digits = s[digits_from..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return Err(fail("no_integer".into()));
    }
    let end = digits_from + digits;
    if end < s.len() {
        return Err(fail(format!("{{leftover_string,\"{}\"}}", &s[end..])));
    }
    let n: i128 = s[..end].parse().map_err(|_| fail("no_integer".into()))?;
    if n < 0 {
        return Err(fail(format!("{{value_negative,{n}}}")));
    }
    u64::try_from(n).map_err(|_| fail("no_integer".into()))
}

/// The first known argument whose value differs between two declarations, for the
/// "inequivalent arg" 406.
pub fn first_difference<'a>(
    current: &'a FieldTable,
    received: &'a FieldTable,
    known: &[&'a str],
) -> Option<(&'a str, Option<&'a AMQPValue>, Option<&'a AMQPValue>)> {
    known.iter().copied().find_map(|k| {
        let (c, r) = (current.inner().get(k), received.inner().get(k));
        let same = match (c, r) {
            (None, None) => true,
            (Some(a), Some(b)) => loosely_equal(a, b),
            _ => false,
        };
        (!same).then_some((k, r, c))
    })
}

/// RabbitMQ's wording for one side of an inequivalence.
pub fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => format!("the value '{}' of type '{}'", display(v), type_name(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn integers_of_any_width_are_equal() {
        assert!(loosely_equal(
            &AMQPValue::LongInt(1),
            &AMQPValue::ShortShortUInt(1)
        ));
        assert!(loosely_equal(
            &AMQPValue::LongLongInt(1),
            &AMQPValue::Double(1.0)
        ));
        assert!(!loosely_equal(
            &AMQPValue::LongInt(1),
            &AMQPValue::Boolean(true)
        ));
        assert!(loosely_equal(
            &AMQPValue::LongString("ab".into()),
            &AMQPValue::ByteArray(b"ab".to_vec().into())
        ));
    }

    #[test]
    fn negative_ttl_and_zero_expires_are_refused() {
        let e = validate_queue_args(
            &table(&[("x-message-ttl", AMQPValue::LongInt(-5))]),
            "q",
            "/",
        )
        .unwrap_err();
        assert!(e.text.contains("{value_negative,-5}"), "{}", e.text);
        let e = validate_queue_args(&table(&[("x-expires", AMQPValue::LongInt(0))]), "q", "/")
            .unwrap_err();
        assert!(e.text.contains("{value_zero,0}"));
        let e = validate_queue_args(
            &table(&[("x-max-priority", AMQPValue::LongInt(300))]),
            "q",
            "/",
        )
        .unwrap_err();
        assert!(e.text.contains("{max_value_exceeded,300}"));
    }

    #[test]
    fn expiration_parses_like_rabbitmq() {
        assert_eq!(parse_expiration("1500").unwrap(), 1500);
        assert!(
            parse_expiration("abc")
                .unwrap_err()
                .text
                .ends_with("no_integer")
        );
        assert!(
            parse_expiration(" 5")
                .unwrap_err()
                .text
                .ends_with("no_integer")
        );
        assert!(
            parse_expiration("1.5")
                .unwrap_err()
                .text
                .ends_with("{leftover_string,\".5\"}")
        );
        assert!(
            parse_expiration("-1")
                .unwrap_err()
                .text
                .ends_with("{value_negative,-1}")
        );
    }

    #[test]
    fn dl_routing_key_needs_a_dlx() {
        let e = validate_queue_args(
            &table(&[(
                "x-dead-letter-routing-key",
                AMQPValue::LongString("k".into()),
            )]),
            "q",
            "/",
        )
        .unwrap_err();
        assert!(e.text.contains("routing_key_but_no_dlx_defined"));
    }

    #[test]
    fn unknown_args_do_not_count_as_differences() {
        let a = table(&[("x-foo", AMQPValue::LongInt(1))]);
        let b = table(&[("x-foo", AMQPValue::LongInt(2))]);
        assert!(first_difference(&a, &b, QUEUE_ARGS).is_none());
        let c = table(&[("x-max-length", AMQPValue::LongInt(2))]);
        assert_eq!(
            first_difference(&a, &c, QUEUE_ARGS).unwrap().0,
            "x-max-length"
        );
    }
}
