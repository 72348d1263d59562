"""SenderSelectedDistribution (after the Java client's
SenderSelectedDistribution): CC and BCC headers add routing keys; BCC is
removed before delivery; non-array values are refused."""
import pika
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, declare_queue, drain_get,
                     queue_depth, settle, sync)


def _direct_with_queues(ch, names, keys):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    queues = {}
    for key in keys:
        queues[key] = declare_queue(ch, names, key)
        ch.queue_bind(queues[key], x, key)
    return x, queues


def _get(ch, q):
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None, "nothing in %s" % q
    return method, props, body


def test_cc_routes_to_extra_keys_and_is_kept(ch, names):
    x, qs = _direct_with_queues(ch, names, ["k1", "k2", "k3", "k4"])
    ch.confirm_delivery()
    ch.basic_publish(x, "k1", b"m", pika.BasicProperties(headers={"CC": ["k2", "k3"]}))
    for key in ("k1", "k2", "k3"):
        method, props, body = _get(ch, qs[key])
        assert body == b"m"
        assert method.routing_key == "k1"  # the publish key, not the CC key
        assert props.headers == {"CC": ["k2", "k3"]}
    assert queue_depth(ch, qs["k4"]) == 0


def test_bcc_routes_and_is_removed(ch, names):
    x, qs = _direct_with_queues(ch, names, ["k1", "k2"])
    ch.confirm_delivery()
    ch.basic_publish(x, "k1", b"m", pika.BasicProperties(
        headers={"BCC": ["k2"], "other": "v"}))
    for key in ("k1", "k2"):
        _m, props, _b = _get(ch, qs[key])
        assert props.headers == {"other": "v"}


def test_bcc_only_message_keeps_an_empty_headers_table(ch, names):
    x, qs = _direct_with_queues(ch, names, ["k1", "k2"])
    ch.confirm_delivery()
    ch.basic_publish(x, "k1", b"m", pika.BasicProperties(headers={"BCC": ["k2"]}))
    for key in ("k1", "k2"):
        _m, props, _b = _get(ch, qs[key])
        assert props.headers == {}


def test_cc_on_default_exchange_and_duplicates_deliver_once(ch, names):
    a = declare_queue(ch, names, "a")
    b = declare_queue(ch, names, "b")
    ch.confirm_delivery()
    ch.basic_publish("", a, b"m", pika.BasicProperties(headers={"CC": [b, a, b]}))
    assert drain_get(ch, a) == [b"m"]
    assert drain_get(ch, b) == [b"m"]


def test_cc_matches_topic_bindings(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    qa = declare_queue(ch, names, "a")
    qb = declare_queue(ch, names, "b")
    ch.queue_bind(qa, x, "a.*")
    ch.queue_bind(qb, x, "b.#")
    ch.confirm_delivery()
    ch.basic_publish(x, "a.1", b"m", pika.BasicProperties(headers={"CC": ["b.x.y"]}))
    assert drain_get(ch, qa) == [b"m"]
    method, _p, _b = _get(ch, qb)
    assert method.routing_key == "a.1"


def test_unroutable_cc_keys_are_ignored(conn, ch, names):
    x, qs = _direct_with_queues(ch, names, ["k1"])
    ch.basic_publish(x, "k1", b"m", pika.BasicProperties(
        headers={"CC": ["nobody"], "BCC": ["nobody-else"]}))
    sync(ch)
    settle(conn)
    assert drain_get(ch, qs["k1"]) == [b"m"]


@pytest.mark.parametrize("header", ["CC", "BCC"])
def test_string_instead_of_array_is_406(ch, names, header):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"m", pika.BasicProperties(headers={header: "k2"}))
        sync(ch)
    assert_channel_closed(e, 406)
    assert e.value.reply_text == (
        'PRECONDITION_FAILED - invalid message: '
        '{unacceptable_type_in_header,"%s",longstr}' % header)
