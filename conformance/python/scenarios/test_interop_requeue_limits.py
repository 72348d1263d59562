"""Requeue versus queue length limits (classic queues, RabbitMQ 3.10.8).

Setup in every case: limit 2 messages (x-max-length=2, or
x-max-length-bytes=4 with 2-byte bodies); publish m1, m2; basic.get both
without ack; publish m3, m4 (the limit counts ready messages only, so both
are confirmed: 2 ready + 2 unacked); then requeue m1, m2 by nack, reject,
recover or closing the channel.

RabbitMQ: with the default overflow (drop-head) the requeued m1, m2 go back
to the head and the queue is then trimmed from the head, so m1, m2 are
dropped, dead-lettered with x-death reason "maxlen", and m3, m4 remain.
With reject-publish / reject-publish-dlx, requeue is never refused: all 4
remain (over the limit) and nothing is dead-lettered; the next publish is
nacked."""
import pika
import pika.exceptions
import pytest

from helpers import drain_get, queue_depth, sync, wait_until

ACTIONS = ["nack", "reject", "recover", "close"]


def _setup(conn, ch, names, limit_args, overflow):
    dlx = names.exchange("ia-dlx")
    dlq = names.queue("ia-dlq")
    q = names.queue("ia-q")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    args = dict(limit_args)
    args["x-dead-letter-exchange"] = dlx
    if overflow:
        args["x-overflow"] = overflow
    ch.queue_declare(q, arguments=args)
    ch.confirm_delivery()
    for b in (b"m1", b"m2"):
        ch.basic_publish("", q, b)
    tags = []
    for expected in (b"m1", b"m2"):
        m, _p, body = ch.basic_get(q, auto_ack=False)
        assert body == expected
        tags.append(m.delivery_tag)
    for b in (b"m3", b"m4"):
        ch.basic_publish("", q, b)  # confirmed: raises NackError otherwise
    assert queue_depth(ch, q) == 2
    return q, dlq, dlx, tags


def _requeue(conn, ch, action, tags):
    if action == "nack":
        ch.basic_nack(tags[-1], multiple=True, requeue=True)
    elif action == "reject":
        for t in tags:
            ch.basic_reject(t, requeue=True)
    elif action == "recover":
        ch.basic_recover(requeue=True)
    elif action == "close":
        ch.close()
        return conn.channel()
    sync(ch)
    return ch


def _dead_lettered(conn, ch, dlq, expected_count):
    wait_until(conn, lambda: queue_depth(ch, dlq) >= expected_count)
    out = []
    while True:
        m, p, body = ch.basic_get(dlq, auto_ack=True)
        if m is None:
            return out
        out.append((body, (p.headers or {}).get("x-death")))


LIMITS = {
    "max-length": {"x-max-length": 2},
    "max-length-bytes": {"x-max-length-bytes": 4},
}


@pytest.mark.parametrize("limit", list(LIMITS))
@pytest.mark.parametrize("action", ACTIONS)
def test_drop_head_requeue_drops_requeued_head_and_dead_letters_maxlen(conn, ch, names, limit, action):
    q, dlq, _dlx, tags = _setup(conn, ch, names, LIMITS[limit], None)
    ch = _requeue(conn, ch, action, tags)
    assert queue_depth(ch, q) == 2
    assert drain_get(ch, q) == [b"m3", b"m4"]
    dead = _dead_lettered(conn, ch, dlq, 2)
    assert [d[0] for d in dead] == [b"m1", b"m2"]
    for _body, xdeath in dead:
        assert len(xdeath) == 1
        d = xdeath[0]
        assert (d["reason"], d["count"], d["queue"], d["exchange"], d["routing-keys"]) == (
            "maxlen", 1, q, "", [q])


@pytest.mark.parametrize("overflow", ["reject-publish", "reject-publish-dlx"])
@pytest.mark.parametrize("action", ACTIONS)
def test_reject_publish_requeue_keeps_all_over_limit(conn, ch, names, overflow, action):
    q, dlq, _dlx, tags = _setup(conn, ch, names, LIMITS["max-length"], overflow)
    ch = _requeue(conn, ch, action, tags)
    assert queue_depth(ch, q) == 4
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"m5")
    assert drain_get(ch, q) == [b"m1", b"m2", b"m3", b"m4"]
    assert queue_depth(ch, dlq) == (1 if overflow == "reject-publish-dlx" else 0)


@pytest.mark.parametrize("action", ["nack", "close"])
def test_reject_publish_max_length_bytes_requeue_keeps_all(conn, ch, names, action):
    q, dlq, _dlx, tags = _setup(conn, ch, names, LIMITS["max-length-bytes"], "reject-publish")
    ch = _requeue(conn, ch, action, tags)
    assert queue_depth(ch, q) == 4
    assert drain_get(ch, q) == [b"m1", b"m2", b"m3", b"m4"]
    assert queue_depth(ch, dlq) == 0
