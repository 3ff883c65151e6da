//! The `prom_scrape` source: a local Prometheus endpoint (text exposition format 0.0.4) scraped
//! at an interval, its samples forwarded as OTLP metrics.
//!
//! Mapping: `counter` → cumulative monotonic sum; `gauge` and untyped → gauge; `histogram`
//! (`_bucket{le}`, `_sum`, `_count`) → cumulative histogram with explicit bounds; `summary`
//! (`{quantile}`, `_sum`, `_count`) → summary. Metric names and labels are kept as Prometheus
//! wrote them (labels become attributes). Cumulative points start at the time the agent first
//! scraped the target. Every scrape also sends `up` (1, or 0 when the scrape failed, with a
//! warning in the agent's log) like Prometheus does. The resource is `service.name` = `job`
//! and `service.instance.id` = the target's `host:port`.
//!
//! Bounds: a body larger than [`MAX_BODY`] or with more than [`MAX_SAMPLES`] samples fails the
//! scrape with an error naming the limit.

use serde::{Deserialize, Serialize};
use skein_core::Duration;
use skein_otlp::ExportMetricsServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
use skein_otlp::proto::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, Summary, SummaryDataPoint, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::synth::signals::kv;
use std::collections::BTreeMap;

/// Largest scrape body accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most samples accepted from one scrape.
pub const MAX_SAMPLES: usize = 100_000;

/// `[[prom_scrape]]`: one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromTarget {
    /// The endpoint, e.g. `http://127.0.0.1:9100/metrics`.
    pub url: String,
    /// Time between scrapes.
    pub interval: Duration,
    /// Time limit of one scrape.
    pub timeout: Duration,
    /// `service.name` of the samples.
    pub job: String,
}

impl Default for PromTarget {
    fn default() -> Self {
        Self { url: String::new(), interval: Duration::secs(30), timeout: Duration::secs(10), job: "prometheus".into() }
    }
}

impl PromTarget {
    /// Checks the URL and durations; the error names the target.
    pub fn validate(&self, i: usize) -> Result<(), String> {
        let u = url::Url::parse(&self.url).map_err(|e| format!("prom_scrape[{i}].url = {:?} is not a URL: {e}", self.url))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(format!("prom_scrape[{i}].url = {:?} must be http:// or https://", self.url));
        }
        if self.interval.0.is_zero() || self.timeout.0.is_zero() {
            return Err(format!("prom_scrape[{i}]: interval and timeout must be positive"));
        }
        Ok(())
    }

    fn instance(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .map_or_else(String::new, |u| format!("{}:{}", u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)))
    }
}

/// A sample line: name, labels (sorted), value, optional timestamp in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written (`http_requests_total`, `x_bucket`).
    pub name: String,
    /// Labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// Milliseconds since the epoch, when the line gives one.
    pub timestamp_ms: Option<i64>,
}

/// A parsed exposition: `# TYPE`s and `# HELP`s by family name, and the samples in order.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type.
    pub types: BTreeMap<String, String>,
    /// Family name → help text.
    pub help: BTreeMap<String, String>,
    /// Every sample.
    pub samples: Vec<Sample>,
}

