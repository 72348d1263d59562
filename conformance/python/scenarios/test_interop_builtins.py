"""Built-in names in vhost "/" on RabbitMQ 3.10.8.

`rabbitmqctl list_exchanges name type durable internal` on RabbitMQ shows
amq.rabbitmq.trace as: topic, durable=true, internal=true (auto_delete
false, no arguments); the tests below check the same facts over AMQP
(passive declare, equivalent / inequivalent redeclare, publish)."""
import pika.spec as S
import pytest

from helpers_interop import Session, close_tuple

TRACE = "amq.rabbitmq.trace"
REPLY_TO = "amq.rabbitmq.reply-to"


def _one(method=None, raw=None):
    s = Session()
    try:
        if raw is not None:
            s.send_bytes(raw)
            # a synchronous round trip after the publish
            f = s.rpc(1, S.Exchange.Declare(exchange="amq.direct", passive=True))
        else:
            f = s.rpc(1, method)
        s.reply_close_ok(f)
        return f, close_tuple(f)
    finally:
        s.shutdown()


def test_trace_exchange_exists():
    _f, got = _one(S.Exchange.Declare(exchange=TRACE, passive=True))
    assert got == (None, "DeclareOk")


def test_trace_exchange_equivalent_redeclare_topic_durable_internal_is_ok():
    _f, got = _one(S.Exchange.Declare(exchange=TRACE, type="topic", durable=True, internal=True))
    assert got == (None, "DeclareOk")


@pytest.mark.parametrize("kw,text", [
    ({"type": "direct", "durable": True, "internal": True},
     "inequivalent arg 'type' for exchange 'amq.rabbitmq.trace' in vhost '/': "
     "received 'direct' but current is 'topic'"),
    ({"type": "topic", "durable": False, "internal": True},
     "inequivalent arg 'durable' for exchange 'amq.rabbitmq.trace' in vhost '/': "
     "received 'false' but current is 'true'"),
    ({"type": "topic", "durable": True, "internal": False},
     "inequivalent arg 'internal' for exchange 'amq.rabbitmq.trace' in vhost '/': "
     "received 'false' but current is 'true'"),
], ids=["type", "durable", "internal"])
def test_trace_exchange_inequivalent_redeclare_is_406_not_403(kw, text):
    _f, got = _one(S.Exchange.Declare(exchange=TRACE, **kw))
    assert got == ("channel", 406, "PRECONDITION_FAILED - " + text, 40, 10)


def test_publish_to_trace_exchange_is_403_internal():
    s = Session()
    raw = s.publish_frames(1, TRACE, "rk", b"x")
    s.close()
    _f, got = _one(raw=raw)
    assert got == ("channel", 403,
                   "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' "
                   "in vhost '/'", 60, 40)


def test_delete_trace_exchange_is_403():
    _f, got = _one(S.Exchange.Delete(exchange=TRACE))
    assert got == ("channel", 403, "ACCESS_REFUSED - deletion of system exchange "
                   "'amq.rabbitmq.trace' in vhost '/' not allowed", 40, 20)


@pytest.mark.parametrize("kw", [{"passive": True}, {}, {"exclusive": True}],
                         ids=["passive", "plain", "exclusive"])
def test_declare_reply_to_pseudo_queue(kw):
    f, got = _one(S.Queue.Declare(queue=REPLY_TO, **kw))
    assert got == (None, "DeclareOk")
    m = f.method
    assert (m.queue, m.message_count, m.consumer_count) == (REPLY_TO, 0, 1)


def test_passive_declare_reply_to_suffix_is_404():
    _f, got = _one(S.Queue.Declare(queue=REPLY_TO + ".something", passive=True))
    assert got == ("channel", 404,
                   "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.something' in vhost '/'", 50, 10)


def test_delete_reply_to_pseudo_queue_is_delete_ok():
    f, got = _one(S.Queue.Delete(queue=REPLY_TO))
    assert got == (None, "DeleteOk") and f.method.message_count == 0


def test_declare_amq_foo_exchange_is_403():
    _f, got = _one(S.Exchange.Declare(exchange="amq.foo", type="direct"))
    assert got == ("channel", 403,
                   "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
                   40, 10)


def test_passive_declare_amq_foo_exchange_is_404():
    _f, got = _one(S.Exchange.Declare(exchange="amq.foo", passive=True))
    assert got == ("channel", 404, "NOT_FOUND - no exchange 'amq.foo' in vhost '/'", 40, 10)


def test_delete_amq_foo_exchange_is_403():
    _f, got = _one(S.Exchange.Delete(exchange="amq.foo"))
    assert got == ("channel", 403, "ACCESS_REFUSED - deletion of system exchange "
                   "'amq.foo' in vhost '/' not allowed", 40, 20)


def test_declare_amq_foo_queue_is_403():
    _f, got = _one(S.Queue.Declare(queue="amq.foo"))
    assert got == ("channel", 403,
                   "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
                   50, 10)
