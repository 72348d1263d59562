//! Randomized robustness: valid frames built with amq-protocol's encoder, then mutated
//! (flipped bytes, truncation, splices, wrong sizes, types and channels, field tables nested
//! up to thousands deep), sent over a real socket to one in-process broker after a normal
//! handshake.
//!
//! Talks to the broker only over TCP: `Raw` (tests/common) for the malformed side, and one
//! lapin *witness* connection, opened before the first case and kept across all of them,
//! that must still complete a round trip after every case. A case passes when the broker
//! closes the connection (connection.close, or the socket ends) within `DEADLINE`; the
//! process surviving is the never-panics, never-aborts half, since a panic in a connection
//! task would lose the witness's round trip or the close, and an abort (stack overflow)
//! ends the test binary.
//!
//! Bounded: a fixed case count and a fixed seed, so a run is reproducible and short. The
//! coverage-guided, unbounded counterpart is the `fuzz/` crate.

mod common;

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, connection, exchange, queue,
};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};
use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the broker has to close a connection after the last byte of a case.
const DEADLINE: Duration = Duration::from_secs(5);
/// Cases per run: enough to hit every seed and mutation kind several times, few enough
/// that a debug build finishes in seconds.
const CASES: u32 = 96;
/// The fixed seed (any 32 bytes); change it to explore, keep it fixed to reproduce.
const SEED: [u8; 32] = *b"warren fuzz_frames seed, v1 ....";
/// The frame_max `Raw::open` negotiates.
const FRAME_MAX: usize = 131_072;

/// One well-formed frame (or frame group) before mutation.
#[derive(Clone, Debug)]
enum Seed {
    ChannelOpen(u16),
    Heartbeat {
        channel: u16,
    },
    QueueDeclare {
        queue: String,
        bits: u8,
        arguments: FieldTable,
    },
    ExchangeDeclare {
        exchange: String,
        kind: String,
        bits: u8,
        arguments: FieldTable,
    },
    /// basic.publish, content header with these headers, then the body in one frame.
    Publish {
        routing_key: String,
        headers: FieldTable,
        body: Vec<u8>,
    },
    /// A table nested `depth` levels, hand-framed (amq-protocol's encoder recurses too),
    /// as queue.declare arguments or as a content header's headers.
    Deep {
        depth: usize,
        shape: Shape,
        in_header: bool,
    },
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Tables,
    Arrays,
    Alternating,
}

/// What is done to the encoded stream.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Cut the stream short.
    Truncate(Index),
    /// Insert random bytes.
    Splice(Index, Vec<u8>),
    /// Remove a run of bytes.
    Delete(Index, u8),
    /// Rewrite a field of one frame's envelope.
    Envelope(Index, Edit),
}

#[derive(Clone, Debug)]
enum Edit {
    Size(u32),
    SizeDelta(i8),
    Type(u8),
    Channel(u16),
    FrameEnd(u8),
}

#[derive(Clone, Debug)]
struct Case {
    seeds: Vec<Seed>,
    mutations: Vec<Mutation>,
}

fn leaf() -> impl Strategy<Value = AMQPValue> {
    prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| AMQPValue::ByteArray(b.into())),
    ]
}

/// Tables and arrays nested up to 50 deep (proptest's recursion bound, so most are far
/// shallower; `Seed::Deep` covers exact, large depths).
fn value() -> impl Strategy<Value = AMQPValue> {
    leaf().prop_recursive(50, 96, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            table_of(inner).prop_map(AMQPValue::FieldTable),
        ]
    })
}

fn table_of(v: impl Strategy<Value = AMQPValue>) -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec(("[a-z-]{0,6}", v), 0..3).prop_map(|entries| {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(k.into(), v);
        }
        t
    })
}

