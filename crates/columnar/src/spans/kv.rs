//! Attributes on the wire: a `KeyValue` and its `AnyValue` decoded without copying (strings
//! stay borrowed from the body), and rendered into a map column with validation's limits. See
//! `super::wire` for the rules (UTF-8 checked here or with the column, merging of repeated
//! fields, arrays and kvlists left to prost).

use super::build::MapCol;
use super::protobuf::{At, Cur, LEN, R, RECURSION_LIMIT, Stop};
use crate::value::{self, ValueRef};
use prost::Message;
use skein_otlp::Validated;
use skein_otlp::proto::common::v1::AnyValue;

/// An attribute value as decoded: a borrowed scalar, or an array or kvlist left for prost.
#[derive(Clone, Copy)]
pub(super) enum Val<'a> {
    Scalar(ValueRef<'a>),
    Complex,
}

/// A decoded `KeyValue`; `msg` is its encoding, re-read when the value is complex.
pub(super) struct Kv<'a> {
    pub(super) key: &'a [u8],
    pub(super) val: Val<'a>,
    msg: Cur<'a>,
}

/// Decodes a `KeyValue`. With `lazy`, its key and string value are not checked as UTF-8 here:
/// the caller stores them in columns that are checked as a whole.
#[inline(always)]
pub(super) fn key_value<'a>(msg: Cur<'a>, ctx: u32, lazy: bool) -> R<Kv<'a>> {
    let mut kv = Kv { key: b"", val: Val::Scalar(ValueRef::Empty), msg };
    let mut c = msg;
    while c.more() {
        let k = c.key()?;
        match k.tag() {
            1 => set_text(&mut kv.key, c.read_text(k, lazy).at("key")?)?,
            2 => {
                let (m, ctx) = c.read_msg(k, ctx).at("value")?;
                any_value(m, ctx, &mut kv.val, lazy).at("value")?;
            }
            3 => {
                c.read_varint(k).at("key_strindex")?;
            }
            _ => c.skip(k, ctx)?,
        }
    }
    Ok(kv)
}

/// Merges an `AnyValue` into `val`: the last member of the oneof wins.
#[inline(always)]
fn any_value<'a>(mut c: Cur<'a>, ctx: u32, val: &mut Val<'a>, lazy: bool) -> R<()> {
    while c.more() {
        let k = c.key()?;
        let new = match k.tag() {
            1 => Val::Scalar(ValueRef::Str(c.read_text(k, lazy).at("string_value")?)),
            2 => Val::Scalar(ValueRef::Bool(c.read_varint(k).at("bool_value")? != 0)),
            3 => Val::Scalar(ValueRef::Int(c.read_varint(k).at("int_value")? as i64)),
            4 => Val::Scalar(ValueRef::Double(f64::from_bits(c.read_fixed64(k).at("double_value")?))),
            5 => {
                let (m, ctx) = c.read_msg(k, ctx).at("array_value")?;
                array_value(m, ctx).at("array_value")?;
                Val::Complex
            }
            6 => {
                let (m, ctx) = c.read_msg(k, ctx).at("kvlist_value")?;
                kvlist_value(m, ctx).at("kvlist_value")?;
                Val::Complex
            }
            7 => Val::Scalar(ValueRef::Bytes(c.read_bytes(k).at("bytes_value")?)),
            8 => {
                c.read_varint(k).at("string_value_strindex")?;
                Val::Scalar(ValueRef::Empty)
            }
            _ => {
                c.skip(k, ctx)?;
                continue;
            }
        };
        // A string read lazily and now replaced is never stored: check it now.
        if let Val::Scalar(ValueRef::Str(old)) = *val {
            utf8(old)?;
        }
        *val = new;
    }
    Ok(())
}

fn array_value(mut c: Cur<'_>, ctx: u32) -> R<()> {
    let mut i = 0;
    while c.more() {
        let k = c.key()?;
        if k.tag() == 1 {
            let (m, ctx) = c.read_msg(k, ctx).at_i("values", i)?;
            any_value(m, ctx, &mut Val::Complex, false).at_i("values", i)?;
            i += 1;
        } else {
            c.skip(k, ctx)?;
        }
    }
    Ok(())
}

fn kvlist_value(mut c: Cur<'_>, ctx: u32) -> R<()> {
    let mut i = 0;
    while c.more() {
        let k = c.key()?;
        if k.tag() == 1 {
            let (m, ctx) = c.read_msg(k, ctx).at_i("values", i)?;
            key_value(m, ctx, false).at_i("values", i)?;
            i += 1;
        } else {
            c.skip(k, ctx)?;
        }
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut at = max.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[..at]
}

/// `b` as a string, for a string read lazily that must be checked now after all.
pub(super) fn utf8(b: &[u8]) -> R<&str> {
    std::str::from_utf8(b).map_err(|_| Box::new(Stop::Recheck))
}

/// Sets a string field that may appear more than once: the value it replaces (read lazily,
/// and now never stored) is checked first, as prost checks every occurrence.
#[inline]
pub(super) fn set_text<'a>(slot: &mut &'a [u8], new: &'a [u8]) -> R<()> {
    if !slot.is_empty() {
        utf8(slot)?;
    }
    *slot = new;
    Ok(())
}

/// Appends a kept attribute to `out`, truncating long values as validation does.
pub(super) fn render_attr(kv: &Kv<'_>, max_len: usize, out: &mut MapCol, v: &mut Validated) -> R<()> {
    match kv.val {
        Val::Scalar(r) => {
            let r = match r {
                ValueRef::Str(s) if s.len() > max_len => {
                    v.values_truncated += 1;
                    // The cut-off tail is not stored: check the whole value now.
                    ValueRef::Str(cut(utf8(s)?, max_len).as_bytes())
                }
                ValueRef::Bytes(b) if b.len() > max_len => {
                    v.values_truncated += 1;
                    ValueRef::Bytes(&b[..max_len])
                }
                r => r,
            };
            let tag = value::render_ref(r, out.begin_entry(kv.key));
            out.end_entry(tag);
            Ok(())
        }
        Val::Complex => {
            let mut any = AnyValue::default();
            let mut c = kv.msg;
            while c.more() {
                let k = c.key()?;
                if k.tag() == 2 && k.wt() == LEN {
                    any.merge(c.delimited()?.rest()).map_err(|_| Box::new(Stop::Fallback))?;
                } else {
                    c.skip(k, RECURSION_LIMIT)?;
                }
            }
            skein_otlp::validate::truncate_value(&mut any, max_len, v);
            let tag = value::render(Some(&any), out.begin_entry(kv.key));
            out.end_entry(tag);
            Ok(())
        }
    }
}
