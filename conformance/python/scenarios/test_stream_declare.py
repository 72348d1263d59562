"""Stream queues (x-queue-type: stream) over AMQP 0-9-1: queue.declare.

The flag checks (auto-delete, then exclusive, then non-durable), server-named
streams, the stream's own arguments and their validation, the arguments of
other queue types (refused), and equivalence on redeclare.  Reply texts are
RabbitMQ 3.10.8's (see /work/shared/reference/streams.md, sections 2 and 9).

Where RabbitMQ 3.10.8 crashes (a connection 541 INTERNAL_ERROR for an
x-max-age with no leading digit) the test asserts the precise channel 406 that
the other bad x-max-age values get when the broker is Warren, and only that
the channel is gone on RabbitMQ."""
import pika.exceptions
import pytest

from helpers import assert_channel_closed, connect
from helpers_interop import is_warren

PF = "PRECONDITION_FAILED - "
STREAM = {"x-queue-type": "stream"}


def _args(extra=None):
    out = dict(STREAM)
    out.update(extra or {})
    return out


def _rq(q):
    return "queue '%s' in vhost '/'" % q


def _declare(ch, q, extra=None, **kwargs):
    kwargs.setdefault("durable", True)
    return ch.queue_declare(q, arguments=_args(extra), **kwargs)


def _refused(conn, q, extra=None, **kwargs):
    """Declare on a fresh channel of ``conn``; return the channel-close exception."""
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        _declare(ch, q, extra, **kwargs)
    assert ei.value.reply_code == 406, repr(ei.value)
    return ei.value.reply_text


# --- flags --------------------------------------------------------------------

def test_declare_stream_ok(conn, ch, names):
    q = names.queue("st")
    ok = _declare(ch, q)
    assert ok.method.queue == q
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    # A passive declare of the stream works like any queue's.
    again = ch.queue_declare(q, passive=True)
    assert again.method.queue == q


@pytest.mark.parametrize("flags,prop", [
    ({"durable": False}, "non-durable"),
    ({"exclusive": True}, "exclusive-owner"),
    ({"auto_delete": True}, "auto-delete"),
    ({"durable": False, "exclusive": True}, "exclusive-owner"),
    ({"durable": False, "exclusive": True, "auto_delete": True}, "auto-delete"),
], ids=["non-durable", "exclusive", "auto-delete", "exclusive-before-durable", "all-three"])
def test_bad_flags_refused(conn, names, flags, prop):
    q = names.queue("st")
    text = _refused(conn, q, **flags)
    assert text == PF + "invalid property '%s' for %s" % (prop, _rq(q))
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert_channel_closed(ei, 404)


def test_server_named_stream_refused(conn, ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare("", durable=True, arguments=dict(STREAM))
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == (
        PF + "Cannot declare a server-named queue for type rabbit_stream_queue")


def test_passive_declare_of_missing_stream(conn, ch, names):
    q = names.queue("st")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True, arguments=dict(STREAM))
    assert_channel_closed(ei, 404)
    assert ei.value.reply_text == "NOT_FOUND - no queue '%s' in vhost '/'" % q


# --- the stream's own arguments -----------------------------------------------

ACCEPTED = [
    ("max-length-bytes-0", {"x-max-length-bytes": 0}),
    ("max-length-bytes-1000", {"x-max-length-bytes": 1000}),
    ("max-length-bytes-2^40", {"x-max-length-bytes": 2 ** 40}),
    ("max-age-7D", {"x-max-age": "7D"}),
    ("max-age-1h", {"x-max-age": "1h"}),
    ("max-age-10m", {"x-max-age": "10m"}),
    ("max-age-30s", {"x-max-age": "30s"}),
    ("max-age-1Y", {"x-max-age": "1Y"}),
    ("max-age-2M", {"x-max-age": "2M"}),
    ("segment-0", {"x-stream-max-segment-size-bytes": 0}),
    ("segment-1000", {"x-stream-max-segment-size-bytes": 1000}),
    ("segment-3e9", {"x-stream-max-segment-size-bytes": 3000000000}),
    ("initial-cluster-size-1", {"x-initial-cluster-size": 1}),
    ("initial-cluster-size-3", {"x-initial-cluster-size": 3}),
    ("locator-client-local", {"x-queue-leader-locator": "client-local"}),
    ("locator-balanced", {"x-queue-leader-locator": "balanced"}),
    ("locator-random", {"x-queue-leader-locator": "random"}),
    ("locator-least-leaders", {"x-queue-leader-locator": "least-leaders"}),
    ("unknown-arg-ignored", {"x-bogus-arg": "whatever"}),
    # 3.13 stream filtering: unknown to 3.10, accepted and ignored (even a string).
    ("filter-size-unknown-on-3.10", {"x-stream-filter-size-bytes": "x"}),
    ("everything", {"x-max-length-bytes": 10000000, "x-max-age": "1D",
                    "x-stream-max-segment-size-bytes": 1000000,
                    "x-initial-cluster-size": 1,
                    "x-queue-leader-locator": "client-local"}),
]


