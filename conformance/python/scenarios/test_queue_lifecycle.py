"""QueueLifecycle (after the Java client's QueueLifecycle / QueueSizeLimit-free
parts): declare, passive declare, redeclare equivalence, server-named queues,
purge/delete counts, idempotent deletes, auto-delete."""
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, declare_queue, drain_get,
                     queue_depth, sync, wait_until)


def test_declare_returns_name_and_counts(ch, names):
    q = names.queue()
    ok = ch.queue_declare(q).method
    assert ok.queue == q
    assert ok.message_count == 0
    assert ok.consumer_count == 0


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    ok2 = ch.queue_declare("", exclusive=True).method
    assert ok2.queue != ok.queue
    ch.basic_publish("", ok.queue, b"m")
    sync(ch)
    assert drain_get(ch, ok.queue) == [b"m"]


def test_declare_ok_counts_messages_and_consumers(ch, names):
    q = declare_queue(ch, names)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    sync(ch)
    ok = ch.queue_declare(q).method
    assert ok.message_count == 3
    ch2 = ch.connection.channel()
    ch2.basic_qos(prefetch_count=1)
    ch2.basic_consume(q, lambda *a: None)
    ok = ch.queue_declare(q, passive=True).method
    assert ok.consumer_count == 1


def test_redeclare_equivalent_is_ok(ch, names):
    q = names.queue()
    ch.queue_declare(q, durable=True, arguments={"x-foo": "bar"})
    ch.queue_declare(q, durable=True, arguments={"x-foo": "bar"})
    ch.queue_declare(q, durable=True)  # unknown args are not compared


def test_redeclare_unknown_arg_changed_is_accepted(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-foo": 1})
    ch.queue_declare(q, arguments={"x-foo": 2})
    assert ch.is_open


@pytest.mark.parametrize("first,second,arg", [
    ({"durable": True}, {"durable": False}, "durable"),
    ({"durable": False}, {"durable": True}, "durable"),
    ({"auto_delete": True}, {"auto_delete": False}, "auto_delete"),
    ({"auto_delete": False}, {"auto_delete": True}, "auto_delete"),
])
def test_redeclare_inequivalent_is_406(conn, ch, names, first, second, arg):
    q = names.queue()
    ch.queue_declare(q, **first)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, **second)
    assert_channel_closed(ei, 406)
    assert "inequivalent arg '%s'" % arg in ei.value.reply_text
    assert conn.is_open
    # the original queue is untouched
    ch2 = conn.channel()
    ch2.queue_declare(q, **first)


def test_redeclare_exclusive_as_non_exclusive_by_owner_is_405(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, exclusive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        conn.channel().queue_declare(q, exclusive=False)
    assert_channel_closed(ei, 405)
    assert conn.is_open


def test_passive_declare_missing_is_404(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(names.queue(), passive=True)
    assert_channel_closed(ei, 404)
    assert conn.is_open
    assert conn.channel().is_open


def test_passive_declare_ignores_other_flags(ch, names):
    q = declare_queue(ch, names, durable=True)
    ok = ch.queue_declare(q, passive=True, durable=False, auto_delete=True).method
    assert ok.queue == q


def test_reserved_amq_prefix_is_403(conn, ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare("amq.conformance-test")
    assert_channel_closed(ei, 403)
    assert conn.is_open


def test_purge_returns_count(ch, names):
    q = declare_queue(ch, names)
    for i in range(4):
        ch.basic_publish("", q, b"m")
    sync(ch)
    assert ch.queue_purge(q).method.message_count == 4
    assert queue_depth(ch, q) == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_purge_does_not_remove_unacked(conn, ch, names):
    q = declare_queue(ch, names)
    for _ in range(3):
        ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q, auto_ack=False)
    assert ch.queue_purge(q).method.message_count == 2
    ch.close()  # unacked message is requeued
    ch2 = conn.channel()
    assert queue_depth(ch2, q) == 1


def test_delete_returns_count(ch, names):
    q = declare_queue(ch, names)
    for _ in range(5):
        ch.basic_publish("", q, b"m")
    sync(ch)
    assert ch.queue_delete(q).method.message_count == 5
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert_channel_closed(ei, 404)


def test_delete_missing_queue_is_ok(ch, names):
    assert ch.queue_delete(names.queue()).method.message_count == 0
    assert ch.is_open


def test_delete_if_empty_with_messages_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_publish("", q, b"m")
    sync(ch)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_delete(q, if_empty=True)
    assert_channel_closed(ei, 406)
    assert queue_depth(conn.channel(), q) == 1


def test_delete_if_unused_with_consumer_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    ch.basic_consume(q, lambda *a: None)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        conn.channel().queue_delete(q, if_unused=True)
    assert_channel_closed(ei, 406)


def test_delete_if_unused_and_if_empty_when_idle(ch, names):
    q = declare_queue(ch, names)
    assert ch.queue_delete(q, if_unused=True, if_empty=True).method.message_count == 0


def _exists(conn, q):
    c = conn.channel()
    try:
        c.queue_declare(q, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False
    c.close()
    return True


def test_auto_delete_after_last_consumer_cancels(conn, ch, names):
    q = declare_queue(ch, names, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert _exists(conn, q)
    ch.basic_cancel(t2)
    assert wait_until(conn, lambda: not _exists(conn, q))


def test_auto_delete_when_consumer_channel_closes(conn, ch, names):
    q = declare_queue(ch, names, auto_delete=True)
    ch2 = conn.channel()
    ch2.basic_consume(q, lambda *a: None)
    ch2.close()
    assert wait_until(conn, lambda: not _exists(conn, q))


def test_auto_delete_never_consumed_persists(conn, ch, names):
    q = declare_queue(ch, names, auto_delete=True)
    ch.basic_publish("", q, b"m")
    ch.basic_get(q, auto_ack=True)  # basic.get is not a consumer
    assert _exists(conn, q)


def test_bind_missing_exchange_is_404(conn, ch, names):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, names.exchange(), routing_key="k")
    assert_channel_closed(ei, 404)


def test_bind_missing_queue_is_404(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_bind(names.queue(), "amq.direct", routing_key="k")
    assert_channel_closed(ei, 404)


def test_unbind_missing_binding_is_ok(ch, names):
    q = declare_queue(ch, names)
    ch.queue_unbind(q, "amq.direct", routing_key="never-bound")
    assert ch.is_open


def test_deleted_queue_loses_bindings(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_delete(q)
    ch.queue_declare(q)
    ch.basic_publish(x, "k", b"m")
    sync(ch)
    assert drain_get(ch, q) == []
