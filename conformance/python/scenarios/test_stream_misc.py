"""Stream queues (x-queue-type: stream) over AMQP 0-9-1: everything that is
neither declaration nor consuming proper.

basic.get and queue.purge are refused (connection 540), publishing (confirms,
mandatory, bindings, properties), declare-ok counts, queue.delete (which
ignores if-empty / if-unused and cancels the consumers), basic.recover, and
retention by x-max-length-bytes with small segments.  Reply texts are
RabbitMQ 3.10.8's (see /work/shared/reference/streams.md, sections 3, 4, 6, 7
and 9)."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, RawConfirms, assert_connection_closed, settle,
                     sync, wait_until)
from helpers_interop import is_warren

NI = "NOT_IMPLEMENTED - "


def _rq(q):
    return "queue '%s' in vhost '/'" % q


def _stream(ch, names, extra=None, q=None):
    q = q or names.queue("st")
    args = {"x-queue-type": "stream"}
    args.update(extra or {})
    ch.queue_declare(q, durable=True, arguments=args)
    return q


def _publish(conn, q, bodies, each=True, exchange="", routing_key=None, **props):
    """Publish with confirms on a channel of its own (``each``: one message
    per chunk, each confirmed before the next); returns the RawConfirms."""
    pch = conn.channel()
    rc = RawConfirms(conn, pch)
    properties = pika.BasicProperties(**props) if props else None
    for body in bodies:
        rc.publish(exchange, q if routing_key is None else routing_key, body,
                   properties=properties)
        if each:
            assert rc.wait_all(), "publish not confirmed"
    assert rc.wait_all(), "publish not confirmed"
    pch.close()
    return rc


def _replay(conn, q, n, offset="first"):
    """Consume from ``offset`` on a new channel until ``n`` messages arrived."""
    ch = conn.channel()
    col = Collector()
    ch.basic_qos(prefetch_count=1000)
    ch.basic_consume(q, col, arguments={"x-stream-offset": offset})
    assert wait_until(conn, lambda: len(col) >= n), "got %r" % (col.bodies,)
    return ch, col


# --- basic.get, purge ------------------------------------------------------------------

@pytest.mark.parametrize("auto_ack", [False, True], ids=["ack", "no-ack"])
def test_basic_get_refused(conn_factory, names, auto_ack):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0"])
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_get(q, auto_ack=auto_ack)
    assert_connection_closed(ei, 540)
    assert ei.value.reply_text == NI + "basic.get not supported by stream queues %s" % _rq(q)


def test_basic_get_refused_on_empty_stream(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_get(q)
    assert_connection_closed(ei, 540)
    assert ei.value.reply_text == NI + "basic.get not supported by stream queues %s" % _rq(q)


def test_purge_refused_and_log_untouched(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0", b"m1"])
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.queue_purge(q)
    assert_connection_closed(ei, 540)
    assert ei.value.reply_text == NI + "queue.purge not supported by stream queues %s" % _rq(q)
    other = conn_factory()
    _ch, col = _replay(other, q, 2)
    assert col.bodies == [b"m0", b"m1"]


# --- publishing --------------------------------------------------------------------------

def test_publisher_confirms_ack_every_message(conn, ch, names):
    q = _stream(ch, names)
    rc = _publish(conn, q, [b"a%d" % i for i in range(5)])
    rc2 = _publish(conn, q, [b"b%d" % i for i in range(20)], each=False)
    assert rc.outcome() == {t: "ack" for t in range(1, 6)}
    assert rc2.outcome() == {t: "ack" for t in range(1, 21)}
    _ch, col = _replay(conn, q, 25)
    assert col.bodies == [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(20)]


def test_publishes_without_confirms_are_all_stored(conn, ch, names):
    q = _stream(ch, names)
    pch = conn.channel()
    bodies = [b"n%d" % i for i in range(50)]
    for b in bodies:
        pch.basic_publish("", q, b)
    sync(pch)
    _ch, col = _replay(conn, q, 50)
    settle(conn)
    assert col.bodies == bodies


def test_mandatory_publish_to_stream_not_returned(conn, ch, names):
    q = _stream(ch, names)
    pch = conn.channel()
    rc = RawConfirms(conn, pch)
    rc.publish("", q, b"routed", mandatory=True)
    rc.publish("", names.queue("missing"), b"unroutable", mandatory=True)
    assert rc.wait_all()
    settle(conn)
    assert [e for e in rc.events if e[0] == "return"] == [("return", 312, b"unroutable")]
    assert rc.outcome() == {1: "ack", 2: "ack"}


def test_publish_through_fanout_exchange(conn, ch, names):
    q = _stream(ch, names)
    x = names.exchange("stx")
    ch.exchange_declare(x, "fanout")
    ch.queue_bind(q, x)
    _publish(conn, q, [b"f0"], exchange=x, routing_key="any")
    _ch, col = _replay(conn, q, 1)
    m = col.messages[0][0]
    assert (m.exchange, m.routing_key, col.bodies) == (x, "any", [b"f0"])


def test_message_matching_two_bindings_stored_once(conn, ch, names):
    q = _stream(ch, names)
    x = names.exchange("stx")
    ch.exchange_declare(x, "topic")
    ch.queue_bind(q, x, "a.*")
    ch.queue_bind(q, x, "*.b")
    _publish(conn, q, [b"once"], exchange=x, routing_key="a.b")
    _publish(conn, q, [b"marker"])
    _ch, col = _replay(conn, q, 2)
    settle(conn)
    assert col.bodies == [b"once", b"marker"]


def test_unbind_stops_routing(conn, ch, names):
    q = _stream(ch, names)
    x = names.exchange("stx")
    ch.exchange_declare(x, "direct")
    ch.queue_bind(q, x, "k")
    _publish(conn, q, [b"bound"], exchange=x, routing_key="k")
    ch.queue_unbind(q, x, "k")
    _publish(conn, q, [b"unbound"], exchange=x, routing_key="k")
    _publish(conn, q, [b"marker"])
    _ch, col = _replay(conn, q, 2)
    settle(conn)
    assert col.bodies == [b"bound", b"marker"]


def test_properties_travel_unchanged(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"p"], content_type="text/plain", content_encoding="utf-8",
             delivery_mode=2, priority=5, correlation_id="corr", reply_to="rt",
             expiration="60000", message_id="mid", timestamp=1700000000,
             type="kind", app_id="app", headers={"h": "v", "i": 7})
    _ch, col = _replay(conn, q, 1)
    p = col.messages[0][1]
    assert (p.content_type, p.content_encoding, p.delivery_mode, p.priority) == (
        "text/plain", "utf-8", 2, 5)
    assert (p.correlation_id, p.reply_to, p.expiration, p.message_id) == (
        "corr", "rt", "60000", "mid")
    assert (p.timestamp, p.type, p.app_id) == (1700000000, "kind", "app")
    assert p.headers["i"] == 7
    assert p.headers["h"] in ("v", b"v")
    assert p.headers["x-stream-offset"] == 0
    assert set(p.headers) == {"h", "i", "x-stream-offset"}


def test_expiration_does_not_expire(conn, ch, names):
    # A stream has no TTL: a message with a 1 ms expiration is still read.
    q = _stream(ch, names)
    _publish(conn, q, [b"e"], expiration="1")
    _ch, col = _replay(conn, q, 1)
    assert col.bodies == [b"e"]
    assert col.messages[0][1].expiration == "1"


def test_large_message(conn, ch, names):
    q = _stream(ch, names)
    body = bytes(range(256)) * 1024  # 256 KiB: several body frames
    _publish(conn, q, [body])
    _ch, col = _replay(conn, q, 1)
    assert col.bodies == [body]


# --- counts, delete ------------------------------------------------------------------------

def test_consumer_count_is_always_zero(conn, ch, names):
    q = _stream(ch, names)
    cch = conn.channel()
    cch.basic_qos(prefetch_count=10)
    cch.basic_consume(q, Collector(), arguments={"x-stream-offset": "first"})
    sync(cch)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0


def test_delete_ignores_if_empty_and_if_unused(conn_factory, names):
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0", b"m1"])
    cch = conn.channel()
    cancelled = []
    cch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    cch.basic_qos(prefetch_count=10)
    col = Collector()
    tag = cch.basic_consume(q, col, arguments={"x-stream-offset": "first"})
    assert wait_until(conn, lambda: len(col) >= 2)
    ok = ch.queue_delete(q, if_unused=True, if_empty=True)
    assert ok.method.message_count == 0
    assert wait_until(conn, lambda: cancelled), "no basic.cancel from the broker"
    assert cancelled == [tag]
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_redeclare_keeps_the_log(conn, ch, names):
    q = _stream(ch, names, {"x-max-age": "1D"})
    _publish(conn, q, [b"m0", b"m1"])
    _stream(ch, names, {"x-max-age": "1D"}, q=q)
    other = conn.channel()
    _stream(other, names, {"x-max-age": "1D"}, q=q)
    _ch, col = _replay(conn, q, 2)
    assert col.bodies == [b"m0", b"m1"]


def test_delete_and_redeclare_starts_empty(conn, ch, names):
    q = _stream(ch, names)
    _publish(conn, q, [b"old0", b"old1"])
    ch.queue_delete(q)
    _stream(ch, names, q=q)
    _publish(conn, q, [b"new"])
    _ch, col = _replay(conn, q, 1)
    settle(conn)
    assert col.bodies == [b"new"]
    assert col.messages[0][1].headers["x-stream-offset"] == 0


# --- basic.recover -------------------------------------------------------------------------

def test_recover_with_stream_consumer(conn_factory, names):
    # RabbitMQ 3.10.8 crashes (connection 541 INTERNAL_ERROR, class and method
    # 0).  A stream has nothing to requeue; Warren answers as 3.13+ settles a
    # requeueing nack on a stream: recover-ok, nothing redelivered, the
    # channel stays usable.
    conn = conn_factory()
    ch = conn.channel()
    q = _stream(ch, names)
    _publish(conn, q, [b"m0", b"m1"])
    ch.basic_qos(prefetch_count=10)
    col = Collector()
    ch.basic_consume(q, col, arguments={"x-stream-offset": "first"})
    assert wait_until(conn, lambda: len(col) >= 2)
    if is_warren():
        ch.basic_recover(requeue=True)
        settle(conn)
        assert col.bodies == [b"m0", b"m1"]
        sync(ch)
    else:
        with pytest.raises((pika.exceptions.ChannelClosedByBroker,
                            pika.exceptions.ConnectionClosedByBroker)):
            ch.basic_recover(requeue=True)
        assert not ch.is_open


# --- retention -------------------------------------------------------------------------------

def test_retention_by_max_length_bytes_drops_whole_old_segments(conn, ch, names):
    q = _stream(ch, names, {"x-max-length-bytes": 2000,
                            "x-stream-max-segment-size-bytes": 1000})
    bodies = [b"%03d" % i + b"x" * 97 for i in range(30)]  # 100 bytes each
    _publish(conn, q, bodies)
    rch, col = _replay(conn, q, 1)
    assert wait_until(conn, lambda: col.bodies and col.bodies[-1] == bodies[-1])
    settle(conn)
    got = col.bodies
    # What is left is the newest part of the log, in order, with old
    # segments gone as a whole.
    assert 0 < len(got) < len(bodies)
    assert got == bodies[-len(got):]
    offsets = [m[1].headers["x-stream-offset"] for m in col.messages]
    assert offsets == sorted(offsets)
    assert offsets[0] > 0
    # Offsets are log positions.  RabbitMQ's log holds non-message records (at
    # segment starts) that take offsets too, so the last message's offset exceeds
    # its message number; Warren's log holds only messages, so its offsets have
    # no gaps (a client may rely on neither).
    if is_warren():
        assert offsets == list(range(30 - len(got), 30))
    else:
        assert offsets[-1] > 29
    rch.close()
    # "first" now starts later, and offsets are not reused.
    _publish(conn, q, [b"after"])
    _ch2, col2 = _replay(conn, q, len(got) + 1)
    assert col2.bodies[-1] == b"after"
    assert col2.messages[-1][1].headers["x-stream-offset"] > offsets[-1]


def test_retention_without_limits_keeps_everything(conn, ch, names):
    q = _stream(ch, names, {"x-stream-max-segment-size-bytes": 1000})
    bodies = [b"%03d" % i + b"y" * 97 for i in range(30)]
    _publish(conn, q, bodies)
    _ch, col = _replay(conn, q, 30)
    settle(conn)
    assert col.bodies == bodies
