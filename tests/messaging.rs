//! Routing, consuming, acknowledgements, prefetch, confirms and transactions, driven by lapin
//! against a real broker.

mod common;

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn queue(ch: &Channel) -> String {
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .name()
    .to_string()
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
}

async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap();
}

/// A mandatory publish through the default exchange on a channel in confirm mode, awaited
/// until its confirm (which carries the message back if it was returned).
async fn publish_mandatory(ch: &Channel, key: &str, body: &[u8]) -> lapin::Confirmation {
    ch.basic_publish(
        "".into(),
        key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap()
}

/// Drains a queue with basic.get (no-ack); the trailing get-empty also proves that every
/// earlier publish on the same channel was processed.
async fn drain(ch: &Channel, q: &str) -> Vec<String> {
    let mut out = vec![];
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        q.into(),
        x.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    publish(&ch, "", &q, b"hello").await;
    publish(&ch, "", "no-such-queue", b"lost").await;
    assert_eq!(drain(&ch, &q).await, ["hello"]);
}

/// A channel remembers the queue its last default-exchange publish went to; deleting the
/// queue, declaring another of the same name, or adding CC must each route afresh.
#[tokio::test]
async fn default_exchange_routing_follows_deletes_redeclares_and_cc() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let declare = |name: &'static str| {
        let ch = ch.clone();
        async move {
            ch.queue_declare(name.into(), Default::default(), FieldTable::default())
                .await
                .unwrap();
        }
    };
    declare("reused").await;
    declare("copy").await;
    publish(&ch, "", "reused", b"first").await;
    ch.queue_delete("reused".into(), Default::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = publish_mandatory(&ch, "reused", b"to nowhere").await;
    let returned = confirm
        .take_message()
        .expect("the deleted queue no longer routes");
    assert_eq!(returned.reply_code, 312);
    declare("reused").await;
    publish(&ch, "", "reused", b"second").await;
    let mut cc = FieldTable::default();
    cc.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString("copy".into())].into()),
    );
    publish_with(
        &ch,
        "",
        "reused",
        b"third",
        BasicProperties::default().with_headers(cc),
    )
    .await;
    assert_eq!(drain(&ch, "reused").await, ["second", "third"]);
    assert_eq!(drain(&ch, "copy").await, ["third"]);
}

#[tokio::test]
async fn direct_fanout_and_topic_routing() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (q1, q2, q3) = (queue(&ch).await, queue(&ch).await, queue(&ch).await);
    bind(&ch, &q1, "amq.direct", "k1", FieldTable::default()).await;
    bind(&ch, &q2, "amq.fanout", "", FieldTable::default()).await;
    bind(&ch, &q3, "amq.topic", "a.*.c", FieldTable::default()).await;
    bind(&ch, &q3, "amq.topic", "x.#", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k1", b"d1").await;
    publish(&ch, "amq.direct", "k2", b"d2").await;
    publish(&ch, "amq.fanout", "whatever", b"f").await;
    for key in ["a.b.c", "a.b", "x", "x.y.z", "a.b.c.d"] {
        publish(&ch, "amq.topic", key, key.as_bytes()).await;
    }
    assert_eq!(drain(&ch, &q1).await, ["d1"]);
    assert_eq!(drain(&ch, &q2).await, ["f"]);
    assert_eq!(drain(&ch, &q3).await, ["a.b.c", "x", "x.y.z"]);
}

