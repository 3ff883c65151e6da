//! How spans are laid out in a block, where the stored schema (see
//! [`stored_schema`](super::stored_schema)) is encoded in two ways that Parquet alone would
//! not find: common attributes get columns of their own, and a parent is named by its row.
//!
//! **Attributes.** In the head, a span's attributes are one `Map<Utf8, Utf8>` entry list plus a
//! type tag per entry (see [`crate::value`]). Stored like that, every value of every key shares
//! one string column: an `http.response.status_code` sits between a `db.statement` and a
//! random `thread.id`, a constant such as `db.system = postgresql` costs a back-reference in
//! every row, every key is written again in every row, and numbers are decimal text. That was
//! about 20 B of a 45 B span on disk (`blockbench --columns`). So a block stores each
//! (key, type) that is common in it as its own column, named `attr:<tag>:<key>` (for example
//! `attr:i:http.response.status_code`): `Int64` for ints, `Float64` for doubles, `Boolean` for
//! bools and `Utf8` for everything else, null where a span does not have the key. Parquet then
//! encodes each column on its own terms: a constant costs nothing, a small set of strings
//! becomes a dictionary, a number costs its entropy. Keys that are rare in the block, and
//! values that would not come back byte for byte (an int whose text is not the canonical
//! decimal, which only a damaged stored value can produce), stay in the `attributes` and
//! `attribute_types` columns. The attributes come back as the same entries with the same
//! values and types; their order within a span is not kept (dedicated columns first, in key
//! order, then the rest), which OTLP allows: attributes are a map.
//! [`SpanView::record`](super::SpanView::record) returns them sorted by key, so a span reads the
//! same from the head and from a block.
//!
//! **Parents.** A parent span id is 8 random bytes, but the parent is almost always a row of
//! the same trace a few rows away (a block is sorted by trace id). A block stores
//! `parent_offset` (`Int32`): the parent's row minus the span's row when the parent is in the
//! same run of rows of the trace handed to [`Layout::apply`] (the writer never splits that run
//! across row groups), else 0; `parent_span_id` then holds only the parents that are not there
//! (and is null for the others and for roots). Reading it back needs the parent's row, so a
//! reader must read a trace's rows in a row group together: a trace lookup and compaction do;
//! the SQL scan does not let page pruning drop rows when it reads `parent_span_id`
//! (`skein_query`'s table provider).
//!
//! [`Layout::choose`] picks the attribute columns from the batches being written,
//! [`Layout::apply`] turns a batch of the stored schema into the block's schema and
//! [`restore`] turns block batches back (also when only some columns were read).

use super::build::MapCol;
use super::{col, stored_schema};
use crate::value::{self, ValueRef, tag};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryDictionaryBuilder, BooleanBuilder, FixedSizeBinaryArray, Float64Builder, Int32Array, Int64Builder,
    MapArray, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use std::collections::HashMap;
use std::sync::Arc;

/// The column naming each parent by its row, relative to the span's.
pub const PARENT_OFFSET: &str = "parent_offset";

/// Prefix of the name of a dedicated attribute column.
pub const PREFIX: &str = "attr:";

/// Most attribute columns a block gets.
pub const MAX_COLUMNS: usize = 128;

/// A key becomes a column when at least one span in this many has it (1 %).
const MIN_SHARE: u64 = 100;

/// ... and at least this many spans have it: a small block keeps its attributes in the map
/// rather than adding columns that a query over many blocks would have to carry.
const MIN_COUNT: u64 = 100;

/// A string or bool column with at most this many distinct values in a block is filled.
const FILL_MAX_DISTINCT: usize = 2;

/// The column that names, per span, the filled attribute columns it does not have: a
/// dictionary of length-prefixed column names (one entry per distinct set in a page).
pub const ABSENT: &str = "attr_absent";

fn absent_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary))
}

