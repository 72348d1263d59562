"""DelayedMessageExchange: the rabbitmq-delayed-message-exchange plugin's documented
interface (exchange type x-delayed-message, argument x-delayed-type, header x-delay in ms,
x-delay negated at delivery), as Warren builds it in.

The reference RabbitMQ has no plugin installed, so the module skips unless the broker under
test is Warren. The mandatory scenario asserts Warren's documented choice (a return only when
nothing would take the message now), which differs from the plugin's (a return for every
delayed mandatory publish).
"""
import time

import pika
import pika.exceptions
import pytest

from helpers import Collector, declare_queue, drain_get, settle, wait_until
from helpers_interop import is_warren

DELAYED = "x-delayed-message"


@pytest.fixture(autouse=True, scope="module")
def _warren_only():
    if not is_warren():
        pytest.skip("the delayed-message plugin is not installed on the reference broker")


def _declare(ch, names, routing="direct", **arguments):
    x = names.exchange("delayed")
    ch.exchange_declare(x, DELAYED, arguments={"x-delayed-type": routing, **arguments})
    return x


def _props(delay):
    return pika.BasicProperties(headers={"x-delay": delay})


def test_declare_without_delayed_type_is_refused(ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(names.exchange("delayed"), DELAYED)
    assert e.value.reply_code == 406
    assert "'x-delayed-type' must be an existing exchange type" in e.value.reply_text


def test_delayed_type_cannot_be_delayed(ch, names):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(names.exchange("delayed"), DELAYED,
                            arguments={"x-delayed-type": DELAYED})
    assert e.value.reply_code == 406
    assert "'x-delayed-message' can't be used for 'x-delayed-type'" in e.value.reply_text


def test_unknown_delayed_type_closes_the_connection(conn, names):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.exchange_declare(names.exchange("delayed"), DELAYED,
                            arguments={"x-delayed-type": "nope"})
    assert e.value.reply_code == 503
    assert "unknown exchange type 'nope'" in e.value.reply_text


def test_message_is_delivered_after_its_delay_with_negative_x_delay(conn, ch, names):
    x = _declare(ch, names)
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"later", _props(500))
    settle(conn, 0.3)
    assert len(got) == 0
    assert wait_until(conn, lambda: len(got) == 1)
    assert time.monotonic() - start >= 0.5
    _method, props, body = got.messages[0]
    assert body == b"later"
    assert props.headers["x-delay"] == -500


def test_shorter_delay_overtakes(conn, ch, names):
    x = _declare(ch, names, routing="fanout")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x)
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    ch.basic_publish(x, "", b"slow", _props(800))
    ch.basic_publish(x, "", b"fast", _props(200))
    assert wait_until(conn, lambda: len(got) == 2)
    assert got.bodies == [b"fast", b"slow"]


def test_no_or_non_positive_delay_is_routed_at_once(conn, ch, names):
    x = _declare(ch, names)
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="k")
    ch.basic_publish(x, "k", b"none")
    ch.basic_publish(x, "k", b"zero", _props(0))
    ch.basic_publish(x, "k", b"negative", _props(-1000))
    assert wait_until(conn, lambda: ch.queue_declare(q, passive=True).method.message_count == 3)
    assert drain_get(ch, q) == [b"none", b"zero", b"negative"]


def test_bindings_are_evaluated_when_the_delay_expires(conn, ch, names):
    x = _declare(ch, names, routing="topic")
    ch.basic_publish(x, "a.b", b"m", _props(400))
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="a.*")
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 1)


def test_mandatory_is_returned_only_when_nothing_would_route(conn, ch, names):
    """Warren's choice (the plugin returns every delayed mandatory publish at once)."""
    x = _declare(ch, names)
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, routing_key="bound")
    returned = []
    ch.add_on_return_callback(lambda _ch, method, _props, body: returned.append(body))
    ch.basic_publish(x, "bound", b"kept", _props(300), mandatory=True)
    ch.basic_publish(x, "nobody", b"lost", _props(300), mandatory=True)
    assert wait_until(conn, lambda: returned == [b"lost"])
    assert wait_until(conn, lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
    assert drain_get(ch, q) == [b"kept"]


def test_exchange_lists_as_delayed(ch, names):
    x = _declare(ch, names)
    # An equivalent redeclare is accepted; a passive one finds it.
    ch.exchange_declare(x, DELAYED, arguments={"x-delayed-type": "direct"})
    ch.exchange_declare(x, passive=True)
