//! One producer: a writer loop that pipelines publishes (many messages per `write`, no
//! per-message await) and a reader task that counts publisher confirms and wakes the writer
//! when the window opens.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::transport::ReadSide;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, confirm, connection};
use amq_protocol::types::FieldTable;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use warren::protocol::{encode_properties, write_content, write_method};

use crate::Shared;
use crate::client::{Conn, RawFrame, Res, describe_close, parse_method, peek_frame};

/// What every producer publishes.
#[derive(Debug, Clone)]
pub struct ProducerCfg {
    pub exchange: String,
    pub routing_key: String,
    pub size: usize,
    pub persistent: bool,
    /// Messages per second; 0 = as fast as possible.
    pub rate: f64,
    /// Max unconfirmed in flight; 0 = no confirms.
    pub confirm: u64,
    /// Publish this many and stop (pre-fill); None = until told to stop.
    pub limit: Option<u64>,
    /// Give up when the confirm window makes no progress for this long.
    pub stall_timeout: Duration,
    /// Message headers (e.g. `x-delay`), the same on every message.
    pub headers: FieldTable,
}

/// Confirm state shared by a producer's writer and reader.
#[derive(Debug, Default)]
struct ProdState {
    confirmed: AtomicU64,
    notify: Notify,
    dead: AtomicBool,
}

/// Counts confirms exactly, whether the broker acks singly, with `multiple`, or mixed.
#[derive(Debug, Default)]
struct ConfirmTracker {
    upto: u64,
    singles: BTreeSet<u64>,
}

impl ConfirmTracker {
    /// Returns how many publishes this confirm newly settles.
    fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.upto {
            return 0;
        }
        if multiple {
            let singles = self.singles.range(..=tag).count() as u64;
            self.singles = self.singles.split_off(&(tag + 1));
            let n = tag - self.upto - singles;
            self.upto = tag;
            n
        } else {
            if !self.singles.insert(tag) {
                return 0;
            }
            while self.singles.remove(&(self.upto + 1)) {
                self.upto += 1;
            }
            1
        }
    }
}

/// Spreads a producer's messages evenly over time at a fixed rate (per second; 0 = as
/// fast as possible).
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    pub fn new(rate: f64) -> Self {
        Self {
            start: Instant::now(),
            rate,
        }
    }

    /// How many of `want` may go now, `sent` having gone so far; or, when none is due yet,
    /// the instant the next one is. The caller sleeps and re-checks its other conditions.
    pub fn allow(&self, sent: u64, want: u64) -> Result<u64, Instant> {
        if self.rate <= 0.0 {
            return Ok(want);
        }
        let due = (self.rate * self.start.elapsed().as_secs_f64()) as u64 + 1;
        if due <= sent {
            return Err(self.start + Duration::from_secs_f64(sent as f64 / self.rate));
        }
        Ok(want.min(due - sent))
    }
}

/// Builds one message (publish + header + body frames) and returns it with the offset of
/// the body's first byte, where the timestamp goes (None when the body is under 8 bytes).
fn template(cfg: &ProducerCfg, frame_max: u32) -> (BytesMut, Option<usize>) {
    let mut tpl = BytesMut::new();
    write_method(
        &mut tpl,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: cfg.exchange.as_str().into(),
            routing_key: cfg.routing_key.as_str().into(),
            mandatory: false,
            immediate: false,
        })),
    );
    let mut props = BasicProperties::default();
    if cfg.persistent {
        props = props.with_delivery_mode(2);
    }
    if !cfg.headers.inner().is_empty() {
        props = props.with_headers(cfg.headers.clone());
    }
    let raw = encode_properties(&props);
    let header_at = tpl.len();
    let body: Vec<u8> = (0..cfg.size).map(|i| b'a' + (i % 26) as u8).collect();
    write_content(&mut tpl, 1, &raw, &body, frame_max);
    let ts_at = header_at + 7 + 12 + raw.len() + 1 + 7;
    (tpl, (cfg.size >= 8).then_some(ts_at))
}

