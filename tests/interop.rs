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

/// A message requeued into a queue already at `x-max-length` applies the overflow rule, as
/// in RabbitMQ: with drop-head the oldest go (dead-lettered with reason `maxlen`), so the
/// queue never ends up over its limit. Here the requeued ones are the oldest.
#[tokio::test]
async fn requeue_into_a_full_queue_applies_drop_head() {
    use lapin::BasicProperties;
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q, dlq) = (name("full"), name("full-dl"));
    ch.queue_declare(
        dlq.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dlq.as_str().into()),
    );
    ch.queue_declare(q.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    let publish = |body: &'static [u8]| {
        let ch = ch.clone();
        let q = q.clone();
        async move {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
    };
    publish(b"1").await;
    publish(b"2").await;
    let (_c2, getter) = b.channel().await;
    for _ in 0..2 {
        getter
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message");
    }
    publish(b"3").await;
    publish(b"4").await;
    assert_eq!(ready(&ch, &q).await, 2);
    // Closing the channel requeues its two unacked messages.
    getter.close(200, "bye".into()).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 2, "the limit holds after the requeue");
    let body = |m: Option<lapin::message::BasicGetMessage>| m.expect("a message").delivery.data;
    let kept = [
        body(
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap(),
        ),
        body(
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap(),
        ),
    ];
    assert_eq!(kept, [b"3".to_vec(), b"4".to_vec()]);
    assert_eq!(
        ready(&ch, &dlq).await,
        2,
        "the dropped ones were dead-lettered"
    );
}

/// Every vhost has RabbitMQ's firehose exchange, `amq.rabbitmq.trace`: a durable, internal
/// topic exchange, so a passive declare finds it and a publish to it is refused as to any
/// internal exchange.
#[tokio::test]
async fn amq_rabbitmq_trace_exists_and_is_internal() {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.exchange_declare(
        "amq.rabbitmq.trace".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // An equivalent redeclare is fine; a different type is not.
    ch.exchange_declare(
        "amq.rabbitmq.trace".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare(
            "amq.rabbitmq.trace".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 406);
    // Publish errors arrive asynchronously: a raw client sees the channel.close itself.
    let mut r = Raw::open(b.addr).await;
    r.open_channel(1).await;
    let publish = amq_protocol::protocol::basic::Publish {
        exchange: "amq.rabbitmq.trace".into(),
        routing_key: "x".into(),
        ..Default::default()
    };
    r.publish(1, publish, &Default::default(), b"m").await;
    assert_eq!(r.expect_channel_close().await, (1, 403, 60, 40));
}

/// `exchange.unbind` and `queue.unbind` with either end missing answer unbind-ok, as in
/// RabbitMQ: robust clients (aio-pika) replay their unbinds at teardown, after an auto-delete
/// exchange went away with its last binding. The default exchange is still refused.
#[tokio::test]
async fn unbind_with_a_missing_end_is_ok() {
    use lapin::options::*;
    use lapin::types::FieldTable;
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (src, dst, q) = (name("src"), name("dst"), name("q"));
    for x in [&src, &dst] {
        ch.exchange_declare(
            x.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: x == &dst,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        dst.as_str().into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // The auto-delete destination goes away with its last binding (as a source).
    ch.queue_unbind(
        q.as_str().into(),
        dst.as_str().into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let gone = ch
        .exchange_declare(
            dst.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "auto-delete destination is gone");
    let (_c, ch) = b.channel().await;
    let missing = name("missing");
    for (d, s) in [(&dst, &src), (&q, &missing), (&missing, &missing)] {
        ch.exchange_unbind(
            d.as_str().into(),
            s.as_str().into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange.unbind {d} <- {s}: {e}"));
    }
    for (qn, x) in [(&missing, &src), (&q, &missing), (&missing, &missing)] {
        ch.queue_unbind(
            qn.as_str().into(),
            x.as_str().into(),
            "k".into(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue.unbind {qn} <- {x}: {e}"));
    }
    let e = ch
        .exchange_unbind(
            src.as_str().into(),
            "".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
}

/// amqplib writes `connection.close` ahead of publishes still in its buffer, then waits for
/// close-ok. The broker must keep reading (and discarding) after its close-ok until the
/// client closes: dropping unread input resets the socket, the client's next write fails,
/// and it never reads the close-ok.
#[tokio::test]
async fn publishes_after_connection_close_are_read_and_discarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.open_channel(1).await;
    r.send(
        0,
        AMQPClass::Connection(c::AMQPMethod::Close(c::Close {
            reply_code: 200,
            reply_text: "Cheers, thanks".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    // The rest of the client's buffer: 2,000 small publishes, written after the close.
    let mut burst = Vec::new();
    for _ in 0..2000 {
        let mut out = bytes::BytesMut::new();
        warren::protocol::write_method(
            &mut out,
            1,
            &AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(
                amq_protocol::protocol::basic::Publish {
                    exchange: "".into(),
                    routing_key: "nowhere".into(),
                    ..Default::default()
                },
            )),
        );
        warren::protocol::write_content(&mut out, 1, &[0, 0], b"0123456789", 131072);
        burst.extend_from_slice(&out);
    }
    for chunk in burst.chunks(8192) {
        r.sock
            .write_all(chunk)
            .await
            .expect("the broker still reads");
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        r.next_method().await,
        Some(AMQPClass::Connection(c::AMQPMethod::CloseOk(_)))
    ));
    // Our FIN ends the broker's reading: it closes cleanly, without a reset.
    r.sock.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, r.sock.read_to_end(&mut rest))
        .await
        .expect("the broker closes after our FIN");
    assert!(n.is_ok(), "closed without a reset: {n:?}");
}
