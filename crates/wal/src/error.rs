//! The crate's one error type. Every variant that touches a file names it (and the segment
//! id), so an operator reading a log line knows which file to look at.

use skein_core::ErrorCode;
use std::io;
use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a WAL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option of [`crate::WalOptions`] is out of range.
    #[error("invalid wal option {field} = {value}: expected {expected}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The WAL directory could not be created.
    #[error("cannot create wal directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The WAL directory could not be listed or synced.
    #[error("cannot read wal directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another `Wal` (in this process or another) has the directory open.
    #[error("wal directory {path} is in use by another wal: its lock file is held")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock wal directory with {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment file could not be opened or read during replay.
    #[error("cannot read wal segment {path}: {source}")]
    Read {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment file does not start with the magic header. It was not written by this
    /// version of Skein (or something else overwrote it); nothing is deleted automatically.
    #[error(
        "wal segment {path} does not start with the skein wal magic header: \
         it was written by another program or format version; move it away to start"
    )]
    BadMagic {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
    },
    /// A corrupt segment could not be truncated at its last intact record.
    #[error("cannot truncate corrupt wal segment {path} at offset {offset}: {source}")]
    Repair {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// Where the truncation was attempted.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The replay callback refused a record; `open` stopped there.
    #[error("replay of wal record at segment {segment} offset {offset} failed: {message}")]
    Replay {
        /// Segment id of the record.
        segment: u64,
        /// Offset of the record in its segment.
        offset: u64,
        /// The callback's error, rendered.
        message: String,
    },
    /// A new segment file could not be created.
    #[error("cannot create wal segment {path}: {source}")]
    Create {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Writing a batch of records failed; none of the batch was acknowledged.
    #[error("cannot write wal segment {path}: {source}")]
    Write {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Syncing a batch of records failed; none of the batch was acknowledged.
    #[error("cannot sync wal segment {path}: {source}")]
    Sync {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An old segment could not be deleted.
    #[error("cannot delete wal segment {path}: {source}")]
    Remove {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the wal writer thread: {0}")]
    Spawn(#[source] io::Error),
    /// The payload is larger than a record may be.
    #[error("wal record of {len} bytes is larger than the maximum of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// [`crate::MAX_RECORD_LEN`].
        max: usize,
    },
    /// The payload is empty; the format reserves length 0 to detect zero-filled tails.
    #[error("wal record is empty: a payload needs at least one byte")]
    EmptyRecord,
    /// An earlier write or sync failed; the WAL refuses appends until it is reopened, so
    /// that a later record is never acknowledged behind a hole.
    #[error("wal refuses appends after an earlier write failure: restart to recover")]
    Poisoned,
    /// The WAL was closed (or its writer stopped).
    /// The queue's cursor file could not be written.
    #[error("cannot write queue cursor {path}: {source}")]
    Cursor {
        /// The cursor file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A queue record read back fails its check (the file changed under the queue).
    #[error("queue segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// Segment id.
        segment: u64,
        /// Segment file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    #[error("wal is closed")]
    Closed,
}

impl Error {
    /// The error code, from which HTTP and gRPC statuses follow. Write failures are
    /// `Unavailable` (retryable): nothing was acknowledged, so the client still holds the
    /// data and may send it again, here after a restart or to another collector.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RecordTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Write { .. } | Self::Sync { .. } | Self::Create { .. } | Self::Poisoned | Self::Closed => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// A copy of a batch failure for each waiter of the batch (`io::Error` is not `Clone`).
    pub(crate) fn duplicate_io(&self) -> Self {
        fn dup(e: &io::Error) -> io::Error {
            io::Error::new(e.kind(), e.to_string())
        }
        match self {
            Self::Write { segment, path, source } => Self::Write { segment: *segment, path: path.clone(), source: dup(source) },
            Self::Sync { segment, path, source } => Self::Sync { segment: *segment, path: path.clone(), source: dup(source) },
            _ => Self::Poisoned,
        }
    }
}
