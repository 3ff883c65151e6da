//! Reading span blocks in SQL: the Parquet scan over the blocks' own layout, then
//! [`RestoreExec`], which turns its batches back into the stored `spans` schema (see
//! `skein_columnar::spans::layout`: attribute columns and parent offsets).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream};
use futures::StreamExt;
use skein_columnar::spans::layout::{PARENT_OFFSET, extra_field, restore};
use skein_columnar::spans::stored_schema;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a scan of span blocks reads, for one projection of the stored schema.
pub(super) struct BlockRead {
    /// The schema the Parquet scan reads the blocks as: the stored schema, `parent_offset`,
    /// `attr_absent` and every attribute column of any of the blocks (a block without one
    /// reads it as nulls).
    pub file_schema: SchemaRef,
    /// Columns of `file_schema` to read.
    pub projection: Vec<usize>,
    /// The projected stored schema the table returns.
    pub out: SchemaRef,
    /// Whether `parent_span_id` is rebuilt from offsets, which needs every row of a trace's
    /// run in a row group: no page pruning, no row filter, no limit in the scan.
    pub whole_traces: bool,
}

impl BlockRead {
    /// The read of `projection` (of the stored schema; `None` is every column) from blocks
    /// whose extra columns (from their manifest entries) are `columns`.
    pub fn new<'a>(projection: Option<&Vec<usize>>, columns: impl Iterator<Item = &'a str>) -> Result<Self> {
        let stored = stored_schema();
        let names: BTreeSet<&str> = columns.collect();
        let mut fields: Vec<Field> = stored.fields().iter().map(|f| f.as_ref().clone()).collect();
        let offset_at = fields.len();
        fields.push(Field::new(PARENT_OFFSET, arrow::datatypes::DataType::Int32, true));
        fields.extend(names.iter().filter(|n| **n != PARENT_OFFSET).filter_map(|n| extra_field(n)));
        let file_schema = Arc::new(Schema::new(fields));
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..stored.fields().len()).collect());
        let out = Arc::new(stored.project(&wanted)?);
        let index = |name: &str| stored.index_of(name).map_err(DataFusionError::from);
        let mut read: BTreeSet<usize> = wanted.iter().copied().collect();
        let has = |name: &str| out.fields().iter().any(|f| f.name() == name);
        if has("attributes") || has("attribute_types") {
            read.insert(index("attributes")?);
            read.insert(index("attribute_types")?);
            read.extend(offset_at + 1..file_schema.fields().len());
        }
        let whole_traces = has("parent_span_id");
        if whole_traces {
            for c in ["trace_id", "span_id", "parent_span_id"] {
                read.insert(index(c)?);
            }
            read.insert(offset_at);
        }
        Ok(Self { file_schema, projection: read.into_iter().collect(), out, whole_traces })
    }
}

/// Columns whose block values are not the table's (rebuilt by [`RestoreExec`]), so a filter
/// on them must not be pushed into the Parquet scan.
pub(super) fn rebuilt(column: &str) -> bool {
    matches!(column, "attributes" | "attribute_types" | "parent_span_id")
}

/// Turns batches of span blocks (read as [`BlockRead::file_schema`]) into the stored schema.
#[derive(Debug)]
pub(super) struct RestoreExec {
    input: Arc<dyn ExecutionPlan>,
    out: SchemaRef,
    whole_traces: bool,
    properties: Arc<PlanProperties>,
}

impl RestoreExec {
    pub(super) fn new(input: Arc<dyn ExecutionPlan>, out: SchemaRef, whole_traces: bool) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&out)),
            input.properties().output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { input, out, whole_traces, properties }
    }
}

impl DisplayAs for RestoreExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestoreExec: whole_traces={}", self.whole_traces)
    }
}

