"""Frame-level and connection-state errors, driven with raw frames, with
RabbitMQ 3.10.8's exact answers: (scope, code, text, class id, method id),
or "socket-closed" where RabbitMQ drops the TCP connection without sending
connection.close."""
import struct

import pika.frame as F
import pika.spec as S
import pytest

from helpers import RawAMQP
from helpers_interop import Session, close_tuple, header_payload, is_warren, raw_frame

SOCKET_CLOSED = ("socket-closed", None)


def _answer(session, frame):
    got = close_tuple(frame)
    session.reply_close_ok(frame)
    session.close()
    return got


def _pre_open(password="guest", capabilities=None, channel_max=None, frame_max=None,
              timeout=10.0):
    """Protocol header .. tune-ok (no connection.open).  Returns (raw, tune
    frame or whatever arrived instead of connection.tune)."""
    r = RawAMQP(timeout)
    r.send_bytes(F.ProtocolHeader().marshal())
    start = r.recv_method()
    assert isinstance(start.method, S.Connection.Start), start
    props = {"product": "conformance-raw"}
    if capabilities is not None:
        props["capabilities"] = capabilities
    r.send_method(0, S.Connection.StartOk(
        client_properties=props, mechanism="PLAIN",
        response=b"\x00guest\x00" + password.encode(), locale="en_US"))
    tune = r.recv_method()
    if tune is None or not isinstance(tune.method, S.Connection.Tune):
        return r, tune
    t = tune.method
    r.send_method(0, S.Connection.TuneOk(
        channel_max=t.channel_max if channel_max is None else channel_max,
        frame_max=t.frame_max if frame_max is None else frame_max, heartbeat=0))
    return r, tune


# --- heartbeats ---------------------------------------------------------------

def test_heartbeat_with_payload_is_501():
    s = Session(open_channel=False)
    s.send_bytes(raw_frame(8, 0, b"abc"))
    assert _answer(s, s.recv_method()) == (
        "connection", 501, 'FRAME_ERROR - type 8, all octets = <<"abc">>: unknown_frame', 0, 0)


def test_heartbeat_on_non_zero_channel_is_505():
    s = Session(open_channel=False)
    s.send_bytes(raw_frame(8, 1, b""))
    assert _answer(s, s.recv_method()) == (
        "connection", 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0)


# --- channel-class methods on channel 0 -----------------------------------------

@pytest.mark.parametrize("method,ids", [
    (S.Channel.Flow(active=True), (20, 20)),
    (S.Queue.Declare(queue="x"), (50, 10)),
    (S.Basic.Publish(exchange="", routing_key="x"), (60, 40)),
], ids=["channel.flow", "queue.declare", "basic.publish"])
def test_channel_method_on_channel_zero_is_504(method, ids):
    s = Session(open_channel=False)
    assert _answer(s, s.rpc(0, method)) == (
        "connection", 504, "CHANNEL_ERROR - unexpected method in connection state running") + ids


# --- before connection.open -----------------------------------------------------

def test_channel_open_before_connection_open_is_505():
    r, _t = _pre_open()
    r.send_method(1, S.Channel.Open())
    got = close_tuple(r.recv_method())
    r.close()
    assert got == ("connection", 505,
                   "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>>", 0, 0)


def test_channel_open_on_channel_zero_before_connection_open_is_504():
    r, _t = _pre_open()
    r.send_method(0, S.Channel.Open())
    got = close_tuple(r.recv_method())
    r.close()
    assert got == ("connection", 504,
                   "CHANNEL_ERROR - unexpected method in connection state opening", 20, 10)


# --- content framing ------------------------------------------------------------

def _publish_then(s, *frames):
    s.send_method(1, S.Basic.Publish(exchange="", routing_key="nowhere"))
    for f in frames:
        if isinstance(f, bytes):
            s.send_bytes(f)
        else:
            s.send_method(1, f)
    return s.recv_method()


def test_content_header_of_wrong_class_is_505():
    s = Session()
    f = _publish_then(s, raw_frame(2, 1, header_payload(50, 0, 1)), raw_frame(3, 1, b"x"))
    assert _answer(s, f) == (
        "connection", 505,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
        60, 40)


@pytest.mark.parametrize("class_id", [60, 50])
def test_content_header_with_non_zero_weight_is_505(class_id):
    # A non-zero weight makes RabbitMQ not recognise the frame as a content header.
    s = Session()
    f = _publish_then(s, raw_frame(2, 1, header_payload(class_id, 1, 1)), raw_frame(3, 1, b"x"))
    assert _answer(s, f) == (
        "connection", 505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60, 40)


def test_method_before_content_header_is_505():
    s = Session()
    f = _publish_then(s, S.Queue.Declare(queue="", exclusive=True))
    assert _answer(s, f) == (
        "connection", 505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60, 40)


