"""ExchangeDeclare (after the Java client's ExchangeDeclare /
ExchangeEquivalence): types, redeclare equivalence, passive, reserved names,
unknown type, idempotent delete, internal and auto-delete exchanges."""
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, assert_connection_closed,
                     declare_queue, drain_get, sync, wait_until)


@pytest.mark.parametrize("xtype", ["direct", "fanout", "topic", "headers"])
def test_declare_and_redeclare_each_type(ch, names, xtype):
    x = names.exchange()
    ch.exchange_declare(x, xtype)
    ch.exchange_declare(x, xtype)
    ch.exchange_declare(x, xtype, passive=True)


def test_redeclare_with_different_type_is_406(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "fanout")
    assert_channel_closed(ei, 406)
    assert "inequivalent arg 'type'" in ei.value.reply_text
    assert conn.is_open


@pytest.mark.parametrize("first,second", [
    ({"durable": True}, {"durable": False}),
    ({"auto_delete": False}, {"auto_delete": True}),
    ({"internal": False}, {"internal": True}),
], ids=["durable", "auto_delete", "internal"])
def test_redeclare_with_different_flags_is_406(conn, ch, names, first, second):
    x = names.exchange()
    ch.exchange_declare(x, "direct", **first)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "direct", **second)
    assert_channel_closed(ei, 406)
    assert conn.is_open


def test_passive_declare_missing_is_404(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(names.exchange(), "direct", passive=True)
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_passive_declare_ignores_type_and_flags(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic", durable=True)
    ch.exchange_declare(x, "fanout", passive=True, durable=False)


@pytest.mark.parametrize("name", ["amq.direct", "amq.fanout", "amq.topic",
                                  "amq.headers", "amq.match"])
def test_predeclared_exchanges_exist(ch, name):
    ch.exchange_declare(name, passive=True)


def test_redeclare_predeclared_exchange_equivalently_is_ok(ch):
    ch.exchange_declare("amq.direct", "direct", durable=True)


def test_declare_new_amq_prefixed_exchange_is_403(conn, ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare("amq.conformance-test", "direct")
    assert_channel_closed(ei, 403)
    assert conn.is_open


def test_unknown_exchange_type_is_503_connection_error(conn, ch, names):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(names.exchange(), "x-conformance-bogus")
    assert_connection_closed(ei, 503)
    assert conn.is_closed


def test_delete_missing_exchange_is_ok(ch, names):
    ch.exchange_delete(names.exchange())
    assert ch.is_open


def test_delete_system_exchange_is_403(conn, ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_delete("amq.direct")
    assert_channel_closed(ei, 403)
    conn.channel().exchange_declare("amq.direct", passive=True)


def test_deleted_exchange_is_gone(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    ch.exchange_delete(x)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, passive=True)
    assert_channel_closed(ei, 404)


def test_publish_to_missing_exchange_is_404(conn, ch, names):
    ch.basic_publish(names.exchange(), "k", b"m")
    # the error is asynchronous: it surfaces on the next synchronous call
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_publish_to_internal_exchange_is_403(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout", internal=True)
    ch.basic_publish(x, "", b"m")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 403)


def test_internal_exchange_routes_via_exchange_binding(ch, names):
    src = names.exchange()
    internal = names.exchange()
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, src)
    q = declare_queue(ch, names)
    ch.queue_bind(q, internal)
    ch.basic_publish(src, "", b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def _exchange_exists(conn, x):
    c = conn.channel()
    try:
        c.exchange_declare(x, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False
    c.close()
    return True


def test_auto_delete_exchange_deleted_after_last_binding(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    q1 = declare_queue(ch, names)
    q2 = declare_queue(ch, names)
    ch.queue_bind(q1, x, routing_key="a")
    ch.queue_bind(q2, x, routing_key="b")
    ch.queue_unbind(q1, x, routing_key="a")
    assert _exchange_exists(conn, x)
    ch.queue_unbind(q2, x, routing_key="b")
    assert wait_until(conn, lambda: not _exchange_exists(conn, x))


def test_auto_delete_exchange_never_bound_persists(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.basic_publish(x, "k", b"m")
    sync(ch)
    assert _exchange_exists(conn, x)
