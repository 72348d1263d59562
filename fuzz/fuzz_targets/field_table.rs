//! Fuzz target: arbitrary bytes as an encoded field table (long length, then key/value
//! entries), parsed by amq-protocol-types' `parse_field_table`, the parser Warren uses for
//! every table it receives (client properties, declare arguments, message headers).
//!
//! Talks only to amq-protocol-types. That parser recurses once per nested table or array,
//! so a deep enough input overflows the stack: a known finding that Warren answers by
//! refusing nesting deeper than 32 before the parser sees it. This target applies the same
//! refusal first (`within_depth` below) so that libfuzzer looks for other bugs instead of
//! rediscovering that one on every run.

#![no_main]

use amq_protocol::types::parsing::parse_field_table;
use libfuzzer_sys::fuzz_target;

/// The nesting Warren accepts; deeper is refused with a 501 before parsing.
const MAX_DEPTH: usize = 32;

// TODO(lead): once the broker's own pre-scan is public in `warren::protocol`, call it here
// instead of `within_depth`, so the fuzzer exercises the guard the broker actually runs.
fuzz_target!(|data: &[u8]| {
    if !within_depth(data, MAX_DEPTH) {
        return;
    }
    let _ = parse_field_table(data);
});

/// False only if `data`, read as a field table, nests tables or arrays deeper than `max`.
///
/// Malformed input returns true: the parser fails at the same spot with no deeper
/// recursion than the scan reached, so it is safe to hand over. The scan itself recurses
/// at most `max` levels.
fn within_depth(data: &[u8], max: usize) -> bool {
    table(data, max).is_ok()
}

/// `Err(())` means too deep; `Ok(rest)` is the input after the table (or after the point
/// where it stopped making sense, which ends the scan).
fn table(data: &[u8], depth_left: usize) -> Result<Option<&[u8]>, ()> {
    let Some((mut body, rest)) = long_prefixed(data) else {
        return Ok(None);
    };
    while !body.is_empty() {
        // Key: a shortstr.
        let Some((&n, after)) = body.split_first() else {
            return Ok(None);
        };
        let Some((_, after)) = after.split_at_checked(usize::from(n)) else {
            return Ok(None);
        };
        match value(after, depth_left)? {
            Some(next) => body = next,
            None => return Ok(None),
        }
    }
    Ok(Some(rest))
}

fn array(data: &[u8], depth_left: usize) -> Result<Option<&[u8]>, ()> {
    let Some((mut body, rest)) = long_prefixed(data) else {
        return Ok(None);
    };
    while !body.is_empty() {
        match value(body, depth_left)? {
            Some(next) => body = next,
            None => return Ok(None),
        }
    }
    Ok(Some(rest))
}

/// One tagged value; the tags and widths are the RabbitMQ dialect amq-protocol parses.
fn value(data: &[u8], depth_left: usize) -> Result<Option<&[u8]>, ()> {
    let Some((&tag, rest)) = data.split_first() else {
        return Ok(None);
    };
    let fixed = match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' => return Ok(long_prefixed(rest).map(|(_, r)| r)),
        b'F' | b'A' => {
            let Some(depth_left) = depth_left.checked_sub(1) else {
                return Err(());
            };
            return if tag == b'F' {
                table(rest, depth_left)
            } else {
                array(rest, depth_left)
            };
        }
        _ => return Ok(None),
    };
    Ok(rest.split_at_checked(fixed).map(|(_, r)| r))
}

/// Splits off a long-uint-prefixed run: (the run, what follows it).
fn long_prefixed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    rest.split_at_checked(len)
}
