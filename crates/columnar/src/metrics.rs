//! The `metrics` table: one row per OTLP data point (ARCHITECTURE §3) and its builder from a
//! validated `ExportMetricsServiceRequest`.
//!
//! Every kind shares the row: `kind` says which fields are set. Gauges and sums fill `value`
//! (an integer point is stored as a double: exact up to 2^53); sums also `temporality` and
//! `is_monotonic`. Histograms fill `count`, `sum`, `min`, `max`, `bucket_counts` and
//! `explicit_bounds`; exponential histograms `count`, `sum`, `min`, `max` and the `exp_*`
//! columns; summaries `count`, `sum` and `quantiles`/`quantile_values`. Exemplars are not
//! stored. As in `logs`, `fingerprint` identifies a data point for removing retried
//! duplicates.

use crate::logs::{encode_into, fingerprint};
use crate::spans::build::{MapCol, ResourceCol, dict_builder, exact};
use crate::spans::{dict, map_type, node_of, resource_type, service_of, ts};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, ListBuilder, RecordBatch, StringDictionaryBuilder, TimestampNanosecondArray,
    UInt32Array, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use skein_otlp::ExportMetricsServiceRequest;
use skein_otlp::proto::metrics::v1::exponential_histogram_data_point::Buckets;
use skein_otlp::proto::metrics::v1::metric::Data;
use skein_otlp::proto::metrics::v1::{NumberDataPoint, number_data_point};
use std::sync::{Arc, OnceLock};

/// Column positions in [`schema`].
pub mod col {
    #![allow(missing_docs)]
    pub const TIME: usize = 0;
    pub const START_TIME: usize = 1;
    pub const NAME: usize = 2;
    pub const KIND: usize = 5;
    pub const TEMPORALITY: usize = 6;
    pub const VALUE: usize = 8;
    pub const COUNT: usize = 9;
    pub const SUM: usize = 10;
    pub const NODE: usize = 25;
    pub const ATTRIBUTES: usize = 27;
    pub const FINGERPRINT: usize = 31;
}

/// `kind` values.
pub mod kind {
    #![allow(missing_docs)]
    pub const GAUGE: &str = "gauge";
    pub const SUM: &str = "sum";
    pub const HISTOGRAM: &str = "histogram";
    pub const EXPONENTIAL_HISTOGRAM: &str = "exponential_histogram";
    pub const SUMMARY: &str = "summary";
}

fn list(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The Arrow schema of the `metrics` table (in the head and in blocks alike).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("time", ts(), false),
            Field::new("start_time", ts(), true),
            Field::new("name", dict(), false),
            Field::new("description", dict(), true),
            Field::new("unit", dict(), true),
            Field::new("kind", dict(), false),
            Field::new("temporality", dict(), true),
            Field::new("is_monotonic", DataType::Boolean, true),
            Field::new("value", DataType::Float64, true),
            Field::new("count", DataType::UInt64, true),
            Field::new("sum", DataType::Float64, true),
            Field::new("min", DataType::Float64, true),
            Field::new("max", DataType::Float64, true),
            Field::new("bucket_counts", list(DataType::UInt64), true),
            Field::new("explicit_bounds", list(DataType::Float64), true),
            Field::new("exp_scale", DataType::Int32, true),
            Field::new("exp_zero_count", DataType::UInt64, true),
            Field::new("exp_positive_offset", DataType::Int32, true),
            Field::new("exp_positive_bucket_counts", list(DataType::UInt64), true),
            Field::new("exp_negative_offset", DataType::Int32, true),
            Field::new("exp_negative_bucket_counts", list(DataType::UInt64), true),
            Field::new("quantiles", list(DataType::Float64), true),
            Field::new("quantile_values", list(DataType::Float64), true),
            Field::new("flags", DataType::UInt32, false),
            Field::new("service_name", dict(), false),
            Field::new("node", dict(), false),
            Field::new("resource", resource_type(), false),
            Field::new("attributes", map_type(), false),
            Field::new("attribute_types", DataType::Binary, false),
            Field::new("scope_name", dict(), true),
            Field::new("scope_version", dict(), true),
            Field::new("fingerprint", DataType::UInt64, false),
        ]))
    }))
}

