//! One log line (or multiline record) into an OTLP log record: JSON when it is a JSON object,
//! text otherwise, with the trace context and a correlation id pulled out of it.

use regex::Regex;
use serde_json::{Map, Value};
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use skein_otlp::proto::logs::v1::LogRecord;
use skein_otlp::synth::signals::kv;

/// JSON fields holding the message.
const BODY_FIELDS: &[&str] = &["message", "msg", "body", "log", "text"];
/// JSON fields holding the level.
const LEVEL_FIELDS: &[&str] = &["level", "severity", "severity_text", "severityText", "lvl", "loglevel", "log.level", "levelname"];
/// JSON fields holding the event time.
const TIME_FIELDS: &[&str] = &["time", "timestamp", "ts", "@timestamp", "t", "datetime", "time_unix_nano"];
/// Fields (JSON keys or `key=value` words) holding a trace id.
const TRACE_FIELDS: &[&str] = &["trace_id", "traceId", "trace.id", "traceid", "otelTraceID", "trace"];
/// Fields holding a span id.
const SPAN_FIELDS: &[&str] = &["span_id", "spanId", "span.id", "spanid", "otelSpanID"];
/// JSON attributes kept per record at most; the rest are counted as dropped.
const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute value kept from a JSON line.
const MAX_VALUE_LEN: usize = 4096;

/// How lines of one input are read.
#[derive(Debug, Clone)]
pub struct LineParser {
    /// A regex with named groups `trace_id`, `span_id` and/or `correlation_id`, tried on text
    /// lines and on JSON lines that carry no trace id field.
    pub trace_regex: Option<Regex>,
    /// Field names whose value becomes the `correlation_id` attribute.
    pub correlation_fields: Vec<String>,
}

/// What a line says about itself.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Event time (Unix ns), 0 when the line has none.
    pub time: u64,
    /// OTLP severity number (0 when unknown) and the level as written.
    pub severity: (i32, String),
    /// The message.
    pub body: String,
    /// Trace id, 16 bytes, or empty.
    pub trace_id: Vec<u8>,
    /// Span id, 8 bytes, or empty.
    pub span_id: Vec<u8>,
    /// Attributes: the other JSON fields and `correlation_id`.
    pub attributes: Vec<KeyValue>,
    /// JSON fields left out past `MAX_ATTRIBUTES` (64).
    pub dropped_attributes: u32,
}

