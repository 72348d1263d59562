"""ConnectionOpen (after the Java client's ConnectionOpen / BrokenFramesTest
handshake parts): protocol header, connection.start contents, tuning,
capabilities, bad vhost and bad credentials."""
import pika
import pika.exceptions
import pytest

from helpers import RawAMQP, connect, raw_socket, recv_until_closed

AMQP_0_9_1_HEADER = b"AMQP\x00\x00\x09\x01"


@pytest.fixture
def raw():
    r = RawAMQP()
    yield r
    r.close()


def test_connection_start(raw):
    raw.send_bytes(AMQP_0_9_1_HEADER)
    frame = raw.recv_method()
    assert frame.channel_number == 0
    start = frame.method
    assert isinstance(start, pika.spec.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert b"PLAIN" in start.mechanisms.split()
    assert b"en_US" in start.locales.split()
    props = start.server_properties
    assert "capabilities" in props and "product" in props and "version" in props


@pytest.mark.parametrize("header", [
    b"AMQP\x01\x01\x00\x0a",          # AMQP 1.0
    b"AMQP\x00\x00\x09\x02",          # unknown 0-9 revision
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["amqp-1.0", "bad-revision", "http"])
def test_bad_protocol_header_gets_supported_header(header):
    s = raw_socket()
    try:
        s.sendall(header)
        assert recv_until_closed(s) == AMQP_0_9_1_HEADER
    finally:
        s.close()


def test_tune_values(conn):
    p = conn._impl.params  # pylint: disable=protected-access
    assert p.channel_max == 2047
    assert p.frame_max == 131072
    assert p.heartbeat == 60


def test_raw_handshake_and_tune(raw):
    start, tune = raw.handshake()
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


@pytest.mark.parametrize("capability", [
    "publisher_confirms", "exchange_exchange_bindings", "basic.nack",
    "consumer_cancel_notify", "per_consumer_qos",
    "authentication_failure_close", "connection.blocked",
    "consumer_priorities", "direct_reply_to",
])
def test_capabilities(conn, capability):
    caps = conn._impl.server_capabilities  # pylint: disable=protected-access
    assert caps.get(capability) is True


def test_unknown_vhost_is_530():
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as ei:
        connect(virtual_host="conformance-no-such-vhost")
    assert "530" in str(ei.value) and "NOT_ALLOWED" in str(ei.value)


@pytest.mark.parametrize("user,password", [("guest", "wrong"),
                                           ("conformance-nobody", "x")],
                         ids=["bad-password", "unknown-user"])
def test_bad_credentials_are_403(user, password):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as ei:
        connect(credentials=pika.PlainCredentials(user, password))
    assert "403" in str(ei.value) and "ACCESS_REFUSED" in str(ei.value)


def test_many_channels(conn, names):
    q = names.queue()
    chans = [conn.channel() for _ in range(50)]
    chans[0].queue_declare(q)
    for c in chans:
        c.basic_publish("", q, b"m")
    for c in chans:
        c.close()
    c = conn.channel()
    assert c.queue_declare(q, passive=True).method.message_count == 50


def test_channel_number_reuse(conn):
    c1 = conn.channel(channel_number=7)
    c1.close()
    c2 = conn.channel(channel_number=7)
    c2.exchange_declare("amq.direct", passive=True)


def test_clean_close(conn_factory):
    c = conn_factory()
    c.channel()
    c.close()
    assert c.is_closed


def test_access_request_is_a_no_op(raw):
    raw.handshake()
    raw.send_method(1, pika.spec.Channel.Open())
    assert isinstance(raw.recv_method().method, pika.spec.Channel.OpenOk)
    raw.send_method(1, pika.spec.Access.Request(realm="/data"))
    assert isinstance(raw.recv_method().method, pika.spec.Access.RequestOk)