fn temporality_name(t: i32) -> Option<&'static str> {
    match t {
        1 => Some("delta"),
        2 => Some("cumulative"),
        _ => None,
    }
}

fn opt_dict(b: &mut StringDictionaryBuilder<Int32Type>, v: &str) {
    if v.is_empty() {
        b.append_null();
    } else {
        b.append_value(v);
    }
}

/// The growing columns of a `metrics` batch.
struct Columns {
    time: Vec<i64>,
    start: Vec<Option<i64>>,
    name: StringDictionaryBuilder<Int32Type>,
    description: StringDictionaryBuilder<Int32Type>,
    unit: StringDictionaryBuilder<Int32Type>,
    kind: StringDictionaryBuilder<Int32Type>,
    temporality: StringDictionaryBuilder<Int32Type>,
    monotonic: BooleanBuilder,
    value: Float64Builder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    bucket_counts: ListBuilder<UInt64Builder>,
    bounds: ListBuilder<Float64Builder>,
    exp_scale: Int32Builder,
    exp_zero: UInt64Builder,
    exp_pos_offset: Int32Builder,
    exp_pos: ListBuilder<UInt64Builder>,
    exp_neg_offset: Int32Builder,
    exp_neg: ListBuilder<UInt64Builder>,
    quantiles: ListBuilder<Float64Builder>,
    quantile_values: ListBuilder<Float64Builder>,
    flags: Vec<u32>,
    service: StringDictionaryBuilder<Int32Type>,
    node: StringDictionaryBuilder<Int32Type>,
    resource: ResourceCol,
    attrs: MapCol,
    scope_name: StringDictionaryBuilder<Int32Type>,
    scope_version: StringDictionaryBuilder<Int32Type>,
    fingerprint: Vec<u64>,
}

/// Scale, zero count, and (offset, bucket counts) of the positive and negative ranges of an
/// exponential histogram point.
type ExpFields<'a> = (i32, u64, (i32, &'a [u64]), (i32, &'a [u64]));

/// The fields one data point sets; the rest are null.
#[derive(Default)]
struct Point<'a> {
    time: u64,
    start: u64,
    value: Option<f64>,
    count: Option<u64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    buckets: Option<(&'a [u64], &'a [f64])>,
    exp: Option<ExpFields<'a>>,
    quantiles: Option<Vec<(f64, f64)>>,
    flags: u32,
}

impl Point<'_> {
    /// A gauge or sum point.
    fn number(p: &NumberDataPoint) -> Self {
        Point { time: p.time_unix_nano, start: p.start_time_unix_nano, value: number(p.value.as_ref()), flags: p.flags, ..Point::default() }
    }

    /// The fields a histogram and an exponential histogram point share: (count, sum, min, max).
    fn distribution(time: u64, start: u64, (count, sum, min, max): (u64, Option<f64>, Option<f64>, Option<f64>), flags: u32) -> Self {
        Point { time, start, count: Some(count), sum, min, max, flags, ..Point::default() }
    }
}

