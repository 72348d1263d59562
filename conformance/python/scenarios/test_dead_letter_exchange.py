"""DeadLetterExchange (after the Java client's DeadLetterExchange): reasons
rejected / expired / maxlen, routing-key rules, the x-death and
x-first-death-* headers, retry-loop counts, cycle detection, missing DLX,
argument validation."""
import datetime

import pika
import pika.compat
import pika.exceptions
import pytest

from helpers import (assert_channel_closed, declare_queue, queue_depth,
                     settle, sync, wait_until)


def _dlx_with_queue(ch, names, kind="fanout", binding_key=""):
    """A DLX plus a queue bound to it; returns (dlx, dlq)."""
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, kind)
    dlq = declare_queue(ch, names, "dlq")
    ch.queue_bind(dlq, dlx, binding_key)
    return dlx, dlq


def _get_wait(conn, ch, queue, auto_ack=True, timeout=5.0):
    """basic.get until a message arrives (dead-lettering is asynchronous)."""
    got = []

    def poll():
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            got.append((method, props, body))
            return True
        return False

    assert wait_until(conn, poll, timeout), "nothing arrived on %s" % queue
    return got[0]


def _get_n(conn, ch, queue, n, timeout=5.0):
    out = []
    for _ in range(n):
        out.append(_get_wait(conn, ch, queue, timeout=timeout))
    return out


def _reject_one(conn, ch, queue):
    method, _props, _body = _get_wait(conn, ch, queue, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)


def _death(props, index=0):
    return props.headers["x-death"][index]


def test_reject_dead_letters_with_reason_rejected(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"poison")
    _reject_one(conn, ch, q)
    method, props, body = _get_wait(conn, ch, dlq)
    assert body == b"poison"
    assert method.exchange == dlx
    assert method.routing_key == q  # original routing key kept
    assert method.redelivered is False
    assert _death(props)["reason"] == "rejected"
    assert queue_depth(ch, q) == 0


def test_nack_multiple_dead_letters_all_in_order(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    for i in range(3):
        ch.basic_publish("", q, b"n%d" % i)
    tags = [_get_wait(conn, ch, q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    got = _get_n(conn, ch, dlq, 3)
    assert [g[2] for g in got] == [b"n0", b"n1", b"n2"]
    assert all(_death(g[1])["reason"] == "rejected" for g in got)


def test_queue_ttl_expiry_dead_letters_with_reason_expired(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx,
                                            "x-message-ttl": 100})
    ch.basic_publish("", q, b"stale")
    method, props, body = _get_wait(conn, ch, dlq)
    assert body == b"stale"
    assert method.routing_key == q
    assert _death(props)["reason"] == "expired"
    assert props.headers["x-first-death-reason"] == "expired"


def test_message_expiration_dead_letters_and_moves_expiration(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"stale", pika.BasicProperties(
        expiration="100", correlation_id="c-1", priority=3,
        headers={"app": "kept"}))
    _method, props, body = _get_wait(conn, ch, dlq)
    assert body == b"stale"
    death = _death(props)
    assert death["reason"] == "expired"
    # the expiration property is removed and recorded in the x-death entry
    assert props.expiration is None
    assert death["original-expiration"] == "100"
    # other properties and headers survive dead-lettering
    assert props.correlation_id == "c-1"
    assert props.priority == 3
    assert props.headers["app"] == "kept"


def test_max_length_drop_head_dead_letters_with_reason_maxlen(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx,
                                            "x-max-length": 1})
    for body in (b"m0", b"m1", b"m2"):
        ch.basic_publish("", q, body)
    got = _get_n(conn, ch, dlq, 2)
    assert [g[2] for g in got] == [b"m0", b"m1"]
    assert all(_death(g[1])["reason"] == "maxlen" for g in got)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m2"


def test_dead_letter_routing_key_overrides_original(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names, kind="direct", binding_key="dead")
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx,
                                            "x-dead-letter-routing-key": "dead"})
    ch.queue_bind(q, "amq.direct", "orig")
    ch.basic_publish("amq.direct", "orig", b"m")
    _reject_one(conn, ch, q)
    method, props, _body = _get_wait(conn, ch, dlq)
    assert method.exchange == dlx
    assert method.routing_key == "dead"
    # x-death records where the message was originally published
    death = _death(props)
    assert death["exchange"] == "amq.direct"
    assert death["routing-keys"] == ["orig"]


def test_original_routing_key_used_without_dead_letter_routing_key(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names, kind="direct", binding_key="orig")
    other = declare_queue(ch, names, "other")
    ch.queue_bind(other, dlx, "different")
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, "amq.direct", "orig")
    ch.basic_publish("amq.direct", "orig", b"m")
    _reject_one(conn, ch, q)
    method, _props, _body = _get_wait(conn, ch, dlq)
    assert method.routing_key == "orig"
    settle(conn)
    assert queue_depth(ch, other) == 0


