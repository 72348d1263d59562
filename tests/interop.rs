//! Where Warren's answers once differed from RabbitMQ 3.10.8's in ways that stop real
//! clients: legacy protocol headers, unbinds with a missing end, capabilities, argument
//! validation, length limits on requeue, built-in names and frame/state errors. Raw frames
//! where no client library sends the input, lapin elsewhere.

mod common;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection as c, queue as qm};
use common::*;

/// The Perl clients send `AMQP 1 1 0 9` (0-9); RabbitMQ answers start 0-9 and speaks 0-9-1.
/// The two spellings of 0-8's header are answered 8-0, as RabbitMQ does.
#[tokio::test]
async fn legacy_protocol_headers_are_accepted_as_rabbitmq_accepts_them() {
    let b = TestBroker::start().await;
    for (header, version) in [
        (b"AMQP\x00\x00\x09\x01", (0, 9)),
        (b"AMQP\x01\x01\x00\x09", (0, 9)),
        (b"AMQP\x01\x01\x09\x01", (8, 0)),
        (b"AMQP\x01\x01\x08\x00", (8, 0)),
    ] {
        let mut r = Raw::connect(b.addr).await;
        let (start, opened) = r.handshake_from(header, 2047, 131072, 0).await;
        let AMQPClass::Connection(c::AMQPMethod::Start(start)) = start else {
            panic!("{header:?}: expected connection.start, got {start:?}");
        };
        assert_eq!(
            (start.version_major, start.version_minor),
            version,
            "{header:?}"
        );
        assert!(
            matches!(
                opened,
                Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
            ),
            "{header:?}: {opened:?}"
        );
        // And then it is plain 0-9-1: a declare round trip.
        r.open_channel(1).await;
        r.send(
            1,
            AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
                queue: "".into(),
                ..Default::default()
            })),
        )
        .await;
        assert!(matches!(
            r.expect_method().await,
            AMQPClass::Queue(qm::AMQPMethod::DeclareOk(_))
        ));
    }
    // Everything else is still answered with Warren's header and a close.
    for header in [
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x01\x01\x00\x0a",
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x03\x01\x00\x00",
        b"HTTP/1.1",
    ] {
        let mut r = Raw::connect(b.addr).await;
        r.send_raw(header).await;
        let mut got = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut r.sock, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"AMQP\x00\x00\x09\x01", "{header:?}");
        assert!(matches!(
            r.frame().await,
            None | Some(AMQPFrame::ProtocolHeader(_))
        ));
    }
}