impl Columns {
    fn new(n: usize) -> Self {
        Self {
            time: Vec::with_capacity(n),
            start: Vec::with_capacity(n),
            name: dict_builder(n),
            description: dict_builder(n),
            unit: dict_builder(n),
            kind: dict_builder(n),
            temporality: dict_builder(n),
            monotonic: BooleanBuilder::with_capacity(n),
            value: Float64Builder::with_capacity(n),
            count: UInt64Builder::with_capacity(n),
            sum: Float64Builder::with_capacity(n),
            min: Float64Builder::with_capacity(n),
            max: Float64Builder::with_capacity(n),
            bucket_counts: ListBuilder::new(UInt64Builder::new()),
            bounds: ListBuilder::new(Float64Builder::new()),
            exp_scale: Int32Builder::with_capacity(n),
            exp_zero: UInt64Builder::with_capacity(n),
            exp_pos_offset: Int32Builder::with_capacity(n),
            exp_pos: ListBuilder::new(UInt64Builder::new()),
            exp_neg_offset: Int32Builder::with_capacity(n),
            exp_neg: ListBuilder::new(UInt64Builder::new()),
            quantiles: ListBuilder::new(Float64Builder::new()),
            quantile_values: ListBuilder::new(Float64Builder::new()),
            flags: Vec::with_capacity(n),
            service: dict_builder(n),
            node: dict_builder(n),
            resource: ResourceCol::new(n),
            attrs: MapCol::new(),
            scope_name: dict_builder(n),
            scope_version: dict_builder(n),
            fingerprint: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, p: Point<'_>) {
        self.time.push(p.time as i64);
        self.start.push((p.start != 0).then_some(p.start as i64));
        self.value.append_option(p.value);
        self.count.append_option(p.count);
        self.sum.append_option(p.sum);
        self.min.append_option(p.min);
        self.max.append_option(p.max);
        match p.buckets {
            Some((counts, bounds)) => {
                self.bucket_counts.append_value(counts.iter().map(|c| Some(*c)));
                self.bounds.append_value(bounds.iter().map(|b| Some(*b)));
            }
            None => {
                self.bucket_counts.append_null();
                self.bounds.append_null();
            }
        }
        match p.exp {
            Some((scale, zero, (po, pos), (no, neg))) => {
                self.exp_scale.append_value(scale);
                self.exp_zero.append_value(zero);
                self.exp_pos_offset.append_value(po);
                self.exp_pos.append_value(pos.iter().map(|c| Some(*c)));
                self.exp_neg_offset.append_value(no);
                self.exp_neg.append_value(neg.iter().map(|c| Some(*c)));
            }
            None => {
                self.exp_scale.append_null();
                self.exp_zero.append_null();
                self.exp_pos_offset.append_null();
                self.exp_pos.append_null();
                self.exp_neg_offset.append_null();
                self.exp_neg.append_null();
            }
        }
        match p.quantiles {
            Some(q) => {
                self.quantiles.append_value(q.iter().map(|(q, _)| Some(*q)));
                self.quantile_values.append_value(q.iter().map(|(_, v)| Some(*v)));
            }
            None => {
                self.quantiles.append_null();
                self.quantile_values.append_null();
            }
        }
        self.flags.push(p.flags);
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let (attr_map, attr_types) = self.attrs.finish()?;
        let utc = |v: TimestampNanosecondArray| v.with_timezone("UTC");
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(utc(TimestampNanosecondArray::from(exact(self.time)))) as ArrayRef,
                Arc::new(utc(TimestampNanosecondArray::from(self.start))),
                Arc::new(self.name.finish()),
                Arc::new(self.description.finish()),
                Arc::new(self.unit.finish()),
                Arc::new(self.kind.finish()),
                Arc::new(self.temporality.finish()),
                Arc::new(self.monotonic.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.count.finish()),
                Arc::new(self.sum.finish()),
                Arc::new(self.min.finish()),
                Arc::new(self.max.finish()),
                Arc::new(self.bucket_counts.finish()),
                Arc::new(self.bounds.finish()),
                Arc::new(self.exp_scale.finish()),
                Arc::new(self.exp_zero.finish()),
                Arc::new(self.exp_pos_offset.finish()),
                Arc::new(self.exp_pos.finish()),
                Arc::new(self.exp_neg_offset.finish()),
                Arc::new(self.exp_neg.finish()),
                Arc::new(self.quantiles.finish()),
                Arc::new(self.quantile_values.finish()),
                Arc::new(UInt32Array::from(exact(self.flags))),
                Arc::new(self.service.finish()),
                Arc::new(self.node.finish()),
                Arc::new(self.resource.finish()?),
                Arc::new(attr_map),
                Arc::new(attr_types),
                Arc::new(self.scope_name.finish()),
                Arc::new(self.scope_version.finish()),
                Arc::new(UInt64Array::from(exact(self.fingerprint))),
            ],
        )
    }
}

fn side(b: Option<&Buckets>) -> (i32, &[u64]) {
    b.map_or((0, &[][..]), |b| (b.offset, &b.bucket_counts[..]))
}

fn number(v: Option<&number_data_point::Value>) -> Option<f64> {
    match v? {
        number_data_point::Value::AsDouble(d) => Some(*d),
        number_data_point::Value::AsInt(i) => Some(*i as f64),
    }
}

