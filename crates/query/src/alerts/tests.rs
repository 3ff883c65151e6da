//! Rule validation, and the evaluator's transitions over a real store with an injected "now".

use super::*;
use crate::engine::SqlLimits;
use crate::engine::replica_lag::LAG_SECONDS;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use skein_otlp::synth::signals::{kv, metrics_request};
use std::sync::Arc;
use std::time::Duration as StdDuration;

const T0: i64 = 1_700_000_000_000_000_000;
const S: i64 = 1_000_000_000;

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Wrap {
    alerts: AlertsConfig,
}

fn load(toml: &str) -> Result<Vec<Rule>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let w: Wrap = skein_core::config::load(Some(&path), Vec::new(), "SKEIN_TEST_", &[]).map_err(|e| e.to_string())?;
    w.alerts.validate()
}

#[test]
fn rules_load_with_their_defaults() {
    let rules = load(
        r#"
[alerts]
interval = "10s"
webhook = { url = "http://alerts.example:9000/hook", timeout = "2s" }

[[alerts.rules]]
name = "replica behind"
kind = "replica_lag"
above_seconds = 30
for = "1m"

[[alerts.rules]]
name = "checkout errors"
kind = "error_rate"
service = "checkout"
above_percent = 5.5

[[alerts.rules]]
name = "cart slow"
kind = "latency_p99"
service = "checkout"
operation = "GET /cart"
above = "500ms"
window = "10m"
for = "2m"

[[alerts.rules]]
name = "silent"
kind = "node_silent"
"#,
    )
    .unwrap();
    assert_eq!(rules.len(), 4);
    assert_eq!((rules[0].hold_ns, &rules[0].check), (60 * S, &Check::ReplicaLag { above_seconds: 30.0 }));
    assert_eq!(rules[1].check, Check::ErrorRate { service: "checkout".into(), above_percent: 5.5, window_ns: 300 * S });
    assert_eq!(rules[1].hold_ns, 0);
    assert_eq!(
        rules[2].check,
        Check::LatencyP99 { service: "checkout".into(), operation: Some("GET /cart".into()), above_ns: S / 2, window_ns: 600 * S }
    );
    assert_eq!(rules[3].check, Check::NodeSilent { node: None, after_ns: 120 * S });
    // the default round-trips through TOML
    let text = toml::to_string(&Wrap::default()).unwrap();
    assert_eq!(toml::from_str::<Wrap>(&text).unwrap(), Wrap::default());
}

#[test]
fn bad_rules_are_named_with_the_field() {
    let rule = |body: &str| load(&format!("[[alerts.rules]]\n{body}\n")).unwrap_err();
    for (body, want) in [
        ("kind = \"replica_lag\"\nabove_seconds = 1", "alerts.rules[0]: name is required"),
        ("name = \"a\"", "alerts.rules[0] (\"a\"): kind is required: expected one of replica_lag, error_rate, latency_p99, node_silent"),
        ("name = \"a\"\nkind = \"cpu\"", "kind = \"cpu\" is unknown"),
        ("name = \"lag\"\nkind = \"replica_lag\"", "alerts.rules[0] (\"lag\"): kind replica_lag needs above_seconds"),
        ("name = \"lag\"\nkind = \"replica_lag\"\nabove_seconds = -1", "above_seconds = -1: expected a number of seconds"),
        ("name = \"lag\"\nkind = \"replica_lag\"\nabove_seconds = 1\nservice = \"x\"", "service does not apply to kind replica_lag"),
        ("name = \"e\"\nkind = \"error_rate\"\nabove_percent = 5", "(\"e\"): kind error_rate needs service"),
        ("name = \"e\"\nkind = \"error_rate\"\nservice = \"s\"\nabove_percent = 150", "above_percent = 150: expected a percentage"),
        (
            "name = \"e\"\nkind = \"error_rate\"\nservice = \"s\"\nabove_percent = 5\nwindow = \"0s\"",
            "window = \"0s\": expected a positive",
        ),
        ("name = \"p\"\nkind = \"latency_p99\"\nservice = \"s\"", "kind latency_p99 needs above"),
        ("name = \"n\"\nkind = \"node_silent\"\nfor = \"1m\"", "for does not apply to kind node_silent (it takes node, after)"),
        ("name = \"n\"\nkind = \"node_silent\"\nnode = \"\"", "node is empty"),
        ("name = \"n\"\nkind = \"node_silent\"\nafter = \"soon\"", "invalid duration \"soon\""),
        ("name = \"n\"\nkind = \"node_silent\"\nthreshold = 1", "threshold"),
    ] {
        let e = rule(body);
        assert!(e.contains(want), "{body:?}: {e}");
    }
    let dup = load("[[alerts.rules]]\nname = \"n\"\nkind = \"node_silent\"\n[[alerts.rules]]\nname = \"n\"\nkind = \"node_silent\"\n")
        .unwrap_err();
    assert!(dup.contains("alerts.rules[1] (\"n\"): name \"n\" is used by an earlier rule"), "{dup}");
    let url = load("[alerts]\nwebhook = { url = \"ftp://x\" }\n").unwrap_err();
    assert!(url.contains("alerts.webhook.url = \"ftp://x\": expected an http:// or https:// URL"), "{url}");
    let interval = load("[alerts]\ninterval = \"0s\"\n").unwrap_err();
    assert!(interval.contains("alerts.interval"), "{interval}");
}

