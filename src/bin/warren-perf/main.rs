//! `warren-perf`: a load generator for AMQP 0-9-1 brokers (Warren, RabbitMQ), printing one
//! JSON summary line on stdout.
//!
//! Modes: steady (producers and consumers for `--warmup` + `--duration` seconds, figures
//! from after the warm-up), pre-fill then drain (`--prefill N`), and idle connections
//! (`--connections-idle N`), replay of an existing queue (`--replay N`: every consumer reads
//! N messages, as from a stream), and the machine's latency floor (`--latency-floor`, see
//! `floor`). `--delay-ms` publishes through a delayed-message exchange and measures each
//! delivery's lateness past its due time instead of its latency. The client is a lean pipelined one on raw tokio sockets, so it
//! is not the bottleneck; its own CPU time is reported so a reader can check.

mod client;
mod consumer;
mod floor;
mod producer;
mod stats;
mod transport;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::{AMQPClass, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use clap::Parser;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use client::{Conn, Res, Target};
use consumer::ConsumerCfg;
use producer::ProducerCfg;
use stats::Hist;

/// Load generator for AMQP 0-9-1 brokers; prints a JSON summary on stdout.
#[derive(Debug, Parser)]
#[command(name = "warren-perf", version)]
struct Args {
    /// Broker URI, e.g. amqp://guest:guest@127.0.0.1:5672/%2f (overrides --host/--port);
    /// amqps://... (default port 5671) connects over TLS and needs --cacert.
    #[arg(long)]
    uri: Option<String>,
    /// PEM file of the CA certificates that an amqps:// broker's certificate must chain to.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 5672)]
    port: u16,
    /// Number of producers (one connection each).
    #[arg(short = 'x', long, default_value_t = 1)]
    producers: usize,
    /// Number of consumers in total (one connection each), spread round-robin over queues.
    #[arg(short = 'y', long, default_value_t = 1)]
    consumers: usize,
    /// Body size in bytes (the first 8 carry the send timestamp when size >= 8).
    #[arg(short = 's', long, default_value_t = 16)]
    size: usize,
    /// Messages per second per producer; 0 = unlimited.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rate: f64,
    /// Publisher confirms: max unconfirmed in flight per producer; 0 = no confirms.
    #[arg(short = 'c', long, default_value_t = 0)]
    confirm: u64,
    /// Persistent messages (delivery-mode 2).
    #[arg(long)]
    persistent: bool,
    /// basic.qos prefetch count per consumer; 0 = unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    prefetch: u16,
    /// Consume with no-ack (auto-ack).
    #[arg(short = 'a', long)]
    auto_ack: bool,
    /// Without --auto-ack: ack every N deliveries with multiple=true.
    #[arg(long, default_value_t = 1)]
    ack_every: u64,
    /// Number of queues; with more than one, producers publish to a fanout exchange bound
    /// to all of them (unless --exchange-type says otherwise).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Exchange type to declare (direct, fanout, topic, headers); implies an exchange.
    #[arg(long)]
    exchange_type: Option<String>,
    /// Exchange name (declared unless it is an amq.* one); default: a per-run name.
    #[arg(long)]
    exchange: Option<String>,
    /// Routing key to publish with (default: the queue name via the default exchange, or
    /// "perf" with an exchange).
    #[arg(long)]
    routing_key: Option<String>,
    /// Binding key for the queues (default: the routing key).
    #[arg(long)]
    binding_key: Option<String>,
    /// Queue argument, repeatable: --queue-arg x-max-length=1000 (integers and true/false
    /// detected, otherwise a string).
    #[arg(long, value_name = "KEY=VALUE")]
    queue_arg: Vec<String>,
    /// Exchange argument, repeatable: --exchange-arg x-delayed-type=direct.
    #[arg(long, value_name = "KEY=VALUE")]
    exchange_arg: Vec<String>,
    /// basic.consume argument, repeatable: --consumer-arg x-stream-offset=first.
    #[arg(long, value_name = "KEY=VALUE")]
    consumer_arg: Vec<String>,
    /// Message header, repeatable: --header k=v.
    #[arg(long, value_name = "KEY=VALUE")]
    header: Vec<String>,
    /// Publish with an `x-delay` header of this many milliseconds (a delayed-message
    /// exchange holds each message that long); latency is then reported as lateness:
    /// delivery time minus publish time minus the delay.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Replay: no producers; every consumer reads N messages of the existing queue (a stream
    /// read with --consumer-arg x-stream-offset=first), and the broker's RSS is sampled
    /// throughout (peak reported).
    #[arg(long, default_value_t = 0)]
    replay: u64,
    /// Declare queues (and the exchange) durable.
    #[arg(long)]
    durable: bool,
    /// Queue name (with several queues, NAME-i); default: a per-run name.
    #[arg(long)]
    queue: Option<String>,
    /// Measured seconds (steady mode), or seconds to hold idle connections.
    #[arg(short = 'z', long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds, excluded from the figures.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Pre-fill then drain: publish N messages with no consumer, then start the consumers
    /// and measure the drain rate (with --consumers 0: just fill and report broker RSS).
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Give up a drain after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    drain_timeout: f64,
    /// Give up when confirms make no progress for this many seconds (memory alarm).
    #[arg(long, default_value_t = 30.0)]
    stall_timeout: f64,
    /// Seconds to wait after a pre-fill before reading the broker's RSS (then up to 60 s
    /// more until it stops moving).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Open N idle connections with one channel each, hold them --duration seconds, report.
    #[arg(long, default_value_t = 0)]
    connections_idle: usize,
    /// Broker process id(s) whose RSS and CPU time to report (summed), repeatable.
    #[arg(long)]
    broker_pid: Vec<u32>,
    /// Leave the queues and exchange in place.
    #[arg(long)]
    keep: bool,
    /// Runtime worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Free-form label copied into the JSON (e.g. the scenario name).
    #[arg(long)]
    label: Option<String>,
    /// Measure this machine's latency floor instead of a broker: the steady mode's pacing,
    /// --size and --rate through a relay process that does no work (no broker needed).
    #[arg(long)]
    latency_floor: bool,
    /// Internal: be the --latency-floor relay.
    #[arg(long, hide = true)]
    relay: bool,
}

/// State shared by the orchestrator and every producer and consumer task.
#[derive(Debug)]
pub struct Shared {
    /// Time base for the timestamps in message bodies.
    pub base: Instant,
    /// 0 warm-up, 1 measuring, 2 done.
    pub phase: AtomicU8,
    pub stop: AtomicBool,
    pub stop_tx: watch::Sender<bool>,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub returned: AtomicU64,
    pub consumed: AtomicU64,
    /// Deliveries that came before their due time (with --delay-ms).
    pub early: AtomicU64,
    /// The broker sent connection.blocked at some point.
    pub blocked: AtomicBool,
    /// A producer gave up waiting for confirms.
    pub stalled: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            phase: AtomicU8::new(0),
            stop: AtomicBool::new(false),
            stop_tx: watch::Sender::new(false),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            early: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Records an error for the summary (and says it on stderr).
    pub fn error(&self, e: String) {
        eprintln!("warren-perf: {e}");
        self.errors.lock().expect("errors lock").push(e);
    }

