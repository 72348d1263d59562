"""Helpers for the pika conformance scenarios.

The broker under test is AMQP_HOST:AMQP_PORT (default 127.0.0.1:5672), user
guest/guest, vhost "/".  Every test uses fresh, uuid-suffixed queue and
exchange names and deletes what it declared (via the ``names`` fixture).
"""
import os
import socket
import time
import uuid

import pika
import pika.exceptions
import pika.frame
import pika.spec

AMQP_HOST = os.environ.get("AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("AMQP_PORT", "5672"))

# How long to wait for an event we expect to happen.
EVENT_TIMEOUT = 5.0
# Grace period used only for *negative* assertions ("nothing more arrives"):
# there is no event to await, so we drain the socket for this long.
SETTLE_TIME = 0.3


def params(**kwargs):
    kwargs.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
    kwargs.setdefault("virtual_host", "/")
    kwargs.setdefault("blocked_connection_timeout", 30)
    kwargs.setdefault("connection_attempts", 1)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("stack_timeout", 15)
    return pika.ConnectionParameters(AMQP_HOST, AMQP_PORT, **kwargs)


def connect(**kwargs):
    return pika.BlockingConnection(params(**kwargs))


def wait_until(conn, predicate, timeout=EVENT_TIMEOUT):
    """Process I/O on ``conn`` until ``predicate()`` is true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return predicate()
        conn.process_data_events(time_limit=min(0.05, remaining))


def settle(conn, duration=SETTLE_TIME):
    """Drain events for a short while (for asserting that nothing else arrives)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=min(0.05, deadline - time.monotonic()))


def uid(prefix):
    return "conf-%s-%s" % (prefix, uuid.uuid4().hex[:12])


class Names:
    """Generates unique names and remembers them for teardown."""

    def __init__(self):
        self.queues = []
        self.exchanges = []

    def queue(self, prefix="q"):
        name = uid(prefix)
        self.queues.append(name)
        return name

    def exchange(self, prefix="x"):
        name = uid(prefix)
        self.exchanges.append(name)
        return name

    def cleanup(self):
        if not self.queues and not self.exchanges:
            return
        try:
            c = connect()
        except Exception:
            return
        try:
            for kind, items in (("q", self.queues), ("x", self.exchanges)):
                for name in items:
                    try:
                        ch = c.channel()
                        if kind == "q":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except pika.exceptions.ChannelClosedByBroker:
                        pass  # e.g. exclusive queue of a still-open connection
        finally:
            try:
                c.close()
            except Exception:
                pass


class Collector:
    """basic_consume callback that records deliveries."""

    def __init__(self):
        self.messages = []  # (method, properties, body)

    def __call__(self, channel, method, properties, body):
        self.messages.append((method, properties, body))

    @property
    def bodies(self):
        return [m[2] for m in self.messages]

    @property
    def tags(self):
        return [m[0].delivery_tag for m in self.messages]

    def __len__(self):
        return len(self.messages)




def declare_queue(ch, names, prefix="q", **kwargs):
    q = names.queue(prefix)
    ch.queue_declare(q, **kwargs)
    return q


def publish(ch, routing_key, body, exchange="", **kwargs):
    ch.basic_publish(exchange=exchange, routing_key=routing_key,
                     body=body, **kwargs)


def publish_many(ch, routing_key, bodies, exchange=""):
    for b in bodies:
        ch.basic_publish(exchange=exchange, routing_key=routing_key, body=b)


def queue_depth(ch, queue):
    """Ready-message count via passive declare."""
    return ch.queue_declare(queue, passive=True).method.message_count


def drain_get(ch, queue, auto_ack=True, limit=1000):
    """basic.get until get-empty; returns list of bodies."""
    out = []
    for _ in range(limit):
        method, _props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            break
        out.append(body)
    return out


def wait_depth(conn, ch, queue, expected, timeout=EVENT_TIMEOUT):
    """Wait until a queue has ``expected`` ready messages (publishes are async)."""
    return wait_until(conn, lambda: queue_depth(ch, queue) == expected, timeout)


def sync(ch):
    """A synchronous round trip on ``ch`` (passive declare of a pre-declared
    exchange): once it returns, the broker has processed everything sent
    earlier on this channel, since AMQP orders methods per channel."""
    ch.exchange_declare("amq.direct", passive=True)


def send_raw_method(ch, method, content=None):
    """Send an arbitrary method frame on a pika channel (for flags pika 1.x
    no longer exposes, e.g. basic.publish immediate=true)."""
    ch._impl._send_method(method, content)  # pylint: disable=protected-access


