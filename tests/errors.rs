//! One test per reply-code path, asserting the code and its scope: a channel error leaves the
//! connection usable, a connection error closes it.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// Asserts a channel-scoped error: the code, the channel gone, the connection still usable.
async fn channel_error(conn: &Connection, ch: &Channel, e: lapin::Error, want: u16) {
    assert_eq!(code(&e), want, "{e:?}");
    assert!(!ch.status().connected());
    assert!(
        conn.status().connected(),
        "the connection must survive a channel error"
    );
    let other = conn.create_channel().await.unwrap();
    other
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
}

/// Asserts a connection-scoped error.
fn connection_error(conn: &Connection, e: lapin::Error, want: u16) {
    assert_eq!(code(&e), want, "{e:?}");
    assert!(!conn.status().connected(), "the connection must be closed");
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .queue_declare("missing".into(), passive(), FieldTable::default())
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 404).await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 404).await;
}

/// Publishes with a raw client and returns the channel.close that follows: publish errors
/// arrive asynchronously, and lapin may see the channel closing before its next call.
async fn publish_error(
    props: BasicProperties,
    exchange: &str,
    immediate: bool,
) -> (u16, u16, u16, u16) {
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.open_channel(1).await;
    let publish = amq_protocol::protocol::basic::Publish {
        exchange: exchange.into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate,
    };
    r.publish(1, publish, &props, b"m").await;
    if immediate {
        (0, r.expect_connection_close().await, 0, 0)
    } else {
        r.expect_channel_close().await
    }
}

#[tokio::test]
async fn publish_to_a_missing_exchange_is_404_on_the_channel() {
    assert_eq!(
        publish_error(BasicProperties::default(), "missing", false).await,
        (1, 404, 60, 40)
    );
}

#[tokio::test]
async fn bind_to_a_missing_queue_or_exchange_is_404() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .queue_bind(
            "missing".into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 404).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_bind(
            q.name().clone(),
            "missing".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 404).await;
}

#[tokio::test]
async fn inequivalent_queue_redeclare_is_406() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let q = name("q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-max-length", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
    // An argument RabbitMQ does not know is not compared.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-foo", AMQPValue::LongInt(1))]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn inequivalent_exchange_redeclare_is_406() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let x = name("x");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
}

#[tokio::test]
async fn bad_queue_argument_is_406() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .queue_declare(
            name("q").as_str().into(),
            Default::default(),
            table(&[("x-message-ttl", AMQPValue::LongInt(-5))]),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            name("q").as_str().into(),
            Default::default(),
            table(&[("x-queue-type", AMQPValue::LongString("bogus".into()))]),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
}

#[tokio::test]
async fn reserved_names_and_the_default_exchange_are_403() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 403).await;
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_declare("amq.mine".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 403).await;
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .exchange_delete("amq.direct".into(), Default::default())
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 403).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .queue_bind(
            q.name().clone(),
            "".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 403).await;
    // Redeclaring a predeclared exchange equivalently is fine.
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn another_connections_exclusive_queue_is_405_for_every_use() {
    let b = TestBroker::start().await;
    let (_owner, och) = b.channel().await;
    let q = name("ex");
    och.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (conn, _) = b.channel().await;
    for op in 0..5 {
        let ch = conn.create_channel().await.unwrap();
        let name = q.as_str().into();
        let e = match op {
            0 => ch
                .queue_declare(name, passive(), FieldTable::default())
                .await
                .map(|_| ()),
            1 => ch
                .basic_consume(name, "".into(), Default::default(), FieldTable::default())
                .await
                .map(|_| ()),
            2 => ch.queue_purge(name, Default::default()).await.map(|_| ()),
            3 => ch.queue_delete(name, Default::default()).await.map(|_| ()),
            _ => {
                ch.queue_bind(
                    name,
                    "amq.direct".into(),
                    "k".into(),
                    Default::default(),
                    FieldTable::default(),
                )
                .await
            }
        }
        .unwrap_err();
        channel_error(&conn, &ch, e, 405).await;
    }
}

