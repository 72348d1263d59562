"""ConsumerCancelNotification (after the Java client's test of that name):
deleting a queue cancels its consumers with a server-sent basic.cancel; the
channel stays open."""
from helpers import Collector, declare_queue, wait_until


def test_capability_advertised(conn):
    assert conn.consumer_cancel_notify_supported


def test_queue_delete_sends_basic_cancel(conn, ch, names):
    q = declare_queue(ch, names)
    cancelled = []
    ch.add_on_cancel_callback(cancelled.append)
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    assert wait_until(conn, lambda: cancelled)
    assert cancelled[0].method.consumer_tag == tag
    assert ch.is_open
    assert tag not in ch.consumer_tags


def test_all_consumers_on_queue_are_cancelled(conn, names):
    ch1, ch2 = conn.channel(), conn.channel()
    q = declare_queue(ch1, names)
    cancelled = []
    for c in (ch1, ch2):
        c.add_on_cancel_callback(cancelled.append)
    t1 = ch1.basic_consume(q, lambda *a: None)
    t2 = ch2.basic_consume(q, lambda *a: None)
    t3 = ch2.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    assert wait_until(conn, lambda: len(cancelled) == 3)
    assert sorted(f.method.consumer_tag for f in cancelled) == sorted([t1, t2, t3])


def test_other_consumers_unaffected(conn, ch, names):
    q_del, q_keep = declare_queue(ch, names), declare_queue(ch, names)
    cancelled = []
    ch.add_on_cancel_callback(cancelled.append)
    ch.basic_consume(q_del, lambda *a: None)
    keep = Collector()
    ch.basic_consume(q_keep, keep, auto_ack=True)
    conn.channel().queue_delete(q_del)
    assert wait_until(conn, lambda: cancelled)
    ch.basic_publish("", q_keep, b"still-here")
    assert wait_until(conn, lambda: len(keep) == 1)
    assert keep.bodies == [b"still-here"]