    fn has_errors(&self) -> bool {
        !self.errors.lock().expect("errors lock").is_empty()
    }

    fn stop_all(&self) {
        self.stop.store(true, Relaxed);
        self.stop_tx.send_replace(true);
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Snap {
    at: Instant,
    published: u64,
    confirmed: u64,
    consumed: u64,
    cpu_self: f64,
    cpu_broker: Option<f64>,
}

fn snap(shared: &Shared, pids: &[u32]) -> Snap {
    Snap {
        at: Instant::now(),
        published: shared.published.load(Relaxed),
        confirmed: shared.confirmed.load(Relaxed),
        consumed: shared.consumed.load(Relaxed),
        cpu_self: stats::cpu_seconds("self").unwrap_or(0.0),
        cpu_broker: stats::sum_over(pids, stats::cpu_seconds),
    }
}

fn broker_rss(pids: &[u32]) -> Option<u64> {
    stats::sum_over(pids, |p| stats::rss_kib(p).map(|k| k as f64)).map(|k| k as u64)
}

/// Rounds to one decimal.
/// The broker's RSS once it stops moving: sampled every second until two samples are
/// within 1 MiB (or 0.5 %), for at most `max_wait`. A garbage-collected broker's RSS drifts
/// for a while after load.
async fn settled_rss(pids: &[u32], max_wait: Duration) -> Option<u64> {
    let end = Instant::now() + max_wait;
    let mut last = broker_rss(pids)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = broker_rss(pids)?;
        if now.abs_diff(last) <= (last / 200).max(1024) || Instant::now() >= end {
            return Some(now);
        }
        last = now;
    }
}

fn round(x: f64) -> f64 {
    round_to(x, 1)
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Rates and CPU between two snapshots.
fn window(a: &Snap, b: &Snap) -> Map<String, Value> {
    let dt = (b.at - a.at).as_secs_f64().max(1e-9);
    let mut m = Map::new();
    m.insert("measured_s".into(), json!(round_to(dt, 3)));
    m.insert("published".into(), json!(b.published - a.published));
    m.insert("confirmed".into(), json!(b.confirmed - a.confirmed));
    m.insert("consumed".into(), json!(b.consumed - a.consumed));
    m.insert(
        "published_rate".into(),
        json!(round((b.published - a.published) as f64 / dt)),
    );
    m.insert(
        "confirmed_rate".into(),
        json!(round((b.confirmed - a.confirmed) as f64 / dt)),
    );
    m.insert(
        "consumed_rate".into(),
        json!(round((b.consumed - a.consumed) as f64 / dt)),
    );
    let cpu = b.cpu_self - a.cpu_self;
    m.insert("client_cpu_s".into(), json!(round_to(cpu, 2)));
    m.insert("client_cpu_pct".into(), json!(round(cpu / dt * 100.0)));
    if let (Some(x), Some(y)) = (a.cpu_broker, b.cpu_broker) {
        m.insert("broker_cpu_s".into(), json!(round_to(y - x, 2)));
        m.insert("broker_cpu_pct".into(), json!(round((y - x) / dt * 100.0)));
    }
    m
}

fn latency(h: &Hist) -> Value {
    let us = |ns: u64| round(ns as f64 / 1000.0);
    json!({
        "count": h.count(),
        "p50": us(h.percentile(50.0)),
        "p95": us(h.percentile(95.0)),
        "p99": us(h.percentile(99.0)),
        "max": us(h.max()),
    })
}

fn parse_queue_arg(s: &str) -> Res<(String, AMQPValue)> {
    let (k, v) = s.split_once('=').ok_or("arguments are KEY=VALUE")?;
    let v = if let Ok(i) = v.parse::<i64>() {
        AMQPValue::LongLongInt(i)
    } else if v == "true" || v == "false" {
        AMQPValue::Boolean(v == "true")
    } else {
        AMQPValue::LongString(v.into())
    };
    Ok((k.to_string(), v))
}

/// A field table from repeated KEY=VALUE flags.
pub fn table(pairs: &[String]) -> Res<FieldTable> {
    let mut t = FieldTable::default();
    for a in pairs {
        let (k, v) = parse_queue_arg(a)?;
        t.insert(k.as_str().into(), v);
    }
    Ok(t)
}

/// The queues and exchange of one run.
#[derive(Debug)]
struct Topology {
    exchange: String,
    declared_exchange: bool,
    routing_key: String,
    queues: Vec<String>,
}

impl Topology {
    async fn declare(c: &mut Conn, args: &Args, run_id: &str) -> Res<Self> {
        let qargs = table(&args.queue_arg)?;
        let n = args.queues.max(1);
        let base = args
            .queue
            .clone()
            .unwrap_or_else(|| format!("perf-{run_id}"));
        let queues: Vec<String> = if n == 1 && args.queue.is_some() {
            vec![base]
        } else {
            (0..n).map(|i| format!("{base}-{i}")).collect()
        };
        let use_exchange = n > 1 || args.exchange_type.is_some() || args.exchange.is_some();
        let exchange = if use_exchange {
            args.exchange
                .clone()
                .unwrap_or_else(|| format!("perf-{run_id}-x"))
        } else {
            String::new()
        };
        let declared_exchange = use_exchange && !exchange.starts_with("amq.");
        if declared_exchange {
            let kind = args
                .exchange_type
                .clone()
                .unwrap_or_else(|| if n > 1 { "fanout" } else { "direct" }.into());
            c.rpc(
                1,
                &AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: exchange.as_str().into(),
                    kind: kind.as_str().into(),
                    passive: false,
                    durable: args.durable,
                    auto_delete: false,
                    internal: false,
                    nowait: false,
                    arguments: table(&args.exchange_arg)?,
                })),
                (40, 11),
            )
            .await?;
        }
        let routing_key = match &args.routing_key {
            Some(k) => k.clone(),
            None if use_exchange => "perf".into(),
            None => queues[0].clone(),
        };
        let binding_key = args.binding_key.clone().unwrap_or(routing_key.clone());
        for q in &queues {
            c.rpc(
                1,
                &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: q.as_str().into(),
                    passive: false,
                    durable: args.durable,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: qargs.clone(),
                })),
                (50, 11),
            )
            .await?;
            if use_exchange {
                c.rpc(
                    1,
                    &AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                        queue: q.as_str().into(),
                        exchange: exchange.as_str().into(),
                        routing_key: binding_key.as_str().into(),
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                    (50, 21),
                )
                .await?;
            }
        }
        Ok(Self {
            exchange,
            declared_exchange,
            routing_key,
            queues,
        })
    }

    /// Messages ready in all the queues (passive declares).
    async fn depth(&self, c: &mut Conn) -> Res<u64> {
        let mut total = 0;
        for q in &self.queues {
            let ok = c
                .rpc(
                    1,
                    &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        queue: q.as_str().into(),
                        passive: true,
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                    (50, 11),
                )
                .await?;
            if let AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) = ok {
                total += u64::from(ok.message_count);
            }
        }
        Ok(total)
    }

    async fn delete(&self, c: &mut Conn) -> Res<()> {
        for q in &self.queues {
            let m = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.as_str().into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            }));
            tokio::time::timeout(Duration::from_secs(300), c.rpc(1, &m, (50, 41)))
                .await
                .map_err(|_| format!("queue.delete {q} timed out"))??;
        }
        if self.declared_exchange {
            let m = AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: self.exchange.as_str().into(),
                if_unused: false,
                nowait: false,
            }));
            c.rpc(1, &m, (40, 21)).await?;
        }
        Ok(())
    }
}

