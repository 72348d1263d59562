"""AMQPS with pika: a whole session over TLS, and the EXTERNAL mechanism.

Runs only when the broker's TLS port and the CA that signed its certificate are given:
AMQPS_PORT and AMQPS_CA (run.sh sets them when it starts Warren; against RabbitMQ, set
them by hand). The EXTERNAL case also needs a client certificate and key, AMQPS_CERT and
AMQPS_KEY, whose name (as the broker's ssl_cert_login_from reads it) is the user guest;
run.sh's broker reads the CN. The server certificate must name AMQP_HOST. The refusal case needs a client certificate
from a CA the broker does not trust, AMQPS_BAD_CERT and AMQPS_BAD_KEY, and a broker that
verifies peers (RabbitMQ's ssl_options.verify = verify_peer).
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
AMQPS_BAD_CERT = os.environ.get("AMQPS_BAD_CERT")
AMQPS_BAD_KEY = os.environ.get("AMQPS_BAD_KEY")

# How pika reports a TLS handshake that failed: by the client's check, or by the
# broker's alert, depending on the side that refused.
REFUSED = (pika.exceptions.AMQPConnectionError, ssl.SSLError, ConnectionError)

pytestmark = pytest.mark.skipif(
    not (AMQPS_PORT and AMQPS_CA), reason="no AMQPS port given (AMQPS_PORT, AMQPS_CA)"
)


def tls_params(client_cert=None, cafile=AMQPS_CA, **kwargs):
    ctx = ssl.create_default_context(cafile=cafile)
    if client_cert:
        ctx.load_cert_chain(*client_cert)
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
    q = names.queue()
    ch.queue_declare(q)
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
        tls_params(client_cert=(AMQPS_CERT, AMQPS_KEY), credentials=pika.credentials.ExternalCredentials())
    )
    try:
        round_trip(conn, names)
    finally:
        conn.close()


def test_the_server_certificate_is_verified_by_the_client():
    # A client that trusts only the system's CAs refuses the broker: the check is real.
    params = tls_params(cafile=None)
    with pytest.raises(REFUSED):
        pika.BlockingConnection(params).close()


@pytest.mark.skipif(
    not (AMQPS_BAD_CERT and AMQPS_BAD_KEY),
    reason="no untrusted client certificate given (AMQPS_BAD_CERT, AMQPS_BAD_KEY)",
)
def test_a_client_certificate_from_an_unknown_ca_is_refused():
    params = tls_params(
        client_cert=(AMQPS_BAD_CERT, AMQPS_BAD_KEY),
        credentials=pika.credentials.ExternalCredentials(),
    )
    with pytest.raises(REFUSED):
        pika.BlockingConnection(params).close()