/// Builds one batch of the `metrics` schema from a request that passed
/// [`skein_otlp::validate_metrics`].
///
/// # Errors
/// A string that is not UTF-8 (prost guarantees UTF-8, so only a bug).
pub fn build(req: &ExportMetricsServiceRequest) -> Result<RecordBatch, ArrowError> {
    let mut c = Columns::new(0);
    let (mut res_bytes, mut scope_bytes, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    for rm in &req.resource_metrics {
        let rattrs = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes);
        let (svc, nd) = (service_of(rattrs), node_of(rattrs));
        encode_into(rm.resource.as_ref(), &mut res_bytes);
        let mut rows = 0usize;
        for sm in &rm.scope_metrics {
            let (sn, sv) = sm.scope.as_ref().map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            // The scope's encoding once, then the metric's name behind it for each metric.
            encode_into(sm.scope.as_ref(), &mut scope_bytes);
            let scope_len = scope_bytes.len();
            for m in &sm.metrics {
                scope_bytes.truncate(scope_len);
                scope_bytes.extend_from_slice(m.name.as_bytes());
                let before = c.time.len();
                let meta = |c: &mut Columns, kind: &str, temporality: i32, monotonic: Option<bool>, attrs, fp: u64| {
                    c.name.append_value(&m.name);
                    opt_dict(&mut c.description, &m.description);
                    opt_dict(&mut c.unit, &m.unit);
                    c.kind.append_value(kind);
                    match temporality_name(temporality) {
                        Some(t) => c.temporality.append_value(t),
                        None => c.temporality.append_null(),
                    }
                    c.monotonic.append_option(monotonic);
                    c.service.append_value(svc);
                    c.node.append_value(nd);
                    opt_dict(&mut c.scope_name, sn);
                    opt_dict(&mut c.scope_version, sv);
                    c.attrs.push(attrs);
                    c.fingerprint.push(fp);
                };
                match &m.data {
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            let fp = fingerprint(&res_bytes, &scope_bytes, p, &mut scratch);
                            meta(&mut c, kind::GAUGE, 0, None, &p.attributes, fp);
                            c.push(Point::number(p));
                        }
                    }
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            let fp = fingerprint(&res_bytes, &scope_bytes, p, &mut scratch);
                            meta(&mut c, kind::SUM, s.aggregation_temporality, Some(s.is_monotonic), &p.attributes, fp);
                            c.push(Point::number(p));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let fp = fingerprint(&res_bytes, &scope_bytes, p, &mut scratch);
                            meta(&mut c, kind::HISTOGRAM, h.aggregation_temporality, None, &p.attributes, fp);
                            let stats = (p.count, p.sum, p.min, p.max);
                            let buckets = Some((&p.bucket_counts[..], &p.explicit_bounds[..]));
                            c.push(Point { buckets, ..Point::distribution(p.time_unix_nano, p.start_time_unix_nano, stats, p.flags) });
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            let fp = fingerprint(&res_bytes, &scope_bytes, p, &mut scratch);
                            meta(&mut c, kind::EXPONENTIAL_HISTOGRAM, h.aggregation_temporality, None, &p.attributes, fp);
                            let stats = (p.count, p.sum, p.min, p.max);
                            let exp = Some((p.scale, p.zero_count, side(p.positive.as_ref()), side(p.negative.as_ref())));
                            c.push(Point { exp, ..Point::distribution(p.time_unix_nano, p.start_time_unix_nano, stats, p.flags) });
                        }
                    }
                    Some(Data::Summary(s)) => {
                        for p in &s.data_points {
                            let fp = fingerprint(&res_bytes, &scope_bytes, p, &mut scratch);
                            meta(&mut c, kind::SUMMARY, 0, None, &p.attributes, fp);
                            c.push(Point {
                                time: p.time_unix_nano,
                                start: p.start_time_unix_nano,
                                count: Some(p.count),
                                sum: Some(p.sum),
                                quantiles: Some(p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect()),
                                flags: p.flags,
                                ..Point::default()
                            });
                        }
                    }
                    None => {}
                }
                rows += c.time.len() - before;
            }
        }
        c.resource.push(rows, &res_bytes);
    }
    c.finish()
}
