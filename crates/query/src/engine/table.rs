//! The `spans_raw`, `logs_raw` and `metrics_raw` table providers, and for spans: the head batches and the listed blocks of one store
//! snapshot as one DataFusion table of the stored schema (no `end_time`; the `spans` view
//! computes it), and the `resource_attributes` function that turns the
//! stored resource encoding into a map.

use super::restore::{self, BlockRead, RestoreExec};
use arrow::array::{Array, ArrayBuilder, ArrayRef, AsArray, MapArray, RecordBatch, StringBuilder, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDFImpl, Signature, TableProviderFilterPushDown, TableType,
    Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use skein_columnar::spans::{map_entries, map_type, resource_attributes, resource_type, stored_columns, stored_schema};
use skein_storage::{Snapshot, TableSnapshot};
use std::sync::Arc;

/// Which part of a snapshot a table reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Heads and blocks: what SQL sees.
    All,
    /// Blocks only: search reads the heads with its own scan.
    Blocks,
}

/// The `spans` schema over one snapshot of heads and blocks.
pub struct SpansTable {
    snapshot: Snapshot,
    url: ObjectStoreUrl,
    part: Part,
}

impl std::fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpansTable").field("blocks", &self.snapshot.blocks.len()).field("part", &self.part).finish()
    }
}

impl SpansTable {
    /// A table over `snapshot`, whose blocks are in the object store registered as `url`.
    pub fn new(snapshot: Snapshot, url: ObjectStoreUrl, part: Part) -> Self {
        Self { snapshot, url, part }
    }
}

/// The `[from, to]` range of `column` (span start times, or record times) the filters allow,
/// for pruning blocks by the manifest before any file is opened.
fn time_range(filters: &[Expr], column: &str) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for f in filters {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = f else { continue };
        let (col_left, other, op) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), other) if c.name == column => (true, other, *op),
            (other, Expr::Column(c)) if c.name == column => (false, other, *op),
            _ => continue,
        };
        let Expr::Literal(ScalarValue::TimestampNanosecond(Some(v), _), _) = other else { continue };
        // Normalise to `start_time <op> v`.
        let op = if col_left { op } else { op.swap().unwrap_or(op) };
        match op {
            Operator::Gt | Operator::GtEq => lo = lo.max(*v),
            Operator::Lt | Operator::LtEq => hi = hi.min(*v),
            Operator::Eq => {
                lo = lo.max(*v);
                hi = hi.min(*v);
            }
            _ => {}
        }
    }
    (lo, hi)
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        stored_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to prune blocks, row groups and pages; DataFusion still applies each filter.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = stored_schema();
        let head = if self.part == Part::All {
            // The head has `end_time`; the table has the stored columns (the view adds it back).
            self.snapshot.head.iter().map(|b| b.project(stored_columns())).collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let (lo, hi) = time_range(filters, "start_time");
        let blocks: Vec<_> = self.snapshot.blocks.iter().filter(|b| b.meta.max_start_ns >= lo && b.meta.min_start_ns <= hi).collect();
        let read = BlockRead::new(projection, blocks.iter().flat_map(|b| b.meta.columns.iter().map(String::as_str)))?;
        // Filters on columns a block stores differently cannot prune its pages.
        let pushable: Vec<Expr> = filters.iter().filter(|f| f.column_refs().iter().all(|c| !restore::rebuilt(&c.name))).cloned().collect();
        let scan = parquet_scan(
            state,
            &read.file_schema,
            blocks.iter().copied(),
            &self.url,
            Some(&read.projection),
            &pushable,
            if read.whole_traces { None } else { limit },
            |s| if read.whole_traces { s.with_enable_page_index(false).with_pushdown_filters(false) } else { s },
        )?;
        // Attribute filters, checked on the block's columns first, so only the rows that can
        // match pay for rebuilding their attribute maps (not when parents are rebuilt: that
        // needs every row of a trace).
        let output = Arc::new(read.file_schema.project(&read.projection)?);
        let prefilter = if read.whole_traces { None } else { restore::attribute_prefilter(filters, &output) };
        let scan = match (scan, prefilter) {
            (Some(p), Some(f)) => {
                let predicate = state.create_physical_expr(f, &DFSchema::try_from(Arc::clone(&output))?)?;
                Some(Arc::new(datafusion::physical_plan::filter::FilterExec::try_new(predicate, p)?) as Arc<dyn ExecutionPlan>)
            }
            (scan, _) => scan,
        };
        let blocks_plan = scan.map(|p| Arc::new(RestoreExec::new(p, Arc::clone(&read.out), read.whole_traces)) as Arc<dyn ExecutionPlan>);
        union_scan(state, &schema, head, blocks_plan, projection, limit)
    }
}

