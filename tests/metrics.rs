//! The Prometheus endpoint against a real broker on 127.0.0.1:0: lapin traffic of every
//! kind the global counters count, then a real HTTP scrape of `/metrics` and
//! `/metrics/per-object`, parsed, with RabbitMQ's family names and the counts the traffic
//! must have produced; counts survive their channels and connections closing.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::{TestBroker, WAIT, name};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` (HTTP/1.1, `Connection: close`); returns the content type and the body.
async fn scrape(at: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (ctype, body.to_string())
}

/// Samples by their full series name (`name{labels}`), and the `# TYPE` of each family.
fn parse(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let (mut samples, mut types) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (n, k) = t.split_once(' ').unwrap();
            types.insert(n.to_string(), k.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, v) = line.rsplit_once(' ').unwrap();
            samples.insert(series.to_string(), v.parse().unwrap());
        }
    }
    (samples, types)
}

async fn publish(ch: &Channel, rk: &str, mandatory: bool) {
    let confirm = ch
        .basic_publish(
            "".into(),
            rk.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
}

#[tokio::test]
async fn metrics_count_the_traffic_under_rabbitmq_family_names() {
    let tb = TestBroker::start_with_management().await;
    let at = tb.metrics.unwrap();
    let q = name("prom");
    {
        let (_c, ch) = tb.channel().await;
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for _ in 0..5 {
            publish(&ch, &q, false).await;
        }
        publish(&ch, "nowhere", false).await;
        publish(&ch, "nowhere", true).await;
        // Two gets (one acked, one no-ack), then an empty one after the consumer drains.
        let g = ch
            .basic_get(q.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        g.ack(BasicAckOptions::default()).await.unwrap();
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Three deliveries; the first is nacked back and comes again, redelivered.
        let mut first = true;
        let mut acked = 0;
        while acked < 3 {
            let d = tokio::time::timeout(WAIT, consumer.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if first {
                first = false;
                d.nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
                continue;
            }
            d.ack(BasicAckOptions::default()).await.unwrap();
            acked += 1;
        }
        assert!(
            ch.basic_get(q.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap()
                .is_none()
        );
        // The connection closes here: its counts must outlive it.
    }
    let (_open, _och) = tb.channel().await;
    let (ctype, text) = scrape(at, "/metrics").await;
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let (s, types) = parse(&text);
    let global =
        |what: &str| s[&format!("rabbitmq_global_messages_{what}_total{{protocol=\"amqp091\"}}")];
    assert_eq!(global("received"), 7.0);
    assert_eq!(global("received_confirm"), 7.0);
    assert_eq!(global("routed"), 5.0);
    assert_eq!(global("unroutable_dropped"), 1.0);
    assert_eq!(global("unroutable_returned"), 1.0);
    assert_eq!(global("confirmed"), 7.0);
    assert_eq!(global("delivered_get_manual_ack"), 1.0);
    assert_eq!(global("delivered_get_auto_ack"), 1.0);
    assert_eq!(global("delivered_consume_manual_ack"), 4.0);
    assert_eq!(global("delivered"), 6.0);
    assert_eq!(global("redelivered"), 1.0);
    assert_eq!(global("acknowledged"), 4.0);
    assert_eq!(global("get_empty"), 1.0);
    assert_eq!(types["rabbitmq_global_messages_received_total"], "counter");
    for (family, v) in [
        ("rabbitmq_connections", 1.0),
        ("rabbitmq_channels", 1.0),
        ("rabbitmq_queues", 1.0),
        ("rabbitmq_consumers", 0.0),
        ("rabbitmq_queue_messages", 0.0),
        ("rabbitmq_queue_messages_ready", 0.0),
        ("rabbitmq_queue_messages_unacked", 0.0),
        ("rabbitmq_connections_opened_total", 2.0),
        ("rabbitmq_connections_closed_total", 1.0),
        ("rabbitmq_alarms_memory_used_watermark", 0.0),
        ("rabbitmq_alarms_free_disk_space_watermark", 0.0),
    ] {
        assert_eq!(s[family], v, "{family}");
    }
    assert!(s["rabbitmq_process_resident_memory_bytes"] > 0.0);
    assert!(s["rabbitmq_disk_space_available_bytes"] > 0.0);
    assert_eq!(types["rabbitmq_queue_messages"], "gauge");

    // Per object: one series per queue, labelled as the plugin does.
    let (_o, och) = tb.channel().await;
    publish_plain(&och, &q).await;
    let (_, text) = scrape(at, "/metrics/per-object").await;
    let (s, _) = parse(&text);
    let series = |family: &str| s[&format!("{family}{{vhost=\"/\",queue=\"{q}\"}}")];
    assert_eq!(series("rabbitmq_queue_messages_ready"), 1.0);
    assert_eq!(series("rabbitmq_queue_messages"), 1.0);
    assert_eq!(series("rabbitmq_queue_consumers"), 0.0);
    assert_eq!(series("rabbitmq_queue_messages_published_total"), 6.0);

    // A raised alarm shows.
    tb.broker
        .alarms
        .set_memory_limit(warren::config::ResourceLimit::Absolute(
            warren::config::ByteSize(1),
        ));
    let (_, text) = scrape(at, "/metrics").await;
    assert_eq!(parse(&text).0["rabbitmq_alarms_memory_used_watermark"], 1.0);
}

async fn publish_plain(ch: &Channel, q: &str) {
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // A round trip behind the publish: it has been routed when this returns.
    common::ready(ch, q).await;
}
