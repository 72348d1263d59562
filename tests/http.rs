//! The management HTTP API against a real broker on 127.0.0.1:0: real HTTP/1.1 requests
//! (a small client over a TCP socket, one request per connection), with lapin and raw AMQP
//! clients to create topology and to see the effects.

mod common;

use std::net::SocketAddr;

use amq_protocol::protocol::{AMQPClass, connection as c};
use common::{Raw, TestBroker, WAIT, name};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// guest:guest
const GUEST: &str = "Basic Z3Vlc3Q6Z3Vlc3Q=";

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
async fn request(
    at: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(at).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head += &format!("Authorization: {a}\r\n");
    }
    for (k, v) in extra {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

/// A client of one broker's API, as guest.
struct Api(SocketAddr);

impl Api {
    fn of(b: &TestBroker) -> Self {
        Self(b.http.expect("started with management"))
    }

    async fn get(&self, path: &str) -> Reply {
        request(self.0, "GET", path, Some(GUEST), &[], b"").await
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> Reply {
        let body = serde_json::to_vec(&body).unwrap();
        request(self.0, method, path, Some(GUEST), &[], &body).await
    }

    async fn delete(&self, path: &str) -> Reply {
        request(self.0, "DELETE", path, Some(GUEST), &[], b"").await
    }
}

#[tokio::test]
async fn every_api_path_needs_basic_auth_as_rabbitmq() {
    let b = TestBroker::start_with_management().await;
    let at = b.http.unwrap();
    let r = request(at, "GET", "/api/overview", None, &[], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"RabbitMQ Management\"")
    );
    let bad = "Basic Z3Vlc3Q6bm9wZQ=="; // guest:nope
    let r = request(at, "GET", "/api/queues", Some(bad), &[], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"error": "not_authorized", "reason": "Login failed"})
    );
    let api = Api::of(&b);
    assert_eq!(
        api.json("/api/whoami").await,
        json!({"name": "guest", "tags": ["administrator"]})
    );
    // Unknown paths and objects: RabbitMQ's 404 body.
    for path in [
        "/api/nothing-here",
        "/api/queues/%2F/missing",
        "/api/vhosts/nope",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(
            r.json(),
            json!({"error": "Object Not Found", "reason": "Not Found"})
        );
    }
    // A method the path does not have.
    let r = api.send("POST", "/api/overview", json!({})).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn overview_nodes_vhosts_and_health_checks_answer_rabbitmq_shapes() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let (_conn, ch) = b.channel().await;
    let q = name("ov");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let o = api.json("/api/overview").await;
    assert_eq!(o["product_name"], "Warren");
    assert_eq!(o["rabbitmq_version"], "3.10.8");
    assert_eq!(o["management_version"], "3.10.8");
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["exchanges"], 7);
    assert_eq!(o["queue_totals"]["messages"], 0);
    let amqp = o["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["protocol"] == "amqp")
        .unwrap()
        .clone();
    assert_eq!(amqp["port"], b.addr.port());
    let nodes = api.json("/api/nodes").await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["name"], o["node"]);
    let vhosts = api.json("/api/vhosts").await;
    assert_eq!(vhosts[0]["name"], "/");
    assert_eq!(api.json("/api/vhosts/%2F").await["name"], "/");
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/health/checks/node-is-quorum-critical",
        "/api/aliveness-test/%2F",
    ] {
        assert_eq!(api.json(path).await["status"], "ok", "{path}");
    }
    let port = b.addr.port();
    assert_eq!(
        api.json(&format!("/api/health/checks/port-listener/{port}"))
            .await,
        json!({"status": "ok", "port": port})
    );
    let r = api.get("/api/health/checks/port-listener/1").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "failed");
    assert_eq!(r.json()["missing"], 1);
}

