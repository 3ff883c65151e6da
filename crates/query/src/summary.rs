//! Trace summaries: the one-line description of a trace that search returns
//! (`GET /api/v1/traces?…`, ARCHITECTURE §5).

use crate::assemble::dedup_by_span_id;
use serde::Serialize;
use skein_columnar::SpanRecord;
use skein_core::TraceId;
use std::collections::BTreeSet;

/// OTLP status code of an error span.
const STATUS_ERROR: i8 = 2;

/// What a search result says about one trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceSummary {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Service of the root span (of the earliest span when the root is missing).
    pub root_service: String,
    /// Operation of the root span (of the earliest span when the root is missing).
    pub root_operation: String,
    /// No span without a parent is in the trace (yet).
    pub root_missing: bool,
    /// Earliest span start, Unix nanoseconds.
    pub start_time_unix_nano: i64,
    /// Earliest start to latest end, nanoseconds.
    pub duration_ns: i64,
    /// Distinct spans.
    pub span_count: usize,
    /// Distinct nodes.
    pub node_count: usize,
    /// Spans with status `error`.
    pub error_count: usize,
    /// Services involved, sorted and unique.
    pub services: Vec<String>,
    /// Nodes involved, sorted and unique.
    pub nodes: Vec<String>,
}

/// Summarizes the spans of `trace_id` (duplicates are counted once).
pub fn summarize(trace_id: TraceId, spans: &[SpanRecord]) -> TraceSummary {
    let (spans, _) = dedup_by_span_id(spans);
    let earliest = |s: &&SpanRecord| (s.start_time_unix_nano, s.span_id);
    let root = spans.iter().copied().filter(|s| s.parent_span_id.is_none()).min_by_key(earliest);
    let shown = root.or_else(|| spans.iter().copied().min_by_key(earliest));
    let start = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_time_unix_nano).max().unwrap_or(0);
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let nodes: BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    TraceSummary {
        trace_id: trace_id.to_hex(),
        root_service: shown.map(|s| s.service.clone()).unwrap_or_default(),
        root_operation: shown.map(|s| s.name.clone()).unwrap_or_default(),
        root_missing: root.is_none(),
        start_time_unix_nano: start,
        duration_ns: end.saturating_sub(start),
        span_count: spans.len(),
        node_count: nodes.len(),
        error_count: spans.iter().filter(|s| s.status_code == STATUS_ERROR).count(),
        services: services.into_iter().map(str::to_string).collect(),
        nodes: nodes.into_iter().map(str::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::tests::{MS, T0, span, trace_id};

    #[test]
    fn summarizes_a_cross_node_trace() {
        let mut failed = span(3, Some(2), "db", "node-c", 20, 130);
        failed.status_code = 2;
        let spans = vec![failed.clone(), span(2, Some(1), "api", "node-b", 10, 90), span(1, None, "frontend", "node-a", 0, 100), failed];
        let s = summarize(trace_id(), &spans);
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!(s.root_service, "frontend");
        assert_eq!(s.root_operation, "op-1");
        assert!(!s.root_missing);
        assert_eq!(s.start_time_unix_nano, T0);
        assert_eq!(s.duration_ns, 130 * MS);
        assert_eq!(s.span_count, 3);
        assert_eq!(s.node_count, 3);
        assert_eq!(s.error_count, 1, "the duplicated error span counts once");
        assert_eq!(s.services, ["api", "db", "frontend"]);
        assert_eq!(s.nodes, ["node-a", "node-b", "node-c"]);
    }

    #[test]
    fn missing_root_falls_back_to_the_earliest_span() {
        let spans = vec![span(3, Some(2), "db", "node-c", 20, 40), span(2, Some(1), "api", "node-b", 10, 90)];
        let s = summarize(trace_id(), &spans);
        assert!(s.root_missing);
        assert_eq!(s.root_service, "api");
        assert_eq!(s.root_operation, "op-2");
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["root_missing"], serde_json::json!(true));
        assert_eq!(json["duration_ns"], serde_json::json!(80 * MS));
    }
}
