//! Encoding spans as a block: one Parquet file of the stored schema (no `end_time`, which is
//! start + duration) in the block layout of `skein_columnar::spans::layout` (attribute columns,
//! parent offsets), sorted by trace id (then start time), row groups ending at trace
//! boundaries, zstd, row-group statistics on every column, a page index on the columns queries
//! prune by, and a bloom filter on `trace_id`.

use crate::config::BlockConfig;
use arrow::array::{RecordBatch, UInt32Array};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use skein_columnar::spans::layout::Layout;
use skein_columnar::spans::{SpanView, schema, stored_columns};
use std::collections::HashSet;
use std::sync::Arc;

/// A block's bytes and what the manifest needs to know about them.
#[derive(Debug)]
pub struct Encoded {
    /// The Parquet file.
    pub bytes: Vec<u8>,
    /// Spans written (duplicates dropped).
    pub rows: u64,
    /// Duplicate spans (same trace and span id) dropped.
    pub duplicates: u64,
    /// Earliest span start (Unix ns).
    pub min_start_ns: i64,
    /// Latest span start (Unix ns).
    pub max_start_ns: i64,
    /// Latest span end (Unix ns).
    pub max_end_ns: i64,
    /// Columns beyond the table's stored schema (for spans, `parent_offset` and the attribute
    /// columns, see `skein_columnar::spans::layout`).
    pub columns: Vec<String>,
}

/// Rows handed to the Parquet writer at once (rounded up to a whole trace).
const CHUNK_ROWS: usize = 8192;

/// A row group is cut inside a trace only when the trace would make it this many times
/// `row_group_rows`.
const MAX_GROUP_FACTOR: usize = 2;

/// Columns with a page index (page-level statistics).
const PAGE_INDEXED: &[&str] = &["trace_id", "start_time", "duration_ns", "status_code", "kind", "name", "service_name", "node"];

fn properties(cfg: &BlockConfig, traces: u64, layout: &Layout, tweak: Tweak<'_>) -> Result<WriterProperties, ParquetError> {
    let trace_id = ColumnPath::from("trace_id");
    // Row-group statistics for every column, and a page index only for the columns queries
    // prune pages by: a block is sorted by trace id, so for the others every page spans about
    // the whole range and the index would only cost space.
    let mut b = WriterProperties::builder().set_statistics_enabled(EnabledStatistics::Chunk);
    for name in PAGE_INDEXED {
        b = b.set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::Page);
    }
    for (name, double) in layout.column_names().zip(layout.column_tags().map(|t| t == skein_columnar::value::tag::DOUBLE)) {
        let path = ColumnPath::new(vec![name]);
        if double {
            // Doubles with many distinct values (amounts, measurements) have noisy mantissas:
            // once the dictionary gives up, split them into byte streams so the exponent and
            // high bytes compress.
            b = b.set_column_encoding(path, Encoding::BYTE_STREAM_SPLIT);
        }
    }
    Ok(tweak(
        b.set_compression(Compression::ZSTD(ZstdLevel::try_new(cfg.zstd_level)?))
            // `encode_with` ends the row groups itself, at trace boundaries.
            .set_max_row_group_row_count(None)
            .set_data_page_row_count_limit(cfg.page_rows.max(1))
            .set_write_batch_size(cfg.page_rows.clamp(1, 1024))
            // Span ids are random: a dictionary only costs space.
            .set_column_dictionary_enabled(ColumnPath::from("span_id"), false)
            .set_column_dictionary_enabled(ColumnPath::from("parent_span_id"), false)
            // Times are 8-byte integers whose high bytes barely change: split into byte streams,
            // zstd packs those to almost nothing (5.3 -> 3.4 B/span each in `blockbench`).
            .set_column_dictionary_enabled(ColumnPath::from("start_time"), false)
            .set_column_encoding(ColumnPath::from("start_time"), Encoding::BYTE_STREAM_SPLIT)
            .set_column_dictionary_enabled(ColumnPath::from("end_time"), false)
            .set_column_encoding(ColumnPath::from("end_time"), Encoding::BYTE_STREAM_SPLIT)
            .set_column_dictionary_enabled(ColumnPath::from("duration_ns"), false)
            .set_column_encoding(ColumnPath::from("duration_ns"), Encoding::BYTE_STREAM_SPLIT)
            .set_column_bloom_filter_enabled(trace_id.clone(), true)
            .set_column_bloom_filter_fpp(trace_id.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(trace_id, traces.clamp(1, cfg.row_group_rows.max(1) as u64)),
    )
    .build())
}