#[tokio::test]
async fn a_queue_bound_twice_gets_one_copy() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    bind(&ch, &q, "amq.topic", "a.*", FieldTable::default()).await;
    bind(&ch, &q, "amq.topic", "#", FieldTable::default()).await;
    publish(&ch, "amq.topic", "a.b", b"once").await;
    assert_eq!(drain(&ch, &q).await, ["once"]);
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (qa, qb) = (queue(&ch).await, queue(&ch).await);
    let mut all = FieldTable::default();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    all.insert("a".into(), AMQPValue::LongInt(1));
    all.insert("b".into(), AMQPValue::LongString("x".into()));
    let mut any = all.clone();
    any.insert("x-match".into(), AMQPValue::LongString("any".into()));
    bind(&ch, &qa, "amq.headers", "", all).await;
    bind(&ch, &qb, "amq.headers", "", any).await;
    let headers = |pairs: &[(&str, AMQPValue)]| {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(t)
    };
    publish_with(
        &ch,
        "amq.headers",
        "",
        b"both",
        headers(&[
            ("a", AMQPValue::ShortShortUInt(1)),
            ("b", AMQPValue::LongString("x".into())),
        ]),
    )
    .await;
    publish_with(
        &ch,
        "amq.headers",
        "",
        b"one",
        headers(&[("a", AMQPValue::LongInt(1))]),
    )
    .await;
    publish_with(
        &ch,
        "amq.headers",
        "",
        b"none",
        headers(&[("c", AMQPValue::LongInt(1))]),
    )
    .await;
    assert_eq!(drain(&ch, &qa).await, ["both"]);
    assert_eq!(drain(&ch, &qb).await, ["both", "one"]);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_terminate_on_cycles() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (x1, x2) = (name("x1"), name("x2"));
    for x in [&x1, &x2] {
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.exchange_bind(
        x2.as_str().into(),
        x1.as_str().into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        x1.as_str().into(),
        x2.as_str().into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = queue(&ch).await;
    bind(&ch, &q, &x2, "", FieldTable::default()).await;
    publish(&ch, &x1, "", b"via-e2e").await;
    assert_eq!(drain(&ch, &q).await, ["via-e2e"]);
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (main, ae) = (name("main"), name("ae"));
    ch.exchange_declare(
        ae.as_str().into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(ae.as_str().into()),
    );
    ch.exchange_declare(
        main.as_str().into(),
        ExchangeKind::Direct,
        Default::default(),
        args,
    )
    .await
    .unwrap();
    let (routed, spare) = (queue(&ch).await, queue(&ch).await);
    bind(&ch, &routed, &main, "k", FieldTable::default()).await;
    bind(&ch, &spare, &ae, "", FieldTable::default()).await;
    publish(&ch, &main, "k", b"routed").await;
    publish(&ch, &main, "other", b"spare").await;
    assert_eq!(drain(&ch, &routed).await, ["routed"]);
    assert_eq!(drain(&ch, &spare).await, ["spare"]);
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_its_confirm() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = publish_mandatory(&ch, "nowhere", b"back").await;
    assert!(confirm.is_ack());
    let returned = confirm.take_message().expect("the message comes back");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.data, b"back");
}

#[tokio::test]
async fn consumers_get_messages_round_robin() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    let mut c1 = ch
        .basic_consume(
            q.as_str().into(),
            "c1".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut c2 = ch
        .basic_consume(
            q.as_str().into(),
            "c2".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut got1 = vec![];
    let mut got2 = vec![];
    for _ in 0..2 {
        got1.push(String::from_utf8(c1.next().await.unwrap().unwrap().data).unwrap());
        got2.push(String::from_utf8(c2.next().await.unwrap().unwrap().data).unwrap());
    }
    assert_eq!(got1, ["m0", "m2"]);
    assert_eq!(got2, ["m1", "m3"]);
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries_per_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    for i in 0..5 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut c = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d1 = c.next().await.unwrap().unwrap();
    let _d2 = c.next().await.unwrap().unwrap();
    // Two are out and unacked: the third must wait for an ack.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.next())
            .await
            .is_err()
    );
    assert_eq!(ready(&ch, &q).await, 3);
    d1.ack(BasicAckOptions::default()).await.unwrap();
    let d3 = tokio::time::timeout(WAIT, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d3.data, b"m2");
}

#[tokio::test]
async fn nack_and_reject_requeue_in_place_with_redelivered() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    for m in ["a", "b", "c"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    let a = ch
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    let b_ = ch
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_.message_count, 1);
    b_.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    a.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let mut again = vec![];
    while let Some(m) = ch
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
    {
        again.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
        m.delivery.ack(Default::default()).await.unwrap();
    }
    assert_eq!(
        again,
        [("a".into(), true), ("b".into(), true), ("c".into(), false)]
    );
}

