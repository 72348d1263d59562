"""UserIDHeader (after the Java client's UserIDHeader): the user_id
property must match the authenticated user."""
import pika
import pika.exceptions
import pytest

from helpers import assert_channel_closed, declare_queue, sync


def test_matching_user_id_is_delivered(ch, names):
    q = declare_queue(ch, names)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(user_id="guest"))
    _method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m"
    assert props.user_id == "guest"


def test_different_user_id_is_406(conn, ch, names):
    q = declare_queue(ch, names)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", q, b"m", pika.BasicProperties(user_id="mallory"))
        sync(ch)
    assert_channel_closed(e, 406)
    assert e.value.reply_text == ("PRECONDITION_FAILED - user_id property set to "
                                  "'mallory' but authenticated user was 'guest'")
    # nothing was enqueued and the connection survives
    ch2 = conn.channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0