def test_x_death_header_shape(conn, ch, names):
    dlx, dlq = _dlx_with_queue(ch, names)
    q = declare_queue(ch, names, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, "amq.direct", "k1")
    ch.queue_bind(q, "amq.direct", "k2")
    ch.basic_publish("amq.direct", "k1", b"m", pika.BasicProperties(
        headers={"CC": ["k2"], "BCC": ["k3"]}))
    _reject_one(conn, ch, q)
    _method, props, _body = _get_wait(conn, ch, dlq)
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1
    death = deaths[0]
    assert set(death) == {"queue", "reason", "exchange", "routing-keys",
                          "count", "time"}
    assert death["queue"] == q
    assert death["reason"] == "rejected"
    assert death["exchange"] == "amq.direct"
    # routing keys include CC but not BCC
    assert death["routing-keys"] == ["k1", "k2"]
    assert death["count"] == 1
    # 64-bit signed integer ('l') on the wire; pika marks 64-bit ints as long
    assert isinstance(death["count"], pika.compat.long)
    assert isinstance(death["time"], datetime.datetime)
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == "amq.direct"
    assert props.headers["CC"] == ["k2"]
    assert "BCC" not in props.headers


def test_retry_loop_increments_count(conn, ch, names):
    work = names.queue("work")
    retry = names.queue("retry")
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": retry})
    ch.queue_declare(retry, arguments={"x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": work,
                                       "x-message-ttl": 100})
    ch.basic_publish("", work, b"job", pika.BasicProperties(headers={"h": "v"}))
    method, props, _ = _get_wait(conn, ch, work, auto_ack=False)
    assert "x-death" not in (props.headers or {})
    for expected in (1, 2, 3):
        ch.basic_reject(method.delivery_tag, requeue=False)
        method, props, body = _get_wait(conn, ch, work, auto_ack=False)
        assert body == b"job"
        assert props.headers["h"] == "v"
        deaths = props.headers["x-death"]
        # one entry per (queue, reason), most recent first
        assert [(d["queue"], d["reason"]) for d in deaths] == [
            (retry, "expired"), (work, "rejected")]
        assert [d["count"] for d in deaths] == [expected, expected]
        # x-first-death-* never change after the first death
        assert props.headers["x-first-death-queue"] == work
        assert props.headers["x-first-death-reason"] == "rejected"
        assert props.headers["x-first-death-exchange"] == ""
    ch.basic_ack(method.delivery_tag)


def test_cycle_without_rejection_is_dropped(conn, ch, names):
    # a --(ttl)--> x (fanout) --> a and spy: the copy for a would close an
    # expiry-only cycle, so only the spy receives the dead-lettered message
    x = names.exchange("dlx")
    ch.exchange_declare(x, "fanout")
    a = declare_queue(ch, names, "a", arguments={"x-dead-letter-exchange": x,
                                                  "x-message-ttl": 100})
    spy = declare_queue(ch, names, "spy")
    ch.queue_bind(a, x)
    ch.queue_bind(spy, x)
    ch.basic_publish("", a, b"loop")
    _method, props, body = _get_wait(conn, ch, spy)
    assert body == b"loop"
    assert [(d["queue"], d["reason"], d["count"])
            for d in props.headers["x-death"]] == [(a, "expired", 1)]
    settle(conn, 0.5)
    assert queue_depth(ch, a) == 0
    assert queue_depth(ch, spy) == 0


def test_self_cycle_via_default_exchange_is_dropped(conn, ch, names):
    q = names.queue("self")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": q,
                                   "x-message-ttl": 100})
    ch.basic_publish("", q, b"loop")
    sync(ch)
    assert wait_until(conn, lambda: queue_depth(ch, q) == 0)
    # a looping message would be back in the queue for 100 ms of every cycle
    for _ in range(5):
        settle(conn, 0.1)
        assert queue_depth(ch, q) == 0


def test_missing_dead_letter_exchange_drops_silently(conn, ch, names):
    q = declare_queue(ch, names, arguments={
        "x-dead-letter-exchange": names.exchange("missing")})
    ch.basic_publish("", q, b"m")
    _reject_one(conn, ch, q)
    settle(conn)
    assert queue_depth(ch, q) == 0
    # the queue and the channel stay usable
    ch.basic_publish("", q, b"next")
    assert _get_wait(conn, ch, q)[2] == b"next"


def test_routing_key_without_dead_letter_exchange_is_406(ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-dead-letter-routing-key": "k"})
    assert_channel_closed(e, 406)
    assert "routing_key_but_no_dlx_defined" in e.value.reply_text
