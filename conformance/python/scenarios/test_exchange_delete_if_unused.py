"""ExchangeDeleteIfUnused (after the Java client's ExchangeDeleteIfUnused)."""
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, sync


def test_if_unused_with_queue_binding_is_406(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_delete(x, if_unused=True)
    assert_channel_closed(ei, 406)
    assert conn.is_open
    # still there, binding intact
    ch2 = conn.channel()
    ch2.basic_publish(x, "k", b"m")
    sync(ch2)
    assert drain_get(ch2, q) == [b"m"]


def test_if_unused_with_exchange_binding_as_source_is_406(conn, ch, names):
    src = names.exchange()
    dst = names.exchange()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_delete(src, if_unused=True)
    assert_channel_closed(ei, 406)


def test_if_unused_as_destination_only_is_ok(ch, names):
    # "unused" means: the exchange is the source of no binding
    src = names.exchange()
    dst = names.exchange()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src)
    ch.exchange_delete(dst, if_unused=True)
    assert ch.is_open


def test_if_unused_without_bindings_is_ok(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    ch.exchange_delete(x, if_unused=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, passive=True)
    assert_channel_closed(ei, 404)


def test_if_unused_after_unbind_is_ok(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_unbind(q, x, routing_key="k")
    ch.exchange_delete(x, if_unused=True)


def test_plain_delete_removes_bindings(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    ch.exchange_delete(x)
    ch.exchange_declare(x, "direct")
    ch.basic_publish(x, "k", b"m")
    sync(ch)
    assert drain_get(ch, q) == []