#[tokio::test]
async fn exclusive_consumer_conflict_is_403() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let q = ch
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    // lapin cancels a consumer when its stream is dropped, so keep it.
    let _a = ch
        .basic_consume(
            q.name().clone(),
            "a".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let e = ch2
        .basic_consume(
            q.name().clone(),
            "b".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch2, e, 403).await;
}

#[tokio::test]
async fn delete_conditions_are_406() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let q = ch
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        Default::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let e = ch
        .queue_delete(
            q.name().clone(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
    let ch = conn.create_channel().await.unwrap();
    let x = name("x");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.name().clone(),
        x.as_str().into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
}

#[tokio::test]
async fn unknown_and_double_acks_are_406_on_the_channel() {
    use amq_protocol::protocol::{AMQPClass, basic};
    let ack = |tag| {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: false,
        }))
    };
    let b = TestBroker::start().await;
    let mut r = Raw::open(b.addr).await;
    r.open_channel(1).await;
    r.send(1, ack(42)).await;
    assert_eq!(r.expect_channel_close().await, (1, 406, 60, 80));

    // Double ack: get one message, ack it twice.
    r.open_channel(2).await;
    r.send(
        2,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: "dbl".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )),
    )
    .await;
    r.expect_method().await;
    let publish = basic::Publish {
        exchange: "".into(),
        routing_key: "dbl".into(),
        mandatory: false,
        immediate: false,
    };
    r.publish(2, publish, &BasicProperties::default(), b"m")
        .await;
    r.send(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "dbl".into(),
            no_ack: false,
        })),
    )
    .await;
    let AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) = r.expect_method().await else {
        panic!("expected get-ok")
    };
    r.send(2, ack(ok.delivery_tag)).await;
    r.send(2, ack(ok.delivery_tag)).await;
    assert_eq!(r.expect_channel_close().await, (2, 406, 60, 80));
}

#[tokio::test]
async fn ack_zero_multiple_with_nothing_outstanding_is_fine() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn tx_commit_without_select_is_406() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch.tx_commit().await.unwrap_err();
    channel_error(&conn, &ch, e, 406).await;
}

#[tokio::test]
async fn invalid_message_properties_are_406_on_the_channel() {
    for props in [
        BasicProperties::default().with_expiration("abc".into()),
        BasicProperties::default().with_user_id("mallory".into()),
        BasicProperties::default().with_delivery_mode(3),
    ] {
        assert_eq!(publish_error(props, "", false).await, (1, 406, 60, 40));
    }
}

#[tokio::test]
async fn oversized_message_is_406_on_the_channel() {
    use amq_protocol::protocol::{AMQPClass, basic, channel as chan};
    let b = TestBroker::start_with(|c| c.max_message_size = 1000).await;
    let mut r = Raw::open(b.addr).await;
    r.send(1, AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})))
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
    // header: class 60, weight 0, body size 2000, no properties
    let mut header = vec![2u8, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
    header.extend_from_slice(&2000u64.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0xCE]);
    r.send_raw(&header).await;
    assert_eq!(r.expect_channel_close().await, (1, 406, 60, 40));
}

#[tokio::test]
async fn unknown_exchange_type_is_503_on_the_connection() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .exchange_declare(
            name("x").as_str().into(),
            ExchangeKind::Custom("x-bogus".into()),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    connection_error(&conn, e, 503);
}

#[tokio::test]
async fn reused_consumer_tag_is_530_on_the_connection() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let q = ch
        .queue_declare("".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let _t = ch
        .basic_consume(
            q.name().clone(),
            "t".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let e = ch
        .basic_consume(
            q.name().clone(),
            "t".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    connection_error(&conn, e, 530);
}

#[tokio::test]
async fn not_implemented_features_are_540_on_the_connection() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .unwrap_err();
    connection_error(&conn, e, 540);
    assert_eq!(
        publish_error(BasicProperties::default(), "", true).await.1,
        540
    );
}
