//! The error every handler returns, with its code, message and optional retry hint.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skein_core::ErrorCode;
use std::time::Duration;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What was wrong, for the client.
    pub message: String,
    /// When to retry, for retryable errors.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Adds a retry hint.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn retry_after_header(&self) -> Option<HeaderValue> {
        self.retry_after.map(|d| HeaderValue::from(d.as_secs().max(1)))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Native API error body: `{"error": {"code": "...", "message": "..."}}`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let Some(v) = self.retry_after_header() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
