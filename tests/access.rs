//! Users, vhosts and permissions over real sockets, with RabbitMQ 3.10.8's codes, texts and
//! scopes (`../shared/reference/security.md`): which permission each method checks on which
//! resource and in which order, topic permissions, vhost access and isolation, limits,
//! `user_id` with `impersonator`, and durability across a restart.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, channel as chm, connection as c, queue as qm};
use common::*;
use lapin::types::FieldTable;
use warren::auth::Password;
use warren::store::definitions::{TopicPermissionDef, VhostDef};

fn vhost(name: &str) -> VhostDef {
    VhostDef {
        name: name.into(),
        description: String::new(),
        tags: Vec::new(),
        default_queue_type: None,
        limits: Default::default(),
    }
}

/// A broker with vhost `vh` and user `u` / `pw` holding (configure, write, read) there.
async fn broker_with(perms: (&str, &str, &str)) -> TestBroker {
    let b = TestBroker::start().await;
    b.broker.add_vhost(vhost("vh")).unwrap();
    b.broker
        .auth
        .put_user("u", Password::Clear("pw".into()), vec![], None)
        .unwrap();
    b.broker
        .auth
        .set_permission("vh", "u", perms.0, perms.1, perms.2)
        .unwrap();
    b
}

/// Sends `m` on channel 1 of a raw session as `u` in `vh` and returns what answered:
/// (code, text, class, method) of a channel.close, or None for anything else.
async fn answer(
    b: &TestBroker,
    setup: &[AMQPClass],
    m: AMQPClass,
) -> Option<(u16, String, u16, u16)> {
    let (mut r, _) = Raw::open_as(b.addr, "u", "pw", "vh").await;
    r.open_channel(1).await;
    for s in setup {
        r.send(1, s.clone()).await;
        r.expect_method().await;
    }
    r.send(1, m).await;
    match r.expect_method().await {
        AMQPClass::Channel(chm::AMQPMethod::Close(cl)) => Some((
            cl.reply_code,
            cl.reply_text.to_string(),
            cl.class_id,
            cl.method_id,
        )),
        _ => None,
    }
}

fn refused(kind: &str, name: &str) -> String {
    format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost 'vh' refused for user 'u'")
}

fn declare(q: &str, passive: bool) -> AMQPClass {
    AMQPClass::Queue(qm::AMQPMethod::Declare(qm::Declare {
        queue: q.into(),
        passive,
        ..Default::default()
    }))
}

fn bind(q: &str, x: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(qm::AMQPMethod::Bind(qm::Bind {
        queue: q.into(),
        exchange: x.into(),
        routing_key: key.into(),
        ..Default::default()
    }))
}

#[tokio::test]
async fn declares_and_deletes_need_configure_on_their_resource_and_passive_needs_nothing() {
    let b = broker_with(("^ref-", ".*", ".*")).await;
    assert_eq!(answer(&b, &[], declare("ref-q", false)).await, None);
    assert_eq!(
        answer(&b, &[], declare("other", false)).await,
        Some((403, refused("queue", "other"), 50, 10))
    );
    // Passive: no check, and a missing queue is a 404 even without permission.
    let b2 = broker_with(("^$", "^$", "^$")).await;
    let (_, text, ..) = answer(&b2, &[], declare("nope", true)).await.unwrap();
    assert_eq!(text, "NOT_FOUND - no queue 'nope' in vhost 'vh'");
    assert_eq!(
        answer(
            &b,
            &[],
            AMQPClass::Exchange(amq_protocol::protocol::exchange::AMQPMethod::Declare(
                amq_protocol::protocol::exchange::Declare {
                    exchange: "x".into(),
                    kind: "direct".into(),
                    ..Default::default()
                }
            ))
        )
        .await,
        Some((403, refused("exchange", "x"), 40, 10))
    );
    assert_eq!(
        answer(
            &b,
            &[],
            AMQPClass::Queue(qm::AMQPMethod::Delete(qm::Delete {
                queue: "other".into(),
                ..Default::default()
            }))
        )
        .await,
        Some((403, refused("queue", "other"), 50, 40))
    );
}

#[tokio::test]
async fn a_bind_checks_write_on_the_queue_first_then_read_on_the_exchange() {
    // Neither: the queue is named.
    let b = broker_with((".*", "^$", "^$")).await;
    let setup = [declare("q", false)];
    assert_eq!(
        answer(&b, &setup, bind("q", "amq.direct", "k")).await,
        Some((403, refused("queue", "q"), 50, 20))
    );
    // Write on the queue only: the exchange is named.
    let b = broker_with((".*", "^q$", "^$")).await;
    assert_eq!(
        answer(&b, &setup, bind("q", "amq.direct", "k")).await,
        Some((403, refused("exchange", "amq.direct"), 50, 20))
    );
    let b = broker_with((".*", "^q$", "^amq\\.direct$")).await;
    assert_eq!(answer(&b, &setup, bind("q", "amq.direct", "k")).await, None);
}

