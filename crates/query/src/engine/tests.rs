//! SQL over a real store: heads and blocks together, read-only enforcement, errors.

use super::*;
use serde_json::Value;
use skein_core::query::SearchParams;
use skein_otlp::ExportTraceServiceRequest;
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

/// Trace `t`: a frontend server span on node web-`t` calling an api span on node api-1.
fn trace(t: u8, error: bool) -> ExportTraceServiceRequest {
    let now = 1_700_000_000_000_000_000u64 + u64::from(t) * 1_000_000;
    let rs = |service: &str, node: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv("service.name", any_value::Value::StringValue(service.into())),
                kv("host.name", any_value::Value::StringValue(node.into())),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    };
    let root = Span {
        trace_id: vec![t; 16],
        span_id: vec![1; 8],
        name: "GET /cart".into(),
        kind: 2,
        start_time_unix_nano: now,
        end_time_unix_nano: now + 10_000_000,
        attributes: vec![
            kv("http.route", any_value::Value::StringValue("/cart".into())),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
        ],
        ..Default::default()
    };
    let child = Span {
        trace_id: vec![t; 16],
        span_id: vec![2; 8],
        parent_span_id: vec![1; 8],
        name: "SELECT cart".into(),
        kind: 3,
        start_time_unix_nano: now + 1_000_000,
        end_time_unix_nano: now + 1_000_000 + u64::from(t) * 100_000,
        status: error.then(|| Status { code: 2, message: "boom".into() }),
        ..Default::default()
    };
    ExportTraceServiceRequest { resource_spans: vec![rs("frontend", &format!("web-{t}"), vec![root]), rs("api", "api-1", vec![child])] }
}

pub(crate) async fn open_store(dir: &std::path::Path) -> Arc<Store> {
    let cfg = skein_storage::StoreConfig {
        memory_limit: 1 << 30,
        limits: skein_otlp::Limits::default(),
        wal: skein_wal::WalOptions::default(),
        max_inflight_bytes: 64 << 20,
        storage: skein_storage::StorageConfig::default(),
    };
    Store::open(dir, cfg).await.unwrap().0
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // half the traces in a block, half in the head
    for t in 1..=10u8 {
        store.ingest_traces(trace(t, t % 5 == 0)).await.unwrap();
        if t == 5 {
            store.flush_now().await.unwrap();
        }
    }
    assert_eq!(store.snapshot().blocks.len(), 1);
    let limits = SqlLimits { timeout: Duration::from_secs(30), memory: 256 << 20, max_rows: 1000 };
    (dir, Engine::new(store, limits))
}

