"""Transactions (after the Java client's Transactions): tx.select/commit/
rollback for publishes and acks, errors outside transactional mode."""
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, declare_queue, drain_get,
                     queue_depth, sync, wait_until)


def test_publish_visible_only_after_commit(conn, ch, names):
    q = declare_queue(ch, names)
    ch.tx_select()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    observer = conn.channel()
    assert queue_depth(observer, q) == 0
    ch.tx_commit()
    assert drain_get(observer, q) == [b"a", b"b"]


def test_rollback_discards_publishes(conn, ch, names):
    q = declare_queue(ch, names)
    ch.tx_select()
    ch.basic_publish("", q, b"a")
    ch.tx_rollback()
    ch.basic_publish("", q, b"b")
    ch.tx_commit()
    assert drain_get(conn.channel(), q) == [b"b"]


def test_ack_applied_only_on_commit(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    ch.tx_select()
    m1, _, _ = ch.basic_get(q)
    m2, _, _ = ch.basic_get(q)
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()          # ack of m1 is discarded (m1 stays unacked)
    ch.basic_ack(m2.delivery_tag)
    ch.tx_commit()
    ch.close()                # m1 is requeued
    assert drain_get(conn.channel(), q) == [b"a"]


def test_commit_and_rollback_can_repeat(ch, names):
    q = declare_queue(ch, names)
    ch.tx_select()
    ch.tx_select()
    ch.tx_commit()
    ch.tx_commit()
    ch.tx_rollback()
    ch.basic_publish("", q, b"x")
    ch.tx_commit()
    assert drain_get(ch, q) == [b"x"]


@pytest.mark.parametrize("op", ["tx_commit", "tx_rollback"])
def test_commit_or_rollback_without_select_is_406(conn, ch, op):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        getattr(ch, op)()
    assert_channel_closed(ei, 406)
    assert "not transactional" in ei.value.reply_text
    assert conn.is_open


def test_mandatory_return_delivered_at_commit(conn, ch, names):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m.reply_code, b)))
    ch.tx_select()
    ch.basic_publish("amq.direct", names.queue("nobody"), b"r", mandatory=True)
    sync(ch)
    conn.process_data_events(time_limit=0)
    assert returned == []   # nothing happens before commit
    ch.tx_commit()
    assert wait_until(conn, lambda: returned)
    assert returned == [(312, b"r")]


def test_publish_to_missing_exchange_fails_by_commit(conn, ch, names):
    ch.tx_select()
    ch.basic_publish(names.exchange(), "k", b"m")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.tx_commit()
    assert_channel_closed(ei, 404)
    assert conn.is_open
