"""Stream queues (x-queue-type: stream) over AMQP 0-9-1: consuming.

basic.consume needs manual acks and a per-consumer prefetch, the prefetch is
the consumer's credit, x-stream-offset picks the start (first, last, next, a
numeric offset, a timestamp, an interval), every delivery carries an
x-stream-offset header (type long), acks remove nothing, every consumer reads
everything from its own start, and a consumer at the tail is woken by new
data.  Reply texts are RabbitMQ 3.10.8's (see
/work/shared/reference/streams.md, sections 4, 5 and 9).

"One message per chunk": each message is published and confirmed before the
next, so that the broker writes each in its own chunk (the offsets "last" and
timestamps work by chunk)."""
import datetime
import socket
import struct
import time

import pika
import pika.exceptions
import pika.frame
import pika.spec
import pytest

from helpers import (Collector, RawConfirms, assert_channel_closed,
                     assert_connection_closed, settle, sync, wait_until)
from helpers_interop import Session, is_warren

PF = "PRECONDITION_FAILED - "
NI = "NOT_IMPLEMENTED - "


def _rq(q):
    return "queue '%s' in vhost '/'" % q


def _stream(ch, names, extra=None):
    q = names.queue("st")
    args = {"x-queue-type": "stream"}
    args.update(extra or {})
    ch.queue_declare(q, durable=True, arguments=args)
    return q


def _publish(conn, q, bodies, each=True, exchange="", routing_key=None, **props):
    """Publish with confirms on a channel of its own.  ``each``: wait for the
    confirm of every message before the next (one message per chunk)."""
    pch = conn.channel()
    rc = RawConfirms(conn, pch)
    properties = pika.BasicProperties(**props) if props else None
    for body in bodies:
        rc.publish(exchange, q if routing_key is None else routing_key, body,
                   properties=properties)
        if each:
            assert rc.wait_all(), "publish not confirmed"
    assert rc.wait_all(), "publish not confirmed"
    assert set(rc.outcome().values()) == {"ack"}
    pch.close()


def _consume(ch, q, offset=None, prefetch=100, **kwargs):
    col = Collector()
    ch.basic_qos(prefetch_count=prefetch)
    args = kwargs.pop("arguments", {})
    if offset is not None:
        args["x-stream-offset"] = offset
    tag = ch.basic_consume(q, col, arguments=args, **kwargs)
    col.consumer_tag = tag
    return col


def _wait_n(conn, col, n, then_settle=False):
    """Wait for ``n`` deliveries; ``then_settle``: also check nothing more comes."""
    assert wait_until(conn, lambda: len(col) >= n), "got %r" % (col.bodies,)
    if then_settle:
        settle(conn)
    return col.bodies


def _offsets(col):
    return [m[1].headers["x-stream-offset"] for m in col.messages]


# --- rules enforced at basic.consume ----------------------------------------------

def _prefetch_not_set(q):
    return PF + "consumer prefetch count is not set for '%s'" % _rq(q)


def test_consume_without_qos_refused(conn, ch, names):
    q = _stream(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, Collector())
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == _prefetch_not_set(q)
    assert conn.is_open


def test_consume_with_qos_zero_refused(conn, ch, names):
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, Collector())
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == _prefetch_not_set(q)


def test_consume_with_only_global_qos_refused(conn, ch, names):
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=10, global_qos=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, Collector())
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == _prefetch_not_set(q)


