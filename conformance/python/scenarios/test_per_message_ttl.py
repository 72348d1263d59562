"""PerMessageTTL (after the Java client's PerMessageTTL): the `expiration`
property, its interaction with x-message-ttl, expiry only at the head of
the queue, expiration "0", invalid values."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     queue_depth, settle, wait_until)


def _props(expiration):
    return pika.BasicProperties(expiration=expiration)


def test_expiration_property_expires_message(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"short", _props("300"))
    assert wait_until(conn, lambda: queue_depth(ch, q) == 1)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 0)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_unexpired_message_keeps_expiration_property(ch, names):
    q = declare_queue(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"long", _props("60000"))
    _method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"long"
    assert props.expiration == "60000"


def test_queue_ttl_lower_than_expiration_wins(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 200})
    ch.basic_publish("", q, b"m", _props("60000"))
    assert wait_until(conn, lambda: queue_depth(ch, q) == 1)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 0)


def test_expiration_lower_than_queue_ttl_wins(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q, b"m", _props("200"))
    ch.basic_publish("", q, b"stays")
    assert wait_until(conn, lambda: queue_depth(ch, q) == 2)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 1)
    assert ch.basic_get(q, auto_ack=True)[2] == b"stays"



def test_expiry_happens_only_at_the_head(conn, ch, names):
    # RabbitMQ 3.10.8 classic queues: an expired message behind a live head
    # still counts in message_count and is not dead-lettered until it
    # reaches the head
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    dlq = declare_queue(ch, names, "dlq")
    ch.queue_bind(dlq, dlx)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"head")
    ch.basic_publish("", q, b"exp", _props("100"))
    ch.basic_publish("", q, b"tail")
    settle(conn, 0.4)
    assert queue_depth(ch, q) == 3
    assert queue_depth(ch, dlq) == 0
    method, _props_, body = ch.basic_get(q, auto_ack=False)
    assert body == b"head"
    # fetching the head exposes the expired message, which is dead-lettered
    assert wait_until(conn, lambda: queue_depth(ch, dlq) == 1)
    assert queue_depth(ch, q) == 1
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q, auto_ack=True)[2] == b"tail"
    _m, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"exp"
    assert props.headers["x-death"][0]["reason"] == "expired"


def test_expiration_zero_without_consumer_is_dropped(ch, names):
    q = declare_queue(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"gone", _props("0"))
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_expiration_zero_with_waiting_consumer_is_delivered(conn, ch, names):
    q = declare_queue(ch, names)
    c = Collector()
    ch.basic_consume(q, c, auto_ack=True)
    ch.basic_publish("", q, b"now", _props("0"))
    assert wait_until(conn, lambda: len(c) == 1)
    assert c.bodies == [b"now"]
    assert c.messages[0][1].expiration == "0"


@pytest.mark.parametrize("value,text", [
    ("abc", "invalid expiration 'abc': no_integer"),
    ("-1", "invalid expiration '-1': {value_negative,-1}"),
])
def test_invalid_expiration_is_406(ch, names, value, text):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"m", _props(value))
        ch.queue_declare(q, passive=True)
    assert_channel_closed(e, 406)
    assert text in e.value.reply_text