fn seed() -> impl Strategy<Value = Seed> {
    let depth = prop_oneof![
        3 => 1usize..=50,
        2 => 30usize..=40,
        2 => 100usize..=5000,
    ];
    let shape = prop_oneof![
        Just(Shape::Tables),
        Just(Shape::Arrays),
        Just(Shape::Alternating)
    ];
    prop_oneof![
        (0u16..4).prop_map(Seed::ChannelOpen),
        (0u16..3).prop_map(|channel| Seed::Heartbeat { channel }),
        ("fz-[a-z]{0,8}", any::<u8>(), table_of(value())).prop_map(|(queue, bits, arguments)| {
            Seed::QueueDeclare {
                queue,
                bits,
                arguments,
            }
        }),
        (
            "fz-[a-z]{0,8}",
            prop_oneof![
                Just("direct"),
                Just("fanout"),
                Just("topic"),
                Just("headers"),
                Just("x-nope")
            ],
            any::<u8>(),
            table_of(value()),
        )
            .prop_map(|(exchange, kind, bits, arguments)| Seed::ExchangeDeclare {
                exchange,
                kind: kind.to_owned(),
                bits,
                arguments,
            }),
        (
            "fz-[a-z]{0,8}",
            table_of(value()),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(routing_key, headers, body)| Seed::Publish {
                routing_key,
                headers,
                body
            }),
        (depth, shape, any::<bool>()).prop_map(|(depth, shape, in_header)| Seed::Deep {
            depth,
            shape,
            in_header
        }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let edit = prop_oneof![
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(FRAME_MAX as u32),
            Just(FRAME_MAX as u32 + 1),
            Just(u32::MAX),
            any::<u32>()
        ]
        .prop_map(Edit::Size),
        any::<i8>().prop_map(Edit::SizeDelta),
        prop_oneof![
            Just(0u8),
            Just(1),
            Just(2),
            Just(3),
            Just(4),
            Just(8),
            any::<u8>()
        ]
        .prop_map(Edit::Type),
        prop_oneof![Just(0u16), Just(1), Just(2047), Just(2048), any::<u16>()]
            .prop_map(Edit::Channel),
        any::<u8>().prop_map(Edit::FrameEnd),
    ];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
        1 => (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        3 => (any::<Index>(), edit).prop_map(|(i, e)| Mutation::Envelope(i, e)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(seed(), 1..5),
        // No mutation at all is a case too: the seeds alone must be answered sanely.
        proptest::collection::vec(mutation(), 0..4),
    )
        .prop_map(|(seeds, mutations)| Case { seeds, mutations })
}

/// One frame through amq-protocol's encoder.
fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("encodable frame");
    ctx.into_inner().0
}

fn method(ch: u16, m: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(ch, m))
}

/// A value `depth` levels deep (depth 1 is an empty table or array), framed by hand so
/// that building it does not recurse.
fn deep_value(depth: usize, shape: Shape) -> Vec<u8> {
    let is_table = |level: usize| match shape {
        Shape::Tables => true,
        Shape::Arrays => false,
        Shape::Alternating => level.is_multiple_of(2),
    };
    // Innermost first: an empty container is its tag and a zero length.
    let mut size = 5usize;
    let mut prefixes = Vec::with_capacity(depth);
    for level in (0..depth.saturating_sub(1)).rev() {
        let mut p = Vec::with_capacity(7);
        if is_table(level) {
            // One entry: key "k", then the inner value.
            p.push(b'F');
            p.extend_from_slice(&((2 + size) as u32).to_be_bytes());
            p.extend_from_slice(&[1, b'k']);
        } else {
            p.push(b'A');
            p.extend_from_slice(&(size as u32).to_be_bytes());
        }
        size += p.len();
        prefixes.push(p);
    }
    let mut out = Vec::with_capacity(size);
    for p in prefixes.iter().rev() {
        out.extend_from_slice(p);
    }
    out.push(if is_table(depth.saturating_sub(1)) {
        b'F'
    } else {
        b'A'
    });
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// A field table whose one entry "deep" holds `deep_value`.
fn deep_table(depth: usize, shape: Shape) -> Vec<u8> {
    let v = deep_value(depth, shape);
    let mut t = Vec::with_capacity(v.len() + 9);
    t.extend_from_slice(&((5 + v.len()) as u32).to_be_bytes());
    t.push(4);
    t.extend_from_slice(b"deep");
    t.extend_from_slice(&v);
    t
}

/// Replaces the empty field table that ends `frame`'s payload with `table`, fixing the
/// size: the encoder frames the method, the hand-built table goes where its arguments were.
fn with_table_tail(mut frame: Vec<u8>, table: &[u8]) -> Vec<u8> {
    assert_eq!(
        frame[frame.len() - 5..],
        [0, 0, 0, 0, 0xCE],
        "ends in an empty table"
    );
    frame.truncate(frame.len() - 5);
    frame.extend_from_slice(table);
    frame.push(0xCE);
    let size = (frame.len() - 8) as u32;
    frame[3..7].copy_from_slice(&size.to_be_bytes());
    frame
}

fn publish_frames(ch: u16, routing_key: &str, props: BasicProperties, body: &[u8]) -> Vec<u8> {
    let mut out = method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out.extend(encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: props,
        },
    )));
    if !body.is_empty() {
        out.extend(encode(&AMQPFrame::Body(ch, body.to_vec())));
    }
    out
}

