"""QueueSizeLimit (after the Java client's QueueSizeLimit): x-max-length and
x-max-length-bytes with the drop-head, reject-publish and
reject-publish-dlx overflow behaviours, with publisher confirms."""
import pika.exceptions
import pytest

from helpers import (RawConfirms, assert_channel_closed, declare_queue,
                     drain_get, queue_depth, settle, wait_until)


def _publish_confirmed(conn, ch, q, bodies):
    rc = RawConfirms(conn, ch)
    for body in bodies:
        rc.publish("", q, body)
    assert rc.wait_all()
    return rc.outcome()


BODIES = [b"m0", b"m1", b"m2", b"m3"]


def test_drop_head_keeps_newest(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length": 2})
    assert _publish_confirmed(conn, ch, q, BODIES) == {t: "ack" for t in range(1, 5)}
    assert drain_get(ch, q) == [b"m2", b"m3"]


def test_max_length_bytes_drop_head(conn, ch, names):
    # limit counts body bytes: 10 bytes hold two 5-byte bodies
    q = declare_queue(ch, names, arguments={"x-max-length-bytes": 10})
    _publish_confirmed(conn, ch, q, [b"abcd0", b"abcd1", b"abcd2", b"abcd3"])
    assert drain_get(ch, q) == [b"abcd2", b"abcd3"]


def test_message_larger_than_max_length_bytes_is_dropped(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length-bytes": 5})
    _publish_confirmed(conn, ch, q, [b"small", b"much too big"])
    assert drain_get(ch, q) == []


def test_unacked_messages_do_not_count(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length": 1,
                                            "x-overflow": "reject-publish"})
    _publish_confirmed(conn, ch, q, [b"a"])
    method, _p, body = ch.basic_get(q, auto_ack=False)
    assert body == b"a"
    ch2 = conn.channel()
    assert _publish_confirmed(conn, ch2, q, [b"b", b"c"]) == {1: "ack", 2: "nack"}
    ch.basic_ack(method.delivery_tag)
    assert drain_get(ch, q) == [b"b"]


def test_reject_publish_nacks_overflow(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length": 2,
                                            "x-overflow": "reject-publish"})
    outcome = _publish_confirmed(conn, ch, q, BODIES)
    assert outcome == {1: "ack", 2: "ack", 3: "nack", 4: "nack"}
    assert drain_get(ch, q) == [b"m0", b"m1"]


def test_reject_publish_accepts_again_when_room_frees(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length": 1,
                                            "x-overflow": "reject-publish"})
    rc = RawConfirms(conn, ch)
    rc.publish("", q, b"m0")
    rc.publish("", q, b"m1")
    assert rc.wait_all()
    assert ch.basic_get(q, auto_ack=True)[2] == b"m0"
    rc.publish("", q, b"m2")
    assert rc.wait_all()
    assert rc.outcome() == {1: "ack", 2: "nack", 3: "ack"}
    assert drain_get(ch, q) == [b"m2"]


def test_reject_publish_without_confirms_drops_silently(conn, ch, names):
    q = declare_queue(ch, names, arguments={"x-max-length": 2,
                                            "x-overflow": "reject-publish"})
    for body in BODIES:
        ch.basic_publish("", q, body)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 2)
    settle(conn)
    assert ch.is_open
    assert drain_get(ch, q) == [b"m0", b"m1"]


def _dlx(ch, names):
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    dlq = declare_queue(ch, names, "dlq")
    ch.queue_bind(dlq, dlx)
    return dlx, dlq


def test_reject_publish_does_not_dead_letter(conn, ch, names):
    dlx, dlq = _dlx(ch, names)
    q = declare_queue(ch, names, arguments={"x-max-length": 2,
                                            "x-overflow": "reject-publish",
                                            "x-dead-letter-exchange": dlx})
    outcome = _publish_confirmed(conn, ch, q, BODIES)
    assert outcome == {1: "ack", 2: "ack", 3: "nack", 4: "nack"}
    settle(conn)
    assert queue_depth(ch, dlq) == 0


def test_reject_publish_dlx_nacks_and_dead_letters(conn, ch, names):
    dlx, dlq = _dlx(ch, names)
    q = declare_queue(ch, names, arguments={"x-max-length": 2,
                                            "x-overflow": "reject-publish-dlx",
                                            "x-dead-letter-exchange": dlx})
    outcome = _publish_confirmed(conn, ch, q, BODIES)
    assert outcome == {1: "ack", 2: "ack", 3: "nack", 4: "nack"}
    assert drain_get(ch, q) == [b"m0", b"m1"]
    assert wait_until(conn, lambda: queue_depth(ch, dlq) == 2)
    got = []
    for _ in range(2):
        method, props, body = ch.basic_get(dlq, auto_ack=True)
        got.append(body)
        assert method.exchange == dlx
        assert method.routing_key == q
        death = props.headers["x-death"][0]
        assert (death["queue"], death["reason"], death["count"]) == (q, "maxlen", 1)
        assert death["exchange"] == ""
        assert death["routing-keys"] == [q]
        assert props.headers["x-first-death-reason"] == "maxlen"
    assert got == [b"m2", b"m3"]


@pytest.mark.parametrize("args,text", [
    ({"x-overflow": "bogus"}, "invalid_overflow"),
    ({"x-max-length": -1}, "{value_negative,-1}"),
])
def test_invalid_limit_arguments_are_406(ch, names, args, text):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments=args)
    assert_channel_closed(e, 406)
    assert "invalid arg '%s'" % next(iter(args)) in e.value.reply_text
    assert text in e.value.reply_text
