"""DefaultExchange (after the Java client's DefaultExchange): implicit
bindings, and every operation other than publish on "" is refused with 403."""
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, sync


def test_publish_routes_by_queue_name(ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_publish_to_missing_queue_is_dropped(conn, ch, names):
    ch.basic_publish("", names.queue(), b"m")
    sync(ch)
    assert ch.is_open


@pytest.mark.parametrize("op", [
    "queue_bind", "queue_unbind", "exchange_declare", "exchange_declare_passive",
    "exchange_delete", "exchange_bind_src", "exchange_bind_dst",
])
def test_operations_on_default_exchange_are_403(conn, ch, names, op):
    q = declare_queue(ch, names)
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    calls = {
        "queue_bind": lambda: ch.queue_bind(q, "", routing_key=q),
        "queue_unbind": lambda: ch.queue_unbind(q, "", routing_key=q),
        "exchange_declare": lambda: ch.exchange_declare("", "direct"),
        "exchange_declare_passive": lambda: ch.exchange_declare("", passive=True),
        "exchange_delete": lambda: ch.exchange_delete(""),
        "exchange_bind_src": lambda: ch.exchange_bind(x, "", routing_key="k"),
        "exchange_bind_dst": lambda: ch.exchange_bind("", x, routing_key="k"),
    }
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        calls[op]()
    assert_channel_closed(ei, 403)
    assert conn.is_open
    # the default exchange still works
    ch2 = conn.channel()
    ch2.basic_publish("", q, b"still-routed")
    sync(ch2)
    assert drain_get(ch2, q) == [b"still-routed"]


def test_default_exchange_delivery_reports_empty_exchange(ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q, auto_ack=True)
    assert method.exchange == ""
    assert method.routing_key == q
