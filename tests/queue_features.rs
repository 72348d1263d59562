//! Queue features RabbitMQ applications rely on — TTL, queue expiry, dead-lettering, length
//! limits, priorities, consumer priorities, single active consumer, quorum-queue
//! compatibility, direct reply-to, CC/BCC, policies — driven by lapin against a real broker.

mod common;

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, ExchangeKind};

fn t(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), Default::default(), args)
        .await
        .unwrap();
}

async fn fanout(ch: &Channel, name: &str) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str) {
    ch.queue_bind(
        q.into(),
        x.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn publish(ch: &Channel, x: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(x.into(), key.into(), Default::default(), body, props)
        .await
        .unwrap();
}

/// Polls basic.get until a message arrives (bounded): for messages that arrive later by
/// design (TTL, dead-lettering).
async fn get_eventually(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in {q}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

/// The (queue, reason, count) triples of a message's x-death, most recent first.
fn deaths(props: &BasicProperties) -> Vec<(String, String, i64)> {
    let Some(AMQPValue::FieldArray(a)) = header(props, "x-death") else {
        return vec![];
    };
    a.as_slice()
        .iter()
        .map(|d| {
            let AMQPValue::FieldTable(d) = d else {
                panic!("x-death entry is not a table")
            };
            let text = |k: &str| match d.inner().get(k) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => panic!("{k}: {other:?}"),
            };
            let count = match d.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                other => panic!("count: {other:?}"),
            };
            (text("queue"), text("reason"), count)
        })
        .collect()
}

#[tokio::test]
async fn retry_via_dlx_with_ttl_then_parking_via_delivery_limit() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (work, wait, parking) = (name("work"), name("work.wait"), name("parking"));
    let (retry_x, parking_x) = (name("retry"), name("parked"));
    fanout(&ch, &retry_x).await;
    fanout(&ch, &parking_x).await;
    // work: rejected messages go to the retry exchange; after 3 failed deliveries (counted
    // across the retry loop) they go to the parking exchange instead.
    declare(
        &ch,
        &work,
        t(&[
            ("x-dead-letter-exchange", s(&retry_x)),
            ("x-delivery-limit", int(3)),
            ("x-delivery-limit-exchange", s(&parking_x)),
        ]),
    )
    .await;
    // wait: holds a rejected message for 100 ms, then sends it back to work.
    declare(
        &ch,
        &wait,
        t(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&work)),
        ]),
    )
    .await;
    declare(&ch, &parking, FieldTable::default()).await;
    bind(&ch, &wait, &retry_x, "").await;
    bind(&ch, &parking, &parking_x, "").await;

    publish(&ch, "", &work, b"poison", BasicProperties::default()).await;
    let mut consumer = ch
        .basic_consume(
            work.as_str().into(),
            "worker".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = vec![];
    for _ in 0..4 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let count = deaths(&d.properties)
            .iter()
            .find(|(q, r, _)| *q == work && r == "rejected")
            .map_or(0, |x| x.2);
        seen.push(count);
        d.reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    assert_eq!(
        seen,
        [0, 1, 2, 3],
        "x-death count for (work, rejected) on each delivery"
    );
    let parked = get_eventually(&ch, &parking).await;
    assert_eq!(parked.delivery.data, b"poison");
    let d = deaths(&parked.delivery.properties);
    assert_eq!(d[0], (work.clone(), "delivery_limit".into(), 1));
    assert!(d.contains(&(work.clone(), "rejected".into(), 3)));
    assert!(d.contains(&(wait.clone(), "expired".into(), 3)));
    assert_eq!(ready(&ch, &work).await, 0);
    assert_eq!(ready(&ch, &wait).await, 0);
}

#[tokio::test]
async fn per_queue_ttl_expires_and_dead_letters_with_reason_expired() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q, dlq, dlx) = (name("ttl"), name("dlq"), name("dlx"));
    fanout(&ch, &dlx).await;
    declare(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    declare(
        &ch,
        &q,
        t(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await;
    publish(&ch, "", &q, b"old", BasicProperties::default()).await;
    let m = get_eventually(&ch, &dlq).await;
    assert_eq!(m.delivery.data, b"old");
    assert_eq!(m.delivery.exchange.as_str(), dlx);
    assert_eq!(
        deaths(&m.delivery.properties),
        [(q.clone(), "expired".into(), 1)]
    );
    assert_eq!(
        header(&m.delivery.properties, "x-first-death-reason"),
        Some(&s("expired"))
    );
    assert_eq!(ready(&ch, &q).await, 0);
}

#[tokio::test]
async fn per_message_ttl_lower_of_the_two_wins_and_zero_means_now_or_never() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("pmttl");
    declare(&ch, &q, t(&[("x-message-ttl", int(60_000))])).await;
    publish(
        &ch,
        "",
        &q,
        b"short",
        BasicProperties::default().with_expiration("30".into()),
    )
    .await;
    publish(
        &ch,
        "",
        &q,
        b"zero",
        BasicProperties::default().with_expiration("0".into()),
    )
    .await;
    publish(&ch, "", &q, b"long", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(80)).await; // let the 30 ms TTL pass
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, b"long");
}

