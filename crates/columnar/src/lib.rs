//! The columnar form of Skein's data: one Arrow schema per signal, builders that turn OTLP
//! requests into `RecordBatch`es, and readers that turn rows back into owned records for the
//! query layer.
//!
//! Attribute maps are stored as `Map<Utf8, Utf8>` so that SQL can filter on them
//! (`attributes['http.route'] = '/cart'`), with a parallel `*_types` binary column holding one
//! type tag per map entry, so every value round-trips with its OTLP type (an int stays an int).
//! See [`value`] for the encoding.
//!
//! The resource of a span is the exception: all the spans of one `ResourceSpans` share it, so
//! the `spans` table stores it once per batch, as the protobuf encoding of the OTLP `Resource`
//! in a dictionary column (`resource`), rather than as a map per row (see [`spans`]). That
//! saves about half of a span's memory in the head; SQL access to resource attributes will need
//! a map built from the dictionary at query or flush time.

pub mod logs;
pub mod metrics;
pub mod record;
pub mod spans;
pub mod value;

pub use record::{Attr, EventRecord, LinkRecord, SpanRecord};
pub use value::TypedValue;