@pytest.mark.parametrize("extra", [a for _i, a in ACCEPTED], ids=[i for i, _a in ACCEPTED])
def test_stream_argument_accepted(conn, ch, names, extra):
    q = names.queue("st")
    ok = _declare(ch, q, extra)
    assert ok.method.queue == q
    # Redeclaring with exactly the same arguments is fine.
    _declare(ch, q, extra)


def _ia(key, reason):
    return lambda q: PF + "invalid arg '%s' for %s: %s" % (key, _rq(q), reason)


REFUSED = [
    ("max-length-bytes-negative", {"x-max-length-bytes": -1},
     _ia("x-max-length-bytes", "{value_negative,-1}")),
    ("max-length-bytes-string", {"x-max-length-bytes": "1000"},
     _ia("x-max-length-bytes", '"expected integer, got longstr"')),
    ("max-age-0s", {"x-max-age": "0s"}, _ia("x-max-age", "invalid_max_age")),
    ("max-age-no-unit", {"x-max-age": "10"}, _ia("x-max-age", "invalid_max_age")),
    ("max-age-lowercase-d", {"x-max-age": "7d"}, _ia("x-max-age", "invalid_max_age")),
    ("max-age-weeks", {"x-max-age": "1w"}, _ia("x-max-age", "invalid_max_age")),
    ("max-age-fraction", {"x-max-age": "1.5h"}, _ia("x-max-age", "invalid_max_age")),
    ("max-age-integer", {"x-max-age": 3600}, _ia("x-max-age", "{unacceptable_type,signedint}")),
    ("segment-negative", {"x-stream-max-segment-size-bytes": -1},
     _ia("x-stream-max-segment-size-bytes", "{value_negative,-1}")),
    ("segment-string", {"x-stream-max-segment-size-bytes": "1000"},
     _ia("x-stream-max-segment-size-bytes", '"expected integer, got longstr"')),
    ("segment-too-large", {"x-stream-max-segment-size-bytes": 3000000001},
     lambda q: PF + "Exceeded max value for x-stream-max-segment-size-bytes"),
    ("initial-cluster-size-0", {"x-initial-cluster-size": 0},
     _ia("x-initial-cluster-size", "{value_zero,0}")),
    ("initial-cluster-size-negative", {"x-initial-cluster-size": -1},
     _ia("x-initial-cluster-size", "{value_negative,-1}")),
    ("initial-cluster-size-string", {"x-initial-cluster-size": "1"},
     _ia("x-initial-cluster-size", '"expected integer, got longstr"')),
    ("locator-bogus", {"x-queue-leader-locator": "bogus"},
     _ia("x-queue-leader-locator", "invalid_queue_locator_arg")),
    ("locator-integer", {"x-queue-leader-locator": 1},
     _ia("x-queue-leader-locator", "{unacceptable_type,signedint}")),
]


@pytest.mark.parametrize("extra,text", [(a, t) for _i, a, t in REFUSED],
                         ids=[i for i, _a, _t in REFUSED])
def test_stream_argument_refused(conn, names, extra, text):
    q = names.queue("st")
    assert _refused(conn, q, extra) == text(q)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert_channel_closed(ei, 404)


@pytest.mark.parametrize("value", ["bad", ""], ids=["bad", "empty"])
def test_max_age_without_leading_digit(conn_factory, names, value):
    # RabbitMQ 3.10.8 crashes here (connection 541 INTERNAL_ERROR, class and
    # method 0): its parser runs list_to_integer("").  A correct broker answers
    # as for every other bad x-max-age: channel 406 invalid_max_age.
    c = conn_factory()
    ch = c.channel()
    q = names.queue("st")
    with pytest.raises((pika.exceptions.ChannelClosedByBroker,
                        pika.exceptions.ConnectionClosedByBroker)) as ei:
        _declare(ch, q, {"x-max-age": value})
    if is_warren():
        assert_channel_closed(ei, 406)
        assert ei.value.reply_text == (
            PF + "invalid arg 'x-max-age' for %s: invalid_max_age" % _rq(q))
        assert c.is_open
    else:
        assert not ch.is_open


