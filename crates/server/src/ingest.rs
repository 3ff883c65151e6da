//! OTLP/HTTP ingest: `POST /v1/traces` (protobuf or JSON, gzip), answering with OTLP's status
//! semantics (`google.rpc.Status` bodies in the request's encoding). The gRPC side is in
//! `grpc.rs`.

use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::{ExportOutcome, TraceIngest};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use skein_core::ErrorCode;
use skein_otlp::codec::{self, Encoding};
use skein_otlp::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse, RpcStatus};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
struct HttpState {
    ingest: Arc<dyn TraceIngest>,
    max_body: usize,
    metrics: Arc<ServerMetrics>,
}

/// The OTLP/HTTP router: `POST /v1/traces`. Bodies over `max_body` bytes (compressed or
/// inflated) get 413.
pub fn otlp_http_router(ingest: Arc<dyn TraceIngest>, max_body: usize, metrics: Arc<ServerMetrics>) -> axum::Router {
    axum::Router::new().route("/v1/traces", post(export_http)).layer(DefaultBodyLimit::disable()).with_state(HttpState {
        ingest,
        max_body,
        metrics,
    })
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

async fn export_http(State(st): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let t = Instant::now();
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let (enc, result) = match Encoding::from_content_type(ct) {
        // An unknown content type is answered as JSON, the only form a confused client can read.
        Err(e) => (Encoding::Json, Err(decode_err(e))),
        Ok(enc) => (enc, handle_http(&st, &headers, body, enc).await),
    };
    let resp = match result {
        Ok(outcome) => {
            let resp = response(outcome);
            let body = match (enc, &resp.partial_success) {
                // OTLP/JSON: a full success is `{}`, and int64 fields are decimal strings.
                (Encoding::Json, None) => b"{}".to_vec(),
                (Encoding::Json, Some(p)) => serde_json::to_vec(&serde_json::json!({"partialSuccess": {"rejectedSpans": p.rejected_spans.to_string(), "errorMessage": p.error_message}})).unwrap_or_default(),
                (Encoding::Protobuf, _) => codec::encode(&resp, enc),
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(enc.content_type()))], body).into_response()
        }
        Err(e) => status_response(enc, &e),
    };
    st.metrics.observe("otlp_http", resp.status().as_u16(), t.elapsed());
    resp
}

async fn handle_http(st: &HttpState, headers: &HeaderMap, body: Body, enc: Encoding) -> Result<ExportOutcome, ApiError> {
    let raw = read_body(body, st.max_body).await?;
    let ce = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let body = codec::decompress(raw, ce, st.max_body).map_err(decode_err)?;
    match enc {
        Encoding::Protobuf => st.ingest.export_traces_protobuf(body).await,
        Encoding::Json => {
            let req: ExportTraceServiceRequest = codec::decode(&body, enc).map_err(decode_err)?;
            st.ingest.export_traces(req).await
        }
    }
}

/// How much of an oversized body is read and thrown away before answering 413: a client
/// still writing its body when the server answers and closes sees a broken pipe instead of
/// the 413, so the rest is drained, up to this bound.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a request body of at most `limit` bytes; a larger one is drained (up to
/// [`DRAIN_LIMIT`]) and answered with 413.
async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        } else {
            buf = bytes::BytesMut::new();
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes (otlp.max_body_size)"),
        ));
    }
    Ok(buf.freeze())
}

pub(crate) fn response(o: ExportOutcome) -> ExportTraceServiceResponse {
    let partial = o.rejected > 0 || !o.message.is_empty();
    ExportTraceServiceResponse {
        partial_success: partial.then_some(ExportTracePartialSuccess { rejected_spans: o.rejected, error_message: o.message }),
    }
}
