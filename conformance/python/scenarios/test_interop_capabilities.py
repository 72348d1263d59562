"""connection.start as sent by RabbitMQ 3.10.8, read off the wire.

RabbitMQ 3.10.8 sends (in this order) server_properties:
  capabilities (F) = {publisher_confirms, exchange_exchange_bindings,
      basic.nack, consumer_cancel_notify, connection.blocked,
      consumer_priorities, authentication_failure_close, per_consumer_qos,
      direct_reply_to}, every value boolean (t) true;
  cluster_name (S) 'rabbit@<host>', copyright (S) 'Copyright (c) 2007-2022
  VMware, Inc. or its affiliates.', information (S) 'Licensed under the MPL
  2.0. Website: https://rabbitmq.com', platform (S) 'Erlang/OTP <otp>',
  product (S) 'RabbitMQ', version (S) '3.10.8';
version 0-9, mechanisms 'AMQPLAIN PLAIN', locales 'en_US'.
The identity strings are not asserted (a different broker may name itself)."""
import struct

import pika.frame as F
import pytest

from helpers import RawAMQP

CAPABILITIES = {
    "publisher_confirms", "exchange_exchange_bindings", "basic.nack",
    "consumer_cancel_notify", "connection.blocked", "consumer_priorities",
    "authentication_failure_close", "per_consumer_qos", "direct_reply_to",
}
SERVER_PROPERTY_KEYS = {"capabilities", "cluster_name", "copyright", "information",
                        "platform", "product", "version"}


def _read_table(b, o):
    n = struct.unpack(">I", b[o:o + 4])[0]
    o += 4
    end = o + n
    out = []
    while o < end:
        kl = b[o]
        key = b[o + 1:o + 1 + kl].decode()
        o += 1 + kl
        t = chr(b[o])
        o += 1
        if t == "S":
            ln = struct.unpack(">I", b[o:o + 4])[0]
            val = b[o + 4:o + 4 + ln]
            o += 4 + ln
        elif t == "t":
            val = b[o]
            o += 1
        elif t == "F":
            val, o = _read_table(b, o)
        else:
            raise AssertionError("unexpected field type %r for %r" % (t, key))
        out.append((key, t, val))
    return out, end


@pytest.fixture(scope="module")
def start():
    r = RawAMQP()
    r.send_bytes(F.ProtocolHeader().marshal())
    data = b""
    while len(data) < 7 or len(data) < 8 + struct.unpack(">I", data[3:7])[0]:
        chunk = r.sock.recv(65536)
        assert chunk, "connection closed before connection.start"
        data += chunk
    r.close()
    payload = data[7:]
    assert struct.unpack(">HH", payload[:4]) == (10, 10)
    version = (payload[4], payload[5])
    props, o = _read_table(payload, 6)
    ln = struct.unpack(">I", payload[o:o + 4])[0]
    mechanisms = payload[o + 4:o + 4 + ln]
    o += 4 + ln
    ln = struct.unpack(">I", payload[o:o + 4])[0]
    locales = payload[o + 4:o + 4 + ln]
    return {"version": version, "props": props, "mechanisms": mechanisms, "locales": locales}


def test_protocol_version_mechanisms_locales(start):
    assert start["version"] == (0, 9)
    assert start["mechanisms"] == b"AMQPLAIN PLAIN"
    assert start["locales"] == b"en_US"


def test_server_property_keys_and_types(start):
    types = {k: t for k, t, _v in start["props"]}
    assert set(types) == SERVER_PROPERTY_KEYS
    assert types.pop("capabilities") == "F"
    assert set(types.values()) == {"S"}


def test_capabilities_exact_set_all_true_booleans(start):
    caps = dict((k, (t, v)) for k, t, v in start["props"])["capabilities"][1]
    assert {k for k, _t, _v in caps} == CAPABILITIES
    assert all((t, v) == ("t", 1) for _k, t, v in caps), caps


@pytest.mark.parametrize("cap", ["consumer_priorities", "direct_reply_to"])
def test_capability_advertised(start, cap):
    caps = dict((k, (t, v)) for k, t, v in start["props"])["capabilities"][1]
    assert cap in {k for k, _t, _v in caps}
