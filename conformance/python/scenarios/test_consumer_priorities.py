"""ConsumerPriorities (after the Java client's ConsumerPriorities): the
x-priority basic.consume argument; a higher-priority consumer gets the
messages while it has prefetch credit, lower ones only when it is full."""
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     settle, wait_until)


def _consumer(ch, q, priority=None, prefetch=10):
    ch.basic_qos(prefetch_count=prefetch)  # per consumer (global=false)
    c = Collector()
    args = None if priority is None else {"x-priority": priority}
    ch.basic_consume(q, c, arguments=args)
    return c


def _publish_n(ch, q, n, prefix=b"m"):
    for i in range(n):
        ch.basic_publish("", q, prefix + b"%d" % i)


def _settled_counts(conn, collectors, total):
    assert wait_until(conn, lambda: sum(len(c) for c in collectors) >= total)
    settle(conn)
    return [len(c) for c in collectors]


def test_higher_priority_consumer_gets_everything_while_it_has_credit(conn, ch, names):
    q = declare_queue(ch, names)
    low = _consumer(ch, q, priority=1)
    high = _consumer(ch, q, priority=10)
    _publish_n(ch, q, 8)
    assert _settled_counts(conn, [low, high], 8) == [0, 8]
    assert high.bodies == [b"m%d" % i for i in range(8)]


def test_lower_priority_consumer_gets_messages_when_higher_is_full(conn, ch, names):
    q = declare_queue(ch, names)
    high = _consumer(ch, q, priority=10, prefetch=2)
    low = _consumer(ch, q, priority=1, prefetch=10)
    _publish_n(ch, q, 6)
    assert _settled_counts(conn, [high, low], 6) == [2, 4]
    # once the high-priority consumer has credit again it is preferred
    ch.basic_ack(high.tags[-1], multiple=True)
    _publish_n(ch, q, 2, prefix=b"n")
    assert _settled_counts(conn, [high, low], 8) == [4, 4]
    assert high.bodies[2:] == [b"n0", b"n1"]


def test_consumers_on_separate_channels(conn, conn_factory, ch, names):
    q = declare_queue(ch, names)
    other = conn_factory()
    och = other.channel()
    low = _consumer(ch, q, priority=-1)
    high = _consumer(och, q, priority=0)  # an explicit default priority
    _publish_n(ch, q, 5)
    assert wait_until(other, lambda: len(high) == 5)
    settle(conn)
    assert len(low) == 0


def test_default_priority_beats_negative_priority(conn, ch, names):
    q = declare_queue(ch, names)
    negative = _consumer(ch, q, priority=-5)
    default = _consumer(ch, q)
    _publish_n(ch, q, 4)
    assert _settled_counts(conn, [negative, default], 4) == [0, 4]


def test_non_integer_priority_is_406(ch, names):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(q, lambda *a: None, arguments={"x-priority": "high"})
    assert_channel_closed(e, 406)
    assert "invalid arg 'x-priority'" in e.value.reply_text
    assert "expected integer, got longstr" in e.value.reply_text