/// Encodes the seeds back to back; returns the bytes and where each frame starts.
fn build(seeds: &[Seed]) -> (Vec<u8>, Vec<usize>) {
    let cap = depth_cap();
    // Channel 1 is opened first (mutable like the rest): without it nearly every case
    // would stop at a 504 on its first method and never reach the decoders behind it.
    let mut out = method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    for s in seeds {
        let capped;
        let s = match s {
            Seed::Deep {
                depth,
                shape,
                in_header,
            } if *depth > cap => {
                capped = Seed::Deep {
                    depth: cap,
                    shape: *shape,
                    in_header: *in_header,
                };
                &capped
            }
            s => s,
        };
        let bytes = match s {
            Seed::ChannelOpen(ch) => method(
                *ch,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
            Seed::Heartbeat { channel: 0 } => encode(&AMQPFrame::Heartbeat),
            Seed::Heartbeat { channel } => encode(&AMQPFrame::InvalidHeartbeat(*channel)),
            Seed::QueueDeclare {
                queue,
                bits,
                arguments,
            } => method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: queue.as_str().into(),
                    passive: bits & 1 != 0,
                    durable: bits & 2 != 0,
                    exclusive: bits & 4 != 0,
                    auto_delete: bits & 8 != 0,
                    nowait: bits & 16 != 0,
                    arguments: arguments.clone(),
                })),
            ),
            Seed::ExchangeDeclare {
                exchange,
                kind,
                bits,
                arguments,
            } => method(
                1,
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: exchange.as_str().into(),
                    kind: kind.as_str().into(),
                    passive: bits & 1 != 0,
                    durable: bits & 2 != 0,
                    auto_delete: bits & 4 != 0,
                    internal: bits & 8 != 0,
                    nowait: bits & 16 != 0,
                    arguments: arguments.clone(),
                })),
            ),
            Seed::Publish {
                routing_key,
                headers,
                body,
            } => publish_frames(
                1,
                routing_key,
                BasicProperties::default().with_headers(headers.clone()),
                body,
            ),
            Seed::Deep {
                depth,
                shape,
                in_header: false,
            } => with_table_tail(
                method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        queue: "fz-deep".into(),
                        ..Default::default()
                    })),
                ),
                &deep_table(*depth, *shape),
            ),
            Seed::Deep {
                depth,
                shape,
                in_header: true,
            } => {
                // Headers are the only property set: flags 0x2000, then the table.
                let mut header = encode(&AMQPFrame::Header(
                    1,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: 0,
                        properties: BasicProperties::default(),
                    },
                ));
                header.truncate(header.len() - 3);
                header.extend_from_slice(&0x2000u16.to_be_bytes());
                header.extend_from_slice(&deep_table(*depth, *shape));
                header.push(0xCE);
                let size = (header.len() - 8) as u32;
                header[3..7].copy_from_slice(&size.to_be_bytes());
                let mut out = publish_frames(1, "fz-deep", BasicProperties::default(), &[]);
                // Drop the property-less header publish_frames wrote; keep its method.
                let method_len = 8 + u32::from_be_bytes(out[3..7].try_into().unwrap()) as usize;
                out.truncate(method_len);
                out.extend(header);
                out
            }
        };
        out.extend(bytes);
    }
    // Frame starts, walked from the envelopes (before mutation they are all well-formed).
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 7 <= out.len() {
        starts.push(at);
        at += 8 + u32::from_be_bytes(out[at + 3..at + 7].try_into().unwrap()) as usize;
    }
    (out, starts)
}

