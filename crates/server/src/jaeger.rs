//! The Jaeger query API (`/api/...`) with Jaeger's parameters and JSON envelope, so Grafana's
//! Jaeger data source and Jaeger UI work against Skein unchanged.

use crate::QueryService;
use crate::api::{QState, blocking};
use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::params::{self, Params};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use skein_core::TraceId;
use skein_core::query::span_kind_name as kind_name;
use std::sync::Arc;

pub(crate) fn router(query: Arc<dyn QueryService>, metrics: Arc<ServerMetrics>) -> axum::Router {
    axum::Router::new()
        .route("/api/services", get(services))
        .route("/api/services/{service}/operations", get(service_operations))
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/api/dependencies", get(dependencies))
        .with_state(QState { query, metrics })
}

/// Jaeger's envelope: `{data, total, limit, offset, errors}`.
fn envelope(data: Value, errors: Vec<Value>) -> Value {
    let total = data.as_array().map(|a| a.len()).unwrap_or(0);
    json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": if errors.is_empty() { Value::Null } else { Value::Array(errors) }})
}

fn jaeger_error(e: &ApiError) -> Response {
    let body = json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": e.code.http_status(), "msg": e.message}]});
    (e.status(), Json(body)).into_response()
}

async fn services(State(st): State<QState>) -> Response {
    match blocking(&st, "jaeger", |q| q.services()).await {
        Ok(s) => Json(envelope(json!(s), vec![])).into_response(),
        Err(e) => jaeger_error(&e),
    }
}

async fn service_operations(State(st): State<QState>, Path(service): Path<String>) -> Response {
    match blocking(&st, "jaeger", move |q| q.operations(&service)).await {
        Ok(ops) => {
            let mut names: Vec<String> = ops.into_iter().map(|(n, _)| n).collect();
            names.dedup();
            Json(envelope(json!(names), vec![])).into_response()
        }
        Err(e) => jaeger_error(&e),
    }
}

async fn operations(State(st): State<QState>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.as_deref());
    let Some(service) = p.get("service").map(str::to_string) else {
        return jaeger_error(&ApiError::bad_request("parameter 'service' is required"));
    };
    let kind = match p.get("spanKind").map(|v| params::span_kind("spanKind", v)).transpose() {
        Ok(k) => k,
        Err(e) => return jaeger_error(&e),
    };
    match blocking(&st, "jaeger", move |q| q.operations(&service)).await {
        Ok(ops) => {
            let data: Vec<Value> = ops
                .into_iter()
                .filter(|(_, k)| kind.is_none_or(|want| want == *k))
                .map(|(name, k)| json!({"name": name, "spanKind": if k == 0 { "" } else { kind_name(k) }}))
                .collect();
            Json(envelope(Value::Array(data), vec![])).into_response()
        }
        Err(e) => jaeger_error(&e),
    }
}

fn parse_jaeger_id(s: &str) -> Result<TraceId, ApiError> {
    TraceId::from_hex_padded(s).map_err(|e| ApiError::bad_request(format!("malformed trace id {s:?}: {e}")))
}

/// `raw=true` is accepted and ignored: Skein's Jaeger answers are always raw (see
/// `QueryService::jaeger_trace`).
async fn trace(State(st): State<QState>, Path(id): Path<String>) -> Response {
    let id = match parse_jaeger_id(&id) {
        Ok(id) => id,
        Err(e) => return jaeger_error(&e),
    };
    match blocking(&st, "jaeger", move |q| q.jaeger_trace(id)).await {
        Ok(Some(t)) => Json(envelope(json!([t]), vec![])).into_response(),
        Ok(None) => {
            let body = json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 404, "msg": "trace not found", "traceID": id.to_hex()}]});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Err(e) => jaeger_error(&e),
    }
}

async fn search(State(st): State<QState>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.as_deref());
    let ids: Vec<&str> = p.all("traceID").collect();
    if !ids.is_empty() {
        let mut parsed = Vec::new();
        for s in ids {
            match parse_jaeger_id(s) {
                Ok(id) => parsed.push(id),
                Err(e) => return jaeger_error(&e),
            }
        }
        let r = blocking(&st, "jaeger", move |q| {
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for id in parsed {
                match q.jaeger_trace(id)? {
                    Some(t) => found.push(t),
                    None => errors.push(json!({"msg": "trace not found", "traceID": id.to_hex()})),
                }
            }
            Ok((found, errors))
        })
        .await;
        return match r {
            Ok((found, errors)) => Json(envelope(Value::Array(found), errors)).into_response(),
            Err(e) => jaeger_error(&e),
        };
    }
    let q = match params::jaeger_search(&p, crate::api::now_ns()) {
        Ok(q) => q,
        Err(e) => return jaeger_error(&e),
    };
    match blocking(&st, "jaeger", move |qs| qs.jaeger_search(&q)).await {
        Ok(traces) => Json(envelope(Value::Array(traces), vec![])).into_response(),
        Err(e) => jaeger_error(&e),
    }
}

/// `GET /api/dependencies?endTs=<ms>&lookback=<ms>`: Jaeger's dependency links (default the
/// 24 hours before now).
async fn dependencies(State(st): State<QState>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.as_deref());
    let (end, lookback) = match (p.int_in("endTs", "Unix ms"), p.int_in("lookback", "ms")) {
        (Ok(e), Ok(l)) => (
            e.map(|ms| ms.saturating_mul(1_000_000)).unwrap_or_else(crate::api::now_ns),
            l.map(|ms| ms.saturating_mul(1_000_000)).unwrap_or(crate::api::DEPENDENCY_LOOKBACK_NS),
        ),
        (Err(e), _) | (_, Err(e)) => return jaeger_error(&e),
    };
    if lookback < 0 {
        return jaeger_error(&ApiError::bad_request(format!("parameter lookback={} must not be negative", lookback / 1_000_000)));
    }
    let start = end.saturating_sub(lookback);
    match blocking(&st, "jaeger", move |q| q.dependencies(start, end)).await {
        Ok(deps) => {
            let data: Vec<Value> =
                deps.into_iter().map(|d| json!({"parent": d.parent, "child": d.child, "callCount": d.call_count})).collect();
            Json(envelope(Value::Array(data), vec![])).into_response()
        }
        Err(e) => jaeger_error(&e),
    }
}
