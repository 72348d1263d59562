"""QueueExpiry (after the Java client's QueueExpiry): x-expires deletes an
unused queue, consumers keep it alive, redeclaring resets the timer,
argument validation."""
import time

import pika
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, wait_until


def _exists(conn):
    """Probe for a queue without "using" it: a passive declare would reset
    its expiry timer, so publish a mandatory, immediately-expiring message
    on a confirm channel and see whether it is returned as unroutable."""
    probe = conn.channel()
    probe.confirm_delivery()

    def check(queue):
        try:
            probe.basic_publish("", queue, b"probe",
                                pika.BasicProperties(expiration="0"),
                                mandatory=True)
        except pika.exceptions.UnroutableError:
            return False
        return True
    return check


def test_unused_queue_is_deleted_after_expiry(conn, ch, names):
    exists = _exists(conn)
    q = declare_queue(ch, names, arguments={"x-expires": 300})
    assert exists(q)
    assert wait_until(conn, lambda: not exists(q))


def test_queue_with_messages_still_expires(conn, ch, names):
    exists = _exists(conn)
    q = declare_queue(ch, names, arguments={"x-expires": 300})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"orphan")
    assert wait_until(conn, lambda: not exists(q))


def test_consumer_keeps_queue_alive(conn, ch, names):
    exists = _exists(conn)
    q = declare_queue(ch, names, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None)
    time.sleep(0.6)  # three expiry periods pass while the consumer exists
    assert exists(q)
    ch.basic_cancel(tag)
    assert wait_until(conn, lambda: not exists(q))


def test_redeclare_resets_the_timer(conn, ch, names):
    exists = _exists(conn)
    q = declare_queue(ch, names, arguments={"x-expires": 1500})
    start = time.monotonic()
    time.sleep(1.0)
    ch.queue_declare(q, arguments={"x-expires": 1500})
    # past the original deadline (start + 1.5 s), before the new one (+2.5 s)
    time.sleep(max(0.0, start + 1.9 - time.monotonic()))
    assert exists(q)
    assert wait_until(conn, lambda: not exists(q))


@pytest.mark.parametrize("value,text", [
    (0, "{value_zero,0}"),
    (-1, "{value_negative,-1}"),
])
def test_invalid_expires_is_406(ch, names, value, text):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(names.queue(), arguments={"x-expires": value})
    assert_channel_closed(e, 406)
    assert "invalid arg 'x-expires'" in e.value.reply_text
    assert text in e.value.reply_text


def test_redeclare_with_different_expires_is_406(ch, names):
    q = declare_queue(ch, names, arguments={"x-expires": 60000})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, arguments={"x-expires": 30000})
    assert_channel_closed(e, 406)
    assert "inequivalent arg 'x-expires'" in e.value.reply_text