async fn open_many(t: &Target, n: usize) -> Res<Vec<Conn>> {
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(30), Conn::open(&t))
                .await
                .map_err(|_| "connection open timed out")?
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for h in handles {
        conns.push(h.await??);
    }
    Ok(conns)
}

fn producer_cfg(
    args: &Args,
    topo: &Topology,
    confirm: u64,
    limit: Option<u64>,
) -> Res<ProducerCfg> {
    let mut headers = table(&args.header)?;
    if args.delay_ms > 0 {
        headers.insert(
            "x-delay".into(),
            AMQPValue::LongLongInt(args.delay_ms as i64),
        );
    }
    Ok(ProducerCfg {
        exchange: topo.exchange.clone(),
        routing_key: topo.routing_key.clone(),
        size: args.size,
        persistent: args.persistent,
        rate: args.rate,
        confirm,
        limit,
        stall_timeout: Duration::from_secs_f64(args.stall_timeout),
        headers,
    })
}

fn consumer_cfg(args: &Args) -> Res<ConsumerCfg> {
    let mut ack_every = args.ack_every.max(1);
    if args.prefetch > 0 && ack_every > u64::from(args.prefetch) {
        eprintln!(
            "warren-perf: --ack-every {ack_every} > --prefetch {}: using {}",
            args.prefetch, args.prefetch
        );
        ack_every = u64::from(args.prefetch);
    }
    Ok(ConsumerCfg {
        prefetch: args.prefetch,
        auto_ack: args.auto_ack,
        ack_every,
        arguments: table(&args.consumer_arg)?,
        delay_ns: args.delay_ms * 1_000_000,
    })
}

