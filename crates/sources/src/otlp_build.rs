//! What every source's OTLP output shares: the clock, a gauge, and a request of one scope.

use skein_otlp::ExportMetricsServiceRequest;
use skein_otlp::proto::common::v1::InstrumentationScope;
use skein_otlp::proto::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data};
use skein_otlp::proto::resource::v1::Resource;

/// Now, in Unix nanoseconds (0 if the clock is before 1970).
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A gauge metric.
pub fn gauge(name: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric { name: name.into(), unit: unit.into(), data: Some(Data::Gauge(Gauge { data_points })), ..Default::default() }
}

/// `metrics` as one export request of `resource` and scope `skein-agent/<source>` (the agent's
/// version).
pub fn metrics_request(resource: Resource, source: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope(source)), metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// The instrumentation scope of a source: `skein-agent/<source>` and the agent's version.
pub fn scope(source: &str) -> InstrumentationScope {
    InstrumentationScope { name: format!("skein-agent/{source}"), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}
