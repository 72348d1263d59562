//! Fuzz target: arbitrary bytes as a connection's inbound stream, cut into frames by
//! `warren::protocol::decode` exactly as the connection's reader does it.
//!
//! Talks only to the sans-I/O decoder; no broker, no sockets. A panic, abort, stack
//! overflow or a loop that never ends is a finding.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks frame_max so the oversize check is reached both ways: a small
    // limit (4096, RabbitMQ's minimum) and the default 128 KiB.
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let frame_max = if pick & 1 == 0 { 4096 } else { 131_072 };
    let mut buf = BytesMut::from(stream);
    // The reader loops the same way: decode until the buffer holds no whole frame or an
    // error closes the connection. Every Ok(Some) must consume bytes, or the reader would
    // spin; assert it so a non-advancing decode is a finding rather than a hang.
    loop {
        let before = buf.len();
        match warren::protocol::decode(&mut buf, frame_max) {
            Ok(Some(_)) => assert!(
                buf.len() < before,
                "decode returned a frame but consumed nothing"
            ),
            Ok(None) | Err(_) => break,
        }
    }
});
