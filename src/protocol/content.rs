//! Per-channel content assembly: `basic.publish` + content header + body frames → one
//! complete message, or the connection error RabbitMQ raises for frames out of order.
//!
//! Sans I/O; the channel owns one `Assembly` and feeds it frames in arrival order. A body
//! that comes in several frames is copied together here, and those copies count against a
//! [`ContentBudget`] shared by every connection, so that clients which start many large
//! messages and never finish them cannot make the broker hold more than the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Memory for message bodies being received in several frames, broker-wide.
#[derive(Debug)]
pub struct ContentBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ContentBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one partly received body holds of the budget; given back when dropped (the body
/// completed, the channel closed, the connection went).
#[derive(Debug)]
struct Charge {
    budget: Arc<ContentBudget>,
    bytes: usize,
}

impl Charge {
    fn add(&mut self, n: usize) -> Result<()> {
        let before = self.budget.used.fetch_add(n, Ordering::AcqRel);
        if before + n > self.budget.limit {
            self.budget.used.fetch_sub(n, Ordering::AcqRel);
            return Err(AmqpError::resource_error(format!(
                "message bodies being received exceed memory_budget ({} bytes)",
                self.budget.limit
            ))
            .with_method(60, 40));
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The class and weight fields of a content header frame.
#[derive(Debug, Clone, Copy)]
pub struct HeaderIds {
    /// Content class (60 for basic).
    pub class_id: u16,
    /// Must be zero.
    pub weight: u16,
}

fn unexpected_header() -> AmqpError {
    AmqpError::unexpected_frame(
        "expected content header for class 60, got non content header frame instead",
    )
    .with_method(60, 40)
}

fn unexpected_body() -> AmqpError {
    AmqpError::unexpected_frame("expected content body, got non content body frame instead")
        .with_method(60, 40)
}

/// A content frame where a method was due; RabbitMQ names no method.
fn unexpected_non_method() -> AmqpError {
    AmqpError::unexpected_frame("expected method frame, got non method frame instead")
}

/// The most reserved ahead of what has arrived for a body in several frames: a header
/// declaring 128 MiB reserves no more than this until the bytes come.
const RESERVE_AHEAD: usize = 1 << 20;

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
        /// What `parts` holds of the budget, once a second frame made a copy.
        charge: Option<Charge>,
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

    /// The error for a method frame arriving now, while [`in_progress`](Self::in_progress):
    /// RabbitMQ's texts, naming `basic.publish` whose content was interrupted.
    pub fn method_error(&self) -> AmqpError {
        match self.state {
            State::AwaitBody { .. } => unexpected_body(),
            _ => unexpected_header(),
        }
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
        header: HeaderIds,
        properties: crate::protocol::Properties,
        raw_properties: Bytes,
        size: u64,
        max_message_size: u64,
    ) -> Result<Option<Content>> {
        let publish = match std::mem::take(&mut self.state) {
            State::AwaitHeader(p) => p,
            State::Idle => return Err(unexpected_non_method()),
            body @ State::AwaitBody { .. } => {
                self.state = body;
                return Err(unexpected_body());
            }
        };
        // A non-zero weight is not a content header to RabbitMQ at all.
        if header.weight != 0 {
            return Err(unexpected_header());
        }
        if header.class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            ))
            .with_method(60, 40));
        }
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
            charge: None,
        };
        Ok(None)
    }

    /// A body frame arrived. A body in several frames is copied together, charged to
    /// `budget`.
    ///
    /// # Errors
    /// 505 when no header precedes it; 501 when it overruns the declared body size; 506
    /// when the copy would take `budget` past its limit.
    pub fn body(&mut self, payload: Bytes, budget: &Arc<ContentBudget>) -> Result<Option<Content>> {
        let State::AwaitBody {
            size,
            body,
            parts,
            charge,
            ..
        } = &mut self.state
        else {
            return Err(match self.state {
                State::AwaitHeader(_) => unexpected_header(),
                _ => unexpected_non_method(),
            });
        };
        let received = body.as_ref().map_or(parts.len(), Bytes::len) as u64;
        if received + payload.len() as u64 > *size {
            return Err(AmqpError::frame_error(format!(
                "content body overruns its declared size {size}"
            )));
        }
        // The common case, a body in one frame, keeps the read buffer's slice: no copy.
        // (`body` is only ever set here, when it completes the message.)
        if received == 0 && payload.len() as u64 == *size {
            *body = Some(payload);
        } else {
            let charge = charge.get_or_insert_with(|| Charge {
                budget: budget.clone(),
                bytes: 0,
            });
            charge.add(payload.len())?;
            // Reserve for what is still to come, but never far ahead of what arrived: the
            // declared size alone must not make the broker allocate it.
            if parts.capacity() - parts.len() < payload.len() {
                let to_come = (*size - received) as usize;
                parts.reserve(to_come.min(parts.len().max(RESERVE_AHEAD)));
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

    const BASIC: HeaderIds = HeaderIds {
        class_id: 60,
        weight: 0,
    };

    fn publish() -> Publish {
        Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }
    }

    fn budget() -> Arc<ContentBudget> {
        ContentBudget::new(1 << 30)
    }

    #[test]
    fn body_in_several_frames_is_joined() {
        let mut a = Assembly::default();
        a.start(publish());
        assert!(
            a.header(BASIC, Default::default(), Bytes::new(), 5, 100)
                .unwrap()
                .is_none()
        );
        assert!(
            a.body(Bytes::from_static(b"he"), &budget())
                .unwrap()
                .is_none()
        );
        let c = a
            .body(Bytes::from_static(b"llo"), &budget())
            .unwrap()
            .unwrap();
        assert_eq!(&c.body[..], b"hello");
        assert!(!a.in_progress());
    }

    #[test]
    fn zero_size_completes_at_the_header() {
        let mut a = Assembly::default();
        a.start(publish());
        let c = a
            .header(BASIC, Default::default(), Bytes::new(), 0, 100)
            .unwrap();
        assert!(c.unwrap().body.is_empty());
    }

    #[test]
    fn overrun_is_a_frame_error() {
        let mut a = Assembly::default();
        a.start(publish());
        a.header(BASIC, Default::default(), Bytes::new(), 2, 100)
            .unwrap();
        assert_eq!(
            a.body(Bytes::from_static(b"abc"), &budget())
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = Assembly::default();
        assert_eq!(
            a.body(Bytes::from_static(b"x"), &budget())
                .unwrap_err()
                .code,
            505
        );
        assert_eq!(
            a.header(BASIC, Default::default(), Bytes::new(), 1, 10)
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
            .header(BASIC, Default::default(), Bytes::new(), 11, 10)
            .unwrap_err();
        assert_eq!(e.code, 406);
    }

    /// A header's declared size is not reserved up front, copies are charged while the body
    /// is in progress and given back when it completes or is dropped, and a copy past the
    /// budget is a 506.
    #[test]
    fn partial_bodies_are_charged_to_the_budget() {
        let budget = ContentBudget::new(10);
        let mut a = Assembly::default();
        a.start(publish());
        a.header(BASIC, Default::default(), Bytes::new(), 1 << 30, u64::MAX)
            .unwrap();
        assert!(
            a.body(Bytes::from_static(b"abcd"), &budget)
                .unwrap()
                .is_none()
        );
        assert_eq!(budget.used(), 4);
        assert!(
            a.body(Bytes::from_static(b"efgh"), &budget)
                .unwrap()
                .is_none()
        );
        assert_eq!(budget.used(), 8);
        match &a.state {
            State::AwaitBody { parts, .. } => assert!(parts.capacity() < 2 * RESERVE_AHEAD),
            _ => panic!("still receiving"),
        }
        let e = a.body(Bytes::from_static(b"ijk"), &budget).unwrap_err();
        assert_eq!(e.code, 506);
        a.reset();
        assert_eq!(budget.used(), 0);

        let mut a = Assembly::default();
        a.start(publish());
        a.header(BASIC, Default::default(), Bytes::new(), 6, 100)
            .unwrap();
        a.body(Bytes::from_static(b"abc"), &budget).unwrap();
        let c = a
            .body(Bytes::from_static(b"def"), &budget)
            .unwrap()
            .unwrap();
        assert_eq!(&c.body[..], b"abcdef");
        assert_eq!(budget.used(), 0);
    }
}
