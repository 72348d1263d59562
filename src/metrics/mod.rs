//! The Prometheus endpoint: `/metrics` and `/metrics/per-object` on `[prometheus] listener`
//! (127.0.0.1:15692), with the family names and labels of RabbitMQ's `rabbitmq_prometheus`
//! plugin, so dashboards made for RabbitMQ (its Grafana "RabbitMQ-Overview") read Warren.
//!
//! Everything is read at scrape time from what the broker keeps anyway: the channels'
//! message counters (`crate::broker::counters`, summed with the retired ones by the
//! connection registry), each queue's live figures (one short lock per queue), the object
//! counts and the resource alarms' readings. Nothing is counted for metrics on the hot path
//! beyond the channels' own counters. `/metrics` aggregates queue figures as the plugin
//! does by default (no per-queue labels, so its size does not grow with queues);
//! `/metrics/per-object` adds one series per queue, labelled `vhost` and `queue`.
//!
//! The text exposition format (0.0.4) is written by the `prometheus` crate's encoder; the
//! families are built here per scrape. Talks to `crate::broker` and `crate::alarms`;
//! nothing talks to it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::broker::counters::count;
use crate::broker::stats::fig;

/// The content type of the text format.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Families under construction, in the order they are added.
struct Families(Vec<MetricFamily>);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).into());
            l.set_value((*v).into());
            l
        })
        .collect()
}

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help(help.into());
        f.set_field_type(kind);
        self.0.push(f);
        self.0.last_mut().expect("just pushed")
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauges(name, help, [(Vec::new(), value)]);
    }

    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<LabelPair>, f64)>,
    ) {
        let f = self.family(name, help, MetricType::GAUGE);
        for (l, v) in series {
            let mut g = Gauge::default();
            g.set_value(v);
            let mut m = Metric::from_label(l);
            m.set_gauge(g);
            f.mut_metric().push(m);
        }
    }

    fn counter(&mut self, name: &str, help: &str, l: Vec<LabelPair>, value: u64) {
        self.counters(name, help, [(l, value)]);
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<LabelPair>, u64)>,
    ) {
        let f = self.family(name, help, MetricType::COUNTER);
        for (l, v) in series {
            let mut c = Counter::default();
            c.set_value(v as f64);
            let mut m = Metric::from_label(l);
            m.set_counter(c);
            f.mut_metric().push(m);
        }
    }

    fn untyped(&mut self, name: &str, help: &str, l: Vec<LabelPair>, value: f64) {
        // The plugin exposes its info and alarm families untyped; a gauge reads the same.
        self.gauges(name, help, [(l, value)]);
    }

    fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.0, &mut out) {
            tracing::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// One queue's figures, read at scrape time.
struct QueueRow {
    vhost: String,
    name: Arc<str>,
    figures: crate::broker::stats::Figures,
    consumers: u32,
}

fn queue_rows(broker: &Broker) -> Vec<QueueRow> {
    let mut rows = Vec::new();
    for v in broker.vhosts() {
        v.for_each_queue(|q| {
            let (figures, consumers) = q.figures();
            rows.push(QueueRow {
                vhost: v.name.clone(),
                name: q.name.clone(),
                figures,
                consumers,
            });
        });
    }
    rows
}

/// The text of `/metrics` (`per_object` false) or `/metrics/per-object`. Blocking work
/// (a short lock per queue and per channel): off the reactor.
pub fn render(broker: &Broker, node: &str, per_object: bool) -> String {
    let mut f = Families(Vec::new());
    let rows = queue_rows(broker);
    let conns = broker.connections.list();
    let channels: u64 = conns.iter().map(|c| u64::from(c.channel_count())).sum();
    let consumers: u64 = rows.iter().map(|r| u64::from(r.consumers)).sum();
    let totals = &broker.connections.totals;
    let relaxed = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);

    f.untyped(
        "rabbitmq_build_info",
        "RabbitMQ & Erlang/OTP version info",
        labels(&[
            ("rabbitmq_version", crate::RABBITMQ_VERSION),
            ("product_version", env!("CARGO_PKG_VERSION")),
            ("product_name", "Warren"),
        ]),
        1.0,
    );
    f.untyped(
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        labels(&[("rabbitmq_node", node), ("rabbitmq_cluster", node)]),
        1.0,
    );

    // Resources and alarms.
    let r = broker.alarms.readings();
    f.gauge(
        "rabbitmq_process_resident_memory_bytes",
        "Memory used in bytes",
        crate::alarms::resident_memory() as f64,
    );
    f.gauge(
        "rabbitmq_resident_memory_limit_bytes",
        "Memory high watermark in bytes",
        r.mem_limit as f64,
    );
    // u64::MAX stands for "could not be read": no sample is better than a false one.
    if r.disk_free != u64::MAX {
        f.gauge(
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            r.disk_free as f64,
        );
    }
    f.gauge(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        r.disk_free_limit as f64,
    );
    if let Some(fds) = open_fds() {
        f.gauge(
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            fds as f64,
        );
    }
    let alarm = |bit| f64::from(u8::from(r.raised & bit != 0));
    f.untyped(
        "rabbitmq_alarms_file_descriptor_limit",
        "is 1 if file descriptor limit alarm is in effect",
        Vec::new(),
        0.0,
    );
    f.untyped(
        "rabbitmq_alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        Vec::new(),
        alarm(crate::alarms::DISK),
    );
    f.untyped(
        "rabbitmq_alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        Vec::new(),
        alarm(crate::alarms::MEMORY),
    );

    // Object counts.
    f.gauge(
        "rabbitmq_connections",
        "Connections currently open",
        conns.len() as f64,
    );
    f.gauge(
        "rabbitmq_channels",
        "Channels currently open",
        channels as f64,
    );
    f.gauge(
        "rabbitmq_consumers",
        "Consumers currently connected",
        consumers as f64,
    );
    f.gauge("rabbitmq_queues", "Queues available", rows.len() as f64);
    for (name, help, v) in [
        (
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
            &totals.connections_opened,
        ),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
            &totals.connections_closed,
        ),
        (
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
            &totals.channels_opened,
        ),
        (
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
            &totals.channels_closed,
        ),
    ] {
        f.counter(name, help, Vec::new(), relaxed(v));
    }

    // Queue figures: summed here, per queue on /metrics/per-object.
    let queue_families: [(&str, &str, usize); 3] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            fig::READY,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            fig::UNACKED,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            fig::MESSAGES,
        ),
    ];
    for (name, help, i) in queue_families {
        if per_object {
            f.gauges(
                name,
                help,
                rows.iter()
                    .map(|q| (queue_labels(q), q.figures.0[i] as f64)),
            );
        } else {
            let sum: u64 = rows.iter().map(|q| q.figures.0[i]).sum();
            f.gauge(name, help, sum as f64);
        }
    }
    if per_object {
        f.gauges(
            "rabbitmq_queue_consumers",
            "Consumers on a queue",
            rows.iter()
                .map(|q| (queue_labels(q), f64::from(q.consumers))),
        );
        f.counters(
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
            rows.iter()
                .map(|q| (queue_labels(q), q.figures.0[fig::PUBLISH])),
        );
    } else {
        f.gauge(
            "rabbitmq_queue_consumers",
            "Consumers on a queue",
            consumers as f64,
        );
    }

    // The channels' message counters, RabbitMQ's global_* families.
    let c = broker.connections.message_counts();
    let proto = || labels(&[("protocol", "amqp091")]);
    let global: [(&str, &str, u64); 14] = [
        (
            "received",
            "Total number of messages received from publishers",
            c.0[count::RECEIVED],
        ),
        (
            "received_confirm",
            "Total number of messages received from publishers expecting confirmations",
            c.0[count::RECEIVED_CONFIRM],
        ),
        (
            "routed",
            "Total number of messages routed to queues or streams",
            c.0[count::ROUTED],
        ),
        (
            "unroutable_dropped",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            c.0[count::UNROUTABLE_DROPPED],
        ),
        (
            "unroutable_returned",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            c.0[count::UNROUTABLE_RETURNED],
        ),
        (
            "confirmed",
            "Total number of messages confirmed to publishers",
            c.0[count::CONFIRMED],
        ),
        (
            "delivered",
            "Total number of messages delivered to consumers",
            c.delivered(),
        ),
        (
            "delivered_consume_manual_ack",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            c.0[count::DELIVERED_CONSUME_MANUAL_ACK],
        ),
        (
            "delivered_consume_auto_ack",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            c.0[count::DELIVERED_CONSUME_AUTO_ACK],
        ),
        (
            "delivered_get_manual_ack",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            c.0[count::DELIVERED_GET_MANUAL_ACK],
        ),
        (
            "delivered_get_auto_ack",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            c.0[count::DELIVERED_GET_AUTO_ACK],
        ),
        (
            "get_empty",
            "Total number of times basic.get operations fetched no message",
            c.0[count::GET_EMPTY],
        ),
        (
            "redelivered",
            "Total number of messages redelivered to consumers",
            c.0[count::REDELIVERED],
        ),
        (
            "acknowledged",
            "Total number of messages acknowledged by consumers",
            c.0[count::ACKNOWLEDGED],
        ),
    ];
    for (what, help, v) in global {
        f.counter(
            &format!("rabbitmq_global_messages_{what}_total"),
            help,
            proto(),
            v,
        );
    }
    f.gauges(
        "rabbitmq_global_consumers",
        "Current number of consumers",
        [(proto(), consumers as f64)],
    );
    f.encode()
}

