//! What a stream accepts, as RabbitMQ 3.10.8 answers it over AMQP 0-9-1
//! (`../shared/reference/streams.md` §2 and §5): the declare-time flags and arguments, their
//! equivalence on redeclare, the options the log is opened with, and the `x-stream-offset`
//! consume argument. Plain functions over field tables; talks to nothing.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::broker::args::{as_bytes, as_int, describe, display, loosely_equal, type_name};
use crate::config::PolicyDefinition;
use crate::error::{AmqpError, Result};
use crate::store::stream::{DEFAULT_MAX_SEGMENT_BYTES, StreamOptions};

/// The queue arguments a stream knows: the only ones compared on redeclare.
pub const STREAM_ARGS: &[&str] = &[
    "x-queue-type",
    "x-max-length-bytes",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Queue arguments of the other queue types, which a stream refuses.
const FOREIGN_ARGS: &[&str] = &[
    "x-max-priority",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-message-ttl",
    "x-max-length",
    "x-overflow",
    "x-expires",
    "x-single-active-consumer",
    "x-queue-mode",
    "x-delivery-limit",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-queue-version",
    "x-quorum-initial-group-size",
    "x-queue-master-locator",
    "x-delivery-limit-exchange",
];

/// RabbitMQ's largest `x-stream-max-segment-size-bytes`.
const MAX_SEGMENT_BYTES: i64 = 3_000_000_000;

/// Whether a declare asks for a stream.
pub fn is_stream(args: &FieldTable) -> bool {
    args.inner().get("x-queue-type").and_then(as_bytes) == Some(b"stream")
}

fn resource(queue: &str, vhost: &str) -> String {
    format!("'{queue}' in vhost '{vhost}'")
}

fn invalid(key: &str, queue: &str, vhost: &str, why: impl std::fmt::Display) -> AmqpError {
    AmqpError::precondition_failed(format!(
        "invalid arg '{key}' for queue {}: {why}",
        resource(queue, vhost)
    ))
}

/// The flags a stream must have, checked in RabbitMQ's order (auto-delete, exclusive,
/// durable). Server-named streams are refused by the channel, which sees the empty name.
///
/// # Errors
/// 406 `invalid property '…'`.
pub fn check_flags(
    queue: &str,
    vhost: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> Result<()> {
    let bad = |p: &str| {
        Err(AmqpError::precondition_failed(format!(
            "invalid property '{p}' for queue {}",
            resource(queue, vhost)
        )))
    };
    if auto_delete {
        return bad("auto-delete");
    }
    if exclusive {
        return bad("exclusive-owner");
    }
    if !durable {
        return bad("non-durable");
    }
    Ok(())
}

/// Validates a stream's arguments: its own first (type and value), then those that belong
/// to other queue types. Unknown arguments are accepted and ignored, as in RabbitMQ.
///
/// # Errors
/// 406 with RabbitMQ's reason terms.
pub fn validate(args: &FieldTable, queue: &str, vhost: &str) -> Result<()> {
    for (k, v) in args {
        let k = k.as_str();
        let int = |min: i64, zero_ok: bool| -> Result<i64> {
            match as_int(v) {
                None => Err(invalid(
                    k,
                    queue,
                    vhost,
                    format!("\"expected integer, got {}\"", type_name(v)),
                )),
                Some(n) if n < min => {
                    Err(invalid(k, queue, vhost, format!("{{value_negative,{n}}}")))
                }
                Some(0) if !zero_ok => Err(invalid(k, queue, vhost, "{value_zero,0}")),
                Some(n) => Ok(n),
            }
        };
        match k {
            "x-max-length-bytes" => {
                int(0, true)?;
            }
            "x-stream-max-segment-size-bytes" if int(0, true)? > MAX_SEGMENT_BYTES => {
                return Err(AmqpError::precondition_failed(
                    "Exceeded max value for x-stream-max-segment-size-bytes",
                ));
            }
            "x-initial-cluster-size" => {
                int(0, false)?;
            }
            "x-max-age" => {
                max_age_ms(v).map_err(|why| invalid(k, queue, vhost, why))?;
            }
            "x-queue-leader-locator" => match v {
                AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
                    let ok: &[&[u8]] = &[b"client-local", b"balanced", b"random", b"least-leaders"];
                    if !as_bytes(v).is_some_and(|b| ok.contains(&b)) {
                        return Err(invalid(k, queue, vhost, "invalid_queue_locator_arg"));
                    }
                }
                _ => {
                    return Err(invalid(
                        k,
                        queue,
                        vhost,
                        format!("{{unacceptable_type,{}}}", type_name(v)),
                    ));
                }
            },
            _ => {}
        }
    }
    if let Some(k) = args
        .inner()
        .keys()
        .find(|k| FOREIGN_ARGS.contains(&k.as_str()))
    {
        return Err(AmqpError::precondition_failed(format!(
            "invalid arg '{k}' for queue {} of queue type rabbit_stream_queue",
            resource(queue, vhost)
        )));
    }
    Ok(())
}

/// The first stream argument whose value differs from the stream's, as RabbitMQ words it
/// for streams: `received '2h' but current is '1h'` when both are set, the usual typed
/// wording when one side is missing.
pub fn inequivalence(
    current: &FieldTable,
    received: &FieldTable,
) -> Option<(&'static str, String, String)> {
    STREAM_ARGS.iter().copied().find_map(|k| {
        let (c, r) = (current.inner().get(k), received.inner().get(k));
        match (c, r) {
            (None, None) => None,
            (Some(a), Some(b)) if loosely_equal(a, b) => None,
            (Some(a), Some(b)) => {
                Some((k, format!("'{}'", display(b)), format!("'{}'", display(a))))
            }
            _ => Some((k, describe(r), describe(c))),
        }
    })
}

/// `<N><unit>` with N > 0 and unit one of `Y M D h m s` (case-sensitive), in ms; `None`
/// for anything else.
pub(super) fn parse_interval(s: &[u8]) -> Option<u64> {
    let (&unit, digits) = s.split_last()?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let secs: u64 = match unit {
        b'Y' => 365 * 86_400,
        b'M' => 30 * 86_400,
        b'D' => 86_400,
        b'h' => 3_600,
        b'm' => 60,
        b's' => 1,
        _ => return None,
    };
    (n > 0).then(|| n.saturating_mul(secs).saturating_mul(1000))
}

/// `x-max-age` in ms, or RabbitMQ's reason term.
fn max_age_ms(v: &AMQPValue) -> std::result::Result<u64, String> {
    match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            // compat: RabbitMQ 3.10.8 crashes (connection 541) on a value with no leading
            // digit (`bad`, `""`); it is as invalid as `7d`, and answered the same way.
            parse_interval(as_bytes(v).unwrap_or_default()).ok_or_else(|| "invalid_max_age".into())
        }
        _ => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

/// How the log of a stream declared with `args` is kept. A policy's `max-length-bytes`
/// takes precedence over the argument, as in RabbitMQ.
pub fn options(args: &FieldTable, policy: Option<&PolicyDefinition>) -> StreamOptions {
    let get = |k: &str| args.inner().get(k);
    let unsigned = |k: &str| get(k).and_then(as_int).and_then(|n| u64::try_from(n).ok());
    let policy_bytes = policy.and_then(|d| d.max_length_bytes);
    StreamOptions {
        max_segment_bytes: unsigned("x-stream-max-segment-size-bytes")
            .unwrap_or(DEFAULT_MAX_SEGMENT_BYTES),
        max_length_bytes: policy_bytes.or(unsigned("x-max-length-bytes")),
        max_age_ms: get("x-max-age").and_then(|v| max_age_ms(v).ok()),
    }
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record kept.
    First,
    /// The start of the newest chunk.
    Last,
    /// Only what is written after the consumer attached (the default).
    Next,
    /// That offset (waiting for it when it is past the end).
    Offset(u64),
    /// The first record at or after this time, ms since the epoch.
    Time(u64),
}

/// Parses `x-stream-offset` (absent means `next`).
///
/// # Errors
/// 406 `invalid arg 'x-stream-offset' for queue …: {invalid_stream_offset_arg,{Type,Value}}`.
pub fn start_at(args: &FieldTable, queue: &str, vhost: &str, now_ms: u64) -> Result<StartAt> {
    let Some(v) = args.inner().get("x-stream-offset") else {
        return Ok(StartAt::Next);
    };
    let refuse = || {
        let shown = match as_bytes(v) {
            Some(b) => format!("<<\"{}\">>", String::from_utf8_lossy(b)),
            None => display(v),
        };
        invalid(
            "x-stream-offset",
            queue,
            vhost,
            format!("{{invalid_stream_offset_arg,{{{},{shown}}}}}", type_name(v)),
        )
    };
    if let AMQPValue::Timestamp(secs) = v {
        return Ok(StartAt::Time(secs.saturating_mul(1000)));
    }
    if let Some(n) = as_int(v) {
        // osiris clamps a negative offset to the start of the log.
        return Ok(u64::try_from(n).map_or(StartAt::First, StartAt::Offset));
    }
    match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            let b = as_bytes(v).unwrap_or_default();
            match b {
                b"first" => Ok(StartAt::First),
                b"last" => Ok(StartAt::Last),
                b"next" => Ok(StartAt::Next),
                // compat: RabbitMQ 3.10.8 crashes (connection 541) on a string with no
                // leading digit (`bogus`, `""`, `FIRST`); Warren refuses it as it refuses
                // `10x`, with a channel 406.
                _ => parse_interval(b)
                    .map(|ms| StartAt::Time(now_ms.saturating_sub(ms)))
                    .ok_or_else(refuse),
            }
        }
        // compat: bool, double, table...: a 541 crash on RabbitMQ 3.10.8; a 406 here.
        _ => Err(refuse()),
    }
}