/// Parses the text format. A malformed line is an error naming its line number.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut w = rest.trim_start().splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    e.types.insert(name.to_string(), t.trim().to_string());
                }
                (Some("HELP"), Some(name), help) => {
                    e.help.insert(name.to_string(), help.unwrap_or("").to_string());
                }
                _ => {}
            }
            continue;
        }
        if e.samples.len() >= MAX_SAMPLES {
            return Err(format!("more than {MAX_SAMPLES} samples"));
        }
        e.samples.push(parse_sample(line).map_err(|m| format!("line {}: {m}: {line:?}", n + 1))?);
    }
    Ok(e)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut consumed = None;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    consumed = Some(i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('=') || chars.next().map(|(_, c)| c) != Some('"') {
                return Err("bad label".into());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        // Prometheus keeps an unknown escape as written
                        Some((_, c)) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err("unterminated label value".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
        let end = consumed.ok_or("unterminated label set")?;
        rest = &r[end..];
    }
    let mut w = rest.split_whitespace();
    let value = parse_value(w.next().ok_or("no value")?)?;
    let timestamp_ms = w.next().map(|t| t.parse::<i64>().map_err(|_| "bad timestamp")).transpose()?;
    labels.sort();
    Ok(Sample { name: name.to_string(), labels, value, timestamp_ms })
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

fn attrs(labels: &[(String, String)], skip: &str) -> Vec<KeyValue> {
    labels.iter().filter(|(k, _)| k != skip).map(|(k, v)| kv(k, v)).collect()
}

/// The OTLP metrics of one scrape taken at `now` (Unix ns); cumulative points start at `start`.
pub fn to_otlp(e: &Exposition, now: u64, start: u64) -> Vec<Metric> {
    let time = |s: &Sample| s.timestamp_ms.and_then(|ms| ms.checked_mul(1_000_000)).and_then(|ns| u64::try_from(ns).ok()).unwrap_or(now);
    // The family of a sample: `x_bucket`/`x_sum`/`x_count` belong to histogram or summary `x`.
    let family_of = |name: &str| -> (String, String) {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && let Some(t) = e.types.get(base).filter(|t| *t == "histogram" || *t == "summary")
            {
                return (base.to_string(), t.clone());
            }
        }
        (name.to_string(), e.types.get(name).cloned().unwrap_or_else(|| "untyped".into()))
    };
    // family → (type, samples) in first-seen order
    let mut order: Vec<String> = Vec::new();
    let mut fams: BTreeMap<String, (String, Vec<&Sample>)> = BTreeMap::new();
    for s in &e.samples {
        let (f, t) = family_of(&s.name);
        fams.entry(f.clone())
            .or_insert_with(|| {
                order.push(f);
                (t, Vec::new())
            })
            .1
            .push(s);
    }
    let mut out = Vec::new();
    for f in order {
        let (t, samples) = &fams[&f];
        let desc = e.help.get(&f).cloned().unwrap_or_default();
        let number = |s: &Sample, start: u64| NumberDataPoint {
            time_unix_nano: time(s),
            start_time_unix_nano: start,
            value: Some(number_data_point::Value::AsDouble(s.value)),
            attributes: attrs(&s.labels, ""),
            ..Default::default()
        };
        let data = match t.as_str() {
            "counter" => Data::Sum(Sum {
                data_points: samples.iter().map(|s| number(s, start)).collect(),
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
            "histogram" => {
                Data::Histogram(Histogram { data_points: histogram_points(&f, samples, &time, start), aggregation_temporality: 2 })
            }
            "summary" => Data::Summary(Summary { data_points: summary_points(&f, samples, &time, start) }),
            _ => Data::Gauge(Gauge { data_points: samples.iter().map(|s| number(s, 0)).collect() }),
        };
        out.push(Metric { name: f, description: desc, data: Some(data), ..Default::default() });
    }
    out
}

/// Label set without `skip` (the `le` / `quantile` label) as a grouping key.
fn series_key(labels: &[(String, String)], skip: &str) -> Vec<(String, String)> {
    labels.iter().filter(|(k, _)| k != skip).cloned().collect()
}

/// One histogram series being gathered: `(le, cumulative count)` buckets, sum, count, time.
#[derive(Default)]
struct HistogramSeries {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
    time: u64,
}

fn histogram_points(f: &str, samples: &[&Sample], time: &dyn Fn(&Sample) -> u64, start: u64) -> Vec<HistogramDataPoint> {
    let mut series: BTreeMap<Vec<(String, String)>, HistogramSeries> = BTreeMap::new();
    for s in samples {
        let e = series.entry(series_key(&s.labels, "le")).or_default();
        e.time = e.time.max(time(s));
        if s.name == format!("{f}_bucket") {
            if let Some(le) = s.labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| parse_value(v).ok()) {
                e.buckets.push((le, s.value));
            }
        } else if s.name == format!("{f}_sum") {
            e.sum = s.value;
        } else if s.name == format!("{f}_count") {
            e.count = s.value;
        }
    }
    series
        .into_iter()
        .map(|(labels, HistogramSeries { mut buckets, sum, count, time: t })| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let bounds: Vec<f64> = buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).collect();
            // cumulative `le` counts into per-bucket counts; the +Inf bucket is the count
            let mut counts = Vec::with_capacity(bounds.len() + 1);
            let mut prev = 0.0;
            for (le, c) in &buckets {
                if le.is_finite() {
                    counts.push((c - prev).max(0.0) as u64);
                    prev = *c;
                }
            }
            // No `_count` line: the +Inf bucket is the count.
            let count = if count > 0.0 { count } else { buckets.last().filter(|b| b.0.is_infinite()).map_or(prev, |b| b.1) };
            counts.push((count - prev).max(0.0) as u64);
            HistogramDataPoint {
                time_unix_nano: t,
                start_time_unix_nano: start,
                count: count as u64,
                sum: Some(sum),
                bucket_counts: counts,
                explicit_bounds: bounds,
                attributes: labels.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }
        })
        .collect()
}

