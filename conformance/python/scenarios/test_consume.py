"""BasicConsume (after the Java client's BasicConsume / ConsumerCount /
Reject round-robin tests): consumer tags, round robin, cancel, requeue of
unacknowledged deliveries when a consumer goes away."""
import pika
import pika.exceptions
import pytest

from helpers import (Collector, assert_channel_closed, assert_connection_closed,
                     declare_queue, queue_depth, raw_rpc, send_raw_method, settle,
                     sync, wait_until)


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
