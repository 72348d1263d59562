"""ExchangeExchangeBindings (after the Java client's test of that name)."""
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, sync


def _x(ch, names, xtype="fanout"):
    x = names.exchange()
    ch.exchange_declare(x, xtype)
    return x


def test_source_to_destination(ch, names):
    src, dst = _x(ch, names), _x(ch, names)
    ch.exchange_bind(dst, src)
    q = declare_queue(ch, names)
    ch.queue_bind(q, dst)
    ch.basic_publish(src, "k", b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_chain_with_topic_routing(ch, names):
    a = _x(ch, names, "topic")
    b = _x(ch, names, "direct")
    c = _x(ch, names, "fanout")
    ch.exchange_bind(b, a, routing_key="orders.#")
    ch.exchange_bind(c, b, routing_key="orders.eu")
    q = declare_queue(ch, names)
    ch.queue_bind(q, c)
    for key in ("orders.eu", "orders.us", "other"):
        ch.basic_publish(a, key, key.encode())
    sync(ch)
    assert drain_get(ch, q) == [b"orders.eu"]


def test_cycle_delivers_once(ch, names):
    a, b = _x(ch, names), _x(ch, names)
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)
    q = declare_queue(ch, names)
    ch.queue_bind(q, a)
    ch.basic_publish(a, "", b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_diamond_delivers_once(ch, names):
    a, b, c = _x(ch, names), _x(ch, names), _x(ch, names)
    ch.exchange_bind(b, a)
    ch.exchange_bind(c, a)
    q = declare_queue(ch, names)
    ch.queue_bind(q, b)
    ch.queue_bind(q, c)
    ch.basic_publish(a, "", b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_unbind_stops_routing(ch, names):
    src, dst = _x(ch, names), _x(ch, names)
    ch.exchange_bind(dst, src)
    q = declare_queue(ch, names)
    ch.queue_bind(q, dst)
    ch.exchange_unbind(dst, src)
    ch.basic_publish(src, "", b"m")
    sync(ch)
    assert drain_get(ch, q) == []


def test_unbind_missing_binding_is_ok(ch, names):
    src, dst = _x(ch, names), _x(ch, names)
    ch.exchange_unbind(dst, src, routing_key="never")
    assert ch.is_open


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_bind_missing_exchange_is_404(conn, ch, names, missing):
    existing = _x(ch, names)
    absent = names.exchange()
    src, dst = (absent, existing) if missing == "source" else (existing, absent)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_bind(dst, src)
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_deleting_source_removes_binding(ch, names):
    src, dst = _x(ch, names), _x(ch, names)
    ch.exchange_bind(dst, src)
    q = declare_queue(ch, names)
    ch.queue_bind(q, dst)
    ch.exchange_delete(src)
    ch.exchange_declare(src, "fanout")
    ch.basic_publish(src, "", b"m")
    sync(ch)
    assert drain_get(ch, q) == []


def test_deleting_destination_removes_binding(ch, names):
    src, dst = _x(ch, names), _x(ch, names)
    ch.exchange_bind(dst, src)
    ch.exchange_delete(dst)
    # src has no bindings left, so if-unused deletion succeeds
    ch.exchange_delete(src, if_unused=True)
