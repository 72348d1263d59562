//! The web dashboard in a real browser: headless Chromium, driven over the Chrome DevTools
//! Protocol (a websocket, JSON commands), against the real broker's management listener on
//! 127.0.0.1:0. The test logs in through the page, declares a queue through its form,
//! publishes through the queue page, and sees the depth change on the page; the broker is
//! asked over AMQP too, so the page cannot pass by showing what it wishes. Screenshots go to
//! `target/dashboard-screenshots/`.
//!
//! Chromium comes from Debian's `chromium` package: when it is missing and the test runs as
//! root with apt-get, the test installs it (the README's test command installs what it
//! needs); otherwise it fails saying so, unless `WARREN_SKIP_BROWSER=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{TestBroker, name, ready};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the page gets for anything (a browser start on a busy 2-core machine is slow).
const PAGE_WAIT: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(b))
                    .find(|f| f.is_file())
            })
        })
}

/// Finds Chromium, installing Debian's package when it can.
fn find_or_install_chromium() -> Option<PathBuf> {
    if let Some(c) = chromium() {
        return Some(c);
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        eprintln!("dashboard test: installing Debian's chromium package");
        let apt = |args: &[&str]| {
            std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !apt(&["install", "-y", "-q", "chromium"]) {
            let _ = apt(&["update", "-q"]);
            apt(&["install", "-y", "-q", "chromium"]);
        }
    }
    chromium()
}

/// One DevTools session on one page.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next: u64,
}

