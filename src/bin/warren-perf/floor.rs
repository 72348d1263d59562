//! The latency floor (`--latency-floor`): what end-to-end latency this machine gives a
//! broker that does no work at all, so a broker's figure can be read against it.
//!
//! A relay process (this binary again, with the hidden `--relay`) accepts a producer and a
//! consumer connection and copies bytes from one to the other with blocking reads and
//! writes. The client side paces like the steady mode's producer (the same `Pacer`, the
//! same one-timestamp-per-batch), sends `--size`-byte records instead of AMQP frames, and
//! records latency with the same histogram. What remains in the figure is the client, the
//! loopback TCP stack and waking a process on another CPU: the part of any broker's
//! latency that no broker code can remove.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Buf, BytesMut};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Res;
use crate::producer::Pacer;
use crate::stats::Hist;
use crate::{Args, Shared, latency, measured_window, window};

/// First byte a client sends the relay: which end of the pipe it is.
const SOURCE: u8 = b'P';
const SINK: u8 = b'C';

/// The relay process: prints its port on stdout, takes one source and one sink connection
/// (in either order), copies source → sink until the source closes.
pub fn relay() -> ExitCode {
    match relay_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-perf relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn relay_inner() -> Res<()> {
    // The parent holds our stdin open: when it ends, however it ends, so do we (even if
    // still waiting to accept).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let l = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let (mut source, mut sink) = (None, None);
    while source.is_none() || sink.is_none() {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut role = [0u8];
        s.read_exact(&mut role)?;
        match role[0] {
            SOURCE => source = Some(s),
            SINK => sink = Some(s),
            r => return Err(format!("unknown role byte {r}").into()),
        }
    }
    let (mut source, mut sink) = (source.expect("source"), sink.expect("sink"));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        sink.write_all(&buf[..n])?;
    }
}

/// Kills the relay however the measurement ends.
struct RelayChild(Child);

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the relay and returns it with its port.
fn spawn_relay() -> Res<(RelayChild, u16)> {
    let child = Command::new(std::env::current_exe()?)
        .arg("--relay")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut child = RelayChild(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().ok_or("relay stdout")?).read_line(&mut line)?;
    let port = line
        .trim()
        .parse()
        .map_err(|_| format!("relay said {line:?}, not a port"))?;
    Ok((child, port))
}

async fn connect(port: u16, role: u8) -> Res<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    s.write_all(&[role]).await?;
    Ok(s)
}

/// Runs the steady-mode phases against the relay and reports like the steady mode does.
pub async fn measure(args: &Args, shared: &Arc<Shared>) -> Res<Map<String, Value>> {
    if args.size < 8 {
        return Err("--latency-floor needs --size of at least 8 (the timestamp)".into());
    }
    let (relay, port) = spawn_relay()?;
    let pids = [relay.0.id()];
    let sink = connect(port, SINK).await?;
    let source = connect(port, SOURCE).await?;
    let consumer = tokio::spawn(consume(sink, args.size, shared.clone()));
    let producer = tokio::spawn(produce(source, args.size, args.rate, shared.clone()));
    let (s0, s1) = measured_window(args, shared, &pids).await;
    shared.stop_all();
    if let Err(e) = producer.await? {
        shared.error(format!("floor producer: {e}"));
    }
    let hist = consumer.await??;
    let mut m = window(&s0, &s1);
    m.insert("latency_us".into(), latency(&hist));
    m.insert("mode".into(), json!("floor"));
    Ok(m)
}

async fn produce(mut s: TcpStream, size: usize, rate: f64, shared: Arc<Shared>) -> Res<()> {
    let pacer = Pacer::new(rate);
    let max_batch = ((256 * 1024) / size).max(1) as u64;
    let mut stop = shared.stop_tx.subscribe();
    let mut buf = Vec::with_capacity(max_batch as usize * size);
    let mut sent = 0u64;
    while !shared.stop.load(Relaxed) {
        let n = match pacer.allow(sent, max_batch) {
            Ok(n) => n,
            Err(next) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
        };
        let ts = (shared.base.elapsed().as_nanos() as u64).to_be_bytes();
        buf.clear();
        for _ in 0..n {
            buf.extend_from_slice(&ts);
            buf.resize(buf.len() + size - 8, 0);
        }
        tokio::select! {
            r = s.write_all(&buf) => r?,
            _ = stop.changed() => break,
        }
        sent += n;
        shared.published.fetch_add(n, Relaxed);
    }
    Ok(())
}

async fn consume(mut s: TcpStream, size: usize, shared: Arc<Shared>) -> Res<Hist> {
    let mut stop = shared.stop_tx.subscribe();
    let mut hist = Hist::default();
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    loop {
        tokio::select! {
            r = s.read_buf(&mut rbuf) => {
                if r? == 0 {
                    return Err("the relay closed the connection".into());
                }
            }
            _ = stop.changed() => return Ok(hist),
        }
        let now = shared.base.elapsed().as_nanos() as u64;
        let measuring = shared.phase.load(Relaxed) == 1;
        let whole = rbuf.len() / size;
        if measuring {
            for record in rbuf[..whole * size].chunks_exact(size) {
                hist.record_stamp(now, record);
            }
        }
        rbuf.advance(whole * size);
        shared.consumed.fetch_add(whole as u64, Relaxed);
        if rbuf.capacity() - rbuf.len() < 64 * 1024 {
            rbuf.reserve(256 * 1024);
        }
    }
}
