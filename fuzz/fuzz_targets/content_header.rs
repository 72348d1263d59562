//! Fuzz target: arbitrary bytes as the payload of a content-header frame (class id, weight,
//! body size, property flags and property list), framed correctly and cut by
//! `warren::protocol::decode`.
//!
//! Talks only to the sans-I/O decoder. Wrapping the bytes in a valid envelope spends the
//! fuzzer's effort on the property decoder instead of on the frame-end octet.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX: u32 = 131_072;

fuzz_target!(|payload: &[u8]| {
    let Ok(size) = u32::try_from(payload.len()) else {
        return;
    };
    if size > FRAME_MAX {
        return;
    }
    let mut buf = BytesMut::with_capacity(payload.len() + 8);
    buf.put_u8(warren::protocol::FRAME_HEADER);
    buf.put_u16(1);
    buf.put_u32(size);
    buf.put_slice(payload);
    buf.put_u8(warren::protocol::FRAME_END);
    // A whole frame is there, so decode must either yield it and consume all of it, or
    // refuse it; asking for more bytes would stall a real connection forever.
    match warren::protocol::decode(&mut buf, FRAME_MAX) {
        Ok(Some(_)) => assert!(buf.is_empty(), "a whole header frame left bytes behind"),
        Ok(None) => panic!("a whole header frame was not decoded"),
        Err(_) => {}
    }
});