def test_own_argument_checks_run_before_foreign_argument_check(conn, names):
    q = names.queue("st")
    text = _refused(conn, q, {"x-max-length": 5, "x-max-length-bytes": -1})
    assert text == PF + "invalid arg 'x-max-length-bytes' for %s: {value_negative,-1}" % _rq(q)


# --- arguments that belong to other queue types ----------------------------------

FOREIGN = [
    ("x-max-priority", 5),
    ("x-dead-letter-exchange", "dlx"),
    ("x-dead-letter-routing-key", "rk"),
    ("x-message-ttl", 1000),
    ("x-max-length", 10),
    ("x-overflow", "drop-head"),
    ("x-expires", 10000),
    ("x-single-active-consumer", True),
    ("x-queue-mode", "lazy"),
    ("x-delivery-limit", 3),
    ("x-dead-letter-strategy", "at-most-once"),
    ("x-max-in-memory-length", 10),
    ("x-max-in-memory-bytes", 1000),
    ("x-queue-version", 2),
    ("x-quorum-initial-group-size", 1),
]


@pytest.mark.parametrize("key,value", FOREIGN, ids=[k for k, _v in FOREIGN])
def test_argument_of_other_queue_type_refused(conn, names, key, value):
    q = names.queue("st")
    assert _refused(conn, q, {key: value}) == (
        PF + "invalid arg '%s' for %s of queue type rabbit_stream_queue" % (key, _rq(q)))


# --- redeclaration and equivalence ---------------------------------------------

def test_redeclare_identical_ok(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q, {"x-max-age": "1h", "x-max-length-bytes": 100000})
    ok = _declare(ch, q, {"x-max-age": "1h", "x-max-length-bytes": 100000})
    assert ok.method.queue == q


def test_redeclare_ignores_unknown_arguments(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q, {"x-bogus-arg": "a"})
    _declare(ch, q, {"x-bogus-arg": "b"})
    _declare(ch, q)


def _ineq(q, key, detail):
    return PF + "inequivalent arg '%s' for %s: %s" % (key, _rq(q), detail)


def test_redeclare_different_max_age(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q, {"x-max-age": "1h"})
    assert _refused(conn, q, {"x-max-age": "2h"}) == _ineq(
        q, "x-max-age", "received '2h' but current is '1h'")


def test_redeclare_without_max_age(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q, {"x-max-age": "1h"})
    assert _refused(conn, q) == _ineq(
        q, "x-max-age", "received none but current is the value '1h' of type 'longstr'")


def test_redeclare_without_queue_type(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.queue_declare(q, durable=True)
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == _ineq(
        q, "x-queue-type", "received none but current is the value 'stream' of type 'longstr'")
    # Only a passive declare works without the type argument.
    ch3 = conn.channel()
    assert ch3.queue_declare(q, passive=True).method.queue == q


@pytest.mark.parametrize("other", ["classic", "quorum"])
def test_redeclare_as_other_type(conn, ch, names, other):
    q = names.queue("st")
    _declare(ch, q)
    assert _refused(conn, q, {"x-queue-type": other}) == _ineq(
        q, "x-queue-type", "received '%s' but current is 'stream'" % other)


def test_redeclare_non_durable(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q)
    ch2 = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch2.queue_declare(q, durable=False, arguments=dict(STREAM))
    assert_channel_closed(ei, 406)
    assert ei.value.reply_text == _ineq(q, "durable", "received 'false' but current is 'true'")


def test_classic_queue_redeclared_as_stream(conn, ch, names):
    q = names.queue("st")
    ch.queue_declare(q, durable=True)
    assert _refused(conn, q) == _ineq(
        q, "x-queue-type", "received the value 'stream' of type 'longstr' but current is none")


def test_stream_survives_refused_redeclare(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q, {"x-max-age": "1h"})
    _refused(conn, q, {"x-max-age": "2h"})
    ch2 = conn.channel()
    _declare(ch2, q, {"x-max-age": "1h"})


def test_delete_stream(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q)
    ok = ch.queue_delete(q)
    assert ok.method.message_count == 0
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert_channel_closed(ei, 404)


def test_stream_visible_from_another_connection(conn, ch, names):
    q = names.queue("st")
    _declare(ch, q)
    other = connect()
    try:
        assert other.channel().queue_declare(q, passive=True).method.queue == q
    finally:
        other.close()
