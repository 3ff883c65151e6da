//! Errors of the storage crate.

use skein_core::ErrorCode;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every span of the request was invalid.
    #[error("{0}")]
    Invalid(String),
    /// The request is not a decodable `ExportTraceServiceRequest`.
    #[error("{0}")]
    Malformed(String),
    /// Decoding protobuf straight into Arrow failed (malformed input, naming field and offset).
    #[error("{0}")]
    Wire(#[from] skein_columnar::spans::WireError),
    /// The head is at its memory limit.
    #[error(
        "head is full: {used} bytes in memory, limit {limit} (head.memory_limit); this version does not flush the head to blocks yet, so it stays full until the collector restarts with a larger limit"
    )]
    HeadFull {
        /// Bytes in use.
        used: u64,
        /// Configured limit.
        limit: u64,
    },
    /// Too many request bytes are being processed at once.
    #[error("too many request bytes in flight (limit {limit} bytes, otlp.max_inflight_bytes); retry shortly")]
    Busy {
        /// Configured limit.
        limit: u64,
    },
    /// A decoding task on the blocking pool failed (a bug: it panicked or was cancelled).
    #[error("decoding task failed: {0}")]
    Task(String),
    /// The write-ahead log failed; nothing was acknowledged.
    #[error("write-ahead log: {0}")]
    Wal(#[from] skein_wal::Error),
    /// Building the Arrow batch failed (a bug: validated input always builds).
    #[error("building the span batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    /// The transport-independent error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) | Self::Malformed(_) => ErrorCode::BadRequest,
            Self::Wire(e) => e.code(),
            Self::HeadFull { .. } | Self::Busy { .. } => ErrorCode::ResourceExhausted,
            Self::Task(_) => ErrorCode::Internal,
            // A failed write or fsync is retryable (Unavailable): nothing was acknowledged.
            Self::Wal(e) => e.code(),
            Self::Arrow(_) => ErrorCode::Internal,
        }
    }
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