/// The Arrow type a column of values with `tag` is stored as.
fn data_type(t: u8) -> DataType {
    match t {
        tag::INT => DataType::Int64,
        tag::DOUBLE => DataType::Float64,
        tag::BOOL => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

/// The Arrow field of a block column beyond the stored schema, by name (see
/// [`Layout::extra_columns`]); `None` for a name this version does not know.
pub fn extra_field(name: &str) -> Option<Field> {
    if name == PARENT_OFFSET {
        return Some(Field::new(PARENT_OFFSET, DataType::Int32, true));
    }
    if name == ABSENT {
        return Some(Field::new(ABSENT, absent_type(), true));
    }
    parse_column_name(name).map(|(_, t)| Field::new(name, data_type(t), true))
}

/// The name of the dedicated column of `key` with values of type `t`.
pub fn column_name(key: &str, t: u8) -> String {
    format!("{PREFIX}{}:{key}", t as char)
}

/// The (key, tag) of a dedicated column's name, `None` for any other column.
pub fn parse_column_name(name: &str) -> Option<(&str, u8)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (t, key) = rest.split_once(':')?;
    match t.as_bytes() {
        [t] if t.is_ascii_lowercase() => Some((key, *t)),
        _ => None,
    }
}

/// Whether `s` is exactly how an int of this value is stored (`value::render_ref`), so that
/// storing the number and rendering it again gives `s` back.
fn canonical_int(s: &str) -> Option<i64> {
    let v: i64 = s.parse().ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = !digits.starts_with('+') && (digits == "0" || !digits.starts_with('0')) && s != "-0";
    canonical.then_some(v)
}

/// As [`canonical_int`] for doubles, whose stored form is Rust's shortest round-trip `{:?}`.
fn canonical_double(s: &str, buf: &mut Vec<u8>) -> Option<f64> {
    let v: f64 = s.parse().ok()?;
    buf.clear();
    value::render_ref(ValueRef::Double(v), buf);
    (buf.as_slice() == s.as_bytes()).then_some(v)
}

/// One dedicated attribute column of a block.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    key: String,
    tag: u8,
    /// For a column with at most [`FILL_MAX_DISTINCT`] string or bool values: the most common
    /// one, written where a span lacks the key (which [`ABSENT`] then records), so the column
    /// has no nulls and Parquet stores it as a run.
    fill: Option<String>,
}

/// The layout of one block: its dedicated attribute columns.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Sorted by (key, tag).
    columns: Vec<Column>,
    index: HashMap<(String, u8), usize>,
    schema: SchemaRef,
}

/// Values of one (key, tag) in the batches a layout is chosen for.
struct Seen<'a> {
    count: u64,
    /// Distinct values and their counts, while there are at most [`FILL_MAX_DISTINCT`].
    values: Option<Vec<(&'a str, u64)>>,
}

