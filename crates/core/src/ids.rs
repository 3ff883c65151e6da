//! Trace and span identifiers: fixed-size byte arrays printed as lowercase hex.

use std::fmt;

/// Why an id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id had the wrong number of bytes (or hex digits).
    #[error("{what} must be {expected} bytes ({} hex digits), got {got} bytes", expected * 2)]
    Length { what: &'static str, expected: usize, got: usize },
    /// The hex form had the wrong number of digits.
    #[error("{what} must be {} hex digits, got {got}", expected * 2)]
    HexLength { what: &'static str, expected: usize, got: usize },
    /// The id was all zeroes, which OTLP defines as invalid.
    #[error("{what} must not be all zeroes")]
    Zero { what: &'static str },
    /// A character was not a hex digit.
    #[error("{what} is not hex: invalid character {ch:?} at position {pos}")]
    Hex { what: &'static str, ch: char, pos: usize },
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out`.
pub fn encode_hex(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    encode_hex(bytes, &mut s);
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N], IdError> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return Err(IdError::HexLength { what, expected: N, got: b.len() });
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = nibble(pair[0]);
        let lo = nibble(pair[1]);
        match (hi, lo) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            (None, _) => {
                return Err(IdError::Hex { what, ch: s[i * 2..].chars().next().unwrap_or('?'), pos: i * 2 });
            }
            (_, None) => {
                return Err(IdError::Hex { what, ch: s[i * 2 + 1..].chars().next().unwrap_or('?'), pos: i * 2 + 1 });
            }
        }
    }
    Ok(out)
}

macro_rules! id_type {
    ($name:ident, $n:expr, $what:expr) => {
        #[doc = concat!("A ", $what, ": ", stringify!($n), " bytes, printed as lowercase hex.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $n;

            /// Parses an id from raw bytes, rejecting a wrong length or all zeroes.
            pub fn from_slice(b: &[u8]) -> Result<Self, IdError> {
                let arr: [u8; $n] = b.try_into().map_err(|_| IdError::Length { what: $what, expected: $n, got: b.len() })?;
                if arr == [0u8; $n] {
                    return Err(IdError::Zero { what: $what });
                }
                Ok(Self(arr))
            }

            /// Parses lowercase or uppercase hex of exactly the right length.
            pub fn from_hex(s: &str) -> Result<Self, IdError> {
                let arr = decode_hex::<$n>($what, s)?;
                if arr == [0u8; $n] {
                    return Err(IdError::Zero { what: $what });
                }
                Ok(Self(arr))
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

id_type!(TraceId, 16, "trace id");
id_type!(SpanId, 8, "span id");

impl TraceId {
    /// Parses a trace id the way Jaeger accepts it: up to 32 hex digits, left-padded with
    /// zeroes (a 16-digit id is a 64-bit trace id).
    pub fn from_hex_padded(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > 32 {
            return Err(IdError::HexLength { what: "trace id", expected: 16, got: s.len() });
        }
        let mut padded = String::with_capacity(32);
        for _ in s.len()..32 {
            padded.push('0');
        }
        padded.push_str(s);
        Self::from_hex(&padded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let t = TraceId::from_hex("0AF7651916CD43DD8448EB211C80319C").unwrap();
        assert_eq!(t.to_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(SpanId::from_hex("b7ad6b7169203331").unwrap().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(TraceId::from_hex("abc").unwrap_err().to_string(), "trace id must be 32 hex digits, got 3");
        assert!(matches!(SpanId::from_slice(&[0; 8]), Err(IdError::Zero { .. })));
        let e = SpanId::from_hex("b7ad6b71692033zz").unwrap_err();
        assert_eq!(e.to_string(), "span id is not hex: invalid character 'z' at position 14");
        assert!(SpanId::from_slice(&[1; 7]).unwrap_err().to_string().contains("got 7 bytes"));
    }

    #[test]
    fn jaeger_short_ids_are_padded() {
        let t = TraceId::from_hex_padded("8448eb211c80319c").unwrap();
        assert_eq!(t.to_hex(), "00000000000000008448eb211c80319c");
    }
}
