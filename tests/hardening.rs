//! Hostile input over real sockets: each test sends what once took the whole broker down
//! (or made it hold memory without bound) and checks that only the offending channel or
//! connection is answered, while a witness connection beside it carries on.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, channel as chm, connection as c};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Connection};
use warren::protocol::nesting::MAX_NESTING;

/// A witness: a connection that must keep working whatever the hostile one does.
struct Witness {
    _conn: Connection,
    ch: Channel,
    queue: String,
}

impl Witness {
    async fn new(b: &TestBroker) -> Self {
        let (conn, ch) = b.channel().await;
        let queue = name("witness");
        ch.queue_declare(
            queue.as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        Self {
            _conn: conn,
            ch,
            queue,
        }
    }

    /// A publish and a get round trip.
    async fn round_trip(&self) {
        self.ch
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                Default::default(),
                b"alive",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        let got = self
            .ch
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the witness's message");
        assert_eq!(got.delivery.data, b"alive");
    }
}

/// An encoded field table (length first) whose single entry nests `depth` levels in all:
/// tables inside tables, or (with `arrays`) arrays inside arrays under a top-level table.
/// Built by hand, without recursion: amq-protocol's encoder would itself recurse.
fn deep_table(depth: usize, arrays: bool) -> Vec<u8> {
    let framed = |content: Vec<u8>| {
        let mut v = (content.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&content);
        v
    };
    if arrays {
        let mut a = framed(Vec::new());
        for _ in 2..depth {
            let mut element = vec![b'A'];
            element.extend_from_slice(&a);
            a = framed(element);
        }
        let mut entry = vec![1, b'a', b'A'];
        entry.extend_from_slice(&a);
        framed(entry)
    } else {
        let mut t = framed(Vec::new());
        for _ in 1..depth {
            let mut entry = vec![1, b'k', b'F'];
            entry.extend_from_slice(&t);
            t = framed(entry);
        }
        t
    }
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `queue.declare` (durable when asked) with `args` as its encoded arguments table.
fn queue_declare(channel: u16, queue: &str, durable: bool, args: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 50, 0, 10, 0, 0];
    shortstr(&mut p, queue);
    p.push(if durable { 0b10 } else { 0 });
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

/// A content header for a basic message with `headers` as its encoded headers table.
fn header_with_headers(channel: u16, body_size: u64, headers: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 0];
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0x2000u16.to_be_bytes());
    p.extend_from_slice(headers);
    frame(2, channel, &p)
}

fn publish_method(channel: u16, queue: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    warren::protocol::write_method(
        &mut out,
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    out.to_vec()
}

#[tokio::test]
async fn queue_declare_nested_ten_thousand_deep_closes_only_its_channel() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    for arrays in [false, true] {
        let mut raw = Raw::open(b.addr).await;
        raw.open_channel(1).await;
        let q = name("deep");
        raw.send_raw(&queue_declare(1, &q, false, &deep_table(10_000, arrays)))
            .await;
        assert_eq!(raw.expect_channel_close().await, (1, 406, 50, 10));
        // The connection carries on: the same declare within the bound works on another
        // channel.
        raw.open_channel(2).await;
        raw.send_raw(&queue_declare(
            2,
            &q,
            false,
            &deep_table(MAX_NESTING, arrays),
        ))
        .await;
        match raw.expect_method().await {
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::DeclareOk(ok)) => {
                assert_eq!(ok.queue.as_str(), q)
            }
            m => panic!("{m:?}"),
        }
        w.round_trip().await;
    }
}

#[tokio::test]
async fn one_level_past_the_bound_is_refused_and_the_bound_itself_is_not() {
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    raw.send_raw(&queue_declare(
        1,
        "",
        false,
        &deep_table(MAX_NESTING + 1, false),
    ))
    .await;
    assert_eq!(raw.expect_channel_close().await, (1, 406, 50, 10));
}

