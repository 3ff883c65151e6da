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
    #[error("head is full: {used} bytes in memory, limit {limit}; retry after the backlog drains")]
    HeadFull {
        /// Bytes in use.
        used: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The store is still replaying its WAL or is shutting down.
    #[error("store is not ready: {0}")]
    NotReady(&'static str),
    /// The write-ahead log failed; nothing was acknowledged.
    #[error("write-ahead log: {0}")]
    Wal(#[from] skein_wal::Error),
    /// Building the Arrow batch failed (a bug: validated input always builds).
    #[error("building the span batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A WAL record could not be decoded during replay.
    #[error("WAL record at segment {segment} offset {offset} does not decode: {message}")]
    Replay {
        /// Segment id.
        segment: u64,
        /// Byte offset in the segment.
        offset: u64,
        /// Decoder message.
        message: String,
    },
}

impl Error {
    /// The transport-independent error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) | Self::Malformed(_) => ErrorCode::BadRequest,
            Self::Wire(e) => e.code(),
            Self::HeadFull { .. } => ErrorCode::ResourceExhausted,
            Self::NotReady(_) => ErrorCode::Unavailable,
            Self::Wal(_) | Self::Arrow(_) | Self::Replay { .. } => ErrorCode::Internal,
        }
    }
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