/// Runs one producer until `shared.stop` (or its `limit`), then closes the connection.
pub async fn run(mut conn: Conn, cfg: Arc<ProducerCfg>, shared: Arc<Shared>) -> Res<()> {
    if cfg.confirm > 0 {
        conn.rpc(
            1,
            &AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            (85, 11),
        )
        .await?;
    }
    let (tpl, ts_at) = template(&cfg, conn.frame_max);
    let Conn { stream, rbuf, .. } = conn;
    let (rd, mut wr) = stream.split();
    let st = Arc::new(ProdState::default());
    let reader = tokio::spawn(read_loop(rd, rbuf, st.clone(), shared.clone()));

    let max_batch = ((256 * 1024) / tpl.len()).clamp(1, 4096) as u64;
    let mut wbuf = BytesMut::with_capacity(max_batch as usize * tpl.len() + 1024);
    let pacer = Pacer::new(cfg.rate);
    let mut sent = 0u64;
    let mut progress = (Instant::now(), 0u64);
    let mut result: Res<()> = Ok(());
    let mut stop = shared.stop_tx.subscribe();
    // Set when a write was abandoned half-way: the frame stream is torn, so no close.
    let mut torn = false;
    loop {
        if shared.stop.load(Relaxed) || st.dead.load(Relaxed) {
            break;
        }
        let mut n = max_batch;
        if let Some(limit) = cfg.limit {
            if sent >= limit {
                break;
            }
            n = n.min(limit - sent);
        }
        if cfg.confirm > 0 {
            let confirmed = st.confirmed.load(Relaxed);
            if confirmed != progress.1 {
                progress = (Instant::now(), confirmed);
            }
            let room = cfg.confirm.saturating_sub(sent - confirmed);
            if room == 0 {
                if progress.0.elapsed() > cfg.stall_timeout {
                    shared.stalled.store(true, Relaxed);
                    result = Err(format!(
                        "no confirm for {:?} with {} in flight (broker blocked?)",
                        cfg.stall_timeout,
                        sent - confirmed
                    )
                    .into());
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
                continue;
            }
            n = n.min(room);
        }
        n = match pacer.allow(sent, n) {
            Ok(n) => n,
            Err(next) => {
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
        };
        let ts = (shared.base.elapsed().as_nanos() as u64).to_be_bytes();
        wbuf.clear();
        for _ in 0..n {
            let at = wbuf.len();
            wbuf.extend_from_slice(&tpl);
            if let Some(off) = ts_at {
                wbuf[at + off..at + off + 8].copy_from_slice(&ts);
            }
        }
        // A broker applying flow control stops reading: the write must not outlive a stop.
        let written = tokio::select! {
            r = async { wr.write_all(&wbuf).await?; wr.flush().await } => r,
            _ = stop.changed() => {
                torn = true;
                break;
            }
        };
        if let Err(e) = written {
            result = Err(e.into());
            break;
        }
        sent += n;
        shared.published.fetch_add(n, Relaxed);
    }
    // A pre-fill waits for its last confirms so the queue holds everything it published.
    if result.is_ok() && cfg.limit.is_some() && cfg.confirm > 0 {
        let mut last = (Instant::now(), st.confirmed.load(Relaxed));
        while st.confirmed.load(Relaxed) < sent && !st.dead.load(Relaxed) {
            let c = st.confirmed.load(Relaxed);
            if c != last.1 {
                last = (Instant::now(), c);
            } else if last.0.elapsed() > cfg.stall_timeout {
                shared.stalled.store(true, Relaxed);
                result = Err(format!("{} publishes never confirmed", sent - c).into());
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), st.notify.notified()).await;
        }
    }
    let died = st.dead.load(Relaxed);
    let mut close = BytesMut::new();
    write_method(
        &mut close,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    if !torn {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            wr.write_all(&close).await?;
            wr.flush().await
        })
        .await;
    }
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
    if died && result.is_ok() {
        result = Err("producer connection closed by the broker".into());
    }
    result
}