#[tokio::test]
async fn nack_without_requeue_drops_and_multiple_settles_up_to_the_tag() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    for m in ["a", "b", "c"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    let mut c = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..3 {
        last = Some(c.next().await.unwrap().unwrap());
    }
    last.unwrap()
        .nack(BasicNackOptions {
            multiple: true,
            requeue: false,
        })
        .await
        .unwrap();
    ch.basic_cancel("c".into(), Default::default())
        .await
        .unwrap();
    assert!(drain(&ch, &q).await.is_empty());
}

#[tokio::test]
async fn unacked_messages_return_when_the_channel_closes() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let ch1 = conn.create_channel().await.unwrap();
    let q = name("q");
    ch1.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    publish(&ch1, "", &q, b"m").await;
    let got = ch1
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    assert!(!got.delivery.redelivered);
    ch1.close(200, "bye".into()).await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let again = ch2
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"m");
}

/// Channel 1 consumes `qa` as "x" (acking). Then, in one write, so that Warren handles all
/// of it before any queue event that `on_ch2` causes: `on_ch2`'s frames on channel 2, and
/// channel 1 closes, reopens and consumes `qb` as "x" with no-ack. (RabbitMQ answers a
/// channel.open pipelined behind that channel's close with 504 or not, depending on
/// timing; Warren accepts it, so these are Warren's own tests.) Returns the client, `qa`
/// and `qb`.
async fn retag_behind(
    b: &TestBroker,
    on_ch2: impl FnOnce(&mut bytes::BytesMut, &str),
) -> (Raw, String, String) {
    use amq_protocol::protocol::{AMQPClass, basic, channel};
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    let (qa, qb) = (name("qa"), name("qb"));
    for q in [&qa, &qb] {
        raw.send(1, exclusive_queue(q, false)).await;
        raw.expect_method().await;
    }
    let consume = |q: &str, no_ack: bool| {
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.into(),
            consumer_tag: "x".into(),
            no_ack,
            ..Default::default()
        }))
    };
    raw.send(1, consume(&qa, false)).await;
    assert!(matches!(
        raw.expect_method().await,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
    ));
    let mut out = bytes::BytesMut::new();
    on_ch2(&mut out, &qa);
    let close = channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    let close = AMQPClass::Channel(channel::AMQPMethod::Close(close));
    warren::protocol::write_method(&mut out, 1, &close);
    let open = AMQPClass::Channel(channel::AMQPMethod::Open(Default::default()));
    warren::protocol::write_method(&mut out, 1, &open);
    warren::protocol::write_method(&mut out, 1, &consume(&qb, true));
    raw.send_raw(&out).await;
    (raw, qa, qb)
}

fn exclusive_queue(q: &str, passive: bool) -> amq_protocol::protocol::AMQPClass {
    use amq_protocol::protocol::{AMQPClass, queue};
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: q.into(),
        passive,
        exclusive: true,
        ..Default::default()
    }))
}

fn raw_publish(out: &mut bytes::BytesMut, ch: u16, key: &str, body: &[u8]) {
    use amq_protocol::protocol::{AMQPClass, basic};
    let publish = basic::Publish {
        routing_key: key.into(),
        ..Default::default()
    };
    warren::protocol::write_method(
        out,
        ch,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
    );
    let props = warren::protocol::encode_properties(&Default::default());
    warren::protocol::write_content(out, ch, &props, body, 131072);
}

/// A delivery still in the connection's inbox belongs to the consumer it was made for,
/// not to whichever consumer holds the same tag by the time it is written: the message
/// published to `qa` must stay `qa`'s (handed to the new no-ack "x" it would be gone).
#[tokio::test]
async fn a_delivery_in_flight_is_not_handed_to_a_new_consumer_with_the_same_tag() {
    use amq_protocol::protocol::{AMQPClass, basic, queue};
    let b = TestBroker::start().await;
    let (mut raw, qa, _qb) = retag_behind(&b, |out, qa| raw_publish(out, 2, qa, b"for qa")).await;
    // The message goes back to qa (the closed channel's consumer never had it written),
    // and nothing reaches the new consumer.
    let mut ready = 0;
    for _ in 0..100 {
        raw.send(2, exclusive_queue(&qa, true)).await;
        loop {
            match raw.expect_method().await {
                AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => {
                    ready = ok.message_count;
                    break;
                }
                AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                    panic!("qa's message was delivered to the new consumer: {d:?}")
                }
                _ => {}
            }
        }
        if ready == 1 {
            break;
        }
    }
    assert_eq!(ready, 1, "qa's message never came back");
}