#[tokio::test]
async fn publish_needs_write_on_the_exchange_and_the_default_one_is_amq_default() {
    let b = broker_with((".*", "^amq\\.fanout$", ".*")).await;
    let (mut r, _) = Raw::open_as(b.addr, "u", "pw", "vh").await;
    r.open_channel(1).await;
    r.publish(
        1,
        basic::Publish {
            exchange: "amq.fanout".into(),
            ..Default::default()
        },
        &Default::default(),
        b"ok",
    )
    .await;
    r.publish(
        1,
        basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            ..Default::default()
        },
        &Default::default(),
        b"no",
    )
    .await;
    match r.expect_method().await {
        AMQPClass::Channel(chm::AMQPMethod::Close(cl)) => {
            assert_eq!(
                (
                    cl.reply_code,
                    cl.reply_text.as_str(),
                    cl.class_id,
                    cl.method_id
                ),
                (403, refused("exchange", "amq.default").as_str(), 60, 40)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn get_consume_and_purge_need_read_on_the_queue() {
    let b = broker_with((".*", ".*", "^$")).await;
    let setup = [declare("q", false)];
    for (m, ids) in [
        (
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "q".into(),
                ..Default::default()
            })),
            (60, 70),
        ),
        (
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                ..Default::default()
            })),
            (60, 20),
        ),
        (
            AMQPClass::Queue(qm::AMQPMethod::Purge(qm::Purge {
                queue: "q".into(),
                ..Default::default()
            })),
            (50, 30),
        ),
    ] {
        assert_eq!(
            answer(&b, &setup, m).await,
            Some((403, refused("queue", "q"), ids.0, ids.1))
        );
    }
}