async fn read_loop(mut rd: ReadSide, mut buf: BytesMut, st: Arc<ProdState>, shared: Arc<Shared>) {
    let mut tracker = ConfirmTracker::default();
    loop {
        let mut pos = 0;
        let mut settled = 0;
        let mut done = false;
        loop {
            let (frame, len) = match peek_frame(&buf[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    shared.error(format!("producer: {e}"));
                    done = true;
                    break;
                }
            };
            if let RawFrame::Method {
                class_id,
                method_id,
                payload,
                ..
            } = frame
            {
                match (class_id, method_id) {
                    (60, 80) | (60, 120) if payload.len() >= 13 => {
                        let tag = u64::from_be_bytes(payload[4..12].try_into().expect("8"));
                        let n = tracker.confirm(tag, payload[12] & 1 == 1);
                        settled += n;
                        if method_id == 120 {
                            shared.nacked.fetch_add(n, Relaxed);
                        }
                    }
                    (60, 50) => {
                        shared.returned.fetch_add(1, Relaxed);
                    }
                    (10, 60) => {
                        shared.blocked.store(true, Relaxed);
                        eprintln!("warren-perf: broker blocked publishers (connection.blocked)");
                    }
                    (10, 61) => eprintln!("warren-perf: broker unblocked publishers"),
                    (10, 51) => done = true,
                    (20, 40) | (10, 50) => {
                        let why = parse_method(payload)
                            .ok()
                            .and_then(|m| describe_close(&m))
                            .unwrap_or_else(|| "closed".into());
                        shared.error(format!("producer: {why}"));
                        done = true;
                    }
                    _ => {}
                }
            }
            pos += len;
            if done {
                break;
            }
        }
        buf.advance(pos);
        if settled > 0 {
            st.confirmed.fetch_add(settled, Relaxed);
            shared.confirmed.fetch_add(settled, Relaxed);
            st.notify.notify_one();
        }
        if done {
            st.dead.store(true, Relaxed);
            st.notify.notify_one();
            return;
        }
        if buf.capacity() - buf.len() < 32 * 1024 {
            buf.reserve(128 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                st.dead.store(true, Relaxed);
                st.notify.notify_one();
                return;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn confirm_tracker_counts_each_publish_once() {
        let mut t = ConfirmTracker::default();
        assert_eq!(t.confirm(1, false), 1);
        assert_eq!(t.confirm(3, false), 1);
        assert_eq!(t.confirm(5, true), 3); // 2, 4, 5
        assert_eq!(t.confirm(4, false), 0);
        assert_eq!(t.confirm(6, false), 1);
        assert_eq!(t.confirm(10, true), 4);
        assert_eq!(t.upto, 10);
        assert!(t.singles.is_empty());
    }

    #[test]
    fn timestamp_lands_at_the_start_of_the_body() {
        let cfg = ProducerCfg {
            exchange: String::new(),
            routing_key: "q".into(),
            size: 16,
            persistent: true,
            rate: 0.0,
            confirm: 0,
            limit: None,
            stall_timeout: Duration::from_secs(1),
            headers: FieldTable::default(),
        };
        let (tpl, at) = template(&cfg, 4096);
        let at = at.unwrap();
        assert_eq!(&tpl[at..at + 3], b"abc");
        assert_eq!(tpl.len(), at + 16 + 1);
        let mut cfg = cfg;
        cfg.headers
            .insert("x-delay".into(), AMQPValue::LongLongInt(1000));
        let (tpl, at) = template(&cfg, 4096);
        let at = at.unwrap();
        assert_eq!(&tpl[at..at + 3], b"abc");
        assert_eq!(tpl.len(), at + 16 + 1);
    }
}
