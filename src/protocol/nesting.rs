//! A bound on how deeply peer-supplied field tables and arrays nest, checked before any
//! recursive code sees them.
//!
//! amq-protocol's field-table and array parsers recurse once per nesting level, and so do
//! everything downstream that walks a decoded value (its encoder, `Debug`, `Drop`, serde).
//! A table nested 10,000 deep fits in one 70 KB frame and overflows a worker's stack,
//! which aborts the whole process. Every table that reaches those parsers from a peer, or
//! from the message log, is therefore scanned here first, iteratively (tables and arrays
//! carry their byte length, so the scan keeps only the end offset of each open level), and
//! refused past [`MAX_NESTING`]. No broker types, no I/O.

/// Deepest nesting accepted: a method's or a message's top-level table is level 1, a table
/// or array inside it level 2, and so on. Real clients stay within a handful of levels
/// (`x-death` is an array of tables: 3); 32 also keeps every accepted table storable as
/// JSON in the definitions store, whose decoder refuses 128 levels of JSON (two per table
/// level).
pub const MAX_NESTING: usize = 32;

/// A table or array nested deeper than [`MAX_NESTING`].
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep;

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "field table or array nested deeper than {MAX_NESTING} levels"
        )
    }
}

/// Scans one encoded field table (its 4-byte length first) at the start of `bytes`.
///
/// Returns `Ok(Some(len))`, the bytes the table takes, when it is well formed and within the
/// bound; `Ok(None)` when it is malformed (truncated, unknown value type) at a point no
/// deeper than the bound — the real parser then fails at the same place, having recursed
/// no deeper than this scan saw; and [`TooDeep`] past the bound.
///
/// The value types and their sizes are amq-protocol's (which follows RabbitMQ: `s` is a
/// short int, `l` and `L` are 64-bit).
pub fn scan_table(bytes: &[u8]) -> Result<Option<usize>, TooDeep> {
    scan(bytes, Kind::Table)
}

/// As [`scan_table`], for a table whose entries fill all of `bytes` with no length prefix
/// (the AMQPLAIN response).
pub fn scan_table_entries(bytes: &[u8]) -> Result<Option<usize>, TooDeep> {
    let mut open = vec![Level {
        kind: Kind::Table,
        end: bytes.len(),
    }];
    walk(bytes, 0, &mut open)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Array,
}

struct Level {
    kind: Kind,
    end: usize,
}

fn len_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
}

fn scan(bytes: &[u8], kind: Kind) -> Result<Option<usize>, TooDeep> {
    let Some(len) = len_at(bytes, 0) else {
        return Ok(None);
    };
    let Some(end) = 4usize.checked_add(len).filter(|&e| e <= bytes.len()) else {
        return Ok(None);
    };
    let mut open = vec![Level { kind, end }];
    walk(bytes, 4, &mut open)
}

/// Walks the values from `at` until every open level has ended; `open` holds the levels
/// entered so far (the outermost first).
fn walk(bytes: &[u8], mut at: usize, open: &mut Vec<Level>) -> Result<Option<usize>, TooDeep> {
    let outer_end = open.first().map_or(0, |l| l.end);
    while let Some(level) = open.last() {
        if at == level.end {
            open.pop();
            continue;
        }
        if level.kind == Kind::Table {
            // The entry's name: a shortstr.
            let Some(&n) = bytes.get(at) else {
                return Ok(None);
            };
            at += 1 + usize::from(n);
        }
        let Some(&ty) = bytes.get(at).filter(|_| at < level.end) else {
            return Ok(None);
        };
        at += 1;
        let fixed = match ty {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => match len_at(bytes, at) {
                Some(n) => 4 + n,
                None => return Ok(None),
            },
            b'F' | b'A' => {
                let Some(n) = len_at(bytes, at) else {
                    return Ok(None);
                };
                if open.len() >= MAX_NESTING {
                    return Err(TooDeep);
                }
                let end = at + 4 + n;
                if end > level.end {
                    return Ok(None);
                }
                let kind = if ty == b'F' { Kind::Table } else { Kind::Array };
                open.push(Level { kind, end });
                at += 4;
                continue;
            }
            _ => return Ok(None),
        };
        at += fixed;
        if at > level.end {
            return Ok(None);
        }
    }
    Ok(Some(outer_end))
}

/// Checks the tables in a client method's arguments (`args`: the payload after the class
/// and method ids) before amq-protocol parses them. Every client method with a table has
/// it last, after a fixed run of shorts, shortstrs and bits, except `connection.start-ok`,
/// whose client properties come first and whose response may be an AMQPLAIN table.
pub fn check_method(class_id: u16, method_id: u16, args: &[u8]) -> Result<(), TooDeep> {
    // What precedes the table: (shorts, shortstrs, octets of bits).
    let prefix = match (class_id, method_id) {
        (10, 11) => return check_start_ok(args),
        (40, 10) => (1, 2, 1),      // exchange.declare
        (40, 30 | 40) => (1, 3, 1), // exchange.bind / unbind
        (50, 10) => (1, 1, 1),      // queue.declare
        (50, 20) => (1, 3, 1),      // queue.bind
        (50, 50) => (1, 3, 0),      // queue.unbind
        (60, 20) => (1, 2, 1),      // basic.consume
        _ => return Ok(()),
    };
    let (shorts, shortstrs, bits) = prefix;
    let mut at = 2 * shorts;
    for _ in 0..shortstrs {
        let Some(&n) = args.get(at) else {
            return Ok(());
        };
        at += 1 + usize::from(n);
    }
    at += bits;
    match args.get(at..) {
        Some(rest) => scan_table(rest).map(drop),
        None => Ok(()),
    }
}

