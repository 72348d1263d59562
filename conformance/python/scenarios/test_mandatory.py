"""Mandatory / NoRoute (after the Java client's tests around basic.return):
mandatory unroutable messages come back as basic.return 312 NO_ROUTE;
immediate is not implemented (540, connection)."""
import pika
import pika.exceptions
import pytest

from helpers import (assert_connection_closed, declare_queue, drain_get,
                     send_raw_method, settle, sync, wait_until)


def _returns(ch):
    got = []
    ch.add_on_return_callback(lambda c, m, p, b: got.append((m, p, b)))
    return got


def test_mandatory_unroutable_is_returned(conn, ch, names):
    got = _returns(ch)
    key = names.queue("nobody")
    props = pika.BasicProperties(correlation_id="c1", headers={"h": "v"})
    ch.basic_publish("amq.direct", key, b"body", properties=props, mandatory=True)
    assert wait_until(conn, lambda: got)
    method, rprops, body = got[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == ("amq.direct", key)
    assert body == b"body"
    assert rprops.correlation_id == "c1" and rprops.headers == {"h": "v"}


def test_mandatory_default_exchange_missing_queue_is_returned(conn, ch, names):
    got = _returns(ch)
    ch.basic_publish("", names.queue("nobody"), b"b", mandatory=True)
    assert wait_until(conn, lambda: got)
    assert got[0][0].reply_code == 312 and got[0][0].exchange == ""


def test_mandatory_routable_is_not_returned(conn, ch, names):
    got = _returns(ch)
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"b", mandatory=True)
    sync(ch)
    settle(conn)
    assert got == []
    assert drain_get(ch, q) == [b"b"]


def test_non_mandatory_unroutable_is_dropped_silently(conn, ch, names):
    got = _returns(ch)
    ch.basic_publish("amq.direct", names.queue("nobody"), b"b")
    sync(ch)
    settle(conn)
    assert got == []
    assert ch.is_open


def test_immediate_is_540_connection_error(conn, ch, names):
    q = declare_queue(ch, names)
    send_raw_method(ch, pika.spec.Basic.Publish(exchange="", routing_key=q,
                                                immediate=True),
                    (pika.BasicProperties(), b"m"))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        sync(ch)
    assert_connection_closed(ei, 540)
    assert "immediate" in ei.value.reply_text