fn summary_points(f: &str, samples: &[&Sample], time: &dyn Fn(&Sample) -> u64, start: u64) -> Vec<SummaryDataPoint> {
    let mut series: BTreeMap<Vec<(String, String)>, SummaryDataPoint> = BTreeMap::new();
    for s in samples {
        let key = series_key(&s.labels, "quantile");
        let p = series.entry(key.clone()).or_insert_with(|| SummaryDataPoint {
            start_time_unix_nano: start,
            attributes: key.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        });
        p.time_unix_nano = p.time_unix_nano.max(time(s));
        if s.name == format!("{f}_sum") {
            p.sum = s.value;
        } else if s.name == format!("{f}_count") {
            p.count = s.value as u64;
        } else if let Some(q) = s.labels.iter().find(|(k, _)| k == "quantile").and_then(|(_, v)| parse_value(v).ok()) {
            p.quantile_values.push(ValueAtQuantile { quantile: q, value: s.value });
        }
    }
    series.into_values().collect()
}

/// One scraper per target: fetches, parses and converts.
pub struct Scraper {
    target: PromTarget,
    client: reqwest::Client,
    started: u64,
    resource: Resource,
}

impl Scraper {
    /// A scraper of `target`, whose cumulative points start at `started` (Unix ns).
    pub fn new(target: PromTarget, started: u64) -> Self {
        let client = reqwest::Client::builder().timeout(target.timeout.0).build().unwrap_or_default();
        let resource = Resource {
            attributes: vec![kv("service.name", &target.job), kv("service.instance.id", &target.instance()), kv("url.full", &target.url)],
            ..Default::default()
        };
        Self { target, client, started, resource }
    }

