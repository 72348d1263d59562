"""queue.unbind / exchange.unbind with missing ends: RabbitMQ 3.10.8 answers
unbind-ok in every case (unbind is idempotent and does not check that the
queue, the exchange or the binding exists)."""
import pika.spec as S
import pytest

from helpers import uid
from helpers_interop import Session, close_tuple


@pytest.fixture
def world():
    """A queue and two exchanges that exist, plus names that do not."""
    s = Session()
    w = {"q": uid("ia-q"), "x": uid("ia-x"), "x2": uid("ia-x"),
         "nq": uid("ia-nq"), "nx": uid("ia-nx"), "nx2": uid("ia-nx")}
    for m in (S.Queue.Declare(queue=w["q"], exclusive=True),
              S.Exchange.Declare(exchange=w["x"], type="direct"),
              S.Exchange.Declare(exchange=w["x2"], type="direct")):
        f = s.rpc(1, m)
        assert type(f.method).__name__ == "DeclareOk", f
    w["session"] = s
    yield w
    s2 = Session()
    for x in (w["x"], w["x2"]):
        s2.rpc(1, S.Exchange.Delete(exchange=x))
    s2.shutdown()
    s.shutdown()


def _answer(world, method):
    s = world["session"]
    f = s.rpc(1, method)
    got = close_tuple(f)
    if got[0] == "channel":
        s.reply_close_ok(f)
        s.open_channel(1)
    return got


UNBIND_OK = (None, "UnbindOk")


def test_queue_unbind_missing_queue(world):
    assert _answer(world, S.Queue.Unbind(queue=world["nq"], exchange=world["x"],
                                         routing_key="k")) == UNBIND_OK


def test_queue_unbind_missing_exchange(world):
    assert _answer(world, S.Queue.Unbind(queue=world["q"], exchange=world["nx"],
                                         routing_key="k")) == UNBIND_OK


def test_queue_unbind_missing_both(world):
    assert _answer(world, S.Queue.Unbind(queue=world["nq"], exchange=world["nx"],
                                         routing_key="k")) == UNBIND_OK


def test_queue_unbind_missing_binding(world):
    assert _answer(world, S.Queue.Unbind(queue=world["q"], exchange=world["x"],
                                         routing_key="k")) == UNBIND_OK


def test_exchange_unbind_missing_destination(world):
    assert _answer(world, S.Exchange.Unbind(destination=world["nx"], source=world["x"],
                                            routing_key="k")) == UNBIND_OK


def test_exchange_unbind_missing_source(world):
    assert _answer(world, S.Exchange.Unbind(destination=world["x2"], source=world["nx"],
                                            routing_key="k")) == UNBIND_OK


def test_exchange_unbind_missing_both(world):
    assert _answer(world, S.Exchange.Unbind(destination=world["nx2"], source=world["nx"],
                                            routing_key="k")) == UNBIND_OK


def test_exchange_unbind_missing_binding(world):
    assert _answer(world, S.Exchange.Unbind(destination=world["x2"], source=world["x"],
                                            routing_key="k")) == UNBIND_OK


def test_queue_unbind_from_default_exchange_is_403(world):
    assert _answer(world, S.Queue.Unbind(queue=world["q"], exchange="",
                                         routing_key=world["q"])) == (
        "channel", 403, "ACCESS_REFUSED - operation not permitted on the default exchange", 50, 50)


def test_queue_bind_missing_queue_is_404_for_contrast(world):
    assert _answer(world, S.Queue.Bind(queue=world["nq"], exchange=world["x"],
                                       routing_key="k")) == (
        "channel", 404, "NOT_FOUND - no queue '%s' in vhost '/'" % world["nq"], 50, 20)
