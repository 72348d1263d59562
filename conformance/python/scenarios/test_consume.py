"""BasicConsume (after the Java client's BasicConsume / ConsumerCount /
Reject round-robin tests): consumer tags, round robin, cancel, requeue of
unacknowledged deliveries when a consumer goes away."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, RawAMQP, assert_channel_closed,
                     assert_connection_closed, declare_queue, queue_depth, raw_rpc,
                     send_raw_method, settle, sync, wait_until)


def test_server_generated_consumer_tag(conn, ch, names):
    q = declare_queue(ch, names)
    ok = raw_rpc(conn, ch, pika.spec.Basic.Consume(queue=q, consumer_tag=""),
                 [pika.spec.Basic.ConsumeOk])
    assert ok.consumer_tag.startswith("amq.ctag-")
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1


def test_client_chosen_consumer_tag(conn, ch, names):
    q = declare_queue(ch, names)
    c = Collector()
    assert ch.basic_consume(q, c, consumer_tag="my-tag") == "my-tag"
    ch.basic_publish("", q, b"m")
    assert wait_until(conn, lambda: len(c) == 1)
    assert c.messages[0][0].consumer_tag == "my-tag"


def test_duplicate_consumer_tag_is_530_connection_error(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_consume(q, lambda *a: None, consumer_tag="dup")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        # pika refuses a duplicate tag locally: send basic.consume directly
        send_raw_method(ch, pika.spec.Basic.Consume(queue=q, consumer_tag="dup"))
        sync(ch)
    assert_connection_closed(ei, 530)


def test_consume_missing_queue_is_404(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_consume(names.queue(), lambda *a: None)
    assert_channel_closed(ei, 404)
    assert conn.is_open


def test_round_robin_between_consumers(conn, names):
    ch1, ch2 = conn.channel(), conn.channel()
    q = declare_queue(ch1, names)
    c1, c2 = Collector(), Collector()
    ch1.basic_consume(q, c1, auto_ack=True)
    ch2.basic_consume(q, c2, auto_ack=True)
    for i in range(10):
        ch1.basic_publish("", q, b"%d" % i)
    assert wait_until(conn, lambda: len(c1) + len(c2) == 10)
    assert (len(c1), len(c2)) == (5, 5)
    assert sorted(c1.bodies + c2.bodies, key=int) == [b"%d" % i for i in range(10)]


def test_delivery_tags_and_order_on_one_consumer(conn, ch, names):
    q = declare_queue(ch, names)
    c = Collector()
    ch.basic_consume(q, c)
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert wait_until(conn, lambda: len(c) == 5)
    assert c.tags == [1, 2, 3, 4, 5]
    assert c.bodies == [b"0", b"1", b"2", b"3", b"4"]
    assert not any(m[0].redelivered for m in c.messages)


def test_cancel_stops_deliveries(conn, ch, names):
    q = declare_queue(ch, names)
    c = Collector()
    tag = ch.basic_consume(q, c, auto_ack=True)
    ch.basic_publish("", q, b"1")
    assert wait_until(conn, lambda: len(c) == 1)
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"2")
    sync(ch)
    settle(conn)
    assert c.bodies == [b"1"]
    assert queue_depth(ch, q) == 1


def _raw_rpc(raw, channel, method, reply):
    raw.send_method(channel, method)
    while True:
        frame = raw.recv_method()
        assert frame is not None, "no %s" % reply.NAME
        if isinstance(getattr(frame, "method", None), reply):
            return frame.method


def test_delivery_in_flight_at_cancel_reaches_the_cancelled_consumer():
    """A publish, a basic.cancel and a basic.consume taking the same tag on another
    queue, pipelined in one write: the message goes to the consumer being cancelled,
    before cancel-ok (the spec allows deliveries until cancel-ok). It is neither left in
    the queue nor handed to the new consumer, and it stays that queue's unacked message."""
    spec = pika.spec
    raw = RawAMQP()
    try:
        raw.handshake()
        _raw_rpc(raw, 1, spec.Channel.Open(), spec.Channel.OpenOk)
        qa = _raw_rpc(raw, 1, spec.Queue.Declare(queue="", exclusive=True),
                      spec.Queue.DeclareOk).queue
        qb = _raw_rpc(raw, 1, spec.Queue.Declare(queue="", exclusive=True),
                      spec.Queue.DeclareOk).queue
        _raw_rpc(raw, 1, spec.Basic.Consume(queue=qa, consumer_tag="x"), spec.Basic.ConsumeOk)
        body = b"in flight"
        raw.send_bytes(b"".join(f.marshal() for f in (
            pika.frame.Method(1, spec.Basic.Publish(exchange="", routing_key=qa)),
            pika.frame.Header(1, len(body), spec.BasicProperties()),
            pika.frame.Body(1, body),
            pika.frame.Method(1, spec.Basic.Cancel(consumer_tag="x")),
            pika.frame.Method(1, spec.Basic.Consume(queue=qb, consumer_tag="x",
                                                    no_ack=True)))))
        seen = []
        while not (seen and seen[-1] == "ConsumeOk" and "Deliver" in seen):
            frame = raw.recv_method()
            assert frame is not None, "frames so far: %r" % seen
            m = getattr(frame, "method", None)
            if m is None:
                continue
            seen.append(type(m).__name__)
            if isinstance(m, spec.Basic.Deliver):
                assert (m.consumer_tag, m.routing_key, m.delivery_tag) == ("x", qa, 1), m
        assert seen == ["Deliver", "CancelOk", "ConsumeOk"], seen
        # Rejected with requeue, it goes back to the first queue: the delivery was that
        # queue's, not the new consumer's.
        raw.send_method(1, spec.Basic.Reject(delivery_tag=1, requeue=True))
        assert _raw_rpc(raw, 1, spec.Queue.Declare(queue=qa, passive=True),
                        spec.Queue.DeclareOk).message_count == 1
        assert _raw_rpc(raw, 1, spec.Queue.Declare(queue=qb, passive=True),
                        spec.Queue.DeclareOk).message_count == 0
    finally:
        raw.close()


def test_unacked_requeued_to_other_consumer_when_channel_closes(conn, names):
    ch1, ch2 = conn.channel(), conn.channel()
    q = declare_queue(ch1, names)
    c1 = Collector()
    ch1.basic_qos(prefetch_count=1)
    ch1.basic_consume(q, c1)
    ch1.basic_publish("", q, b"m")
    assert wait_until(conn, lambda: len(c1) == 1)
    c2 = Collector()
    ch2.basic_consume(q, c2)
    ch1.close()
    assert wait_until(conn, lambda: len(c2) == 1)
    method = c2.messages[0][0]
    assert (c2.bodies, method.redelivered) == ([b"m"], True)


def test_auto_ack_deliveries_are_not_requeued(conn, ch, names):
    q = declare_queue(ch, names)
    c = Collector()
    ch.basic_consume(q, c, auto_ack=True)
    ch.basic_publish("", q, b"m")
    assert wait_until(conn, lambda: len(c) == 1)
    ch.close()
    assert queue_depth(conn.channel(), q) == 0


def test_consumer_count_in_declare_ok(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_consume(q, lambda *a: None)
    conn.channel().basic_consume(q, lambda *a: None)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
