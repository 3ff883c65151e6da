//! The one mapping from an error to its HTTP status, gRPC status and retry policy. Every
//! crate's error type exposes `code()`; the server answers and the exporter retries from it.

/// What kind of failure an error is, independent of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The input was malformed or violated a limit that retrying will not fix.
    BadRequest,
    /// The thing asked for does not exist.
    NotFound,
    /// The request body exceeded the configured size limit.
    PayloadTooLarge,
    /// The content type is not one we decode.
    UnsupportedMediaType,
    /// A bounded resource (head memory, queue) is full; retry later.
    ResourceExhausted,
    /// The service is starting or stopping; retry later.
    Unavailable,
    /// A query ran past its time limit.
    Timeout,
    /// A bug or an I/O failure on our side.
    Internal,
    /// A feature that is not built yet (the message says which).
    Unimplemented,
}

impl ErrorCode {
    /// HTTP status code for this error.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::ResourceExhausted => 429,
            Self::Unavailable => 503,
            Self::Timeout => 504,
            Self::Internal => 500,
            Self::Unimplemented => 501,
        }
    }

    /// gRPC status code number (see `google.rpc.Code`).
    pub fn grpc_code(self) -> i32 {
        match self {
            Self::BadRequest => 3,           // INVALID_ARGUMENT
            Self::NotFound => 5,             // NOT_FOUND
            Self::PayloadTooLarge => 8,      // RESOURCE_EXHAUSTED (message too large)
            Self::UnsupportedMediaType => 3, // INVALID_ARGUMENT
            Self::ResourceExhausted => 8,    // RESOURCE_EXHAUSTED
            Self::Unavailable => 14,         // UNAVAILABLE
            Self::Timeout => 4,              // DEADLINE_EXCEEDED
            Self::Internal => 13,            // INTERNAL
            Self::Unimplemented => 12,       // UNIMPLEMENTED
        }
    }

    /// Whether a client may send the same request again later.
    pub fn retryable(self) -> bool {
        matches!(self, Self::ResourceExhausted | Self::Unavailable | Self::Timeout)
    }

    /// Stable machine-readable name used in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
            Self::Unimplemented => "unimplemented",
        }
    }
}