def test_method_after_header_before_body_is_505():
    s = Session()
    f = _publish_then(s, raw_frame(2, 1, header_payload(60, 0, 10)),
                      S.Queue.Declare(queue="", exclusive=True))
    assert _answer(s, f) == (
        "connection", 505,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead", 60, 40)


def test_method_in_the_middle_of_body_is_505():
    s = Session()
    f = _publish_then(s, raw_frame(2, 1, header_payload(60, 0, 10)), raw_frame(3, 1, b"abc"),
                      S.Queue.Declare(queue="", exclusive=True))
    assert _answer(s, f) == (
        "connection", 505,
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead", 60, 40)


@pytest.mark.parametrize("frame", [raw_frame(3, 1, b"abc"), raw_frame(2, 1, header_payload(60, 0, 3))],
                         ids=["body", "header"])
def test_content_frame_without_publish_is_505(frame):
    s = Session()
    s.send_bytes(frame)
    assert _answer(s, s.recv_method()) == (
        "connection", 505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        0, 0)


def test_unknown_field_type_in_content_header_headers_is_541():
    table = b"\x03foo" + b"Z" + b"\x00\x00\x00\x01"
    props = struct.pack(">I", len(table)) + table
    s = Session()
    f = _publish_then(s, raw_frame(2, 1, header_payload(60, 0, 1, flags=0x2000, props=props)),
                      raw_frame(3, 1, b"x"))
    # compat: RabbitMQ crashes the connection (541); Warren names the frame it cannot parse.
    if is_warren():
        assert _answer(s, f) == (
            "connection", 501, "FRAME_ERROR - malformed content header properties", 0, 0)
    else:
        assert _answer(s, f) == ("connection", 541, "INTERNAL_ERROR", 0, 0)


def test_unknown_field_type_in_method_arguments_drops_socket():
    table = b"\x03foo" + b"Z" + b"\x00\x00\x00\x01"
    # queue.declare: reserved short, queue "", flags 0, arguments table
    payload = struct.pack(">HHH", 50, 10, 0) + b"\x00" + b"\x00" + struct.pack(">I", len(table)) + table
    s = Session()
    s.send_bytes(raw_frame(1, 1, payload))
    # compat: RabbitMQ drops the socket without a word; Warren says which method it could
    # not parse.
    if is_warren():
        assert _answer(s, s.recv_method()) == (
            "connection", 501,
            "FRAME_ERROR - malformed method frame (bad field, or malformed UTF-8 in a shortstr)",
            50, 10)
    else:
        assert _answer(s, s.recv_method()) == SOCKET_CLOSED


# --- authentication -------------------------------------------------------------

def test_auth_failure_with_authentication_failure_close_capability():
    r, f = _pre_open(password="wrong", capabilities={"authentication_failure_close": True})
    got = close_tuple(f)
    after = r.recv_frame()
    r.close()
    assert got == ("connection", 403,
                   "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                   "For details see the broker logfile.", 0, 0)
    assert after is None


def test_auth_failure_without_capability_drops_socket():
    r, f = _pre_open(password="wrong")
    r.close()
    assert close_tuple(f) == SOCKET_CLOSED


# --- channel_max / frame_max negotiation ----------------------------------------

def test_channel_beyond_negotiated_channel_max_is_530():
    r, _t = _pre_open(channel_max=2)
    r.send_method(0, S.Connection.Open(virtual_host="/"))
    assert isinstance(r.recv_method().method, S.Connection.OpenOk)
    for n in (1, 2):
        r.send_method(n, S.Channel.Open())
        assert isinstance(r.recv_method().method, S.Channel.OpenOk)
    r.send_method(3, S.Channel.Open())
    got = close_tuple(r.recv_method())
    r.close()
    assert got == ("connection", 530,
                   "NOT_ALLOWED - number of channels opened (2) has reached the negotiated "
                   "channel_max (2)", 0, 0)


def test_server_tune_values():
    r, t = _pre_open()
    r.close()
    assert (t.method.channel_max, t.method.frame_max, t.method.heartbeat) == (2047, 131072, 60)


@pytest.mark.parametrize("kw", [
    {"frame_max": 4095}, {"frame_max": 0}, {"frame_max": 131073},
    {"channel_max": 0}, {"channel_max": 2048},
], ids=["frame_max=4095", "frame_max=0", "frame_max=offered+1", "channel_max=0",
        "channel_max=offered+1"])
def test_bad_tune_ok_drops_socket_without_close(kw):
    # RabbitMQ logs "failed to negotiate connection parameters: ..." and
    # closes the socket (after ~3 s) without sending connection.close.
    r, _t = _pre_open(**kw)
    try:
        r.send_method(0, S.Connection.Open(virtual_host="/"))
    except OSError:
        pass
    got = close_tuple(r.recv_method())
    r.close()
    # compat: Warren says why (530 naming the value) before closing, as LavinMQ does.
    if is_warren():
        assert got[:2] == ("connection", 530) and got[2].startswith("NOT_ALLOWED - negotiated")
    else:
        assert got == SOCKET_CLOSED


def test_tune_ok_frame_max_4096_is_accepted():
    r, _t = _pre_open(frame_max=4096)
    r.send_method(0, S.Connection.Open(virtual_host="/"))
    f = r.recv_method()
    r.close()
    assert isinstance(f.method, S.Connection.OpenOk)
