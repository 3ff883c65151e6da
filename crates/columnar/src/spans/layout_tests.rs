//! Tests of the block layout: every span comes back from [`Layout::apply`] + [`restore`] as it
//! went in (attributes as the same set of typed entries), whatever the mix of keys, types and
//! parents, and a read that lacks a parent's row says so instead of inventing one.

use super::layout::{ABSENT, Layout, PARENT_OFFSET, restore};
use super::*;
use arrow::array::{Array, AsArray, RecordBatch};
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use skein_otlp::synth::{Synth, SynthConfig};

const NOW: u64 = 1_700_000_000_000_000_000;

/// A request's spans in the stored schema, sorted by (trace id, start) as a block is.
fn stored(req: &ExportTraceServiceRequest) -> RecordBatch {
    sorted(&build(req).unwrap()).project(stored_columns()).unwrap()
}

/// Every span of `b` (of the stored schema) as records, which sort attributes; as their debug
/// text, so that a NaN equals itself.
fn records(b: &RecordBatch) -> Vec<String> {
    let full = with_end_time(b).unwrap();
    let v = SpanView::new(&full);
    (0..v.len()).map(|r| format!("{:?}", v.record(r))).collect()
}

fn round_trip(input: &RecordBatch, layout: &Layout) -> RecordBatch {
    let block = layout.apply(input).unwrap();
    assert_eq!(block.num_rows(), input.num_rows());
    restore(&block, &stored_schema()).unwrap()
}

/// Sorts a batch of the full schema by (trace id, start).
fn sorted(batch: &RecordBatch) -> RecordBatch {
    let v = SpanView::new(batch);
    let mut order: Vec<u32> = (0..v.len() as u32).collect();
    order.sort_by_key(|&r| (v.trace_id(r as usize), v.start(r as usize)));
    arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(order)).unwrap()
}

#[test]
fn synthetic_spans_round_trip_through_the_block_layout() {
    let (req, _) = Synth::new(SynthConfig { error_ratio: 0.3, ..Default::default() }).batch(160, NOW);
    let input = stored(&req);
    let layout = Layout::choose(&[&input]);
    assert!(layout.len() > 20, "{}", layout.len());
    let block = layout.apply(&input).unwrap();
    // Most parents are named by offset, every common key has left the residual map.
    let offsets = block.column_by_name(PARENT_OFFSET).unwrap().as_primitive::<arrow::datatypes::Int32Type>();
    assert!(offsets.values().iter().filter(|&&o| o != 0).count() > input.num_rows() * 9 / 10);
    assert!(block.column(col::PARENT_SPAN_ID).null_count() > input.num_rows() * 9 / 10);
    assert!(block.column_by_name("attributes").unwrap().as_map().entries().len() < input.num_rows());
    assert!(block.column_by_name(ABSENT).is_some());
    let back = restore(&block, &stored_schema()).unwrap();
    assert_eq!(records(&back), records(&input));
    // Every column but the attribute map (whose entry order is not kept) is the same array.
    for (i, f) in stored_schema().fields().iter().enumerate() {
        if f.name() != "attributes" && f.name() != "attribute_types" {
            assert_eq!(back.column(i).as_ref(), input.column(i).as_ref(), "column {}", f.name());
        }
    }
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn span(trace: u8, id: u8, parent: Option<u8>, start: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("op-{id}"),
        start_time_unix_nano: NOW + start,
        end_time_unix_nano: NOW + start + 10,
        attributes,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans { scope_spans: vec![ScopeSpans { spans, ..Default::default() }], ..Default::default() }],
    }
}

#[test]
fn odd_attributes_and_parents_come_back_exactly() {
    let s = |v: &str| Value::StringValue(v.into());
    let spans = vec![
        // Root, with a parent-less sibling trace below.
        span(1, 1, None, 0, vec![kv("k", Value::IntValue(7)), kv("c", s("same")), kv("b", Value::BoolValue(true))]),
        // Parent later in the run (clock skew), a key repeated, a string in an int column.
        span(1, 2, Some(3), 1, vec![kv("k", Value::IntValue(-0)), kv("k", Value::IntValue(8)), kv("c", s("same"))]),
        span(1, 3, Some(1), 2, vec![kv("k", s("007")), kv("d", Value::DoubleValue(0.1)), kv("b", Value::BoolValue(false))]),
        // Parent not in the batch, and a span that names itself as its parent.
        span(1, 4, Some(99), 3, vec![kv("d", Value::DoubleValue(f64::NAN)), kv("rare", s("x"))]),
        span(1, 5, Some(5), 4, vec![kv("d", Value::DoubleValue(-0.0)), kv("e", Value::BytesValue(vec![0, 1]))]),
        // Another trace whose spans name a span id of trace 1 as parent: not the same trace.
        span(2, 6, Some(1), 0, vec![kv("c", s("other")), kv("k", Value::IntValue(i64::MIN))]),
        span(2, 7, Some(6), 1, vec![]),
    ];
    let input = stored(&request(spans));
    let mut columns: Vec<(String, u8)> = ["k", "c", "b", "d", "e"].iter().flat_map(|k| b"sibdy".map(|t| (k.to_string(), t))).collect();
    columns.push(("missing".into(), b's'));
    let layout = Layout::new(columns);
    let back = round_trip(&input, &layout);
    assert_eq!(records(&back), records(&input));
    // The layout a block would choose (with filled columns) as well.
    let chosen = Layout::choose(&[&input]);
    assert_eq!(records(&round_trip(&input, &chosen)), records(&input));
    // And with no attribute column at all.
    assert_eq!(records(&round_trip(&input, &Layout::new(Vec::new()))), records(&input));
}

