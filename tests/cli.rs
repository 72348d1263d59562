//! The `warren` binary itself: config errors, a port in use, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::Raw;

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
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
