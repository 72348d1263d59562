"""Resource alarms with pika: a memory alarm blocks a publishing connection with
connection.blocked ("low on memory"), consumers keep receiving, and after the clear
connection.unblocked arrives and the held message is routed.

The alarm is raised through the target's own operator surface: on Warren,
PUT /api/nodes/{node}/memory-high-watermark on the management API (MGMT_HOST:MGMT_PORT,
which conformance/run.sh exports); on RabbitMQ, `rabbitmqctl -n NODE
set_vm_memory_high_watermark` (the node named by its /api/overview). Skipped when neither
is reachable.
"""
import base64
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from helpers import EVENT_TIMEOUT, connect, wait_until

MGMT_HOST = os.environ.get("MGMT_HOST", "")
MGMT_PORT = os.environ.get("MGMT_PORT", "")


def _api(method, path, body=None):
    req = urllib.request.Request(
        f"http://{MGMT_HOST}:{MGMT_PORT}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(req, timeout=EVENT_TIMEOUT) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def _watermark_setter():
    """A function taking True (raise: a tiny watermark) or False (restore)."""
    if not MGMT_HOST or not MGMT_PORT:
        pytest.skip("no management API given (MGMT_HOST, MGMT_PORT)")
    try:
        overview = _api("GET", "/api/overview")
    except OSError as e:
        pytest.skip(f"management API unreachable: {e}")
    node = overview["node"]
    if overview.get("product_name") == "Warren":
        path = f"/api/nodes/{node}/memory-high-watermark"
        return lambda low: _api("PUT", path, {"absolute": 1} if low else {"relative": 0.4})
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("RabbitMQ target without a local rabbitmqctl")

    def set_rabbit(low):
        subprocess.run(
            [ctl, "-n", node, "set_vm_memory_high_watermark", "0.0000001" if low else "0.4"],
            check=True, capture_output=True, timeout=30,
        )
    return set_rabbit


def test_memory_alarm_blocks_publisher_and_consumers_keep_receiving(names, conn_factory):
    set_low = _watermark_setter()
    q = names.queue("alarm")
    publisher = conn_factory()
    events = []
    publisher.add_on_connection_blocked_callback(
        lambda _c, m: events.append(("blocked", m.method.reason)))
    publisher.add_on_connection_unblocked_callback(lambda _c, _m: events.append(("unblocked",)))
    pch = publisher.channel()
    pch.queue_declare(q)
    for i in range(3):
        pch.basic_publish("", q, f"before-{i}".encode())
    consumer = conn_factory()
    cch = consumer.channel()
    assert wait_until(consumer, lambda: cch.queue_declare(q, passive=True).method.message_count == 3)

    set_low(True)
    try:
        pch.basic_publish("", q, b"held")
        assert wait_until(publisher, lambda: events), "no connection.blocked"
        assert events == [("blocked", "low on memory")]
        # The held message is not routed; a consumer that starts now gets the rest.
        got = []
        cch.basic_consume(q, lambda c, m, p, body: (got.append(body), c.basic_ack(m.delivery_tag)))
        assert wait_until(consumer, lambda: len(got) == 3)
        assert got == [b"before-0", b"before-1", b"before-2"]
    finally:
        set_low(False)
    assert wait_until(publisher, lambda: len(events) == 2), "no connection.unblocked"
    assert events[1] == ("unblocked",)
    assert wait_until(consumer, lambda: len(got) == 4)
    assert got[3] == b"held"