/// A consumer's stream filter (RabbitMQ 3.13+): the `x-stream-filter` values it wants,
/// and whether it also wants messages published without a filter value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Filter {
    /// Wanted `x-stream-filter-value`s.
    pub values: Vec<Vec<u8>>,
    /// `x-stream-match-unfiltered` (default false).
    pub match_unfiltered: bool,
}

/// Parses `x-stream-filter` (a string or an array of strings) and
/// `x-stream-match-unfiltered` (a bool); `None` without a filter.
///
/// # Errors
/// 406 `invalid arg 'x-stream-filter' …` for other types.
pub(super) fn filter(args: &FieldTable, queue: &str, vhost: &str) -> Result<Option<Filter>> {
    let Some(v) = args.inner().get("x-stream-filter") else {
        return Ok(None);
    };
    let bad = |k: &str, v: &AMQPValue| {
        invalid(
            k,
            queue,
            vhost,
            format!("{{unacceptable_type,{}}}", type_name(v)),
        )
    };
    let string = |v: &AMQPValue| match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => as_bytes(v).map(<[u8]>::to_vec),
        _ => None,
    };
    let values = match v {
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|x| string(x).ok_or_else(|| bad("x-stream-filter", x)))
            .collect::<Result<Vec<_>>>()?,
        other => vec![string(other).ok_or_else(|| bad("x-stream-filter", other))?],
    };
    let match_unfiltered = match args.inner().get("x-stream-match-unfiltered") {
        None => false,
        Some(AMQPValue::Boolean(b)) => *b,
        Some(other) => return Err(bad("x-stream-match-unfiltered", other)),
    };
    Ok(Some(Filter {
        values,
        match_unfiltered,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn intervals_follow_rabbitmq_units() {
        assert_eq!(parse_interval(b"30s"), Some(30_000));
        assert_eq!(parse_interval(b"1h"), Some(3_600_000));
        assert_eq!(parse_interval(b"7D"), Some(7 * 86_400_000));
        assert_eq!(parse_interval(b"2M"), Some(60 * 86_400_000));
        for bad in [&b"0s"[..], b"10", b"7d", b"1w", b"1.5h", b"", b"bad", b"s"] {
            assert_eq!(parse_interval(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offsets_parse_as_rabbitmq_reads_them() {
        let at = |v: AMQPValue| start_at(&t(&[("x-stream-offset", v)]), "q", "/", 10_000);
        assert_eq!(
            at(AMQPValue::LongString("first".into())).unwrap(),
            StartAt::First
        );
        assert_eq!(at(AMQPValue::LongLongInt(-1)).unwrap(), StartAt::First);
        assert_eq!(at(AMQPValue::ShortShortInt(3)).unwrap(), StartAt::Offset(3));
        assert_eq!(at(AMQPValue::Timestamp(5)).unwrap(), StartAt::Time(5_000));
        assert_eq!(
            at(AMQPValue::LongString("1s".into())).unwrap(),
            StartAt::Time(9_000)
        );
        let e = at(AMQPValue::LongString("10x".into())).unwrap_err();
        assert_eq!(e.code, 406);
        assert!(
            e.text
                .ends_with("{invalid_stream_offset_arg,{longstr,<<\"10x\">>}}"),
            "{}",
            e.text
        );
        assert_eq!(at(AMQPValue::Boolean(true)).unwrap_err().code, 406);
        assert_eq!(
            start_at(&FieldTable::default(), "q", "/", 0).unwrap(),
            StartAt::Next
        );
    }

    #[test]
    fn own_arguments_are_checked_before_foreign_ones() {
        let e = validate(
            &t(&[
                ("x-max-length", AMQPValue::LongInt(5)),
                ("x-max-length-bytes", AMQPValue::LongInt(-1)),
            ]),
            "q",
            "/",
        )
        .unwrap_err();
        assert!(e.text.ends_with("{value_negative,-1}"), "{}", e.text);
        let e = validate(&t(&[("x-max-length", AMQPValue::LongInt(5))]), "q", "/").unwrap_err();
        assert!(
            e.text.ends_with("of queue type rabbit_stream_queue"),
            "{}",
            e.text
        );
    }
}
