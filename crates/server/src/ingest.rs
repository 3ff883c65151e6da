//! OTLP/HTTP ingest: `POST /v1/traces`, `/v1/logs` and `/v1/metrics` (protobuf or JSON,
//! gzip), answering with OTLP's status semantics (`google.rpc.Status` bodies in the request's
//! encoding). The gRPC side is in `grpc.rs`.

use crate::budget::{BodyBudget, Held};
use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::{Export, ExportOutcome, OtlpIngest};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use prost::Message;
use skein_core::ErrorCode;
use skein_otlp::codec::{self, Encoding};
use skein_otlp::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse, ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    ExportTracePartialSuccess, ExportTraceServiceResponse, RpcStatus, Signal,
};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
struct HttpState {
    ingest: Arc<dyn OtlpIngest>,
    max_body: usize,
    budget: Arc<BodyBudget>,
    metrics: Arc<ServerMetrics>,
}

/// The OTLP/HTTP router: `POST` on the path of each of `signals`. Bodies over `max_body`
/// bytes (compressed or inflated) get 413; a request that would take `budget` past its limit
/// gets 429 as soon as its bytes arrive.
pub fn otlp_http_router(
    ingest: Arc<dyn OtlpIngest>,
    signals: &[Signal],
    max_body: usize,
    budget: Arc<BodyBudget>,
    metrics: Arc<ServerMetrics>,
) -> axum::Router {
    let mut r = axum::Router::new();
    for &signal in signals {
        r = r.route(
            signal.http_path(),
            post(move |st: State<HttpState>, headers: HeaderMap, body: Body| export_http(st, signal, headers, body)),
        );
    }
    r.layer(DefaultBodyLimit::disable()).with_state(HttpState { ingest, max_body, budget, metrics })
}

/// The metrics label of a signal's endpoint (traces keep the names they had first).
pub(crate) fn endpoint_label(signal: Signal, grpc: bool) -> &'static str {
    match (signal, grpc) {
        (Signal::Traces, false) => "otlp_http",
        (Signal::Logs, false) => "otlp_http_logs",
        (Signal::Metrics, false) => "otlp_http_metrics",
        (Signal::Traces, true) => "otlp_grpc",
        (Signal::Logs, true) => "otlp_grpc_logs",
        (Signal::Metrics, true) => "otlp_grpc_metrics",
    }
}

fn status_response(enc: Encoding, err: &ApiError) -> Response {
    let body = RpcStatus::new(err.code.grpc_code(), err.message.clone()).encode(enc);
    let mut resp = (err.status(), [(header::CONTENT_TYPE, enc.content_type())], body).into_response();
    if let Some(v) = err.retry_after_header() {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn decode_err(e: skein_otlp::DecodeError) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

async fn export_http(State(st): State<HttpState>, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    let t = Instant::now();
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let (enc, result) = match Encoding::from_content_type(ct) {
        // An unknown content type is answered as JSON, the only form a confused client can read.
        Err(e) => (Encoding::Json, Err(decode_err(e))),
        Ok(enc) => (enc, handle_http(&st, signal, &headers, body, enc).await),
    };
    let resp = match result {
        Ok(outcome) => {
            let body = match enc {
                Encoding::Json => json_response(signal, &outcome),
                Encoding::Protobuf => response_protobuf(signal, outcome),
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(enc.content_type()))], body).into_response()
        }
        Err(e) => status_response(enc, &e),
    };
    st.metrics.observe(endpoint_label(signal, false), resp.status().as_u16(), t.elapsed());
    resp
}

/// OTLP/JSON: a full success is `{}`, and int64 fields are decimal strings.
fn json_response(signal: Signal, o: &ExportOutcome) -> Vec<u8> {
    if o.rejected == 0 && o.message.is_empty() {
        return b"{}".to_vec();
    }
    let field = match signal {
        Signal::Traces => "rejectedSpans",
        Signal::Logs => "rejectedLogRecords",
        Signal::Metrics => "rejectedDataPoints",
    };
    let mut partial = serde_json::Map::new();
    partial.insert(field.into(), o.rejected.to_string().into());
    partial.insert("errorMessage".into(), o.message.clone().into());
    serde_json::to_vec(&serde_json::json!({ "partialSuccess": partial })).unwrap_or_default()
}

async fn handle_http(st: &HttpState, signal: Signal, headers: &HeaderMap, body: Body, enc: Encoding) -> Result<ExportOutcome, ApiError> {
    // Released when the answer is ready: the body (or what it became) is held until then.
    let mut held = Held::default();
    let raw = read_body(body, st.max_body, &st.budget, &mut held).await.inspect_err(|e| st.metrics.count_busy(e))?;
    let ce = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let body = codec::decompress(raw, ce, st.max_body).map_err(decode_err)?;
    // Inflated: the inflated bytes are what is kept. (A decoded JSON export is about the
    // size of its JSON, and replaces it.)
    st.budget.replace(&mut held, body.len()).inspect_err(|e| st.metrics.count_busy(e))?;
    match enc {
        Encoding::Protobuf => st.ingest.export_protobuf(signal, body).await,
        Encoding::Json => {
            let req = match signal {
                Signal::Traces => Export::Traces(codec::decode(&body, enc).map_err(decode_err)?),
                Signal::Logs => Export::Logs(codec::decode(&body, enc).map_err(decode_err)?),
                Signal::Metrics => Export::Metrics(codec::decode(&body, enc).map_err(decode_err)?),
            };
            st.ingest.export(req).await
        }
    }
}

/// How much of an oversized body is read and thrown away before answering 413: a client
/// still writing its body when the server answers and closes sees a broken pipe instead of
/// the 413, so the rest is drained, up to this bound.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes, taking each frame's bytes from `budget`
/// into `held` as it arrives; a larger body, or one the budget cannot take, is drained (up to
/// [`DRAIN_LIMIT`], nothing kept) and answered with 413, or 429.
async fn read_body(mut body: Body, limit: usize, budget: &BodyBudget, held: &mut Held) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let mut busy = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > limit || busy.is_some() {
            // Refused already: the rest is read only so the client sees the answer, and
            // nothing of it is kept.
            if !buf.is_empty() {
                buf = bytes::BytesMut::new();
                *held = Held::default();
            }
            if seen > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        match budget.take(held, data.len()) {
            Ok(()) => buf.extend_from_slice(&data),
            Err(e) => {
                busy = Some(e);
                buf = bytes::BytesMut::new();
                *held = Held::default();
            }
        }
    }
    if seen <= limit
        && let Some(e) = busy
    {
        return Err(e);
    }
    if seen > limit {
        *held = Held::default();
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes (otlp.max_body_size)"),
        ));
    }
    Ok(buf.freeze())
}

/// The protobuf `Export*ServiceResponse` of `signal` for an accepted export.
pub(crate) fn response_protobuf(signal: Signal, o: ExportOutcome) -> Vec<u8> {
    let partial = o.rejected > 0 || !o.message.is_empty();
    match signal {
        Signal::Traces => ExportTraceServiceResponse {
            partial_success: partial.then_some(ExportTracePartialSuccess { rejected_spans: o.rejected, error_message: o.message }),
        }
        .encode_to_vec(),
        Signal::Logs => ExportLogsServiceResponse {
            partial_success: partial.then_some(ExportLogsPartialSuccess { rejected_log_records: o.rejected, error_message: o.message }),
        }
        .encode_to_vec(),
        Signal::Metrics => ExportMetricsServiceResponse {
            partial_success: partial.then_some(ExportMetricsPartialSuccess { rejected_data_points: o.rejected, error_message: o.message }),
        }
        .encode_to_vec(),
    }
}
