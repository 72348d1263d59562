"""AMQPS with pika: a whole session over TLS, and the EXTERNAL mechanism.

Runs only when the broker's TLS port and the CA that signed its certificate are given:
AMQPS_PORT and AMQPS_CA (run.sh sets them when it starts Warren; against RabbitMQ, set
them by hand). The EXTERNAL case also needs a client certificate and key, AMQPS_CERT and
AMQPS_KEY, whose name (as the broker's ssl_cert_login_from reads it) is the user guest;
run.sh's broker reads the CN. The server certificate must name AMQP_HOST.
"""
import os
import ssl

import pika
import pytest

from helpers import AMQP_HOST, EVENT_TIMEOUT

AMQPS_PORT = os.environ.get("AMQPS_PORT")
AMQPS_CA = os.environ.get("AMQPS_CA")
AMQPS_CERT = os.environ.get("AMQPS_CERT")
AMQPS_KEY = os.environ.get("AMQPS_KEY")

pytestmark = pytest.mark.skipif(
    not (AMQPS_PORT and AMQPS_CA), reason="no AMQPS port given (AMQPS_PORT, AMQPS_CA)"
)


def tls_params(client_cert=False, **kwargs):
    ctx = ssl.create_default_context(cafile=AMQPS_CA)
    if client_cert:
        ctx.load_cert_chain(AMQPS_CERT, AMQPS_KEY)
    kwargs.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
    return pika.ConnectionParameters(
        AMQP_HOST,
        int(AMQPS_PORT),
        ssl_options=pika.SSLOptions(ctx, AMQP_HOST),
        connection_attempts=1,
        socket_timeout=10,
        stack_timeout=15,
        **kwargs,
    )


def round_trip(conn, names):
    ch = conn.channel()
    q = names.queue(ch)
    body = b"x" * 100_000  # more than one TLS record
    ch.basic_publish("", q, body)
    for method, _props, got in ch.consume(q, auto_ack=True, inactivity_timeout=EVENT_TIMEOUT):
        assert method is not None, "no delivery over TLS"
        assert got == body
        break
    ch.cancel()


def test_publish_and_consume_over_tls(names):
    conn = pika.BlockingConnection(tls_params())
    try:
        round_trip(conn, names)
    finally:
        conn.close()


@pytest.mark.skipif(
    not (AMQPS_CERT and AMQPS_KEY), reason="no client certificate given (AMQPS_CERT, AMQPS_KEY)"
)
def test_external_logs_in_with_the_client_certificate(names):
    conn = pika.BlockingConnection(
        tls_params(client_cert=True, credentials=pika.credentials.ExternalCredentials())
    )
    try:
        round_trip(conn, names)
    finally:
        conn.close()