#[test]
fn filled_columns_keep_absent_keys_absent() {
    // `db.system` is on every other span with one value: the column is filled, not null; a
    // bool on every third.
    let spans: Vec<Span> = (0..=240u8)
        .map(|i| {
            let mut a = vec![kv("n", Value::IntValue(i64::from(i)))];
            if i % 2 == 0 {
                a.push(kv("db.system", Value::StringValue("postgresql".into())));
            }
            if i % 3 == 0 {
                a.push(kv("flag", Value::BoolValue(i % 6 == 0)));
            }
            span(1 + i / 100, i.wrapping_add(1), (i % 100 > 0).then_some(1 + i / 100 * 100), u64::from(i), a)
        })
        .collect();
    let input = stored(&request(spans));
    let layout = Layout::choose(&[&input]);
    let block = layout.apply(&input).unwrap();
    let db = block.column_by_name("attr:s:db.system").unwrap();
    assert_eq!(db.null_count(), 0, "a filled column has no nulls");
    assert!(!block.schema().field_with_name("attr:s:db.system").unwrap().is_nullable());
    assert_eq!(records(&restore(&block, &stored_schema()).unwrap()), records(&input));
    let full = with_end_time(&input).unwrap();
    let v = SpanView::new(&full);
    let out = with_end_time(&restore(&block, &stored_schema()).unwrap()).unwrap();
    let o = SpanView::new(&out);
    for r in 0..v.len() {
        assert_eq!(o.attribute(r, "db.system"), v.attribute(r, "db.system"), "row {r}");
        assert_eq!(o.attribute(r, "flag"), v.attribute(r, "flag"), "row {r}");
    }
}

#[test]
fn a_projection_reads_only_what_it_names_and_a_split_trace_is_an_error() {
    let (req, _) = Synth::new(SynthConfig::default()).batch(5, NOW);
    let input = stored(&req);
    let block = Layout::choose(&[&input]).apply(&input).unwrap();
    // A projection without attributes or parents: the columns picked by name.
    let names = Arc::new(stored_schema().project(&[col::NAME, col::SPAN_ID]).unwrap());
    let got = restore(&block, &names).unwrap();
    assert_eq!(got.num_columns(), 2);
    assert_eq!(got.column(0).as_ref(), input.column(col::NAME).as_ref());
    // Parents need the rows they point at: half a trace cannot be restored.
    let parents = Arc::new(stored_schema().project(&[col::PARENT_SPAN_ID]).unwrap());
    let half = block.slice(3, block.num_rows() - 6);
    let err = restore(&half, &parents).unwrap_err().to_string();
    assert!(err.contains("was not read with it"), "{err}");
    // Without `span_id` the parents cannot be looked up either.
    let no_ids = block.project(&(0..block.num_columns()).filter(|&i| i != col::SPAN_ID).collect::<Vec<_>>()).unwrap();
    assert!(restore(&no_ids, &parents).unwrap_err().to_string().contains("span_id"));
}

#[test]
fn a_repeated_key_keeps_its_first_value_whatever_the_types() {
    // 200 spans with `k` as an int (so `attr:i:k` is a column), some repeating `k` as a string
    // before or after the int: a lookup finds the first entry, before and after.
    let spans: Vec<Span> = (0..200u8)
        .map(|i| {
            let a = match i % 3 {
                0 => vec![kv("k", Value::StringValue("first".into())), kv("k", Value::IntValue(1))],
                1 => vec![kv("k", Value::IntValue(2)), kv("k", Value::StringValue("second".into()))],
                _ => vec![kv("k", Value::IntValue(3))],
            };
            span(1 + i / 50, i.wrapping_add(1), None, u64::from(i), a)
        })
        .collect();
    let input = stored(&request(spans));
    let layout = Layout::choose(&[&input]);
    assert!(layout.column_names().any(|c| c == "attr:i:k"));
    let back = round_trip(&input, &layout);
    assert_eq!(records(&back), records(&input));
    let (a, b) = (with_end_time(&input).unwrap(), with_end_time(&back).unwrap());
    let (a, b) = (SpanView::new(&a), SpanView::new(&b));
    for r in 0..a.len() {
        assert_eq!(b.attribute(r, "k"), a.attribute(r, "k"), "row {r}");
    }
}
