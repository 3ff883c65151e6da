//! The native query API under `/api/v1` (ARCHITECTURE §6).

use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::params::{self, Params};
use crate::{QueryService, SqlOutput};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use skein_core::query::TraceOptions;
use skein_core::{ErrorCode, TraceId};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub(crate) struct QState {
    pub(crate) query: Arc<dyn QueryService>,
    pub(crate) metrics: Arc<ServerMetrics>,
}

/// Runs a query on the blocking pool and records its latency under `group`.
pub(crate) async fn blocking<T: Send + 'static>(
    st: &QState,
    group: &'static str,
    f: impl FnOnce(&dyn QueryService) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let t = Instant::now();
    let q = Arc::clone(&st.query);
    let r = tokio::task::spawn_blocking(move || f(q.as_ref()))
        .await
        .unwrap_or_else(|e| Err(ApiError::new(ErrorCode::Internal, format!("query task failed: {e}"))));
    st.metrics.observe(group, r.as_ref().map(|_| 200).unwrap_or_else(|e| e.code.http_status()), t.elapsed());
    r
}

pub(crate) fn router(query: Arc<dyn QueryService>, metrics: Arc<ServerMetrics>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/traces/{trace_id}/logs", get(trace_logs))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/metrics", get(metric_series))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/replica-lag", get(replica_lag))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/traces", get(search))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .route("/api/v1/dependencies", get(dependencies))
        .route("/api/v1/sql", axum::routing::post(sql))
        .with_state(QState { query, metrics })
}

pub(crate) fn parse_trace_id(s: &str) -> Result<TraceId, ApiError> {
    TraceId::from_hex(s).map_err(|e| ApiError::bad_request(format!("invalid trace id {s:?}: {e}")))
}

async fn trace(State(st): State<QState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let id = parse_trace_id(&id)?;
    let p = Params::parse(raw.as_deref());
    let adjust_skew = match p.get("adjust") {
        None => false,
        Some("skew") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("parameter adjust={other:?}: the only adjustment is \"skew\"")));
        }
    };
    let found = blocking(&st, "trace", move |q| q.trace(id, TraceOptions { adjust_skew })).await?;
    found.map(Json).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("trace {id} not found")))
}

/// `GET /api/v1/traces/{trace_id}/logs[?span_id=]`: every log record of the trace (or span),
/// oldest first.
async fn trace_logs(State(st): State<QState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let trace_id = parse_trace_id(&id)?;
    let p = Params::parse(raw.as_deref());
    p.only(&["span_id", "limit"])?;
    let span_id = p
        .get("span_id")
        .map(|s| skein_core::SpanId::from_hex(s).map_err(|e| ApiError::bad_request(format!("invalid span id {s:?}: {e}"))))
        .transpose()?;
    let q = skein_core::query::LogQuery {
        trace_id: Some(trace_id),
        span_id,
        oldest_first: true,
        limit: p.limit_or(params::MAX_LIMIT)?,
        ..Default::default()
    };
    let logs = blocking(&st, "logs", move |qs| qs.logs(&q)).await?;
    Ok(Json(json!({ "trace_id": trace_id.to_hex(), "logs": logs })))
}

/// `GET /api/v1/logs?service=&node=&severity=&trace_id=&correlation_id=&q=&start=&end=&limit=`.
async fn logs(State(st): State<QState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = params::log_search(&Params::parse(raw.as_deref()))?;
    let logs = blocking(&st, "logs", move |qs| qs.logs(&q)).await?;
    Ok(Json(json!({ "logs": logs })))
}

/// `GET /api/v1/metrics?name=&node=&start=&end=&step=&agg=`.
async fn metric_series(State(st): State<QState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = params::metric_query(&Params::parse(raw.as_deref()), now_ns())?;
    Ok(Json(blocking(&st, "metrics", move |qs| qs.metrics(&q)).await?))
}