#[tokio::test]
async fn deep_message_headers_close_only_the_publishing_channel_and_the_bound_round_trips() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    let q = name("headers");
    w.ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    let mut out = publish_method(1, &q);
    out.extend(header_with_headers(1, 3, &deep_table(10_000, false)));
    out.extend(frame(3, 1, b"abc"));
    raw.send_raw(&out).await;
    assert_eq!(raw.expect_channel_close().await, (1, 406, 60, 40));
    w.round_trip().await;

    // At the bound, the message goes through the queue and back out with its headers.
    raw.open_channel(2).await;
    let mut out = publish_method(2, &q);
    out.extend(header_with_headers(2, 3, &deep_table(MAX_NESTING, true)));
    out.extend(frame(3, 2, b"abc"));
    raw.send_raw(&out).await;
    let got =
        w.ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await;
    // The publish is asynchronous: wait for the message with a consumer, not a sleep.
    let got = match got.unwrap() {
        Some(m) => m.delivery,
        None => {
            let mut consumer =
                w.ch.basic_consume(
                    q.as_str().into(),
                    "c".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            use futures_lite::StreamExt;
            tokio::time::timeout(WAIT, consumer.next())
                .await
                .expect("the message in time")
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(got.data, b"abc");
    let headers = got.properties.headers().as_ref().expect("headers");
    assert!(matches!(
        headers.inner().get("a"),
        Some(AMQPValue::FieldArray(_))
    ));
}

/// `connection.start-ok` with client properties nested 1,000 deep (as deep as fits in the
/// 8 KiB frame allowed before tune), before any login.
#[tokio::test]
async fn deep_client_properties_before_login_are_refused_with_a_close() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    let mut raw = Raw::connect(b.addr).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await; // start
    let mut p = vec![0, 10, 0, 11];
    p.extend_from_slice(&deep_table(1000, false));
    shortstr(&mut p, "PLAIN");
    let response = b"\0guest\0guest";
    p.extend_from_slice(&(response.len() as u32).to_be_bytes());
    p.extend_from_slice(response);
    shortstr(&mut p, "en_US");
    raw.send_raw(&frame(1, 0, &p)).await;
    match raw.next_method().await {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => {
            assert_eq!((cl.reply_code, cl.class_id, cl.method_id), (406, 10, 11))
        }
        m => panic!("{m:?}"),
    }
    w.round_trip().await;
}

/// The AMQPLAIN response is a table too, parsed before the credentials are known.
#[tokio::test]
async fn deep_amqplain_response_is_refused_with_a_close() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    let mut raw = Raw::connect(b.addr).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await; // start
    let mut p = vec![0, 10, 0, 11, 0, 0, 0, 0];
    shortstr(&mut p, "AMQPLAIN");
    let table = deep_table(1000, false);
    // The response is the table's entries without its length prefix.
    let response = &table[4..];
    p.extend_from_slice(&(response.len() as u32).to_be_bytes());
    p.extend_from_slice(response);
    shortstr(&mut p, "en_US");
    raw.send_raw(&frame(1, 0, &p)).await;
    match raw.next_method().await {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => assert_eq!(cl.reply_code, 406),
        m => panic!("{m:?}"),
    }
    w.round_trip().await;
}

#[tokio::test]
async fn a_heartbeat_with_a_payload_is_a_frame_error() {
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send_raw(&frame(8, 0, b"x")).await;
    assert_eq!(raw.expect_connection_close().await, 501);
}

/// An expiration of u64::MAX once overflowed the queue timer's arithmetic (a panic in the
/// timer task in debug builds, a timer spinning at zero wait in release). The queue's timer
/// must still work afterwards: a short-lived message behind it is dead-lettered on time.
#[tokio::test]
async fn the_largest_expiration_does_not_break_the_queue_timer() {
    let b = TestBroker::start().await;
    let (_conn, ch) = b.channel().await;
    let (q, dl) = (name("exp"), name("exp-dl"));
    ch.queue_declare(
        dl.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dl.as_str().into()),
    );
    ch.queue_declare(q.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    let publish = |exp: &'static str, body: &'static [u8]| {
        let ch = ch.clone();
        let q = q.clone();
        async move {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                body,
                BasicProperties::default().with_expiration(exp.into()),
            )
            .await
            .unwrap();
        }
    };
    publish("18446744073709551615", b"forever").await;
    // The queue round trip orders it after the publish.
    assert_eq!(ready(&ch, &q).await, 1);
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("not expired");
    assert_eq!(got.delivery.data, b"forever");
    publish("1", b"soon").await;
    let mut consumer = ch
        .basic_consume(
            dl.as_str().into(),
            "dl".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("the short-lived message dead-lettered by the timer")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"soon");
}

