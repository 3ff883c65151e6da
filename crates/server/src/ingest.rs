//! OTLP ingest: `POST /v1/traces` over HTTP (protobuf or JSON, gzip) and the gRPC
//! `TraceService`, both answering with OTLP's status semantics.

use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::{ExportOutcome, TraceIngest};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Limited};
use skein_core::ErrorCode;
use skein_otlp::codec::{self, Encoding};
use skein_otlp::proto::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
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
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, format!("request body is larger than the limit of {} bytes", st.max_body));
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > st.max_body as u64 {
            return Err(too_large());
        }
    }
    let raw: Bytes = match Limited::new(body, st.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Err(e) => return Err(ApiError::bad_request(format!("reading request body: {e}"))),
    };
    let ce = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let body = codec::decompress(raw, ce, st.max_body).map_err(decode_err)?;
    let req: ExportTraceServiceRequest = codec::decode(&body, enc).map_err(decode_err)?;
    st.ingest.export_traces(req).await
}

fn response(o: ExportOutcome) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (o.rejected > 0 || !o.message.is_empty())
            .then(|| ExportTracePartialSuccess { rejected_spans: o.rejected, error_message: o.message }),
    }
}

/// The gRPC `TraceService` over an ingest handler.
struct GrpcTraces {
    ingest: Arc<dyn TraceIngest>,
    metrics: Arc<ServerMetrics>,
}

fn grpc_status(e: &ApiError) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let code = tonic::Code::from_i32(e.code.grpc_code());
    match e.retry_after {
        Some(d) => tonic::Status::with_error_details(code, e.message.clone(), ErrorDetails::with_retry_info(Some(d))),
        None => tonic::Status::new(code, e.message.clone()),
    }
}

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let t = Instant::now();
        let r = self.ingest.export_traces(request.into_inner()).await;
        let code = match &r {
            Ok(_) => 200,
            Err(e) => e.code.http_status(),
        };
        self.metrics.observe("otlp_grpc", code, t.elapsed());
        r.map(|o| tonic::Response::new(response(o))).map_err(|e| grpc_status(&e))
    }
}

/// The gRPC `TraceService` server, accepting gzip and messages up to `max_message` bytes.
pub fn grpc_trace_service(
    ingest: Arc<dyn TraceIngest>,
    max_message: usize,
    metrics: Arc<ServerMetrics>,
) -> TraceServiceServer<impl TraceService> {
    TraceServiceServer::new(GrpcTraces { ingest, metrics })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message)
}
