//! The columnar form of Skein's data: one Arrow schema per signal, builders that turn OTLP
//! requests into `RecordBatch`es, and readers that turn rows back into owned records for the
//! query layer.
//!
//! Attribute maps are stored as `Map<Utf8, Utf8>` so that SQL can filter on them
//! (`attributes['http.route'] = '/cart'`), with a parallel `*_types` binary column holding one
//! type tag per map entry, so every value round-trips with its OTLP type (an int stays an int).
//! See [`value`] for the encoding.

pub mod record;
pub mod spans;
pub mod value;

pub use record::{Attr, EventRecord, LinkRecord, SpanRecord};
pub use value::TypedValue;
