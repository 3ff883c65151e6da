//! Blocks: the head's spans persisted as Parquet files on the object store.
//!
//! A block holds the stored `spans` schema of `skein_columnar` in its block layout
//! (`skein_columnar::spans::layout`: common attributes as columns, parents as row offsets),
//! sorted by trace id and then start time, so that all spans of a trace are adjacent, in one
//! row group: trace-by-id reads one run of rows, and the columns of a trace (its id, its
//! resource, its start times) compress together. Reads restore the stored schema.
//! See [`write`] for the Parquet layout and [`crate::manifest`] for how blocks are listed.
//!
//! Reading a trace ([`Block::read_trace`]) uses three levels of pruning, all from metadata kept
//! in memory after the first read of a block: the row group's min/max trace id, the row group's
//! bloom filter on `trace_id`, and the page index, which narrows the row group to the pages
//! whose trace-id range holds the id. Only those pages of each column are fetched and decoded.

mod reader;
pub mod write;

pub use reader::ObjectReader;

use crate::error::{Error, Result};
use crate::manifest::BlockMeta;
use crate::objstore::Objects;
use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray, RecordBatch};
use futures::TryStreamExt;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use parquet::bloom_filter::Sbbf;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use skein_columnar::spans::layout::restore;
use skein_columnar::spans::{col, stored_schema, with_end_time};
use std::sync::Arc;

/// A listed block and, once loaded, its Parquet metadata and bloom filters.
#[derive(Debug)]
pub struct Block {
    /// The manifest entry.
    pub meta: BlockMeta,
    index: tokio::sync::OnceCell<Arc<BlockIndex>>,
}

/// What trace lookups need from a block's footer, loaded once per block.
#[derive(Debug)]
struct BlockIndex {
    meta: ArrowReaderMetadata,
    /// Bloom filter on `trace_id` per row group.
    blooms: Vec<Option<Sbbf>>,
}

impl Block {
    /// A block as listed in the manifest; nothing is read yet.
    pub fn new(meta: BlockMeta) -> Self {
        Self { meta, index: tokio::sync::OnceCell::new() }
    }

    /// The object path of the block.
    pub fn path(&self) -> Path {
        Path::from(self.meta.path.as_str())
    }

    fn reader(&self, objects: &Objects) -> ObjectReader {
        ObjectReader::new(Arc::clone(&objects.store), self.path(), self.meta.bytes)
    }

    fn parquet_err(&self, source: parquet::errors::ParquetError) -> Error {
        Error::Parquet { path: self.meta.path.clone(), source }
    }

    async fn index(&self, objects: &Objects) -> Result<Arc<BlockIndex>> {
        self.index
            .get_or_try_init(|| async {
                let mut reader = self.reader(objects);
                let meta = ArrowReaderMetadata::load_async(
                    &mut reader,
                    ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
                )
                .await
                .map_err(|e| self.parquet_err(e))?;
                let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone());
                let groups = meta.metadata().num_row_groups();
                let mut blooms = Vec::with_capacity(groups);
                for rg in 0..groups {
                    blooms.push(builder.get_row_group_column_bloom_filter(rg, col::TRACE_ID).await.map_err(|e| self.parquet_err(e))?);
                }
                Ok(Arc::new(BlockIndex { meta, blooms }))
            })
            .await
            .map(Arc::clone)
    }

    /// Loads the block's metadata now, so the first query does not pay for it.
    ///
    /// # Errors
    /// The block cannot be read.
    pub async fn warm(&self, objects: &Objects) -> Result<()> {
        self.index(objects).await.map(|_| ())
    }

    /// The spans of trace `id` in this block (possibly none), as batches of the `spans` schema.
    ///
    /// # Errors
    /// The block cannot be read or does not decode.
    pub async fn read_trace(&self, objects: &Objects, id: &[u8; 16]) -> Result<Vec<RecordBatch>> {
        let index = self.index(objects).await?;
        let md = index.meta.metadata();
        let mut groups = Vec::new();
        let mut ranges = Vec::new();
        let mut offset = 0usize;
        for rg in 0..md.num_row_groups() {
            let rows = md.row_group(rg).num_rows() as usize;
            let chunk = md.row_group(rg).column(col::TRACE_ID);
            let in_range = match chunk.statistics() {
                Some(Statistics::FixedLenByteArray(s)) => {
                    s.min_bytes_opt().is_none_or(|min| min <= &id[..]) && s.max_bytes_opt().is_none_or(|max| &id[..] <= max)
                }
                _ => true,
            };
            if !in_range || index.blooms.get(rg).and_then(Option::as_ref).is_some_and(|b| !b.check(&id[..])) {
                continue;
            }
            groups.push(rg);
            match pages_holding(md, rg, id, rows) {
                Some(page_ranges) => ranges.extend(page_ranges.into_iter().map(|r| r.start + offset..r.end + offset)),
                None => ranges.push(offset..offset + rows),
            }
            offset += rows;
        }
        if groups.is_empty() || ranges.is_empty() {
            return Ok(Vec::new());
        }
        let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), offset);
        let stream = ParquetRecordBatchStreamBuilder::new_with_metadata(self.reader(objects), index.meta.clone())
            .with_row_groups(groups)
            .with_row_selection(selection)
            .build()
            .map_err(|e| self.parquet_err(e))?;
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| self.parquet_err(e))?;
        // The trace's rows of every batch, then together: a parent is named by its row among
        // them (they are one contiguous run in the block, so dropping the other traces' rows
        // keeps the offsets right).
        let mut rows = Vec::new();
        for b in &batches {
            let Some(ids) = b.column(col::TRACE_ID).as_any().downcast_ref::<FixedSizeBinaryArray>() else { continue };
            let keep: BooleanArray = (0..ids.len()).map(|i| Some(ids.value(i) == &id[..])).collect();
            if keep.true_count() > 0 {
                rows.push(arrow::compute::filter_record_batch(b, &keep)?);
            }
        }
        let Some(first) = rows.first() else { return Ok(Vec::new()) };
        let trace = arrow::compute::concat_batches(first.schema_ref(), &rows)?;
        Ok(vec![with_end_time(&restore(&trace, &stored_schema())?)?])
    }
}

/// The row ranges (within row group `rg`) of the pages whose trace-id range holds `id`, from
/// the page index; `None` when the file has no page index for the column.
fn pages_holding(
    md: &parquet::file::metadata::ParquetMetaData,
    rg: usize,
    id: &[u8; 16],
    rows: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let ColumnIndexMetaData::FIXED_LEN_BYTE_ARRAY(ci) = md.column_index()?.get(rg)?.get(col::TRACE_ID)? else {
        return None;
    };
    let locations = md.offset_index()?.get(rg)?.get(col::TRACE_ID)?.page_locations();
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (p, loc) in locations.iter().enumerate() {
        let (Some(min), Some(max)) = (ci.min_value(p), ci.max_value(p)) else { continue };
        if min <= &id[..] && &id[..] <= max {
            let start = loc.first_row_index as usize;
            let end = locations.get(p + 1).map_or(rows, |n| n.first_row_index as usize);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
    }
    Some(out)
}
