//! Command line: `warren [--config FILE] [--bind ADDR:PORT] [--bind-tls ADDR:PORT]
//! [--management-bind ADDR:PORT] [--prometheus-bind ADDR:PORT] [--data-dir DIR]`.
//!
//! Flags override `rabbit.toml`. A leaf module; `main` applies the result to the config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Warren, an AMQP 0-9-1 message broker that speaks RabbitMQ's dialect.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Config file; `rabbit.toml` in the working directory is used when it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, replacing the config's `listeners`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<SocketAddr>,
    /// AMQPS listen address, replacing the config's `listeners_tls` (`[tls]` must name
    /// the certificate and key).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind_tls: Option<SocketAddr>,
    /// Management HTTP API listen address, replacing `[management] listener` (and turning
    /// the API on).
    #[arg(long, value_name = "ADDR:PORT")]
    pub management_bind: Option<SocketAddr>,
    /// Prometheus endpoint listen address, replacing `[prometheus] listener` (and turning
    /// it on).
    #[arg(long, value_name = "ADDR:PORT")]
    pub prometheus_bind: Option<SocketAddr>,
    /// Data directory, replacing the config's `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, replacing the config's `log` (e.g. `debug`).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}
