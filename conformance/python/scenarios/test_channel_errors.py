"""Channel and connection errors (after the Java client's ChannelErrors /
UnexpectedFrames / Heartbeat-free parts): which failures close only the
channel and which close the whole connection, with what code."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, RawAMQP, assert_channel_closed,
                     assert_connection_closed, declare_queue, send_raw_method,
                     sync, wait_until)


def test_flow_active_true_is_ok(ch):
    assert ch.flow(True) is True


def test_flow_active_false_is_540_connection_error(conn, ch):
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.flow(False)
    assert_connection_closed(ei, 540)


def test_second_channel_open_is_504_connection_error(conn, ch):
    send_raw_method(ch, pika.spec.Channel.Open())
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        sync(ch)
    assert_connection_closed(ei, 504)


def test_channel_error_leaves_other_channels_working(conn, names):
    good = conn.channel()
    q = declare_queue(good, names)
    c = Collector()
    good.basic_consume(q, c, auto_ack=True)
    bad = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        bad.queue_declare(names.queue(), passive=True)
    assert_channel_closed(ei, 404)
    good.basic_publish("", q, b"m")
    assert wait_until(conn, lambda: len(c) == 1)
    assert conn.is_open and good.is_open and bad.is_closed


def test_new_channel_after_channel_error(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare("amq.reserved", durable=False)
    ch2 = conn.channel()
    q = declare_queue(ch2, names)
    ch2.basic_publish("", q, b"m")
    assert ch2.basic_get(q, auto_ack=True)[2] == b"m"


def test_connection_error_closes_all_channels(conn, names):
    chans = [conn.channel() for _ in range(3)]
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        chans[0].basic_qos(prefetch_size=1)
    assert conn.is_closed
    assert all(c.is_closed for c in chans)


def test_channel_close_reply_text(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(names.queue(), passive=True)
    assert ei.value.reply_text.startswith("NOT_FOUND - no queue")


@pytest.fixture
def raw():
    r = RawAMQP()
    r.handshake()
    yield r
    r.close()


def _expect_connection_close(raw, code):
    while True:
        frame = raw.recv_method()
        assert frame is not None, "TCP closed without connection.close"
        if isinstance(getattr(frame, "method", None), pika.spec.Connection.Close):
            assert frame.channel_number == 0
            assert frame.method.reply_code == code, frame.method
            return frame.method


def test_method_on_unopened_channel_is_504(raw):
    raw.send_method(5, pika.spec.Queue.Declare(queue="", exclusive=True))
    _expect_connection_close(raw, 504)


def test_channel_close_handshake(raw):
    raw.send_method(1, pika.spec.Channel.Open())
    assert isinstance(raw.recv_method().method, pika.spec.Channel.OpenOk)
    raw.send_method(1, pika.spec.Queue.Declare(queue="conformance-missing", passive=True))
    frame = raw.recv_method()
    assert isinstance(frame.method, pika.spec.Channel.Close)
    assert frame.channel_number == 1
    assert (frame.method.reply_code, frame.method.class_id,
            frame.method.method_id) == (404, 50, 10)
    raw.send_method(1, pika.spec.Channel.CloseOk())
    # the channel id can be opened again
    raw.send_method(1, pika.spec.Channel.Open())
    assert isinstance(raw.recv_method().method, pika.spec.Channel.OpenOk)


def test_body_frame_without_publish_is_505(raw):
    raw.send_method(1, pika.spec.Channel.Open())
    assert isinstance(raw.recv_method().method, pika.spec.Channel.OpenOk)
    raw.send_bytes(pika.frame.Body(1, b"orphan").marshal())
    _expect_connection_close(raw, 505)


def test_method_during_content_is_505(raw):
    raw.send_method(1, pika.spec.Channel.Open())
    assert isinstance(raw.recv_method().method, pika.spec.Channel.OpenOk)
    raw.send_method(1, pika.spec.Basic.Publish(exchange="", routing_key="x"))
    raw.send_bytes(pika.frame.Header(1, 10, pika.spec.BasicProperties()).marshal())
    raw.send_method(1, pika.spec.Basic.Qos(prefetch_count=1))
    _expect_connection_close(raw, 505)
