"""SingleActiveConsumer (after the Java client's SingleActiveConsumer):
x-single-active-consumer queues deliver to one consumer at a time; the
next registered consumer takes over on cancel or channel/connection close;
exclusive consume is refused."""
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     settle, wait_until)

SAC = {"x-single-active-consumer": True}


def _consume(ch, q, auto_ack=True):
    c = Collector()
    tag = ch.basic_consume(q, c, auto_ack=auto_ack)
    return c, tag


def _publish_n(ch, q, n, prefix=b"m"):
    for i in range(n):
        ch.basic_publish("", q, prefix + b"%d" % i)


def test_only_first_consumer_receives(conn, ch, names):
    q = declare_queue(ch, names, arguments=SAC)
    first, _ = _consume(ch, q)
    second, _ = _consume(ch, q)
    _publish_n(ch, q, 6)
    assert wait_until(conn, lambda: len(first) == 6)
    settle(conn)
    assert len(second) == 0
    assert first.bodies == [b"m%d" % i for i in range(6)]
    # declare-ok counts every registered consumer, not only the active one
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2


def test_next_consumer_takes_over_after_cancel(conn, ch, names):
    q = declare_queue(ch, names, arguments=SAC)
    first, tag1 = _consume(ch, q)
    second, _ = _consume(ch, q)
    third, _ = _consume(ch, q)
    _publish_n(ch, q, 2, b"a")
    assert wait_until(conn, lambda: len(first) == 2)
    ch.basic_cancel(tag1)
    _publish_n(ch, q, 3, b"b")
    assert wait_until(conn, lambda: len(second) == 3)
    settle(conn)
    assert len(first) == 2 and len(third) == 0
    assert second.bodies == [b"b0", b"b1", b"b2"]


def test_next_consumer_takes_over_unacked_after_channel_close(conn, conn_factory, ch, names):
    q = declare_queue(ch, names, arguments=SAC)
    other = conn_factory()
    och = other.channel()
    first, _ = _consume(och, q, auto_ack=False)
    second, _ = _consume(ch, q, auto_ack=False)
    _publish_n(ch, q, 3)
    assert wait_until(other, lambda: len(first) == 3)
    settle(conn)
    assert len(second) == 0
    och.close()  # the 3 unacked messages are requeued for the new active consumer
    assert wait_until(conn, lambda: len(second) == 3)
    assert second.bodies == [b"m0", b"m1", b"m2"]
    assert all(m[0].redelivered for m in second.messages)
    ch.basic_ack(second.tags[-1], multiple=True)


def test_next_consumer_takes_over_after_connection_close(conn, conn_factory, ch, names):
    q = declare_queue(ch, names, arguments=SAC)
    other = conn_factory()
    first, _ = _consume(other.channel(), q)
    second, _ = _consume(ch, q)
    other.close()
    _publish_n(ch, q, 2)
    assert wait_until(conn, lambda: len(second) == 2)
    assert len(first) == 0


def test_exclusive_consume_is_403(ch, names):
    # refused even though the queue has no consumers yet
    q = declare_queue(ch, names, arguments=SAC)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(q, lambda *a: None, exclusive=True)
    assert_channel_closed(e, 403)
    assert e.value.reply_text == (
        "ACCESS_REFUSED - queue '%s' in vhost '/' in exclusive use" % q)


def test_non_boolean_argument_is_406(ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-single-active-consumer": "yes"})
    assert_channel_closed(e, 406)
    assert "invalid arg 'x-single-active-consumer'" in e.value.reply_text
    assert "{unacceptable_type,longstr}" in e.value.reply_text