/// Queues `c0 .. c{n-1}` that each hold nothing (`x-max-length: 0`) and dead-letter to the
/// next, the last to `end`.
async fn dead_letter_chain(ch: &Channel, prefix: &str, n: usize) -> String {
    let end = format!("{prefix}-end");
    ch.queue_declare(
        end.as_str().into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in (0..n).rev() {
        let next = if i + 1 == n {
            end.clone()
        } else {
            format!("{prefix}-{}", i + 1)
        };
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(0));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(next.as_str().into()),
        );
        ch.queue_declare(
            format!("{prefix}-{i}").as_str().into(),
            QueueDeclareOptions {
                nowait: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    }
    end
}

async fn publish_confirmed(ch: &Channel, queue: &str) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        b"hop",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Dead-lettering once took a stack frame per hop; a chain of thousands of queues could
/// overflow the stack with one publish. Now a chain within the hop bound delivers to its
/// end with the whole history, and a longer one drops the message at the bound.
#[tokio::test]
async fn a_long_dead_letter_chain_neither_overflows_nor_runs_forever() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    let (_conn, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();

    let short = dead_letter_chain(&ch, &name("short"), 50).await;
    let first = short.replace("-end", "-0");
    publish_confirmed(&ch, &first).await;
    let got = ch
        .basic_get(short.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("through the chain");
    let deaths = match got
        .delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("x-death")
    {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().len(),
        h => panic!("{h:?}"),
    };
    assert_eq!(deaths, 50);

    let long = dead_letter_chain(&ch, &name("long"), 3000).await;
    publish_confirmed(&ch, &long.replace("-end", "-0")).await;
    assert_eq!(ready(&ch, &long).await, 0, "dropped at the hop bound");
    w.round_trip().await;
}

/// Every table the nesting bound lets through can be stored as a durable definition and read
/// back at the next boot (deeper ones, which the store could not read back, are refused by
/// the bound first; the store's own refusal is unit-tested in `store::definitions`).
#[tokio::test]
async fn durable_arguments_within_the_bound_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = name("durable-deep");
    {
        let b = BinBroker::start(dir.path());
        let mut raw = Raw::open(b.addr).await;
        raw.open_channel(1).await;
        raw.send_raw(&queue_declare(1, &q, true, &deep_table(MAX_NESTING, true)))
            .await;
        assert!(matches!(
            raw.expect_method().await,
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::DeclareOk(_))
        ));
        b.stop();
    }
    let b = BinBroker::start(dir.path());
    let (_conn, ch) = b.channel().await;
    passive_declare(&ch, &q).await.expect("the queue came back");
    b.stop();
}

/// After channel.close the channel's id may be opened again (the refusal left the
/// connection in step).
#[tokio::test]
async fn a_refused_frame_leaves_the_stream_in_step() {
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    raw.send_raw(&queue_declare(1, "", false, &deep_table(100, false)))
        .await;
    assert_eq!(raw.expect_channel_close().await, (1, 406, 50, 10));
    raw.send(
        1,
        AMQPClass::Channel(chm::AMQPMethod::CloseOk(chm::CloseOk {})),
    )
    .await;
    raw.open_channel(1).await;
    raw.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    assert!(matches!(
        raw.expect_method().await,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
    ));
}

