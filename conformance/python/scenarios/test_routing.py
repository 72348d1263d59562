"""Routing (after the RabbitMQ Java client functional test ``Routing``):
direct, fanout and topic routing, binding de-duplication, unbind."""
import pytest

from helpers import declare_queue, drain_get, sync


def _bound_queue(ch, names, exchange, key, **kw):
    q = declare_queue(ch, names)
    ch.queue_bind(q, exchange, routing_key=key, **kw)
    return q


def test_direct_routes_by_exact_key(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qa = _bound_queue(ch, names, x, "a")
    qb = _bound_queue(ch, names, x, "b")
    ch.basic_publish(x, "a", b"to-a")
    ch.basic_publish(x, "b", b"to-b")
    ch.basic_publish(x, "c", b"to-nobody")
    sync(ch)
    assert drain_get(ch, qa) == [b"to-a"]
    assert drain_get(ch, qb) == [b"to-b"]


def test_direct_one_key_many_queues(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qs = [_bound_queue(ch, names, x, "k") for _ in range(3)]
    ch.basic_publish(x, "k", b"m")
    sync(ch)
    for q in qs:
        assert drain_get(ch, q) == [b"m"]


def test_fanout_ignores_routing_key(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    q1 = _bound_queue(ch, names, x, "whatever")
    q2 = _bound_queue(ch, names, x, "")
    ch.basic_publish(x, "some.key", b"m")
    sync(ch)
    assert drain_get(ch, q1) == [b"m"]
    assert drain_get(ch, q2) == [b"m"]


@pytest.mark.parametrize("pattern,matching,non_matching", [
    ("a.*", ["a.b", "a.x"], ["a", "a.b.c", "b.a", ""]),
    ("*.b.*", ["a.b.c", "x.b.y"], ["b.c", "a.b", "a.b.c.d"]),
    ("a.#", ["a", "a.b", "a.b.c"], ["b", "b.a", "ab"]),
    ("#.z", ["z", "a.z", "a.b.z"], ["z.a", "az"]),
    ("#", ["", "a", "a.b.c"], []),
    ("a.#.z", ["a.z", "a.b.z", "a.b.c.z"], ["a", "z", "a.b"]),
    ("*", ["a"], ["a.b", ""]),
    ("a.b", ["a.b"], ["a.b.c", "a", "A.B"]),
], ids=["a.star", "star.b.star", "a.hash", "hash.z", "hash", "a.hash.z",
        "star", "literal"])
def test_topic_wildcards(ch, names, pattern, matching, non_matching):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = _bound_queue(ch, names, x, pattern)
    for key in matching + non_matching:
        ch.basic_publish(x, key, key.encode() or b"<empty>")
    sync(ch)
    got = drain_get(ch, q)
    assert got == [(k.encode() or b"<empty>") for k in matching]


def test_overlapping_bindings_deliver_once(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = declare_queue(ch, names)
    for key in ("a.*", "#", "a.b", "*.b"):
        ch.queue_bind(q, x, routing_key=key)
    ch.basic_publish(x, "a.b", b"once")
    sync(ch)
    assert drain_get(ch, q) == [b"once"]


def test_rebinding_same_key_is_idempotent(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_unbind(q, x, routing_key="k")
    ch.basic_publish(x, "k", b"m")
    sync(ch)
    # a single unbind removes the (single) binding
    assert drain_get(ch, q) == []


def test_unbind_stops_routing(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = _bound_queue(ch, names, x, "k")
    ch.basic_publish(x, "k", b"before")
    ch.queue_unbind(q, x, routing_key="k")
    ch.basic_publish(x, "k", b"after")
    sync(ch)
    assert drain_get(ch, q) == [b"before"]


def test_delivery_carries_exchange_and_routing_key(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = _bound_queue(ch, names, x, "a.#")
    ch.basic_publish(x, "a.b.c", b"m")
    sync(ch)
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m"
    assert method.exchange == x
    assert method.routing_key == "a.b.c"
    assert method.redelivered is False


def test_publish_order_preserved(ch, names):
    q = declare_queue(ch, names)
    bodies = [str(i).encode() for i in range(50)]
    for b in bodies:
        ch.basic_publish("", q, b)
    sync(ch)
    assert drain_get(ch, q) == bodies
