//! The collector's network front: OTLP ingest over gRPC and HTTP, the native query API, the
//! Jaeger query API, the operational endpoints, and the alert webhook client.
//!
//! This crate knows HTTP, gRPC and OTLP status semantics, and nothing about storage: it talks
//! to the engine through the traits below, which the collector binary implements over the
//! store and the query engine. Routers are plain functions returning an `axum::Router`, so
//! tests drive them with `tower::ServiceExt::oneshot` and no socket.

mod api;
mod budget;
mod error;
mod grpc;
mod ingest;
mod jaeger;
mod ops;
mod params;
pub mod process;
mod webhook;

pub use budget::{BodyBudget, Held};
pub use error::ApiError;
pub use grpc::{GrpcLogsService, GrpcMetricsService, GrpcTraceService, OtlpGrpcService};
pub use ingest::otlp_http_router;
pub use ops::ServerMetrics;
pub use params::parse_go_duration;
pub use webhook::{Webhook, WebhookOptions, WebhookStats};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

use serde_json::Value;
use skein_core::TraceId;
use skein_core::query::{Dependency, LogQuery, MetricQuery, SearchParams, TraceOptions};
use skein_otlp::{ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest, Signal};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future (the traits below must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an accepted export amounted to, for the OTLP `partial_success` field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Items (spans, log records, data points) rejected; zero means full success.
    pub rejected: i64,
    /// Why they were rejected.
    pub message: String,
}

/// A decoded OTLP export (an OTLP/JSON body, decoded by the server).
#[derive(Debug, Clone, PartialEq)]
pub enum Export {
    /// Spans.
    Traces(ExportTraceServiceRequest),
    /// Log records.
    Logs(ExportLogsServiceRequest),
    /// Metric data points.
    Metrics(ExportMetricsServiceRequest),
}

impl Export {
    /// The export's signal.
    pub fn signal(&self) -> Signal {
        match self {
            Self::Traces(_) => Signal::Traces,
            Self::Logs(_) => Signal::Logs,
            Self::Metrics(_) => Signal::Metrics,
        }
    }
}

/// Accepts OTLP exports: the collector stores them, the agent queues them.
pub trait OtlpIngest: Send + Sync + 'static {
    /// Accepts a decoded export; resolves once what was accepted is durable.
    ///
    /// # Errors
    /// An [`ApiError`] whose code decides the HTTP/gRPC status and whether the client retries.
    fn export(&self, req: Export) -> BoxFuture<'_, Result<ExportOutcome, ApiError>>;

    /// Accepts an export given as the protobuf encoding of the signal's `Export*ServiceRequest`
    /// (the gRPC message or an OTLP/HTTP protobuf body, already decompressed).
    ///
    /// # Errors
    /// As [`OtlpIngest::export`], plus `BadRequest` for malformed protobuf.
    fn export_protobuf(&self, signal: Signal, body: bytes::Bytes) -> BoxFuture<'_, Result<ExportOutcome, ApiError>>;
}

