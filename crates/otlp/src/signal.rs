//! The three OTLP signals and where each is sent: its OTLP/HTTP path and gRPC method.

use std::fmt;

/// An OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Spans (`ExportTraceServiceRequest`).
    Traces,
    /// Log records (`ExportLogsServiceRequest`).
    Logs,
    /// Metric data points (`ExportMetricsServiceRequest`).
    Metrics,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// `traces`, `logs` or `metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
            Self::Metrics => "metrics",
        }
    }

    /// The OTLP/HTTP path, e.g. `/v1/traces`.
    pub fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Logs => "/v1/logs",
            Self::Metrics => "/v1/metrics",
        }
    }

    /// The fully qualified gRPC service name.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Self::Traces => "opentelemetry.proto.collector.trace.v1.TraceService",
            Self::Logs => "opentelemetry.proto.collector.logs.v1.LogsService",
            Self::Metrics => "opentelemetry.proto.collector.metrics.v1.MetricsService",
        }
    }

    /// The gRPC method path, e.g. `/opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Self::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Self::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// What one item of the signal is called in OTLP's partial success (`spans`,
    /// `log_records`, `data_points`).
    pub fn items(self) -> &'static str {
        match self {
            Self::Traces => "spans",
            Self::Logs => "log records",
            Self::Metrics => "data points",
        }
    }

    /// The one-byte tag used when records of several signals share a log or queue.
    pub fn tag(self) -> u8 {
        match self {
            Self::Traces => 1,
            Self::Logs => 2,
            Self::Metrics => 3,
        }
    }

    /// The signal of a [`Signal::tag`].
    pub fn from_tag(tag: u8) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.tag() == tag)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
