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
        "head is full: {used} bytes in memory, limit {limit} (head.memory_limit); retry after the head is flushed to a block (see storage.flush)"
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
    /// A storage setting is wrong.
    #[error("{0}")]
    Config(String),
    /// An object store operation failed.
    #[error("object store: {op} {path}: {source}")]
    ObjectStore {
        /// What was being done.
        op: &'static str,
        /// The object or store.
        path: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// Writing or reading a Parquet block failed.
    #[error("block {path}: {source}")]
    Parquet {
        /// The block.
        path: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest could not be read or is not valid.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest object.
        path: String,
        /// What is wrong.
        message: String,
    },
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
            Self::Arrow(_) | Self::Parquet { .. } | Self::Manifest { .. } => ErrorCode::Internal,
            Self::Config(_) => ErrorCode::BadRequest,
            // The object store being unreachable is worth retrying.
            Self::ObjectStore { .. } | Self::Io { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Result with the storage error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