fn mutate(mut bytes: Vec<u8>, starts: &[usize], mutations: &[Mutation]) -> Vec<u8> {
    // Envelope edits first, while the recorded frame starts are still where the frames are.
    for m in mutations {
        if let Mutation::Envelope(i, edit) = m {
            let at = starts[i.index(starts.len())];
            let size_at = at + 3..at + 7;
            let size = u32::from_be_bytes(bytes[size_at.clone()].try_into().unwrap());
            match edit {
                Edit::Size(s) => bytes[size_at].copy_from_slice(&s.to_be_bytes()),
                Edit::SizeDelta(d) => bytes[size_at]
                    .copy_from_slice(&size.wrapping_add_signed(i32::from(*d)).to_be_bytes()),
                Edit::Type(t) => bytes[at] = *t,
                Edit::Channel(c) => bytes[at + 1..at + 3].copy_from_slice(&c.to_be_bytes()),
                Edit::FrameEnd(e) => bytes[at + 7 + size as usize] = *e,
            }
        }
    }
    for m in mutations {
        match m {
            Mutation::Envelope(..) => {}
            Mutation::Flip(i, mask) => {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] ^= mask;
                }
            }
            Mutation::Truncate(i) => {
                let at = i.index(bytes.len() + 1);
                bytes.truncate(at);
            }
            Mutation::Splice(i, extra) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    let end = (at + usize::from(*n)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
    }
    bytes
}