async fn store() -> (tempfile::TempDir, Arc<skein_storage::Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::engine::tests::open_store(dir.path()).await;
    (dir, store)
}

fn engine(store: Arc<skein_storage::Store>) -> Engine {
    Engine::new(store, SqlLimits { timeout: StdDuration::from_secs(30), memory: 256 << 20, max_rows: 1000 })
}

fn rules(toml: &str) -> Evaluator {
    Evaluator::new(load(toml).unwrap())
}

#[tokio::test]
async fn replica_lag_is_pending_then_fires_after_for_then_resolves() {
    let (_d, store) = store().await;
    let attrs = [kv("db.system", "postgresql"), kv("db.replication.primary", "db-1"), kv("db.replication.replica", "db-2")];
    let points: Vec<(u64, f64)> = [(0, 10.0), (20, 12.0), (40, 1.0)].iter().map(|&(s, v)| ((T0 + s * S) as u64, v)).collect();
    store.ingest_metrics(metrics_request("db-2", LAG_SECONDS, false, &points, &attrs)).await.unwrap();
    let e = engine(store);
    let ev = rules("[[alerts.rules]]\nname = \"lag\"\nkind = \"replica_lag\"\nabove_seconds = 5\nfor = \"30s\"\n");
    // points later than "now" are not seen yet
    assert!(ev.evaluate(&e, T0 + S).await.is_empty(), "pending, not firing");
    assert!(ev.evaluate(&e, T0 + 21 * S).await.is_empty(), "held for 20 s of 30");
    assert!(ev.alerts().is_empty(), "pending alerts are not listed");
    let fired = ev.evaluate(&e, T0 + 35 * S).await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    let a = &fired[0];
    assert_eq!(
        (a.rule.as_str(), a.kind, a.state, a.since, a.value, a.threshold),
        ("lag", "replica_lag", AlertState::Firing, T0 + 35 * S, Some(12.0), 5.0)
    );
    assert_eq!((a.labels["replica"].as_str(), a.labels["node"].as_str()), ("db-2", "db-2"));
    assert!(!a.labels.contains_key("primary"), "the primary is in the message, not the labels: {:?}", a.labels);
    assert!(a.message.contains("postgresql replica db-2 of db-1") && a.message.contains("12.0s"), "{}", a.message);
    assert!(ev.evaluate(&e, T0 + 36 * S).await.is_empty(), "still firing: no new transition");
    let mut m = String::new();
    ev.render_metrics(&mut m);
    assert!(m.contains("skein_alerts_firing{rule=\"lag\",kind=\"replica_lag\"} 1"), "{m}");
    let resolved = ev.evaluate(&e, T0 + 41 * S).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!((resolved[0].state, resolved[0].since, resolved[0].resolved_at), (AlertState::Resolved, T0 + 35 * S, Some(T0 + 41 * S)));
    let listed = serde_json::to_value(ev.alerts()).unwrap();
    assert_eq!(listed[0]["state"], "resolved");
    assert_eq!(listed[0]["resolved_at"], T0 + 41 * S);
    assert_eq!(listed[0]["value"], 12.0);
    // resolved alerts are kept for a day
    assert!(ev.evaluate(&e, T0 + 41 * S + RESOLVED_RETENTION_NS + S).await.is_empty());
    assert!(ev.alerts().is_empty());
}

#[tokio::test]
async fn a_firing_replica_alert_stands_while_its_replica_is_unreachable() {
    let (_d, store) = store().await;
    let attrs = [kv("db.system", "postgresql"), kv("db.replication.replica", "db-2")];
    store.ingest_metrics(metrics_request("db-2", LAG_SECONDS, false, &[(T0 as u64, 12.0)], &attrs)).await.unwrap();
    let e = engine(store);
    let ev = rules("[[alerts.rules]]\nname = \"lag\"\nkind = \"replica_lag\"\nabove_seconds = 5\n");
    assert_eq!(ev.evaluate(&e, T0 + S).await.len(), 1, "fires at once (for = 0s)");
    // Nothing reported for 3 minutes: the replica is unreachable, its lag unknown; the alert
    // neither resolves nor fires again.
    assert!(ev.evaluate(&e, T0 + 180 * S).await.is_empty());
    let listed = ev.alerts();
    assert_eq!((listed.len(), listed[0].state, listed[0].since), (1, AlertState::Firing, T0 + S), "{listed:?}");
}