impl Cdp {
    /// Sends a command (on the page's session once attached) and returns its result,
    /// skipping the events that arrive meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let m = tokio::time::timeout(PAGE_WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("chromium closed the DevTools socket")
                .expect("DevTools socket error");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("DevTools JSON");
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates JavaScript in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "page script threw: {js}: {r}"
        );
        r["result"]["value"].clone()
    }

    /// Waits until `js` is true in the page: the DOM shows what the test waits for.
    async fn until(&mut self, what: &str, js: &str) {
        let end = tokio::time::Instant::now() + PAGE_WAIT;
        while self.eval(js).await != json!(true) {
            if tokio::time::Instant::now() > end {
                let error = self
                    .eval("document.querySelector('#error').textContent")
                    .await;
                panic!("timed out waiting for {what} (page error: {error})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Starts headless Chromium with DevTools on a free port; returns it and the browser's
/// websocket address (from the line it prints on stderr).
async fn launch(browser: &Path, profile: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox", // CI runs as root, where Chromium's sandbox will not start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,900",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(PAGE_WAIT, async {
        while let Some(line) = lines.next_line().await.expect("chromium stderr") {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_string();
            }
        }
        panic!("chromium exited without a DevTools address")
    })
    .await
    .expect("chromium did not start DevTools in time");
    // Keep draining stderr so Chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test]
async fn the_dashboard_logs_in_declares_a_queue_publishes_and_shows_the_depth() {
    let Some(browser) = find_or_install_chromium() else {
        if std::env::var_os("WARREN_SKIP_BROWSER").is_some() {
            eprintln!("skipped: no chromium and WARREN_SKIP_BROWSER is set");
            return;
        }
        panic!(
            "the dashboard test needs Chromium: apt-get install chromium (or set WARREN_SKIP_BROWSER=1)"
        );
    };
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let tb = TestBroker::start_with_management().await;
    let http = tb.http.expect("management API");
    let profile = tempfile::tempdir().unwrap();
    let (_chromium, ws_url) = launch(&browser, profile.path()).await;
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("connect to DevTools");
    let mut cdp = Cdp {
        ws,
        session: String::new(),
        next: 0,
    };
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = attached["sessionId"].as_str().unwrap().to_string();
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": format!("http://{http}/")}))
        .await;
    cdp.until(
        "the login form",
        "document.readyState === 'complete' && !!document.querySelector('#login')",
    )
    .await;

    // A wrong password is refused on the page, with no way in.
    cdp.eval(
        "document.querySelector('#login [name=user]').value = 'guest';
         document.querySelector('#login [name=pass]').value = 'wrong';
         document.querySelector('#login').requestSubmit(); true",
    )
    .await;
    cdp.until(
        "the refusal",
        "document.querySelector('#login-error').textContent.length > 0",
    )
    .await;
    assert_eq!(
        cdp.eval("document.querySelector('#nav').hidden").await,
        json!(true)
    );

    cdp.eval(
        "document.querySelector('#login [name=pass]').value = 'guest';
         document.querySelector('#login').requestSubmit(); true",
    )
    .await;
    cdp.until(
        "the overview",
        "!document.querySelector('#nav').hidden && !!document.querySelector('#rates')",
    )
    .await;
    cdp.until(
        "the overview's totals",
        "document.querySelector('.totals').textContent.includes('Connections')",
    )
    .await;
    cdp.screenshot(&shots.join("overview.png")).await;

    // Declare a queue through the page's form.
    let q = name("dash");
    cdp.eval("location.hash = '#queues'; true").await;
    cdp.until(
        "the queues page",
        "!!document.querySelector('#declare-queue')",
    )
    .await;
    cdp.eval(&format!(
        "document.querySelector('#declare-queue [name=name]').value = {};
         document.querySelector('#declare-queue').requestSubmit(); true",
        json!(q)
    ))
    .await;
    let cell = format!("document.querySelector('[data-queue={}]')", json!(q));
    cdp.until("the new queue in the list", &format!("!!{cell}"))
        .await;
    assert_eq!(cdp.eval(&format!("{cell}.textContent")).await, json!("0"));
    let (conn, ch) = tb.channel().await;
    assert_eq!(ready(&ch, &q).await, 0, "the page declared the queue");

    // Publish through the queue page; its depth shows 1, and the broker has it.
    cdp.eval(&format!(
        "location.hash = '#queue/%2F/' + encodeURIComponent({}); true",
        json!(q)
    ))
    .await;
    cdp.until("the queue page", "!!document.querySelector('#publish')")
        .await;
    cdp.eval(
        "document.querySelector('#publish [name=payload]').value = 'hello from the dashboard';
         document.querySelector('#publish').requestSubmit(); true",
    )
    .await;
    cdp.until(
        "the depth to show 1",
        "document.querySelector('#queue-depth') && document.querySelector('#queue-depth').textContent === '1'",
    )
    .await;
    assert_eq!(ready(&ch, &q).await, 1, "the page published the message");
    cdp.screenshot(&shots.join("queue.png")).await;

    // Get it back through the page (requeued), then the list shows the depth too.
    cdp.eval("document.querySelector('#get-messages').requestSubmit(); true")
        .await;
    cdp.until(
        "the message on the page",
        "document.querySelector('#got').textContent.includes('hello from the dashboard')",
    )
    .await;
    cdp.eval("location.hash = '#queues'; true").await;
    cdp.until(
        "the list's depth to show 1",
        &format!("!!{cell} && {cell}.textContent === '1'"),
    )
    .await;
    cdp.screenshot(&shots.join("queues.png")).await;
    assert_eq!(ready(&ch, &q).await, 1, "the get requeued");

    // Close the AMQP connection from the connections page; the client hears the reason.
    cdp.eval("location.hash = '#connections'; true").await;
    cdp.until(
        "the connection's close button",
        "[...document.querySelectorAll('#view button')].some((b) => b.textContent === 'Close')",
    )
    .await;
    cdp.screenshot(&shots.join("connections.png")).await;
    // The page asks confirm() first; the test is the one saying yes.
    cdp.eval(
        "window.confirm = () => true;
         [...document.querySelectorAll('#view button')].find((b) => b.textContent === 'Close').click(); true",
    )
    .await;
    cdp.until(
        "the list without the connection",
        "!!document.querySelector('#view table') && ![...document.querySelectorAll('#view button')].some((b) => b.textContent === 'Close')",
    )
    .await;
    // lapin learns of the close on its own reader task: wait for it, bounded.
    let end = tokio::time::Instant::now() + PAGE_WAIT;
    while conn.status().connected() {
        assert!(
            tokio::time::Instant::now() < end,
            "the page's close never reached the AMQP client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The page and its assets are served without credentials, with their types; the API
/// behind them still asks for them.
#[tokio::test]
async fn the_page_and_assets_are_served_without_auth() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = TestBroker::start_with_management().await;
    let http = tb.http.unwrap();
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/api/overview", "application/json"),
    ] {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let head = out.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        if path.starts_with("/api") {
            assert!(head.starts_with("http/1.1 401"), "{path}: {head}");
            assert!(head.contains("www-authenticate: basic"), "{path}: {head}");
        } else {
            assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
            assert!(
                head.contains(&format!("content-type: {kind}")),
                "{path}: {head}"
            );
            assert!(head.contains("cache-control:"), "{path}: {head}");
        }
    }
    // The page's own requests say they are scripts: their 401 has no WWW-Authenticate,
    // so the browser leaves the refusal to the page.
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6d3Jvbmc=\r\n\
          X-Requested-With: XMLHttpRequest\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let out = out.to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 401"), "{out}");
    assert!(!out.contains("www-authenticate"), "{out}");
    assert!(out.contains("login failed"), "{out}");
}
