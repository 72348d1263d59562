"""aio-pika robust connections: teardown of exchange-to-exchange bindings.

An application on ``aio_pika.connect_robust`` declares its topology through robust
channels (which remember declarations and bindings so they can restore them after a
reconnect) and, on shutdown, undoes it: queue bindings first, then the exchange-to-
exchange bindings the robust exchanges recorded, then deletes, then closes. When one
side of a recorded exchange binding is an auto-delete exchange that already went away
(RabbitMQ deletes an auto-delete exchange when its last binding as a source is removed,
and with it every binding it was the destination of), ``exchange.unbind`` names a
missing exchange. RabbitMQ 3.10.8 answers ``unbind-ok`` (removing a binding ignores a
missing source or destination); a 404 channel close would break every such teardown.

Written against aio-pika 10.2.1 (aiormq 7.2.4). Each test runs its own event loop
(``asyncio.run``) under an overall deadline; no pytest-asyncio needed.
"""
import asyncio
import uuid

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pytest

from helpers import AMQP_HOST, AMQP_PORT

URL = "amqp://guest:guest@%s:%d/" % (AMQP_HOST, AMQP_PORT)
DEADLINE = 20.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE))


def uid(prefix):
    return "aiopika.%s.%s" % (prefix, uuid.uuid4().hex[:12])


async def exchange_exists(name):
    """Passive declare on a separate, plain (non-robust) connection."""
    conn = await aio_pika.connect(URL)
    try:
        ch = await conn.channel()
        try:
            await ch.declare_exchange(name, passive=True)
            return True
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
    finally:
        await conn.close()


class Probe:
    """Records channel closes on a robust channel (a robust channel reopens itself, so a
    broker-side channel close would otherwise go unnoticed apart from the raised call)."""

    def __init__(self, channel):
        self.closes = []
        channel.close_callbacks.add(self._closed)

    def _closed(self, _channel, exc=None):
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self.closes.append(exc)


async def _cleanup(names):
    """Best effort: delete what a failed run may have left behind."""
    conn = await aio_pika.connect(URL)
    try:
        for kind, name in names:
            ch = await conn.channel()
            try:
                if kind == "q":
                    await ch.queue_delete(name)
                else:
                    await ch.exchange_delete(name)
            except aiormq.exceptions.AMQPError:
                pass
            finally:
                if not ch.is_closed:
                    await ch.close()
    finally:
        await conn.close()