/// The plan that reads `head` batches and the plan `blocks` reading the blocks as one table of
/// `schema`, projected.
fn union_scan(
    state: &dyn Session,
    schema: &SchemaRef,
    head: Vec<RecordBatch>,
    blocks: Option<Arc<dyn ExecutionPlan>>,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    if !head.is_empty() {
        // One partition per core's share of batches, so the head is scanned in parallel.
        let parts = state.config().target_partitions().max(1);
        let per = head.len().div_ceil(parts).max(1);
        let partitions: Vec<Vec<RecordBatch>> = head.chunks(per).map(<[RecordBatch]>::to_vec).collect();
        let mem = MemorySourceConfig::try_new(&partitions, Arc::clone(schema), projection.cloned())?.with_limit(limit);
        inputs.push(DataSourceExec::from_data_source(mem));
    }
    inputs.extend(blocks);
    if inputs.is_empty() {
        return Ok(Arc::new(EmptyExec::new(datafusion::physical_plan::project_schema(schema, projection)?)));
    }
    UnionExec::try_new(inputs)
}

/// The Parquet scan of `blocks` (files in the object store `url`) as `schema`, with the
/// filters pushed in for pruning; `None` without blocks. `configure` adjusts the source.
#[allow(clippy::too_many_arguments)]
fn parquet_scan<'a>(
    state: &dyn Session,
    schema: &SchemaRef,
    blocks: impl Iterator<Item = &'a Arc<skein_storage::block::Block>>,
    url: &ObjectStoreUrl,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
    configure: impl FnOnce(ParquetSource) -> ParquetSource,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let files: Vec<PartitionedFile> = blocks.map(|b| PartitionedFile::new(b.meta.path.clone(), b.meta.bytes)).collect();
    if files.is_empty() {
        return Ok(None);
    }
    let df_schema = DFSchema::try_from(Arc::clone(schema))?;
    let mut source = ParquetSource::new(Arc::clone(schema)).with_table_parquet_options(state.default_table_options().parquet);
    if let Some(e) = conjunction(filters.iter().cloned()) {
        source = source.with_predicate(state.create_physical_expr(e, &df_schema)?);
    }
    let groups = FileGroup::new(files).split_files(state.config().target_partitions().max(1));
    let conf = FileScanConfigBuilder::new(url.clone(), Arc::new(configure(source)))
        .with_file_groups(groups)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    Ok(Some(DataSourceExec::from_data_source(conf)))
}

/// The `logs_raw` or `metrics_raw` table: the head batches and the listed blocks of one table
/// of a snapshot, pruned by the `time` range of the filters.
pub struct SignalTable {
    schema: SchemaRef,
    snapshot: TableSnapshot,
    url: ObjectStoreUrl,
}

impl std::fmt::Debug for SignalTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalTable").field("blocks", &self.snapshot.blocks.len()).finish()
    }
}

impl SignalTable {
    /// A table of `schema` over `snapshot`, whose blocks are in the object store `url`.
    pub fn new(schema: SchemaRef, snapshot: TableSnapshot, url: ObjectStoreUrl) -> Self {
        Self { schema, snapshot, url }
    }
}

#[async_trait]
impl TableProvider for SignalTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let head: Vec<RecordBatch> = self.snapshot.head.iter().map(|b| b.as_ref().clone()).collect();
        let (lo, hi) = time_range(filters, "time");
        let blocks = self.snapshot.blocks.iter().filter(|b| b.meta.max_start_ns >= lo && b.meta.min_start_ns <= hi);
        let scan = parquet_scan(state, &self.schema, blocks, &self.url, projection, filters, limit, |s| s)?;
        union_scan(state, &self.schema, head, scan, projection, limit)
    }
}

/// `resource_attributes(resource)`: the stored resource encoding as a `Map<Utf8, Utf8>` of its
/// attributes (values as display strings, like `attributes`). Each distinct resource of a
/// batch is decoded once.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResourceAttributes {
    signature: Signature,
}

impl Default for ResourceAttributes {
    fn default() -> Self {
        Self { signature: Signature::exact(vec![resource_type()], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ResourceAttributes {
    fn name(&self) -> &str {
        "resource_attributes"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(map_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return Err(datafusion::common::DataFusionError::Plan("resource_attributes takes one argument".into()));
        };
        let array = arg.to_array(args.number_rows)?;
        let dict = array.as_dictionary_opt::<Int32Type>().ok_or_else(|| {
            datafusion::common::DataFusionError::Plan(format!("resource_attributes expects the resource column, got {}", array.data_type()))
        })?;
        let values = dict.values().as_binary::<i32>();
        let (mut keys, mut vals) = (StringBuilder::new(), StringBuilder::new());
        let mut offsets = vec![0i32];
        for i in 0..values.len() {
            for (k, v) in resource_attributes(values.value(i)) {
                keys.append_value(k);
                vals.append_value(v);
            }
            offsets.push(keys.len() as i32);
        }
        let DataType::Struct(fields) = map_entries().data_type().clone() else {
            return Err(datafusion::common::DataFusionError::Internal("map entries are not a struct".into()));
        };
        let entries = StructArray::try_new(fields, vec![Arc::new(keys.finish()) as ArrayRef, Arc::new(vals.finish()) as ArrayRef], None)?;
        let per_resource = MapArray::try_new(map_entries(), OffsetBuffer::new(offsets.into()), entries, None, false)?;
        let out = arrow::compute::take(&per_resource, dict.keys(), None)?;
        Ok(ColumnarValue::Array(out))
    }
}
