//! `google.rpc.Status`, the body of every OTLP/HTTP failure response. Three fields, declared
//! here with prost's derive because `opentelemetry-proto` does not ship the Google types.

use crate::codec::Encoding;

/// `google.protobuf.Any`, as carried in `Status.details`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct Any {
    /// Type URL of the packed message.
    #[prost(string, tag = "1")]
    #[serde(rename = "@type")]
    pub type_url: String,
    /// The packed message.
    #[prost(bytes = "vec", tag = "2")]
    #[serde(skip)]
    pub value: Vec<u8>,
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    /// A `google.rpc.Code` value.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A developer-facing message naming what was wrong.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Additional details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<Any>,
}

impl RpcStatus {
    /// A status with a code and a message and no details.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), details: Vec::new() }
    }

    /// Encodes the status for an HTTP body in the request's encoding.
    pub fn encode(&self, enc: Encoding) -> Vec<u8> {
        match enc {
            Encoding::Protobuf => prost::Message::encode_to_vec(self),
            Encoding::Json => serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}
