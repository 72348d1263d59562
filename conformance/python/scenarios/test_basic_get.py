"""BasicGet (after the Java client's BasicGet / message property tests):
get-empty, message_count, requeue on close, property round trip, bodies
spanning several frames."""
import datetime
import decimal

import pika
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, sync


def test_get_empty_queue_returns_none(ch, names):
    q = declare_queue(ch, names)
    assert ch.basic_get(q) == (None, None, None)


def test_get_reports_remaining_message_count(ch, names):
    q = declare_queue(ch, names)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    sync(ch)
    counts = []
    for _ in range(3):
        method, _, _ = ch.basic_get(q, auto_ack=True)
        counts.append(method.message_count)
    assert counts == [2, 1, 0]


def test_get_delivery_tags_increase_per_channel(ch, names):
    q = declare_queue(ch, names)
    for _ in range(3):
        ch.basic_publish("", q, b"m")
    tags = [ch.basic_get(q, auto_ack=True)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]


def test_unacked_get_requeued_on_channel_close(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    assert method.redelivered is False
    ch.close()
    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"m"
    assert method.redelivered is True


def test_get_missing_queue_is_404(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_get(names.queue())
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_properties_round_trip(ch, names):
    q = declare_queue(ch, names)
    headers = {
        "str": "value", "int": 42, "neg": -7, "big": 2 ** 40, "bool": True,
        "decimal": decimal.Decimal("1.5"), "bytes": b"\x00\x01", "list": [1, "two", [3]],
        "table": {"nested": "yes"}, "none": None,
        "ts": datetime.datetime(2020, 1, 2, 3, 4, 5),
    }
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8",
        headers=headers, delivery_mode=2, correlation_id="corr-1",
        reply_to="reply-q", message_id="mid-1", timestamp=1700000000,
        type="t", user_id="guest", app_id="conformance")
    ch.basic_publish("", q, b"{}", properties=props)
    _, got, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    for attr in ("content_type", "content_encoding", "delivery_mode",
                 "correlation_id", "reply_to", "message_id", "timestamp",
                 "type", "user_id", "app_id"):
        assert getattr(got, attr) == getattr(props, attr), attr
    assert got.headers == headers


def test_no_properties_and_empty_body(ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"")
    _, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b""
    assert props.headers is None and props.content_type is None


@pytest.mark.parametrize("size", [131072 - 8, 131072 - 7, 1024 * 1024 + 3])
def test_body_spanning_frames(ch, names, size):
    q = declare_queue(ch, names)
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    ch.basic_publish("", q, payload)
    _, _, body = ch.basic_get(q, auto_ack=True)
    assert body == payload


def test_wrong_user_id_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m", properties=pika.BasicProperties(user_id="mallory"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)
    assert conn.is_open
    assert drain_get(conn.channel(), q) == []


def test_invalid_delivery_mode_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m", properties=pika.BasicProperties(delivery_mode=3))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        sync(ch)
    assert_channel_closed(ei, 406)
