//! A reader for the protobuf wire format, as much of it as [`super::wire`] needs: a cursor
//! over one message ([`Cur`]) that reads keys, varints, fixed-width values and length-delimited
//! payloads, and skips unknown fields, accepting and rejecting exactly what prost 0.14 does
//! (see the rules in `wire`'s documentation). Errors carry the byte offset and grow a field path
//! as they unwind ([`At`]), so a client is told which field of which span was malformed.

/// What was malformed, in [`WireError::Malformed`](super::WireError::Malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireReason {
    /// The input ended inside a varint.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint of more than 10 bytes, or with bits past 64.
    #[error("varint longer than 64 bits")]
    VarintOverflow,
    /// A field key that does not fit in 32 bits.
    #[error("field key {0} is larger than 32 bits")]
    KeyOverflow(u64),
    /// Wire type 6 or 7.
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    /// Field number 0.
    #[error("invalid field number 0")]
    ZeroFieldNumber,
    /// A known field encoded with another wire type.
    #[error("wire type {actual}, expected {expected}")]
    WrongWireType {
        /// The wire type found.
        actual: &'static str,
        /// The wire type of the field.
        expected: &'static str,
    },
    /// A length prefix past the end of the enclosing message.
    #[error("length {len} runs past the end of the enclosing message ({left} bytes left)")]
    LengthPastEnd {
        /// The length read.
        len: u64,
        /// The bytes left in the enclosing message.
        left: usize,
    },
    /// The input ended inside a fixed-width value of this many bytes.
    #[error("truncated {0}-byte fixed-width value")]
    TruncatedFixed(usize),
    /// A string field that is not UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// An end-group tag with no matching start-group tag.
    #[error("end-group tag without a matching start-group tag")]
    UnexpectedEndGroup,
    /// Messages or groups nested past prost's recursion limit.
    #[error("messages nested deeper than the limit of 100")]
    RecursionLimit,
}

/// Prost's recursion limit (`prost::RECURSION_LIMIT`, not exported): the budget of the fields of
/// the top-level message; every nested message or group costs one.
pub(super) const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const I64: u8 = 1;
pub(super) const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;
const WIRE_TYPES: [&str; 6] = ["varint", "64-bit", "length-delimited", "start-group", "end-group", "32-bit"];

/// Why decoding stopped.
pub(super) enum Stop {
    /// Malformed input; `path` grows from the innermost field outwards as the error unwinds.
    Malformed { offset: usize, reason: WireReason, path: Vec<(&'static str, Option<usize>)> },
    /// Prost refused a value the checks here accepted: redo the request with prost.
    Fallback,
    /// A string left for the column-wide UTF-8 check turned out not to be UTF-8: redo the
    /// request checking every string where it is read, to say which one.
    Recheck,
    /// A field read after a span's (or link's) nested messages changed whether it is kept:
    /// redo the request reading each span in two passes.
    TwoPass,
    /// The batch could not be assembled.
    Arrow(arrow::error::ArrowError),
}

/// Boxed so that the `Ok` path stays small.
pub(super) type R<T> = Result<T, Box<Stop>>;

#[cold]
pub(super) fn bad<T>(offset: usize, reason: WireReason) -> R<T> {
    Err(Box::new(Stop::Malformed { offset, reason, path: Vec::new() }))
}

pub(super) fn render_path(path: &[(&'static str, Option<usize>)]) -> String {
    if path.is_empty() {
        return "request".into();
    }
    let seg = |(name, i): &(&str, Option<usize>)| match i {
        Some(i) => format!("{name}[{i}]"),
        None => (*name).to_string(),
    };
    path.iter().rev().map(seg).collect::<Vec<_>>().join(".")
}

/// Adds a path segment to a malformation as it unwinds.
pub(super) trait At {
    fn at(self, field: &'static str) -> Self;
    fn at_i(self, field: &'static str, i: usize) -> Self;
}

impl<T> At for R<T> {
    #[inline]
    fn at(self, field: &'static str) -> Self {
        self.map_err(|e| push_seg(e, field, None))
    }
    #[inline]
    fn at_i(self, field: &'static str, i: usize) -> Self {
        self.map_err(|e| push_seg(e, field, Some(i)))
    }
}

#[cold]
fn push_seg(mut e: Box<Stop>, field: &'static str, i: Option<usize>) -> Box<Stop> {
    if let Stop::Malformed { path, .. } = &mut *e {
        path.push((field, i));
    }
    e
}

/// A field key: number and wire type packed as on the wire (`number << 3 | wire type`), and
/// where the key starts. One `u32` rather than two fields: it is stored and reloaded around
/// every field, and a load spanning two narrower stores stalls on store forwarding.
#[derive(Clone, Copy)]
pub(super) struct Key {
    raw: u32,
    at: usize,
}

impl Key {
    /// The field number.
    #[inline]
    pub(super) fn tag(self) -> u32 {
        self.raw >> 3
    }
    /// The wire type.
    #[inline]
    pub(super) fn wt(self) -> u8 {
        (self.raw & 7) as u8
    }
}

/// A cursor over one message: `b` is the body up to the end of the message, so offsets stay
/// absolute and nothing is read past the message.
#[derive(Clone, Copy)]
pub(super) struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    /// A cursor over a whole body, the top-level message.
    pub(super) fn new(body: &'a [u8]) -> Self {
        Self { b: body, pos: 0 }
    }

    pub(super) fn more(&self) -> bool {
        self.pos < self.b.len()
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        self.b.get(self.pos..).unwrap_or_default()
    }

    #[inline]
    fn varint(&mut self) -> R<u64> {
        if let Some(&x) = self.b.get(self.pos)
            && x < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(x));
        }
        self.varint_long()
    }

    fn varint_long(&mut self) -> R<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&x) = self.b.get(start + i) else { return bad(start, WireReason::TruncatedVarint) };
            v |= u64::from(x & 0x7f) << (7 * i);
            if x < 0x80 {
                // The tenth byte may only carry bit 63.
                if i == 9 && x > 1 {
                    break;
                }
                self.pos = start + i + 1;
                return Ok(v);
            }
        }
        bad(start, WireReason::VarintOverflow)
    }