impl LineParser {
    /// Parses one record (already without its line terminator).
    pub fn parse(&self, line: &[u8]) -> Parsed {
        let text = String::from_utf8_lossy(line);
        let trimmed = text.trim_start();
        if trimmed.starts_with('{')
            && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed)
        {
            return self.parse_json(map, &text);
        }
        self.parse_text(&text)
    }

    fn parse_json(&self, mut map: Map<String, Value>, line: &str) -> Parsed {
        let mut p = Parsed::default();
        let mut take = |names: &[&str]| -> Option<Value> { names.iter().find_map(|n| take_path(&mut map, n)) };
        p.body = match take(BODY_FIELDS) {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => line.trim().to_string(),
        };
        if let Some(v) = take(LEVEL_FIELDS) {
            p.severity = severity_of_value(&v);
        }
        if let Some(t) = take(TIME_FIELDS).and_then(|v| time_of_value(&v)) {
            p.time = t;
        }
        if let Some(id) = take(TRACE_FIELDS).and_then(|v| v.as_str().and_then(hex_id::<16>)) {
            p.trace_id = id.to_vec();
        }
        if let Some(id) = take(SPAN_FIELDS).and_then(|v| v.as_str().and_then(hex_id::<8>)) {
            p.span_id = id.to_vec();
        }
        let mut correlation = None;
        for f in &self.correlation_fields {
            if let Some(v) = take_path(&mut map, f) {
                correlation = Some(scalar_text(&v));
                break;
            }
        }
        if p.trace_id.is_empty() {
            self.ids_in_line(line, &mut p, &mut correlation);
        }
        if let Some(c) = correlation.filter(|c| !c.is_empty()) {
            p.attributes.push(kv("correlation_id", &c));
        }
        for (k, v) in map {
            if p.attributes.len() >= MAX_ATTRIBUTES {
                p.dropped_attributes += 1;
                continue;
            }
            let value = match v {
                Value::Null => continue,
                Value::Bool(b) => any_value::Value::BoolValue(b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => any_value::Value::IntValue(i),
                    None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
                },
                Value::String(s) => any_value::Value::StringValue(cut(s)),
                other => any_value::Value::StringValue(cut(other.to_string())),
            };
            p.attributes.push(KeyValue { key: k, value: Some(AnyValue { value: Some(value) }), ..Default::default() });
        }
        p
    }

    fn parse_text(&self, line: &str) -> Parsed {
        let mut p = Parsed { body: line.to_string(), ..Default::default() };
        let mut words = line.split_whitespace();
        // A leading timestamp: `2026-11-28T10:00:00.123Z` or `2026-11-28 10:00:00,123`.
        if let Some(first) = words.next() {
            let second = words.next().unwrap_or("");
            p.time = parse_rfc3339(first).or_else(|| parse_rfc3339(&format!("{first}T{second}"))).unwrap_or(0);
        }
        // The level among the first words: `ERROR`, `[warn]`, `level=info`, `INFO:`.
        for w in line.split_whitespace().take(6) {
            let w = w.trim_matches(|c: char| matches!(c, '[' | ']' | '(' | ')' | ':' | ',' | '<' | '>' | '"'));
            let w = w.strip_prefix("level=").or_else(|| w.strip_prefix("lvl=")).unwrap_or(w);
            let s = severity_of_text(w);
            if s.0 != 0 {
                p.severity = s;
                break;
            }
        }
        let mut correlation = None;
        self.ids_in_line(line, &mut p, &mut correlation);
        if let Some(c) = correlation.filter(|c| !c.is_empty()) {
            p.attributes.push(kv("correlation_id", &c));
        }
        p
    }

    /// Trace context and correlation id from the words of a line: `key=value` / `key: value`
    /// pairs, a W3C `traceparent` anywhere, and the configured regex.
    fn ids_in_line(&self, line: &str, p: &mut Parsed, correlation: &mut Option<String>) {
        let pairs = key_values(line);
        let find = |names: &[&str]| pairs.iter().find(|(k, _)| names.iter().any(|n| n.eq_ignore_ascii_case(k))).map(|(_, v)| *v);
        if p.trace_id.is_empty()
            && let Some(id) = find(TRACE_FIELDS).and_then(hex_id::<16>)
        {
            p.trace_id = id.to_vec();
        }
        if p.span_id.is_empty()
            && let Some(id) = find(SPAN_FIELDS).and_then(hex_id::<8>)
        {
            p.span_id = id.to_vec();
        }
        if p.trace_id.is_empty()
            && let Some((t, s)) = find_traceparent(line.as_bytes())
        {
            p.trace_id = t.to_vec();
            if p.span_id.is_empty() {
                p.span_id = s.to_vec();
            }
        }
        if correlation.is_none() {
            let names: Vec<&str> = self.correlation_fields.iter().map(String::as_str).collect();
            *correlation = find(&names).map(str::to_string);
        }
        if let Some(re) = &self.trace_regex
            && let Some(c) = re.captures(line)
        {
            if p.trace_id.is_empty()
                && let Some(id) = c.name("trace_id").and_then(|m| hex_id::<16>(m.as_str()))
            {
                p.trace_id = id.to_vec();
            }
            if p.span_id.is_empty()
                && let Some(id) = c.name("span_id").and_then(|m| hex_id::<8>(m.as_str()))
            {
                p.span_id = id.to_vec();
            }
            if correlation.is_none() {
                *correlation = c.name("correlation_id").map(|m| m.as_str().to_string());
            }
        }
    }
}

