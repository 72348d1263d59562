//! Handshake, tuning, heartbeats, framing errors and shutdown, over real sockets.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel as ch, connection as c};
use common::*;
use lapin::{Connection, ConnectionProperties};

#[tokio::test]
async fn bad_protocol_header_is_answered_with_ours_then_closed() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    r.send_raw(b"AMQP\x01\x01\x00\x0a").await;
    let mut got = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut r.sock, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"AMQP\x00\x00\x09\x01");
    assert!(r.frame().await.is_none());
}

#[tokio::test]
async fn start_advertises_warren_and_its_capabilities() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    r.send_raw(b"AMQP\x00\x00\x09\x01").await;
    let AMQPClass::Connection(c::AMQPMethod::Start(start)) = r.expect_method().await else {
        panic!("expected connection.start");
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let props = start.server_properties.inner();
    assert!(
        matches!(props.get("product"), Some(amq_protocol::types::AMQPValue::LongString(s)) if s.as_bytes() == b"Warren")
    );
    let Some(amq_protocol::types::AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("no capabilities");
    };
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "exchange_exchange_bindings",
        "per_consumer_qos",
        "authentication_failure_close",
        "consumer_priorities",
        "direct_reply_to",
        "connection.blocked",
    ] {
        assert!(
            matches!(
                caps.inner().get(cap),
                Some(amq_protocol::types::AMQPValue::Boolean(true))
            ),
            "{cap}"
        );
    }
    // Exactly what RabbitMQ 3.10.8 advertises, each of which Warren implements.
    assert_eq!(caps.inner().len(), 9, "{caps:?}");
    assert_eq!(start.mechanisms.as_bytes(), b"AMQPLAIN PLAIN");
}

#[tokio::test]
async fn tune_proposes_the_configured_limits_and_lapin_connects() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let cfg = conn.configuration();
    assert_eq!(cfg.frame_max(), 131072);
    assert_eq!(cfg.channel_max(), 2047);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn bad_password_is_refused_with_403_for_clients_that_ask() {
    let b = TestBroker::start().await;
    let uri = format!("amqp://guest:wrong@{}/%2f", b.addr);
    // lapin advertises authentication_failure_close.
    let e = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let b = TestBroker::start().await;
    let uri = format!("amqp://guest:guest@{}/nope", b.addr);
    let e = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 530);
}

#[tokio::test]
async fn tune_ok_above_the_servers_channel_max_is_refused() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    let reply = r.handshake(5000, 131072, 0).await;
    assert!(
        matches!(&reply, Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) if cl.reply_code == 530),
        "{reply:?}"
    );
}

#[tokio::test]
async fn tune_ok_frame_max_zero_is_refused() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    let reply = r.handshake(2047, 0, 0).await;
    assert!(
        matches!(&reply, Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) if cl.reply_code == 530),
        "{reply:?}"
    );
}

#[tokio::test]
async fn frame_larger_than_frame_max_is_501() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    assert!(matches!(
        r.handshake(2047, 4096, 0).await,
        Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
    ));
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    r.expect_method().await;
    let mut frame = vec![3u8, 0, 1];
    frame.extend_from_slice(&5000u32.to_be_bytes());
    frame.extend(std::iter::repeat_n(0u8, 5000));
    frame.push(0xCE);
    r.send_raw(&frame).await;
    assert_eq!(r.expect_connection_close().await, 501);
}

#[tokio::test]
async fn bad_frame_end_is_501() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await;
    assert_eq!(r.expect_connection_close().await, 501);
}

#[tokio::test]
async fn heartbeat_on_a_channel_is_505() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send_raw(&[8, 0, 1, 0, 0, 0, 0, 0xCE]).await;
    assert_eq!(r.expect_connection_close().await, 505);
}

#[tokio::test]
async fn method_on_an_unopened_channel_is_504() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send(
        3,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    assert_eq!(r.expect_connection_close().await, 504);
}

#[tokio::test]
async fn second_channel_open_is_504() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    r.expect_method().await;
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    assert_eq!(r.expect_connection_close().await, 504);
}

#[tokio::test]
async fn body_frame_without_publish_is_505_and_method_inside_content_is_505() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    r.expect_method().await;
    r.send_raw(&[3, 0, 1, 0, 0, 0, 1, b'x', 0xCE]).await;
    assert_eq!(r.expect_connection_close().await, 505);

    let mut r = Raw::open(b.addr).await;
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    r.expect_method().await;
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    }));
    r.send(1, publish.clone()).await;
    r.send(1, publish).await;
    assert_eq!(r.expect_connection_close().await, 505);
}

#[tokio::test]
async fn body_overrunning_its_declared_size_is_refused() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.send(1, AMQPClass::Channel(ch::AMQPMethod::Open(ch::Open {})))
        .await;
    r.expect_method().await;
    r.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    // header: class 60, weight 0, body size 2, no properties
    r.send_raw(&[
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0xCE,
    ])
    .await;
    r.send_raw(&[3, 0, 1, 0, 0, 0, 3, b'a', b'b', b'c', 0xCE])
        .await;
    assert_eq!(r.expect_connection_close().await, 501);
}

#[tokio::test]
async fn unknown_method_closes_the_socket_and_other_connections_carry_on() {
    let b = TestBroker::start().await;
    let (_conn, other) = b.channel().await;
    let mut r = Raw::open(b.addr).await;
    r.send_raw(&[1, 0, 0, 0, 0, 0, 4, 0, 99, 0, 99, 0xCE]).await;
    assert!(r.next_method().await.is_none());
    other
        .queue_declare("".into(), Default::default(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn server_sends_heartbeats_and_drops_a_silent_peer() {
    let b = TestBroker::start().await;
    let mut r = Raw::connect(b.addr).await;
    assert!(matches!(
        r.handshake(2047, 131072, 1).await,
        Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
    ));
    // With heartbeat=1 the server sends one every 0.5 s and gives up after 2 s of silence.
    let mut heartbeats = 0;
    let started = tokio::time::Instant::now();
    while let Some(f) = r.frame().await {
        if f == AMQPFrame::Heartbeat {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 2, "{heartbeats}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn shutdown_closes_clients_with_320() {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    let stopping = tokio::spawn(b.stop());
    assert_eq!(r.expect_connection_close().await, 320);
    stopping.await.unwrap();
}
