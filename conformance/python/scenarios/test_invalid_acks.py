"""InvalidAcks (after the Java client's InvalidAcks / InvalidAcksTx):
unknown or repeated delivery tags are a 406 channel error; ack multiple."""
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, queue_depth, sync


def _fill(ch, q, n):
    for i in range(n):
        ch.basic_publish("", q, b"m%d" % i)
    sync(ch)


@pytest.mark.parametrize("op", ["ack", "nack", "reject"])
def test_unknown_tag_is_406(conn, ch, op):
    getattr(ch, "basic_" + op)(42)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)
    assert "unknown delivery tag 42" in ei.value.reply_text
    assert conn.is_open


def test_double_ack_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    method, _, _ = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)


def test_ack_of_auto_ack_delivery_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    method, _, _ = ch.basic_get(q, auto_ack=True)
    ch.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)


def test_tags_are_per_channel(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    method, _, _ = ch.basic_get(q)
    other = conn.channel()
    other.basic_ack(method.delivery_tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(other)
    assert_channel_closed(ei, 406)
    # the first channel can still ack it
    ch.basic_ack(method.delivery_tag)
    sync(ch)
    assert queue_depth(ch, q) == 0


def test_channel_error_requeues_unacked(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 2)
    ch.basic_get(q)
    ch.basic_get(q)
    ch.basic_ack(99)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        sync(ch)
    assert sorted(drain_get(conn.channel(), q)) == [b"m0", b"m1"]


def test_ack_multiple_up_to_tag(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 3)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(2, multiple=True)
    ch.close()
    assert drain_get(conn.channel(), q) == [b"m2"]


def test_ack_zero_multiple_acks_everything(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 3)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    sync(ch)
    ch.close()
    assert queue_depth(conn.channel(), q) == 0
