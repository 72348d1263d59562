//! The one error type that can reach the wire.
//!
//! Every protocol handler returns `Result<_, AmqpError>`. The connection task is the only
//! place that turns an `AmqpError` into `channel.close` or `connection.close`; the scope is
//! derived from the reply code (RabbitMQ's `map_exception/2`), never chosen by a handler.
//! Talks to nothing but amq-protocol's reply-code table.

use std::fmt;

use amq_protocol::protocol::AMQPErrorKind;

/// Whether an error closes the channel or the whole connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `channel.close`: soft codes on a channel other than 0.
    Channel,
    /// `connection.close`: hard codes, or anything on channel 0.
    Connection,
}

/// An AMQP exception: reply code, `NAME - detail` text and the failing method's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code (e.g. 404).
    pub code: u16,
    /// The full reply text, `NAME - detail`, at most 255 bytes.
    pub text: String,
    /// Class id of the failing method, 0 when unknown; filled in by the dispatcher.
    pub class_id: u16,
    /// Method id of the failing method, 0 when unknown.
    pub method_id: u16,
}

/// Crate-wide result for anything that can fail with a reply code.
pub type Result<T, E = AmqpError> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($name:ident => $code:expr, $label:expr;)*) => {
        impl AmqpError {
            $(
                #[doc = concat!("A `", $label, "` (", stringify!($code), ") error with the given detail.")]
                pub fn $name(detail: impl fmt::Display) -> Self {
                    Self::new($code, $label, detail)
                }
            )*
        }
    };
}

constructors! {
    content_too_large => 311, "CONTENT_TOO_LARGE";
    access_refused => 403, "ACCESS_REFUSED";
    not_found => 404, "NOT_FOUND";
    resource_locked => 405, "RESOURCE_LOCKED";
    precondition_failed => 406, "PRECONDITION_FAILED";
    connection_forced => 320, "CONNECTION_FORCED";
    frame_error => 501, "FRAME_ERROR";
    syntax_error => 502, "SYNTAX_ERROR";
    command_invalid => 503, "COMMAND_INVALID";
    channel_error => 504, "CHANNEL_ERROR";
    unexpected_frame => 505, "UNEXPECTED_FRAME";
    resource_error => 506, "RESOURCE_ERROR";
    not_allowed => 530, "NOT_ALLOWED";
    not_implemented => 540, "NOT_IMPLEMENTED";
    internal_error => 541, "INTERNAL_ERROR";
}

impl AmqpError {
    fn new(code: u16, label: &str, detail: impl fmt::Display) -> Self {
        let mut text = format!("{label} - {detail}");
        truncate_shortstr(&mut text);
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the failing method, unless a handler already named a more precise one.
    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Whether this error closes the channel or the connection when raised on `channel`.
    pub fn scope(&self, channel: u16) -> Scope {
        match AMQPErrorKind::from_id(self.code) {
            Some(AMQPErrorKind::Soft(_)) if channel != 0 => Scope::Channel,
            _ => Scope::Connection,
        }
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for AmqpError {}

/// Cuts `s` to at most 255 bytes on a char boundary, so it fits a shortstr.
pub fn truncate_shortstr(s: &mut String) {
    if s.len() > 255 {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_codes_close_the_channel_hard_codes_the_connection() {
        assert_eq!(AmqpError::not_found("x").scope(1), Scope::Channel);
        assert_eq!(AmqpError::precondition_failed("x").scope(1), Scope::Channel);
        assert_eq!(AmqpError::resource_locked("x").scope(7), Scope::Channel);
        assert_eq!(AmqpError::access_refused("x").scope(1), Scope::Channel);
        assert_eq!(AmqpError::not_allowed("x").scope(1), Scope::Connection);
        assert_eq!(AmqpError::not_implemented("x").scope(1), Scope::Connection);
        assert_eq!(AmqpError::frame_error("x").scope(1), Scope::Connection);
        assert_eq!(AmqpError::command_invalid("x").scope(1), Scope::Connection);
    }

    #[test]
    fn anything_on_channel_zero_closes_the_connection() {
        assert_eq!(AmqpError::access_refused("x").scope(0), Scope::Connection);
        assert_eq!(AmqpError::not_found("x").scope(0), Scope::Connection);
    }

    #[test]
    fn text_is_name_dash_detail_and_fits_a_shortstr() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'");
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!(e.code, 404);
        let long = AmqpError::precondition_failed("é".repeat(300));
        assert!(long.text.len() <= 255);
    }

    #[test]
    fn with_method_keeps_the_first_ids() {
        let e = AmqpError::not_found("x")
            .with_method(50, 10)
            .with_method(60, 40);
        assert_eq!((e.class_id, e.method_id), (50, 10));
    }
}
