//! The `warren` binary itself: config errors, a port in use, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::Raw;

/// The binary, with its management API and metrics on ports of the OS's choosing (15672
/// and 15692 may be taken, and tests run in parallel).
fn warren() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.args(["--management-bind", "127.0.0.1:0"]);
    c.args(["--prometheus-bind", "127.0.0.1:0"]);
    c
}

#[test]
fn unknown_config_key_is_named_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rabbit.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"frame_maxx = 4096\n")
        .unwrap();
    let out = warren().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frame_maxx"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn out_of_range_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rabbit.toml");
    std::fs::write(&path, "channel_max = 0\n").unwrap();
    let out = warren().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("channel_max"));
}

#[test]
fn a_port_in_use_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = warren()
        .args(["--bind", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_closes_clients_with_320_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = warren()
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let mut client = Raw::open(addr).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(client.expect_connection_close().await, 320);
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// Both loopback families are served when configured, as the defaults are (`localhost` is
/// `::1` first for Node 17+ and others); clients complete a handshake on each.
#[tokio::test]
async fn loopback_listeners_on_both_families_each_serve_clients() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        // The skip-with-a-warning path is unit-tested in `server`.
        eprintln!("no IPv6 loopback on this machine: nothing to test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rabbit.toml");
    std::fs::write(&config, "listeners = [\"127.0.0.1:0\", \"[::1]:0\"]\n").unwrap();
    // The AMQP lines come first, then the management API's.
    let mut child = warren()
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        addrs.push(line.trim().rsplit(' ').next().unwrap().parse().unwrap());
    }
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    for a in addrs {
        let mut client = Raw::connect(a).await;
        let opened = client.handshake(2047, 131072, 0).await;
        assert!(
            matches!(
                opened,
                Some(amq_protocol::protocol::AMQPClass::Connection(
                    amq_protocol::protocol::connection::AMQPMethod::OpenOk(_)
                ))
            ),
            "{a}: {opened:?}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_definitions_file_that_cannot_load_stops_the_boot_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("defs.json");
    std::fs::write(
        &defs,
        r#"{"queues": [{"name": "q", "vhost": "nowhere", "durable": true}]}"#,
    )
    .unwrap();
    let config = dir.path().join("rabbit.toml");
    std::fs::write(
        &config,
        format!("load_definitions = {:?}\n", defs.display().to_string()),
    )
    .unwrap();
    let out = warren()
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("defs.json") && last.contains("queue 'q'"),
        "{err}"
    );
}

/// `[management] enabled = false` and `[prometheus] enabled = false`: neither listens, and
/// only the AMQP line is on stdout.
#[test]
fn the_management_api_and_metrics_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rabbit.toml");
    std::fs::write(
        &config,
        "[management]\nenabled = false\n[prometheus]\nenabled = false\n",
    )
    .unwrap();
    // Not `warren()`: its --management-bind would turn the API back on.
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("--config")
        .arg(&config)
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("warren listening on"), "{line}");
    // Once it serves AMQP, the management line would have been printed already.
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let _client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(Raw::open(addr));
    let _ = child.kill();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(!rest.contains("management"), "{rest}");
    assert!(!rest.contains("prometheus"), "{rest}");
    let _ = child.wait();
}