fn queue_labels(q: &QueueRow) -> Vec<LabelPair> {
    labels(&[("vhost", &q.vhost), ("queue", &q.name)])
}

/// Open file descriptors of this process (`/proc/self/fd`), where there is such a thing.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// What the handlers share.
#[derive(Clone)]
struct Scrape {
    broker: Arc<Broker>,
    node: Arc<str>,
}

async fn scrape(s: &Scrape, per_object: bool) -> Response {
    let (b, node) = (s.broker.clone(), s.node.clone());
    match tokio::task::spawn_blocking(move || render(&b, &node, per_object)).await {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(s): State<Scrape>) -> Response {
    scrape(&s, false).await
}

async fn metrics_per_object(State(s): State<Scrape>) -> Response {
    scrape(&s, true).await
}

/// Binds the metrics listener (before the broker opens its stores, so a port in use fails
/// the boot at once, as the other listeners do).
///
/// # Errors
/// The bind error, naming the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (prometheus): {e}"),
        )
    })
}

/// Serves `/metrics` and `/metrics/per-object` on `listener` until `stop` resolves; `node`
/// is the node name the identity family carries (the management API's).
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    node: Arc<str>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics_per_object))
        .with_state(Scrape { broker, node });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("prometheus endpoint stopped: {e}");
    }
}
