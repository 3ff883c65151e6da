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
    #[error("unsupported content encoding {0:?}: expected gzip or identity")]
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

/// Undoes `Content-Encoding`, refusing to inflate past `limit` bytes (a gzip bomb costs us
/// at most `limit` bytes of memory).
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
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            let mut dec = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out).map_err(DecodeError::Gzip)?;
            if out.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(DecodeError::ContentEncoding(other.to_string())),
    }
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
