//! `warren-perf` end to end: its steady mode against the real `warren` binary, and its
//! latency floor, which needs no broker. The runs are short; what is checked is that the
//! summary is whole and consistent, not how fast anything was.

mod common;

use std::process::Command;

use common::BinBroker;
use serde_json::Value;

/// Runs warren-perf; returns its exit status and its JSON summary.
fn perf(args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .args(args)
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), summary)
}

fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

/// Every message published in the window is consumed, and the latency histogram holds
/// one entry per message consumed while measuring (give or take the window's edges).
fn assert_consistent(v: &Value) {
    assert_eq!(v["errors"], Value::Array(vec![]), "{v}");
    let (published, consumed) = (count(v, "published"), count(v, "consumed"));
    let latencies = count(&v["latency_us"], "count");
    assert!(published > 0 && consumed > 0, "{v}");
    assert!(consumed.abs_diff(published) <= 100, "{v}");
    assert!(latencies.abs_diff(consumed) <= 100, "{v}");
    let p50 = v["latency_us"]["p50"].as_f64().unwrap();
    let p99 = v["latency_us"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{v}");
}

const PACED: &[&str] = &["-s", "16", "-r", "2000", "-z", "1", "--warmup", "0.3"];

#[test]
fn steady_mode_against_warren_reports_rates_latency_and_broker_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BinBroker::start(dir.path());
    let port = broker.addr.port().to_string();
    let pid = broker.child.id().to_string();
    let mut args = vec!["--port", &port, "--broker-pid", &pid, "-q", "100"];
    args.extend_from_slice(PACED);
    let (ok, v) = perf(&args);
    assert!(ok, "{v}");
    assert_eq!(v["mode"], "steady", "{v}");
    assert_eq!(v["broker"]["product"], "Warren", "{v}");
    assert_consistent(&v);
    assert!(v["broker_cpu_s"].is_number(), "{v}");
    broker.stop();
}

#[test]
fn latency_floor_relays_every_record_without_a_broker() {
    let mut args = vec!["--latency-floor"];
    args.extend_from_slice(PACED);
    let (ok, v) = perf(&args);
    assert!(ok, "{v}");
    assert_eq!(v["mode"], "floor", "{v}");
    assert_consistent(&v);
    // The relay's own CPU time stands where a broker's would.
    assert!(v["broker_cpu_s"].is_number(), "{v}");
}

#[test]
fn latency_floor_refuses_a_body_too_small_for_the_timestamp() {
    let (ok, v) = perf(&["--latency-floor", "-s", "4", "-z", "0.2", "--warmup", "0"]);
    assert!(!ok, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("--size"), "{v}");
}
