//! Helpers shared by the end-to-end tests: reading OTLP/HTTP answers and picking apart the
//! query API's JSON.

use anyhow::{Context, Result};
use serde_json::Value;
use skein_otlp::{ExportTraceServiceResponse, RpcStatus};
use skein_tests::{Collector, otlp};
use std::collections::{BTreeMap, BTreeSet};

/// An OTLP/HTTP answer: status, headers and the decoded message, whatever the encoding.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Result<Self> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        let body = resp.bytes().await?.to_vec();
        Ok(Self { status, content_type, headers, body })
    }

    fn is_json(&self) -> bool {
        self.content_type.starts_with("application/json")
    }

    /// The `google.rpc.Status` message of a failure (or the raw body if it is not one).
    pub fn message(&self) -> String {
        if self.is_json() {
            if let Ok(v) = serde_json::from_slice::<Value>(&self.body)
                && let Some(m) = v["message"].as_str()
            {
                return m.to_string();
            }
        } else if let Ok(s) = <RpcStatus as prost::Message>::decode(&self.body[..])
            && !s.message.is_empty()
        {
            return s.message;
        }
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `(rejected_spans, error_message)` of a 200 answer's partial success, if set.
    pub fn partial_success(&self) -> Result<Option<(i64, String)>> {
        if self.is_json() {
            let v: Value =
                serde_json::from_slice(&self.body).with_context(|| format!("JSON answer: {}", String::from_utf8_lossy(&self.body)))?;
            let ps = &v["partialSuccess"];
            if ps.is_null() {
                return Ok(None);
            }
            let rejected = match &ps["rejectedSpans"] {
                Value::String(s) => s.parse()?,
                Value::Number(n) => n.as_i64().context("rejectedSpans")?,
                Value::Null => 0,
                other => anyhow::bail!("rejectedSpans is {other}"),
            };
            let msg = ps["errorMessage"].as_str().unwrap_or("").to_string();
            Ok(Some((rejected, msg)))
        } else {
            let r = <ExportTraceServiceResponse as prost::Message>::decode(&self.body[..])?;
            Ok(r.partial_success.map(|p| (p.rejected_spans, p.error_message)))
        }
    }
}

/// Sends a fresh multi-node trace and reads it back: the collector still ingests and answers.
pub async fn assert_still_serving(c: &Collector) {
    let (req, tid) = otlp::sample_trace("alive", 2);
    c.export_http(&req).await.expect("a good request after a bad one is accepted");
    let trace = c.trace(&otlp::hex(&tid)).await.expect("and is queryable at once");
    assert_eq!(trace["span_count"], 4, "{trace}");
    let (status, _) = c.get_json("/api/v1/services").await.expect("services");
    assert_eq!(status, 200);
}

/// A span's id.
pub fn sid(span: &Value) -> String {
    span["span_id"].as_str().unwrap_or_default().to_string()
}

/// A span's parent id; `null`, missing or `""` all mean "no parent".
pub fn parent(span: &Value) -> Option<String> {
    span["parent_span_id"].as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// The native trace's spans by id; panics on a duplicate span id.
pub fn spans_by_id(trace: &Value) -> BTreeMap<String, Value> {
    let spans = trace["spans"].as_array().unwrap_or_else(|| panic!("no spans[]: {trace}"));
    let mut out = BTreeMap::new();
    for s in spans {
        let prev = out.insert(sid(s), s.clone());
        assert!(prev.is_none(), "span {} appears twice: {trace}", sid(s));
    }
    out
}

/// The `root` of a native trace as a span id: the field may be the id or the span object.
pub fn root_id(trace: &Value) -> Option<String> {
    match &trace["root"] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("span_id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A JSON array of strings as a set.
pub fn string_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

/// The single trace of a Jaeger `GET /api/traces/{id}` answer, checking the envelope.
pub async fn jaeger_trace(c: &Collector, tid: &str) -> Value {
    let (status, v) = c.get_json(&format!("/api/traces/{tid}")).await.expect("jaeger trace");
    assert_eq!(status, 200, "{v}");
    for key in ["data", "total", "limit", "offset", "errors"] {
        assert!(v.get(key).is_some(), "Jaeger envelope lacks {key:?}: {v}");
    }
    let data = v["data"].as_array().unwrap_or_else(|| panic!("data: {v}"));
    assert_eq!(data.len(), 1, "one trace expected: {v}");
    data[0].clone()
}

/// A Jaeger span's tag by key.
pub fn jaeger_tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"].as_str() == Some(key))
}

/// Jaeger's span ids in a trace (panics on a duplicate).
pub fn jaeger_span_ids(trace: &Value) -> BTreeSet<String> {
    let spans = trace["spans"].as_array().unwrap_or_else(|| panic!("no spans: {trace}"));
    let mut ids = BTreeSet::new();
    for s in spans {
        let id = s["spanID"].as_str().unwrap_or_default().to_string();
        assert!(ids.insert(id.clone()), "Jaeger span {id} appears twice: {trace}");
    }
    ids
}
