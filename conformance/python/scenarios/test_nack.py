"""Nack (after the Java client's Nack / Reject / Requeue tests): basic.nack
and basic.reject with and without requeue, multiple, redelivered flag,
delivery tags after requeue."""
from helpers import declare_queue, drain_get, queue_depth, sync, wait_until


def _fill(ch, q, n):
    for i in range(n):
        ch.basic_publish("", q, b"m%d" % i)
    sync(ch)


def _get_n(ch, q, n):
    out = []
    for _ in range(n):
        method, _props, body = ch.basic_get(q, auto_ack=False)
        assert method is not None
        out.append((method, body))
    return out


def test_nack_requeue_sets_redelivered(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    [(m, body)] = _get_n(ch, q, 1)
    assert m.redelivered is False
    ch.basic_nack(m.delivery_tag, requeue=True)
    [(m2, body2)] = _get_n(ch, q, 1)
    assert body2 == body
    assert m2.redelivered is True
    assert m2.delivery_tag == m.delivery_tag + 1


def test_nack_multiple_requeues_all_with_new_tags(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 3)
    got = _get_n(ch, q, 3)
    assert [m.delivery_tag for m, _ in got] == [1, 2, 3]
    ch.basic_nack(3, multiple=True, requeue=True)
    again = _get_n(ch, q, 3)
    assert [m.delivery_tag for m, _ in again] == [4, 5, 6]
    assert all(m.redelivered for m, _ in again)
    # requeued messages keep their original order
    assert [b for _, b in again] == [b"m0", b"m1", b"m2"]


def test_nack_without_requeue_discards(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 2)
    got = _get_n(ch, q, 2)
    ch.basic_nack(got[1][0].delivery_tag, multiple=True, requeue=False)
    assert queue_depth(ch, q) == 0


def test_nack_single_leaves_others_unacked(conn, ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 3)
    _get_n(ch, q, 3)
    ch.basic_nack(2, multiple=False, requeue=False)
    ch.close()  # tags 1 and 3 are requeued
    ch2 = conn.channel()
    assert sorted(drain_get(ch2, q)) == [b"m0", b"m2"]


def test_reject_requeue(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    [(m, _)] = _get_n(ch, q, 1)
    ch.basic_reject(m.delivery_tag, requeue=True)
    [(m2, body)] = _get_n(ch, q, 1)
    assert (m2.redelivered, body) == (True, b"m0")


def test_reject_without_requeue_discards(ch, names):
    q = declare_queue(ch, names)
    _fill(ch, q, 1)
    [(m, _)] = _get_n(ch, q, 1)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert queue_depth(ch, q) == 0


def test_nack_requeue_redelivers_to_consumer(conn, ch, names):
    q = declare_queue(ch, names)
    seen = []

    def on_msg(c, method, props, body):
        seen.append((method.delivery_tag, method.redelivered, body))
        if not method.redelivered:
            c.basic_nack(method.delivery_tag, requeue=True)
        else:
            c.basic_ack(method.delivery_tag)

    ch.basic_consume(q, on_msg)
    ch.basic_publish("", q, b"x")
    assert wait_until(conn, lambda: len(seen) >= 2)
    assert seen[:2] == [(1, False, b"x"), (2, True, b"x")]
    assert queue_depth(ch, q) == 0
