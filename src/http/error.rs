//! Errors of the management API, answered as RabbitMQ's management plugin does: a JSON
//! body `{"error": ..., "reason": ...}` with the matching status (404 `Object Not Found`,
//! 400 `bad_request`, 401 `not_authorized`, 405 without a body).
//!
//! Handlers return [`ApiError`]; broker errors (`AmqpError`) map to 400 with RabbitMQ's
//! reason text (the detail after `NAME - `), except 404 and 405 which keep their meaning.
//! Talks to `crate::error` only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::AmqpError;

/// What a handler failed with.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error` field.
    pub error: String,
    /// `reason` field.
    pub reason: String,
}

/// The handlers' result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// 404 `{"error":"Object Not Found","reason":"Not Found"}`.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found".into(),
            reason: "Not Found".into(),
        }
    }

    /// 400 `{"error":"bad_request","reason":REASON}`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request".into(),
            reason: reason.into(),
        }
    }

    /// 401 `{"error":"not_authorized","reason":REASON}`.
    pub fn not_authorized(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized".into(),
            reason: reason.into(),
        }
    }

    /// 401 `{"error":"not_authorised","reason":"Access refused."}`: what RabbitMQ answers
    /// an operation the AMQP side refuses with 403 (an `amq.*` name, the default exchange).
    pub fn access_refused() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised".into(),
            reason: "Access refused.".into(),
        }
    }

    /// 500, for a broker failure (a store that refused a write).
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error".into(),
            reason: reason.into(),
        }
    }
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        // RabbitMQ's management reason is the protocol error's explanation without its
        // `NAME - ` label.
        let detail = e
            .text
            .split_once(" - ")
            .map_or(e.text.as_str(), |(_, d)| d)
            .to_string();
        match e.code {
            404 => Self::not_found(),
            403 => Self::access_refused(),
            541 => Self::internal(detail),
            _ => Self::bad_request(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "reason": self.reason});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

/// Parses a JSON request body as RabbitMQ does: anything that is not JSON is 400
/// `not_json`; an empty body is an empty object.
///
/// # Errors
/// 400 `not_json`.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request("not_json"))?;
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}