def test_unbind_after_auto_delete_destination_went_away():
    """upstream (topic) -> relay (fanout, auto-delete) -> queue. Unbinding the queue removes
    relay's last binding, so relay is deleted, and the upstream -> relay binding with it.
    The robust teardown then unbinds relay from upstream: the destination is gone."""
    up, relay, qname = uid("up"), uid("relay"), uid("q")

    async def scenario():
        conn = await aio_pika.connect_robust(URL)
        try:
            ch = await conn.channel()
            probe = Probe(ch)
            upstream = await ch.declare_exchange(up, aio_pika.ExchangeType.TOPIC)
            relay_x = await ch.declare_exchange(
                relay, aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            await relay_x.bind(upstream, "events.#")
            queue = await ch.declare_queue(qname, auto_delete=False)
            await queue.bind(relay_x)

            # The topology routes: upstream -> relay -> queue.
            await upstream.publish(aio_pika.Message(b"ping"), routing_key="events.created")
            msg = None
            for _ in range(50):
                msg = await queue.get(no_ack=True, fail=False)
                if msg is not None:
                    break
                await asyncio.sleep(0.05)
            assert msg is not None and msg.body == b"ping"

            # Teardown, in the order the application would: queue bindings first ...
            await queue.unbind(relay_x)
            # ... which removed relay's last binding: RabbitMQ auto-deleted it.
            assert not await exchange_exists(relay)
            # ... then the exchange-to-exchange binding the robust exchange recorded.
            await relay_x.unbind(upstream, "events.#")
            await queue.delete(if_unused=False, if_empty=False)
            await upstream.delete()
            assert not ch.is_closed
            assert probe.closes == []
            await ch.close()
        finally:
            await conn.close()

    try:
        run(scenario())
    finally:
        run(_cleanup([("q", qname), ("x", relay), ("x", up)]))


def test_unbind_after_source_was_deleted_by_another_connection():
    """Two services share the source exchange ``feed``; ours binds its ``archive`` exchange
    to it (robust, recorded). The other service's teardown deletes ``feed`` first, which
    removes feed -> archive. Our teardown then unbinds archive from feed: the source is
    gone, the destination exists."""
    feed, archive, qname = uid("feed"), uid("archive"), uid("q")

    async def scenario():
        other = await aio_pika.connect_robust(URL)
        conn = await aio_pika.connect_robust(URL)
        try:
            other_ch = await other.channel()
            shared = await other_ch.declare_exchange(feed, aio_pika.ExchangeType.FANOUT)

            ch = await conn.channel()
            probe = Probe(ch)
            feed_x = await ch.declare_exchange(feed, aio_pika.ExchangeType.FANOUT)
            archive_x = await ch.declare_exchange(archive, aio_pika.ExchangeType.DIRECT)
            await archive_x.bind(feed_x, "")
            queue = await ch.declare_queue(qname, exclusive=True)
            await queue.bind(archive_x, "k")

            # The other service goes first and deletes the shared exchange.
            await shared.delete()
            await other.close()
            assert not await exchange_exists(feed)

            # Our teardown: queue binding, the recorded exchange binding, then deletes.
            await queue.unbind(archive_x, "k")
            await archive_x.unbind(feed_x, "")
            assert not ch.is_closed
            assert probe.closes == []
            await queue.delete(if_unused=False, if_empty=False)
            await archive_x.delete()
            await ch.close()
        finally:
            await conn.close()
            await other.close()

    try:
        run(scenario())
    finally:
        run(_cleanup([("q", qname), ("x", feed), ("x", archive)]))


def test_unbind_with_both_sides_gone():
    """relay (fanout, auto-delete) is bound to upstream (fanout, auto-delete) and a queue
    to relay. Unbinding the queue auto-deletes relay, which removes upstream -> relay,
    upstream's last binding, so upstream is auto-deleted as well. Unbinding relay from
    upstream then names two missing exchanges."""
    up, relay, qname = uid("up"), uid("relay"), uid("q")

    async def scenario():
        conn = await aio_pika.connect_robust(URL)
        try:
            ch = await conn.channel()
            probe = Probe(ch)
            upstream = await ch.declare_exchange(
                up, aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            relay_x = await ch.declare_exchange(
                relay, aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            await relay_x.bind(upstream)
            queue = await ch.declare_queue(qname, exclusive=True)
            await queue.bind(relay_x)

            await queue.unbind(relay_x)
            assert not await exchange_exists(relay)
            assert not await exchange_exists(up)
            await relay_x.unbind(upstream)
            assert not ch.is_closed
            assert probe.closes == []
            # The channel still works after the unbind-ok.
            await queue.delete(if_unused=False, if_empty=False)
            await ch.close()
        finally:
            await conn.close()

    try:
        run(scenario())
    finally:
        run(_cleanup([("q", qname), ("x", relay), ("x", up)]))


def test_unbind_of_binding_that_never_existed_between_existing_exchanges():
    """Control: both exchanges exist but are not bound; unbind is a no-op (unbind-ok)."""
    a, b = uid("a"), uid("b")

    async def scenario():
        conn = await aio_pika.connect_robust(URL)
        try:
            ch = await conn.channel()
            probe = Probe(ch)
            xa = await ch.declare_exchange(a, aio_pika.ExchangeType.FANOUT)
            xb = await ch.declare_exchange(b, aio_pika.ExchangeType.FANOUT)
            await xb.unbind(xa, "nothing")
            await xa.delete()
            await xb.delete()
            assert probe.closes == []
            await ch.close()
        finally:
            await conn.close()

    try:
        run(scenario())
    finally:
        run(_cleanup([("x", a), ("x", b)]))