/// Opens, prepares and starts the consumers, round-robin over the queues.
async fn start_consumers(
    args: &Args,
    t: &Target,
    topo: &Topology,
    shared: &Arc<Shared>,
) -> Res<Vec<JoinHandle<Res<Hist>>>> {
    let cfg = Arc::new(consumer_cfg(args)?);
    let mut conns = open_many(t, args.consumers).await?;
    for c in &mut conns {
        consumer::prepare(c, &cfg).await?;
    }
    Ok(conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let q = topo.queues[i % topo.queues.len()].clone();
            tokio::spawn(consumer::run(c, q, cfg.clone(), shared.clone()))
        })
        .collect())
}

async fn join_consumers(shared: &Shared, hs: Vec<JoinHandle<Res<Hist>>>) -> Hist {
    let mut hist = Hist::default();
    for h in hs {
        let abort = h.abort_handle();
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(Ok(hh))) => hist.merge(&hh),
            Ok(Ok(Err(e))) => shared.error(format!("consumer: {e}")),
            Ok(Err(e)) => shared.error(format!("consumer task: {e}")),
            Err(_) => abort.abort(),
        }
    }
    hist
}

async fn join_producers(shared: &Shared, hs: Vec<JoinHandle<Res<()>>>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for h in hs {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => shared.error(format!("producer: {e}")),
            Ok(Err(e)) => shared.error(format!("producer task: {e}")),
            Err(_) => {
                abort.abort();
                shared.error("producer did not finish in time".into());
            }
        }
    }
}

