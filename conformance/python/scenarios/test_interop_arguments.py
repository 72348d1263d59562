"""Argument validation on queue.declare / basic.consume / exchange.declare,
with RabbitMQ 3.10.8's exact close frames (all channel errors, 406).

Each case opens a raw session (helpers_interop.Session) so that the class
and method ids of the channel.close are visible too."""
import pika.spec as S
import pytest

from helpers import uid
from helpers_interop import Session, close_tuple, declare_answer, is_warren

PF = "PRECONDITION_FAILED - "


def _qarg(arg, detail):
    return PF + "invalid arg '" + arg + "' for queue '{q}' in vhost '/': " + detail


def _qtype(arg, typ):
    return PF + "invalid type '" + typ + "' for arg '" + arg + "' in queue '{q}' in vhost '/'"


REJECTED = [
    # (id, arguments, expected reply text; {q} is the queue name)
    ("dlx-binary", {"x-dead-letter-exchange": b"abc"}, _qtype("x-dead-letter-exchange", "binary")),
    ("dlx-int", {"x-dead-letter-exchange": 5}, _qtype("x-dead-letter-exchange", "signedint")),
    ("dlrk-int", {"x-dead-letter-routing-key": 5},
     _qarg("x-dead-letter-routing-key", "{{unacceptable_type,signedint}}")),
    ("dlrk-binary", {"x-dead-letter-routing-key": b"rk"},
     _qarg("x-dead-letter-routing-key", "{{unacceptable_type,binary}}")),
    ("dlrk-int-with-dlx", {"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": 5},
     _qarg("x-dead-letter-routing-key", "{{unacceptable_type,signedint}}")),
    ("dlrk-binary-with-dlx", {"x-dead-letter-exchange": "amq.direct", "x-dead-letter-routing-key": b"rk"},
     _qarg("x-dead-letter-routing-key", "{{unacceptable_type,binary}}")),
    ("dlrk-without-dlx", {"x-dead-letter-routing-key": "rk"},
     _qarg("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")),
    ("ttl-too-large", {"x-message-ttl": 315360000001},
     _qarg("x-message-ttl", "{{value_too_large,315360000001}}")),
    ("ttl-2^40", {"x-message-ttl": 2 ** 40},
     _qarg("x-message-ttl", "{{value_too_large,1099511627776}}")),
    ("ttl-negative", {"x-message-ttl": -1}, _qarg("x-message-ttl", "{{value_negative,-1}}")),
    ("ttl-string", {"x-message-ttl": "abc"}, _qarg("x-message-ttl", '"expected integer, got longstr"')),
    ("expires-zero", {"x-expires": 0}, _qarg("x-expires", "{{value_zero,0}}")),
    ("expires-negative", {"x-expires": -1}, _qarg("x-expires", "{{value_negative,-1}}")),
    ("expires-too-large", {"x-expires": 315360000001},
     _qarg("x-expires", "{{value_too_large,315360000001}}")),
    ("max-length-negative", {"x-max-length": -1}, _qarg("x-max-length", "{{value_negative,-1}}")),
    ("max-length-string", {"x-max-length": "abc"}, _qarg("x-max-length", '"expected integer, got longstr"')),
    ("max-length-bool", {"x-max-length": True}, _qarg("x-max-length", '"expected integer, got bool"')),
    ("max-length-bytes-negative", {"x-max-length-bytes": -1},
     _qarg("x-max-length-bytes", "{{value_negative,-1}}")),
    ("max-length-bytes-string", {"x-max-length-bytes": "abc"},
     _qarg("x-max-length-bytes", '"expected integer, got longstr"')),
    ("max-priority-256", {"x-max-priority": 256}, _qarg("x-max-priority", "{{max_value_exceeded,256}}")),
    ("max-priority-negative", {"x-max-priority": -1}, _qarg("x-max-priority", "{{value_negative,-1}}")),
    ("max-priority-string", {"x-max-priority": "a"}, _qarg("x-max-priority", '"expected integer, got longstr"')),
    ("queue-mode-bogus", {"x-queue-mode": "bogus"}, _qarg("x-queue-mode", "\"unsupported queue mode 'bogus'\"")),
    ("queue-mode-int", {"x-queue-mode": 1}, _qarg("x-queue-mode", "{{unacceptable_type,signedint}}")),
    ("queue-mode-binary", {"x-queue-mode": b"lazy"}, _qarg("x-queue-mode", "{{unacceptable_type,binary}}")),
    ("queue-type-int", {"x-queue-type": 1}, _qarg("x-queue-type", "{{unacceptable_type,signedint}}")),
    ("queue-type-binary", {"x-queue-type": b"classic"}, _qarg("x-queue-type", "{{unacceptable_type,binary}}")),
    ("queue-type-unknown", {"x-queue-type": "bogus"}, _qarg("x-queue-type", "\"unsupported queue type 'bogus'\"")),
    ("overflow-bogus", {"x-overflow": "bogus"}, _qarg("x-overflow", "invalid_overflow")),
    ("overflow-int", {"x-overflow": 1}, _qarg("x-overflow", "{{unacceptable_type,signedint}}")),
    ("overflow-binary", {"x-overflow": b"drop-head"}, _qarg("x-overflow", "{{unacceptable_type,binary}}")),
    ("sac-string", {"x-single-active-consumer": "yes"},
     _qarg("x-single-active-consumer", "{{unacceptable_type,longstr}}")),
    ("sac-int", {"x-single-active-consumer": 1},
     _qarg("x-single-active-consumer", "{{unacceptable_type,signedint}}")),
]

