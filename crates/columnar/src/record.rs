//! Owned, row-oriented views of stored spans, as the query layer consumes them.

use crate::value::TypedValue;
use skein_core::{SpanId, TraceId};

/// One attribute with its typed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    /// Attribute key.
    pub key: String,
    /// Attribute value with its OTLP type.
    pub value: TypedValue,
}

/// A span event (Jaeger calls these logs).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Unix nanoseconds.
    pub time_unix_nano: i64,
    /// Event name.
    pub name: String,
    /// Event attributes.
    pub attributes: Vec<Attr>,
}

/// A link from a span to another span, possibly in another trace.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRecord {
    /// Linked trace.
    pub trace_id: TraceId,
    /// Linked span.
    pub span_id: SpanId,
    /// W3C trace state of the link, if any.
    pub trace_state: Option<String>,
    /// Link attributes.
    pub attributes: Vec<Attr>,
}

/// One stored span with everything the APIs return about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace the span belongs to.
    pub trace_id: TraceId,
    /// The span's own id.
    pub span_id: SpanId,
    /// Parent span, `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// W3C trace state.
    pub trace_state: Option<String>,
    /// W3C trace flags and OTLP span flags.
    pub flags: u32,
    /// Operation name.
    pub name: String,
    /// OTLP span kind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i8,
    /// Unix nanoseconds.
    pub start_time_unix_nano: i64,
    /// Unix nanoseconds.
    pub end_time_unix_nano: i64,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i8,
    /// Status message, if any.
    pub status_message: Option<String>,
    /// `service.name` of the resource (`unknown_service` when absent).
    pub service: String,
    /// The node the span came from (`host.name`, else `k8s.pod.name`, else `unknown_node`).
    pub node: String,
    /// Resource attributes.
    pub resource: Vec<Attr>,
    /// Span attributes.
    pub attributes: Vec<Attr>,
    /// Instrumentation scope name.
    pub scope_name: Option<String>,
    /// Instrumentation scope version.
    pub scope_version: Option<String>,
    /// Span events.
    pub events: Vec<EventRecord>,
    /// Span links.
    pub links: Vec<LinkRecord>,
    /// Attributes dropped by the SDK or by Skein's limits.
    pub dropped_attributes_count: u32,
    /// Events dropped by the SDK.
    pub dropped_events_count: u32,
    /// Links dropped by the SDK.
    pub dropped_links_count: u32,
}

impl SpanRecord {
    /// End minus start, in nanoseconds (never negative for validated spans).
    pub fn duration_ns(&self) -> i64 {
        self.end_time_unix_nano - self.start_time_unix_nano
    }

    /// Looks up a resource attribute by key.
    pub fn resource_attr(&self, key: &str) -> Option<&TypedValue> {
        self.resource.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    /// Lower-case span kind name as Jaeger and OTel print it (`server`, `client`, …).
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }
}

pub use skein_core::query::{span_kind_from_name as kind_from_name, span_kind_name as kind_name};

/// Name of an OTLP status code: `unset`, `ok` or `error`.
pub fn status_name(code: i8) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}
