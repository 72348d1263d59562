"""ExclusiveQueue / QueueExclusivity (after the Java client's
QueueExclusivity): another connection gets 405 RESOURCE_LOCKED for any use of
an exclusive queue; exclusive consumers; deletion on owner close."""
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, declare_queue, drain_get, sync,
                     wait_until)


OTHER_CONNECTION_OPS = {
    "declare_passive": lambda c, q: c.queue_declare(q, passive=True),
    "declare_same": lambda c, q: c.queue_declare(q, exclusive=True),
    "declare_non_exclusive": lambda c, q: c.queue_declare(q),
    "consume": lambda c, q: c.basic_consume(q, lambda *a: None),
    "get": lambda c, q: c.basic_get(q),
    "purge": lambda c, q: c.queue_purge(q),
    "delete": lambda c, q: c.queue_delete(q),
    "bind": lambda c, q: c.queue_bind(q, "amq.direct", routing_key="k"),
}


@pytest.mark.parametrize("op", sorted(OTHER_CONNECTION_OPS))
def test_other_connection_gets_405(conn_factory, ch, names, op):
    q = declare_queue(ch, names, exclusive=True)
    other = conn_factory()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        OTHER_CONNECTION_OPS[op](other.channel(), q)
    assert_channel_closed(ei, 405)
    assert other.is_open
    # the owner is unaffected
    ch.basic_publish("", q, b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_owner_other_channel_can_use_queue(conn, ch, names):
    q = declare_queue(ch, names, exclusive=True)
    ch2 = conn.channel()
    ch2.queue_declare(q, passive=True)
    ch2.basic_publish("", q, b"m")
    sync(ch2)
    assert drain_get(ch2, q) == [b"m"]


def test_other_connection_may_publish_to_exclusive_queue(conn_factory, ch, names):
    q = declare_queue(ch, names, exclusive=True)
    other = conn_factory().channel()
    other.basic_publish("", q, b"from-other")
    sync(other)
    assert drain_get(ch, q) == [b"from-other"]


def test_exclusive_queue_deleted_when_owner_closes(conn_factory, names):
    owner = conn_factory()
    q = declare_queue(owner.channel(), names, exclusive=True)
    owner.close()
    other = conn_factory()

    def gone():
        c = other.channel()
        try:
            c.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            return True
        c.close()
        return False

    assert wait_until(other, gone)
    # the name is free again
    other.channel().queue_declare(q, exclusive=True)


def test_exclusive_consumer_blocks_other_consumers(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        conn.channel().basic_consume(q, lambda *a: None)
    assert_channel_closed(ei, 403)
    assert conn.is_open


def test_exclusive_consume_with_existing_consumer_is_403(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_consume(q, lambda *a: None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
    assert_channel_closed(ei, 403)


def test_exclusive_consumer_released_on_cancel(conn, ch, names):
    q = declare_queue(ch, names)
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch.basic_cancel(tag)
    conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
