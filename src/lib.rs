//! Warren: an AMQP 0-9-1 message broker that speaks RabbitMQ's dialect.
//!
//! Module map, socket to queue:
//! - [`server`] accepts TCP connections (and, with [`tls`]'s acceptor, AMQPS ones) and
//!   spawns one [`connection`] task each.
//! - [`connection`] owns the socket: handshake, frame decoding ([`protocol`]), heartbeats,
//!   and the connection's channels; it turns errors into `channel.close` / `connection.close`.
//! - [`channel`] is one channel's state machine: publishes, consumers, acks, confirms, tx.
//! - [`broker`] holds what connections share: vhosts with their exchanges and queues,
//!   routing, dispatch; [`auth`] its users and permissions; [`alarms`] the memory and disk
//!   alarms that block publishers.
//! - [`http`] is the management HTTP API (RabbitMQ's `/api` paths), on top of [`broker`];
//!   [`metrics`] the Prometheus endpoint.
//! - [`protocol`] is the sans-I/O wire format; [`error`] the one error type that reaches the
//!   wire; [`config`] and [`cli`] the settings.
#![warn(missing_docs, unreachable_pub)]

/// The RabbitMQ version whose behaviour Warren follows, as tools expect to read it
/// (definitions' `rabbitmq_version`, the management API's `rabbitmq_version`).
pub const RABBITMQ_VERSION: &str = "3.10.8";

pub mod alarms;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

/// RabbitMQ's node name for this broker, `warren@HOSTNAME` (the management API's `node`,
/// the metrics' `rabbitmq_node`).
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("warren@{host}")
}