/// A panic in one connection's task (provoked through the `test-hooks` feature) closes that
/// connection with 541 and nothing else: its unacked delivery goes back to the queue, and
/// the witness and the broker carry on.
#[tokio::test]
async fn a_panic_in_a_connection_closes_only_that_connection_and_leaks_nothing() {
    let b = TestBroker::start().await;
    let w = Witness::new(&b).await;
    let q = name("held");
    w.ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    w.ch.basic_publish(
        "".into(),
        q.as_str().into(),
        Default::default(),
        b"held",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let (conn, ch) = b.channel().await;
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the message, unacked");
    assert!(!got.delivery.redelivered);
    let other = conn.create_channel().await.unwrap();
    let e = other
        .queue_declare(
            warren::connection::TEST_PANIC_QUEUE.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 541, "{e:?}");
    assert!(!conn.status().connected());
    let back =
        w.ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the unacked message back in its queue");
    assert!(back.delivery.redelivered);
    w.round_trip().await;
    // New connections are still served.
    let (_c2, ch2) = b.channel().await;
    assert_eq!(ready(&ch2, &w.queue).await, 0);
}

/// The broker process's virtual size or resident set, in KiB, from /proc.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A content header's declared size is not reserved before the bytes come: 100 channels
/// each declaring a 128 MiB body and sending one byte of it once made the broker reserve
/// 12.5 GiB of address space at once (2,047 channels: 256 GiB).
#[tokio::test]
async fn declared_body_sizes_are_not_reserved_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let b = BinBroker::start(dir.path());
    let pid = b.child.id();
    let before = proc_kib(pid, "VmSize:");
    let mut raw = Raw::open(b.addr).await;
    let mut out = Vec::new();
    for ch in 1..=100u16 {
        out.extend(frame(1, ch, &[0, 20, 0, 10, 0]));
        out.extend(publish_method(ch, "nowhere"));
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&(128u64 << 20).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        out.extend(frame(2, ch, &header));
        out.extend(frame(3, ch, b"x"));
    }
    raw.send_raw(&out).await;
    // Frames are handled in order: once channel 101 is open, every body frame above was.
    raw.send_raw(&frame(1, 101, &[0, 20, 0, 10, 0])).await;
    loop {
        match raw.frame().await.expect("a frame") {
            amq_protocol::frame::AMQPFrame::Method(101, _) => break,
            _ => continue,
        }
    }
    let grown_mib = (proc_kib(pid, "VmSize:").saturating_sub(before)) / 1024;
    assert!(grown_mib < 1024, "address space grew by {grown_mib} MiB");
}

/// Bodies being received in several frames count against `memory_budget`, across
/// connections: past it the connection that would go over is closed with 506, and what it
/// held is given back.
#[tokio::test]
async fn partial_bodies_past_the_memory_budget_close_their_connection_with_506() {
    let b = TestBroker::start_with(|c| c.memory_budget = 1 << 20).await;
    let w = Witness::new(&b).await;
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    let mut out = publish_method(1, &w.queue);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(4u64 << 20).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    out.extend(frame(2, 1, &header));
    let piece = vec![b'p'; 100 * 1024];
    for _ in 0..11 {
        out.extend(frame(3, 1, &piece));
    }
    raw.send_raw(&out).await;
    assert_eq!(raw.expect_connection_close().await, 506);
    // Given back: a message of 900 KiB in 9 frames goes through.
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    let mut out = publish_method(1, &w.queue);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(900u64 * 1024).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    out.extend(frame(2, 1, &header));
    for _ in 0..9 {
        out.extend(frame(3, 1, &piece));
    }
    raw.send_raw(&out).await;
    raw.send_raw(&frame(1, 1, &[0, 85, 0, 10, 0])).await; // confirm.select, a round trip
    raw.expect_method().await;
    assert_eq!(ready(&w.ch, &w.queue).await, 1);
}

