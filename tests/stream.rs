//! Stream queues (`x-queue-type: stream`) against a real broker, driven by lapin: confirmed
//! publishes read back by several consumers from `first` with their offsets, a consumer at
//! the tail woken by new data, acks that remove nothing, deletion that removes the log,
//! and kill -9 with every confirmed message and its offset intact. The full RabbitMQ rule
//! set (declare texts, offsets, refusals) is in conformance/python/scenarios/test_stream_*.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Consumer};

fn stream_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    t
}

async fn declare_stream(ch: &Channel, q: &str) -> lapin::Queue {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        stream_args(),
    )
    .await
    .unwrap()
}

/// Publishes `bodies` with confirms, at most 256 unconfirmed at a time; every one is acked.
async fn publish_confirmed(ch: &Channel, q: &str, bodies: impl IntoIterator<Item = String>) {
    ch.confirm_select(Default::default()).await.unwrap();
    let mut pending = VecDeque::new();
    for body in bodies {
        let c = ch
            .basic_publish(
                "".into(),
                q.into(),
                Default::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        pending.push_back(c);
        if pending.len() >= 256 {
            assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
}

async fn consume_from(ch: &Channel, q: &str, offset: AMQPValue, prefetch: u16) -> Consumer {
    ch.basic_qos(prefetch, Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    ch.basic_consume(
        q.into(),
        name("c").as_str().into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .unwrap()
}

/// The next `n` deliveries as (offset header, body), each acked.
async fn take(c: &mut Consumer, n: usize) -> Vec<(i64, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("a delivery within 20 s")
            .expect("the consumer is open")
            .unwrap();
        assert!(!d.redelivered);
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(n)) => n,
            other => panic!("x-stream-offset is a long, got {other:?}"),
        };
        got.push((offset, String::from_utf8(d.data.clone()).unwrap()));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    got
}

fn numbered(range: std::ops::Range<usize>) -> Vec<(i64, String)> {
    range.map(|i| (i as i64, format!("m{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_reads_everything_with_offsets_and_the_tail_wakes_them() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    let q = name("st");
    declare_stream(&ch, &q).await;
    let n = 2000;
    publish_confirmed(&ch, &q, (0..n).map(|i| format!("m{i}"))).await;

    // Two consumers on different connections, small prefetches: each reads all of it.
    let (_c1, ch1) = b.channel().await;
    let (_c2, ch2) = b.channel().await;
    let mut a = consume_from(&ch1, &q, AMQPValue::LongString("first".into()), 10).await;
    let mut z = consume_from(&ch2, &q, AMQPValue::LongString("first".into()), 1).await;
    assert_eq!(take(&mut a, n).await, numbered(0..n));
    assert_eq!(take(&mut z, n).await, numbered(0..n));
    // A third from a numeric offset, another at the tail (`next`).
    let (_c3, ch3) = b.channel().await;
    let mut mid = consume_from(&ch3, &q, AMQPValue::LongLongInt(1990), 100).await;
    assert_eq!(take(&mut mid, 10).await, numbered(1990..n));
    let (_c4, ch4) = b.channel().await;
    let mut tail = consume_from(&ch4, &q, AMQPValue::LongString("next".into()), 100).await;

    // New data wakes all of them; acks removed nothing.
    let (_pc, pch) = b.channel().await;
    publish_confirmed(&pch, &q, (n..n + 5).map(|i| format!("m{i}"))).await;
    for c in [&mut a, &mut z, &mut mid, &mut tail] {
        assert_eq!(take(c, 5).await, numbered(n..n + 5));
    }
    let (_c5, ch5) = b.channel().await;
    let q2 = passive_declare(&ch5, &q).await.unwrap();
    assert_eq!(q2.message_count() as usize, n + 5);
    // RabbitMQ's declare-ok says 0 consumers for a stream, whatever is attached.
    assert_eq!(q2.consumer_count(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_stream_cancels_its_consumers_and_removes_its_log() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    let q = name("st");
    declare_stream(&ch, &q).await;
    publish_confirmed(&ch, &q, (0..10).map(|i| format!("m{i}"))).await;
    let streams = b._dir.path().join("streams");
    let dirs = || std::fs::read_dir(&streams).map_or(0, |d| d.count());
    assert_eq!(dirs(), 1);
    let (_c1, ch1) = b.channel().await;
    let mut c = consume_from(&ch1, &q, AMQPValue::LongString("first".into()), 100).await;
    assert_eq!(take(&mut c, 10).await, numbered(0..10));
    // if-unused and if-empty do not keep a stream, as in RabbitMQ.
    let (_c2, ch2) = b.channel().await;
    let n = ch2
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    // The consumer is cancelled by the server: its stream of deliveries ends.
    let end = tokio::time::timeout(Duration::from_secs(10), c.next()).await;
    assert!(matches!(end, Ok(None)), "consumer cancelled, got {end:?}");
    assert_eq!(dirs(), 0);
    assert_eq!(code(&passive_declare(&ch2, &q).await.unwrap_err()), 404);
    // Declared again, it starts empty at offset 0.
    let (_c3, ch3) = b.channel().await;
    declare_stream(&ch3, &q).await;
    publish_confirmed(&ch3, &q, ["again".to_string()]).await;
    let (_c4, ch4) = b.channel().await;
    let mut c = consume_from(&ch4, &q, AMQPValue::LongString("first".into()), 100).await;
    assert_eq!(take(&mut c, 1).await, vec![(0, "again".into())]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stream_messages_and_their_offsets_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let q = "st-kill";
    let confirmed = 3000;
    {
        let b = BinBroker::start(dir.path());
        let (_conn, ch) = b.channel().await;
        declare_stream(&ch, q).await;
        publish_confirmed(&ch, q, (0..confirmed).map(|i| format!("m{i}"))).await;
        // More in flight, unconfirmed, as the broker dies.
        for i in confirmed..confirmed + 500 {
            let _ = ch
                .basic_publish(
                    "".into(),
                    q.into(),
                    Default::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await;
        }
        b.kill9();
    }
    // A log no definition owns (left by a crash during a delete) is removed at boot.
    let orphan = dir.path().join("streams").join("orphan");
    std::fs::create_dir_all(&orphan).unwrap();
    let b = BinBroker::start(dir.path());
    let (_conn, ch) = b.channel().await;
    let kept = passive_declare(&ch, q).await.unwrap().message_count() as usize;
    // Connections are served once recovery is over.
    assert!(!orphan.exists());
    assert!(kept >= confirmed, "{kept} kept of {confirmed} confirmed");
    let mut c = consume_from(&ch, q, AMQPValue::LongString("first".into()), 500).await;
    // Offsets are what they were: message i at offset i, for everything kept.
    assert_eq!(take(&mut c, kept).await, numbered(0..kept));
    // The log goes on after the last record kept; no offset is reused.
    let (_pc, pch) = b.channel().await;
    publish_confirmed(&pch, q, ["after".to_string()]).await;
    assert_eq!(take(&mut c, 1).await, vec![(kept as i64, "after".into())]);
    b.stop();
}
