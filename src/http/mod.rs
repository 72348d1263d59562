//! The management HTTP API: the first part of RabbitMQ's management plugin (`/api/...`),
//! served with axum on `[management] listener` (127.0.0.1:15672 by default), over HTTPS
//! with `[management] tls` ([`serve_tls`], the acceptor from [`crate::tls`]).
//!
//! This file builds the router and runs the server; each resource has its own module
//! (`overview` also holds vhosts, nodes and health checks; `connections` also channels and
//! consumers). Every `/api` route goes through [`auth::authenticate`] (HTTP basic auth,
//! giving a [`auth::Principal`]); errors are RabbitMQ's JSON ([`error`]); list endpoints
//! take RabbitMQ's paging and filtering parameters ([`pagination`]).
//!
//! Dependencies flow one way: http → broker. The broker knows nothing of HTTP. Handlers
//! run on the same runtime as the AMQP connections, so none of them may block: their
//! broker calls take only short locks, and definition writes go through
//! `crate::broker::blocking` inside the vhost operations. Request bodies are capped at
//! [`MAX_BODY`].

pub mod access;
pub mod alarms;
pub mod auth;
pub mod bindings;
pub mod connections;
pub mod dashboard;
pub mod definitions;
pub mod error;
pub mod exchanges;
pub mod overview;
pub mod pagination;
pub mod queues;
pub mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::broker::vhost::VHost;
use error::{ApiError, ApiResult};

/// Largest request body accepted (definitions imports are the big ones): 16 MiB. Larger
/// bodies are answered 413 without being read.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

pub use crate::RABBITMQ_VERSION;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct Api {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The AMQP listeners' real addresses (for `listeners` and the port health check).
    pub amqp: Arc<Vec<SocketAddr>>,
    /// This API's own address.
    pub http: SocketAddr,
    /// RabbitMQ's node name, `warren@HOSTNAME`.
    pub node: Arc<str>,
    /// When the API started (the node's `uptime`).
    pub started: std::time::Instant,
}

impl Api {
    /// State for a broker whose AMQP listeners are at `amqp` and this API at `http`.
    pub fn new(broker: Arc<Broker>, amqp: Vec<SocketAddr>, http: SocketAddr) -> Self {
        Self {
            broker,
            amqp: Arc::new(amqp),
            http,
            node: crate::node_name().into(),
            started: std::time::Instant::now(),
        }
    }

    /// The vhost named in a path, or 404.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub fn vhost(&self, name: &str) -> ApiResult<Arc<VHost>> {
        let v = self.broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if !self.may_see(&v.name) {
            return Err(ApiError::access_refused());
        }
        Ok(v)
    }

    /// Checks the caller's AMQP permission on a resource, as RabbitMQ's management API does
    /// for declares, deletes, publishes, gets and binds (tags do not lift permissions).
    ///
    /// # Errors
    /// 401 `not_authorised` `Access refused.` (RabbitMQ's answer to a 403).
    pub fn allow(
        &self,
        vhost: &str,
        perm: crate::auth::Perm,
        kind: crate::auth::Kind,
        name: &str,
    ) -> ApiResult<()> {
        let Ok(user) = auth::CALLER.try_with(|p| p.name.clone()) else {
            return Ok(());
        };
        let auth = &self.broker.auth;
        crate::auth::Cache::default()
            .check(
                auth.generation(),
                || auth.grant(vhost, &user),
                crate::auth::Subject { user: &user, vhost },
                perm,
                kind,
                name,
            )
            .map_err(ApiError::from)
    }

    /// Whether the caller may see a vhost: every one for `monitoring` and `administrator`,
    /// else those it has permissions in (outside a request: all).
    fn may_see(&self, vhost: &str) -> bool {
        auth::CALLER
            .try_with(|p| p.sees_all_vhosts() || self.broker.auth.has_access(vhost, &p.name))
            .unwrap_or(true)
    }

    /// The vhosts a list endpoint covers: one (path given) or all.
    ///
    /// # Errors
    /// 404 for a named vhost that does not exist.
    pub fn vhosts(&self, name: Option<&str>) -> ApiResult<Vec<Arc<VHost>>> {
        match name {
            Some(n) => Ok(vec![self.vhost(n)?]),
            None => Ok(self
                .broker
                .vhosts()
                .into_iter()
                .filter(|v| self.may_see(&v.name))
                .collect()),
        }
    }
}

/// Runs work that grows with the broker's size (a listing of every queue, an export, an
/// import) so that the AMQP connections on this worker thread move to another meanwhile
/// (`block_in_place` on the multi-threaded runtime), as the broker does for disk I/O.
pub(crate) fn offload<R>(f: impl FnOnce() -> R) -> R {
    crate::broker::blocking(f)
}