impl ExecutionPlan for RestoreExec {
    fn name(&self) -> &str {
        "RestoreExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        // It does, but its output schema is not its input's, so it claims no ordering: a sort
        // stays above it.
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // Repartitioning its input would split a trace's rows between partitions, which the
        // parent offsets cannot be resolved across.
        vec![false]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(input, Arc::clone(&self.out), self.whole_traces))),
            _ => Err(DataFusionError::Internal("RestoreExec has one child".into())),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let out = Arc::clone(&self.out);
        if !self.whole_traces {
            let o = Arc::clone(&out);
            let s = input.map(move |b| b.and_then(|b| restore(&b, &o).map_err(DataFusionError::from)));
            return Ok(Box::pin(RecordBatchStreamAdapter::new(out, s)));
        }
        // A batch boundary may fall inside a trace: hold back the last trace's rows until a
        // batch shows where it ends (or the input ends). The held rows are copied once, when
        // the trace is complete.
        let o = Arc::clone(&out);
        let s = futures::stream::unfold(Some((input, Vec::<RecordBatch>::new())), move |state| {
            let out = Arc::clone(&o);
            async move {
                let (mut input, mut held) = state?;
                loop {
                    match input.next().await {
                        Some(Ok(b)) => match take_complete(&mut held, b) {
                            Ok(Some(ready)) => return Some((restore(&ready, &out).map_err(DataFusionError::from), Some((input, held)))),
                            Ok(None) => {}
                            Err(e) => return Some((Err(e), None)),
                        },
                        Some(Err(e)) => return Some((Err(e), None)),
                        None if held.is_empty() => return None,
                        None => {
                            let rest = concat(&held).and_then(|b| restore(&b, &out).map_err(DataFusionError::from));
                            return Some((rest, None));
                        }
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out, s)))
    }
}

fn trace_ids(b: &RecordBatch) -> Result<&arrow::array::FixedSizeBinaryArray> {
    b.column_by_name("trace_id")
        .and_then(|c| c.as_fixed_size_binary_opt())
        .ok_or_else(|| DataFusionError::Internal("a span block read without trace_id".into()))
}

fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    match batches {
        [one] => Ok(one.clone()),
        _ => {
            let schema = batches
                .first()
                .map(|b| Arc::clone(b.schema_ref()))
                .ok_or_else(|| DataFusionError::Internal("nothing to concatenate".into()))?;
            Ok(arrow::compute::concat_batches(&schema, batches)?)
        }
    }
}

/// Adds `next` to the rows held back (all of one trace, the last one seen) and returns the rows
/// now known to be complete traces, if any: the held rows and `next`'s rows up to the start of
/// its last trace, which becomes the new held rows.
fn take_complete(held: &mut Vec<RecordBatch>, next: RecordBatch) -> Result<Option<RecordBatch>> {
    let n = next.num_rows();
    if n == 0 {
        return Ok(None);
    }
    let ids = trace_ids(&next)?;
    let last = ids.value(n - 1);
    let mut cut = n - 1;
    while cut > 0 && ids.value(cut - 1) == last {
        cut -= 1;
    }
    let held_id = match held.last() {
        Some(h) if h.num_rows() > 0 => Some(trace_ids(h)?.value(h.num_rows() - 1).to_vec()),
        _ => None,
    };
    if cut == 0 && held_id.as_deref().is_none_or(|h| h == last) {
        // The whole batch is the held trace (or starts one): keep holding.
        held.push(next);
        return Ok(None);
    }
    let mut parts = std::mem::take(held);
    parts.push(next.slice(0, cut));
    held.push(next.slice(cut, n - cut));
    concat(&parts).map(Some)
}

