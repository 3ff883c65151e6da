//! The OTLP/gRPC `TraceService`, `LogsService` and `MetricsService`, served with a codec that
//! hands the request body over as raw bytes instead of decoding it into `opentelemetry-proto`
//! structs: the collector decodes span protobuf straight into Arrow (one pass, no
//! per-attribute allocation) and writes the same bytes to its WAL without re-encoding them.
//! Responses are prost messages, encoded before they reach the codec.

use crate::budget::{BodyBudget, Held};
use crate::error::ApiError;
use crate::ops::ServerMetrics;
use crate::{BoxFuture, OtlpIngest};
use bytes::{Buf, Bytes};
use skein_otlp::Signal;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Decodes nothing: the message body as `Bytes`. Responses arrive encoded.
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
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
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
    signal: Signal,
    ingest: Arc<dyn OtlpIngest>,
    budget: Arc<BodyBudget>,
    metrics: Arc<ServerMetrics>,
}

/// What one call holds of the budget: filled by its body as frames arrive, switched to the
/// inflated message once tonic hands it over, dropped with the call.
#[derive(Clone, Default)]
struct CallHeld(Arc<parking_lot::Mutex<Held>>);

/// A request body that takes each data frame's bytes from the budget as it arrives, and
/// fails the call with `RESOURCE_EXHAUSTED` (tonic passes a `Status` error through) when the
/// budget is spent, before tonic has buffered the whole message.
struct BudgetBody<B> {
    inner: std::pin::Pin<Box<B>>,
    budget: Arc<BodyBudget>,
    held: CallHeld,
    metrics: Arc<ServerMetrics>,
}

impl<B> http_body::Body for BudgetBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = this.budget.take(&mut this.held.0.lock(), data.len())
                {
                    this.metrics.count_busy(&e);
                    return Poll::Ready(Some(Err(Box::new(grpc_status(&e)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Vec<u8>;
    type Future = BoxFuture<'static, Result<tonic::Response<Vec<u8>>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let t = Instant::now();
            let held = request.extensions().get::<CallHeld>().cloned().unwrap_or_default();
            let msg = request.into_inner();
            // The (inflated) message is what this call keeps from now on.
            let admitted = this.budget.replace(&mut held.0.lock(), msg.len()).inspect_err(|e| this.metrics.count_busy(e));
            let r = match admitted {
                Ok(()) => this.ingest.export_protobuf(this.signal, msg).await,
                Err(e) => Err(e),
            };
            let label = crate::ingest::endpoint_label(this.signal, true);
            this.metrics.observe(label, r.as_ref().map(|_| 200).unwrap_or_else(|e| e.code.http_status()), t.elapsed());
            match r {
                Ok(o) => Ok(tonic::Response::new(crate::ingest::response_protobuf(this.signal, o))),
                Err(e) => Err(grpc_status(&e)),
            }
        })
    }
}

/// An OTLP gRPC service (`TAG` is [`Signal::tag`]: 1 traces, 2 logs, 3 metrics), accepting
/// gzip and zstd and messages up to a limit; add it to a `tonic::transport::Server`.
#[derive(Clone)]
pub struct OtlpGrpcService<const TAG: u8> {
    export: Export,
    max_message: usize,
}

impl<const TAG: u8> OtlpGrpcService<TAG> {
    /// The service over `ingest`, taking messages up to `max_message` bytes; calls hold their
    /// bytes of `budget` while handled.
    pub fn new(ingest: Arc<dyn OtlpIngest>, max_message: usize, budget: Arc<BodyBudget>, metrics: Arc<ServerMetrics>) -> Self {
        let signal = Signal::from_tag(TAG).unwrap_or(Signal::Traces);
        Self { export: Export { signal, ingest, budget, metrics }, max_message }
    }
}

/// The gRPC `TraceService`.
pub type GrpcTraceService = OtlpGrpcService<1>;
/// The gRPC `LogsService`.
pub type GrpcLogsService = OtlpGrpcService<2>;
/// The gRPC `MetricsService`.
pub type GrpcMetricsService = OtlpGrpcService<3>;

impl tonic::server::NamedService for OtlpGrpcService<1> {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::NamedService for OtlpGrpcService<2> {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl tonic::server::NamedService for OtlpGrpcService<3> {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl<const TAG: u8, B> tower::Service<http::Request<B>> for OtlpGrpcService<TAG>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let want = self.export.signal.grpc_path();
        if req.uri().path() != want {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented(format!("unknown method {path}: this service implements {want}")).into_http())
            });
        }
        let export = self.export.clone();
        let max = self.max_message;
        let held = CallHeld::default();
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(held.clone());
        let body = BudgetBody {
            inner: Box::pin(body),
            budget: Arc::clone(&export.budget),
            held: held.clone(),
            metrics: Arc::clone(&export.metrics),
        };
        let req = http::Request::from_parts(parts, body);
        Box::pin(async move {
            let _held = held;
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                // Responses are a few bytes: compressing them would only cost CPU.
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            Ok(grpc.unary(export, req).await)
        })
    }
}
