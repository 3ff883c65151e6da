//! Decoding OTLP/HTTP bodies: content type and encoding negotiation, bounded decompression,
//! protobuf and JSON decoding; and encoding responses in the request's format.

use bytes::Bytes;
use skein_core::ErrorCode;
use std::io::Read;

/// Wire format of an OTLP/HTTP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// Picks the encoding from a `Content-Type` header value (parameters ignored).
    ///
    /// # Errors
    /// [`DecodeError::ContentType`] for anything but protobuf or JSON.
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, DecodeError> {
        let raw = ct.unwrap_or("");
        let essence = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            _ => Err(DecodeError::ContentType(raw.to_string())),
        }
    }

    /// The `Content-Type` to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Unsupported `Content-Type`.
    #[error("unsupported content type {0:?}: expected application/x-protobuf or application/json")]
    ContentType(String),
    /// Unsupported `Content-Encoding`.
    #[error("unsupported content encoding {0:?}: expected gzip, zstd or identity")]
    ContentEncoding(String),
    /// The body (compressed or not) is over the limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The gzip stream is damaged.
    #[error("invalid gzip body: {0}")]
    Gzip(std::io::Error),
    /// The zstd stream is damaged.
    #[error("invalid zstd body: {0}")]
    Zstd(std::io::Error),
    /// The protobuf message is malformed.
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The JSON document is malformed or does not fit the OTLP schema.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl DecodeError {
    /// The error code, from which HTTP and gRPC statuses follow.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ContentType(_) | Self::ContentEncoding(_) => ErrorCode::UnsupportedMediaType,
            Self::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Undoes `Content-Encoding` (gzip or zstd), refusing to inflate past `limit` bytes (a
/// compression bomb costs us at most `limit` bytes of memory).
///
/// # Errors
/// Unknown encodings, damaged gzip, or an inflated size over `limit`.
pub fn decompress(body: Bytes, content_encoding: Option<&str>, limit: usize) -> Result<Bytes, DecodeError> {
    match content_encoding.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(body)
        }
        Some("gzip") | Some("x-gzip") => {
            inflate(flate2::read::MultiGzDecoder::new(&body[..]), body.len(), limit).map_err(|e| e.unwrap_or_else(DecodeError::Gzip))
        }
        Some("zstd") => {
            let dec = zstd::stream::read::Decoder::new(&body[..]).map_err(DecodeError::Zstd)?;
            inflate(dec, body.len(), limit).map_err(|e| e.unwrap_or_else(DecodeError::Zstd))
        }
        Some(other) => Err(DecodeError::ContentEncoding(other.to_string())),
    }
}

/// Reads a decompressing reader to the end, at most `limit` bytes. The error is `Ok(TooLarge)`
/// past the limit, `Err(io)` for a damaged stream (the caller names the format).
fn inflate(r: impl Read, compressed: usize, limit: usize) -> Result<Bytes, Result<DecodeError, std::io::Error>> {
    let mut out = Vec::with_capacity(compressed.saturating_mul(4).min(limit));
    r.take(limit as u64 + 1).read_to_end(&mut out).map_err(Err)?;
    if out.len() > limit {
        return Err(Ok(DecodeError::TooLarge { limit }));
    }
    Ok(Bytes::from(out))
}

/// Decodes an OTLP message in the given encoding.
///
/// # Errors
/// Malformed protobuf or JSON, with the decoder's description of where.
pub fn decode<M>(body: &[u8], enc: Encoding) -> Result<M, DecodeError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    match enc {
        Encoding::Protobuf => Ok(M::decode(body)?),
        Encoding::Json => Ok(serde_json::from_slice(body)?),
    }
}

/// Encodes a message in the given encoding.
pub fn encode<M>(msg: &M, enc: Encoding) -> Vec<u8>
where
    M: prost::Message + serde::Serialize,
{
    match enc {
        Encoding::Protobuf => msg.encode_to_vec(),
        // Serializing generated OTLP types to a Vec cannot fail.
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExportTraceServiceRequest;
    use std::io::Write;

    #[test]
    fn content_types() {
        assert_eq!(Encoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(), Encoding::Json);
        assert_eq!(Encoding::from_content_type(Some("application/x-protobuf")).unwrap(), Encoding::Protobuf);
        assert_eq!(Encoding::from_content_type(Some("text/plain")).unwrap_err().code(), ErrorCode::UnsupportedMediaType);
    }

    #[test]
    fn gzip_is_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![0u8; 10_000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        assert_eq!(decompress(gz.clone(), Some("gzip"), 10_000).unwrap().len(), 10_000);
        assert!(matches!(decompress(gz, Some("gzip"), 9_999), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(decompress(Bytes::from_static(b"nope"), Some("gzip"), 100), Err(DecodeError::Gzip(_))));
        assert!(matches!(decompress(Bytes::from_static(b"x"), Some("br"), 100), Err(DecodeError::ContentEncoding(_))));
    }

    #[test]
    fn zstd_is_bounded() {
        let z = Bytes::from(zstd::encode_all(&vec![7u8; 10_000][..], 3).unwrap());
        assert_eq!(decompress(z.clone(), Some("zstd"), 10_000).unwrap(), Bytes::from(vec![7u8; 10_000]));
        assert!(matches!(decompress(z, Some("zstd"), 9_999), Err(DecodeError::TooLarge { .. })));
        let bad = decompress(Bytes::from_static(b"not zstd at all"), Some("zstd"), 100).unwrap_err();
        assert!(bad.to_string().starts_with("invalid zstd body"), "{bad}");
    }

    #[test]
    fn json_follows_otlp_rules() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
            "scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
            "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"7"}},{"key":"m","value":{"intValue":8}}],
            "someFutureField":{"x":1}}]}]}]}"#;
        let req: ExportTraceServiceRequest = decode(body, Encoding::Json).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.end_time_unix_nano, 1544712661000000000);
        assert_eq!(span.attributes.len(), 2);
        let bad = decode::<ExportTraceServiceRequest>(b"{\"resourceSpans\": [", Encoding::Json).unwrap_err();
        assert!(bad.to_string().starts_with("malformed JSON"), "{bad}");
        let bad = decode::<ExportTraceServiceRequest>(&[0x0a, 0xff, 0xff], Encoding::Protobuf).unwrap_err();
        assert!(bad.to_string().starts_with("malformed protobuf"), "{bad}");
    }
}
