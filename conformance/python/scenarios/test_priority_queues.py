"""PriorityQueues (after the Java client's PriorityQueues): x-max-priority
ordering, FIFO within a priority, priorities above the maximum, messages
without priority, requeue, argument validation."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     drain_get, wait_until)


@pytest.fixture
def cch(ch):
    """A confirm channel: each publish returns once the queue has it."""
    ch.confirm_delivery()
    return ch


def _publish(ch, q, items):
    """items: (body, priority or None)."""
    for body, priority in items:
        ch.basic_publish("", q, body, pika.BasicProperties(priority=priority))


def _pq(ch, names, max_priority=5):
    return declare_queue(ch, names, arguments={"x-max-priority": max_priority})


def test_higher_priority_delivered_first(cch, names):
    q = _pq(cch, names)
    _publish(cch, q, [(b"p1", 1), (b"p3", 3), (b"p2", 2), (b"p5", 5)])
    assert drain_get(cch, q) == [b"p5", b"p3", b"p2", b"p1"]


def test_fifo_within_a_priority(cch, names):
    q = _pq(cch, names)
    _publish(cch, q, [(b"a1", 1), (b"b2", 2), (b"c1", 1), (b"d2", 2), (b"e1", 1)])
    assert drain_get(cch, q) == [b"b2", b"d2", b"a1", b"c1", b"e1"]


def test_consumer_receives_backlog_in_priority_order(conn, cch, names):
    q = _pq(cch, names)
    _publish(cch, q, [(b"low", 1), (b"high", 4), (b"mid", 2)])
    c = Collector()
    cch.basic_consume(q, c, auto_ack=True)
    assert wait_until(conn, lambda: len(c) == 3)
    assert c.bodies == [b"high", b"mid", b"low"]


def test_priority_above_max_is_treated_as_max(cch, names):
    q = _pq(cch, names, 5)
    _publish(cch, q, [(b"at-max", 5), (b"above", 10), (b"below", 4)])
    # 10 ranks like 5, so FIFO between the first two
    got = [cch.basic_get(q, auto_ack=True) for _ in range(3)]
    assert [g[2] for g in got] == [b"at-max", b"above", b"below"]
    # the property itself is delivered unchanged
    assert got[1][1].priority == 10


def test_no_priority_counts_as_zero(cch, names):
    q = _pq(cch, names)
    _publish(cch, q, [(b"none", None), (b"zero", 0), (b"one", 1)])
    assert drain_get(cch, q) == [b"one", b"none", b"zero"]


def test_requeued_message_keeps_its_priority(cch, names):
    q = _pq(cch, names)
    _publish(cch, q, [(b"low", 1), (b"high", 5)])
    method, _p, body = cch.basic_get(q, auto_ack=False)
    assert body == b"high"
    _publish(cch, q, [(b"mid", 3)])
    cch.basic_reject(method.delivery_tag, requeue=True)
    assert drain_get(cch, q) == [b"high", b"mid", b"low"]


def test_invalid_max_priority_is_406(ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-max-priority": 300})
    assert_channel_closed(e, 406)
    assert "invalid arg 'x-max-priority'" in e.value.reply_text
    assert "{max_value_exceeded,300}" in e.value.reply_text


def test_redeclare_with_different_max_priority_is_406(ch, names):
    q = _pq(ch, names, 5)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments={"x-max-priority": 10})
    assert_channel_closed(e, 406)
    assert "inequivalent arg 'x-max-priority'" in e.value.reply_text
