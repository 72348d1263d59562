"""HeadersExchange / HeadersExchangeValidation (after the Java client's tests
of the same names): x-match all/any, defaults, x- keys, void values,
invalid x-match."""
import pika
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, drain_get, sync


def _setup(ch, names, binding_args):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q = declare_queue(ch, names)
    ch.queue_bind(q, x, arguments=binding_args)
    return x, q


def _routed(ch, x, q, headers):
    props = pika.BasicProperties(headers=headers)
    ch.basic_publish(x, "ignored", b"m", properties=props)
    sync(ch)
    return drain_get(ch, q) == [b"m"]


@pytest.mark.parametrize("headers,expected", [
    ({"a": "1", "b": "2"}, True),
    ({"a": "1", "b": "2", "c": "3"}, True),
    ({"a": "1"}, False),
    ({"a": "1", "b": "other"}, False),
    (None, False),
], ids=["exact", "superset", "missing-key", "wrong-value", "no-headers"])
def test_match_all(ch, names, headers, expected):
    x, q = _setup(ch, names, {"x-match": "all", "a": "1", "b": "2"})
    assert _routed(ch, x, q, headers) is expected


@pytest.mark.parametrize("headers,expected", [
    ({"a": "1"}, True),
    ({"b": "2", "z": "9"}, True),
    ({"a": "2", "b": "1"}, False),
    ({}, False),
], ids=["first", "second", "values-swapped", "empty"])
def test_match_any(ch, names, headers, expected):
    x, q = _setup(ch, names, {"x-match": "any", "a": "1", "b": "2"})
    assert _routed(ch, x, q, headers) is expected


def test_default_match_is_all(ch, names):
    x, q = _setup(ch, names, {"a": "1", "b": "2"})
    assert _routed(ch, x, q, {"a": "1"}) is False
    assert _routed(ch, x, q, {"a": "1", "b": "2"}) is True


def test_binding_without_keys_matches_everything(ch, names):
    x, q = _setup(ch, names, {"x-match": "all"})
    assert _routed(ch, x, q, None) is True
    assert _routed(ch, x, q, {"k": "v"}) is True


def test_match_all_ignores_x_prefixed_binding_keys(ch, names):
    x, q = _setup(ch, names, {"x-match": "all", "a": "1", "x-extra": "e"})
    assert _routed(ch, x, q, {"a": "1"}) is True


def test_void_binding_value_matches_any_value(ch, names):
    x, q = _setup(ch, names, {"x-match": "all", "a": None})
    assert _routed(ch, x, q, {"a": "anything"}) is True
    assert _routed(ch, x, q, {"a": 17}) is True
    assert _routed(ch, x, q, {"b": "x"}) is False


def test_typed_values_compare_by_type(ch, names):
    x, q = _setup(ch, names, {"x-match": "all", "n": 1})
    assert _routed(ch, x, q, {"n": 1}) is True
    assert _routed(ch, x, q, {"n": "1"}) is False
    assert _routed(ch, x, q, {"n": True}) is False


def test_routing_key_is_ignored(ch, names):
    x, q = _setup(ch, names, {"x-match": "any", "a": "1"})
    ch.basic_publish(x, "k1", b"m", properties=pika.BasicProperties(headers={"a": "1"}))
    ch.basic_publish(x, "k2", b"m", properties=pika.BasicProperties(headers={"a": "1"}))
    sync(ch)
    assert drain_get(ch, q) == [b"m", b"m"]


def test_invalid_x_match_is_406(conn, ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, x, arguments={"x-match": "some", "a": "1"})
    assert_channel_closed(ei, 406)
    assert conn.is_open


def test_unbind_with_same_arguments(ch, names):
    args = {"x-match": "any", "a": "1"}
    x, q = _setup(ch, names, args)
    ch.queue_unbind(q, x, arguments=args)
    assert _routed(ch, x, q, {"a": "1"}) is False


def test_amq_match_is_a_headers_exchange(ch, names):
    q = declare_queue(ch, names)
    ch.queue_bind(q, "amq.match", arguments={"x-match": "all", "conf-id": q})
    try:
        assert _routed(ch, "amq.match", q, {"conf-id": q}) is True
    finally:
        ch.queue_unbind(q, "amq.match", arguments={"x-match": "all", "conf-id": q})