/// Sleeps `secs`, waking early when something failed.
async fn sleep_watching(shared: &Shared, secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end && !shared.has_errors() {
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Waits out the warm-up, then the measured window (latencies are recorded only inside
/// it); returns the snapshots at its two ends.
async fn measured_window(args: &Args, shared: &Shared, pids: &[u32]) -> (Snap, Snap) {
    sleep_watching(shared, args.warmup).await;
    let s0 = snap(shared, pids);
    shared.phase.store(1, Relaxed);
    sleep_watching(shared, args.duration).await;
    let s1 = snap(shared, pids);
    shared.phase.store(2, Relaxed);
    (s0, s1)
}

/// Producers and consumers together; figures from after the warm-up.
async fn steady(
    args: &Args,
    t: &Target,
    topo: &Topology,
    shared: &Arc<Shared>,
) -> Res<Map<String, Value>> {
    let consumers = start_consumers(args, t, topo, shared).await?;
    let pcfg = Arc::new(producer_cfg(args, topo, args.confirm, None)?);
    let producers: Vec<_> = open_many(t, args.producers)
        .await?
        .into_iter()
        .map(|c| tokio::spawn(producer::run(c, pcfg.clone(), shared.clone())))
        .collect();
    let (s0, s1) = measured_window(args, shared, &args.broker_pid).await;
    let rss = broker_rss(&args.broker_pid);
    shared.stop_all();
    join_producers(shared, producers, Duration::from_secs(10)).await;
    let hist = join_consumers(shared, consumers).await;
    let mut m = window(&s0, &s1);
    m.insert("latency_us".into(), latency(&hist));
    if let Some(r) = rss {
        m.insert("broker_rss_kib".into(), json!(r));
    }
    Ok(m)
}

/// Pre-fill with no consumer, then drain (or, with no consumers, report the broker's RSS).
async fn prefill_drain(
    args: &Args,
    t: &Target,
    topo: &Topology,
    setup: &mut Conn,
    shared: &Arc<Shared>,
) -> Res<Map<String, Value>> {
    let mut m = Map::new();
    let rss_before = if args.consumers == 0 {
        settled_rss(&args.broker_pid, Duration::from_secs(30)).await
    } else {
        broker_rss(&args.broker_pid)
    };
    let producers = args.producers.max(1);
    let confirm = if args.confirm > 0 { args.confirm } else { 1000 };
    let per = args.prefill / producers as u64;
    let conns = open_many(t, producers).await?;
    let p0 = snap(shared, &args.broker_pid);
    let mut hs = Vec::with_capacity(producers);
    for (i, c) in conns.into_iter().enumerate() {
        let extra = if i == 0 {
            args.prefill - per * producers as u64
        } else {
            0
        };
        let cfg = Arc::new(producer_cfg(args, topo, confirm, Some(per + extra))?);
        hs.push(tokio::spawn(producer::run(c, cfg, shared.clone())));
    }
    let mut last_print = Instant::now();
    // A broker applying flow control stops reading the socket, so a producer can sit in a
    // write rather than in its confirm wait: watch for progress here too.
    let stall = Duration::from_secs_f64(args.stall_timeout);
    let mut progress = (Instant::now(), 0);
    while !hs.iter().all(|h| h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = shared.confirmed.load(Relaxed);
        if c != progress.1 {
            progress = (Instant::now(), c);
        } else if progress.0.elapsed() > stall {
            shared.stalled.store(true, Relaxed);
            shared.error(format!(
                "pre-fill stalled: no confirm for {stall:?} at {c} confirmed{}",
                if shared.blocked.load(Relaxed) {
                    " (broker sent connection.blocked)"
                } else {
                    ""
                }
            ));
            shared.stop_all();
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let c = shared.confirmed.load(Relaxed);
            let dt = p0.at.elapsed().as_secs_f64();
            eprintln!(
                "warren-perf: pre-fill {c}/{} confirmed, {:.0} msg/s, broker RSS {} KiB",
                args.prefill,
                c as f64 / dt,
                broker_rss(&args.broker_pid).map_or("?".into(), |r| r.to_string())
            );
        }
    }
    join_producers(shared, hs, Duration::from_secs(10)).await;
    let p1 = snap(shared, &args.broker_pid);
    let depth = topo.depth(setup).await?;
    let mut pre = window(&p0, &p1);
    pre.insert("queue_depth".into(), json!(depth));
    // What the broker holds: the queues' depth, or (delayed messages, still in their
    // exchange, or a stream, whose declare-ok count RabbitMQ does not keep exact) every
    // confirmed publish.
    let held = depth.max(p1.confirmed - p0.confirmed);
    pre.insert("held".into(), json!(held));
    pre.insert(
        "complete".into(),
        json!(p1.confirmed >= args.prefill && !shared.stalled.load(Relaxed)),
    );
    m.insert("prefill".into(), Value::Object(pre));
    if args.consumers == 0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let rss_after = settled_rss(&args.broker_pid, Duration::from_secs(60)).await;
        if let (Some(before), Some(after)) = (rss_before, rss_after) {
            m.insert("broker_rss_kib_before".into(), json!(before));
            m.insert("broker_rss_kib".into(), json!(after));
            let per_msg = (after as f64 - before as f64) * 1024.0 / held.max(1) as f64;
            m.insert("broker_rss_bytes_per_msg".into(), json!(round(per_msg)));
        }
        return Ok(m);
    }
    // Consumers start delivering before `d0` can be taken: the end is counted from before
    // they started, the rate from `d0`.
    let c0 = shared.consumed.load(Relaxed);
    let consumers = start_consumers(args, t, topo, shared).await?;
    shared.phase.store(1, Relaxed);
    let d0 = snap(shared, &args.broker_pid);
    let end = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    while shared.consumed.load(Relaxed) - c0 < depth && Instant::now() < end && !shared.has_errors()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d1 = snap(shared, &args.broker_pid);
    shared.phase.store(2, Relaxed);
    let rss = broker_rss(&args.broker_pid);
    shared.stop_all();
    let hist = join_consumers(shared, consumers).await;
    let mut w = window(&d0, &d1);
    w.insert("drained".into(), json!(d1.consumed - c0 >= depth));
    w.insert("latency_us".into(), latency(&hist));
    if let Some(r) = rss {
        w.insert("broker_rss_kib".into(), json!(r));
    }
    m.extend(w);
    Ok(m)
}

/// Replays the existing queue: every consumer reads `--replay` messages; the broker's RSS
/// is sampled every 100 ms so a replay that copies the stream into memory shows.
async fn replay(
    args: &Args,
    t: &Target,
    topo: &Topology,
    shared: &Arc<Shared>,
) -> Res<Map<String, Value>> {
    let want = args.replay * args.consumers as u64;
    let rss_before = settled_rss(&args.broker_pid, Duration::from_secs(30)).await;
    // As in a drain: the end counted from before the consumers started.
    let c0 = shared.consumed.load(Relaxed);
    let consumers = start_consumers(args, t, topo, shared).await?;
    shared.phase.store(1, Relaxed);
    let r0 = snap(shared, &args.broker_pid);
    let end = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    let mut peak = rss_before.unwrap_or(0);
    let mut last_print = Instant::now();
    while shared.consumed.load(Relaxed) - c0 < want && Instant::now() < end && !shared.has_errors()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(r) = broker_rss(&args.broker_pid) {
            peak = peak.max(r);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "warren-perf: replay {}/{want}, broker RSS peak {peak} KiB",
                shared.consumed.load(Relaxed) - c0
            );
        }
    }
    let r1 = snap(shared, &args.broker_pid);
    shared.phase.store(2, Relaxed);
    let rss_after = broker_rss(&args.broker_pid);
    shared.stop_all();
    join_consumers(shared, consumers).await;
    let mut m = window(&r0, &r1);
    let read = r1.consumed - c0;
    m.insert("replayed".into(), json!(read >= want));
    if read < want {
        shared.error(format!("replay read {read} of {want} deliveries"));
    }
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        m.insert("broker_rss_kib_before".into(), json!(b));
        m.insert("broker_rss_kib_peak".into(), json!(peak));
        m.insert("broker_rss_kib".into(), json!(a));
    }
    Ok(m)
}

