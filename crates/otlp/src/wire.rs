//! Reading protobuf on the wire without decoding it into structs: the agent checks and stamps
//! spans this way (`skein_sources::wire`), and [`crate::count`] counts and splits exports.

/// Wire type of a varint field.
pub const VARINT: u8 = 0;
/// Wire type of a fixed 64-bit field.
pub const FIXED64: u8 = 1;
/// Wire type of a length-delimited field.
pub const LEN: u8 = 2;
/// Wire type of a fixed 32-bit field.
pub const FIXED32: u8 = 5;

/// A cursor over protobuf bytes; every read is checked and gives `None` past the end or on
/// malformed input, never a panic.
#[derive(Debug, Clone)]
pub struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    /// A cursor at the start of `b`.
    #[inline]
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    #[inline]
    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.i
    }

    #[inline]
    /// Whether every byte has been read.
    pub fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    /// The next varint. Tags and most lengths fit in one byte, so that case is inlined and the
    /// loop is kept out of line.
    #[inline]
    pub fn varint(&mut self) -> Option<u64> {
        let b0 = *self.b.get(self.i)?;
        if b0 < 0x80 {
            self.i += 1;
            return Some(u64::from(b0));
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    #[inline]
    /// (field number, wire type) of the next field.
    pub fn key(&mut self) -> Option<(u64, u8)> {
        let k = self.varint()?;
        Some((k >> 3, (k & 7) as u8))
    }

    #[inline]
    /// The bytes of a length-delimited field's value.
    pub fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.i.checked_add(n)?;
        let s = self.b.get(self.i..end)?;
        self.i = end;
        Some(s)
    }

    #[inline]
    /// A fixed 64-bit value.
    pub fn fixed64(&mut self) -> Option<u64> {
        let s = self.b.get(self.i..self.i + 8)?;
        self.i += 8;
        Some(u64::from_le_bytes(s.try_into().ok()?))
    }

    #[inline]
    /// Skips a field's value of `wire_type`; `None` for groups or an unknown wire type.
    pub fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.fixed64().map(|_| ()),
            LEN => self.len_delimited().map(|_| ()),
            FIXED32 => {
                self.b.get(self.i..self.i + 4)?;
                self.i += 4;
                Some(())
            }
            _ => None, // groups, or garbage
        }
    }
}
