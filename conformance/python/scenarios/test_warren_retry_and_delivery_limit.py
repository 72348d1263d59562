"""Retry via DLX with TTL, then parking via x-delivery-limit; quorum-queue delivery limits.

Warren-only: these follow RabbitMQ 4.x (quorum queues count deliveries, default
x-delivery-limit 20, x-delivery-count header on redelivery) and Warren's own extensions
(x-delivery-limit on classic queues, counted across dead-letter round trips, and
x-delivery-limit-exchange). RabbitMQ 3.10.8 has none of these, so the tests skip themselves
when the broker is not Warren.
"""
import pika
import pytest

from helpers import declare_queue, wait_until


@pytest.fixture(autouse=True)
def warren_only(conn):
    product = conn._impl.server_properties.get("product")  # pylint: disable=protected-access
    if isinstance(product, bytes):
        product = product.decode()
    if product != "Warren":
        pytest.skip("Warren-only: behaviour of RabbitMQ 4.x / Warren extensions")


def _deaths(props):
    return [(d["queue"], d["reason"], d["count"]) for d in (props.headers or {}).get("x-death", [])]


def test_retry_via_dlx_with_ttl_then_parking(conn, ch, names):
    retry, parked = names.exchange("retry"), names.exchange("parked")
    ch.exchange_declare(retry, "fanout")
    ch.exchange_declare(parked, "fanout")
    work = declare_queue(ch, names, "work", arguments={
        "x-dead-letter-exchange": retry,
        "x-delivery-limit": 3,
        "x-delivery-limit-exchange": parked,
    })
    wait = declare_queue(ch, names, "wait", arguments={
        "x-message-ttl": 100,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work,
    })
    parking = declare_queue(ch, names, "parking")
    ch.queue_bind(wait, retry)
    ch.queue_bind(parking, parked)
    ch.basic_publish("", work, b"poison")

    counts = []
    for _ in range(4):
        got = {}
        assert wait_until(conn, lambda: got.update(m=ch.basic_get(work)) or got["m"][0] is not None)
        method, props, body = got["m"]
        assert body == b"poison"
        counts.append(next((c for q, r, c in _deaths(props) if q == work and r == "rejected"), 0))
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert counts == [0, 1, 2, 3]

    got = {}
    assert wait_until(conn, lambda: got.update(m=ch.basic_get(parking, auto_ack=True)) or got["m"][0] is not None)
    _m, props, body = got["m"]
    assert body == b"poison"
    deaths = _deaths(props)
    assert deaths[0] == (work, "delivery_limit", 1)
    assert (work, "rejected", 3) in deaths and (wait, "expired", 3) in deaths


def test_quorum_queue_sets_delivery_count_and_dead_letters_past_the_limit(conn, ch, names):
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    dlq = declare_queue(ch, names, "dlq")
    ch.queue_bind(dlq, dlx)
    q = declare_queue(ch, names, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m")
    seen = []
    for _ in range(3):
        got = {}
        assert wait_until(conn, lambda: got.update(m=ch.basic_get(q)) or got["m"][0] is not None)
        method, props, _body = got["m"]
        seen.append((props.headers or {}).get("x-delivery-count"))
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert seen == [None, 1, 2]
    got = {}
    assert wait_until(conn, lambda: got.update(m=ch.basic_get(dlq, auto_ack=True)) or got["m"][0] is not None)
    assert _deaths(got["m"][1])[0][1] == "delivery_limit"


def test_quorum_queue_must_be_durable(conn, ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-queue-type": "quorum"})
    assert e.value.reply_code == 406
