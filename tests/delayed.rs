//! The delayed-message exchange (`x-delayed-message`) against a real broker: the plugin's
//! interface and refusals, delays honoured in due order, bindings read at due time,
//! Warren's mandatory and alternate-exchange semantics, kill -9 with pending persistent
//! messages, and `messages_delayed` in the management API.

mod common;

use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn delayed_args(kind: &str) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-delayed-type".into(), AMQPValue::LongString(kind.into()));
    a
}

fn kind() -> ExchangeKind {
    ExchangeKind::Custom("x-delayed-message".into())
}

async fn declare_delayed(ch: &Channel, x: &str, routing: &str, durable: bool) {
    ch.exchange_declare(
        x.into(),
        kind(),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        delayed_args(routing),
    )
    .await
    .unwrap();
}

/// A queue bound to `x` with `key`, and a consumer on it.
async fn bound_consumer(ch: &Channel, x: &str, key: &str, durable: bool) -> (String, Consumer) {
    let q = name("dq");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.as_str().into(),
        x.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let c = consume(ch, &q).await;
    (q, c)
}

async fn consume(ch: &Channel, q: &str) -> Consumer {
    ch.basic_consume(
        q.into(),
        name("c").as_str().into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
}

fn with_delay(v: Option<AMQPValue>) -> BasicProperties {
    let mut h = FieldTable::default();
    if let Some(v) = v {
        h.insert("x-delay".into(), v);
    }
    BasicProperties::default().with_headers(h)
}

async fn publish(ch: &Channel, x: &str, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish(
        x.into(),
        key.into(),
        Default::default(),
        body.as_bytes(),
        props,
    )
    .await
    .unwrap();
}

/// The next delivery within `within`, as (body, x-delay header).
async fn next(c: &mut Consumer, within: Duration) -> Option<(String, Option<AMQPValue>)> {
    let d = tokio::time::timeout(within, c.next()).await.ok()??.unwrap();
    let h = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delay").cloned());
    Some((String::from_utf8(d.data).unwrap(), h))
}

fn reply(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => (p.get_id(), p.get_message().to_string()),
        other => panic!("not a protocol error: {other:?}"),
    }
}

fn as_i64(v: &AMQPValue) -> i64 {
    match v {
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

#[tokio::test]
async fn declare_refusals_and_equivalence_follow_the_plugin() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let refused = |args: FieldTable| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            let e = ch
                .exchange_declare(name("x").as_str().into(), kind(), Default::default(), args)
                .await
                .unwrap_err();
            reply(&e)
        }
    };
    let must_exist = "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an \
                      existing exchange type";
    assert_eq!(
        refused(FieldTable::default()).await,
        (406, must_exist.into())
    );
    let mut a = FieldTable::default();
    a.insert("x-delayed-type".into(), AMQPValue::LongInt(1));
    assert_eq!(refused(a).await, (406, must_exist.into()));
    assert_eq!(
        refused(delayed_args("x-delayed-message")).await,
        (
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for \
             'x-delayed-type'"
                .into()
        )
    );

    // Equivalent redeclares pass; another type or routing type is inequivalent.
    let ch = conn.create_channel().await.unwrap();
    declare_delayed(&ch, "dx-eq", "topic", false).await;
    declare_delayed(&ch, "dx-eq", "topic", false).await;
    let e = ch
        .exchange_declare(
            "dx-eq".into(),
            ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        reply(&e),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'dx-eq' in vhost '/': \
             received 'topic' but current is 'x-delayed-message'"
                .into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "dx-eq".into(),
            kind(),
            Default::default(),
            delayed_args("direct"),
        )
        .await
        .unwrap_err();
    assert_eq!(reply(&e).0, 406);

    // An unknown routing type is RabbitMQ's unknown exchange type: a connection error.
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "dx-bad".into(),
            kind(),
            Default::default(),
            delayed_args("nope"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        reply(&e),
        (503, "COMMAND_INVALID - unknown exchange type 'nope'".into())
    );
}