/// Opens N idle connections (one channel each), holds them, reports broker RSS per connection.
async fn idle(args: &Args, t: &Target, shared: &Shared) -> Res<Map<String, Value>> {
    let n = args.connections_idle;
    let rss_before = settled_rss(&args.broker_pid, Duration::from_secs(30)).await;
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(50));
    let mut handles = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        // A broker that stops accepting (e.g. out of file descriptors) must not hold the
        // run for n × the connect timeout.
        if started.elapsed() > Duration::from_secs(60) {
            failed += 1;
            continue;
        }
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), Conn::open(&t)).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for h in handles {
        match h.await? {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                failed += 1;
                if failed == 1 {
                    shared.error(format!("idle connection: {e}"));
                }
            }
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        shared.error(format!("{failed} of {n} idle connections failed to open"));
    }
    let open_s = started.elapsed().as_secs_f64();
    eprintln!(
        "warren-perf: {} idle connections open in {open_s:.1} s ({failed} failed); holding {} s",
        conns.len(),
        args.duration
    );
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let rss_after = settled_rss(&args.broker_pid, Duration::from_secs(30)).await;
    let mut m = Map::new();
    m.insert("connections".into(), json!(conns.len()));
    m.insert("failed".into(), json!(failed));
    m.insert("open_s".into(), json!(round_to(open_s, 2)));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        m.insert("broker_rss_kib_before".into(), json!(b));
        m.insert("broker_rss_kib".into(), json!(a));
        if a >= b {
            m.insert(
                "broker_rss_kib_per_conn".into(),
                json!(round((a - b) as f64 / conns.len().max(1) as f64)),
            );
        } else {
            // A garbage-collected broker can hand memory back while the connections open;
            // a negative figure would say nothing about the connections.
            shared.error(format!(
                "broker RSS fell from {b} to {a} KiB while connections opened: its baseline \
                 had not settled, no per-connection figure"
            ));
        }
    }
    if let Some(c) = conns.first() {
        m.insert(
            "broker".into(),
            json!({"product": c.product, "version": c.version}),
        );
    }
    let closes: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for c in closes {
        let _ = c.await;
    }
    Ok(m)
}

