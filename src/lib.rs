//! Warren: an AMQP 0-9-1 message broker that speaks RabbitMQ's dialect.
//!
//! Module map, socket to queue:
//! - [`server`] accepts TCP connections (and, with [`tls`]'s acceptor, AMQPS ones) and
//!   spawns one [`connection`] task each.
//! - [`connection`] owns the socket: handshake, frame decoding ([`protocol`]), heartbeats,
//!   and the connection's channels; it turns errors into `channel.close` / `connection.close`.
//! - [`channel`] is one channel's state machine: publishes, consumers, acks, confirms, tx.
//! - [`broker`] holds what connections share: vhosts with their exchanges and queues,
//!   routing, dispatch; [`auth`] its users and permissions.
//! - [`http`] is the management HTTP API (RabbitMQ's `/api` paths), on top of [`broker`].
//! - [`protocol`] is the sans-I/O wire format; [`error`] the one error type that reaches the
//!   wire; [`config`] and [`cli`] the settings.
#![warn(missing_docs, unreachable_pub)]

/// The RabbitMQ version whose behaviour Warren follows, as tools expect to read it
/// (definitions' `rabbitmq_version`, the management API's `rabbitmq_version`).
pub const RABBITMQ_VERSION: &str = "3.10.8";

pub mod auth;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
