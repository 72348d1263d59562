"""DirectReplyTo (after the Java client's DirectReplyTo): the
amq.rabbitmq.reply-to pseudo-queue for RPC replies without a reply queue."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, declare_queue,
                     settle, sync, wait_until)

REPLY_TO = "amq.rabbitmq.reply-to"


def _request(conn, ch, server_ch, server_q, body=b"req", **props):
    """Publish a request with reply_to=amq.rabbitmq.reply-to and fetch it
    on the server side; returns the server-side properties."""
    ch.basic_publish("", server_q, body, pika.BasicProperties(reply_to=REPLY_TO, **props))
    got = []

    def poll():
        method, p, b = server_ch.basic_get(server_q, auto_ack=True)
        if method is not None:
            got.append((p, b))
        return bool(got)

    assert wait_until(conn, poll), "request not delivered"
    return got[0]


def test_round_trip(conn, conn_factory, ch, names):
    replies = Collector()
    ch.basic_consume(REPLY_TO, replies, auto_ack=True)
    server = conn_factory()
    sch = server.channel()
    server_q = declare_queue(sch, names, "rpc")
    props, body = _request(conn, ch, sch, server_q, correlation_id="c-1")
    assert body == b"req"
    assert props.correlation_id == "c-1"
    # reply_to is rewritten to a per-channel name
    assert props.reply_to.startswith(REPLY_TO + ".")
    assert len(props.reply_to) > len(REPLY_TO) + 1
    sch.basic_publish("", props.reply_to, b"resp",
                      pika.BasicProperties(correlation_id="c-1"))
    assert wait_until(conn, lambda: len(replies) == 1)
    method, rprops, rbody = replies.messages[0]
    assert rbody == b"resp"
    assert rprops.correlation_id == "c-1"
    assert method.exchange == ""
    assert method.routing_key == props.reply_to


def test_replies_to_several_requests_reach_the_one_consumer(conn, conn_factory, ch, names):
    replies = Collector()
    ch.basic_consume(REPLY_TO, replies, auto_ack=True)
    server = conn_factory()
    sch = server.channel()
    server_q = declare_queue(sch, names, "rpc")
    addresses = [_request(conn, ch, sch, server_q)[0].reply_to for _ in range(2)]
    for i, address in enumerate(addresses):
        sch.basic_publish("", address, b"r%d" % i)
    assert wait_until(conn, lambda: len(replies) == 2)
    assert sorted(replies.bodies) == [b"r0", b"r1"]


def test_consume_in_ack_mode_is_406(ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
    assert_channel_closed(e, 406)
    assert e.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


def test_second_reply_consumer_on_channel_is_406(ch):
    ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    assert_channel_closed(e, 406)
    assert e.value.reply_text == "PRECONDITION_FAILED - reply consumer already set"


def test_publish_without_reply_consumer_is_406(ch, names):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"req", pika.BasicProperties(reply_to=REPLY_TO))
        sync(ch)
    assert_channel_closed(e, 406)
    assert e.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_publish_after_cancelling_reply_consumer_is_406(ch, names):
    q = declare_queue(ch, names)
    tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    ch.basic_cancel(tag)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"req", pika.BasicProperties(reply_to=REPLY_TO))
        sync(ch)
    assert_channel_closed(e, 406)


def test_reply_to_stale_address_is_dropped(conn, conn_factory, ch, names):
    server = conn_factory()
    sch = server.channel()
    server_q = declare_queue(sch, names, "rpc")
    tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    address = _request(conn, ch, sch, server_q)[0].reply_to
    ch.basic_cancel(tag)
    # replies to a gone or unknown consumer are dropped, not errors
    sch.basic_publish("", address, b"late")
    sch.basic_publish("", REPLY_TO + ".bogus", b"bogus")
    sync(sch)
    settle(server)
    assert sch.is_open
