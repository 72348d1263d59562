//! One consumer: reads big buffers, parses deliveries in place, records latency from the
//! body's timestamp, and acks every N with `multiple` (one ack per read at most).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::FieldTable;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Shared;
use crate::client::{Conn, RawFrame, Res, describe_close, parse_method, peek_frame, put_ack};
use crate::stats::Hist;

/// How every consumer consumes.
#[derive(Debug, Clone)]
pub struct ConsumerCfg {
    pub prefetch: u16,
    pub auto_ack: bool,
    pub ack_every: u64,
    /// basic.consume arguments (e.g. `x-stream-offset`).
    pub arguments: FieldTable,
    /// Subtracted from each latency: the `x-delay` messages were held for (lateness).
    pub delay_ns: u64,
}

/// Sets the prefetch (before the measured part starts).
pub async fn prepare(conn: &mut Conn, cfg: &ConsumerCfg) -> Res<()> {
    if cfg.prefetch > 0 {
        conn.rpc(
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: cfg.prefetch,
                global: false,
            })),
            (60, 11),
        )
        .await?;
    }
    Ok(())
}

/// Consumes `queue` until `shared.stop`; returns the latencies seen while measuring.
pub async fn run(
    mut conn: Conn,
    queue: String,
    cfg: Arc<ConsumerCfg>,
    shared: Arc<Shared>,
) -> Res<Hist> {
    let mut stop = shared.stop_tx.subscribe();
    conn.rpc(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.as_str().into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: cfg.auto_ack,
            exclusive: false,
            nowait: false,
            arguments: cfg.arguments.clone(),
        })),
        (60, 21),
    )
    .await?;
    let mut hist = Hist::default();
    let mut wbuf = BytesMut::with_capacity(64);
    let mut tag = 0u64;
    let mut remaining = 0u64;
    let mut first_body = false;
    let mut unacked = 0u64;
    let ack_every = cfg.ack_every.max(1);
    let base = shared.base;
    while !*stop.borrow_and_update() {
        let now = base.elapsed().as_nanos() as u64;
        let measuring = shared.phase.load(Relaxed) == 1;
        let mut pos = 0;
        let mut consumed = 0u64;
        let mut ack_tag = None;
        while let Some((frame, len)) = peek_frame(&conn.rbuf[pos..])? {
            let mut complete = false;
            match frame {
                RawFrame::Method {
                    class_id: 60,
                    method_id: 60,
                    payload,
                    ..
                } => {
                    let at = 5 + *payload.get(4).ok_or("short deliver")? as usize;
                    let raw = payload.get(at..at + 8).ok_or("short deliver")?;
                    tag = u64::from_be_bytes(raw.try_into().expect("8"));
                }
                RawFrame::Method {
                    class_id: 60,
                    method_id: 30,
                    ..
                } => return Err(format!("consumer on {queue} cancelled by the broker").into()),
                RawFrame::Method {
                    class_id,
                    method_id,
                    payload,
                    ..
                } if (class_id, method_id) == (20, 40) || (class_id, method_id) == (10, 50) => {
                    let m = parse_method(payload)?;
                    return Err(describe_close(&m).unwrap_or_default().into());
                }
                RawFrame::Method { .. } | RawFrame::Heartbeat => {}
                RawFrame::Header { body_size } => {
                    remaining = body_size;
                    first_body = true;
                    complete = body_size == 0;
                }
                RawFrame::Body { payload } => {
                    if first_body {
                        first_body = false;
                        // Only a delayed message can be early; a replay reads stamps
                        // from another process's clock.
                        if measuring
                            && !hist.record_stamp(now.saturating_sub(cfg.delay_ns), payload)
                            && cfg.delay_ns > 0
                        {
                            shared.early.fetch_add(1, Relaxed);
                        }
                    }
                    remaining = remaining.saturating_sub(payload.len() as u64);
                    complete = remaining == 0;
                }
            }
            if complete {
                consumed += 1;
                if !cfg.auto_ack {
                    unacked += 1;
                    if unacked >= ack_every {
                        ack_tag = Some(tag);
                        unacked = 0;
                    }
                }
            }
            pos += len;
        }
        conn.rbuf.advance(pos);
        if consumed > 0 {
            shared.consumed.fetch_add(consumed, Relaxed);
        }
        if let Some(t) = ack_tag {
            wbuf.clear();
            put_ack(&mut wbuf, 1, t, true);
            conn.stream.write_all(&wbuf).await?;
            conn.stream.flush().await?;
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < 64 * 1024 {
            conn.rbuf.reserve(256 * 1024);
        }
        tokio::select! {
            r = conn.stream.read_buf(&mut conn.rbuf) => {
                if r? == 0 {
                    return Err(format!("consumer on {queue}: connection closed by broker").into());
                }
            }
            _ = stop.changed() => break,
        }
    }
    conn.close().await;
    Ok(hist)
}
