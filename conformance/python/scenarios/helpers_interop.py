"""Small raw-frame helpers for the test_interop_* scenarios.

Everything here drives the broker with helpers.RawAMQP so that the full
close frame (reply code, reply text, class id, method id and scope) is
visible to the test.
"""
import struct

import pika
import pika.frame
import pika.spec

from helpers import RawAMQP, uid

FRAME_END = b"\xce"

_PRODUCT = []


def is_warren():
    """Whether the broker under test is Warren (its connection.start `product`): a few
    scenarios assert Warren's deliberate differences from RabbitMQ there, each listed in
    conformance/README.md."""
    if not _PRODUCT:
        from helpers import connect  # pylint: disable=import-outside-toplevel
        conn = connect()
        product = conn._impl.server_properties.get("product")  # pylint: disable=protected-access
        conn.close()
        _PRODUCT.append(product.decode() if isinstance(product, bytes) else product)
    return _PRODUCT[0] == "Warren"


def scope_of(frame):
    """("channel"|"connection"|None, method) for a received frame."""
    if frame is None:
        return ("socket-closed", None)
    m = getattr(frame, "method", None)
    if isinstance(m, pika.spec.Channel.Close):
        return ("channel", m)
    if isinstance(m, pika.spec.Connection.Close):
        return ("connection", m)
    return (None, m)


def close_tuple(frame):
    """(scope, reply_code, reply_text, class_id, method_id) of a close frame,
    or (scope, repr(method)) otherwise."""
    scope, m = scope_of(frame)
    if scope in ("channel", "connection"):
        return (scope, m.reply_code, m.reply_text, m.class_id, m.method_id)
    return (scope, type(m).__name__ if m is not None else None)


class Session(RawAMQP):
    """RawAMQP with the handshake done and channel 1 open."""

    def __init__(self, timeout=5.0, open_channel=True):
        super().__init__(timeout)
        self.start, self.tune = self.handshake()
        if open_channel:
            self.open_channel(1)

    def open_channel(self, n):
        self.send_method(n, pika.spec.Channel.Open())
        f = self.recv_method()
        assert isinstance(f.method, pika.spec.Channel.OpenOk), f
        return f

    def rpc(self, channel, method):
        """Send ``method`` and return the next non-heartbeat frame."""
        self.send_method(channel, method)
        return self.recv_method()

    def reply_close_ok(self, frame):
        """Answer a broker close so the broker can clean up quickly."""
        scope, _m = scope_of(frame)
        try:
            if scope == "channel":
                self.send_method(frame.channel_number, pika.spec.Channel.CloseOk())
            elif scope == "connection":
                self.send_method(0, pika.spec.Connection.CloseOk())
        except OSError:
            pass

    def shutdown(self):
        try:
            self.send_method(0, pika.spec.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0))
            self.recv_method()
        except OSError:
            pass
        self.close()

    def publish_frames(self, channel, exchange, routing_key, body,
                       properties=None):
        """Return the raw bytes of basic.publish + header + body."""
        props = properties or pika.spec.BasicProperties()
        out = pika.frame.Method(channel, pika.spec.Basic.Publish(
            exchange=exchange, routing_key=routing_key)).marshal()
        out += pika.frame.Header(channel, len(body), props).marshal()
        if body:
            out += pika.frame.Body(channel, body).marshal()
        return out


def raw_frame(frame_type, channel, payload):
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + FRAME_END


def header_payload(class_id, weight, body_size, flags=0, props=b""):
    return struct.pack(">HHQH", class_id, weight, body_size, flags) + props


def declare_answer(method, channel=1):
    """Open a raw session, send ``method`` on channel 1, return close_tuple
    of the answer (or the ok method name) and tidy up."""
    s = Session()
    try:
        f = s.rpc(channel, method)
        result = close_tuple(f)
        s.reply_close_ok(f)
        return result
    finally:
        s.shutdown()


def qdeclare(arguments, queue=None, **kw):
    return pika.spec.Queue.Declare(queue=queue or uid("ia-q"), arguments=arguments,
                                   exclusive=True, **kw)