/// Encodes the spans of `batches` (of the `spans` schema) as one block. Spans that repeat a
/// (trace id, span id) pair already written are dropped, so a block never holds a retry twice.
///
/// # Errors
/// Encoding failed (a bug for well-formed batches) or the zstd level is out of range.
pub fn encode(batches: &[&RecordBatch], cfg: &BlockConfig) -> Result<Encoded, ParquetError> {
    encode_with(batches, cfg, &|b| b)
}

/// Changes to the writer settings of a block, for comparing layouts (`blockbench`).
pub type Tweak<'a> = &'a dyn Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder;

/// [`encode`] with `tweak` applied to the writer settings last.
///
/// # Errors
/// As [`encode`].
pub fn encode_with(batches: &[&RecordBatch], cfg: &BlockConfig, tweak: Tweak<'_>) -> Result<Encoded, ParquetError> {
    // (trace id, start, span id, batch, row), sorted: the sort key of the block plus where the
    // row is. 40 bytes a span, against ~500 for the span itself.
    let mut keys: Vec<(u128, i64, u64, u32, u32)> = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let (mut min_start, mut max_start, mut max_end) = (i64::MAX, i64::MIN, i64::MIN);
    for (b, batch) in batches.iter().enumerate() {
        let v = SpanView::new(batch);
        for r in 0..v.len() {
            let start = v.start(r);
            min_start = min_start.min(start);
            max_start = max_start.max(start);
            max_end = max_end.max(v.end(r));
            keys.push((u128::from_be_bytes(v.trace_id(r)), start, u64::from_be_bytes(v.span_id(r)), b as u32, r as u32));
        }
    }
    keys.sort_unstable();
    let mut traces = 0u64;
    let mut duplicates = 0u64;
    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(keys.len());
    let mut seen: HashSet<u64> = HashSet::new();
    let mut current: Option<u128> = None;
    // Where each trace's rows begin in `kept`.
    let mut trace_starts: Vec<usize> = Vec::new();
    for &(t, _, s, b, r) in &keys {
        if current != Some(t) {
            current = Some(t);
            traces += 1;
            seen.clear();
            trace_starts.push(kept.len());
        }
        if seen.insert(s) {
            kept.push((b as usize, r as usize));
        } else {
            duplicates += 1;
        }
    }
    drop(keys);
    let layout = Layout::choose(batches);
    let props = properties(cfg, traces / (kept.len().div_ceil(cfg.row_group_rows.max(1)) as u64).max(1), &layout, tweak)?;
    let mut w = ArrowWriter::try_new(Vec::new(), layout.schema(), Some(props))?;
    // One contiguous copy, then a `take` per chunk. (Interleaving straight from the head's
    // batches costs time in proportion to the number of batches for every chunk, because the
    // dictionary and nested columns set up per source array: quadratic in the head's size.)
    let all = arrow::compute::concat_batches(&schema(), batches.iter().copied())?;
    let mut starts = Vec::with_capacity(batches.len());
    let mut offset = 0u32;
    for b in batches {
        starts.push(offset);
        offset += b.num_rows() as u32;
    }
    let write = |w: &mut ArrowWriter<Vec<u8>>, rows: &[(usize, usize)]| -> Result<(), ParquetError> {
        if !rows.is_empty() {
            let idx: UInt32Array = rows.iter().map(|&(b, r)| starts[b] + r as u32).collect();
            w.write(&layout.apply(&arrow::compute::take_record_batch(&all, &idx)?.project(stored_columns())?)?)?;
        }
        Ok(())
    };
    // Row groups end at a trace boundary once they hold `row_group_rows`, so a trace's rows
    // are in one row group (one read for a lookup, and what `parent_offset` needs); a trace
    // longer than `MAX_GROUP_FACTOR` groups is split, at a chunk boundary, so that no run of
    // a trace handed to `Layout::apply` crosses row groups.
    let target = cfg.row_group_rows.max(1);
    let hard = target.saturating_mul(MAX_GROUP_FACTOR);
    let (mut chunk_from, mut group_rows) = (0usize, 0usize);
    for (i, &from) in trace_starts.iter().enumerate() {
        let to = trace_starts.get(i + 1).copied().unwrap_or(kept.len());
        let mut at = from;
        while hard - group_rows < to - at {
            at += hard - group_rows;
            write(&mut w, &kept[chunk_from..at])?;
            w.flush()?;
            (chunk_from, group_rows) = (at, 0);
        }
        group_rows += to - at;
        if group_rows >= target {
            write(&mut w, &kept[chunk_from..to])?;
            w.flush()?;
            (chunk_from, group_rows) = (to, 0);
        } else if to - chunk_from >= CHUNK_ROWS {
            write(&mut w, &kept[chunk_from..to])?;
            chunk_from = to;
        }
    }
    write(&mut w, &kept[chunk_from..])?;
    drop(all);
    let bytes = w.into_inner()?;
    if kept.is_empty() {
        (min_start, max_start, max_end) = (0, 0, 0);
    }
    let columns = layout.extra_columns();
    Ok(Encoded {
        bytes,
        rows: kept.len() as u64,
        duplicates,
        min_start_ns: min_start,
        max_start_ns: max_start,
        max_end_ns: max_end,
        columns,
    })
}

