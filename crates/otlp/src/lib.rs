//! OTLP for Skein: the `opentelemetry-proto` types re-exported, body decoding for OTLP/HTTP
//! (protobuf and JSON, gzip, with size limits), response encoding, `google.rpc.Status`, and
//! validation of incoming spans against Skein's limits.

pub mod codec;
pub mod count;
pub mod signal;
pub mod status;
pub mod synth;
pub mod validate;
pub mod validate_signals;
pub mod wire;

pub use codec::{DecodeError, Encoding};
pub use count::{count_items, split_request};
pub use opentelemetry_proto::tonic as proto;
pub use signal::Signal;
pub use status::RpcStatus;
pub use validate::{Limits, Validated, validate_traces};
pub use validate_signals::{MAX_LOG_BODY_BYTES, validate_logs, validate_metrics};

pub use proto::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
pub use proto::collector::metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse};
pub use proto::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