/// A transaction holds at most `max_transaction_bytes` of uncommitted publishes.
#[tokio::test]
async fn a_transaction_past_max_transaction_bytes_is_refused() {
    let b = TestBroker::start_with(|c| c.max_transaction_bytes = 1 << 20).await;
    let w = Witness::new(&b).await;
    let (conn, ch) = b.channel().await;
    ch.tx_select().await.unwrap();
    let body = vec![b't'; 100 * 1024];
    for _ in 0..10 {
        ch.basic_publish(
            "".into(),
            w.queue.as_str().into(),
            Default::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    ch.tx_commit().await.unwrap();
    assert_eq!(ready(&w.ch, &w.queue).await, 10);
    // Past the bound, with a raw client: the close arrives while lapin may still be
    // publishing, and lapin then reports the channel's state instead of the reply code.
    let mut raw = Raw::open(b.addr).await;
    raw.open_channel(1).await;
    raw.send(
        1,
        AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::Select(
            Default::default(),
        )),
    )
    .await;
    raw.expect_method().await;
    for _ in 0..11 {
        raw.publish(
            1,
            basic::Publish {
                routing_key: w.queue.as_str().into(),
                ..Default::default()
            },
            &BasicProperties::default(),
            &body,
        )
        .await;
    }
    assert_eq!(raw.expect_channel_close().await, (1, 406, 60, 40));
    assert!(conn.status().connected());
    assert_eq!(ready(&w.ch, &w.queue).await, 10);
}

/// An acking consumer without a prefetch limit gets at most `max_unacked_bytes` of bodies
/// unacked; an ack lets the next one through.
#[tokio::test]
async fn unacked_deliveries_hold_at_most_max_unacked_bytes() {
    use futures_lite::StreamExt;
    let b = TestBroker::start_with(|c| c.max_unacked_bytes = 1 << 20).await;
    let (_conn, ch) = b.channel().await;
    let q = name("unacked");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![b'u'; 64 * 1024];
    for _ in 0..50 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            Default::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(ready(&ch, &q).await, 50);
    let (_c2, consumer_ch) = b.channel().await;
    let mut consumer = consumer_ch
        .basic_consume(
            q.as_str().into(),
            "greedy".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..16 {
        got.push(consumer.next().await.unwrap().unwrap());
    }
    // 16 x 64 KiB is the limit: nothing more was pushed, and nothing will be until an ack.
    assert_eq!(ready(&ch, &q).await, 34);
    got[0].ack(Default::default()).await.unwrap();
    let next = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("one more after the ack")
        .unwrap()
        .unwrap();
    assert!(!next.redelivered);
    assert_eq!(ready(&ch, &q).await, 33);
}

/// A deep transient queue pages past `queue_memory_budget` instead of holding its bodies,
/// even when publishers outrun the disk, and a delete gives the memory back to the system.
/// Once, the log's pending batch grew without bound while a slower disk wrote the previous
/// one (a 1 GiB flood held 951 MiB with a 128 MiB budget), and RSS stayed high after the
/// delete. The disk here is slowed to 32 MiB/s by a test hook, below what one publisher sends.
#[tokio::test]
async fn a_deep_transient_queue_stays_near_its_budget_and_a_delete_gives_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rabbit.toml");
    std::fs::write(&config, "queue_memory_budget = 16777216\n").unwrap();
    let rate = (32u64 << 20).to_string();
    let b = BinBroker::start_with_env(
        dir.path(),
        &config,
        &[(warren::broker::TEST_DISK_RATE_ENV, rate.as_str())],
    );
    let pid = b.child.id();
    let (_c, ch) = b.channel().await;
    let q = name("flood");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let idle_mib = proc_kib(pid, "VmRSS:") / 1024;
    // 160 MiB, published without waiting for anything until the end.
    let body = vec![b'f'; 64 * 1024];
    for _ in 0..2560 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            Default::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let mut peak_mib = 0;
    while ready(&ch, &q).await < 2560 {
        peak_mib = peak_mib.max(proc_kib(pid, "VmRSS:") / 1024);
    }
    peak_mib = peak_mib.max(proc_kib(pid, "VmRSS:") / 1024);
    assert!(
        peak_mib < idle_mib + 80,
        "160 MiB queued with a 16 MiB budget: RSS peaked at {peak_mib} MiB, idle {idle_mib} MiB"
    );
    let deleted = ch
        .queue_delete(q.as_str().into(), Default::default())
        .await
        .unwrap();
    assert_eq!(deleted, 2560);
    // The allocator hands freed pages back from a once-a-second purge: poll for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now_mib = proc_kib(pid, "VmRSS:") / 1024;
        if now_mib <= idle_mib + 32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "RSS {now_mib} MiB 15 s after the delete, idle {idle_mib} MiB"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