/// Likewise a cancellation in flight: deleting `qa` cancels its consumer "x", and that
/// notice must not take down the new "x" on `qb`, which still gets `qb`'s messages.
#[tokio::test]
async fn a_cancel_in_flight_leaves_a_new_consumer_with_the_same_tag_alone() {
    use amq_protocol::protocol::{AMQPClass, basic, queue};
    let b = TestBroker::start().await;
    let (mut raw, _qa, qb) = retag_behind(&b, |out, qa| {
        let delete = queue::Delete {
            queue: qa.into(),
            ..Default::default()
        };
        let delete = AMQPClass::Queue(queue::AMQPMethod::Delete(delete));
        warren::protocol::write_method(out, 2, &delete);
    })
    .await;
    let mut out = bytes::BytesMut::new();
    raw_publish(&mut out, 2, &qb, b"for qb");
    raw.send_raw(&out).await;
    loop {
        match raw.next_method().await {
            Some(AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                assert_eq!(
                    (d.consumer_tag.as_str(), d.routing_key.as_str()),
                    ("x", qb.as_str())
                );
                break;
            }
            Some(_) => {}
            None => panic!("the new consumer never got qb's message"),
        }
    }
}

/// A consumer that stops reading its socket stops taking messages: the queue keeps them
/// (and pages them within its budget) instead of the broker moving them all into that
/// connection's output buffer or inbox. Once the consumer reads again, every message
/// arrives.
#[tokio::test]
async fn a_no_ack_consumer_that_does_not_read_leaves_its_messages_queued() {
    stalled_consumer_leaves_messages_queued(true).await;
}

/// As above for an acking consumer with no prefetch limit: nothing bounds its unacked
/// deliveries, but its queue still only pushes a window ahead of what its connection wrote.
#[tokio::test]
async fn an_unlimited_acking_consumer_that_does_not_read_leaves_its_messages_queued() {
    stalled_consumer_leaves_messages_queued(false).await;
}

/// With large bodies the window is bytes, not deliveries: 2,000 deliveries of 64 KiB would
/// be 125 MiB pushed to a connection that does not read. Here at most a few MiB are (the
/// 2 MiB window, the connection's 1 MiB write backlog and the kernel's socket buffers).
#[tokio::test]
async fn a_stalled_consumer_of_large_messages_is_pushed_a_few_mib_at_most() {
    let pushed = stalled_consumer_leaves_messages_queued_with(true, 64 * 1024, 300).await;
    let mib = pushed as f64 * 64.0 / 1024.0;
    eprintln!("{pushed} deliveries of 64 KiB ({mib:.1} MiB) pushed");
    assert!(
        mib <= 10.0,
        "{pushed} deliveries of 64 KiB ({mib:.1} MiB) pushed"
    );
}

async fn stalled_consumer_leaves_messages_queued(no_ack: bool) {
    stalled_consumer_leaves_messages_queued_with(no_ack, 1024, 30_000).await;
}

/// Publishes `n` messages of `size` bytes to a queue whose consumer does not read, checks
/// that at least half stay queued and that all arrive once it reads; returns how many had
/// been pushed towards the consumer when publishing ended.
async fn stalled_consumer_leaves_messages_queued_with(no_ack: bool, size: usize, n: u32) -> u32 {
    use amq_protocol::protocol::{AMQPClass, basic};
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("stalled");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut raw = Raw::open_small_window(b.addr).await;
    raw.open_channel(1).await;
    let consume = basic::Consume {
        queue: q.as_str().into(),
        consumer_tag: "stalled".into(),
        no_ack,
        ..Default::default()
    };
    raw.send(1, AMQPClass::Basic(basic::AMQPMethod::Consume(consume)))
        .await;
    assert!(matches!(
        raw.expect_method().await,
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
    ));
    // From here the raw client reads nothing until every message is published.
    let body = vec![b'm'; size];
    for _ in 0..n {
        publish(&ch, "", &q, &body).await;
    }
    // Answered after every publish above (one channel keeps order). 1 MiB of backlog, the
    // kernel's socket buffers and the 2,000-delivery window hold a few thousand messages
    // at most; without the bound the queue would be empty.
    let left = ready(&ch, &q).await;
    assert!(left >= n / 2, "only {left} of {n} left in the queue");
    let mut delivered = 0;
    while delivered < n {
        match raw.expect_method().await {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(_)) => delivered += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    n - left
}

#[tokio::test]
async fn recover_redelivers_everything_unacked() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    publish(&ch, "", &q, b"m").await;
    let mut c = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = c.next().await.unwrap().unwrap();
    assert!(!first.redelivered);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let second = c.next().await.unwrap().unwrap();
    assert!(second.redelivered);
    assert!(second.delivery_tag > first.delivery_tag);
}

