//! The headers exchange's matching rule: `x-match` = `all` / `any` (binding keys starting
//! with `x-` ignored) or `all-with-x` / `any-with-x` (not ignored), a void binding value
//! matching any value, and RabbitMQ's loose equality between numeric and string types.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::broker::args::{as_bytes, loosely_equal};
use crate::error::{AmqpError, Result};

/// How a headers binding combines its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XMatch {
    /// Every non-`x-` key must match.
    All,
    /// At least one non-`x-` key must match.
    Any,
    /// Every key must match, `x-` keys included.
    AllWithX,
    /// At least one key must match, `x-` keys included.
    AnyWithX,
}

impl XMatch {
    /// Reads `x-match` from binding arguments (default `all`).
    ///
    /// # Errors
    /// 406 for any other value.
    pub fn from_args(args: &FieldTable) -> Result<Self> {
        let Some(v) = args.inner().get("x-match") else {
            return Ok(Self::All);
        };
        Ok(match as_bytes(v) {
            Some(b"all") => Self::All,
            Some(b"any") => Self::Any,
            Some(b"all-with-x") => Self::AllWithX,
            Some(b"any-with-x") => Self::AnyWithX,
            _ => {
                return Err(AmqpError::precondition_failed(format!(
                    "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                    crate::broker::args::display(v)
                )));
            }
        })
    }
}

/// Whether a message with `headers` matches a binding with `args`.
pub fn matches(args: &FieldTable, mode: XMatch, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let all = matches!(mode, XMatch::All | XMatch::AllWithX);
    let mut considered = args
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let one = |(k, v): (&amq_protocol::types::ShortString, &AMQPValue)| {
        let got = headers.and_then(|h| h.inner().get(k.as_str()));
        match (v, got) {
            (_, None) => false,
            (AMQPValue::Void, Some(_)) => true,
            (want, Some(got)) => loosely_equal(want, got),
        }
    };
    if all {
        considered.all(one)
    } else {
        considered.any(one)
    }
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
    fn all_needs_every_key_any_needs_one() {
        let b = t(&[
            ("a", AMQPValue::LongInt(1)),
            ("b", AMQPValue::LongString("x".into())),
        ]);
        let both = t(&[
            ("a", AMQPValue::ShortShortUInt(1)),
            ("b", AMQPValue::LongString("x".into())),
        ]);
        let one = t(&[("a", AMQPValue::LongInt(1))]);
        assert!(matches(&b, XMatch::All, Some(&both)));
        assert!(!matches(&b, XMatch::All, Some(&one)));
        assert!(matches(&b, XMatch::Any, Some(&one)));
        assert!(!matches(&b, XMatch::Any, None));
    }

    #[test]
    fn x_keys_count_only_with_x() {
        let b = t(&[("x-k", AMQPValue::LongInt(1)), ("a", AMQPValue::LongInt(1))]);
        let h = t(&[("a", AMQPValue::LongInt(1))]);
        assert!(matches(&b, XMatch::All, Some(&h)));
        assert!(!matches(&b, XMatch::AllWithX, Some(&h)));
    }

    #[test]
    fn void_matches_any_value_but_not_absence() {
        let b = t(&[("a", AMQPValue::Void)]);
        assert!(matches(
            &b,
            XMatch::All,
            Some(&t(&[("a", AMQPValue::Boolean(true))]))
        ));
        assert!(!matches(&b, XMatch::All, Some(&t(&[]))));
    }

    #[test]
    fn bad_x_match_is_refused() {
        let b = t(&[("x-match", AMQPValue::LongString("some".into()))]);
        assert_eq!(XMatch::from_args(&b).unwrap_err().code, 406);
    }
}