#[tokio::test]
async fn topic_permissions_check_routing_keys_at_publish_and_binding_keys_at_bind() {
    let b = broker_with((".*", ".*", ".*")).await;
    b.broker
        .auth
        .set_topic_permission(&TopicPermissionDef {
            user: "u".into(),
            vhost: "vh".into(),
            exchange: "amq.topic".into(),
            write: "^a\\.".into(),
            read: "^r\\.".into(),
        })
        .unwrap();
    let setup = [declare("q", false)];
    assert_eq!(
        answer(&b, &setup, bind("q", "amq.topic", "r.x")).await,
        None
    );
    let topic_refused = |k: &str| {
        format!(
            "ACCESS_REFUSED - access to topic '{k}' in exchange 'amq.topic' in vhost 'vh' refused for user 'u'"
        )
    };
    assert_eq!(
        answer(&b, &setup, bind("q", "amq.topic", "z.x")).await,
        Some((403, topic_refused("z.x"), 50, 20))
    );
    // Other exchanges are not constrained.
    assert_eq!(
        answer(&b, &setup, bind("q", "amq.direct", "z.x")).await,
        None
    );
    let (mut r, _) = Raw::open_as(b.addr, "u", "pw", "vh").await;
    r.open_channel(1).await;
    for key in ["a.b", "b.c"] {
        r.publish(
            1,
            basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: key.into(),
                ..Default::default()
            },
            &Default::default(),
            b"m",
        )
        .await;
    }
    match r.expect_method().await {
        AMQPClass::Channel(chm::AMQPMethod::Close(cl)) => {
            assert_eq!(
                (cl.reply_code, cl.reply_text.to_string()),
                (403, topic_refused("b.c"))
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_permission_change_applies_to_open_channels() {
    let b = broker_with((".*", ".*", ".*")).await;
    let conn = b.connect_as("u", "pw", "vh").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("a".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    b.broker
        .auth
        .set_permission("vh", "u", "^$", ".*", ".*")
        .unwrap();
    let e = ch
        .queue_declare("a".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
}

#[tokio::test]
async fn opening_a_vhost_needs_permissions_there() {
    let b = broker_with((".*", ".*", ".*")).await;
    // u has none in "/", guest none in "vh".
    for (user, pass, vh) in [("u", "pw", "/"), ("guest", "guest", "vh")] {
        let (mut r, opened) = Raw::open_as(b.addr, user, pass, vh).await;
        match opened {
            Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => {
                assert_eq!(
                    (
                        cl.reply_code,
                        cl.reply_text.to_string(),
                        cl.class_id,
                        cl.method_id
                    ),
                    (
                        530,
                        format!("NOT_ALLOWED - access to vhost '{vh}' refused for user '{user}'"),
                        10,
                        40
                    )
                );
            }
            other => panic!("{user}@{vh}: {other:?}"),
        }
        let _ = r.frame().await;
    }
    assert!(b.connect_as("u", "pw", "vh").await.is_ok());
    assert!(b.connect_as("u", "wrong", "vh").await.is_err());
}

#[tokio::test]
async fn vhosts_are_isolated_and_deleting_one_removes_what_it_held() {
    let b = broker_with((".*", ".*", ".*")).await;
    b.broker
        .auth
        .set_permission("/", "u", ".*", ".*", ".*")
        .unwrap();
    let in_vh = b
        .connect_as("u", "pw", "vh")
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    let in_root = b
        .connect_as("u", "pw", "/")
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    for ch in [&in_vh, &in_root] {
        ch.queue_declare("same".into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
    }
    in_vh
        .basic_publish(
            "".into(),
            "same".into(),
            Default::default(),
            b"vh only",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(ready(&in_vh, "same").await, 1);
    assert_eq!(ready(&in_root, "same").await, 0, "same names never meet");
    assert!(b.broker.delete_vhost("vh").unwrap());
    assert!(b.broker.vhost("vh").is_none());
    assert!(!b.broker.auth.has_access("vh", "u"));
    // Recreated, it is empty.
    b.broker.add_vhost(vhost("vh")).unwrap();
    b.broker
        .auth
        .set_permission("vh", "u", ".*", ".*", ".*")
        .unwrap();
    let again = b
        .connect_as("u", "pw", "vh")
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    assert_eq!(
        code(&passive_declare(&again, "same").await.unwrap_err()),
        404
    );
}

#[tokio::test]
async fn max_queues_refuses_the_next_declare_on_the_channel() {
    let b = broker_with((".*", ".*", ".*")).await;
    let mut v = vhost("vh");
    v.limits.insert("max-queues".into(), 1);
    b.broker.add_vhost(v).unwrap();
    let setup = [declare("q1", false)];
    assert_eq!(
        answer(&b, &setup, declare("q2", false)).await,
        Some((
            406,
            "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost 'vh' (1) is reached".into(),
            50,
            10
        ))
    );
    // Redeclaring an existing one is fine.
    assert_eq!(answer(&b, &setup, declare("q1", false)).await, None);
}

#[tokio::test]
async fn user_id_must_be_the_login_unless_the_user_impersonates() {
    let b = broker_with((".*", ".*", ".*")).await;
    let publish_as = |user_id: &'static str| {
        let addr = b.addr;
        async move {
            let (mut r, _) = Raw::open_as(addr, "u", "pw", "vh").await;
            r.open_channel(1).await;
            r.send(1, declare("uq", false)).await;
            r.expect_method().await;
            r.publish(
                1,
                basic::Publish {
                    routing_key: "uq".into(),
                    ..Default::default()
                },
                &amq_protocol::protocol::BasicProperties::default().with_user_id(user_id.into()),
                b"m",
            )
            .await;
            r.send(1, declare("uq", true)).await;
            match r.expect_method().await {
                AMQPClass::Channel(chm::AMQPMethod::Close(cl)) => {
                    Err((cl.reply_code, cl.reply_text.to_string()))
                }
                _ => Ok(()),
            }
        }
    };
    assert_eq!(publish_as("u").await, Ok(()));
    assert_eq!(
        publish_as("other").await,
        Err((
            406,
            "PRECONDITION_FAILED - user_id property set to 'other' but authenticated user was 'u'"
                .into()
        ))
    );
    b.broker
        .auth
        .put_user("u", Password::Keep, vec!["impersonator".into()], None)
        .unwrap();
    assert_eq!(publish_as("someone-else").await, Ok(()));
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart_and_guest_is_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rabbit.toml");
    std::fs::write(&config, "").unwrap();
    {
        let b = BinBroker::start_with_config(dir.path(), &config);
        drop(b);
    }
    // Set up offline through the library against the same data dir, as an operator's
    // tools would through the broker, then kill -9 a broker that has it.
    {
        let cfg = warren::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let broker = warren::broker::Broker::open(cfg).unwrap();
        broker.add_vhost(vhost("vh")).unwrap();
        broker
            .auth
            .put_user(
                "u",
                Password::Clear("pw".into()),
                vec!["monitoring".into()],
                None,
            )
            .unwrap();
        broker
            .auth
            .set_permission("vh", "u", ".*", ".*", ".*")
            .unwrap();
        broker.auth.delete_user("guest").unwrap();
    }
    let b = BinBroker::start_with_config(dir.path(), &config);
    let addr = b.addr;
    b.kill9();
    let b = BinBroker::start_with_config(dir.path(), &config);
    assert_ne!(b.addr, addr);
    let (_r, opened) = Raw::open_as(b.addr, "u", "pw", "vh").await;
    assert!(
        matches!(
            opened,
            Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
        ),
        "{opened:?}"
    );
    // guest was deleted and is not created again at the next boot.
    let (_r, opened) = Raw::open_as(b.addr, "guest", "guest", "/").await;
    assert!(
        matches!(
            opened,
            Some(AMQPClass::Connection(c::AMQPMethod::Close(_))) | None
        ),
        "{opened:?}"
    );
}

/// A definitions file exported from RabbitMQ 3.10.8 (`rabbitmqctl export_definitions`, in
/// `tests/data/`) loads at boot: its users log in with their RabbitMQ passwords, its vhost
/// has its limits, permissions and topology, and what Warren exports loads again.
#[tokio::test]
async fn a_rabbitmq_export_loads_at_boot_and_its_users_log_in() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rabbitmq-3.10.8-definitions.json"
    );
    let b = TestBroker::start_with(|c| c.load_definitions = Some(file.into())).await;
    b.broker.load_definitions().unwrap();
    // ref-sec / s3cret-pw, hashed by RabbitMQ; configure limited to ^ref-.*
    let conn = b
        .connect_as("ref-sec", "s3cret-pw", "ref-vh")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // The exchange-to-exchange binding and the topic binding route a message to ref-q2.
    ch.basic_publish(
        "ref-ex".into(),
        "to-topic".into(),
        Default::default(),
        b"m",
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(ready(&ch, "ref-q").await, 0);
    // (routing key "to-topic" does not match "a.#" in ref-ex2, so nothing arrives: the
    // binding exists and routes by its own key.)
    ch.basic_publish(
        "ref-ex".into(),
        "rk".into(),
        Default::default(),
        b"m",
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(ready(&ch, "ref-q").await, 1);
    let e = ch
        .queue_declare("not-ref".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(code(&e), 403);
    let user = b.broker.auth.user("ref-sec").unwrap();
    assert_eq!(
        (user.tags.clone(), user.max_connections),
        (vec!["monitoring".to_string()], Some(5))
    );
    assert_eq!(
        b.broker.vhost("ref-vh").unwrap().limit("max-queues"),
        Some(10)
    );
    assert_eq!(
        b.broker.vhost("ref-vh").unwrap().meta().description,
        "ref test vhost"
    );
    assert_eq!(b.broker.auth.topic_permissions().len(), 1);
    // The policy (max-length 100 on ^ref-) applies to the queues declared after it.
    let vh = b.broker.vhost("ref-vh").unwrap();
    let q = vh
        .queues()
        .into_iter()
        .find(|q| &*q.name == "ref-q")
        .unwrap();
    assert_eq!(q.args.load().max_length, Some(100));
    assert_eq!(vh.runtime_policies().len(), 1);
    // Exported again, it imports into a fresh broker with the same users and topology.
    let exported = warren::broker::definitions_json::export(&b.broker, None);
    let fresh = TestBroker::start().await;
    warren::broker::definitions_json::import(&fresh.broker, &exported, None).unwrap();
    let conn = fresh
        .connect_as("ref-sec", "s3cret-pw", "ref-vh")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(ready(&ch, "ref-q2").await, 0);
    let again = warren::broker::definitions_json::export(&fresh.broker, None);
    for k in [
        "bindings",
        "policies",
        "permissions",
        "topic_permissions",
        "queues",
    ] {
        assert_eq!(again[k], exported[k], "{k}");
    }
}

/// This machine's address on its default route, if it has one (no packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:1").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `loopback_users` (default `["guest"]`): guest logs in from 127.0.0.1 but not from another
/// address, where the refusal is a wrong password's; other users are not affected.
#[tokio::test]
async fn loopback_users_log_in_only_from_a_loopback_address() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address on this machine: nothing to test");
        return;
    };
    let b = TestBroker::start_with(|c| c.listeners = vec!["0.0.0.0:0".parse().unwrap()]).await;
    b.broker
        .auth
        .put_user("u", Password::Clear("pw".into()), vec![], None)
        .unwrap();
    b.broker
        .auth
        .set_permission("/", "u", ".*", ".*", ".*")
        .unwrap();
    let port = b.addr.port();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let remote = std::net::SocketAddr::new(ip, port);
    let (_r, opened) = Raw::open_as(local, "guest", "guest", "/").await;
    assert!(matches!(
        opened,
        Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
    ));
    let (_r, opened) = Raw::open_as(remote, "u", "pw", "/").await;
    assert!(matches!(
        opened,
        Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
    ));
    let (_r, opened) = Raw::open_as(remote, "guest", "guest", "/").await;
    // Refused at start-ok like a wrong password: the connection never opens.
    assert!(
        !matches!(
            opened,
            Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
        ),
        "{opened:?}"
    );
}