/// SERVER spans of `service` on `node`, starting `start` ns after T0 one second apart, one per
/// `(operation, duration ms, error)`, plus one failing CLIENT span that must not count.
fn spans(node: &str, service: &str, start: i64, requests: &[(&str, u64, bool)]) -> ExportTraceServiceRequest {
    let mut out: Vec<Span> = requests
        .iter()
        .enumerate()
        .map(|(i, &(op, ms, error))| {
            let t = (T0 + start + i as i64 * S) as u64;
            Span {
                trace_id: vec![i as u8 + 1; 16],
                span_id: vec![i as u8 + 1; 8],
                name: op.into(),
                kind: 2,
                start_time_unix_nano: t,
                end_time_unix_nano: t + ms * 1_000_000,
                status: error.then(|| Status { code: 2, message: "boom".into() }),
                ..Default::default()
            }
        })
        .collect();
    let t = (T0 + start) as u64;
    out.push(Span {
        trace_id: vec![200; 16],
        span_id: vec![200; 8],
        name: "SELECT".into(),
        kind: 3,
        start_time_unix_nano: t,
        end_time_unix_nano: t + 9_000_000_000,
        status: Some(Status { code: 2, message: "db down".into() }),
        ..Default::default()
    });
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", service), kv("host.name", node)], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans: out, ..Default::default() }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn error_rate_latency_and_silent_nodes_fire_from_spans_and_node_times() {
    let (_d, store) = store().await;
    // 10 requests in the first 10 s: 3 failed; 9 fast ones and one of 2 s
    let mut reqs: Vec<(&str, u64, bool)> = (0..9).map(|i| ("GET /fast", 100, i < 3)).collect();
    reqs.push(("GET /slow", 2000, false));
    store.ingest_traces(spans("web-1", "checkout", 0, &reqs)).await.unwrap();
    store.flush_now().await.unwrap();
    // a second node, heard from later
    store.ingest_traces(spans("web-2", "search", 200 * S, &[("GET /q", 10, false)])).await.unwrap();
    let e = engine(store);
    let ev = rules(
        r#"
[[alerts.rules]]
name = "errors"
kind = "error_rate"
service = "checkout"
above_percent = 20
window = "1m"

[[alerts.rules]]
name = "few errors"
kind = "error_rate"
service = "checkout"
above_percent = 30

[[alerts.rules]]
name = "p99"
kind = "latency_p99"
service = "checkout"
above = "500ms"
window = "1m"

[[alerts.rules]]
name = "fast p99"
kind = "latency_p99"
service = "checkout"
operation = "GET /fast"
above = "500ms"

[[alerts.rules]]
name = "silent"
kind = "node_silent"
after = "2m"

[[alerts.rules]]
name = "ghost"
kind = "node_silent"
node = "web-9"
"#,
    );
    let fired = ev.evaluate(&e, T0 + 30 * S).await;
    let names: Vec<&str> = fired.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(names, ["errors", "p99", "ghost"], "{fired:#?}");
    assert_eq!(fired[0].value, Some(30.0), "3 of 10 server spans failed; the client span does not count");
    assert_eq!(fired[0].labels, Labels::from([("service".to_string(), "checkout".to_string())]));
    assert_eq!(fired[0].unit, "%");
    let p99 = fired[1].value.unwrap();
    assert!(p99 > 1.5 && p99 < 2.0, "interpolated p99 of nine 100 ms and one 2 s request: {p99}");
    assert!(fired[1].message.contains("above 500ms"), "{}", fired[1].message);
    assert_eq!((fired[2].value, fired[2].message.as_str()), (None, "node web-9 has never sent data"));

    // later: web-1 has been silent for over 2 minutes, web-2 not; the checkout window is empty
    let later = ev.evaluate(&e, T0 + 250 * S).await;
    let got: Vec<(&str, AlertState, Option<&str>)> =
        later.iter().map(|a| (a.rule.as_str(), a.state, a.labels.get("node").map(String::as_str))).collect();
    assert_eq!(
        got,
        [("errors", AlertState::Resolved, None), ("p99", AlertState::Resolved, None), ("silent", AlertState::Firing, Some("web-1"))]
    );
    assert!(later[2].message.contains("web-1 has sent nothing for 4m 1"), "{}", later[2].message);
    // firing first, then the most recently resolved
    let listed: Vec<(String, AlertState)> = ev.alerts().into_iter().map(|a| (a.rule, a.state)).collect();
    assert_eq!(listed[..2], [("silent".to_string(), AlertState::Firing), ("ghost".to_string(), AlertState::Firing)]);
    assert_eq!(listed.len(), 4);
    assert!(listed[2..].iter().all(|(_, s)| *s == AlertState::Resolved));
}