/// `GET /api/v1/nodes`.
async fn nodes(State(st): State<QState>) -> Result<Json<Value>, ApiError> {
    let nodes = blocking(&st, "nodes", |q| q.nodes()).await?;
    Ok(Json(json!({ "nodes": nodes })))
}

/// `GET /api/v1/replica-lag?start=&end=&step=`.
async fn replica_lag(State(st): State<QState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let w = params::replica_lag(&Params::parse(raw.as_deref()), now_ns())?;
    let replicas = blocking(&st, "replica_lag", move |q| q.replica_lag(w.start_ns, w.end_ns, w.step_ns)).await?;
    Ok(Json(json!({
        "replicas": replicas,
        "start_unix_nano": w.start_ns,
        "end_unix_nano": w.end_ns,
        "step_ns": w.step_ns,
    })))
}

/// `GET /api/v1/alerts`: firing alerts, then recently resolved ones.
async fn alerts(State(st): State<QState>) -> Result<Json<Value>, ApiError> {
    let alerts = blocking(&st, "alerts", |q| q.alerts()).await?;
    Ok(Json(json!({ "alerts": alerts })))
}

async fn search(State(st): State<QState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = params::native_search(&Params::parse(raw.as_deref()))?;
    let traces = blocking(&st, "search", move |qs| qs.search(&q)).await?;
    Ok(Json(json!({ "traces": traces })))
}

async fn services(State(st): State<QState>) -> Result<Json<Value>, ApiError> {
    let s = blocking(&st, "services", |q| q.services()).await?;
    Ok(Json(json!({ "services": s })))
}

async fn operations(State(st): State<QState>, Path(service): Path<String>) -> Response {
    let r = blocking(&st, "operations", move |q| q.operations(&service)).await;
    match r {
        Ok(ops) => {
            let ops: Vec<Value> =
                ops.into_iter().map(|(name, kind)| json!({"name": name, "span_kind": skein_core::query::span_kind_name(kind)})).collect();
            Json(json!({ "operations": ops })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Default window of the dependency graph, as Jaeger's: the last 24 hours.
pub(crate) const DEPENDENCY_LOOKBACK_NS: i64 = 24 * 3600 * 1_000_000_000;

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// `GET /api/v1/dependencies?start=&end=` (Unix ns; default the last 24 hours).
async fn dependencies(State(st): State<QState>, RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(raw.as_deref());
    let end = p.int_in("end", "Unix ns")?.unwrap_or_else(now_ns);
    let start = p.int_in("start", "Unix ns")?.unwrap_or(end.saturating_sub(DEPENDENCY_LOOKBACK_NS));
    if end < start {
        return Err(ApiError::bad_request("parameter end must not be before start"));
    }
    let deps = blocking(&st, "dependencies", move |q| q.dependencies(start, end)).await?;
    let deps: Vec<Value> = deps
        .into_iter()
        .map(|d| json!({"parent": d.parent, "child": d.child, "call_count": d.call_count, "error_count": d.error_count}))
        .collect();
    Ok(Json(json!({ "dependencies": deps })))
}

/// `POST /api/v1/sql` with `{"query": "..."}`; `Accept: application/vnd.apache.arrow.stream`
/// for Arrow IPC instead of JSON.
async fn sql(State(st): State<QState>, headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body is not JSON: {e} (expected {{\"query\": \"SELECT ...\"}})")))?;
    let Some(query) = v.get("query").and_then(Value::as_str).map(str::to_string) else {
        return Err(ApiError::bad_request("request body has no string field \"query\" (expected {\"query\": \"SELECT ...\"})"));
    };
    let arrow = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .any(|h| h.split(',').any(|t| t.trim().split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(crate::ARROW_STREAM))));
    match blocking(&st, "sql", move |q| q.sql(&query, arrow)).await? {
        SqlOutput::Json(v) => Ok(Json(v).into_response()),
        SqlOutput::Arrow(bytes) => Ok(([(axum::http::header::CONTENT_TYPE, crate::ARROW_STREAM)], bytes).into_response()),
    }
}