def test_consume_no_ack_refused(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_consume(q, Collector(), auto_ack=True)
    assert_connection_closed(ei, 540)
    assert ei.value.reply_text == (
        NI + "automatic acknowledgement not supported by stream queues %s" % _rq(q))


def test_per_consumer_then_global_qos_refused(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=10)
    ch.basic_qos(prefetch_count=10, global_qos=True)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_consume(q, Collector())
    assert_connection_closed(ei, 540)
    assert ei.value.reply_text == NI + "%s does not support global qos" % _rq(q)


def test_global_then_per_consumer_qos_works(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"])
    ch.basic_qos(prefetch_count=10, global_qos=True)
    ch.basic_qos(prefetch_count=10)
    col = Collector()
    ch.basic_consume(q, col, arguments={"x-stream-offset": "first"})
    assert _wait_n(conn, col, 1) == [b"m0"]


def test_stream_offset_on_classic_queue_refused(conn, ch, names):
    q = names.queue("cq")
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, Collector(), arguments={"x-stream-offset": "first"})
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == (
        PF + "invalid arg 'x-stream-offset' for %s of queue type rabbit_classic_queue" % _rq(q))


def test_exclusive_consumer_does_not_keep_others_out(conn, names):
    # RabbitMQ 3.10.8 does not enforce exclusive consumers on streams.
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"])
    a = _consume(ch, q, "first", exclusive=True)
    ch2 = conn.channel()
    b = _consume(ch2, q, "first")
    assert _wait_n(conn, a, 1) == [b"m0"]
    assert _wait_n(conn, b, 1) == [b"m0"]


# --- credit ---------------------------------------------------------------------------

def test_prefetch_is_credit(conn, ch, names):
    q = _stream(ch, names)
    bodies = [b"m%d" % i for i in range(5)]
    _publish(conn, q, bodies)
    col = _consume(ch, q, "first", prefetch=2)
    assert _wait_n(conn, col, 2, then_settle=True) == bodies[:2]
    ch.basic_ack(col.tags[0])
    assert _wait_n(conn, col, 3, then_settle=True) == bodies[:3]
    ch.basic_ack(col.tags[2], multiple=True)
    assert _wait_n(conn, col, 5) == bodies


def test_credit_is_checked_per_chunk(conn, ch, names):
    # A burst written at once becomes one chunk (or a few), and the reader
    # delivers a whole chunk while the consumer has credit left: more than
    # `prefetch` deliveries can be outstanding.  The burst goes out in a single
    # socket write so that the broker gets it at once.
    q = _stream(ch, names)
    s = Session()
    try:
        s.rpc(1, pika.spec.Confirm.Select())
        data = b"".join(s.publish_frames(1, "", q, b"m%d" % i) for i in range(20))
        s.send_bytes(data)
        acked = 0
        while acked < 20:
            f = s.recv_method()
            assert isinstance(f.method, pika.spec.Basic.Ack), f
            acked = f.method.delivery_tag
    finally:
        s.shutdown()
    col = _consume(ch, q, "first", prefetch=2)
    if is_warren():
        # Warren holds a stream consumer to its prefetch exactly, chunk or not: the
        # prefetch is what bounds a client's memory (RabbitMQ quirk 7, not copied).
        assert wait_until(conn, lambda: len(col) >= 2), col.bodies
        settle(conn)
        assert col.bodies == [b"m0", b"m1"]
        ch.basic_ack(col.tags[-1], multiple=True)
        assert wait_until(conn, lambda: len(col) >= 4), col.bodies
        settle(conn)
        assert col.bodies == [b"m%d" % i for i in range(4)]
        return
    assert wait_until(conn, lambda: len(col) > 2), col.bodies
    settle(conn)
    assert 2 < len(col) <= 20
    assert col.bodies == [b"m%d" % i for i in range(len(col))]


def test_acks_remove_nothing(conn, ch, names):
    q = _stream(ch, names)
    bodies = [b"m0", b"m1", b"m2"]
    _publish(conn, q, bodies)
    col = _consume(ch, q, "first")
    assert _wait_n(conn, col, 3) == bodies
    ch.basic_ack(col.tags[-1], multiple=True)
    sync(ch)
    ch2 = conn.channel()
    again = _consume(ch2, q, "first")
    assert _wait_n(conn, again, 3, then_settle=True) == bodies
    assert [m[0].redelivered for m in again.messages] == [False] * 3
    assert again.tags == [1, 2, 3]


def test_unacked_on_closed_channel_not_redelivered(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"m0", b"m1"])
    col = _consume(ch, q, "first")
    _wait_n(conn, col, 2)
    ch.close()
    ch2 = conn.channel()
    again = _consume(ch2, q, "first")
    assert _wait_n(conn, again, 2) == [b"m0", b"m1"]
    assert [m[0].redelivered for m in again.messages] == [False, False]