def raw_socket(timeout=5.0):
    s = socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_until_closed(sock, limit=4096):
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(limit)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def assert_channel_closed(excinfo, code):
    e = excinfo.value
    assert isinstance(e, pika.exceptions.ChannelClosedByBroker), repr(e)
    assert e.reply_code == code, repr(e)


def assert_connection_closed(excinfo, code):
    e = excinfo.value
    assert isinstance(e, pika.exceptions.ConnectionClosedByBroker), repr(e)
    assert e.reply_code == code, repr(e)


class RawConfirms:
    """Publisher confirms observed at the method level.

    pika's BlockingChannel.confirm_delivery() hides delivery tags and the
    relative order of basic.return and basic.ack, so this registers callbacks
    on the underlying channel instead.  ``events`` records, in arrival order,
    ("ack"|"nack", delivery_tag, multiple) and ("return", reply_code, body).
    """

    def __init__(self, conn, ch):
        self.conn = conn
        self.ch = ch
        self.events = []
        self.published = 0
        impl = ch._impl  # pylint: disable=protected-access
        impl.add_on_return_callback(
            lambda _c, m, _p, body: self.events.append(("return", m.reply_code, body)))
        select_ok = []
        impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                              callback=select_ok.append)
        assert wait_until(conn, lambda: select_ok), "no confirm.select-ok"

    def _on_confirm(self, frame):
        m = frame.method
        kind = "ack" if isinstance(m, pika.spec.Basic.Ack) else "nack"
        self.events.append((kind, m.delivery_tag, m.multiple))

    def publish(self, exchange, routing_key, body, **kwargs):
        self.ch.basic_publish(exchange, routing_key, body, **kwargs)
        self.published += 1
        return self.published

    def outcome(self):
        """{delivery_tag: "ack"|"nack"} for every confirmed tag."""
        result = {}
        for ev in self.events:
            if ev[0] not in ("ack", "nack"):
                continue
            kind, tag, multiple = ev
            if multiple:
                for t in range(1, tag + 1):
                    result.setdefault(t, kind)
            else:
                result[tag] = kind
        return result

    def wait_all(self, timeout=EVENT_TIMEOUT):
        return wait_until(self.conn, lambda: len(self.outcome()) >= self.published,
                          timeout)


def raw_rpc(conn, ch, method, reply_classes, timeout=EVENT_TIMEOUT):
    """Send a synchronous method pika's blocking API cannot express (e.g.
    basic.consume with an empty consumer tag) and return the reply frame."""
    replies = []
    ch._impl._rpc(method, replies.append, reply_classes)  # pylint: disable=protected-access
    assert wait_until(conn, lambda: replies, timeout), "no reply to %r" % (method,)
    return replies[0].method


class RawAMQP:
    """A minimal hand-driven AMQP 0-9-1 client over a plain socket, using
    pika's frame codec, for frames no client library would send."""

    def __init__(self, timeout=5.0):
        self.sock = raw_socket(timeout)
        self.buf = b""

    def send_bytes(self, data):
        self.sock.sendall(data)

    def send_method(self, channel, method):
        self.sock.sendall(pika.frame.Method(channel, method).marshal())

    def recv_frame(self):
        """Next frame, or None when the peer closed the connection."""
        while True:
            if self.buf:
                consumed, frame = pika.frame.decode_frame(self.buf)
                if frame is not None:
                    self.buf = self.buf[consumed:]
                    return frame
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            self.buf += chunk

    def recv_method(self, skip_heartbeats=True):
        while True:
            frame = self.recv_frame()
            if frame is None or not skip_heartbeats or not isinstance(frame, pika.frame.Heartbeat):
                return frame

    def handshake(self, vhost="/"):
        self.send_bytes(pika.frame.ProtocolHeader().marshal())
        start = self.recv_method()
        assert isinstance(start.method, pika.spec.Connection.Start), start
        self.send_method(0, pika.spec.Connection.StartOk(
            client_properties={"product": "conformance-raw"},
            mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US"))
        tune = self.recv_method()
        assert isinstance(tune.method, pika.spec.Connection.Tune), tune
        self.send_method(0, pika.spec.Connection.TuneOk(
            channel_max=tune.method.channel_max, frame_max=tune.method.frame_max,
            heartbeat=0))
        self.send_method(0, pika.spec.Connection.Open(virtual_host=vhost))
        ok = self.recv_method()
        assert isinstance(ok.method, pika.spec.Connection.OpenOk), ok
        return start.method, tune.method

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
