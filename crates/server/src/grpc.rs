//! The OTLP/gRPC `TraceService`, served with a codec that hands the request body over as raw
//! bytes instead of decoding it into `opentelemetry-proto` structs: the engine decodes the
//! protobuf straight into Arrow (one pass, no per-attribute allocation) and writes the same
//! bytes to its WAL without re-encoding them. Responses are ordinary prost messages.

use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::{BoxFuture, TraceIngest};
use bytes::{Buf, Bytes};
use prost::Message;
use skein_otlp::ExportTraceServiceResponse;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The fully qualified gRPC service name.
const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Decodes nothing: the message body as `Bytes`. Encodes prost responses.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawDecoder;
struct ResponseEncoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn encode(&mut self, item: ExportTraceServiceResponse, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(format!("encoding response: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

pub(crate) fn grpc_status(e: &ApiError) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let code = tonic::Code::from_i32(e.code.grpc_code());
    match e.retry_after {
        Some(d) => tonic::Status::with_error_details(code, e.message.clone(), ErrorDetails::with_retry_info(Some(d))),
        None => tonic::Status::new(code, e.message.clone()),
    }
}

#[derive(Clone)]
struct Export {
    ingest: Arc<dyn TraceIngest>,
    metrics: Arc<ServerMetrics>,
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let t = Instant::now();
            let r = this.ingest.export_traces_protobuf(request.into_inner()).await;
            this.metrics.observe("otlp_grpc", r.as_ref().map(|_| 200).unwrap_or_else(|e| e.code.http_status()), t.elapsed());
            match r {
                Ok(o) => Ok(tonic::Response::new(crate::ingest::response(o))),
                Err(e) => Err(grpc_status(&e)),
            }
        })
    }
}

/// The gRPC `TraceService` (accepts gzip, messages up to `max_message` bytes) over an ingest
/// handler; add it to a `tonic::transport::Server`.
#[derive(Clone)]
pub struct TraceGrpcService {
    export: Export,
    max_message: usize,
}

/// The gRPC `TraceService` over `ingest`.
pub fn grpc_trace_service(ingest: Arc<dyn TraceIngest>, max_message: usize, metrics: Arc<ServerMetrics>) -> TraceGrpcService {
    TraceGrpcService { export: Export { ingest, metrics }, max_message }
}

impl tonic::server::NamedService for TraceGrpcService {
    const NAME: &'static str = SERVICE;
}

impl<B> tower::Service<http::Request<B>> for TraceGrpcService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented(format!("unknown method {path}: this service implements {EXPORT_PATH}")).into_http())
            });
        }
        let export = self.export.clone();
        let max = self.max_message;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                // Responses are a few bytes: compressing them would only cost CPU.
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            Ok(grpc.unary(export, req).await)
        })
    }
}