/// Answers queries. Methods may take milliseconds of CPU; the server calls them on the
/// blocking pool, never on an async worker.
pub trait QueryService: Send + Sync + 'static {
    /// The assembled trace in the native shape (ARCHITECTURE §6), `None` if unknown.
    ///
    /// # Errors
    /// Engine failures.
    fn trace(&self, id: TraceId, opts: TraceOptions) -> Result<Option<Value>, ApiError>;
    /// Trace summaries matching `q`, newest first.
    ///
    /// # Errors
    /// Engine failures.
    fn search(&self, q: &SearchParams) -> Result<Vec<Value>, ApiError>;
    /// Service names, sorted.
    ///
    /// # Errors
    /// Engine failures.
    fn services(&self) -> Result<Vec<String>, ApiError>;
    /// (operation, span kind) pairs of a service, sorted.
    ///
    /// # Errors
    /// Engine failures.
    fn operations(&self, service: &str) -> Result<Vec<(String, i8)>, ApiError>;
    /// One trace in Jaeger's JSON shape, `None` if unknown. Times are as the nodes reported
    /// them: Skein never adjusts clock skew silently (the native API's `?adjust=skew` does, with
    /// a warning on every moved span), so Jaeger's `raw=true` is always in effect.
    ///
    /// # Errors
    /// Engine failures.
    fn jaeger_trace(&self, id: TraceId) -> Result<Option<Value>, ApiError>;
    /// Full traces matching `q` in Jaeger's JSON shape, newest first.
    ///
    /// # Errors
    /// Engine failures.
    fn jaeger_search(&self, q: &SearchParams) -> Result<Vec<Value>, ApiError>;
    /// Service dependency edges among spans that start within `[start_ns, end_ns]`.
    ///
    /// # Errors
    /// Engine failures.
    fn dependencies(&self, start_ns: i64, end_ns: i64) -> Result<Vec<Dependency>, ApiError>;
    /// Runs one read-only SQL statement. `arrow` asks for an Arrow IPC stream instead of the
    /// JSON `{"columns", "rows", "truncated"}`.
    ///
    /// # Errors
    /// `BadRequest` naming the problem (syntax with its position, unknown names, refused
    /// statements), `Timeout`, `ResourceExhausted` past the memory limit.
    fn sql(&self, query: &str, arrow: bool) -> Result<SqlOutput, ApiError>;
    /// Log records matching `q` (`GET /api/v1/logs`, `GET /api/v1/traces/{id}/logs`), each once.
    ///
    /// # Errors
    /// Engine failures.
    fn logs(&self, q: &LogQuery) -> Result<Vec<Value>, ApiError>;
    /// The series of one metric (`GET /api/v1/metrics`).
    ///
    /// # Errors
    /// `BadRequest` for too many steps; engine failures.
    fn metrics(&self, q: &MetricQuery) -> Result<Value, ApiError>;
    /// Every node that has sent data (`GET /api/v1/nodes`).
    ///
    /// # Errors
    /// Engine failures.
    fn nodes(&self) -> Result<Vec<Value>, ApiError>;
    /// The lag of every replica reporting within `[start_ns, end_ns]`, with a series of the
    /// largest lag per `step_ns` (`GET /api/v1/replica-lag`).
    ///
    /// # Errors
    /// `BadRequest` for too many steps; engine failures.
    fn replica_lag(&self, start_ns: i64, end_ns: i64, step_ns: i64) -> Result<Vec<Value>, ApiError>;
    /// Firing alerts, then recently resolved ones (`GET /api/v1/alerts`).
    ///
    /// # Errors
    /// None from the collector; the signature leaves room for a remote evaluator.
    fn alerts(&self) -> Result<Vec<Value>, ApiError>;
}

/// The answer of a SQL query.
#[derive(Debug)]
pub enum SqlOutput {
    /// `{"columns": [...], "rows": [[...]], "truncated": bool}`.
    Json(Value),
    /// An Arrow IPC stream.
    Arrow(Vec<u8>),
}

/// Liveness, readiness and self-metrics.
pub trait Ops: Send + Sync + 'static {
    /// `Ok` once the collector serves (WAL replayed), else why not.
    ///
    /// # Errors
    /// The reason the collector is not ready.
    fn ready(&self) -> Result<(), String>;
    /// Appends Prometheus text for the engine's metrics.
    fn render_metrics(&self, out: &mut String);
}

/// Everything the query port serves: native API, Jaeger API, ops.
pub fn query_router(query: Arc<dyn QueryService>, ops: Arc<dyn Ops>, metrics: Arc<ServerMetrics>) -> axum::Router {
    api::router(Arc::clone(&query), Arc::clone(&metrics))
        .merge(jaeger::router(query, Arc::clone(&metrics)))
        .merge(ops::router(ops, metrics))
}

#[cfg(test)]
mod tests;