/// Encodes `batches` of a `logs` or `metrics` table (with `time` and `fingerprint` columns) as
/// one Parquet file, sorted by `time` (so row-group statistics prune time ranges), with a
/// bloom filter on each column of `bloom` and every record once by fingerprint.
/// `min_start_ns`/`max_start_ns`/`max_end_ns` of the result are the time range.
///
/// # Errors
/// A batch lacks `time` or `fingerprint`, or Parquet encoding failed.
pub fn encode_table(
    batches: &[&RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    cfg: &BlockConfig,
    bloom: &[&str],
) -> Result<Encoded, ParquetError> {
    let all = arrow::compute::concat_batches(schema, batches.iter().copied())?;
    let times = skein_columnar::logs::times(&all)?;
    let fps = skein_columnar::logs::fingerprints(&all)?;
    let mut order: Vec<(i64, u64, u32)> = (0..all.num_rows()).map(|r| (times.value(r), fps.value(r), r as u32)).collect();
    order.sort_unstable();
    let before = order.len();
    order.dedup_by_key(|k| (k.0, k.1));
    let duplicates = (before - order.len()) as u64;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(cfg.zstd_level)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(cfg.row_group_rows.max(1)))
        .set_data_page_row_count_limit(cfg.page_rows.max(1))
        .set_write_batch_size(cfg.page_rows.clamp(1, 1024))
        .set_column_dictionary_enabled(ColumnPath::from("time"), false)
        .set_column_dictionary_enabled(ColumnPath::from("fingerprint"), false);
    for c in bloom {
        props = props.set_column_bloom_filter_enabled(ColumnPath::from(*c), true).set_column_bloom_filter_fpp(ColumnPath::from(*c), 0.01);
    }
    let mut w = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props.build()))?;
    for chunk in order.chunks(CHUNK_ROWS) {
        let idx: UInt32Array = chunk.iter().map(|k| k.2).collect();
        w.write(&arrow::compute::take_record_batch(&all, &idx)?)?;
    }
    let (lo, hi) = match (order.first(), order.last()) {
        (Some(a), Some(b)) => (a.0, b.0),
        _ => (0, 0),
    };
    Ok(Encoded {
        bytes: w.into_inner()?,
        rows: order.len() as u64,
        duplicates,
        min_start_ns: lo,
        max_start_ns: hi,
        max_end_ns: hi,
        columns: Vec::new(),
    })
}