/// A filter on the block batches (before [`RestoreExec`]) that keeps every row `filters`
/// keep, and drops most of the others before the costly rebuild of the attribute maps:
/// each `attributes['k'] = 'v'` in them (alone or under AND/OR) becomes "the residual map's
/// `k` is `v`, or one of `k`'s attribute columns is". `None` when no filter has such a term,
/// or when a term cannot be checked on the columns (a double column for `k`, whose text form
/// only the rebuild produces). Filters that cannot be translated are left out, which only
/// keeps more rows; `RestoreExec`'s output is filtered again by DataFusion anyway.
pub(super) fn attribute_prefilter(filters: &[Expr], schema: &Schema) -> Option<Expr> {
    let mut rewrote = false;
    let parts: Vec<Expr> = filters.iter().filter_map(|f| prefilter(f, schema, &mut rewrote)).collect();
    if !rewrote {
        return None;
    }
    let all = datafusion::logical_expr::utils::conjunction(parts)?;
    // Every column it reads must be in the scan's output.
    all.column_refs().iter().all(|c| schema.field_with_name(&c.name).is_ok()).then_some(all)
}

fn prefilter(e: &Expr, schema: &Schema, rewrote: &mut bool) -> Option<Expr> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    if let Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::And | Operator::Or), right }) = e {
        let (l, r) = (prefilter(left, schema, rewrote)?, prefilter(right, schema, rewrote)?);
        return Some(Expr::BinaryExpr(BinaryExpr::new(Box::new(l), *op, Box::new(r))));
    }
    if e.column_refs().iter().all(|c| !rebuilt(&c.name)) {
        return Some(e.clone());
    }
    let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = e else { return None };
    let (key, value) = match (attribute_key(left), literal_str(right)) {
        (Some(k), Some(v)) => (k, v),
        _ => (attribute_key(right)?, literal_str(left)?),
    };
    let mut any = e.clone();
    for f in schema.fields() {
        let Some((k, t)) = skein_columnar::spans::layout::parse_column_name(f.name()) else { continue };
        if k != key {
            continue;
        }
        let column = Expr::Column(datafusion::common::Column::new_unqualified(f.name()));
        let text = match t {
            skein_columnar::value::tag::DOUBLE => return None,
            skein_columnar::value::tag::INT | skein_columnar::value::tag::BOOL => {
                Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(column), arrow::datatypes::DataType::Utf8))
            }
            _ => column,
        };
        any = any.or(text.eq(datafusion::logical_expr::lit(value)));
    }
    *rewrote = true;
    Some(any)
}

/// `k` of `attributes['k']`.
fn attribute_key(e: &Expr) -> Option<&str> {
    let Expr::ScalarFunction(f) = e else { return None };
    match (f.func.name(), f.args.as_slice()) {
        ("get_field", [Expr::Column(c), Expr::Literal(k, _)]) if c.name == "attributes" => k.try_as_str().flatten(),
        _ => None,
    }
}

fn literal_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, FixedSizeBinaryArray};

    fn batch(traces: &[u8]) -> RecordBatch {
        let ids = FixedSizeBinaryArray::try_from_sparse_iter_with_size(traces.iter().map(|t| Some(vec![*t; 16])), 16).unwrap();
        RecordBatch::try_from_iter([("trace_id", Arc::new(ids) as arrow::array::ArrayRef)]).unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<u8> {
        let a = trace_ids(b).unwrap();
        (0..a.len()).map(|i| a.value(i)[0]).collect()
    }

    #[test]
    fn traces_longer_than_a_batch_are_released_whole() {
        let mut held = Vec::new();
        assert!(take_complete(&mut held, batch(&[1, 1])).unwrap().is_none());
        assert!(take_complete(&mut held, batch(&[1, 1])).unwrap().is_none());
        assert!(take_complete(&mut held, batch(&[])).unwrap().is_none());
        assert_eq!(ids(&take_complete(&mut held, batch(&[1, 2])).unwrap().unwrap()), [1, 1, 1, 1, 1]);
        assert!(take_complete(&mut held, batch(&[2])).unwrap().is_none());
        assert_eq!(ids(&take_complete(&mut held, batch(&[3, 3])).unwrap().unwrap()), [2, 2]);
        assert_eq!(ids(&take_complete(&mut held, batch(&[3, 4, 4, 5])).unwrap().unwrap()), [3, 3, 3, 4, 4]);
        assert_eq!(ids(&concat(&held).unwrap()), [5]);
    }
}