impl Layout {
    /// The columns for the spans of `batches` (of [`schema`](super::schema) or
    /// [`stored_schema`](super::stored_schema)): every (key, tag) that at least 1 % of the
    /// spans, and at least 100, have, the most common first, at most [`MAX_COLUMNS`]; a string
    /// or bool column with at most [`FILL_MAX_DISTINCT`] values is filled.
    pub fn choose(batches: &[&RecordBatch]) -> Self {
        let mut seen: HashMap<(&str, u8), Seen<'_>> = HashMap::new();
        let mut rows = 0u64;
        for b in batches {
            let (Some(map), Some(types)) = (attributes_of(b), attribute_types_of(b)) else { continue };
            rows += b.num_rows() as u64;
            let keys = map.keys().as_string::<i32>();
            let vals = map.values().as_string::<i32>();
            for row in 0..b.num_rows() {
                let offsets = &map.value_offsets()[row..row + 2];
                let row_tags = types.value(row);
                for (n, i) in (offsets[0] as usize..offsets[1] as usize).enumerate() {
                    let t = row_tags.get(n).copied().unwrap_or(tag::STRING);
                    let e = seen
                        .entry((keys.value(i), t))
                        .or_insert_with(|| Seen { count: 0, values: (t != tag::INT && t != tag::DOUBLE).then(Vec::new) });
                    e.count += 1;
                    if let Some(values) = &mut e.values {
                        let v = vals.value(i);
                        if let Some(at) = values.iter().position(|(x, _)| *x == v) {
                            values[at].1 += 1;
                        } else if values.len() < FILL_MAX_DISTINCT {
                            values.push((v, 1));
                        } else {
                            e.values = None;
                        }
                    }
                }
            }
        }
        let mut common: Vec<((&str, u8), Seen<'_>)> =
            seen.into_iter().filter(|(_, s)| s.count * MIN_SHARE >= rows && s.count >= MIN_COUNT).collect();
        common.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        common.truncate(MAX_COLUMNS);
        let columns = common
            .into_iter()
            .map(|((key, tag), s)| Column {
                key: key.to_string(),
                tag,
                fill: s
                    .values
                    .and_then(|v| v.into_iter().max_by_key(|(x, n)| (*n, std::cmp::Reverse(*x))).map(|(x, _)| x.to_string()))
                    // A bool column is filled only with a value it can hold (a damaged stored
                    // bool is neither, and goes to the map).
                    .filter(|x| tag != tag::BOOL || x == "true" || x == "false"),
            })
            .collect();
        Self::with_columns(columns)
    }

    /// A layout with exactly `columns` ((key, tag) pairs) as attribute columns, none filled.
    pub fn new(columns: Vec<(String, u8)>) -> Self {
        Self::with_columns(columns.into_iter().map(|(key, tag)| Column { key, tag, fill: None }).collect())
    }

    fn with_columns(mut columns: Vec<Column>) -> Self {
        columns.sort_by(|a, b| (&a.key, a.tag).cmp(&(&b.key, b.tag)));
        columns.dedup_by(|a, b| a.key == b.key && a.tag == b.tag);
        let index = columns.iter().enumerate().map(|(i, c)| ((c.key.clone(), c.tag), i)).collect();
        let schema = block_schema(&columns);
        Self { columns, index, schema }
    }

    /// Number of dedicated columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether no attribute has a column of its own.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The names of the dedicated columns.
    pub fn column_names(&self) -> impl Iterator<Item = String> + '_ {
        self.columns.iter().map(|c| column_name(&c.key, c.tag))
    }