/// Removes `path` from a JSON object: a key as written (`trace.id`), else the dotted path
/// through nested objects (`{"trace": {"id": …}}`).
fn take_path(map: &mut Map<String, Value>, path: &str) -> Option<Value> {
    if let Some(v) = map.remove(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    match map.get_mut(head)? {
        Value::Object(inner) => take_path(inner, rest),
        _ => None,
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE_LEN {
        let mut end = MAX_VALUE_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `key=value`, `key="value"`, `key: value` pairs of a text line (or the whole JSON line,
/// where `"key":"value"` reads the same way).
fn key_values(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}').filter(|w| !w.is_empty()).collect();
    let q = |s: &str| -> bool { s.trim_matches(|c| c == '"' || c == '\'').is_empty() };
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let sep = w.find(['=', ':']);
        if let Some(at) = sep {
            let key = w[..at].trim_matches(|c| c == '"' || c == '\'' || c == '[' || c == '(');
            let mut value = &w[at + 1..];
            if q(value) {
                // `key: value` or `"key": "value"`: the value is the next word.
                if let Some(next) = words.get(i + 1) {
                    value = next;
                    i += 1;
                }
            }
            let value = value.trim_matches(|c| c == '"' || c == '\'' || c == ';' || c == ')' || c == ']');
            if !key.is_empty() && !value.is_empty() {
                out.push((key, value));
            }
        }
        i += 1;
    }
    out
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) anywhere in the line, with non-zero ids.
pub fn find_traceparent(b: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    const LEN: usize = 55;
    if b.len() < LEN {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
    for i in 0..=b.len() - LEN {
        let w = &b[i..i + LEN];
        if w[2] != b'-' || w[35] != b'-' || w[52] != b'-' {
            continue;
        }
        if i > 0 && b[i - 1].is_ascii_hexdigit() || b.get(i + LEN).is_some_and(u8::is_ascii_hexdigit) {
            continue;
        }
        if !(hex(&w[..2]) && hex(&w[3..35]) && hex(&w[36..52]) && hex(&w[53..])) {
            continue;
        }
        let (t, s) = (std::str::from_utf8(&w[3..35]).ok()?, std::str::from_utf8(&w[36..52]).ok()?);
        if let (Some(t), Some(s)) = (hex_id::<16>(t), hex_id::<8>(s)) {
            return Some((t, s));
        }
    }
    None
}

/// A lowercase or uppercase hex id of exactly `N` bytes, not all zero (dashes, as in a UUID
/// written trace id, are ignored).
pub fn hex_id<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let h = |c: u8| (c as char).to_digit(16);
        *o = (h(pair[0])? * 16 + h(pair[1])?) as u8;
    }
    (out != [0u8; N]).then_some(out)
}

/// OTLP severity number of a level word; (0, "") when it is none.
pub fn severity_of_text(w: &str) -> (i32, String) {
    let n = match w.to_ascii_lowercase().as_str() {
        "trace" | "finest" => 1,
        "debug" | "dbg" | "fine" => 5,
        "info" | "information" | "notice" | "inf" => 9,
        "warn" | "warning" | "wrn" => 13,
        "error" | "err" | "eror" | "severe" => 17,
        "fatal" | "critical" | "crit" | "panic" | "emerg" | "alert" => 21,
        _ => return (0, String::new()),
    };
    (n, w.to_string())
}

fn severity_of_value(v: &Value) -> (i32, String) {
    match v {
        Value::String(s) => {
            let s2 = severity_of_text(s);
            if s2.0 == 0 { (0, s.clone()) } else { s2 }
        }
        // pino / bunyan numeric levels
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            let s = match n {
                ..=10 => (1, "trace"),
                11..=20 => (5, "debug"),
                21..=30 => (9, "info"),
                31..=40 => (13, "warn"),
                41..=50 => (17, "error"),
                _ => (21, "fatal"),
            };
            (s.0, s.1.to_string())
        }
        _ => (0, String::new()),
    }
}

/// An epoch number in seconds, milliseconds, microseconds or nanoseconds (by magnitude), or
/// an RFC 3339 string.
fn time_of_value(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => parse_rfc3339(s).or_else(|| s.parse::<f64>().ok().and_then(epoch)),
        Value::Number(n) => n.as_f64().and_then(epoch),
        _ => None,
    }
}

fn epoch(x: f64) -> Option<u64> {
    if !(x.is_finite() && x > 0.0) {
        return None;
    }
    let ns = if x < 1e11 {
        x * 1e9
    } else if x < 1e14 {
        x * 1e6
    } else if x < 1e17 {
        x * 1e3
    } else {
        x
    };
    // OTLP times are u64, but the collector keeps them as i64 nanoseconds (up to 2262).
    (ns < i64::MAX as f64).then_some(ns as u64)
}

