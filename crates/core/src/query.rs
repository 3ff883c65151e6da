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