def test_ack_unknown_delivery_tag(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"])
    col = _consume(ch, q, "first")
    _wait_n(conn, col, 1)
    ch.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == PF + "unknown delivery tag 99"


@pytest.mark.parametrize("how", ["nack-requeue", "nack-discard", "reject-requeue", "reject-discard"])
def test_nack_and_reject(conn_factory, names, how):
    # RabbitMQ 3.10.8 closes the connection (540).  From 3.13 nack and reject
    # just settle: the credit comes back and nothing is redelivered or
    # dead-lettered; Warren is held to the newer behaviour.
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0", b"m1"])
    col = _consume(ch, q, "first", prefetch=1)
    assert _wait_n(conn, col, 1, then_settle=True) == [b"m0"]
    requeue = how.endswith("-requeue")
    if how.startswith("nack"):
        ch.basic_nack(col.tags[0], requeue=requeue)
    else:
        ch.basic_reject(col.tags[0], requeue=requeue)
    if is_warren():
        assert _wait_n(conn, col, 2) == [b"m0", b"m1"]
        assert [m[0].redelivered for m in col.messages] == [False, False]
        sync(ch)
    else:
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
            wait_until(conn, lambda: False, 2)
        assert_connection_closed(ei, 540)
        assert ei.value.reply_text == (
            NI + "basic.nack and basic.reject not supported by stream queues %s" % _rq(q))


# --- x-stream-offset ------------------------------------------------------------------

BODIES = [b"m0", b"m1", b"m2", b"m3"]


def test_offset_absent_means_next(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    col = _consume(ch, q)
    settle(conn)
    assert col.bodies == []
    _publish(conn, q, [b"later"])
    assert _wait_n(conn, col, 1) == [b"later"]


@pytest.mark.parametrize("value", ["first", b"first"], ids=["longstr", "bytes"])
def test_offset_first(conn, ch, names, value):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    col = _consume(ch, q, value)
    assert _wait_n(conn, col, 4) == BODIES
    assert _offsets(col) == [0, 1, 2, 3]


def test_offset_first_follows_the_tail(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    col = _consume(ch, q, "first")
    assert _wait_n(conn, col, 2) == BODIES[:2]
    _publish(conn, q, BODIES[2:])
    assert _wait_n(conn, col, 4) == BODIES


def test_offset_last(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)  # one message per chunk
    col = _consume(ch, q, "last")
    assert _wait_n(conn, col, 1, then_settle=True) == [b"m3"]
    assert _offsets(col) == [3]
    _publish(conn, q, [b"m4"])
    assert _wait_n(conn, col, 2) == [b"m3", b"m4"]


def test_offset_next(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    col = _consume(ch, q, "next")
    settle(conn)
    assert col.bodies == []
    _publish(conn, q, [b"m4"])
    assert _wait_n(conn, col, 1) == [b"m4"]
    assert _offsets(col) == [4]


def test_offset_on_empty_stream(conn, ch, names):
    q = _stream(ch, names)
    cols = [_consume(conn.channel(), q, v) for v in ("first", "last", "next")]
    settle(conn)
    assert [c.bodies for c in cols] == [[], [], []]
    _publish(conn, q, [b"m0"])
    for c in cols:
        assert _wait_n(conn, c, 1) == [b"m0"]


@pytest.mark.parametrize("value", [0, 2, 3])
def test_offset_numeric(conn, ch, names, value):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    col = _consume(ch, q, value)
    assert _wait_n(conn, col, 4 - value, then_settle=True) == BODIES[value:]
    assert _offsets(col) == list(range(value, 4))


def _raw_consume(s, q, offset_field):
    """basic.qos(10) then basic.consume(queue=q, consumer_tag="c1",
    arguments={x-stream-offset: <offset_field>}) on channel 1 of a raw
    Session, the field given as type tag + encoded value; returns the reply."""
    s.rpc(1, pika.spec.Basic.Qos(prefetch_count=10))
    table = b"\x0fx-stream-offset" + offset_field
    payload = struct.pack(">HHH", 60, 20, 0)
    payload += bytes([len(q)]) + q.encode() + bytes([2]) + b"c1" + b"\x00"
    payload += struct.pack(">I", len(table)) + table
    s.send_bytes(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    return s.recv_method()


def test_offset_numeric_long(conn, ch, names):
    # pika encodes a small int as signed 32-bit ('I'); send a long ('l') with
    # a raw frame: any integer type is accepted.
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    s = Session()
    try:
        f = _raw_consume(s, q, b"l" + struct.pack(">q", 1))
        assert isinstance(f.method, pika.spec.Basic.ConsumeOk), f
        got = []
        while len(got) < 3:
            f = s.recv_frame()
            if isinstance(f, pika.frame.Body):
                got.append(f.fragment)
        assert got == BODIES[1:]
    finally:
        s.shutdown()


def test_offset_inside_a_batch(conn, ch, names):
    q = _stream(ch, names)
    bodies = [b"m%d" % i for i in range(6)]
    _publish(conn, q, bodies, each=False)
    col = _consume(ch, q, 3)
    assert _wait_n(conn, col, 3, then_settle=True) == bodies[3:]
    assert _offsets(col) == [3, 4, 5]


def test_offset_past_the_end_waits_for_it(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    col = _consume(ch, q, 6)
    settle(conn)
    assert col.bodies == []
    _publish(conn, q, [b"m4", b"m5"])
    settle(conn)
    assert col.bodies == []
    _publish(conn, q, [b"m6", b"m7"])
    assert _wait_n(conn, col, 2) == [b"m6", b"m7"]
    assert _offsets(col) == [6, 7]


def test_offset_negative_means_first(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    col = _consume(ch, q, -1)
    assert _wait_n(conn, col, 4) == BODIES


def test_offset_timestamp(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"old"])
    # The wait creates the condition under test (an older chunk); it stands in
    # for no event.  floor(t + 1.1) is later than t.
    time.sleep(1.1)
    ts = datetime.datetime.utcfromtimestamp(int(time.time()))
    _publish(conn, q, [b"new"])
    col = _consume(ch, q, ts)
    assert _wait_n(conn, col, 1, then_settle=True) == [b"new"]
    assert _offsets(col) == [1]


@pytest.mark.parametrize("ts", [0, -3600], ids=["epoch", "an-hour-ago"])
def test_offset_timestamp_in_the_past_gives_everything(conn, ch, names, ts):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    when = datetime.datetime.utcfromtimestamp(0 if ts == 0 else int(time.time()) + ts)
    col = _consume(ch, q, when)
    assert _wait_n(conn, col, 2) == BODIES[:2]


def test_offset_timestamp_in_the_future_is_like_next(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    col = _consume(ch, q, datetime.datetime.utcfromtimestamp(int(time.time()) + 3600))
    settle(conn)
    assert col.bodies == []
    _publish(conn, q, [b"later"])
    assert _wait_n(conn, col, 1) == [b"later"]


@pytest.mark.parametrize("interval", ["10m", "1h", "7D", "1Y"])
def test_offset_interval_covering_everything(conn, ch, names, interval):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    col = _consume(ch, q, interval)
    assert _wait_n(conn, col, 2) == BODIES[:2]


def test_offset_interval_skips_older_chunks(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"old"])
    time.sleep(1.5)  # makes "old" older than the interval; no event to wait for
    _publish(conn, q, [b"new"])
    col = _consume(ch, q, "1s")
    assert _wait_n(conn, col, 1, then_settle=True) == [b"new"]


@pytest.mark.parametrize("value", ["10x", "5"])
def test_offset_bad_string_with_leading_digit(conn, ch, names, value):
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, Collector(), arguments={"x-stream-offset": value})
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == (
        PF + "invalid arg 'x-stream-offset' for %s: {invalid_stream_offset_arg,{longstr,<<\"%s\">>}}"
        % (_rq(q), value))
    assert conn.is_open


@pytest.mark.parametrize("value", ["bogus", "", "FIRST", True, {"a": 1}],
                         ids=["bogus", "empty", "FIRST", "bool", "table"])
def test_offset_bad_value(conn_factory, names, value):
    # RabbitMQ 3.10.8 crashes on these (connection 541 INTERNAL_ERROR, class
    # and method 0).  A correct broker refuses them like "10x": a channel 406
    # "invalid arg 'x-stream-offset' for queue ...", and keeps the connection.
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    ch.basic_qos(prefetch_count=10)
    with pytest.raises((pika.exceptions.ChannelClosedByBroker,
                        pika.exceptions.ConnectionClosedByBroker)) as ei:
        ch.basic_consume(q, Collector(), arguments={"x-stream-offset": value})
    if is_warren():
        assert_channel_closed(ei, 406)
        assert ei.value.reply_text.startswith(
            PF + "invalid arg 'x-stream-offset' for %s: {invalid_stream_offset_arg," % _rq(q))
        assert conn.is_open
    else:
        assert not ch.is_open


# --- deliveries --------------------------------------------------------------------------

def test_delivery_header_and_fields(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"bare"])
    _publish(conn, q, [b"with"], headers={"h1": "v", "n": 7})
    col = _consume(ch, q, "first")
    _wait_n(conn, col, 2)
    (m0, p0, _b0), (m1, p1, _b1) = col.messages
    assert p0.headers == {"x-stream-offset": 0}
    assert p1.headers == {"h1": "v",
                          "n": 7, "x-stream-offset": 1}
    for m in (m0, m1):
        assert m.exchange == ""
        assert m.routing_key == q
        assert m.redelivered is False
        assert m.consumer_tag == col.consumer_tag
    assert [m0.delivery_tag, m1.delivery_tag] == [1, 2]


def test_delivery_header_is_a_long(conn, ch, names):
    # The type tag of x-stream-offset is 'l' (signed 64-bit), seen on the wire.
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"])
    s = Session()
    try:
        s.rpc(1, pika.spec.Basic.Qos(prefetch_count=10))
        f = s.rpc(1, pika.spec.Basic.Consume(queue=q, consumer_tag="c1",
                                             arguments={"x-stream-offset": "first"}))
        assert isinstance(f.method, pika.spec.Basic.ConsumeOk), f
        s.sock.settimeout(5)
        raw = s.buf  # what came in with consume-ok
        deadline = time.monotonic() + 5
        needle = b"\x0fx-stream-offsetl" + struct.pack(">q", 0)
        while needle not in raw and time.monotonic() < deadline:
            try:
                chunk = s.sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            raw += chunk
        assert needle in raw, raw
    finally:
        s.shutdown()


def test_publisher_offset_header_replaced(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"], headers={"x-stream-offset": 999})
    _publish(conn, q, [b"m1"], headers={"x-stream-offset": "fake", "keep": "me"})
    col = _consume(ch, q, "first")
    _wait_n(conn, col, 2)
    assert _offsets(col) == [0, 1]
    assert set(col.messages[1][1].headers) == {"x-stream-offset", "keep"}


def test_delivery_through_bound_exchange(conn, ch, names):
    q = _stream(ch, names)
    x = names.exchange("stx")
    ch.exchange_declare(x, "topic")
    ch.queue_bind(q, x, "a.*")
    _publish(conn, q, [b"via-x"], exchange=x, routing_key="a.b")
    col = _consume(ch, q, "first")
    _wait_n(conn, col, 1)
    m = col.messages[0][0]
    assert (m.exchange, m.routing_key) == (x, "a.b")


def test_filter_arguments_ignored_on_3_10(conn, ch, names):
    # 3.13 stream filtering; 3.10.8 accepts the consumer arguments and ignores
    # them, and x-stream-filter-value is an ordinary header.
    q = _stream(ch, names, {"x-stream-filter-size-bytes": 32})
    _publish(conn, q, [b"red"], headers={"x-stream-filter-value": "red"})
    _publish(conn, q, [b"blue"], headers={"x-stream-filter-value": "blue"})
    _publish(conn, q, [b"none"])
    col = _consume(ch, q, "first", arguments={"x-stream-filter": "red",
                                               "x-stream-match-unfiltered": True})
    if is_warren():
        # Warren filters as 3.13+ does, and exactly (per message, not per chunk).
        assert _wait_n(conn, col, 2, then_settle=True) == [b"red", b"none"]
    else:
        assert _wait_n(conn, col, 3) == [b"red", b"blue", b"none"]
    h = col.messages[0][1].headers["x-stream-filter-value"]
    assert h in (b"red", "red")


@pytest.mark.parametrize("filt,unfiltered,want", [
    ("red", False, [b"red1", b"red2"]),
    (["red", "green"], False, [b"red1", b"green", b"red2"]),
    ("blue", True, [b"none"]),
], ids=["one-value", "array", "unmatched-but-unfiltered"])
def test_filter_delivers_only_matching_messages(conn, ch, names, filt, unfiltered, want):
    # RabbitMQ 3.13+ stream filtering over AMQP 0-9-1 (x-stream-filter on the
    # consumer, x-stream-filter-value on messages).  Not on the 3.10.8 reference.
    if not is_warren():
        pytest.skip("stream filtering is RabbitMQ 3.13+; the reference broker is 3.10")
    q = _stream(ch, names)
    for body, value in [(b"red1", "red"), (b"green", "green"), (b"none", None), (b"red2", "red")]:
        _publish(conn, q, [body], headers={"x-stream-filter-value": value} if value else None)
    args = {"x-stream-filter": filt}
    if unfiltered:
        args["x-stream-match-unfiltered"] = True
    # Prefetch 1: skipped messages cost no credit.
    col = _consume(ch, q, "first", prefetch=1, arguments=args)
    for i in range(len(want)):
        assert _wait_n(conn, col, i + 1, then_settle=True) == want[:i + 1]
        ch.basic_ack(col.tags[i])
    settle(conn)
    assert col.bodies == want


# --- several consumers, cancel, tail -----------------------------------------------------

def test_many_consumers_each_read_everything(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, BODIES)
    other = conn_factory()
    cols = [_consume(ch, q, "first"), _consume(ch, q, "first"),
            _consume(conn.channel(), q, "first"), _consume(other.channel(), q, "first")]
    for c in cols[:3]:
        assert wait_until(conn, lambda c=c: len(c) >= 4)
    assert wait_until(other, lambda: len(cols[3]) >= 4)
    settle(conn)
    settle(other)
    for c in cols:
        assert c.bodies == BODIES
    # Two consumers on one channel share its delivery tags.
    assert sorted(cols[0].tags + cols[1].tags) == list(range(1, 9))


def test_consumers_from_first_and_next_on_one_channel(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, BODIES[:2])
    a = _consume(ch, q, "first")
    assert _wait_n(conn, a, 2) == BODIES[:2]
    b = _consume(ch, q, "next")
    _publish(conn, q, [b"m2"])
    assert _wait_n(conn, a, 3) == BODIES[:3]
    assert _wait_n(conn, b, 1) == [b"m2"]
    assert sorted(a.tags + b.tags) == [1, 2, 3, 4]


def test_tail_consumer_woken_by_new_data(conn, ch, names):
    q = _stream(ch, names)
    col = _consume(ch, q, "next")
    for i in range(3):
        _publish(conn, q, [b"t%d" % i])
        assert _wait_n(conn, col, i + 1) == [b"t%d" % j for j in range(i + 1)]
        ch.basic_ack(col.tags[-1])
    assert _offsets(col) == [0, 1, 2]


def test_tail_consumer_on_other_connection(conn_factory, names):
    pconn = conn_factory()
    cconn = conn_factory()
    cch = cconn.channel()
    q = _stream(cch, names)
    col = _consume(cch, q, "next")
    sync(cch)
    _publish(pconn, q, [b"x0", b"x1"])
    assert wait_until(cconn, lambda: len(col) >= 2)
    assert col.bodies == [b"x0", b"x1"]


def test_cancel_stops_deliveries(conn, ch, names):
    q = _stream(ch, names)
    col = _consume(ch, q, "next")
    _publish(conn, q, [b"m0"])
    assert _wait_n(conn, col, 1) == [b"m0"]
    ch.basic_cancel(col.consumer_tag)
    _publish(conn, q, [b"m1"])
    settle(conn)
    assert col.bodies == [b"m0"]


def test_offset_double(conn, ch, names):
    # pika cannot encode a double; sent raw.  RabbitMQ 3.10.8 crashes
    # (connection 541); a correct broker refuses it with a channel 406 as it
    # does "10x".
    q = _stream(ch, names)
    s = Session()
    try:
        f = _raw_consume(s, q, b"d" + struct.pack(">d", 1.5))
        if is_warren():
            assert isinstance(f.method, pika.spec.Channel.Close), f
            assert f.method.reply_code == 406
            assert f.method.reply_text.startswith(
                PF + "invalid arg 'x-stream-offset' for %s: {invalid_stream_offset_arg," % _rq(q))
        else:
            assert isinstance(f.method, (pika.spec.Channel.Close, pika.spec.Connection.Close)), f
        s.reply_close_ok(f)
    finally:
        s.shutdown()