    async fn fetch(&self) -> Result<String, String> {
        let mut resp = self
            .client
            .get(&self.target.url)
            .header("accept", "text/plain;version=0.0.4")
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.target.url))?;
        if !resp.status().is_success() {
            return Err(format!("GET {} answered {}", self.target.url, resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading {}: {e}", self.target.url))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{} sent more than {MAX_BODY} bytes", self.target.url));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| format!("{} sent a body that is not UTF-8", self.target.url))
    }

    /// One scrape at `now` (Unix ns): the samples and `up`, or `up` = 0 and the error.
    pub async fn scrape(&self, now: u64) -> (ExportMetricsServiceRequest, Option<String>) {
        let (mut metrics, err) = match self.fetch().await.and_then(|t| parse(&t).map_err(|e| format!("{}: {e}", self.target.url))) {
            Ok(e) => (to_otlp(&e, now, self.started), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let up = NumberDataPoint {
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(if err.is_none() { 1.0 } else { 0.0 })),
            ..Default::default()
        };
        metrics.push(crate::otlp_build::gauge("up", "", vec![up]));
        (crate::otlp_build::metrics_request(self.resource.clone(), "prom_scrape", metrics), err)
    }

    /// Scrapes every `interval` until `stop`, handing each request to `export`.
    pub async fn run<F, Fut>(self, export: F, mut stop: tokio::sync::watch::Receiver<bool>)
    where
        F: Fn(ExportMetricsServiceRequest) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            let now = crate::otlp_build::now_unix_ns();
            let (req, err) = self.scrape(now).await;
            if let Some(e) = err {
                tracing::warn!(target = %self.target.url, error = %e, "prometheus scrape failed");
            }
            if let Err(e) = export(req).await {
                tracing::warn!(target = %self.target.url, error = %e, "queueing scraped metrics failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.target.interval.0) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="get",code="200"} 1027 1795860000000
http_requests_total{method="post",code="500"} 3
# TYPE temp gauge
temp{room="a \"b\"\\c\nd"} -1.5e1
# TYPE lat histogram
lat_bucket{le="0.1"} 5
lat_bucket{le="1"} 9
lat_bucket{le="+Inf"} 10
lat_sum 4.5
lat_count 10
# TYPE rpc summary
rpc{quantile="0.5"} 0.2
rpc{quantile="0.99"} 0.9
rpc_sum 12
rpc_count 40
untyped_thing NaN
"#;

    #[test]
    fn text_format_becomes_otlp_metrics() {
        let e = parse(TEXT).unwrap();
        assert_eq!(e.samples.len(), 13);
        assert_eq!(e.samples[0].timestamp_ms, Some(1_795_860_000_000));
        assert_eq!(e.samples[2].labels, vec![("room".to_string(), "a \"b\"\\c\nd".to_string())]);
        let m = to_otlp(&e, 100, 50);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["http_requests_total", "temp", "lat", "rpc", "untyped_thing"]);
        let Some(Data::Sum(s)) = &m[0].data else { panic!("counter is a sum") };
        assert!(s.is_monotonic && s.aggregation_temporality == 2 && s.data_points.len() == 2);
        assert_eq!((s.data_points[0].time_unix_nano, s.data_points[0].start_time_unix_nano), (1_795_860_000_000_000_000, 50));
        assert_eq!(m[0].description, "Requests.");
        let Some(Data::Histogram(h)) = &m[2].data else { panic!("histogram") };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum, &p.explicit_bounds, &p.bucket_counts), (10, Some(4.5), &vec![0.1, 1.0], &vec![5, 4, 1]));
        let Some(Data::Summary(s)) = &m[3].data else { panic!("summary") };
        assert_eq!((s.data_points[0].count, s.data_points[0].sum, s.data_points[0].quantile_values.len()), (40, 12.0, 2));
        let Some(Data::Gauge(g)) = &m[4].data else { panic!("untyped is a gauge") };
        assert!(matches!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(v)) if v.is_nan()));
        // the result passes the agent's validation
        let mut req = crate::otlp_build::metrics_request(Default::default(), "prom_scrape", m);
        let v = skein_otlp::validate_metrics(&mut req, &skein_otlp::Limits::default());
        assert_eq!(v.rejected, 0, "{}", v.message());
    }

    #[test]
    fn malformed_lines_are_named() {
        assert!(parse("ok 1\nbad{x=\"1\" 2\n").unwrap_err().starts_with("line 2"));
        assert!(parse("x{a=1} 2").unwrap_err().contains("bad label"));
        assert!(parse("x 1 notatime").unwrap_err().contains("bad timestamp"));
        assert!(parse("x abc").unwrap_err().contains("bad value"));
        // a millisecond timestamp too large for nanoseconds is replaced by the scrape time
        let m = to_otlp(&parse("foo 1 20000000000000").unwrap(), 7, 1);
        let Some(Data::Gauge(g)) = &m[0].data else { panic!() };
        assert_eq!(g.data_points[0].time_unix_nano, 7);
        assert_eq!(parse(r#"p{path="C:\temp"} 1"#).unwrap().samples[0].labels[0].1, r"C:\temp");
        assert!(PromTarget { url: "ftp://x".into(), ..Default::default() }.validate(0).is_err());
    }

    #[tokio::test]
    async fn a_real_endpoint_is_scraped_and_a_dead_one_reports_up_0() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { TEXT }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let s = Scraper::new(PromTarget { url: format!("http://{addr}/metrics"), job: "node".into(), ..Default::default() }, 1);
        let (req, err) = s.scrape(100).await;
        assert!(err.is_none(), "{err:?}");
        let rm = &req.resource_metrics[0];
        assert!(rm.resource.as_ref().unwrap().attributes.iter().any(|a| a.key == "service.instance.id"));
        let names: Vec<&str> = rm.scope_metrics[0].metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.last(), Some(&"up"));
        assert_eq!(names.len(), 6);
        let dead = Scraper::new(PromTarget { url: "http://127.0.0.1:1/metrics".into(), ..Default::default() }, 1);
        let (req, err) = dead.scrape(100).await;
        assert!(err.unwrap().contains("127.0.0.1:1"));
        let up = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(Data::Gauge(g)) = &up.data else { panic!() };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(0.0)));
    }
}