#[tokio::test]
async fn a_delay_is_honoured_and_x_delay_is_negated_at_delivery() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct", false).await;
    let (_, mut c) = bound_consumer(&ch, "dx", "k", false).await;
    let t0 = Instant::now();
    publish(
        &ch,
        "dx",
        "k",
        "later",
        with_delay(Some(AMQPValue::LongInt(400))),
    )
    .await;
    assert!(
        next(&mut c, Duration::from_millis(250)).await.is_none(),
        "delivered before its delay"
    );
    let (body, h) = next(&mut c, WAIT).await.expect("delivered after its delay");
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert_eq!(body, "later");
    assert_eq!(h.map(|v| as_i64(&v)), Some(-400));
}

#[tokio::test]
async fn messages_come_out_in_due_order_then_publish_order() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "fanout", false).await;
    let (_, mut c) = bound_consumer(&ch, "dx", "", false).await;
    // A later publish with a shorter delay overtakes; equal delays keep publish order.
    for (body, delay) in [("a", 900), ("b", 300), ("c", 600), ("d", 300), ("e", 300)] {
        publish(
            &ch,
            "dx",
            "",
            body,
            with_delay(Some(AMQPValue::LongLongInt(delay))),
        )
        .await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(next(&mut c, WAIT).await.expect("all delivered").0);
    }
    assert_eq!(got, ["b", "d", "e", "c", "a"]);
}

#[tokio::test]
async fn absent_zero_negative_too_large_or_unparsable_delays_route_at_once() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct", false).await;
    // A long delay first: anything routed at once overtakes it.
    publish(
        &ch,
        "dx",
        "k",
        "held",
        with_delay(Some(AMQPValue::LongInt(60_000))),
    )
    .await;
    let (_, mut c) = bound_consumer(&ch, "dx", "k", false).await;
    let cases = [
        None,
        Some(AMQPValue::LongInt(0)),
        Some(AMQPValue::LongInt(-5000)),
        Some(AMQPValue::LongLongInt(1 << 32)),
        Some(AMQPValue::LongString("soon".into())),
    ];
    for (i, v) in cases.iter().enumerate() {
        publish(&ch, "dx", "k", &i.to_string(), with_delay(v.clone())).await;
    }
    for (i, v) in cases.iter().enumerate() {
        let (body, h) = next(&mut c, Duration::from_secs(2))
            .await
            .expect("routed at once");
        assert_eq!(body, i.to_string());
        // Not delayed, so not rewritten either.
        assert_eq!(&h, v);
    }
    // A string delay is parsed, a float truncated.
    publish(
        &ch,
        "dx",
        "k",
        "s",
        with_delay(Some(AMQPValue::LongString("150".into()))),
    )
    .await;
    publish(
        &ch,
        "dx",
        "k",
        "f",
        with_delay(Some(AMQPValue::Double(200.9))),
    )
    .await;
    let (b1, h1) = next(&mut c, WAIT).await.unwrap();
    let (b2, h2) = next(&mut c, WAIT).await.unwrap();
    assert_eq!((b1.as_str(), as_i64(&h1.unwrap())), ("s", -150));
    assert_eq!((b2.as_str(), as_i64(&h2.unwrap())), ("f", -200));
}

