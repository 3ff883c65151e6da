//! Shared vocabulary of Skein: trace and span ids, the error codes every crate maps its
//! errors onto (with their HTTP and gRPC status and whether a client may retry), unit types
//! for sizes and durations in configuration, and layered config loading (file, `SKEIN_*`
//! environment, command-line overrides).

pub mod config;
pub mod error;
pub mod ids;
pub mod metrics;
pub mod query;
pub mod units;

pub use error::ErrorCode;
pub use ids::{IdError, SpanId, TraceId};
pub use units::{ByteSize, Duration};