#[tokio::test]
async fn idle_queue_expires() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("exp");
    declare(&ch, &q, t(&[("x-expires", int(100))])).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_c2, probe) = b.channel().await;
        if let Err(e) = passive_declare(&probe, &q).await {
            assert_eq!(code(&e), 404);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never expired"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_with_reason_maxlen() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q, dlq, dlx) = (name("len"), name("dlq"), name("dlx"));
    fanout(&ch, &dlx).await;
    declare(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    declare(
        &ch,
        &q,
        t(&[
            ("x-max-length", int(2)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await;
    for m in ["m1", "m2", "m3"] {
        publish(&ch, "", &q, m.as_bytes(), BasicProperties::default()).await;
    }
    let dropped = get_eventually(&ch, &dlq).await;
    assert_eq!(dropped.delivery.data, b"m1");
    assert_eq!(deaths(&dropped.delivery.properties)[0].1, "maxlen");
    assert_eq!(ready(&ch, &q).await, 2);
}

#[tokio::test]
async fn reject_publish_overflow_nacks_in_confirm_mode() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("rp");
    declare(
        &ch,
        &q,
        t(&[
            ("x-max-length", int(2)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut outcomes = vec![];
    for i in 0..4 {
        let c = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        outcomes.push(c.is_ack());
    }
    assert_eq!(outcomes, [true, true, false, false]);
    assert_eq!(ready(&ch, &q).await, 2);
}

#[tokio::test]
async fn priority_queue_delivers_highest_first_and_caps_at_the_maximum() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("prio");
    declare(&ch, &q, t(&[("x-max-priority", int(5))])).await;
    for (body, p) in [("p0", 0u8), ("p9", 9), ("p3", 3), ("p5", 5), ("p3b", 3)] {
        publish(
            &ch,
            "",
            &q,
            body.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let mut order = vec![];
    while let Some(m) = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        order.push(String::from_utf8(m.delivery.data).unwrap());
    }
    // 9 counts as the maximum, 5, so it ties with p5 and keeps its arrival order.
    assert_eq!(order, ["p9", "p5", "p3", "p3b", "p0"]);
}

#[tokio::test]
async fn consumer_priority_and_single_active_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("cp");
    declare(&ch, &q, FieldTable::default()).await;
    ch.basic_qos(1, Default::default()).await.unwrap();
    let mut low = ch
        .basic_consume(
            q.as_str().into(),
            "low".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut high = ch
        .basic_consume(
            q.as_str().into(),
            "high".into(),
            Default::default(),
            t(&[("x-priority", int(10))]),
        )
        .await
        .unwrap();
    publish(&ch, "", &q, b"1", BasicProperties::default()).await;
    publish(&ch, "", &q, b"2", BasicProperties::default()).await;
    let first = high.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"1");
    // high has no credit left (prefetch 1), so low gets the next one.
    assert_eq!(low.next().await.unwrap().unwrap().data, b"2");

    let sac = name("sac");
    declare(
        &ch,
        &sac,
        t(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let (_c2, ch2) = b.channel().await;
    let mut a = ch2
        .basic_consume(
            sac.as_str().into(),
            "a".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut bcons = ch2
        .basic_consume(
            sac.as_str().into(),
            "b".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&ch2, "", &sac, b"x", BasicProperties::default()).await;
    publish(&ch2, "", &sac, b"y", BasicProperties::default()).await;
    assert_eq!(a.next().await.unwrap().unwrap().data, b"x");
    assert_eq!(a.next().await.unwrap().unwrap().data, b"y");
    ch2.basic_cancel("a".into(), Default::default())
        .await
        .unwrap();
    publish(&ch2, "", &sac, b"z", BasicProperties::default()).await;
    assert_eq!(bcons.next().await.unwrap().unwrap().data, b"z");
    let e = ch2
        .basic_consume(
            sac.as_str().into(),
            "ex".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
}

// Follows RabbitMQ 4.x: quorum queues default to x-delivery-limit 20 and set
// x-delivery-count on redelivery (3.10.8 has neither).
#[tokio::test]
async fn quorum_queue_validations_and_delivery_count() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let quorum = || t(&[("x-queue-type", s("quorum"))]);
    let e = ch
        .queue_declare(name("qq").as_str().into(), Default::default(), quorum())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 406, "quorum queues must be durable");
    let ch = conn.create_channel().await.unwrap();
    let q = name("qq");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.as_str().into(), durable, quorum())
        .await
        .unwrap();
    publish(&ch, "", &q, b"m", BasicProperties::default()).await;
    for expected in 0..3i64 {
        let m = get_eventually_ack(&ch, &q).await;
        let got = header(&m.delivery.properties, "x-delivery-count").cloned();
        assert_eq!(got, (expected > 0).then_some(int(expected)));
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

async fn get_eventually_ack(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = ch
            .basic_get(q.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn classic_queue_delivery_limit_dead_letters_poison_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q, dlq, dlx) = (name("poison"), name("dlq"), name("dlx"));
    fanout(&ch, &dlx).await;
    declare(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    declare(
        &ch,
        &q,
        t(&[
            ("x-delivery-limit", int(1)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await;
    publish(&ch, "", &q, b"bad", BasicProperties::default()).await;
    for _ in 0..2 {
        let m = get_eventually_ack(&ch, &q).await;
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let m = get_eventually(&ch, &dlq).await;
    assert_eq!(deaths(&m.delivery.properties)[0].1, "delivery_limit");
}

#[tokio::test]
async fn dead_letter_cycles_without_rejection_are_dropped() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q, spy, x) = (name("loop"), name("spy"), name("loopx"));
    fanout(&ch, &x).await;
    declare(
        &ch,
        &q,
        t(&[
            ("x-message-ttl", int(20)),
            ("x-dead-letter-exchange", s(&x)),
        ]),
    )
    .await;
    declare(&ch, &spy, FieldTable::default()).await;
    bind(&ch, &q, &x, "").await;
    bind(&ch, &spy, &x, "").await;
    publish(&ch, "", &q, b"m", BasicProperties::default()).await;
    let m = get_eventually(&ch, &spy).await;
    assert_eq!(
        deaths(&m.delivery.properties),
        [(q.clone(), "expired".into(), 1)]
    );
    tokio::time::sleep(Duration::from_millis(100)).await; // several TTLs: nothing loops back
    assert_eq!(ready(&ch, &q).await, 0);
    assert_eq!(ready(&ch, &spy).await, 0);
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let b = TestBroker::start().await;
    let (_c, client) = b.channel().await;
    let (_c2, server) = b.channel().await;
    let rpc = name("rpc");
    declare(&server, &rpc, FieldTable::default()).await;
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(
        &client,
        "",
        &rpc,
        b"ping",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    let req = get_eventually(&server, &rpc).await;
    let reply_to = req.delivery.properties.reply_to().clone().unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    publish(
        &server,
        "",
        reply_to.as_str(),
        b"pong",
        BasicProperties::default(),
    )
    .await;
    let reply = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, b"pong");
    assert_eq!(reply.routing_key.as_str(), reply_to.as_str());
}

#[tokio::test]
async fn direct_reply_to_needs_no_ack_and_a_consumer() {
    let b = TestBroker::start().await;
    let (conn, ch) = b.channel().await;
    let e = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 406);
    let _ = conn;
    let mut r = Raw::open(b.addr).await;
    r.open_channel(1).await;
    let publish = amq_protocol::protocol::basic::Publish {
        exchange: "".into(),
        routing_key: "x".into(),
        mandatory: false,
        immediate: false,
    };
    r.publish(
        1,
        publish,
        &BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        b"m",
    )
    .await;
    assert_eq!(r.expect_channel_close().await.1, 406);
}

#[tokio::test]
async fn cc_and_bcc_route_to_extra_keys_and_bcc_is_hidden() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (main, cc, bcc) = (name("main"), name("cc"), name("bcc"));
    for q in [&main, &cc, &bcc] {
        declare(&ch, q, FieldTable::default()).await;
    }
    let arr = |k: &str| AMQPValue::FieldArray(FieldArray::from(vec![s(k)]));
    let headers = t(&[("CC", arr(&cc)), ("BCC", arr(&bcc))]);
    publish(
        &ch,
        "",
        &main,
        b"m",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in [&main, &cc, &bcc] {
        let m = get_eventually(&ch, q).await;
        assert_eq!(m.delivery.routing_key.as_str(), main);
        let h = m.delivery.properties.headers().clone().unwrap();
        assert!(h.contains_key("CC"));
        assert!(!h.contains_key("BCC"), "BCC must be stripped");
    }
}

#[tokio::test]
async fn policies_from_the_config_apply_to_matching_queues() {
    let b = TestBroker::start_with(|c| {
        let text = "[[policies]]\nname = 'short'\npattern = '^pol\\.'\napply-to = 'queues'\ndefinition = { max-length = 1 }\n";
        c.policies = warren::config::Config::parse(text).unwrap().policies;
    })
    .await;
    let (_c, ch) = b.channel().await;
    declare(&ch, "pol.a", FieldTable::default()).await;
    declare(&ch, "other", FieldTable::default()).await;
    for q in ["pol.a", "other"] {
        publish(&ch, "", q, b"1", BasicProperties::default()).await;
        publish(&ch, "", q, b"2", BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "pol.a").await, 1);
    assert_eq!(ready(&ch, "other").await, 2);
}
