"""PerQueueTTL (after the Java client's PerQueueTTL): x-message-ttl expiry,
TTL 0 with and without a waiting consumer, requeue after expiry, argument
validation and equivalence."""
import time

import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     queue_depth, settle, sync, wait_until)


def test_messages_expire_after_ttl(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 300})
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 3)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 0)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_message_fetched_before_ttl_is_delivered(ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 10000})
    ch.basic_publish("", q, b"fresh")
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"fresh"
    # the queue TTL is not turned into a per-message expiration property
    assert props.expiration is None


def test_ttl_counts_from_each_message_enqueue(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 600})
    ch.basic_publish("", q, b"old")
    sync(ch)
    time.sleep(0.3)  # let part of the first message's TTL elapse
    ch.basic_publish("", q, b"new")
    assert wait_until(conn, lambda: queue_depth(ch, q) == 2)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 1)
    assert ch.basic_get(q, auto_ack=True)[2] == b"new"


def test_ttl_zero_without_consumer_expires_immediately(ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 0})
    ch.confirm_delivery()  # the ack means the queue has handled the publish
    ch.basic_publish("", q, b"gone")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert queue_depth(ch, q) == 0


def test_ttl_zero_with_waiting_consumer_is_delivered(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 0})
    c = Collector()
    ch.basic_consume(q, c)
    ch.basic_publish("", q, b"now")
    assert wait_until(conn, lambda: len(c) == 1)
    assert c.bodies == [b"now"]
    ch.basic_ack(c.tags[0])


def test_unacked_message_past_ttl_is_dropped_on_requeue(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"held")
    method, _props, body = ch.basic_get(q, auto_ack=False)
    assert body == b"held"
    time.sleep(0.4)  # let the TTL elapse while the message is unacked
    ch.basic_nack(method.delivery_tag, requeue=True)
    sync(ch)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 0)
    settle(conn)
    assert ch.basic_get(q, auto_ack=True)[0] is None


@pytest.mark.parametrize("value,text", [
    (-5, "value_negative"),
    ("1000", "expected integer, got longstr"),
])
def test_invalid_ttl_is_406(ch, names, value, text):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-message-ttl": value})
    assert_channel_closed(e, 406)
    assert "x-message-ttl" in e.value.reply_text
    assert text in e.value.reply_text


def test_redeclare_with_different_ttl_is_406(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 1000})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments={"x-message-ttl": 2000})
    assert_channel_closed(e, 406)
    assert "inequivalent arg 'x-message-ttl'" in e.value.reply_text
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch2.queue_declare(q)
    assert_channel_closed(e, 406)