    /// The type tag of each dedicated column, in the order of [`Self::column_names`].
    pub fn column_tags(&self) -> impl Iterator<Item = u8> + '_ {
        self.columns.iter().map(|c| c.tag)
    }

    /// The names of the block's columns after the stored schema's: `parent_offset`,
    /// `attr_absent`, then the attribute columns.
    pub fn extra_columns(&self) -> Vec<String> {
        [PARENT_OFFSET.to_string(), ABSENT.to_string()].into_iter().chain(self.column_names()).collect()
    }

    /// The schema of the block: [`stored_schema`](super::stored_schema) (whose `attributes`
    /// and `attribute_types` then hold only the entries without a column, and
    /// `parent_span_id` only the parents not named by offset), then `parent_offset`,
    /// `attr_absent` and the attribute columns.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// `batch` (of [`stored_schema`](super::stored_schema)) in the block's schema. Each run
    /// of rows of one trace in `batch` is one unit for `parent_offset`: the writer must put it
    /// in one row group.
    ///
    /// # Errors
    /// The batch is not of the stored schema, or a key or value is not UTF-8 (neither can
    /// happen to a batch the builders made).
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let bad = || ArrowError::SchemaError("a block layout expects a batch of the stored spans schema".into());
        let map = attributes_of(batch).ok_or_else(bad)?;
        let types = attribute_types_of(batch).ok_or_else(bad)?;
        let rows = batch.num_rows();
        let mut cols: Vec<Col> = self
            .columns
            .iter()
            .map(|c| match c.tag {
                tag::INT => Col::Int(Int64Builder::with_capacity(rows)),
                tag::DOUBLE => Col::Double(Float64Builder::with_capacity(rows)),
                tag::BOOL => Col::Bool(BooleanBuilder::with_capacity(rows)),
                _ => Col::Str(StringBuilder::with_capacity(rows, 0)),
            })
            .collect();
        let names: Vec<String> = self.column_names().collect();
        let mut rest = MapCol::new();
        let mut absent = BinaryDictionaryBuilder::<Int32Type>::new();
        let keys = map.keys().as_string::<i32>();
        let vals = map.values().as_string::<i32>();
        let mut filled = vec![false; cols.len()];
        let (mut buf, mut missing) = (Vec::new(), Vec::new());
        let mut lookup = (String::new(), 0u8);
        let mut row_keys: Vec<&str> = Vec::new();
        for row in 0..rows {
            filled.iter_mut().for_each(|f| *f = false);
            row_keys.clear();
            let offsets = &map.value_offsets()[row..row + 2];
            let row_tags = types.value(row);
            for (n, i) in (offsets[0] as usize..offsets[1] as usize).enumerate() {
                let (k, v) = (keys.value(i), vals.value(i));
                let t = row_tags.get(n).copied().unwrap_or(tag::STRING);
                // Only a key's first entry in a span may go to a column: restoring puts column
                // entries before map entries, so a repeated key keeps its entries' order (and
                // a lookup its first value) whatever their types.
                let first = !row_keys.contains(&k);
                row_keys.push(k);
                lookup.0.clear();
                lookup.0.push_str(k);
                lookup.1 = t;
                let placed = match self.index.get(&lookup) {
                    Some(&c) if first && !filled[c] => {
                        let ok = cols[c].push(v, &mut buf);
                        filled[c] |= ok;
                        ok
                    }
                    _ => false,
                };
                if !placed {
                    rest.begin_entry(k.as_bytes()).extend_from_slice(v.as_bytes());
                    rest.end_entry(t);
                }
            }
            rest.close_row();
            missing.clear();
            for (c, col) in cols.iter_mut().enumerate() {
                if filled[c] {
                    continue;
                }
                match &self.columns[c].fill {
                    Some(v) => {
                        if !col.push(v, &mut buf) {
                            return Err(ArrowError::InvalidArgumentError(format!("{} cannot hold its fill value {v:?}", names[c])));
                        }
                        push_name(&mut missing, &names[c]);
                    }
                    None => col.append_null(),
                }
            }
            absent.append_value(&missing);
        }
        let (map, tags) = rest.finish()?;
        let (parents, offsets) = parent_offsets(batch)?;
        let mut columns = batch.columns().to_vec();
        columns[col::PARENT_SPAN_ID] = Arc::new(parents);
        columns[stored_index(col::ATTRIBUTES)] = Arc::new(map);
        columns[stored_index(col::ATTRIBUTE_TYPES)] = Arc::new(tags);
        columns.push(Arc::new(offsets));
        columns.push(Arc::new(absent.finish()));
        columns.extend(cols.into_iter().map(Col::finish));
        RecordBatch::try_new(self.schema(), columns)
    }
}

/// The schema of a block with attribute `columns` (see [`Layout::schema`]).
fn block_schema(columns: &[Column]) -> SchemaRef {
    let mut fields: Vec<Field> = stored_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(PARENT_OFFSET, DataType::Int32, false));
    fields.push(Field::new(ABSENT, absent_type(), false));
    fields.extend(columns.iter().map(|c| Field::new(column_name(&c.key, c.tag), data_type(c.tag), c.fill.is_none())));
    Arc::new(Schema::new(fields))
}

/// Appends a length-prefixed column name to an [`ABSENT`] value.
fn push_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// The column names in an [`ABSENT`] value (a damaged value ends the list early).
fn absent_names(mut v: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = v.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(name) = rest.get(..len) else { break };
        out.push(name);
        v = &rest[len..];
    }
    out
}

