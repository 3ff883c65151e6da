//! Replica lag over a real store: the agent's names and the OpenTelemetry Collector contrib
//! names, state, and the per-step series, with points in a block and in the head and a retried
//! export on both sides of a flush.

use super::replica_lag::{LAG_BYTES, LAG_SECONDS, ReplicaLag, ReplicaLagQuery, UP};
use super::*;
use skein_otlp::ExportMetricsServiceRequest;
use skein_otlp::proto::common::v1::KeyValue;
use skein_otlp::proto::metrics::v1::metric::Data;
use skein_otlp::proto::metrics::v1::number_data_point;
use skein_otlp::synth::signals::{kv, metrics_request};

const T0: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;

/// A gauge of `node` with one point per `(seconds after T0, value)`.
fn gauge(node: &str, name: &str, points: &[(u64, f64)], attrs: &[KeyValue]) -> ExportMetricsServiceRequest {
    let points: Vec<(u64, f64)> = points.iter().map(|&(s, v)| (T0 + s * S, v)).collect();
    metrics_request(node, name, false, &points, attrs)
}

/// `req` with extra resource attributes.
fn with_resource(mut req: ExportMetricsServiceRequest, extra: &[KeyValue]) -> ExportMetricsServiceRequest {
    if let Some(r) = req.resource_metrics[0].resource.as_mut() {
        r.attributes.extend_from_slice(extra);
    }
    req
}

/// `req` with its values as integers (as `postgresql.wal.lag` reports them).
fn as_int(mut req: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    for m in &mut req.resource_metrics[0].scope_metrics[0].metrics {
        if let Some(Data::Gauge(g)) = m.data.as_mut() {
            for p in &mut g.data_points {
                if let Some(number_data_point::Value::AsDouble(v)) = p.value {
                    p.value = Some(number_data_point::Value::AsInt(v as i64));
                }
            }
        }
    }
    req
}

fn skein(replica: &str, extra: &[KeyValue]) -> Vec<KeyValue> {
    let mut a = vec![kv("db.system", "postgresql"), kv("db.replication.primary", "db-1:5432"), kv("db.replication.replica", replica)];
    a.extend_from_slice(extra);
    a
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::tests::open_store(dir.path()).await;
    let streaming = [kv("db.replication.state", "streaming")];
    let lag = gauge("db-2", LAG_SECONDS, &[(0, 0.5), (10, 2.0), (20, 1.0)], &skein("db-2:5432", &streaming));
    store.ingest_metrics(lag.clone()).await.unwrap();
    // write lag is larger, and is not the lag
    store
        .ingest_metrics(gauge("db-2", LAG_SECONDS, &[(10, 9.0), (40, 9.0)], &skein("db-2:5432", &[kv("db.replication.lag.kind", "write")])))
        .await
        .unwrap();
    store.flush_now().await.unwrap();
    // the retry of the first export crosses the flush
    store.ingest_metrics(lag).await.unwrap();
    store.ingest_metrics(gauge("db-2", LAG_SECONDS, &[(30, 4.0), (40, 3.5), (50, 0.0)], &skein("db-2:5432", &streaming))).await.unwrap();
    store
        .ingest_metrics(gauge(
            "db-2",
            LAG_BYTES,
            &[(40, 8192.0), (50, 0.0)],
            &skein("db-2:5432", &[kv("db.replication.lag.kind", "replay")]),
        ))
        .await
        .unwrap();
    // a second replica: streaming, then stopped (MySQL's SQL thread), as the agent reports it
    let mysql = |state: &str| {
        vec![
            kv("db.system", "mysql"),
            kv("db.replication.primary", "my-1:3306"),
            kv("db.replication.replica", "my-2:3306"),
            kv("db.replication.state", state),
        ]
    };
    store.ingest_metrics(gauge("my-2", LAG_SECONDS, &[(0, 1.0), (10, 1.0)], &mysql("streaming"))).await.unwrap();
    store.ingest_metrics(gauge("my-2", LAG_SECONDS, &[(50, 0.0)], &mysql("stopped"))).await.unwrap();
    // the agent's probes report `up` with their own attributes, not the replica's
    let probe = |system: &str, host: &str, error: Option<&str>| {
        let mut a = vec![kv("db.system", system), kv("server.address", host), kv("server.port", "5432")];
        a.extend(error.map(|e| kv("error.type", e)));
        a.extend(error.map(|_| kv("db.replication.state", "unreachable")));
        a
    };
    store.ingest_metrics(gauge("my-2", UP, &[(0, 1.0), (50, 1.0)], &probe("mysql", "localhost", None))).await.unwrap();
    // a third: streaming, then its probe cannot connect any more
    store.ingest_metrics(gauge("db-3", LAG_SECONDS, &[(0, 0.0)], &skein("db-3:5432", &streaming))).await.unwrap();
    store.ingest_metrics(gauge("db-3", UP, &[(0, 1.0)], &probe("postgresql", "localhost", None))).await.unwrap();
    store.ingest_metrics(gauge("db-3", UP, &[(30, 0.0)], &probe("postgresql", "localhost", Some("connection_refused")))).await.unwrap();
    // a probe that never connected is listed by its target; a primary's probe with no replica is not
    store.ingest_metrics(gauge("db-4", UP, &[(20, 0.0)], &probe("postgresql", "db-4", Some("auth")))).await.unwrap();
    store.ingest_metrics(gauge("db-1", UP, &[(20, 1.0)], &probe("postgresql", "db-1", None))).await.unwrap();
    let limits = SqlLimits { timeout: Duration::from_secs(30), memory: 256 << 20, max_rows: 1000 };
    (dir, Engine::new(store, limits))
}