#[tokio::test]
async fn bindings_are_the_ones_at_due_time() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "topic", false).await;
    let (early, mut early_c) = bound_consumer(&ch, "dx", "a.*", false).await;
    publish(
        &ch,
        "dx",
        "a.b",
        "m",
        with_delay(Some(AMQPValue::LongInt(400))),
    )
    .await;
    // Bound after the publish: receives it. Unbound before its due time: does not.
    let (_, mut late_c) = bound_consumer(&ch, "dx", "#", false).await;
    ch.queue_unbind(
        early.as_str().into(),
        "dx".into(),
        "a.*".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut late_c, WAIT).await.unwrap().0, "m");
    assert!(
        next(&mut early_c, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn mandatory_returns_only_what_nothing_would_take_now() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    declare_delayed(&ch, "dx", "direct", false).await;
    let (_, mut c) = bound_consumer(&ch, "dx", "bound", false).await;
    let mandatory = |key: &'static str, body: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "dx".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                with_delay(Some(AMQPValue::LongInt(300))),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    // Routable now: no return (the plugin would return it), delivered when due.
    assert!(mandatory("bound", "kept").await.take_message().is_none());
    let ret = mandatory("nobody", "lost").await.take_message();
    let ret = ret.expect("nothing bound for this key: returned at publish");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    // A returned message is not held: binding its key afterwards does not bring it.
    let (_, mut late) = bound_consumer(&ch, "dx", "nobody", false).await;
    assert_eq!(next(&mut c, WAIT).await.unwrap().0, "kept");
    assert!(next(&mut late, Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn an_unroutable_message_goes_to_the_alternate_exchange_at_expiry() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_, mut ae) = bound_consumer(&ch, "ae", "", false).await;
    let mut args = delayed_args("direct");
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    ch.exchange_declare("dx".into(), kind(), Default::default(), args)
        .await
        .unwrap();
    publish(
        &ch,
        "dx",
        "nomatch",
        "m",
        with_delay(Some(AMQPValue::LongInt(400))),
    )
    .await;
    // Not at publish (the plugin sends it to the alternate exchange at once) ...
    assert!(next(&mut ae, Duration::from_millis(250)).await.is_none());
    // ... but when due.
    let (body, h) = next(&mut ae, WAIT).await.expect("at expiry");
    assert_eq!((body.as_str(), as_i64(&h.unwrap())), ("m", -400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_delayed_messages_survive_kill_9_in_due_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = BinBroker::start(dir.path());
    let n = 40;
    {
        let (_conn, ch) = b.channel().await;
        declare_delayed(&ch, "ddx", "direct", true).await;
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "ddx".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let mut confirms = Vec::new();
        for i in 0..n {
            // Pairs share a delay; later pairs are due earlier.
            let delay = 2500 + ((n - 1 - i) / 2) * 60;
            confirms.push(
                ch.basic_publish(
                    "ddx".into(),
                    "k".into(),
                    Default::default(),
                    i.to_string().as_bytes(),
                    with_delay(Some(AMQPValue::LongLongInt(delay.into()))).with_delivery_mode(2),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
    }
    b.kill9();
    let b = BinBroker::start(dir.path());
    let (_conn, ch) = b.channel().await;
    let mut c = consume(&ch, "dq").await;
    let mut got = Vec::new();
    while got.len() < n as usize {
        let (body, h) = next(&mut c, Duration::from_secs(15))
            .await
            .expect("every confirmed delayed message comes back");
        assert!(as_i64(&h.unwrap()) <= -2500);
        got.push(body.parse::<i32>().unwrap());
    }
    let mut want: Vec<i32> = (0..n).collect();
    want.sort_by_key(|i| ((n - 1 - i) / 2, *i));
    assert_eq!(got, want);
    assert!(next(&mut c, Duration::from_millis(300)).await.is_none());
    b.stop();
}

/// GET over HTTP/1.0 (no chunking) as guest; the JSON body.
async fn get_json(at: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {at}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    serde_json::from_slice(&raw[at + 4..]).unwrap()
}

#[tokio::test]
async fn messages_delayed_is_in_the_exchange_json() {
    let b = TestBroker::start_with_management().await;
    let http = b.http.unwrap();
    let (_conn, ch) = b.channel().await;
    declare_delayed(&ch, "dx", "direct", false).await;
    let (_, mut c) = bound_consumer(&ch, "dx", "k", false).await;
    for _ in 0..3 {
        publish(
            &ch,
            "dx",
            "k",
            "far",
            with_delay(Some(AMQPValue::LongInt(60_000))),
        )
        .await;
    }
    publish(
        &ch,
        "dx",
        "k",
        "near",
        with_delay(Some(AMQPValue::LongInt(100))),
    )
    .await;
    assert_eq!(next(&mut c, WAIT).await.unwrap().0, "near");
    let x = get_json(http, "/api/exchanges/%2F/dx").await;
    assert_eq!(x["type"], "x-delayed-message");
    assert_eq!(x["arguments"]["x-delayed-type"], "direct");
    assert_eq!(x["messages_delayed"], 3);
    let plain = get_json(http, "/api/exchanges/%2F/amq.direct").await;
    assert!(plain.get("messages_delayed").is_none());
}
