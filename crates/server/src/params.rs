//! Query-string parsing for the native and the Jaeger API: repeated keys, Go duration
//! strings, Unix timestamps in ns (native) or µs (Jaeger). Every rejection names the
//! parameter, the value and what was expected.

use crate::error::ApiError;
use skein_core::query::SearchParams;

/// Number of traces a native search returns when `limit` is not given.
pub const NATIVE_DEFAULT_LIMIT: usize = 20;
/// Jaeger's default search limit.
pub const JAEGER_DEFAULT_LIMIT: usize = 100;
/// Upper bound on any search limit.
pub const MAX_LIMIT: usize = 10_000;

/// Decoded query-string pairs, in order, with repeats.
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// The last non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.int_in(key, "")
    }

    /// The integer value of `key`; `unit` (e.g. "Unix ns") goes into the error message.
    pub(crate) fn int_in(&self, key: &str, unit: &str) -> Result<Option<i64>, ApiError> {
        let unit = if unit.is_empty() { String::new() } else { format!(" ({unit})") };
        self.get(key)
            .map(|v| v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("parameter {key}={v:?} is not an integer{unit}"))))
            .transpose()
    }

    /// A 400 naming the first parameter not in `known`.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!("unknown parameter {k:?}: expected one of {}", known.join(", ")))),
            None => Ok(()),
        }
    }

    pub(crate) fn limit_or(&self, default: usize) -> Result<usize, ApiError> {
        self.limit(default)
    }

    fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.int("limit")? {
            None | Some(0) => Ok(default),
            Some(n) if n < 0 => Err(ApiError::bad_request(format!("parameter limit={n} must be positive"))),
            Some(n) => Ok((n as usize).min(MAX_LIMIT)),
        }
    }
}

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`, `10us`, `10µs`) into nanoseconds.
///
/// # Errors
/// A message naming the value when it is not a duration.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let err = || format!("invalid duration {s:?}: expected a Go duration such as \"500us\", \"1.5ms\", \"2s\" or \"1m\"");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    if total > i64::MAX as f64 {
        return Err(err());
    }
    Ok(if neg { -(total as i64) } else { total as i64 })
}

/// A duration in native parameters: a Go duration, or a bare integer of nanoseconds.
fn native_duration(key: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    parse_go_duration(v).map_err(|e| ApiError::bad_request(format!("parameter {key}: {e}")))
}

fn check_durations(min: Option<i64>, max: Option<i64>, names: (&str, &str)) -> Result<(), ApiError> {
    if let (Some(lo), Some(hi)) = (min, max)
        && hi < lo
    {
        return Err(ApiError::bad_request(format!("{} must not be smaller than {}", names.1, names.0)));
    }
    Ok(())
}

fn status_code(v: &str) -> Result<i8, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "unset" => Ok(0),
        "ok" => Ok(1),
        "error" => Ok(2),
        _ => Err(ApiError::bad_request(format!("parameter status={v:?}: expected ok, error or unset"))),
    }
}

/// Number of log records a search returns when `limit` is not given.
pub const LOGS_DEFAULT_LIMIT: usize = 100;

/// A severity given as an OTLP severity number (1–24) or a name (`trace`, `debug`, `info`,
/// `warn`, `error`, `fatal`): the lowest number of that level.
fn severity(v: &str) -> Result<i32, ApiError> {
    if let Ok(n) = v.parse::<i32>()
        && (1..=24).contains(&n)
    {
        return Ok(n);
    }
    Ok(match v.to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" => 9,
        "warn" | "warning" => 13,
        "error" => 17,
        "fatal" => 21,
        _ => {
            return Err(ApiError::bad_request(format!(
                "parameter severity={v:?}: expected trace, debug, info, warn, error, fatal or a severity number 1-24"
            )));
        }
    })
}

/// Log search: `service`, `node`, `severity` (this level and above), `trace_id`, `span_id`,
/// `correlation_id`, `q` (text in the body), `start`, `end` (Unix ns), `limit`.
pub fn log_search(p: &Params) -> Result<skein_core::query::LogQuery, ApiError> {
    p.only(&["service", "node", "severity", "trace_id", "span_id", "correlation_id", "q", "start", "end", "limit"])?;
    let start_ns = p.int_in("start", "Unix ns")?;
    let end_ns = p.int_in("end", "Unix ns")?;
    if let (Some(s), Some(e)) = (start_ns, end_ns)
        && e < s
    {
        return Err(ApiError::bad_request("parameter end must not be before start"));
    }
    Ok(skein_core::query::LogQuery {
        service: p.get("service").map(str::to_string),
        node: p.get("node").map(str::to_string),
        min_severity: p.get("severity").map(severity).transpose()?,
        trace_id: p
            .get("trace_id")
            .map(|s| skein_core::TraceId::from_hex(s).map_err(|e| ApiError::bad_request(format!("invalid trace_id {s:?}: {e}"))))
            .transpose()?,
        span_id: p
            .get("span_id")
            .map(|s| skein_core::SpanId::from_hex(s).map_err(|e| ApiError::bad_request(format!("invalid span_id {s:?}: {e}"))))
            .transpose()?,
        correlation_id: p.get("correlation_id").map(str::to_string),
        text: p.get("q").map(str::to_string),
        start_ns,
        end_ns,
        limit: p.limit(LOGS_DEFAULT_LIMIT)?,
        oldest_first: false,
    })
}

/// Default window of a metric query: the last hour.
pub const METRICS_DEFAULT_WINDOW_NS: i64 = 3600 * 1_000_000_000;

/// Metric series: `name` (required), `node`, `start`, `end` (Unix ns; default the last hour),
/// `step` (a Go duration or ns; default the window / 120, at least 1 s), `agg`
/// (`avg`, `max`, `min`, `sum`, `rate`; default `avg`).
pub fn metric_query(p: &Params, now_ns: i64) -> Result<skein_core::query::MetricQuery, ApiError> {
    p.only(&["name", "node", "start", "end", "step", "agg"])?;
    let name = p.get("name").ok_or_else(|| ApiError::bad_request("parameter 'name' is required (the metric name)"))?;
    let end_ns = p.int_in("end", "Unix ns")?.unwrap_or(now_ns);
    let start_ns = p.int_in("start", "Unix ns")?.unwrap_or(end_ns.saturating_sub(METRICS_DEFAULT_WINDOW_NS));
    if end_ns < start_ns {
        return Err(ApiError::bad_request("parameter end must not be before start"));
    }
    let step_ns = match p.get("step") {
        Some(v) => native_duration("step", v)?,
        None => ((end_ns - start_ns) / 120).max(1_000_000_000),
    };
    if step_ns <= 0 {
        return Err(ApiError::bad_request(format!("parameter step={:?} must be positive", p.get("step").unwrap_or_default())));
    }
    let agg = match p.get("agg") {
        None => skein_core::query::MetricAgg::Avg,
        Some(v) => skein_core::query::MetricAgg::from_name(v)
            .ok_or_else(|| ApiError::bad_request(format!("parameter agg={v:?}: expected avg, max, min, sum or rate")))?,
    };
    Ok(skein_core::query::MetricQuery { name: name.to_string(), node: p.get("node").map(str::to_string), start_ns, end_ns, step_ns, agg })
}

/// Default window of a replica-lag query: the last hour.
pub const REPLICA_LAG_DEFAULT_WINDOW_NS: i64 = 3600 * 1_000_000_000;
/// Smallest default step of a replica-lag series.
pub const REPLICA_LAG_MIN_STEP_NS: i64 = 60 * 1_000_000_000;
/// Buckets of a replica-lag series at most when `step` is not given.
pub const REPLICA_LAG_DEFAULT_BUCKETS: i64 = 300;
/// Buckets of a replica-lag series at most when `step` is given (as for metric series).
pub const REPLICA_LAG_MAX_BUCKETS: i64 = 11_000;

/// The window of a replica-lag query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagWindow {
    /// Window start (Unix ns).
    pub start_ns: i64,
    /// Window end (Unix ns).
    pub end_ns: i64,
    /// Bucket width of the series (ns).
    pub step_ns: i64,
}

/// Replica lag: `start`, `end` (Unix ns; default the last hour), `step` (a Go duration or ns;
/// default one minute, or longer so that the window has at most
/// [`REPLICA_LAG_DEFAULT_BUCKETS`] steps).
pub fn replica_lag(p: &Params, now_ns: i64) -> Result<LagWindow, ApiError> {
    p.only(&["start", "end", "step"])?;
    let end_ns = p.int_in("end", "Unix ns")?.unwrap_or(now_ns);
    let start_ns = p.int_in("start", "Unix ns")?.unwrap_or(end_ns.saturating_sub(REPLICA_LAG_DEFAULT_WINDOW_NS));
    if start_ns < 0 || end_ns < 0 {
        return Err(ApiError::bad_request(format!("parameters start={start_ns} and end={end_ns} must not be negative (Unix ns)")));
    }
    if end_ns < start_ns {
        return Err(ApiError::bad_request(format!("parameter end={end_ns} is before start={start_ns} (Unix ns)")));
    }
    let window = end_ns - start_ns;
    let step_ns = match p.get("step") {
        Some(v) => native_duration("step", v)?,
        None => REPLICA_LAG_MIN_STEP_NS.max(window / REPLICA_LAG_DEFAULT_BUCKETS + 1),
    };
    if step_ns <= 0 {
        return Err(ApiError::bad_request(format!("parameter step={:?} must be positive", p.get("step").unwrap_or_default())));
    }
    let buckets = window / step_ns + 1;
    if buckets > REPLICA_LAG_MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "parameter step={:?} makes {buckets} steps in the window; at most {REPLICA_LAG_MAX_BUCKETS} are allowed: use a larger step or a shorter window",
            p.get("step").unwrap_or_default()
        )));
    }
    Ok(LagWindow { start_ns, end_ns, step_ns })
}

/// Span kind by lowercase name, or a 400 naming the parameter.
pub fn span_kind(key: &str, v: &str) -> Result<i8, ApiError> {
    skein_core::query::span_kind_from_name(v)
        .ok_or_else(|| ApiError::bad_request(format!("parameter {key}={v:?}: expected server, client, producer, consumer or internal")))
}

/// Native search: `service`, `operation`, `span_kind`, `node`, `min_duration`, `max_duration`,
/// `status`, `attr.KEY=VALUE`, `start`, `end` (Unix ns), `limit`.
pub fn native_search(p: &Params) -> Result<SearchParams, ApiError> {
    let min = p.get("min_duration").map(|v| native_duration("min_duration", v)).transpose()?;
    let max = p.get("max_duration").map(|v| native_duration("max_duration", v)).transpose()?;
    check_durations(min, max, ("min_duration", "max_duration"))?;
    let known = ["service", "operation", "span_kind", "node", "min_duration", "max_duration", "status", "start", "end", "limit"];
    let mut attributes = Vec::new();
    for (k, v) in &p.0 {
        if let Some(attr) = k.strip_prefix("attr.") {
            attributes.push((attr.to_string(), v.clone()));
        } else if !known.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("unknown parameter {k:?}: expected one of {}, or attr.KEY=VALUE", known.join(", "))));
        }
    }
    Ok(SearchParams {
        service: p.get("service").map(str::to_string),
        operation: p.get("operation").map(str::to_string),
        span_kind: p.get("span_kind").map(|v| span_kind("span_kind", v)).transpose()?,
        node: p.get("node").map(str::to_string),
        min_duration_ns: min,
        max_duration_ns: max,
        status: p.get("status").map(status_code).transpose()?,
        attributes,
        start_ns: p.int("start")?,
        end_ns: p.int("end")?,
        limit: p.limit(NATIVE_DEFAULT_LIMIT)?,
    })
}

/// Jaeger search: `service`, `operation`, `tag=k:v` (repeatable), `tags={json}`, `start`/`end`
/// (Unix µs; default the last 48 hours), `minDuration`/`maxDuration` (Go durations), `limit`.
pub fn jaeger_search(p: &Params, now_ns: i64) -> Result<SearchParams, ApiError> {
    let service = p.get("service").map(str::to_string);
    if service.is_none() {
        return Err(ApiError::bad_request("parameter 'service' is required"));
    }
    let mut attributes = Vec::new();
    for t in p.all("tag") {
        let (k, v) =
            t.split_once(':').ok_or_else(|| ApiError::bad_request(format!("malformed 'tag' parameter {t:?}, expected 'key:value'")))?;
        attributes.push((k.to_string(), v.to_string()));
    }
    for t in p.all("tags") {
        let obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(t).map_err(|e| ApiError::bad_request(format!("malformed 'tags' parameter {t:?}: {e}")))?;
        for (k, v) in obj {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            attributes.push((k, v));
        }
    }
    let dur = |key: &str| {
        p.get(key).map(|v| parse_go_duration(v).map_err(|e| ApiError::bad_request(format!("cannot parse {key}: {e}")))).transpose()
    };
    let (min, max) = (dur("minDuration")?, dur("maxDuration")?);
    check_durations(min, max, ("minDuration", "maxDuration"))?;
    let micros = |key: &str| p.int(key).map(|o| o.map(|us| us.saturating_mul(1_000)));
    let end = micros("end")?.unwrap_or(now_ns);
    let start = micros("start")?.unwrap_or(end.saturating_sub(48 * 3600 * 1_000_000_000));
    if start > end {
        return Err(ApiError::bad_request(format!("parameter start={} is after end={} (Unix µs)", start / 1_000, end / 1_000)));
    }
    Ok(SearchParams {
        service,
        operation: p.get("operation").map(str::to_string),
        span_kind: p.get("spanKind").map(|v| span_kind("spanKind", v)).transpose()?,
        node: None,
        min_duration_ns: min,
        max_duration_ns: max,
        status: None,
        attributes,
        start_ns: Some(start),
        end_ns: Some(end),
        limit: p.limit(JAEGER_DEFAULT_LIMIT)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("500us"), Ok(500_000));
        assert_eq!(parse_go_duration("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_go_duration("2h45m"), Ok((2 * 3600 + 45 * 60) * 1_000_000_000));
        assert_eq!(parse_go_duration("10µs"), Ok(10_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("ms").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn jaeger_params() {
        let p = Params::parse(Some(
            "service=api&tag=http.route:/cart&tag=error:true&tags=%7B%22a%22%3A1%7D&minDuration=1ms&start=1000&end=2000&limit=5",
        ));
        let q = jaeger_search(&p, 0).unwrap();
        assert_eq!(q.service.as_deref(), Some("api"));
        assert_eq!(q.attributes, vec![("http.route".into(), "/cart".into()), ("error".into(), "true".into()), ("a".into(), "1".into())]);
        assert_eq!((q.start_ns, q.end_ns, q.limit, q.min_duration_ns), (Some(1_000_000), Some(2_000_000), 5, Some(1_000_000)));
        let e = jaeger_search(&Params::parse(Some("service=a&minDuration=2s&maxDuration=1s")), 0).unwrap_err();
        assert_eq!(e.code.http_status(), 400);
        assert!(jaeger_search(&Params::parse(Some("operation=x")), 0).unwrap_err().message.contains("service"));
        assert!(jaeger_search(&Params::parse(Some("service=a&tag=nocolon")), 0).unwrap_err().message.contains("tag"));
    }

    #[test]
    fn replica_lag_params() {
        const H: i64 = 3600 * 1_000_000_000;
        let w = replica_lag(&Params::parse(None), 10 * H).unwrap();
        assert_eq!(w, LagWindow { start_ns: 9 * H, end_ns: 10 * H, step_ns: 60_000_000_000 });
        // a day by default steps so that there are at most 300 buckets
        let w = replica_lag(&Params::parse(Some(&format!("start=0&end={}", 24 * H))), 0).unwrap();
        assert!(w.step_ns > 60_000_000_000 && 24 * H / w.step_ns < REPLICA_LAG_DEFAULT_BUCKETS, "{w:?}");
        let w = replica_lag(&Params::parse(Some("start=0&end=100&step=10")), 0).unwrap();
        assert_eq!(w.step_ns, 10);
        assert_eq!(replica_lag(&Params::parse(Some("step=5m")), H).unwrap().step_ns, 300_000_000_000);
        for (q, want) in [
            ("start=soon", "parameter start=\"soon\" is not an integer (Unix ns)"),
            ("start=10&end=5", "end=5 is before start=10"),
            ("step=0s", "step=\"0s\" must be positive"),
            ("step=fast", "parameter step: invalid duration \"fast\""),
            ("step=1ms", "at most 11000"),
            ("replica=db-2", "unknown parameter \"replica\""),
        ] {
            let e = replica_lag(&Params::parse(Some(q)), H).unwrap_err();
            assert_eq!(e.code.http_status(), 400);
            assert!(e.message.contains(want), "{q}: {}", e.message);
        }
    }

    #[test]
    fn native_params() {
        let q = native_search(&Params::parse(Some("service=api&min_duration=1s&attr.http.route=/cart&status=error"))).unwrap();
        assert_eq!(q.min_duration_ns, Some(1_000_000_000));
        assert_eq!(q.attributes, vec![("http.route".into(), "/cart".into())]);
        assert_eq!((q.status, q.limit), (Some(2), NATIVE_DEFAULT_LIMIT));
        assert!(native_search(&Params::parse(Some("servce=api"))).unwrap_err().message.contains("servce"));
    }
}