/// `parent_span_id` as the block stores it and `parent_offset`, for a batch of the stored
/// schema: within each run of rows of one trace, a parent found in the run is named by its
/// offset.
fn parent_offsets(batch: &RecordBatch) -> Result<(FixedSizeBinaryArray, Int32Array), ArrowError> {
    let bad = || ArrowError::SchemaError("a stored spans batch has no trace_id, span_id or parent_span_id".into());
    let trace = batch.column(col::TRACE_ID).as_fixed_size_binary_opt().ok_or_else(bad)?;
    let span = batch.column(col::SPAN_ID).as_fixed_size_binary_opt().ok_or_else(bad)?;
    let parent = batch.column(col::PARENT_SPAN_ID).as_fixed_size_binary_opt().ok_or_else(bad)?;
    let rows = batch.num_rows();
    let mut offsets = vec![0i32; rows];
    let mut kept: Vec<Option<&[u8]>> = Vec::with_capacity(rows);
    let mut rows_of: HashMap<&[u8], usize> = HashMap::new();
    let mut start = 0;
    while start < rows {
        let mut end = start + 1;
        while end < rows && trace.value(end) == trace.value(start) {
            end += 1;
        }
        rows_of.clear();
        for r in start..end {
            rows_of.insert(span.value(r), r);
        }
        for (r, offset) in offsets.iter_mut().enumerate().take(end).skip(start) {
            let p = parent.is_valid(r).then(|| parent.value(r));
            match p.and_then(|p| rows_of.get(p)) {
                Some(&at) if at != r => {
                    *offset = i32::try_from(at as i64 - r as i64).map_err(|_| ArrowError::ComputeError("trace run too long".into()))?;
                    kept.push(None);
                }
                _ => kept.push(p),
            }
        }
        start = end;
    }
    Ok((FixedSizeBinaryArray::try_from_sparse_iter_with_size(kept.into_iter(), 8)?, Int32Array::from(offsets)))
}

