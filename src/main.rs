//! The `warren` binary: parse flags, load `rabbit.toml`, bind, serve until SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use warren::broker::Broker;
use warren::cli::Cli;
use warren::config::Config;

// Every publish allocates its message and routing key, freed on another connection's task
// once delivered; mimalloc's per-thread free lists handle that pattern with less work than
// glibc's malloc (S1 broker CPU ~730 -> ~630 ns/msg) and keep less behind (S8 RSS 171 -> 105
// MiB). Transparent huge pages are off (`no_thp`): with them an idle broker held 45 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own C API, linked in with the allocator (libmimalloc-sys binds it only behind a
// feature that needs one more crate).
unsafe extern "C" {
    fn mi_collect(force: bool);
}

/// mimalloc gives freed memory back to the OS a while after it is freed (`purge_delay`, 1 s
/// in mimalloc 3), but only when some thread calls into the allocator after that: a broker
/// that went idle right after a queue of 1 GiB of 64 KiB messages was deleted kept 160 MiB
/// of RSS for as long as it stayed idle. This thread does the late purge once a second (a
/// few atomic loads when there is nothing to purge). A purge delay of 0 instead made S5
/// (1 KiB, 1 -> 1) about 45% slower: memory freed and reused at once was returned and
/// faulted in again.
fn spawn_purger() {
    let spawned = std::thread::Builder::new()
        .name("warren-purge".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: no preconditions; not forced, so only purges whose delay expired.
                unsafe { mi_collect(false) };
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the allocator purge thread: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    warren::telemetry::init(&config.log);
    spawn_purger();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(config))
}

fn load(cli: &Cli) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None if PathBuf::from("rabbit.toml").exists() => Config::load("rabbit.toml".as_ref())?,
        None => Config::default(),
    };
    if let Some(addr) = cli.bind {
        config.listeners = vec![addr];
    }
    if let Some(addr) = cli.prometheus_bind {
        config.prometheus.listener = addr;
        config.prometheus.enabled = true;
    }
    if let Some(addr) = cli.bind_tls {
        config.listeners_tls = vec![addr];
    }
    if let Some(addr) = cli.management_bind {
        config.management.listener = addr;
        config.management.enabled = true;
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(log) = &cli.log {
        config.log = log.clone();
    }
    config.check()?;
    Ok(config)
}

async fn serve(config: Config) -> ExitCode {
    // Certificates and keys are read before anything is bound: a bad file is a config
    // error, one line naming it.
    let tls = if config.uses_tls() {
        match warren::tls::Tls::load(&config.tls) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        eprintln!(
            "warren: cannot create data_dir {}: {e}",
            config.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let listeners = match warren::server::bind(&config.listeners).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
    };
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            // Tests and scripts read this line to find a port chosen by the OS.
            tracing::info!("listening on {a}");
            // A closed stdout (the reader went away) must not take the broker down.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "warren listening on {a}").and_then(|()| out.flush());
        }
    }
    let tls_listeners = match (&tls, config.listeners_tls.is_empty()) {
        (Some(_), false) => match warren::server::bind(&config.listeners_tls).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => Vec::new(),
    };
    for a in tls_listeners.iter().filter_map(|l| l.local_addr().ok()) {
        tracing::info!("listening on {a} (amqps)");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "warren amqps listening on {a}").and_then(|()| out.flush());
    }
    // The management API binds before the broker opens its stores, so a port in use fails
    // the boot at once, as an AMQP port in use does.
    let management = if config.management.enabled {
        match warren::http::bind(config.management.listener).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let Some(a) = management.as_ref().and_then(|l| l.local_addr().ok()) {
        let scheme = if config.management.tls {
            "https"
        } else {
            "http"
        };
        tracing::info!("management API listening on {a} ({scheme})");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "warren management listening on {a}").and_then(|()| out.flush());
    }
    let prometheus = if config.prometheus.enabled {
        match warren::metrics::bind(config.prometheus.listener).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let Some(a) = prometheus.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!("prometheus metrics listening on {a}");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "warren prometheus listening on {a}").and_then(|()| out.flush());
    }
    let amqp: Vec<_> = listeners
        .iter()
        .chain(&tls_listeners)
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let management_tls = config.management.tls;
    let data_dir = config.data_dir.clone();
    let broker = match Broker::open(config) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!(
                "warren: cannot open the data dir {}: {e}",
                data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = broker.load_definitions() {
        eprintln!("warren: {e}");
        return ExitCode::FAILURE;
    }
    // One stop signal for both servers: the API stops taking requests when the AMQP side
    // starts closing its connections.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = management.map(|l| {
        let http = l.local_addr().unwrap_or(config_listener(&broker));
        let api = warren::http::Api::new(broker.clone(), amqp.clone(), http);
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        match tls.as_ref().filter(|_| management_tls) {
            Some(t) => tokio::spawn(warren::http::serve_tls(l, t.management.clone(), api, stop)),
            None => tokio::spawn(warren::http::serve(l, api, stop)),
        }
    });
    if let Some(l) = prometheus {
        let mut rx = stop_rx.clone();
        tokio::spawn(warren::metrics::serve(
            l,
            broker.clone(),
            warren::node_name().into(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
    }
    let mut all: Vec<_> = listeners
        .into_iter()
        .map(warren::server::Listener::plain)
        .collect();
    if let Some(t) = &tls {
        all.extend(
            tls_listeners
                .into_iter()
                .map(|tcp| warren::server::Listener {
                    tcp,
                    tls: Some(t.amqp.clone()),
                }),
        );
    }
    warren::server::serve(all, broker.clone(), async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Some(api) = api {
        // Idle keep-alive clients are closed by the graceful shutdown; one stuck mid-request
        // does not hold the exit back for long.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), api).await;
    }
    broker.flush();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn config_listener(broker: &Broker) -> std::net::SocketAddr {
    broker.config.management.listener
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
