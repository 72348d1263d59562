"""QosTests (after the Java client's QosTests): per-consumer prefetch
(global=false), per-channel prefetch (global=true), their interaction,
prefetch_size rejection."""
import pika.exceptions
import pytest

from helpers import (Collector, assert_connection_closed, declare_queue,
                     settle, sync, wait_until)


def _fill(ch, q, n):
    for i in range(n):
        ch.basic_publish("", q, b"m%d" % i)
    sync(ch)


def _consume(ch, q, **kw):
    c = Collector()
    ch.basic_consume(q, c, **kw)
    return c


def _deliveries_settle_at(conn, collectors, expected):
    assert wait_until(conn, lambda: sum(len(c) for c in collectors) >= expected)
    settle(conn)
    return [len(c) for c in collectors]


def test_prefetch_limits_unacked_deliveries(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=3)
    c = _consume(ch, q)
    assert _deliveries_settle_at(conn, [c], 3) == [3]


def test_ack_releases_credit(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=2)
    c = _consume(ch, q)
    assert _deliveries_settle_at(conn, [c], 2) == [2]
    ch.basic_ack(c.tags[0])
    assert _deliveries_settle_at(conn, [c], 3) == [3]
    ch.basic_ack(c.tags[2], multiple=True)
    assert _deliveries_settle_at(conn, [c], 5) == [5]


def test_non_global_prefetch_is_per_consumer(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=2)
    c1, c2 = _consume(ch, q), _consume(ch, q)
    assert _deliveries_settle_at(conn, [c1, c2], 4) == [2, 2]


def test_global_prefetch_is_per_channel(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=2, global_qos=True)
    c1, c2 = _consume(ch, q), _consume(ch, q)
    counts = _deliveries_settle_at(conn, [c1, c2], 2)
    assert sum(counts) == 2


def test_global_then_per_consumer_limit(conn, ch, names):
    # a later global=false clears the earlier global=true limit
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    ch.basic_qos(prefetch_count=2)
    c1, c2 = _consume(ch, q), _consume(ch, q)
    assert sum(_deliveries_settle_at(conn, [c1, c2], 4)) == 4


def test_per_consumer_then_global_limit(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=2)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    c1, c2 = _consume(ch, q), _consume(ch, q)
    assert sum(_deliveries_settle_at(conn, [c1, c2], 3)) == 3


def test_prefetch_zero_is_unlimited(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 20)
    ch.basic_qos(prefetch_count=0)
    c = _consume(ch, q)
    assert _deliveries_settle_at(conn, [c], 20) == [20]


def test_auto_ack_consumer_ignores_prefetch(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 10)
    ch.basic_qos(prefetch_count=1)
    c = _consume(ch, q, auto_ack=True)
    assert _deliveries_settle_at(conn, [c], 10) == [10]


def test_prefetch_does_not_limit_basic_get(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 3)
    ch.basic_qos(prefetch_count=1)
    for _ in range(3):
        method, _, _ = ch.basic_get(q)
        assert method is not None


def test_prefetch_size_is_540_connection_error(conn, ch):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_qos(prefetch_size=1000, prefetch_count=10)
    assert_connection_closed(ei, 540)
    assert conn.is_closed
