"""Confirm (after the Java client's Confirm): publisher confirms, tag
numbering, mandatory returns before acks, tx/confirm exclusivity."""
import pika.exceptions
import pytest

from helpers import (RawConfirms, assert_channel_closed, declare_queue,
                     drain_get, settle)


def test_every_publish_is_acked_with_tags_from_one(conn, ch, names):
    q = declare_queue(ch, names)
    rc = RawConfirms(conn, ch)
    for i in range(20):
        rc.publish("", q, b"m%d" % i)
    assert rc.wait_all()
    assert rc.outcome() == {t: "ack" for t in range(1, 21)}
    # no tag beyond the number of publishes
    assert max(ev[1] for ev in rc.events) == 20
    assert len(drain_get(ch, q)) == 20


def test_unroutable_mandatory_returned_before_ack(conn, ch, names):
    rc = RawConfirms(conn, ch)
    rc.publish("amq.direct", names.queue("nobody"), b"lost", mandatory=True)
    assert rc.wait_all()
    kinds = [ev[0] for ev in rc.events]
    assert kinds == ["return", "ack"], rc.events
    assert rc.events[0][1] == 312
    assert rc.events[0][2] == b"lost"
    assert rc.outcome() == {1: "ack"}


def test_unroutable_without_mandatory_is_acked(conn, ch, names):
    rc = RawConfirms(conn, ch)
    rc.publish("amq.direct", names.queue("nobody"), b"lost")
    assert rc.wait_all()
    assert rc.outcome() == {1: "ack"}
    settle(conn)
    assert [ev[0] for ev in rc.events] == ["ack"]


def test_fanout_to_many_queues_confirms_once(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    for _ in range(3):
        ch.queue_bind(declare_queue(ch, names), x)
    rc = RawConfirms(conn, ch)
    rc.publish(x, "", b"m")
    rc.publish(x, "", b"m")
    assert rc.wait_all()
    assert rc.outcome() == {1: "ack", 2: "ack"}
    settle(conn)
    assert max(ev[1] for ev in rc.events) == 2


def test_persistent_message_to_durable_queue_is_acked(conn, ch, names):
    q = declare_queue(ch, names, durable=True)
    rc = RawConfirms(conn, ch)
    rc.publish("", q, b"p", properties=pika.BasicProperties(delivery_mode=2))
    assert rc.wait_all()
    assert rc.outcome() == {1: "ack"}


def test_blocking_api_mandatory_unroutable_raises(ch, names):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish("amq.direct", names.queue("nobody"), b"m", mandatory=True)
    assert ch.is_open


def test_blocking_api_routable_publish_succeeds(ch, names):
    q = declare_queue(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", mandatory=True)
    assert drain_get(ch, q) == [b"m"]


def test_publish_to_missing_exchange_in_confirm_mode_is_404(conn, ch, names):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_publish(names.exchange(), "k", b"m")
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_confirm_select_on_tx_channel_is_406(conn, ch):
    ch.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.confirm_delivery()
    assert_channel_closed(ei, 406)
    assert conn.is_open


def test_tx_select_on_confirm_channel_is_406(conn, ch):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.tx_select()
    assert_channel_closed(ei, 406)
    assert conn.is_open


def test_confirm_select_twice_is_ok(conn, ch, names):
    q = declare_queue(ch, names)
    rc = RawConfirms(conn, ch)
    RawConfirms(conn, ch)  # second confirm.select on the same channel
    rc.publish("", q, b"m")
    assert rc.wait_all()
    assert rc.outcome() == {1: "ack"}
