//! Per-channel content assembly: `basic.publish` + content header + body frames → one
//! complete message, or the connection error RabbitMQ raises for frames out of order.
//!
//! Sans I/O; the channel owns one `Assembly` and feeds it frames in arrival order.

use amq_protocol::protocol::basic::Publish;
use bytes::{Bytes, BytesMut};

use crate::error::{AmqpError, Result};

/// A fully received publish.
#[derive(Debug)]
pub struct Content {
    /// The publish method that opened the content.
    pub publish: Publish,
    /// Decoded properties.
    pub properties: crate::protocol::Properties,
    /// Encoded properties, for re-sending verbatim.
    pub raw_properties: Bytes,
    /// The whole body.
    pub body: Bytes,
}

// One per channel, so the size of the body-waiting variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitHeader(Publish),
    AwaitBody {
        publish: Publish,
        properties: crate::protocol::Properties,
        raw_properties: Bytes,
        size: u64,
        body: Option<Bytes>,
        parts: BytesMut,
    },
}

/// The assembly state of one channel.
#[derive(Debug, Default)]
pub struct Assembly {
    state: State,
}

impl Assembly {
    /// True while a publish waits for its header or body; any method frame then is a 505.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Drops a half-received message (the channel is closing).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// A `basic.publish` arrived; content frames must follow.
    pub fn start(&mut self, publish: Publish) {
        self.state = State::AwaitHeader(publish);
    }

    /// A content header arrived.
    ///
    /// # Errors
    /// 505 when no publish is waiting for one; 406 (channel) when the declared size is over
    /// `max_message_size`.
    pub fn header(
        &mut self,
        properties: crate::protocol::Properties,
        raw_properties: Bytes,
        size: u64,
        max_message_size: u64,
    ) -> Result<Option<Content>> {
        let publish = match std::mem::take(&mut self.state) {
            State::AwaitHeader(p) => p,
            _ => {
                return Err(AmqpError::unexpected_frame(
                    "content header frame without a preceding basic.publish",
                ));
            }
        };
        if size > max_message_size {
            return Err(AmqpError::precondition_failed(format!(
                "message size {size} is larger than configured max size {max_message_size}"
            ))
            .with_method(60, 40));
        }
        if size == 0 {
            return Ok(Some(Content {
                publish,
                properties,
                raw_properties,
                body: Bytes::new(),
            }));
        }
        self.state = State::AwaitBody {
            publish,
            properties,
            raw_properties,
            size,
            body: None,
            parts: BytesMut::new(),
        };
        Ok(None)
    }

    /// A body frame arrived.
    ///
    /// # Errors
    /// 505 when no header precedes it; 501 when it overruns the declared body size.
    pub fn body(&mut self, payload: Bytes) -> Result<Option<Content>> {
        let State::AwaitBody {
            size, body, parts, ..
        } = &mut self.state
        else {
            return Err(AmqpError::unexpected_frame(
                "content body frame without a preceding content header",
            ));
        };
        let received = body.as_ref().map_or(parts.len(), Bytes::len) as u64;
        if received + payload.len() as u64 > *size {
            return Err(AmqpError::frame_error(format!(
                "content body overruns its declared size {size}"
            )));
        }
        // The common case, a body in one frame, keeps the read buffer's slice: no copy.
        if received == 0 && payload.len() as u64 == *size {
            *body = Some(payload);
        } else {
            if let Some(first) = body.take() {
                parts.extend_from_slice(&first);
            }
            if parts.is_empty() {
                // Bounded by max_message_size, checked at the header.
                parts.reserve(*size as usize);
            }
            parts.extend_from_slice(&payload);
        }
        let done = body.as_ref().map_or(parts.len(), Bytes::len) as u64 == *size;
        if !done {
            return Ok(None);
        }
        match std::mem::take(&mut self.state) {
            State::AwaitBody {
                publish,
                properties,
                raw_properties,
                body,
                mut parts,
                ..
            } => Ok(Some(Content {
                publish,
                properties,
                raw_properties,
                body: body.unwrap_or_else(|| parts.split().freeze()),
            })),
            _ => unreachable!("state checked above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Publish {
        Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }
    }

    #[test]
    fn body_in_several_frames_is_joined() {
        let mut a = Assembly::default();
        a.start(publish());
        assert!(
            a.header(Default::default(), Bytes::new(), 5, 100)
                .unwrap()
                .is_none()
        );
        assert!(a.body(Bytes::from_static(b"he")).unwrap().is_none());
        let c = a.body(Bytes::from_static(b"llo")).unwrap().unwrap();
        assert_eq!(&c.body[..], b"hello");
        assert!(!a.in_progress());
    }

    #[test]
    fn zero_size_completes_at_the_header() {
        let mut a = Assembly::default();
        a.start(publish());
        let c = a.header(Default::default(), Bytes::new(), 0, 100).unwrap();
        assert!(c.unwrap().body.is_empty());
    }

    #[test]
    fn overrun_is_a_frame_error() {
        let mut a = Assembly::default();
        a.start(publish());
        a.header(Default::default(), Bytes::new(), 2, 100).unwrap();
        assert_eq!(a.body(Bytes::from_static(b"abc")).unwrap_err().code, 501);
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = Assembly::default();
        assert_eq!(a.body(Bytes::from_static(b"x")).unwrap_err().code, 505);
        assert_eq!(
            a.header(Default::default(), Bytes::new(), 1, 10)
                .unwrap_err()
                .code,
            505
        );
    }

    #[test]
    fn oversized_message_is_refused_at_the_header() {
        let mut a = Assembly::default();
        a.start(publish());
        let e = a
            .header(Default::default(), Bytes::new(), 11, 10)
            .unwrap_err();
        assert_eq!(e.code, 406);
    }
}
