"""Recover (after the Java client's Recover): basic.recover requeue=true
redelivers unacknowledged messages; requeue=false is not implemented."""
import pika.exceptions
import pytest

from helpers import (assert_connection_closed, declare_queue, drain_get,
                     queue_depth, wait_until)


def test_recover_redelivers_to_consumer(conn, ch, names):
    q = declare_queue(ch, names)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append((m.delivery_tag, m.redelivered, b)))
    ch.basic_publish("", q, b"m")
    assert wait_until(conn, lambda: len(seen) == 1)
    ch.basic_recover(requeue=True)
    assert wait_until(conn, lambda: len(seen) == 2)
    assert seen == [(1, False, b"m"), (2, True, b"m")]


def test_recover_after_get_requeues(ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    ch.basic_get(q)
    ch.basic_get(q)
    ch.basic_recover(requeue=True)
    m1, _, b1 = ch.basic_get(q, auto_ack=True)
    m2, _, b2 = ch.basic_get(q, auto_ack=True)
    assert (b1, b2) == (b"a", b"b")
    assert m1.redelivered and m2.redelivered


def test_recover_leaves_acked_messages_alone(ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    m1, _, _ = ch.basic_get(q)
    ch.basic_get(q)
    ch.basic_ack(m1.delivery_tag)
    ch.basic_recover(requeue=True)
    assert drain_get(ch, q) == [b"b"]


def test_recover_with_nothing_unacked_is_ok(ch, names):
    q = declare_queue(ch, names)
    ch.basic_recover(requeue=True)
    assert queue_depth(ch, q) == 0


def test_recover_requeue_false_is_540_connection_error(conn, ch):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_recover(requeue=False)
    assert_connection_closed(ei, 540)
    assert conn.is_closed
