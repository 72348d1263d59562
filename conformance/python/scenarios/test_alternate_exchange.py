"""AlternateExchange (after the Java client's AlternateExchange)."""

from helpers import RawConfirms, declare_queue, drain_get, sync


def _main_with_ae(ch, names, ae_name=None):
    ae = ae_name or names.exchange("ae")
    main = names.exchange("main")
    if ae_name is None:
        ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    return main, ae


def test_unroutable_goes_to_alternate(ch, names):
    main, ae = _main_with_ae(ch, names)
    q_ae = declare_queue(ch, names)
    ch.queue_bind(q_ae, ae)
    ch.basic_publish(main, "nowhere", b"m")
    sync(ch)
    assert drain_get(ch, q_ae) == [b"m"]


def test_routable_does_not_go_to_alternate(ch, names):
    main, ae = _main_with_ae(ch, names)
    q_ae, q_main = declare_queue(ch, names), declare_queue(ch, names)
    ch.queue_bind(q_ae, ae)
    ch.queue_bind(q_main, main, routing_key="k")
    ch.basic_publish(main, "k", b"m")
    sync(ch)
    assert drain_get(ch, q_main) == [b"m"]
    assert drain_get(ch, q_ae) == []


def test_alternate_keeps_routing_key(ch, names):
    ae = names.exchange("ae")
    ch.exchange_declare(ae, "direct")
    main, _ = _main_with_ae(ch, names, ae_name=ae)
    q = declare_queue(ch, names)
    ch.queue_bind(q, ae, routing_key="rk")
    ch.basic_publish(main, "rk", b"yes")
    ch.basic_publish(main, "other", b"no")
    sync(ch)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.exchange, method.routing_key) == (b"yes", main, "rk")
    assert drain_get(ch, q) == []


def test_mandatory_not_returned_when_alternate_routes(conn, ch, names):
    main, ae = _main_with_ae(ch, names)
    q_ae = declare_queue(ch, names)
    ch.queue_bind(q_ae, ae)
    rc = RawConfirms(conn, ch)
    rc.publish(main, "nowhere", b"m", mandatory=True)
    assert rc.wait_all()
    assert [e[0] for e in rc.events] == ["ack"]


def test_mandatory_returned_when_alternate_does_not_route(conn, ch, names):
    main, _ae = _main_with_ae(ch, names)  # AE has no bindings
    rc = RawConfirms(conn, ch)
    rc.publish(main, "nowhere", b"m", mandatory=True)
    assert rc.wait_all()
    assert [e[0] for e in rc.events] == ["return", "ack"]


def test_missing_alternate_exchange_drops(conn, ch, names):
    main, _ = _main_with_ae(ch, names, ae_name=names.exchange("absent"))
    rc = RawConfirms(conn, ch)
    rc.publish(main, "nowhere", b"m", mandatory=True)
    assert rc.wait_all()
    assert [e[0] for e in rc.events] == ["return", "ack"]
    assert ch.is_open


def test_alternate_chain(ch, names):
    ae2 = names.exchange("ae2")
    ch.exchange_declare(ae2, "fanout")
    ae1 = names.exchange("ae1")
    ch.exchange_declare(ae1, "direct", arguments={"alternate-exchange": ae2})
    main, _ = _main_with_ae(ch, names, ae_name=ae1)
    q = declare_queue(ch, names)
    ch.queue_bind(q, ae2)
    ch.basic_publish(main, "nowhere", b"m")
    sync(ch)
    assert drain_get(ch, q) == [b"m"]


def test_alternate_cycle_terminates(conn, ch, names):
    a, b = names.exchange("a"), names.exchange("b")
    ch.exchange_declare(a, "direct", arguments={"alternate-exchange": b})
    ch.exchange_declare(b, "direct", arguments={"alternate-exchange": a})
    rc = RawConfirms(conn, ch)
    rc.publish(a, "nowhere", b"m", mandatory=True)
    assert rc.wait_all()
    assert [e[0] for e in rc.events] == ["return", "ack"]