/// `2026-11-28T10:00:00Z`, `…T10:00:00.123456+01:00`, `…T10:00:00,123` (local time is taken as
/// UTC) into Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    // Digits only: no sign, so that `-1` is not an hour.
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = &b[r];
        d.iter().all(u8::is_ascii_digit).then(|| d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac: i64 = 0;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        i += 1;
        let mut scale = 100_000_000;
        while i < b.len() && b[i].is_ascii_digit() {
            frac += i64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset = match b.get(i) {
        None | Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) if b.len() >= i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let o = (oh * 3600 + om * 60) * 1_000_000_000;
            if *sign == b'+' { -o } else { o }
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant's algorithm)
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days.checked_mul(86_400)?.checked_add(h * 3600 + mi * 60 + sec)?;
    let ns = secs.checked_mul(1_000_000_000)?.checked_add(frac)?.checked_add(offset)?;
    u64::try_from(ns).ok()
}

impl Parsed {
    /// The OTLP record, observed at `observed` (Unix ns).
    pub fn into_record(self, observed: u64, file_attrs: &[KeyValue]) -> LogRecord {
        let mut attributes = file_attrs.to_vec();
        attributes.extend(self.attributes);
        LogRecord {
            time_unix_nano: self.time,
            observed_time_unix_nano: observed,
            severity_number: self.severity.0,
            severity_text: self.severity.1,
            body: Some(AnyValue { value: Some(any_value::Value::StringValue(self.body)) }),
            attributes,
            dropped_attributes_count: self.dropped_attributes,
            flags: 0,
            trace_id: self.trace_id,
            span_id: self.span_id,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> LineParser {
        LineParser { trace_regex: None, correlation_fields: ["request_id", "correlation_id", "x-request-id"].map(String::from).to_vec() }
    }

    fn attr<'a>(p: &'a Parsed, k: &str) -> Option<&'a any_value::Value> {
        p.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn json_lines_give_time_level_body_ids_and_attributes() {
        let p = parser().parse(
            br#"{"ts":"2026-11-28T10:00:00.5Z","level":"error","msg":"boom","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","request_id":"r-1","user":7,"ok":true}"#,
        );
        assert_eq!(p.body, "boom");
        assert_eq!(p.severity, (17, "error".into()));
        assert_eq!(p.time, 1_795_860_000_500_000_000);
        assert_eq!(p.trace_id, hex_id::<16>("0af7651916cd43dd8448eb211c80319c").unwrap().to_vec());
        assert_eq!(p.span_id.len(), 8);
        assert_eq!(attr(&p, "correlation_id"), Some(&any_value::Value::StringValue("r-1".into())));
        assert_eq!(attr(&p, "user"), Some(&any_value::Value::IntValue(7)));
        assert_eq!(attr(&p, "ok"), Some(&any_value::Value::BoolValue(true)));
        assert!(attr(&p, "msg").is_none() && attr(&p, "trace_id").is_none());
        // nested and camel-case fields, numeric pino levels, epoch millis
        let p = parser().parse(br#"{"time":1795860000500,"level":50,"message":"x","trace":{"id":"0AF7651916CD43DD8448EB211C80319C"},"spanId":"b7ad6b7169203331"}"#);
        assert_eq!((p.time, p.severity.0, p.trace_id.len(), p.span_id.len()), (1_795_860_000_500_000_000, 17, 16, 8));
        // OpenTelemetry Python logging instrumentation fields
        let p = parser().parse(br#"{"message":"m","otelTraceID":"0af7651916cd43dd8448eb211c80319c","otelSpanID":"b7ad6b7169203331"}"#);
        assert_eq!((p.trace_id.len(), p.span_id.len()), (16, 8));
    }

    #[test]
    fn text_lines_give_level_time_traceparent_and_key_values() {
        let p = parser().parse(b"2026-11-28 10:00:00,250 WARN [main] slow request_id=abc-9 traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(p.severity, (13, "WARN".into()));
        assert_eq!(p.time, 1_795_860_000_250_000_000);
        assert_eq!(p.trace_id, hex_id::<16>("0af7651916cd43dd8448eb211c80319c").unwrap().to_vec());
        assert_eq!(p.span_id, hex_id::<8>("b7ad6b7169203331").unwrap().to_vec());
        assert_eq!(attr(&p, "correlation_id"), Some(&any_value::Value::StringValue("abc-9".into())));
        let p = parser().parse(b"level=info msg=\"done\" trace_id=0af7651916cd43dd8448eb211c80319c x-request-id: q7");
        assert_eq!((p.severity.0, p.trace_id.len()), (9, 16));
        assert_eq!(attr(&p, "correlation_id"), Some(&any_value::Value::StringValue("q7".into())));
        // an all-zero or malformed id is none
        let p = parser().parse(b"trace_id=00000000000000000000000000000000 00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert!(p.trace_id.is_empty());
        // not JSON after all
        let p = parser().parse(b"{not json");
        assert_eq!(p.body, "{not json");
    }

    #[test]
    fn a_configured_regex_finds_ids() {
        let lp = LineParser {
            trace_regex: Some(
                Regex::new(r"tid:(?P<trace_id>[0-9a-f]{32}) sid:(?P<span_id>[0-9a-f]{16}) cid:(?P<correlation_id>\S+)").unwrap(),
            ),
            correlation_fields: vec![],
        };
        let p = lp.parse(b"tid:0af7651916cd43dd8448eb211c80319c sid:b7ad6b7169203331 cid:Z-1 hello");
        assert_eq!((p.trace_id.len(), p.span_id.len()), (16, 8));
        assert_eq!(attr(&p, "correlation_id"), Some(&any_value::Value::StringValue("Z-1".into())));
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00+01:00"), Some(951_865_200_000_000_000));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.000000001Z"), Some(951_868_800_000_000_001));
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("hello"), None);
        // past i64 nanoseconds (2262), and signed fields, are not times
        assert_eq!(parse_rfc3339("2300-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-01-01T-1:00:00Z"), None);
        let p = LineParser { trace_regex: None, correlation_fields: vec![] }.parse(br#"{"msg":"x","ts":10000000000}"#);
        assert_eq!(p.time, 0, "1e10 s is past 2262");
    }
}