#[tokio::test]
async fn alarms_show_in_nodes_overview_health_checks_and_connection_states() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let node = api.json("/api/overview").await["node"]
        .as_str()
        .unwrap()
        .to_string();
    let n = api.json(&format!("/api/nodes/{node}")).await;
    assert_eq!(n["mem_alarm"], false);
    assert_eq!(n["disk_free_alarm"], false);
    assert_eq!(n["disk_free_limit"], 50_000_000);
    assert!(n["mem_limit"].as_u64().unwrap() > n["mem_used"].as_u64().unwrap());
    let (conn, ch) = b.channel().await;
    let mut events = conn.events_listener();
    let (_idle, _idle_ch) = b.channel().await;

    // rabbitmqctl set_vm_memory_high_watermark, over HTTP.
    let path = format!("/api/nodes/{node}/memory-high-watermark");
    let r = api.send("PUT", &path, json!({"absolute": 1})).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let raised = json!([{"node": node, "resource": "memory"}]);
    for (path, scope) in [
        ("/api/health/checks/alarms", "in the cluster"),
        ("/api/health/checks/local-alarms", "on the node"),
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(
            r.json(),
            json!({"status": "failed", "reason": format!("There are alarms in effect {scope}"),
                   "alarms": raised})
        );
    }
    assert_eq!(api.json("/api/overview").await["alarms"], raised);
    assert_eq!(
        api.json(&format!("/api/nodes/{node}")).await["mem_alarm"],
        true
    );
    // Every connection is `blocking`; the one that publishes becomes `blocked`.
    ch.basic_publish(
        "".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(WAIT, futures_lite::StreamExt::next(&mut events)).await {
            Ok(Some(lapin::Event::ConnectionBlocked(_))) => break,
            Ok(Some(_)) => continue,
            other => panic!("no connection.blocked: {other:?}"),
        }
    }
    let mut states: Vec<String> = api
        .json("/api/connections")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_string())
        .collect();
    states.sort();
    assert_eq!(states, ["blocked", "blocking"]);

    // Only administrators move limits; the body is rabbit.toml's form.
    let r = api
        .send(
            "PUT",
            "/api/users/watcher",
            json!({"password": "pw", "tags": "monitoring"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let body = serde_json::to_vec(&json!({"relative": 1.0})).unwrap();
    let r = request(
        api.0,
        "PUT",
        &path,
        Some(&basic("watcher", "pw")),
        &[],
        &body,
    )
    .await;
    assert_eq!(
        r.status, 401,
        "RabbitMQ answers 401 to a user without the tag"
    );
    let r = api.send("PUT", &path, json!({"ratio": 1})).await;
    assert_eq!(r.status, 400);
    let r = api
        .send(
            "PUT",
            &format!("/api/nodes/{node}/disk-free-limit"),
            json!({"absolute": "1GB"}),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = api
        .send(
            "PUT",
            "/api/nodes/other@host/disk-free-limit",
            json!({"absolute": 1}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api.send("PUT", &path, json!({"relative": 1.0})).await;
    assert_eq!(r.status, 204);
    assert_eq!(api.json("/api/health/checks/alarms").await["status"], "ok");
    assert_eq!(api.json("/api/overview").await["alarms"], json!([]));
}

#[tokio::test]
async fn a_queue_declared_over_http_counts_what_lapin_publishes_and_gets_purges_deletes() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let q = name("hq");
    let path = format!("/api/queues/%2F/{q}");
    let created = api
        .send(
            "PUT",
            &path,
            json!({"durable": true, "arguments": {"x-max-length": 10}}),
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(
        api.send(
            "PUT",
            &path,
            json!({"durable": true, "arguments": {"x-max-length": 10}})
        )
        .await
        .status,
        204
    );
    // An inequivalent redeclare: RabbitMQ's 400 with the AMQP text.
    let r = api.send("PUT", &path, json!({"durable": true})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .starts_with("inequivalent arg 'x-max-length'"),
        "{:?}",
        r.json()
    );
    let r = api
        .send("PUT", &format!("/api/queues/%2F/{q}x"), json!("{bad"))
        .await;
    assert_eq!(r.status, 400);
    let r = request(api.0, "PUT", &path, Some(GUEST), &[], b"{not json").await;
    assert_eq!(
        r.json(),
        json!({"error": "bad_request", "reason": "not_json"})
    );

    let (_conn, ch) = b.channel().await;
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default().with_content_type("text/plain".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let shown = api.json(&path).await;
    assert_eq!(shown["name"], q.as_str());
    assert_eq!(shown["vhost"], "/");
    assert_eq!(shown["durable"], true);
    assert_eq!(shown["type"], "classic");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["arguments"], json!({"x-max-length": 10}));
    assert_eq!(shown["messages_ready"], 1);
    assert_eq!(shown["messages"], 1);
    assert_eq!(shown["message_stats"]["publish"], 1);
    let listed = api.json("/api/queues/%2F").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == q.as_str())
    );

    // get with requeue leaves it (redelivered), without takes it.
    let got = api
        .send(
            "POST",
            &format!("{path}/get"),
            json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await
        .json();
    assert_eq!(got.as_array().unwrap().len(), 1);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["payload_bytes"], 5);
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(got[0]["routing_key"], q.as_str());
    assert_eq!(got[0]["message_count"], 0);
    assert_eq!(got[0]["properties"], json!({"content_type": "text/plain"}));
    let got = api
        .send(
            "POST",
            &format!("{path}/get"),
            json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"}),
        )
        .await
        .json();
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(got[0]["payload"], "aGVsbG8=");
    assert_eq!(got[0]["payload_encoding"], "base64");
    let shown = api.json(&path).await;
    assert_eq!(shown["messages"], 0);
    assert_eq!(shown["message_stats"]["ack"], 1);
    assert_eq!(shown["message_stats"]["redeliver"], 1);

    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(common::ready(&ch, &q).await, 3);
    assert_eq!(api.delete(&format!("{path}/contents")).await.status, 204);
    assert_eq!(common::ready(&ch, &q).await, 0);
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.delete(&path).await.status, 404);
    let e = common::passive_declare(&ch, &q).await.unwrap_err();
    assert_eq!(common::code(&e), 404);
}

#[tokio::test]
async fn unacknowledged_deliveries_are_counted_until_acked() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let (_conn, ch) = b.channel().await;
    let q = name("unacked");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        Default::default(),
        b"m",
        Default::default(),
    )
    .await
    .unwrap();
    use futures_lite::StreamExt;
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let path = format!("/api/queues/%2F/{q}");
    let shown = api.json(&path).await;
    assert_eq!(shown["messages_unacknowledged"], 1);
    assert_eq!(shown["messages_ready"], 0);
    assert_eq!(shown["consumers"], 1);
    assert_eq!(shown["message_stats"]["deliver_get"], 1);
    let consumers = api.json("/api/consumers").await;
    assert_eq!(consumers[0]["consumer_tag"], "c1");
    assert_eq!(consumers[0]["queue"]["name"], q.as_str());
    assert_eq!(consumers[0]["ack_required"], true);
    d.ack(BasicAckOptions::default()).await.unwrap();
    // The ack is handled after the basic.ack frame arrives: poll briefly.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = api.json(&path).await;
        if shown["messages_unacknowledged"] == 0 {
            assert_eq!(shown["message_stats"]["ack"], 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exchanges_and_bindings_over_http_route_what_is_published() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let x = name("hx");
    let q = name("hbq");
    let xpath = format!("/api/exchanges/%2F/{x}");
    assert_eq!(
        api.send("PUT", &xpath, json!({"type": "topic", "durable": true}))
            .await
            .status,
        201
    );
    assert_eq!(
        api.send("PUT", &xpath, json!({"type": "topic", "durable": true}))
            .await
            .status,
        204
    );
    let r = api
        .send("PUT", &format!("{xpath}2"), json!({"type": "bogus"}))
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .send(
            "PUT",
            "/api/exchanges/%2F/amq.mine",
            json!({"type": "direct"}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "not_authorised");
    let shown = api.json(&xpath).await;
    assert_eq!(shown["type"], "topic");
    assert_eq!(shown["durable"], true);
    assert_eq!(shown["internal"], false);
    let all = api.json("/api/exchanges/%2F").await;
    assert!(all.as_array().unwrap().iter().any(|e| e["name"] == ""));
    assert_eq!(api.json("/api/exchanges/%2F/amq.default").await["name"], "");
    assert_eq!(
        api.send("PUT", &format!("/api/queues/%2F/{q}"), json!({}))
            .await
            .status,
        201
    );

    let bpath = format!("/api/bindings/%2F/e/{x}/q/{q}");
    let r = api
        .send(
            "POST",
            &bpath,
            json!({"routing_key": "a.*", "arguments": {}}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some(format!("{q}/a.%252A").as_str()));
    let r = api
        .send(
            "POST",
            &bpath,
            json!({"routing_key": "b c", "arguments": {"k": "v"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let listed = api.json(&bpath).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["properties_key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"a.%2A"), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("b+c~")), "{keys:?}");
    let one = &listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["routing_key"] == "a.*")
        .unwrap();
    assert_eq!(one["source"], x.as_str());
    assert_eq!(one["destination_type"], "queue");
    // The queue's own list has the default exchange's implicit binding too.
    let qb = api.json(&format!("/api/queues/%2F/{q}/bindings")).await;
    assert!(
        qb.as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "" && b["routing_key"] == q.as_str())
    );

    let publish = |key: &str| {
        json!({"properties": {"headers": {"n": 1}}, "routing_key": key,
               "payload": "aGk=", "payload_encoding": "base64"})
    };
    let r = api
        .send("POST", &format!("{xpath}/publish"), publish("a.b"))
        .await;
    assert_eq!(r.json(), json!({"routed": true}));
    let (_conn, ch) = b.channel().await;
    let got = ch
        .basic_get(q.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"hi");
    assert_eq!(got.delivery.exchange.as_str(), x.as_str());

    // Delete one binding by its key (the Location's last segment, as sent back).
    let r = api.get(&format!("{bpath}/a.%252A")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(api.delete(&format!("{bpath}/a.%252A")).await.status, 204);
    assert_eq!(api.get(&format!("{bpath}/a.%252A")).await.status, 404);
    let r = api
        .send("POST", &format!("{xpath}/publish"), publish("a.b"))
        .await;
    assert_eq!(r.json(), json!({"routed": false}));

    // Exchange-to-exchange.
    let x2 = name("hx2");
    api.send(
        "PUT",
        &format!("/api/exchanges/%2F/{x2}"),
        json!({"type": "fanout"}),
    )
    .await;
    let r = api
        .send(
            "POST",
            &format!("/api/bindings/%2F/e/{x}/e/{x2}"),
            json!({"routing_key": ""}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some(format!("{x2}/~").as_str()));
    let src = api.json(&format!("{xpath}/bindings/source")).await;
    assert!(
        src.as_array()
            .unwrap()
            .iter()
            .any(|b| b["destination"] == x2.as_str() && b["destination_type"] == "exchange")
    );

    assert_eq!(api.delete(&xpath).await.status, 204);
    assert_eq!(api.get(&xpath).await.status, 404);
}

#[tokio::test]
async fn channels_show_their_numbers_modes_prefetch_consumers_and_unacked() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let conn = lapin::Connection::connect(&b.uri(), Default::default())
        .await
        .unwrap();
    let _plain = conn.create_channel().await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = name("chv");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.basic_qos(7, Default::default()).await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&ch, &q, 3).await;
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "t".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    for _ in 0..3 {
        consumer.next().await.unwrap().unwrap();
    }
    let chans = api.json("/api/channels?sort=number").await;
    let chans = chans.as_array().unwrap();
    assert_eq!(chans.len(), 2, "{chans:?}");
    let (a, c) = (&chans[0], &chans[1]);
    assert_eq!(
        (a["number"].clone(), c["number"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(a["confirm"], false);
    assert_eq!(a["consumer_count"], 0);
    assert_eq!(c["confirm"], true);
    assert_eq!(c["transactional"], false);
    assert_eq!(c["prefetch_count"], 7);
    assert_eq!(c["consumer_count"], 1);
    assert_eq!(c["messages_unacknowledged"], 3);
    assert_eq!(c["messages_unconfirmed"], 0);
    assert!(c["name"].as_str().unwrap().ends_with(" (2)"));
    let listed = api.json("/api/connections").await;
    assert_eq!(listed[0]["auth_mechanism"], "PLAIN");
    ch.basic_ack(3, lapin::options::BasicAckOptions { multiple: true })
        .await
        .unwrap();
    // The ack is a method: once the next round trip is answered, the view has it.
    ch.basic_qos(7, Default::default()).await.unwrap();
    let chans = api.json("/api/channels?sort=number").await;
    assert_eq!(chans[1]["messages_unacknowledged"], 0);
    conn.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn connections_are_listed_and_a_delete_closes_one_with_320_and_the_reason() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let (conn, _ch) = b.channel().await;
    let listed = api.json("/api/connections").await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let c0 = &listed[0];
    assert_eq!(c0["user"], "guest");
    assert_eq!(c0["vhost"], "/");
    assert_eq!(c0["channels"], 1);
    assert_eq!(c0["port"], b.addr.port());
    assert_eq!(c0["client_properties"]["product"], "lapin");
    let name = c0["name"].as_str().unwrap().to_string();
    assert_eq!(
        name,
        format!(
            "{}:{} -> {}",
            c0["peer_host"].as_str().unwrap(),
            c0["peer_port"],
            b.addr
        )
    );
    let enc: String =
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    assert_eq!(
        api.json(&format!("/api/connections/{enc}")).await["name"],
        name.as_str()
    );
    assert_eq!(api.json("/api/channels").await.as_array().unwrap().len(), 1);
    assert_eq!(
        api.delete(&format!("/api/connections/{enc}")).await.status,
        204
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while conn.status().connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lapin still connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        api.delete(&format!("/api/connections/{enc}")).await.status,
        404
    );

    // A raw client sees the code and the X-Reason text.
    let mut raw = Raw::open(b.addr).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let name = loop {
        let l = api.json("/api/connections").await;
        if let Some(c) = l.as_array().unwrap().first() {
            break c["name"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let enc: String =
        percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let r = request(
        api.0,
        "DELETE",
        &format!("/api/connections/{enc}"),
        Some(GUEST),
        &[("X-Reason", "maintenance")],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    loop {
        match raw.next_method().await {
            Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => {
                assert_eq!(cl.reply_code, 320);
                assert_eq!(cl.reply_text.as_str(), "CONNECTION_FORCED - maintenance");
                break;
            }
            Some(_) => continue,
            None => panic!("closed without connection.close"),
        }
    }
}

#[tokio::test]
async fn definitions_export_and_import_topology() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    api.send(
        "PUT",
        "/api/exchanges/%2F/dx",
        json!({"type": "direct", "durable": true}),
    )
    .await;
    api.send(
        "PUT",
        "/api/queues/%2F/dq",
        json!({"durable": true, "arguments": {"x-max-priority": 5}}),
    )
    .await;
    api.send(
        "POST",
        "/api/bindings/%2F/e/dx/q/dq",
        json!({"routing_key": "rk", "arguments": {"x-k": "v"}}),
    )
    .await;
    let (_conn, ch) = b.channel().await;
    ch.queue_declare(
        "excl".into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let defs = api.json("/api/definitions").await;
    assert_eq!(defs["rabbit_version"], "3.10.8");
    assert_eq!(defs["users"][0]["name"], "guest");
    assert_eq!(
        defs["users"][0]["hashing_algorithm"],
        "rabbit_password_hashing_sha256"
    );
    assert_eq!(defs["users"][0]["tags"], json!(["administrator"]));
    assert_eq!(defs["vhosts"], json!([{"name": "/"}]));
    assert_eq!(defs["permissions"][0]["configure"], ".*");
    assert_eq!(
        defs["queues"],
        json!([{"name": "dq", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-max-priority": 5}}])
    );
    assert_eq!(
        defs["exchanges"],
        json!([{"name": "dx", "vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}])
    );
    assert_eq!(
        defs["bindings"],
        json!([{"source": "dx", "vhost": "/", "destination": "dq", "destination_type": "queue", "routing_key": "rk", "arguments": {"x-k": "v"}}])
    );
    let per_vhost = api.json("/api/definitions/%2F").await;
    assert_eq!(
        per_vhost["queues"][0],
        json!({"name": "dq", "durable": true, "auto_delete": false, "arguments": {"x-max-priority": 5}})
    );

    // Into a fresh broker: the topology comes back, and it routes.
    let other = TestBroker::start_with_management().await;
    let api2 = Api::of(&other);
    let r = api2.send("POST", "/api/definitions", defs.clone()).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let again = api2.json("/api/definitions").await;
    assert_eq!(again["queues"], defs["queues"]);
    assert_eq!(again["exchanges"], defs["exchanges"]);
    assert_eq!(again["bindings"], defs["bindings"]);
    let r = api2
        .send("POST", "/api/exchanges/%2F/dx/publish", json!({"properties": {}, "routing_key": "rk", "payload": "p", "payload_encoding": "string"}))
        .await;
    assert_eq!(r.json(), json!({"routed": true}));
    let r = api2.send("POST", "/api/definitions", json!([1, 2])).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn lists_page_filter_sort_and_project_as_rabbitmq() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    for n in ["pa", "pb", "pc", "other"] {
        api.send("PUT", &format!("/api/queues/%2F/{n}"), json!({}))
            .await;
    }
    let page = api
        .json("/api/queues?page=2&page_size=2&name=p&sort=name")
        .await;
    assert_eq!(page["total_count"], 4);
    assert_eq!(page["filtered_count"], 3);
    assert_eq!(page["page_count"], 2);
    assert_eq!(page["page"], 2);
    assert_eq!(page["page_size"], 2);
    assert_eq!(page["item_count"], 1);
    assert_eq!(page["items"][0]["name"], "pc");
    let cols = api.json("/api/queues/%2F?name=%5Ep%5Bab%5D&use_regex=true&columns=name&sort=name&sort_reverse=true").await;
    assert_eq!(cols, json!([{"name": "pb"}, {"name": "pa"}]));
    assert_eq!(api.get("/api/queues?page=9").await.status, 400);
}

#[tokio::test]
async fn unfiltered_pages_walk_vhosts_then_names_in_order_either_way() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    assert_eq!(
        api.send("PUT", "/api/vhosts/v2", json!({})).await.status,
        201
    );
    // Declared out of order, in two vhosts.
    for (v, n) in [
        ("v2", "b"),
        ("%2F", "z"),
        ("v2", "a"),
        ("%2F", "y"),
        ("%2F", "x"),
    ] {
        let r = api
            .send("PUT", &format!("/api/queues/{v}/{n}"), json!({}))
            .await;
        assert_eq!(r.status, 201, "{v}/{n}");
    }
    let names = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                format!(
                    "{}/{}",
                    q["vhost"].as_str().unwrap(),
                    q["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let p1 = api.json("/api/queues?page=1&page_size=2").await;
    assert_eq!(names(&p1), ["//x", "//y"]);
    let p2 = api.json("/api/queues?page=2&page_size=2").await;
    assert_eq!(names(&p2), ["//z", "v2/a"]);
    assert_eq!(
        (p2["total_count"].clone(), p2["page_count"].clone()),
        (json!(5), json!(3))
    );
    let p3 = api.json("/api/queues?page=3&page_size=2").await;
    assert_eq!(
        (names(&p3), p3["item_count"].clone()),
        (vec!["v2/b".to_string()], json!(1))
    );
    let r1 = api
        .json("/api/queues?page=1&page_size=3&sort_reverse=true")
        .await;
    assert_eq!(names(&r1), ["v2/b", "v2/a", "//z"]);
    let v = api
        .json("/api/queues/v2?page=1&page_size=5&sort=name&columns=name")
        .await;
    assert_eq!(v["items"], json!([{"name": "a"}, {"name": "b"}]));
    // A deleted queue leaves the index.
    assert_eq!(
        api.send("DELETE", "/api/queues/%2F/y", json!({}))
            .await
            .status,
        204
    );
    let p1 = api.json("/api/queues?page=1&page_size=2").await;
    assert_eq!(names(&p1), ["//x", "//z"]);
}

#[tokio::test]
async fn rates_and_totals_come_from_the_statistics_sampler() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let (_conn, ch) = b.channel().await;
    let q = name("rates");
    ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    // Publishes until a sample shows a publish rate (the test broker samples every 50 ms).
    let path = format!("/api/queues/%2F/{q}");
    let mut published = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rate = loop {
        publish_confirmed(&ch, &q, 20).await;
        published += 20;
        let shown = api.json(&path).await;
        let r = shown["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap();
        if r > 0.0 {
            assert!(shown["messages_details"]["rate"].as_f64().unwrap() > 0.0);
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no publish rate: {shown}"
        );
    };
    assert!(rate.is_finite());
    // Once publishing stops, the overview's totals catch up with every message and the
    // rates fall back to 0.
    loop {
        let o = api.json("/api/overview").await;
        let stats = &o["message_stats"];
        if o["queue_totals"]["messages"] == published
            && stats["publish"] == published
            && stats["publish_details"]["rate"] == 0.0
        {
            assert_eq!(o["queue_totals"]["messages_ready"], published);
            assert_eq!(o["rates_mode"], "basic");
            let vh = api.json("/api/vhosts/%2F").await;
            assert_eq!(vh["messages"], published);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "totals never caught up: {o}"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_binary_serves_the_management_api_on_the_port_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let b = common::BinBroker::start(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = request(b.http, "GET", "/api/overview", Some(GUEST), &[], b"").await;
        assert_eq!(r.status, 200);
        let o = r.json();
        assert_eq!(o["product_name"], "Warren");
        let amqp = o["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["protocol"] == "amqp")
            .unwrap()
            .clone();
        assert_eq!(amqp["port"], b.addr.port());
    });
}

/// rabbitmqadmin sends booleans and counts as strings; RabbitMQ takes them.
#[tokio::test]
async fn string_booleans_and_counts_are_taken_as_rabbitmqadmin_sends_them() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let q = name("strq");
    let path = format!("/api/queues/%2F/{q}");
    let r = api
        .send(
            "PUT",
            &path,
            json!({"durable": "false", "auto_delete": "false"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(api.json(&path).await["durable"], false);
    let r = api
        .send(
            "PUT",
            "/api/exchanges/%2F/strx",
            json!({"type": "fanout", "durable": "true"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(api.json("/api/exchanges/%2F/strx").await["durable"], true);
    let got = api
        .send(
            "POST",
            &format!("{path}/get"),
            json!({"count": "3", "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    assert_eq!(got.json(), json!([]));
}

/// A body over 16 MiB is refused (413) from its declared length, without being read.
#[tokio::test]
async fn request_bodies_are_bounded() {
    let b = TestBroker::start_with_management().await;
    let at = b.http.unwrap();
    let mut s = TcpStream::connect(at).await.unwrap();
    let head = format!(
        "POST /api/definitions HTTP/1.1\r\nHost: {at}\r\nAuthorization: {GUEST}\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{{",
        16 * 1024 * 1024 + 1
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

/// Publishes `n` messages `m` to queue `q` through the default exchange, each waited for
/// (the channel is in confirm mode, so each is confirmed).
async fn publish_confirmed(ch: &lapin::Channel, q: &str, n: usize) {
    for _ in 0..n {
        ch.basic_publish(
            "".into(),
            q.into(),
            Default::default(),
            b"m",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Users, vhosts and permissions made over HTTP are what AMQP clients log in with; tags
/// gate the API as in RabbitMQ; deleting a vhost closes its connections with 320.
#[tokio::test]
async fn users_vhosts_and_permissions_over_http_govern_amqp_logins() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let r = api
        .send(
            "PUT",
            "/api/vhosts/tenant",
            json!({"description": "a tenant"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        api.send("PUT", "/api/vhosts/tenant", json!({}))
            .await
            .status,
        204
    );
    assert_eq!(api.json("/api/vhosts/tenant").await["name"], "tenant");
    let r = api
        .send(
            "PUT",
            "/api/users/alice",
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let alice = api.json("/api/users/alice").await;
    assert_eq!(alice["tags"], json!(["management"]));
    assert_eq!(alice["hashing_algorithm"], "rabbit_password_hashing_sha256");
    // No permissions yet: the vhost refuses her.
    assert!(b.connect_as("alice", "pw", "tenant").await.is_err());
    let r = api
        .send(
            "PUT",
            "/api/permissions/tenant/alice",
            json!({"configure": "^a-", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let perms = api.json("/api/users/alice/permissions").await;
    assert_eq!(perms[0]["configure"], "^a-");
    let conn = b.connect_as("alice", "pw", "tenant").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("a-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    // alice is a management user: she may log in to the API but not create users.
    let as_alice = basic("alice", "pw");
    let r = request(api.0, "GET", "/api/users", Some(&as_alice), &[], b"").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("not_authorized"))
    );
    let r = request(api.0, "GET", "/api/whoami", Some(&as_alice), &[], b"").await;
    assert_eq!(r.json()["name"], "alice");
    // A management user sees only the vhosts she has permissions in.
    api.send("PUT", "/api/queues/%2F/root-q", json!({})).await;
    let r = request(api.0, "GET", "/api/vhosts", Some(&as_alice), &[], b"").await;
    assert_eq!(r.json(), json!([api.json("/api/vhosts/tenant").await]));
    let r = request(api.0, "GET", "/api/queues", Some(&as_alice), &[], b"").await;
    let names: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].clone())
        .collect();
    assert_eq!(names, [json!("a-q")]);
    let r = request(api.0, "GET", "/api/queues/%2F", Some(&as_alice), &[], b"").await;
    assert_eq!(r.status, 401);
    // Over the API too, declares need configure on the queue (tags do not lift it).
    let put = |q: &'static str| request(api.0, "PUT", q, Some(&as_alice), &[], b"{}");
    assert_eq!(put("/api/queues/tenant/a-ok").await.status, 201);
    let r = put("/api/queues/tenant/other").await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("Access refused."))
    );
    assert_eq!(
        api.json("/api/vhosts/tenant").await["description"],
        "a tenant"
    );
    // A user without a management tag cannot use the API at all.
    api.send(
        "PUT",
        "/api/users/bob",
        json!({"password": "pw", "tags": ""}),
    )
    .await;
    let r = request(
        api.0,
        "GET",
        "/api/overview",
        Some(&basic("bob", "pw")),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    // A hash exported from RabbitMQ is accepted as it is.
    let r = api
        .send(
            "PUT",
            "/api/users/ref-sec",
            json!({"password_hash": "rV8LSLs6WTEfrgLH19yhT+kEGDEaL2/Fq1P+8K47+lzx6e15",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}),
        )
        .await;
    assert_eq!(r.status, 201);
    api.send(
        "PUT",
        "/api/permissions/tenant/ref-sec",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert!(b.connect_as("ref-sec", "s3cret-pw", "tenant").await.is_ok());
    // Deleting the vhost closes alice's connection with 320 and removes her queue.
    assert_eq!(api.delete("/api/vhosts/tenant").await.status, 204);
    let e = ch
        .queue_declare("a-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), 320, "{e:?}");
    assert_eq!(api.get("/api/vhosts/tenant").await.status, 404);
    let conn = b.connect_as("ref-sec", "s3cret-pw", "/").await;
    assert!(conn.is_err(), "no permissions in / for ref-sec");
    api.send(
        "PUT",
        "/api/permissions/%2F/alice",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let ch = b
        .connect_as("alice", "pw", "/")
        .await
        .unwrap()
        .create_channel()
        .await
        .unwrap();
    assert_eq!(api.delete("/api/users/alice").await.status, 204);
    // Her connections go with her, with RabbitMQ's reason.
    let e = ch
        .queue_declare("x".into(), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(common::code(&e), 320, "{e:?}");
    assert_eq!(api.get("/api/users/alice").await.status, 404);
}

/// Limits set over HTTP: a vhost's max-connections and a user's max-channels, answered on
/// AMQP with RabbitMQ's codes and texts.
#[tokio::test]
async fn limits_over_http_are_enforced_on_amqp() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    api.send("PUT", "/api/vhosts/lim", json!({})).await;
    api.send("PUT", "/api/users/u", json!({"password": "pw", "tags": ""}))
        .await;
    api.send(
        "PUT",
        "/api/permissions/lim/u",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let r = api
        .send(
            "PUT",
            "/api/vhost-limits/lim/max-connections",
            json!({"value": 1}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        api.json("/api/vhost-limits/lim").await,
        json!([{"vhost": "lim", "value": {"max-connections": 1}}])
    );
    let (_first, opened) = Raw::open_as(b.addr, "u", "pw", "lim").await;
    assert!(matches!(
        opened,
        Some(AMQPClass::Connection(c::AMQPMethod::OpenOk(_)))
    ));
    let (_second, opened) = Raw::open_as(b.addr, "u", "pw", "lim").await;
    match opened {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => assert_eq!(
            (cl.reply_code, cl.reply_text.as_str()),
            (
                530,
                "NOT_ALLOWED - access to vhost 'lim' refused for user 'u': connection limit (1) is reached"
            )
        ),
        other => panic!("{other:?}"),
    }
    drop(_first);
    api.delete("/api/vhost-limits/lim/max-connections").await;
    let r = api
        .send(
            "PUT",
            "/api/user-limits/u/max-channels",
            json!({"value": 1}),
        )
        .await;
    assert_eq!(r.status, 204);
    let (mut r1, _) = Raw::open_as(b.addr, "u", "pw", "lim").await;
    r1.open_channel(1).await;
    r1.send(
        2,
        AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
            Default::default(),
        )),
    )
    .await;
    match r1.next_method().await {
        Some(AMQPClass::Connection(c::AMQPMethod::Close(cl))) => assert_eq!(
            (cl.reply_code, cl.reply_text.as_str(), cl.class_id),
            (
                530,
                "NOT_ALLOWED - number of channels opened for user 'u' has reached the maximum allowed user limit of (1)",
                0
            )
        ),
        other => panic!("{other:?}"),
    }
}

/// Policies over HTTP apply to queues declared after them and are in the export.
#[tokio::test]
async fn policies_over_http_apply_to_later_declares() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let r = api
        .send(
            "PUT",
            "/api/policies/%2F/cap",
            json!({"pattern": "^capped-", "definition": {"max-length": 1, "ha-mode": "all"},
                   "apply-to": "queues", "priority": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        api.json("/api/policies/%2F/cap").await["pattern"],
        "^capped-"
    );
    let (_c, ch) = b.channel().await;
    ch.queue_declare("capped-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            "capped-q".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(common::ready(&ch, "capped-q").await, 1);
    let defs = api.json("/api/definitions").await;
    assert_eq!(defs["policies"][0]["name"], "cap");
    assert_eq!(api.delete("/api/policies/%2F/cap").await.status, 204);
    assert_eq!(api.get("/api/policies/%2F/cap").await.status, 404);
}

#[tokio::test]
async fn a_policy_change_applies_to_existing_queues_and_exchanges() {
    let b = TestBroker::start_with_management().await;
    let api = Api::of(&b);
    let (_c, ch) = b.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let publish = |x: &'static str, k: &'static str| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                x.into(),
                k.into(),
                Default::default(),
                b"m",
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    ch.queue_declare("old-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for _ in 0..5 {
        publish("", "old-q").await;
    }
    assert_eq!(common::ready(&ch, "old-q").await, 5);
    let r = api
        .send(
            "PUT",
            "/api/policies/%2F/trim",
            json!({"pattern": "^old-", "definition": {"max-length": 2}, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(r.status, 201);
    // Drop-head makes room at once, as RabbitMQ does when the policy lands.
    assert_eq!(common::ready(&ch, "old-q").await, 2);
    let shown = api.json("/api/queues/%2F/old-q").await;
    assert_eq!(shown["policy"], "trim");
    assert_eq!(
        shown["effective_policy_definition"],
        json!({"max-length": 2})
    );
    // Cleared: the limit is gone for what comes next.
    assert_eq!(api.delete("/api/policies/%2F/trim").await.status, 204);
    for _ in 0..3 {
        publish("", "old-q").await;
    }
    assert_eq!(common::ready(&ch, "old-q").await, 5);
    assert_eq!(
        api.json("/api/queues/%2F/old-q").await["policy"],
        Value::Null
    );

    // An alternate exchange set by policy on an exchange declared before it.
    ch.exchange_declare(
        "old-x".into(),
        lapin::ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("ae-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "the-ae".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "ae-q".into(),
        "the-ae".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish("old-x", "nowhere").await;
    assert_eq!(common::ready(&ch, "ae-q").await, 0);
    let r = api
        .send(
            "PUT",
            "/api/policies/%2F/ae",
            json!({"pattern": "^old-x$", "definition": {"alternate-exchange": "the-ae"},
                   "apply-to": "exchanges"}),
        )
        .await;
    assert_eq!(r.status, 201);
    publish("old-x", "nowhere").await;
    assert_eq!(common::ready(&ch, "ae-q").await, 1);
}