/// `FUZZ_FRAMES_MAX_DEPTH` caps `Seed::Deep` when set, for looking past a known stack
/// overflow. It is applied when a case is encoded, not in the strategy, so the generated
/// sequence, and every other case, stays the same.
fn depth_cap() -> usize {
    std::env::var("FUZZ_FRAMES_MAX_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

/// A one-line account of a case (its tables left out), printed before it runs when
/// `FUZZ_FRAMES_VERBOSE` is set, so the case that aborts the process can be named.
fn describe(case: &Case) -> String {
    let seeds: Vec<String> = case
        .seeds
        .iter()
        .map(|s| match s {
            Seed::ChannelOpen(ch) => format!("channel.open({ch})"),
            Seed::Heartbeat { channel } => format!("heartbeat({channel})"),
            Seed::QueueDeclare { queue, bits, .. } => {
                format!("queue.declare({queue}, {bits:#04x})")
            }
            Seed::ExchangeDeclare {
                exchange,
                kind,
                bits,
                ..
            } => {
                format!("exchange.declare({exchange}, {kind}, {bits:#04x})")
            }
            Seed::Publish {
                routing_key, body, ..
            } => {
                format!("publish({routing_key}, {} bytes)", body.len())
            }
            Seed::Deep {
                depth,
                shape,
                in_header,
            } => format!(
                "deep({depth} {shape:?} in {})",
                if *in_header {
                    "headers"
                } else {
                    "queue.declare arguments"
                }
            ),
        })
        .collect();
    format!("{} | {:?}", seeds.join(", "), case.mutations)
}

/// How a case ended, for the summary.
#[derive(Debug)]
enum End {
    /// connection.close with this reply code.
    Close(u16),
    /// The socket ended (EOF or reset) without a close frame.
    Eof,
}

/// Sends `stream` and then a flush, and reads until the broker closes.
///
/// The flush is frame_max + 16 bytes of 0xCE: enough to complete any frame the mutations
/// left half-sent (its size is at most frame_max), after which the decoder meets frame type
/// 0xCE, which it must refuse. So every case, however mangled, has to end in a close, and
/// a case that does not end is a hang rather than a broker politely waiting for more.
async fn run_case(raw: &mut Raw, stream: &[u8]) -> Result<End, String> {
    let flush = vec![0xCEu8; FRAME_MAX + 16];
    let (mut rd, mut wr) = raw.sock.split();
    // Writing and reading at once: a broker that has stopped reading must not block the
    // test's write, and its close must be seen while the flush is still going out.
    let write = async {
        // A write error means the broker already closed; the reader sees that too.
        if wr.write_all(stream).await.is_ok() {
            let _ = wr.write_all(&flush).await;
        }
        std::future::pending::<()>().await
    };
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            while let Ok((rest, f)) = parse_frame(&buf[..]) {
                let used = buf.len() - rest.len();
                let _ = buf.split_to(used);
                if let AMQPFrame::Method(
                    _,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                ) = f
                {
                    return End::Close(c.reply_code);
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return End::Eof,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            end = read => end,
            () = write => unreachable!("the write future never completes"),
        }
    })
    .await
    .map_err(|_| format!("no close within {DEADLINE:?}"))
}

#[test]
fn mutated_frames_never_take_the_broker_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = rt.block_on(TestBroker::start());
    let (witness_conn, witness) = rt.block_on(broker.channel());
    let witness_q = "fuzz-witness";
    rt.block_on(witness.queue_declare(witness_q.into(), Default::default(), FieldTable::default()))
        .unwrap();

    let config = Config {
        cases: CASES,
        // A seeded run needs no regression file, and must not write one into the tree.
        failure_persistence: None,
        // Shrinking reruns cases; a few dozen is plenty to get a readable counterexample.
        max_shrink_iters: 64,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let ends = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let verbose = std::env::var_os("FUZZ_FRAMES_VERBOSE").is_some();
    let result = runner.run(&case(), |case| {
        if verbose {
            eprintln!("case: {}", describe(&case));
        }
        let (bytes, starts) = build(&case.seeds);
        let stream = mutate(bytes, &starts, &case.mutations);
        rt.block_on(async {
            let mut raw = Raw::open(broker.addr).await;
            let end = run_case(&mut raw, &stream).await.map_err(|e| {
                TestCaseError::fail(format!(
                    "{e}; {} bytes sent after the handshake",
                    stream.len()
                ))
            })?;
            // The broker is still there: the witness, idle through all of this, does a
            // round trip on its own long-lived connection.
            tokio::time::timeout(DEADLINE, passive_declare(&witness, witness_q))
                .await
                .map_err(|_| TestCaseError::fail("witness round trip timed out"))?
                .map_err(|e| TestCaseError::fail(format!("witness round trip failed: {e}")))?;
            ends.lock().unwrap().push(end);
            Ok(())
        })
    });
    let ends = ends.into_inner().unwrap();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for e in &ends {
        let key = match e {
            End::Close(c) => format!("close {c}"),
            End::Eof => "eof".to_owned(),
        };
        *codes.entry(key).or_default() += 1;
    }
    eprintln!("{} cases in {:?}: {codes:?}", ends.len(), started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        witness_conn.status().connected(),
        "the witness connection survived"
    );
    rt.block_on(broker.stop());
}

/// The hand-framed deep tables are what they claim: amq-protocol parses them (at depths
/// its recursion survives) to exactly `depth` levels, and the frames built around them
/// parse whole.
#[test]
fn deep_tables_are_well_formed() {
    fn depth_of(v: &AMQPValue) -> usize {
        match v {
            AMQPValue::FieldTable(t) => 1 + t.inner().values().map(depth_of).max().unwrap_or(0),
            AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }
    for shape in [Shape::Tables, Shape::Arrays, Shape::Alternating] {
        for depth in 1..40 {
            let bytes = deep_table(depth, shape);
            let (rest, t) = amq_protocol::types::parsing::parse_field_table(&bytes[..]).unwrap();
            assert!(rest.is_empty());
            assert_eq!(depth_of(&t.inner()["deep"]), depth, "{shape:?} {depth}");
            for in_header in [false, true] {
                let (bytes, starts) = build(&[Seed::Deep {
                    depth,
                    shape,
                    in_header,
                }]);
                let mut at = &bytes[..];
                for _ in &starts {
                    let (rest, _) = parse_frame(at).unwrap();
                    at = rest;
                }
                assert!(at.is_empty());
            }
        }
    }
}