/// The router: every `/api` path, behind basic auth, and the dashboard's page and assets
/// ([`dashboard`]), without; anything else is a 404.
pub fn router(api: Api) -> Router {
    let routes = Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/whoami", get(overview::whoami))
        .route("/api/nodes", get(overview::nodes))
        .route("/api/nodes/{node}", get(overview::node))
        .route(
            "/api/nodes/{node}/memory-high-watermark",
            put(alarms::put_memory_limit),
        )
        .route(
            "/api/nodes/{node}/disk-free-limit",
            put(alarms::put_disk_limit),
        )
        .route("/api/vhosts", get(overview::vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(overview::vhost)
                .put(access::put_vhost)
                .delete(access::delete_vhost),
        )
        .route(
            "/api/vhosts/{vhost}/permissions",
            get(access::vhost_permissions),
        )
        .route("/api/users", get(access::users))
        .route(
            "/api/users/{user}",
            get(access::user)
                .put(access::put_user)
                .delete(access::delete_user),
        )
        .route(
            "/api/users/{user}/permissions",
            get(access::user_permissions),
        )
        .route("/api/permissions", get(access::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access::permission)
                .put(access::put_permission)
                .delete(access::delete_permission),
        )
        .route("/api/topic-permissions", get(access::topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access::topic_permission)
                .put(access::put_topic_permission)
                .delete(access::delete_topic_permission),
        )
        .route("/api/vhost-limits", get(access::vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(access::vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{limit}",
            put(access::put_vhost_limit).delete(access::delete_vhost_limit),
        )
        .route("/api/user-limits", get(access::user_limits))
        .route("/api/user-limits/{user}", get(access::user_limits))
        .route(
            "/api/user-limits/{user}/{limit}",
            put(access::put_user_limit).delete(access::delete_user_limit),
        )
        .route("/api/policies", get(access::policies))
        .route("/api/policies/{vhost}", get(access::policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(access::policy)
                .put(access::put_policy)
                .delete(access::delete_policy),
        )
        .route("/api/aliveness-test/{vhost}", get(overview::aliveness))
        .route("/api/health/checks/alarms", get(alarms::health_alarms))
        .route(
            "/api/health/checks/local-alarms",
            get(alarms::health_local_alarms),
        )
        .route(
            "/api/health/checks/virtual-hosts",
            get(overview::health_vhosts),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(overview::health_port),
        )
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(overview::health_quorum),
        )
        .route("/api/exchanges", get(exchanges::list_all))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::show)
                .put(exchanges::declare)
                .delete(exchanges::delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(exchanges::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings::exchange_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings::exchange_destination),
        )
        .route("/api/queues", get(queues::list_all))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::show)
                .put(queues::declare)
                .delete(queues::delete),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(queues::purge))
        .route("/api/queues/{vhost}/{name}/get", post(queues::get_messages))
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(bindings::queue_bindings),
        )
        .route("/api/bindings", get(bindings::list_all))
        .route("/api/bindings/{vhost}", get(bindings::list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings::between).post(bindings::create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(bindings::show).delete(bindings::delete),
        )
        .route("/api/connections", get(connections::list))
        .route(
            "/api/connections/{name}",
            get(connections::show).delete(connections::close),
        )
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::list_vhost),
        )
        .route("/api/channels", get(connections::channels))
        .route("/api/consumers", get(connections::consumers))
        .route("/api/consumers/{vhost}", get(connections::consumers_vhost))
        .route(
            "/api/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::authenticate,
        ))
        .merge(dashboard::routes());
    routes
        .fallback(|| async { ApiError::not_found().into_response() })
        // A declared length over the limit is refused before any of the body is read; a
        // chunked body is cut off by `DefaultBodyLimit` once it passes the limit.
        .layer(axum::middleware::from_fn(refuse_large))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// 413 for a request whose `Content-Length` is over [`MAX_BODY`].
async fn refuse_large(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            error: "payload_too_large".into(),
            reason: format!("request bodies are limited to {MAX_BODY} bytes"),
        }
        .into_response();
    }
    next.run(req).await
}

/// Binds the API's listener.
///
/// # Errors
/// The bind error, naming the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (management): {e}"),
        )
    })
}

/// Serves the API on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    serve_on(listener, api, stop).await;
}

/// Serves the API over HTTPS on `listener` until `stop` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    api: Api,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let limit = std::time::Duration::from_secs(api.broker.config.handshake_timeout);
    let listener = TlsListener {
        tcp: listener,
        acceptor,
        limit,
        handshakes: tokio::task::JoinSet::new(),
    };
    serve_on(listener, api, stop).await;
}

async fn serve_on<L>(
    listener: L,
    api: Api,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    // The API's rates and totals come from the sampler; it lives as long as the API.
    let every =
        std::time::Duration::from_millis(api.broker.config.management.collect_statistics_interval);
    let sampler = tokio::spawn(api.broker.clone().run_sampler(every));
    let app = router(api);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("management API stopped: {e}");
    }
    sampler.abort();
}

/// An HTTPS listener for axum: accepts TCP and hands axum a stream only once its TLS
/// handshake is done. Each handshake runs in a task of its own (bounded by the
/// handshake timeout), so a slow or silent client never holds up the next one; one that
/// fails is logged at debug and dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    limit: std::time::Duration,
    /// Handshakes under way; each yields its stream, or `None` when it failed.
    handshakes: tokio::task::JoinSet<Option<(TlsStream, SocketAddr)>>,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsStream, SocketAddr) {
        loop {
            tokio::select! {
                r = self.tcp.accept() => match r {
                    Ok((tcp, peer)) => {
                        let (acceptor, limit) = (self.acceptor.clone(), self.limit);
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => Some((tls, peer)),
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "management TLS handshake failed: {e}");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "management TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("management accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(accepted)) = done {
                        return accepted;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
