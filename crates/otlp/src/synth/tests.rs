use super::*;
use crate::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use crate::proto::trace::v1::span::SpanKind;
use crate::proto::trace::v1::status::StatusCode;
use crate::validate::{Limits, validate_traces};
use std::collections::{HashMap, HashSet};

const NOW: u64 = 1_760_000_000_000_000_000;

fn spans(req: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
    req.resource_spans.iter().flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| ss.spans.iter()))
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

/// Every span of every trace in `req`, grouped by trace id.
fn by_trace(req: &ExportTraceServiceRequest) -> HashMap<Vec<u8>, Vec<&Span>> {
    let mut m: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    for s in spans(req) {
        m.entry(s.trace_id.clone()).or_default().push(s);
    }
    m
}

#[test]
fn spans_and_attributes_within_bounds() {
    let mut synth = Synth::new(SynthConfig::default());
    let (req, ids) = synth.batch(300, NOW);
    let traces = by_trace(&req);
    assert_eq!(traces.len(), 300);
    for id in &ids {
        let n = traces[&id.to_vec()].len();
        assert!((10..=40).contains(&n), "trace has {n} spans");
    }
    let counts: HashSet<usize> = traces.values().map(Vec::len).collect();
    assert!(counts.len() > 20, "span counts should vary: {counts:?}");
    for s in spans(&req) {
        assert!((5..=15).contains(&s.attributes.len()), "{} has {} attributes", s.name, s.attributes.len());
    }
    for rs in &req.resource_spans {
        let attrs = &rs.resource.as_ref().expect("resource").attributes;
        for key in ["service.name", "service.version", "host.name", "host.id", "deployment.environment"] {
            assert!(str_attr(attrs, key).is_some(), "resource lacks {key}");
        }
    }
    assert!(
        req.resource_spans.iter().any(|rs| { str_attr(&rs.resource.as_ref().expect("resource").attributes, "k8s.pod.name",).is_some() })
    );
    let mut clean = req.clone();
    let v = validate_traces(&mut clean, &Limits::default());
    assert_eq!((v.rejected, v.attributes_dropped, v.values_truncated), (0, 0, 0));
}

#[test]
fn parents_exist_and_children_nest_in_time() {
    let mut synth = Synth::new(SynthConfig { error_ratio: 0.3, slow_ratio: 0.3, ..Default::default() });
    let (req, _) = synth.batch(200, NOW);
    for (_, trace) in by_trace(&req) {
        let by_id: HashMap<&[u8], &Span> = trace.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
        assert_eq!(by_id.len(), trace.len(), "span ids are unique within a trace");
        let roots: Vec<_> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].kind, SpanKind::Server as i32);
        assert!(roots[0].end_time_unix_nano <= NOW);
        for s in &trace {
            assert!(s.start_time_unix_nano < s.end_time_unix_nano, "{}", s.name);
            if s.parent_span_id.is_empty() {
                continue;
            }
            let p = by_id.get(s.parent_span_id.as_slice()).expect("parent is in the trace");
            assert!(
                p.start_time_unix_nano <= s.start_time_unix_nano && s.end_time_unix_nano <= p.end_time_unix_nano,
                "{} escapes {}",
                s.name,
                p.name
            );
        }
    }
}

#[test]
fn a_trace_spans_the_three_tiers_one_request_per_node() {
    let mut synth = Synth::new(SynthConfig::default());
    for _ in 0..50 {
        let reqs = synth.next_requests(NOW);
        let nodes: Vec<&str> = reqs.iter().map(|(n, _)| n.as_str()).collect();
        assert!(nodes.len() >= 3, "{nodes:?}");
        for tier in ["web-", "api-", "db-"] {
            assert!(nodes.iter().any(|n| n.starts_with(tier)), "no {tier} node in {nodes:?}");
        }
        let mut tids = HashSet::new();
        let mut ids = HashSet::new();
        let mut parents = Vec::new();
        for (node, req) in &reqs {
            for rs in &req.resource_spans {
                let attrs = &rs.resource.as_ref().expect("resource").attributes;
                assert_eq!(str_attr(attrs, "host.name"), Some(node.as_str()));
            }
            for s in spans(req) {
                tids.insert(s.trace_id.clone());
                ids.insert(s.span_id.clone());
                parents.push(s.parent_span_id.clone());
            }
        }
        assert_eq!(tids.len(), 1, "one trace");
        assert!(parents.iter().all(|p| p.is_empty() || ids.contains(p)));
        // Cross-node hops: a SERVER span whose parent is a CLIENT span on another node.
        let db = reqs.iter().find(|(n, _)| n.starts_with("db-")).expect("db node");
        assert!(spans(&db.1).any(|s| s.kind == SpanKind::Server as i32 && s.flags == FLAGS_REMOTE));
    }
}

#[test]
fn deterministic_for_a_seed() {
    let cfg = SynthConfig { seed: 42, ..Default::default() };
    let a = Synth::new(cfg).batch(20, NOW);
    assert_eq!(a, Synth::new(cfg).batch(20, NOW));
    assert_ne!(a.1, Synth::new(SynthConfig { seed: 43, ..cfg }).batch(20, NOW).1);
    let mut x = Synth::new(cfg);
    let mut y = Synth::new(cfg);
    for _ in 0..5 {
        assert_eq!(x.next_requests(NOW), y.next_requests(NOW));
    }
}

#[test]
fn errors_and_slow_traces_follow_the_ratios() {
    let root = |t: &[&Span]| -> (Span, bool) {
        let r = t.iter().find(|s| s.parent_span_id.is_empty()).expect("root");
        let db_err = t.iter().any(|s| {
            str_attr(&s.attributes, "db.system").is_some()
                && s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32)
                && s.events.iter().any(|e| e.name == "exception" && str_attr(&e.attributes, "exception.type").is_some())
        });
        ((*r).clone(), db_err)
    };
    let (req, _) = Synth::new(SynthConfig { error_ratio: 1.0, slow_ratio: 1.0, ..Default::default() }).batch(50, NOW);
    for t in by_trace(&req).values() {
        let (r, db_err) = root(t);
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
        let code = r.attributes.iter().find(|kv| kv.key == "http.response.status_code").and_then(|kv| kv.value.clone());
        assert_eq!(code, Some(AnyValue { value: Some(Value::IntValue(502)) }));
        assert!(db_err, "the failing query carries an exception event");
        let d = r.end_time_unix_nano - r.start_time_unix_nano;
        assert!((1000 * MS..=3000 * MS).contains(&d), "slow trace lasted {d} ns");
    }
    let (req, _) = Synth::new(SynthConfig { error_ratio: 0.0, slow_ratio: 0.0, ..Default::default() }).batch(100, NOW);
    for t in by_trace(&req).values() {
        let (r, db_err) = root(t);
        assert!(r.status.is_none() && !db_err);
        assert!(r.end_time_unix_nano - r.start_time_unix_nano < 500 * MS);
    }
    let (req, _) = Synth::new(SynthConfig { error_ratio: 0.2, ..Default::default() }).batch(1000, NOW);
    let errors = by_trace(&req).values().filter(|t| root(t).0.status.is_some()).count();
    assert!((120..=280).contains(&errors), "{errors} of 1000 traces failed");
}

#[test]
fn small_bounds_are_raised_to_a_three_tier_trace() {
    let (req, _) = Synth::new(SynthConfig { min_spans: 1, max_spans: 2, ..Default::default() }).batch(10, NOW);
    assert!(by_trace(&req).values().all(|t| t.len() == MIN_TRACE_SPANS));
}