#[tokio::test]
async fn purge_and_delete_report_message_counts() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    for _ in 0..3 {
        publish(&ch, "", &q, b"m").await;
    }
    assert_eq!(
        ch.queue_purge(q.as_str().into(), Default::default())
            .await
            .unwrap(),
        3
    );
    publish(&ch, "", &q, b"m").await;
    assert_eq!(
        ch.queue_delete(q.as_str().into(), Default::default())
            .await
            .unwrap(),
        1
    );
    // Deleting again is fine (RabbitMQ treats delete as an assertion).
    assert_eq!(
        ch.queue_delete(q.as_str().into(), Default::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("ad");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel("c".into(), Default::default())
        .await
        .unwrap();
    let e = passive_declare(&ch, &q).await.unwrap_err();
    assert_eq!(code(&e), 404);
}

#[tokio::test]
async fn exclusive_queue_is_gone_with_its_connection() {
    let b = TestBroker::start().await;
    let (c1, ch1) = b.channel().await;
    let q = name("ex");
    ch1.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_c2, ch2) = b.channel().await;
    let e = ch2
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 405);
    c1.close(200, "bye".into()).await.unwrap();
    let ch3 = _c2.create_channel().await.unwrap();
    let e = passive_declare(&ch3, &q).await.unwrap_err();
    assert_eq!(code(&e), 404);
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = name("del");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut c = ch
        .basic_consume(
            q.as_str().into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c2, other) = b.channel().await;
    other
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
    // lapin ends the consumer stream when the server cancels it.
    assert!(
        tokio::time::timeout(WAIT, c.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn confirms_ack_every_publish_routed_or_not() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut pending = vec![];
    for i in 0..100 {
        let key = if i % 2 == 0 { q.as_str() } else { "nowhere" };
        pending.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                Default::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    assert_eq!(drain(&ch, &q).await.len(), 50);
}

#[tokio::test]
async fn transactions_apply_publishes_and_acks_at_commit_only() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let (_c2, observer) = b.channel().await;
    let q = name("tx");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    publish(&ch, "", &q, b"before").await;
    ch.tx_select().await.unwrap();
    let got = ch
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    got.delivery.ack(Default::default()).await.unwrap();
    publish(&ch, "", &q, b"rolled-back").await;
    ch.tx_rollback().await.unwrap();
    publish(&ch, "", &q, b"committed").await;
    assert_eq!(ready(&observer, &q).await, 0);
    // The rolled-back ack left the delivery outstanding: ack it again, for real this time.
    ch.basic_ack(got.delivery.delivery_tag, Default::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    assert_eq!(drain(&observer, &q).await, ["committed"]);
}

#[tokio::test]
async fn confirm_and_tx_exclude_each_other() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    ch.tx_select().await.unwrap();
    let e = ch.confirm_select(Default::default()).await.unwrap_err();
    assert_eq!(code(&e), 406);
}

#[tokio::test]
async fn large_bodies_are_split_and_reassembled() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &q, &body).await;
    publish(&ch, "", &q, b"").await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.data, body);
    let empty = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert!(empty.delivery.data.is_empty());
}

#[tokio::test]
async fn properties_survive_the_round_trip() {
    let b = TestBroker::start().await;
    let (_c, ch) = b.channel().await;
    let q = queue(&ch).await;
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("text/plain"))
        .with_correlation_id("abc".into())
        .with_priority(3)
        .with_delivery_mode(2);
    publish_with(&ch, "", &q, b"p", props.clone()).await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.properties, props);
}
