//! HTTP basic authentication for every `/api` path, as RabbitMQ's management plugin does
//! it: no credentials is a bare 401 with `WWW-Authenticate` (left off for script requests,
//! see [`authenticate`]), wrong ones a 401
//! `{"error":"not_authorized","reason":"Login failed"}`.
//!
//! The broker's users log in with their passwords; one without `management`,
//! `policymaker`, `monitoring` or `administrator` gets 401 `Not management user`. A
//! successful check puts a [`Principal`] (name and tags) into the request's extensions;
//! handlers that need a tag ask [`Principal::require`]. Talks to `crate::auth` (through
//! the broker) only.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::Api;
use super::error::ApiError;

tokio::task_local! {
    /// The caller of the request being handled.
    pub(super) static CALLER: Principal;
}

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Principal {
    /// User name.
    pub name: String,
    /// RabbitMQ user tags (`administrator`, `monitoring`, `management`, ...).
    pub tags: Vec<String>,
}

impl Principal {
    /// Whether the user has `tag`, or one that includes it (`administrator` has them all;
    /// `monitoring` and `policymaker` include `management`).
    pub fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| {
            t == tag
                || t == "administrator"
                || (tag == "management" && (t == "monitoring" || t == "policymaker"))
        })
    }

    /// Whether the caller sees every vhost (`monitoring`, `administrator`); others see
    /// only the vhosts they have permissions in, as in RabbitMQ.
    pub fn sees_all_vhosts(&self) -> bool {
        self.has("monitoring")
    }

    /// Refuses callers without `tag`, with RabbitMQ's 401 for a missing privilege.
    ///
    /// # Errors
    /// 401 `not_authorized`.
    pub fn require(&self, tag: &str) -> Result<(), ApiError> {
        if self.has(tag) {
            Ok(())
        } else {
            Err(ApiError::not_authorized(format!("Not {tag} user")))
        }
    }
}

/// The user these credentials name, if they are right.
fn principal(api: &Api, user: &str, pass: &str) -> Option<Principal> {
    api.broker.auth.login(user, pass).map(|u| Principal {
        name: u.name.clone(),
        tags: u.tags.clone(),
    })
}

/// Tags that open the management API at all (RabbitMQ's `management` and above).
const MANAGEMENT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

/// `user:password` from an `Authorization: Basic ...` header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let v = value.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.into(), p.into()))
}

/// The middleware: authenticates, or answers 401.
///
/// A browser that sees `WWW-Authenticate` on a script's request opens its own password
/// dialog (headless Chromium just holds the request), so requests that say they come from
/// a script (`X-Requested-With: XMLHttpRequest`, as the dashboard's do) get their 401
/// without it; everyone else gets RabbitMQ's header.
pub(super) async fn authenticate(State(api): State<Api>, req: Request, next: Next) -> Response {
    let from_script = req
        .headers()
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    let mut r = check(api, req, next).await;
    if from_script {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

async fn check(api: Api, mut req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
        );
        return r;
    };
    let found = credentials(value).and_then(|(u, p)| principal(&api, &u, &p));
    match found {
        Some(p)
            if !MANAGEMENT_TAGS
                .iter()
                .any(|t| p.tags.iter().any(|x| x == t)) =>
        {
            ApiError::not_authorized("Not management user").into_response()
        }
        Some(p) => {
            req.extensions_mut().insert(p.clone());
            // Also for the vhost lookups deep in handlers (`Api::vhost`, `Api::vhosts`).
            CALLER.scope(p, next.run(req)).await
        }
        None => ApiError::not_authorized("Login failed").into_response(),
    }
}