    #[inline]
    pub(super) fn key(&mut self) -> R<Key> {
        let at = self.pos;
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return bad(at, WireReason::KeyOverflow(k));
        }
        let key = Key { raw: k as u32, at };
        if key.wt() > I32 {
            return bad(at, WireReason::InvalidWireType(key.wt()));
        }
        if key.tag() == 0 {
            return bad(at, WireReason::ZeroFieldNumber);
        }
        Ok(key)
    }

    fn fixed<const N: usize>(&mut self) -> R<[u8; N]> {
        match self.rest().first_chunk::<N>() {
            Some(b) => {
                self.pos += N;
                Ok(*b)
            }
            None => bad(self.pos, WireReason::TruncatedFixed(N)),
        }
    }

    /// A length-delimited payload, as a cursor over it.
    #[inline]
    pub(super) fn delimited(&mut self) -> R<Cur<'a>> {
        let at = self.pos;
        let len = self.varint()?;
        let left = self.b.len() - self.pos;
        if len > left as u64 {
            return bad(at, WireReason::LengthPastEnd { len, left });
        }
        let end = self.pos + len as usize;
        let sub = Cur { b: &self.b[..end], pos: self.pos };
        self.pos = end;
        Ok(sub)
    }

    #[inline]
    fn want(&self, k: Key, wt: u8) -> R<()> {
        if k.wt() == wt {
            return Ok(());
        }
        bad(k.at, WireReason::WrongWireType { actual: WIRE_TYPES[usize::from(k.wt())], expected: WIRE_TYPES[usize::from(wt)] })
    }

    #[inline]
    pub(super) fn read_varint(&mut self, k: Key) -> R<u64> {
        self.want(k, VARINT)?;
        self.varint()
    }

    pub(super) fn read_fixed64(&mut self, k: Key) -> R<u64> {
        self.want(k, I64)?;
        self.fixed::<8>().map(u64::from_le_bytes)
    }

    pub(super) fn read_fixed32(&mut self, k: Key) -> R<u32> {
        self.want(k, I32)?;
        self.fixed::<4>().map(u32::from_le_bytes)
    }

    #[inline]
    pub(super) fn read_bytes(&mut self, k: Key) -> R<&'a [u8]> {
        self.want(k, LEN)?;
        Ok(self.delimited()?.rest())
    }

    #[inline]
    pub(super) fn read_str(&mut self, k: Key) -> R<&'a str> {
        let at = self.pos;
        let b = self.read_bytes(k)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => bad(at, WireReason::InvalidUtf8),
        }
    }

    /// A string field as bytes: checked as UTF-8 here unless `lazy`, when the caller promises
    /// the bytes will be checked later (by the column they are stored in).
    #[inline]
    pub(super) fn read_text(&mut self, k: Key, lazy: bool) -> R<&'a [u8]> {
        if lazy { self.read_bytes(k) } else { self.read_str(k).map(str::as_bytes) }
    }

    /// A nested message: its cursor and the recursion budget of its fields. `ctx` is the
    /// budget of the enclosing message's fields, as prost's `DecodeContext` counts it.
    #[inline]
    pub(super) fn read_msg(&mut self, k: Key, ctx: u32) -> R<(Cur<'a>, u32)> {
        self.want(k, LEN)?;
        if ctx == 0 {
            return bad(k.at, WireReason::RecursionLimit);
        }
        Ok((self.delimited()?, ctx - 1))
    }

    /// Skips an unknown field as `prost::encoding::skip_field` does.
    pub(super) fn skip(&mut self, k: Key, ctx: u32) -> R<()> {
        if ctx == 0 {
            return bad(k.at, WireReason::RecursionLimit);
        }
        match k.wt() {
            VARINT => self.varint().map(|_| ()),
            I64 => self.fixed::<8>().map(|_| ()),
            LEN => self.delimited().map(|_| ()),
            SGROUP => loop {
                let inner = self.key()?;
                if inner.wt() == EGROUP {
                    return if inner.tag() == k.tag() { Ok(()) } else { bad(inner.at, WireReason::UnexpectedEndGroup) };
                }
                self.skip(inner, ctx - 1)?;
            },
            EGROUP => bad(k.at, WireReason::UnexpectedEndGroup),
            _ => self.fixed::<4>().map(|_| ()),
        }
    }
}