/// A dedicated column being built.
enum Col {
    Int(Int64Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Col {
    /// Appends `v` (the stored text of a value) if it comes back byte for byte from this
    /// column's type; `false` (nothing appended) if not.
    fn push(&mut self, v: &str, buf: &mut Vec<u8>) -> bool {
        match self {
            Self::Int(b) => canonical_int(v).map(|x| b.append_value(x)).is_some(),
            Self::Double(b) => canonical_double(v, buf).map(|x| b.append_value(x)).is_some(),
            Self::Bool(b) => match v {
                "true" | "false" => {
                    b.append_value(v == "true");
                    true
                }
                _ => false,
            },
            Self::Str(b) => {
                b.append_value(v);
                true
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Int(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Str(b) => b.append_null(),
        }
    }
    fn finish(self) -> ArrayRef {
        match self {
            Self::Int(mut b) => Arc::new(b.finish()),
            Self::Double(mut b) => Arc::new(b.finish()),
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Str(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Position of column `c` of the full schema in the stored schema (which lacks `end_time`).
fn stored_index(c: usize) -> usize {
    if c > col::END_TIME { c - 1 } else { c }
}

fn attributes_of(b: &RecordBatch) -> Option<&MapArray> {
    b.column_by_name("attributes")?.as_map_opt()
}

fn attribute_types_of(b: &RecordBatch) -> Option<&arrow::array::BinaryArray> {
    b.column_by_name("attribute_types")?.as_binary_opt::<i32>()
}

/// Whether `schema` (of a block or a read of one) has dedicated attribute columns.
pub fn has_attribute_columns(schema: &Schema) -> bool {
    schema.fields().iter().any(|f| parse_column_name(f.name()).is_some())
}

/// A batch read from a block, in `out` (the stored schema, or a projection of it): every
/// column of `out` is taken by name from `batch`; `attributes` / `attribute_types`, if `out`
/// has them, are rebuilt from the residual columns plus the attribute columns, and
/// `parent_span_id` from `parent_offset` (which needs `span_id`, and every row of a trace's
/// run in the row group, in `batch`). A batch of a block written before these columns existed
/// only has its columns picked.
///
/// # Errors
/// A column of `out` (or one the rebuild needs) is missing from `batch`, a parent's row is not
/// in `batch`, or an attribute column has a type it cannot have (a damaged block).
pub fn restore(batch: &RecordBatch, out: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let wants = |name: &str| out.fields().iter().any(|f| f.name() == name);
    let attrs = if (wants("attributes") || wants("attribute_types")) && has_attribute_columns(batch.schema_ref()) {
        Some(rebuild(batch)?)
    } else {
        None
    };
    let parents = match batch.column_by_name(PARENT_OFFSET) {
        Some(offsets) if wants("parent_span_id") => Some(parents(batch, offsets)?),
        _ => None,
    };
    let mut columns = Vec::with_capacity(out.fields().len());
    for f in out.fields() {
        let c = match (f.name().as_str(), &attrs, &parents) {
            ("attributes", Some((m, _)), _) => Arc::clone(m),
            ("attribute_types", Some((_, t)), _) => Arc::clone(t),
            ("parent_span_id", _, Some(p)) => Arc::clone(p),
            (name, _, _) => Arc::clone(batch.column_by_name(name).ok_or_else(|| missing(name))?),
        };
        columns.push(c);
    }
    RecordBatch::try_new_with_options(
        Arc::clone(out),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

fn missing(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!("a block batch has no {name} column"))
}

/// The full `parent_span_id` of a block batch from its `parent_offset` column.
fn parents(batch: &RecordBatch, offsets: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let offsets = offsets.as_primitive_opt::<arrow::datatypes::Int32Type>().ok_or_else(|| missing(PARENT_OFFSET))?;
    let column = |name: &str| batch.column_by_name(name).and_then(|c| c.as_fixed_size_binary_opt()).ok_or_else(|| missing(name));
    let (span, parent) = (column("span_id")?, column("parent_span_id")?);
    let trace = column("trace_id").ok();
    let rows = batch.num_rows();
    let mut out: Vec<Option<&[u8]>> = Vec::with_capacity(rows);
    for r in 0..rows {
        let o = if offsets.is_valid(r) { offsets.value(r) } else { 0 };
        if o == 0 {
            out.push(parent.is_valid(r).then(|| parent.value(r)));
            continue;
        }
        let at = r as i64 + i64::from(o);
        let same_trace = |at: usize| trace.is_none_or(|t| t.value(at) == t.value(r));
        match usize::try_from(at) {
            Ok(at) if at < rows && same_trace(at) => out.push(Some(span.value(at))),
            _ => {
                return Err(ArrowError::ComputeError(format!(
                    "the parent of row {r} is row {at}, which was not read with it (a trace's rows must be read together)"
                )));
            }
        }
    }
    Ok(Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(out.into_iter(), 8)?))
}

/// The full `attributes` map and `attribute_types` of a block batch.
fn rebuild(batch: &RecordBatch) -> Result<(ArrayRef, ArrayRef), ArrowError> {
    let schema = batch.schema();
    let mut dedicated: Vec<(&str, u8, Typed<'_>)> = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let Some((key, t)) = parse_column_name(f.name()) else { continue };
        if batch.column(i).null_count() == batch.num_rows() {
            continue;
        }
        let a = batch.column(i);
        let typed = match t {
            tag::INT => a.as_primitive_opt::<Int64Type>().map(Typed::Int),
            tag::DOUBLE => a.as_primitive_opt::<Float64Type>().map(Typed::Double),
            tag::BOOL => a.as_boolean_opt().map(Typed::Bool),
            _ => a.as_string_opt::<i32>().map(Typed::Str),
        };
        let typed = typed
            .ok_or_else(|| ArrowError::SchemaError(format!("attribute column {} is {}, not {}", f.name(), a.data_type(), data_type(t))))?;
        dedicated.push((key, t, typed));
    }
    dedicated.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let absent = Absent::new(batch, &dedicated)?;
    let map = attributes_of(batch).ok_or_else(|| missing("attributes"))?;
    let types = attribute_types_of(batch).ok_or_else(|| missing("attribute_types"))?;
    let keys = map.keys().as_string::<i32>();
    let vals = map.values().as_string::<i32>();
    let mut out = MapCol::new();
    for row in 0..batch.num_rows() {
        let gone = absent.row(row);
        for (c, (key, t, array)) in dedicated.iter().enumerate() {
            if array.is_null(row) || gone.is_some_and(|g| g[c]) {
                continue;
            }
            let buf = out.begin_entry(key.as_bytes());
            match array {
                Typed::Int(a) => {
                    value::render_ref(ValueRef::Int(a.value(row)), buf);
                }
                Typed::Double(a) => {
                    value::render_ref(ValueRef::Double(a.value(row)), buf);
                }
                Typed::Bool(a) => {
                    value::render_ref(ValueRef::Bool(a.value(row)), buf);
                }
                Typed::Str(a) => buf.extend_from_slice(a.value(row).as_bytes()),
            }
            out.end_entry(*t);
        }
        let offsets = &map.value_offsets()[row..row + 2];
        let row_tags = types.value(row);
        for (n, i) in (offsets[0] as usize..offsets[1] as usize).enumerate() {
            out.begin_entry(keys.value(i).as_bytes()).extend_from_slice(vals.value(i).as_bytes());
            out.end_entry(row_tags.get(n).copied().unwrap_or(tag::STRING));
        }
        out.close_row();
    }
    let (m, t) = out.finish()?;
    Ok((Arc::new(m), Arc::new(t)))
}

/// A dedicated column of a block batch, downcast once.
enum Typed<'a> {
    Int(&'a arrow::array::Int64Array),
    Double(&'a arrow::array::Float64Array),
    Bool(&'a arrow::array::BooleanArray),
    Str(&'a arrow::array::StringArray),
}

impl Typed<'_> {
    fn is_null(&self, row: usize) -> bool {
        match self {
            Self::Int(a) => a.is_null(row),
            Self::Double(a) => a.is_null(row),
            Self::Bool(a) => a.is_null(row),
            Self::Str(a) => a.is_null(row),
        }
    }
}

/// The [`ABSENT`] column of a block batch: per distinct value, which of the batch's dedicated
/// columns (in `rebuild`'s order) a span with that value lacks.
struct Absent<'a> {
    keys: Option<&'a arrow::array::Int32Array>,
    masks: Vec<Vec<bool>>,
}

impl<'a> Absent<'a> {
    fn new(batch: &'a RecordBatch, dedicated: &[(&str, u8, Typed<'_>)]) -> Result<Self, ArrowError> {
        let none = Self { keys: None, masks: Vec::new() };
        let Some(column) = batch.column_by_name(ABSENT) else { return Ok(none) };
        if column.null_count() == column.len() {
            return Ok(none);
        }
        let dict = column
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| ArrowError::SchemaError(format!("{ABSENT} is {}, not a dictionary", column.data_type())))?;
        let values = dict
            .values()
            .as_binary_opt::<i32>()
            .ok_or_else(|| ArrowError::SchemaError(format!("{ABSENT} holds {}, not binary", dict.values().data_type())))?;
        let position: HashMap<String, usize> = dedicated.iter().enumerate().map(|(i, (k, t, _))| (column_name(k, *t), i)).collect();
        let masks = (0..values.len())
            .map(|v| {
                let mut mask = vec![false; dedicated.len()];
                for name in absent_names(values.value(v)) {
                    if let Some(&i) = std::str::from_utf8(name).ok().and_then(|n| position.get(n)) {
                        mask[i] = true;
                    }
                }
                mask
            })
            .collect();
        Ok(Self { keys: Some(dict.keys()), masks })
    }

    /// Which dedicated columns the span at `row` lacks; `None` when the block says nothing.
    fn row(&self, row: usize) -> Option<&[bool]> {
        let keys = self.keys?;
        if keys.is_null(row) {
            return None;
        }
        self.masks.get(usize::try_from(keys.value(row)).ok()?).map(Vec::as_slice)
    }
}