async fn rows(e: &Engine, q: &str) -> Vec<Value> {
    let a = e.sql(q).await.unwrap_or_else(|err| panic!("{q}: {err}"));
    to_json(&a)["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_over_head_and_blocks() {
    let (_dir, e) = engine().await;
    let r = rows(&e, "SELECT service_name, status_code, count(*) AS n FROM spans GROUP BY 1, 2 ORDER BY 1, 2").await;
    assert_eq!(r, vec![serde_json::json!(["api", 0, 8]), serde_json::json!(["api", 2, 2]), serde_json::json!(["frontend", 0, 10])]);

    let r = rows(&e, "SELECT name, approx_percentile_cont(duration_ns, 0.99) AS p99 FROM spans GROUP BY name ORDER BY name").await;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0][0], "GET /cart");
    assert_eq!(r[0][1].as_f64(), Some(10_000_000.0));
    let r = rows(&e, "SELECT approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) FROM spans WHERE service_name = 'api'").await;
    assert!(r[0][0].as_f64().unwrap() >= 500_000.0, "{r:?}");

    // parent and child on different nodes: a self-join
    let r = rows(
        &e,
        "SELECT p.node, c.node, count(*) FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
         WHERE p.node <> c.node GROUP BY 1, 2 ORDER BY 1 LIMIT 3",
    )
    .await;
    assert_eq!(r[0], serde_json::json!(["web-1", "api-1", 1]));

    // attribute maps, typed values as display strings, resource attributes, ids in hex
    let r = rows(
        &e,
        "SELECT trace_id, span_id, attributes['http.route'], attributes['http.response.status_code'], resource_attributes['host.name'] \
         FROM spans WHERE attributes['http.route'] = '/cart' AND node = 'web-7'",
    )
    .await;
    assert_eq!(r, vec![serde_json::json!(["07070707070707070707070707070707", "0101010101010101", "/cart", "200", "web-7"])]);
    let r = rows(&e, "SELECT count(*) FROM spans WHERE trace_id = X'03030303030303030303030303030303'").await;
    assert_eq!(r[0][0], 2);
    let r = rows(&e, "SELECT start_time, end_time FROM spans WHERE span_id = X'0101010101010101' ORDER BY start_time LIMIT 1").await;
    assert_eq!(r[0], serde_json::json!([1_700_000_000_001_000_000i64, 1_700_000_000_011_000_000i64]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_statements_and_errors_say_what_is_wrong() {
    let (_dir, e) = engine().await;
    for (q, want) in [
        ("CREATE TABLE t AS SELECT 1", "read-only: DDL"),
        ("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'", "read-only: DDL"),
        ("DROP VIEW spans", "read-only: DDL"),
        ("INSERT INTO spans_raw SELECT * FROM spans_raw", "read-only: DML"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "read-only: DML"),
        ("SET datafusion.execution.batch_size = 1", "read-only: this statement"),
        ("SELECT * FROM '/etc/passwd'", "file and URL tables are not available"),
        ("SELECT * FROM read_parquet('/tmp/x.parquet')", "file and URL tables are not available"),
        ("SELECT * FROM generate_series(1, 1000000000000)", "file and URL tables are not available"),
        ("SELECT nosuch FROM spans", "nosuch"),
        ("SELECT count(*) FROM spans WHERE name = = 'x'", "found: = at Line: 1, Column: 41"),
        ("SELECT count(*)\nFROM spans WHERE", "end of the statement (line 2, column 17)"),
        ("SELEC 1", "SELEC"),
    ] {
        let err = e.sql(q).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{q}: {err}");
        assert!(err.message.contains(want), "{q}: {}", err.message);
    }
    let err = e.sql("SELECT nosuch FROM spans").await.unwrap_err();
    assert!(err.message.contains("line 1, column 8"), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    let (dir, e) = engine().await;
    let small = Engine::new(Arc::clone(&e.store), SqlLimits { max_rows: 3, ..e.limits });
    let a = small.sql("SELECT span_id FROM spans").await.unwrap();
    let j = to_json(&a);
    assert_eq!(j["rows"].as_array().unwrap().len(), 3);
    assert_eq!(j["truncated"], true);
    let tiny = Engine::new(Arc::clone(&e.store), SqlLimits { memory: 1024, ..e.limits });
    let err = tiny.sql("SELECT trace_id, span_id, name FROM spans ORDER BY name, span_id").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ResourceExhausted, "{err}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reads_blocks_with_the_span_level_filters() {
    let (_dir, e) = engine().await;
    let snap = e.store.snapshot();
    let ids = |v: Vec<([u8; 16], i64)>| v.into_iter().map(|(t, _)| t[0]).collect::<Vec<_>>();
    let q = |f: &dyn Fn(&mut SearchParams)| {
        let mut p = SearchParams { limit: 20, ..Default::default() };
        f(&mut p);
        p
    };
    // traces 1..=5 are in the block; the api span of trace t lasts t × 100 µs
    let r = e
        .search_blocks(
            snap.clone(),
            &q(&|p| {
                p.service = Some("api".into());
                p.min_duration_ns = Some(300_000);
            }),
        )
        .await
        .unwrap();
    assert_eq!(ids(r), vec![5, 4, 3]);
    // one span must match every filter: the frontend span has the route but not the error
    let r = e
        .search_blocks(snap.clone(), &q(&|p| p.attributes = vec![("http.route".into(), "/cart".into()), ("error".into(), "true".into())]))
        .await
        .unwrap();
    assert!(r.is_empty(), "{r:?}");
    let r = e.search_blocks(snap.clone(), &q(&|p| p.attributes = vec![("error".into(), "true".into())])).await.unwrap();
    assert_eq!(ids(r), vec![5]);
    let r = e.search_blocks(snap.clone(), &q(&|p| p.attributes = vec![("host.name".into(), "web-2".into())])).await.unwrap();
    assert_eq!(ids(r), vec![2]);
    let r = e
        .search_blocks(
            snap,
            &q(&|p| {
                p.limit = 2;
                p.start_ns = Some(1_700_000_000_002_000_000);
            }),
        )
        .await
        .unwrap();
    assert_eq!(ids(r), vec![5, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reads_blocks_newest_first_and_stops_when_older_ones_cannot_matter() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // three blocks of four traces each, later traces starting later: blocks cover successive
    // time ranges, as when flushed one after the other
    for t in 1..=12u8 {
        store.ingest_traces(trace(t, false)).await.unwrap();
        if t % 4 == 0 {
            store.flush_now().await.unwrap();
        }
    }
    let blocks = store.snapshot().blocks;
    assert_eq!(blocks.len(), 3);
    let e = Engine::new(Arc::clone(&store), SqlLimits { timeout: Duration::from_secs(30), memory: 256 << 20, max_rows: 1000 });
    let search = |limit: usize| {
        let e = &e;
        async move {
            let q = SearchParams { service: Some("frontend".into()), limit, ..Default::default() };
            e.search_blocks(e.store.snapshot(), &q).await.map(|v| v.into_iter().map(|(t, _)| t[0]).collect::<Vec<_>>())
        }
    };
    assert_eq!(search(6).await.unwrap(), vec![12, 11, 10, 9, 8, 7]);
    assert_eq!(search(100).await.unwrap(), (1..=12).rev().collect::<Vec<u8>>());
    // Remove the two older blocks' files: a search the newest block answers never opens them,
    // one that needs more than it holds does (and fails, which shows it tried).
    for b in &blocks[..2] {
        std::fs::remove_file(dir.path().join(&b.meta.path)).unwrap();
    }
    assert_eq!(search(3).await.unwrap(), vec![12, 11, 10]);
    assert!(search(5).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_time_is_start_plus_duration_in_head_and_blocks_alike() {
    let (_dir, e) = engine().await;
    // blocks do not store end_time; the view computes it, with the same type as the head's
    let r = rows(
        &e,
        "SELECT count(*), sum(CASE WHEN arrow_cast(end_time, 'Int64') - arrow_cast(start_time, 'Int64') = duration_ns THEN 1 ELSE 0 END), \
         min(arrow_typeof(end_time)) FROM spans",
    )
    .await;
    assert_eq!(r[0][0], 20, "{r:?}");
    assert_eq!(r[0][1], 20, "{r:?}");
    assert!(r[0][2].as_str().unwrap_or("").contains("UTC"), "{r:?}");
    // the values the spans were sent with: the root of trace t ends 10 ms after it starts
    // (traces 1-5 are in a block, 6-10 in the head)
    let r = rows(&e, "SELECT arrow_cast(end_time, 'Int64') FROM spans WHERE name = 'GET /cart' ORDER BY start_time").await;
    let want: Vec<Value> = (1..=10u64).map(|t| serde_json::json!(1_700_000_000_000_000_000u64 + t * 1_000_000 + 10_000_000)).collect();
    assert_eq!(r.into_iter().map(|row| row[0].clone()).collect::<Vec<_>>(), want);
    // and filters on it work
    let r = rows(&e, "SELECT count(*) FROM spans WHERE end_time > start_time").await;
    assert_eq!(r[0][0], 20, "{r:?}");
    let cols =
        rows(&e, "SELECT column_name FROM information_schema.columns WHERE table_name = 'spans_raw' AND column_name = 'end_time'").await;
    assert!(cols.is_empty(), "spans_raw is the stored table, without end_time: {cols:?}");
}

/// Parents and attributes read from a block by SQL are the ones sent, also where a trace's
/// rows straddle two of the scan's batches (over 10,000 spans: more than one 8,192-row batch),
/// and filters on the columns a block stores differently (`parent_span_id`, `attributes`) are
/// not used to prune it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_and_attributes_from_a_block_are_the_ones_sent() {
    use skein_otlp::synth::{Synth, SynthConfig};
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut synth = Synth::new(SynthConfig::default());
    let (mut want, mut roots, mut postgres) = (BTreeSet::new(), 0, 0);
    // (key, display value of its first entry) -> spans, for the attribute filters below.
    let mut values: std::collections::HashMap<(String, String), usize> = std::collections::HashMap::new();
    while want.len() < 10_500 {
        let (r, _) = synth.batch(20, now);
        for s in r.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            let mut seen = BTreeSet::new();
            for a in &s.attributes {
                if seen.insert(a.key.clone()) {
                    let mut text = Vec::new();
                    skein_columnar::value::render(a.value.as_ref(), &mut text);
                    *values.entry((a.key.clone(), String::from_utf8(text).unwrap())).or_default() += 1;
                }
            }
            let parent = (!s.parent_span_id.is_empty()).then(|| hex_of(&s.parent_span_id));
            roots += usize::from(parent.is_none());
            let db = s.attributes.iter().any(|a| {
                a.key == "db.system"
                    && a.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&any_value::Value::StringValue("postgresql".into()))
            });
            postgres += usize::from(db);
            want.insert((hex_of(&s.span_id), parent));
        }
        store.ingest_traces(r).await.unwrap();
    }
    // A few spans with the status code as a string: too few for a column of their own, so in
    // the block's residual map beside the int column of everyone else's.
    let odd: Vec<Span> = (1..=5u8)
        .map(|i| Span {
            trace_id: vec![0xEE; 16],
            span_id: vec![i; 8],
            name: "odd".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1000,
            attributes: vec![kv("http.response.status_code", any_value::Value::StringValue("200".into()))],
            ..Default::default()
        })
        .collect();
    for s in &odd {
        want.insert((hex_of(&s.span_id), None));
    }
    roots += odd.len();
    *values.entry(("http.response.status_code".into(), "200".into())).or_default() += odd.len();
    store
        .ingest_traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: odd, ..Default::default() }],
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    store.flush_now().await.unwrap();
    assert!(store.snapshot().head.is_empty());
    let limits = SqlLimits { timeout: Duration::from_secs(60), memory: 256 << 20, max_rows: 100_000 };
    let e = Engine::new(store, limits);
    let got: BTreeSet<(String, Option<String>)> = rows(&e, "SELECT span_id, parent_span_id FROM spans")
        .await
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().map(str::to_string)))
        .collect();
    assert_eq!(got, want);
    let r = rows(&e, "SELECT count(*) FROM spans WHERE parent_span_id IS NULL").await;
    assert_eq!(r[0][0], roots);
    let r = rows(&e, "SELECT count(*) FROM spans WHERE attributes['db.system'] = 'postgresql'").await;
    assert_eq!(r[0][0], postgres);
    // Filters on attributes of every type (checked on the block's columns before the maps
    // are rebuilt), alone and combined, give the counts of the spans sent.
    let n = |k: &str, v: &str| values.get(&(k.to_string(), v.to_string())).copied().unwrap_or(0);
    for (k, v) in [
        ("http.response.status_code", "200"),
        ("app.cache.hit", "true"),
        ("db.operation", "UPDATE"),
        ("db.system", "postgresql"),
        ("http.request.method", "POST"),
        ("app.order.total", "12.5"),
        ("db.postgresql.plan.total_cost", "0.1"),
        ("no.such.key", "x"),
    ] {
        let r = rows(&e, &format!("SELECT count(*) FROM spans WHERE attributes['{k}'] = '{v}'")).await;
        assert_eq!(r[0][0], n(k, v), "{k} = {v}");
    }
    assert!(n("http.response.status_code", "200") > 100 && n("app.cache.hit", "true") > 100);
    let r =
        rows(&e, "SELECT count(*) FROM spans WHERE attributes['db.operation'] = 'UPDATE' OR attributes['app.cache.hit'] = 'true'").await;
    assert_eq!(r[0][0], n("db.operation", "UPDATE") + n("app.cache.hit", "true"));
    let r = rows(&e, "SELECT count(*) FROM spans WHERE attributes['http.response.status_code'] = '200' AND kind = 2 AND duration_ns >= 0")
        .await;
    let servers = rows(&e, "SELECT count(*) FROM spans WHERE attributes['http.response.status_code'] = '200' AND kind <> 2").await;
    assert_eq!(r[0][0].as_u64().unwrap() + servers[0][0].as_u64().unwrap(), n("http.response.status_code", "200") as u64);
    // A parent/child join within the block: every child finds its parent.
    let r = rows(&e, "SELECT count(*) FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id").await;
    assert_eq!(r[0][0], want.len() - roots);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