async fn run(args: &Args, shared: &Arc<Shared>) -> Res<Map<String, Value>> {
    if args.latency_floor {
        return floor::measure(args, shared).await;
    }
    let t = match &args.uri {
        Some(u) => Target::from_uri(u)?,
        None => Target {
            host: args.host.clone(),
            port: args.port,
            user: "guest".into(),
            pass: "guest".into(),
            vhost: "/".into(),
            tls: false,
            cacert: None,
        },
    };
    let t = Target {
        cacert: args.cacert.clone(),
        ..t
    };
    if t.tls && t.cacert.is_none() {
        return Err("an amqps:// URI needs --cacert FILE".into());
    }
    if args.connections_idle > 0 {
        let mut m = idle(args, &t, shared).await?;
        m.insert("mode".into(), json!("idle"));
        return Ok(m);
    }
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 1_000_000)
    );
    let mut setup = Conn::open(&t).await?;
    let broker = json!({"product": setup.product, "version": setup.version});
    let topo = Topology::declare(&mut setup, args, &run_id).await?;
    let result = if args.replay > 0 {
        replay(args, &t, &topo, shared).await
    } else if args.prefill > 0 {
        prefill_drain(args, &t, &topo, &mut setup, shared).await
    } else {
        steady(args, &t, &topo, shared).await
    };
    shared.stop_all();
    if !args.keep {
        // Consumers and producers are gone (or given up on); a fresh connection deletes in
        // case the setup one was closed by an error.
        let del = match topo.delete(&mut setup).await {
            Ok(()) => Ok(()),
            Err(_) => match Conn::open(&t).await {
                Ok(mut c) => {
                    let r = topo.delete(&mut c).await;
                    c.close().await;
                    r
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = del {
            shared.error(format!("cleanup: {e}"));
        }
    }
    setup.close().await;
    let mut m = result?;
    m.insert(
        "mode".into(),
        json!(if args.replay > 0 {
            "replay"
        } else if args.prefill > 0 {
            "prefill"
        } else {
            "steady"
        }),
    );
    m.insert("broker".into(), broker);
    m.insert("queues".into(), json!(topo.queues.len()));
    Ok(m)
}

fn config_json(args: &Args) -> Value {
    json!({
        "producers": args.producers,
        "consumers": args.consumers,
        "size": args.size,
        "rate": args.rate,
        "confirm": args.confirm,
        "persistent": args.persistent,
        "prefetch": args.prefetch,
        "auto_ack": args.auto_ack,
        "ack_every": args.ack_every,
        "queues": args.queues,
        "exchange_type": args.exchange_type,
        "queue_args": args.queue_arg,
        "durable": args.durable,
        "duration": args.duration,
        "warmup": args.warmup,
        "prefill": args.prefill,
        "replay": args.replay,
        "delay_ms": args.delay_ms,
        "exchange_args": args.exchange_arg,
        "consumer_args": args.consumer_arg,
        "connections_idle": args.connections_idle,
        "latency_floor": args.latency_floor,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.relay {
        return floor::relay();
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared::new());
    let result = rt.block_on(run(&args, &shared));
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut m = match result {
        Ok(m) => m,
        Err(e) => {
            shared.error(e.to_string());
            Map::new()
        }
    };
    if let Some(l) = &args.label {
        m.insert("label".into(), json!(l));
    }
    m.insert("config".into(), config_json(&args));
    if shared.blocked.load(Relaxed) {
        m.insert("blocked".into(), json!(true));
    }
    if shared.stalled.load(Relaxed) {
        m.insert("stalled".into(), json!(true));
    }
    for (k, a) in [
        ("nacked", &shared.nacked),
        ("returned", &shared.returned),
        ("early", &shared.early),
    ] {
        let v = a.load(Relaxed);
        if v > 0 {
            m.insert(k.into(), json!(v));
        }
    }
    let errors = shared.errors.lock().expect("errors lock").clone();
    let ok = errors.is_empty();
    m.insert("errors".into(), json!(errors));
    println!("{}", Value::Object(m));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