/// `connection.start-ok`: client-properties (table), mechanism (shortstr), response
/// (longstr; a table's entries for AMQPLAIN), locale.
fn check_start_ok(args: &[u8]) -> Result<(), TooDeep> {
    let Some(len) = scan_table(args)? else {
        return Ok(());
    };
    let Some(&n) = args.get(len) else {
        return Ok(());
    };
    let mech_at = len + 1;
    let Some(mechanism) = args.get(mech_at..mech_at + usize::from(n)) else {
        return Ok(());
    };
    let resp_at = mech_at + usize::from(n);
    if mechanism == b"AMQPLAIN"
        && let Some(rlen) = len_at(args, resp_at)
        && let Some(resp) = args.get(resp_at + 4..resp_at + 4 + rlen)
    {
        scan_table_entries(resp)?;
    }
    Ok(())
}

/// Checks the `headers` property of an encoded basic property list (flags first), the one
/// table a content header carries.
pub fn check_properties(raw: &[u8]) -> Result<(), TooDeep> {
    let Some(flags) = raw.get(..2).map(|f| u16::from_be_bytes([f[0], f[1]])) else {
        return Ok(());
    };
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    if flags & HEADERS == 0 {
        return Ok(());
    }
    let mut at = 2;
    for flag in [CONTENT_TYPE, CONTENT_ENCODING] {
        if flags & flag != 0 {
            let Some(&n) = raw.get(at) else {
                return Ok(());
            };
            at += 1 + usize::from(n);
        }
    }
    match raw.get(at..) {
        Some(rest) => scan_table(rest).map(drop),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

    fn encode(t: &FieldTable) -> Vec<u8> {
        let ctx = amq_protocol::types::generation::gen_field_table(t)(Vec::new().into());
        ctx.unwrap().into_inner().0
    }

    fn with_siblings(n: Option<AMQPValue>) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("s".into(), AMQPValue::LongString("x".into()));
        t.insert("i".into(), AMQPValue::LongLongInt(-1));
        t.insert("d".into(), AMQPValue::Double(1.5));
        t.insert("b".into(), AMQPValue::Boolean(true));
        t.insert("v".into(), AMQPValue::Void);
        t.insert("x".into(), AMQPValue::ByteArray(vec![1, 2].into()));
        if let Some(n) = n {
            t.insert("n".into(), n);
        }
        t
    }

    /// A table nested exactly `depth` levels, alternating tables and arrays, with siblings
    /// of several scalar types at each table level.
    fn nested(depth: usize) -> FieldTable {
        if depth == 1 {
            return with_siblings(None);
        }
        let mut v = AMQPValue::FieldTable(FieldTable::default());
        for level in 1..depth - 1 {
            v = if level % 2 == 0 {
                AMQPValue::FieldTable(with_siblings(Some(v)))
            } else {
                let mut a = FieldArray::default();
                a.push(AMQPValue::ShortInt(3));
                a.push(v);
                AMQPValue::FieldArray(a)
            };
        }
        with_siblings(Some(v))
    }

    #[test]
    fn well_formed_tables_are_measured_whole() {
        for depth in [1, 2, 5, 31] {
            let bytes = encode(&nested(depth));
            assert_eq!(scan_table(&bytes), Ok(Some(bytes.len())), "depth {depth}");
        }
    }

    #[test]
    fn nesting_past_the_bound_is_refused() {
        // An array level counts like a table level: `nested` alternates them.
        let limit = encode(&nested(MAX_NESTING));
        assert!(scan_table(&limit).unwrap().is_some());
        assert_eq!(scan_table(&encode(&nested(MAX_NESTING + 1))), Err(TooDeep));
    }

    #[test]
    fn ten_thousand_levels_are_refused_without_recursion() {
        // Built by hand: encoding a value this deep with amq-protocol would itself recurse.
        let depth = 10_000;
        let mut t = vec![0u8; 4];
        for _ in 0..depth {
            let mut outer = Vec::with_capacity(t.len() + 10);
            let entry_len = 1 + 1 + 1 + t.len();
            outer.extend_from_slice(&(entry_len as u32).to_be_bytes());
            outer.extend_from_slice(&[1, b'k', b'F']);
            outer.extend_from_slice(&t);
            t = outer;
        }
        assert_eq!(scan_table(&t), Err(TooDeep));
    }

    #[test]
    fn malformed_input_is_left_to_the_parser() {
        let bytes = encode(&nested(4));
        for cut in 0..bytes.len() {
            assert_eq!(scan_table(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        let mut bad = vec![0, 0, 0, 3, 1, b'k', b'Z'];
        assert_eq!(scan_table(&bad), Ok(None));
        bad[6] = b'V';
        assert_eq!(scan_table(&bad), Ok(Some(7)));
    }
}