fn find<'a>(all: &'a [ReplicaLag], replica: &str) -> &'a ReplicaLag {
    all.iter().find(|r| r.replica == replica).unwrap_or_else(|| panic!("no replica {replica} in {all:#?}"))
}

fn window(start: u64, end: u64, step: u64) -> ReplicaLagQuery {
    ReplicaLagQuery { start_ns: (T0 + start * S) as i64, end_ns: (T0 + end * S) as i64, step_ns: (step * S) as i64 }
}

#[tokio::test]
async fn the_agents_names_give_latest_max_series_and_state() {
    let (_d, e) = engine().await;
    let q = window(0, 60, 30);
    let all = e.replica_lag(&q, i64::MAX).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.replica.as_str()).collect();
    assert_eq!(names, ["my-2:3306", "db-4:5432", "db-2:5432", "db-3:5432"], "sorted by system, primary (\"\" when unknown), replica");
    let r = find(&all, "db-2:5432");
    assert_eq!((r.system.as_str(), r.primary.as_str(), r.node.as_str()), ("postgresql", "db-1:5432", "db-2"));
    assert_eq!((r.lag_seconds, r.lag_bytes), (Some(0.0), Some(0.0)));
    assert_eq!((r.max_lag_seconds, r.max_lag_bytes), (Some(4.0), Some(8192.0)), "write lag does not count");
    assert_eq!(r.observed_at, (T0 + 50 * S) as i64);
    assert_eq!(r.state, "streaming");
    // max per 30 s bucket: [0, 30) holds 0.5, 2, 1; [30, 60) holds 4, 3.5, 0
    assert_eq!(r.series, vec![((T0) as i64, 2.0), ((T0 + 30 * S) as i64, 4.0)]);
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["series"], serde_json::json!([[T0, 2.0], [T0 + 30 * S, 4.0]]));

    let my = find(&all, "my-2:3306");
    assert_eq!((my.system.as_str(), my.state.as_str(), my.lag_seconds, my.max_lag_seconds), ("mysql", "stopped", Some(0.0), Some(1.0)));
    assert_eq!(my.observed_at, (T0 + 50 * S) as i64);

    let down = find(&all, "db-3:5432");
    assert_eq!((down.state.as_str(), down.error.as_deref()), ("unreachable", Some("connection_refused")), "its probe is down");
    assert_eq!((down.lag_seconds, down.observed_at), (Some(0.0), T0 as i64), "the last lag known is still shown");

    let never = find(&all, "db-4:5432");
    assert_eq!((never.system.as_str(), never.node.as_str(), never.state.as_str()), ("postgresql", "db-4", "unreachable"));
    assert_eq!((never.error.as_deref(), never.lag_seconds, never.observed_at), (Some("auth"), None, (T0 + 20 * S) as i64));

    // a smaller window sees only its points
    let early = e.replica_lag(&window(0, 15, 5), i64::MAX).await.unwrap();
    let r = find(&early, "db-2:5432");
    assert_eq!((r.lag_seconds, r.max_lag_seconds, r.lag_bytes), (Some(2.0), Some(2.0), None));
    assert_eq!(r.series, vec![(T0 as i64, 0.5), ((T0 + 10 * S) as i64, 2.0)]);
    assert_eq!(find(&early, "db-3:5432").state, "streaming", "its probe was still up at 15 s");
}

#[tokio::test]
async fn a_replica_not_heard_from_for_a_while_is_unreachable() {
    let (_d, e) = engine().await;
    // reported every 10 s: stale after max(3 x 10 s, 2 min) = 2 min of silence
    let at = |secs: u64| (T0 + secs * S) as i64;
    let r = e.replica_lag(&window(0, 3600, 60), at(50 + 119)).await.unwrap();
    assert_eq!(find(&r, "db-2:5432").state, "streaming");
    let r = e.replica_lag(&window(0, 3600, 60), at(50 + 121)).await.unwrap();
    assert_eq!(find(&r, "db-2:5432").state, "unreachable");
    assert_eq!(find(&r, "my-2:3306").state, "unreachable", "a stale explicit state is not believed");
    // judged at the end of the window when that is earlier than now
    let r = e.replica_lag(&window(0, 60, 60), at(100_000)).await.unwrap();
    assert_eq!(find(&r, "db-2:5432").state, "streaming");
}

