//! Query parameters shared by the HTTP layer (which parses them) and the query engine (which
//! answers them), so neither depends on the other.

/// Filters of a trace search. A trace matches when one of its spans satisfies every
/// span-level condition at once (as in Jaeger).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {
    /// `service.name` of the span.
    pub service: Option<String>,
    /// Span name.
    pub operation: Option<String>,
    /// OTLP span kind.
    pub span_kind: Option<i8>,
    /// Node the span came from.
    pub node: Option<String>,
    /// Minimum span duration, nanoseconds.
    pub min_duration_ns: Option<i64>,
    /// Maximum span duration, nanoseconds.
    pub max_duration_ns: Option<i64>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: Option<i8>,
    /// Attribute equality filters on span or resource attributes (display-string compare).
    pub attributes: Vec<(String, String)>,
    /// Earliest span start, Unix ns (inclusive).
    pub start_ns: Option<i64>,
    /// Latest span start, Unix ns (inclusive).
    pub end_ns: Option<i64>,
    /// Most traces to return.
    pub limit: usize,
}

/// Options of a trace-by-id lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceOptions {
    /// Apply Jaeger's clock-skew adjustment (`?adjust=skew`).
    pub adjust_skew: bool,
}

/// Lower-case name of an OTLP span kind (`unspecified` for 0 or unknown values), as Jaeger and
/// the native API print it.
pub fn span_kind_name(kind: i8) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// OTLP span kind for a name, case-insensitive (`server` → 2).
pub fn span_kind_from_name(name: &str) -> Option<i8> {
    Some(match name.to_ascii_lowercase().as_str() {
        "unspecified" => 0,
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        _ => return None,
    })
}

/// One edge of the service dependency graph: calls from spans of `parent` to child spans of
/// `child` (a different service), over a time window.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    /// Calling service.
    pub parent: String,
    /// Called service.
    pub child: String,
    /// Child spans whose parent span belongs to `parent`.
    pub call_count: u64,
    /// Of those, child spans with status error.
    pub error_count: u64,
}

/// Filters of a log search (`GET /api/v1/logs`, `GET /api/v1/traces/{id}/logs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    /// `service.name` of the record's resource.
    pub service: Option<String>,
    /// Node the record came from.
    pub node: Option<String>,
    /// Records at this OTLP severity number or above.
    pub min_severity: Option<i32>,
    /// Records of this trace.
    pub trace_id: Option<crate::TraceId>,
    /// Records of this span.
    pub span_id: Option<crate::SpanId>,
    /// Records with this correlation (request) id.
    pub correlation_id: Option<String>,
    /// Records whose body contains this text (case-insensitive).
    pub text: Option<String>,
    /// Earliest record time (Unix ns).
    pub start_ns: Option<i64>,
    /// Latest record time (Unix ns).
    pub end_ns: Option<i64>,
    /// Records returned at most.
    pub limit: usize,
    /// Oldest first (a trace's logs) instead of newest first (search).
    pub oldest_first: bool,
}

/// How the points of a metric series are combined within one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricAgg {
    /// Mean of the values.
    #[default]
    Avg,
    /// Largest value.
    Max,
    /// Smallest value.
    Min,
    /// Sum of the values.
    Sum,
    /// Per-second increase: of a cumulative counter (resets handled), or the sum of delta
    /// values divided by the step.
    Rate,
}

impl MetricAgg {
    /// Parses `avg`, `max`, `min`, `sum`, `rate`.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "avg" => Self::Avg,
            "max" => Self::Max,
            "min" => Self::Min,
            "sum" => Self::Sum,
            "rate" => Self::Rate,
            _ => return None,
        })
    }

    /// The name [`MetricAgg::from_name`] parses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::Max => "max",
            Self::Min => "min",
            Self::Sum => "sum",
            Self::Rate => "rate",
        }
    }
}

/// A metric series query (`GET /api/v1/metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricQuery {
    /// Metric name.
    pub name: String,
    /// Only this node.
    pub node: Option<String>,
    /// Window start (Unix ns).
    pub start_ns: i64,
    /// Window end (Unix ns).
    pub end_ns: i64,
    /// Bucket width in ns.
    pub step_ns: i64,
    /// How points within a bucket combine.
    pub agg: MetricAgg,
}