# compat: Warren implements x-delivery-limit on classic queues (RabbitMQ only on quorum
# queues), so it accepts an integer there and refuses a string as any integer argument.
DELIVERY_LIMIT_CLASSIC = PF + ("invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/' "
                               "of queue type rabbit_classic_queue")


@pytest.mark.parametrize("value", [5, "a"], ids=["int", "string"])
def test_delivery_limit_on_a_classic_queue(value):
    q = uid("ia-q")
    got = declare_answer(S.Queue.Declare(queue=q, exclusive=True,
                                         arguments={"x-delivery-limit": value}))
    if not is_warren():
        assert got == ("channel", 406, DELIVERY_LIMIT_CLASSIC.format(q=q), 50, 10)
    elif value == 5:
        assert got == (None, "DeclareOk")
    else:
        assert got == ("channel", 406, _qarg("x-delivery-limit", '"expected integer, got longstr"')
                       .format(q=q), 50, 10)


@pytest.mark.parametrize("arguments,text", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_queue_declare_rejects(arguments, text):
    q = uid("ia-q")
    got = declare_answer(S.Queue.Declare(queue=q, exclusive=True, arguments=arguments))
    assert got == ("channel", 406, text.format(q=q), 50, 10)


ACCEPTED = [
    ("ttl-2^32", {"x-message-ttl": 2 ** 32}),
    ("ttl-max", {"x-message-ttl": 315360000000}),
    ("expires-2^32", {"x-expires": 2 ** 32}),
    ("expires-max", {"x-expires": 315360000000}),
    ("max-length-2^40", {"x-max-length": 2 ** 40}),
    ("max-priority-255", {"x-max-priority": 255}),
    ("queue-mode-lazy", {"x-queue-mode": "lazy"}),
    ("queue-mode-default", {"x-queue-mode": "default"}),
    ("overflow-reject-publish-dlx", {"x-overflow": "reject-publish-dlx"}),
]


@pytest.mark.parametrize("arguments", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_queue_declare_accepts(arguments):
    q = uid("ia-q")
    got = declare_answer(S.Queue.Declare(queue=q, exclusive=True, arguments=arguments))
    assert got == (None, "DeclareOk")


def _consume(arguments):
    s = Session()
    try:
        q = uid("ia-q")
        f = s.rpc(1, S.Queue.Declare(queue=q, exclusive=True))
        assert isinstance(f.method, S.Queue.DeclareOk), f
        f = s.rpc(1, S.Basic.Consume(queue=q, consumer_tag="ct", arguments=arguments))
        s.reply_close_ok(f)
        return q, close_tuple(f)
    finally:
        s.shutdown()


@pytest.mark.parametrize("value,typ", [("abc", "longstr"), (True, "bool"), (b"1", "binary")],
                         ids=["string", "bool", "binary"])
def test_consumer_priority_non_integer_refused_instead_of_consume_ok(value, typ):
    # The channel.close is the *first* reply: no basic.consume-ok precedes it.
    q, got = _consume({"x-priority": value})
    assert got == ("channel", 406,
                   PF + "invalid arg 'x-priority' for queue '%s' in vhost '/': "
                   "\"expected integer, got %s\"" % (q, typ), 60, 20)


@pytest.mark.parametrize("value", [2 ** 31, -2 ** 31, 2 ** 40], ids=["2^31", "-2^31", "2^40"])
def test_consumer_priority_large_integers_accepted(value):
    _q, got = _consume({"x-priority": value})
    assert got == (None, "ConsumeOk")


@pytest.mark.parametrize("value,typ", [(5, "signedint"), (b"ae", "binary"), (True, "bool")],
                         ids=["int", "binary", "bool"])
def test_alternate_exchange_non_string(value, typ):
    x = uid("ia-x")
    s = Session()
    try:
        f = s.rpc(1, S.Exchange.Declare(exchange=x, type="fanout", auto_delete=True,
                                        arguments={"alternate-exchange": value}))
        s.reply_close_ok(f)
        got = close_tuple(f)
    finally:
        s.shutdown()
        s2 = Session()
        s2.rpc(1, S.Exchange.Delete(exchange=x))
        s2.shutdown()
    assert got == ("channel", 406,
                   PF + "invalid type '%s' for arg 'alternate-exchange' in exchange '%s' "
                   "in vhost '/'" % (typ, x), 40, 10)