#[tokio::test]
async fn opentelemetry_collector_contrib_names_are_understood() {
    let dir = tempfile::tempdir().unwrap();
    let store = super::tests::open_store(dir.path()).await;
    // PostgreSQL, from the primary's pg_stat_replication: one series per replication client
    let client = |c: &str, op: Option<&str>| {
        let mut a = vec![kv("replication_client", c)];
        a.extend(op.map(|o| kv("operation", o)));
        a
    };
    let pg = [kv("server.address", "pg-1"), kv("server.port", "5432")];
    for req in [
        gauge("otelcol", "postgresql.replication.data_delay", &[(0, 100.0), (10, 4096.0)], &client("10.0.0.7", None)),
        as_int(gauge("otelcol", "postgresql.wal.lag", &[(0, 1.0), (10, 3.0)], &client("10.0.0.7", Some("replay")))),
        as_int(gauge("otelcol", "postgresql.wal.lag", &[(10, 30.0)], &client("10.0.0.7", Some("flush")))),
        gauge("otelcol", "postgresql.wal.delay", &[(20, 0.25)], &client("10.0.0.8", None)),
    ] {
        store.ingest_metrics(with_resource(req, &pg)).await.unwrap();
    }
    // MySQL, from the replica
    let my = [kv("mysql.instance.endpoint", "my-2:3306")];
    store.ingest_metrics(with_resource(gauge("otelcol", "mysql.replica.time_behind_source", &[(5, 7.0)], &[]), &my)).await.unwrap();
    // Redis: a replica's offsets at the same scrape; a primary reports only its own offset
    let redis = [kv("server.address", "redis-2"), kv("server.port", "6379")];
    for (name, points) in
        [("redis.replication.offset", [(0, 1000.0), (10, 5000.0)]), ("redis.replication.replica_offset", [(0, 1000.0), (10, 4400.0)])]
    {
        store.ingest_metrics(with_resource(gauge("otelcol", name, &points, &[]), &redis)).await.unwrap();
    }
    let primary = [kv("server.address", "redis-1"), kv("server.port", "6379")];
    store.ingest_metrics(with_resource(gauge("otelcol", "redis.replication.offset", &[(10, 5000.0)], &[]), &primary)).await.unwrap();
    let limits = SqlLimits { timeout: Duration::from_secs(30), memory: 256 << 20, max_rows: 1000 };
    let e = Engine::new(store, limits);

    let all = e.replica_lag(&window(0, 60, 60), i64::MAX).await.unwrap();
    let names: Vec<(&str, &str, &str)> = all.iter().map(|r| (r.system.as_str(), r.primary.as_str(), r.replica.as_str())).collect();
    assert_eq!(
        names,
        [
            ("mysql", "", "my-2:3306"),
            ("postgresql", "pg-1:5432", "10.0.0.7"),
            ("postgresql", "pg-1:5432", "10.0.0.8"),
            ("redis", "", "redis-2:6379")
        ]
    );
    let pg7 = find(&all, "10.0.0.7");
    assert_eq!((pg7.lag_seconds, pg7.max_lag_seconds), (Some(3.0), Some(3.0)), "flush lag is not the lag");
    assert_eq!(pg7.lag_bytes, Some(4096.0));
    assert_eq!((pg7.node.as_str(), pg7.state.as_str()), ("otelcol", "streaming"));
    assert_eq!(find(&all, "10.0.0.8").lag_seconds, Some(0.25), "wal.delay without operation counts");
    assert_eq!(find(&all, "my-2:3306").lag_seconds, Some(7.0));
    let redis = find(&all, "redis-2:6379");
    assert_eq!((redis.lag_seconds, redis.lag_bytes, redis.max_lag_bytes), (None, Some(600.0), Some(600.0)));
    assert!(redis.series.is_empty());
    assert_eq!(redis.observed_at, (T0 + 10 * S) as i64);
}

#[tokio::test]
async fn bad_windows_are_refused_with_the_reason() {
    let (_d, e) = engine().await;
    for (q, want) in [
        (window(0, 60, 0), "step must be positive"),
        (window(60, 0, 10), "end not before start"),
        (ReplicaLagQuery { start_ns: 0, end_ns: (3600 * S) as i64, step_ns: 1_000_000 }, "at most 11000"),
    ] {
        let err = e.replica_lag(&q, i64::MAX).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains(want), "{}", err.message);
    }
    assert!(e.replica_lag(&window(100_000, 100_060, 60), i64::MAX).await.unwrap().is_empty());
}
