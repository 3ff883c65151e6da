//! Replica lag (`GET /api/v1/replica-lag`): the latest lag, the maximum over a window and a
//! series of per-step maxima for every replica, read from the `metrics` table.
//!
//! Two vocabularies are understood, so that lag reported by a stock OpenTelemetry Collector
//! shows up beside the agent's:
//! - the Skein agent's gauges [`LAG_SECONDS`] and [`LAG_BYTES`], one series per replica with
//!   the attributes `db.system`, `db.replication.primary`, `db.replication.replica` and
//!   `db.replication.state`; a point whose `db.replication.lag.kind` is not `replay` (write or
//!   flush lag) is not *the* lag and is left out. [`UP`] is reported per probe (attributes
//!   `db.system`, `server.address`, `server.port`, `skein.probe.name`, and `error.type` when 0):
//!   a probe that reports 0 after its replicas' latest points makes them `unreachable`, and a
//!   probe that is down with no replica reported in the window is listed itself (its
//!   `server.address:server.port` as the replica) so that a probe that never connected is seen;
//! - the OpenTelemetry Collector contrib receivers' metrics ([`CONTRIB_METRICS`]): PostgreSQL's
//!   `postgresql.replication.data_delay` (bytes), `postgresql.wal.lag` and `postgresql.wal.delay`
//!   (seconds; only `operation` = `replay`), MySQL's `mysql.replica.time_behind_source`
//!   (seconds), and Redis' `redis.replication.offset` / `redis.replication.replica_offset`, whose
//!   difference at the same scrape is the lag in bytes. PostgreSQL's are reported by the primary
//!   and name the replica in `replication_client`; the others by the replica itself, so the
//!   reporting instance (`server.address[:server.port]`, `mysql.instance.endpoint`, else the
//!   node) is the replica and the primary is unknown (`""`).
//!
//! One entry per (system, primary, replica, node that reported it). Its state is, in order:
//! `unreachable` when its probe's latest `up` is 0 and not older than the replica's latest
//! point; `unreachable` when nothing was reported for [`STALE_AFTER_NS`] or three reporting
//! intervals, whichever is longer; the latest `db.replication.state` reported; `streaming`.

use super::signals::check_window;
use super::table::Part;
use super::{Engine, QueryError, datafusion_error};
use arrow::array::{Array, AsArray, MapArray};
use arrow::datatypes::{Float64Type, Int32Type, TimestampNanosecondType, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::prelude::{col, lit};
use serde::Serialize;
use skein_core::ErrorCode;
use std::collections::{BTreeMap, HashSet};

/// The agent's replica lag in seconds (a gauge).
pub const LAG_SECONDS: &str = "db.replication.lag";
/// The agent's replica lag in bytes (a gauge).
pub const LAG_BYTES: &str = "db.replication.lag_bytes";
/// 1 when the agent's probe could read the server's replication status, else 0 (per probe).
pub const UP: &str = "db.replication.up";
/// The OpenTelemetry Collector contrib metrics read as replica lag.
pub const CONTRIB_METRICS: [&str; 6] = [
    "postgresql.replication.data_delay",
    "postgresql.wal.lag",
    "postgresql.wal.delay",
    "mysql.replica.time_behind_source",
    "redis.replication.offset",
    "redis.replication.replica_offset",
];

/// A replica whose latest report is older than this (or three reporting intervals, whichever
/// is longer) is reported `unreachable`.
pub const STALE_AFTER_NS: i64 = 120 * 1_000_000_000;

/// How far apart a Redis offset and replica offset may be and still be paired.
const REDIS_PAIR_NS: i64 = 300 * 1_000_000_000;

/// A replica-lag query: the window `[start_ns, end_ns]` (Unix ns) in buckets of `step_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLagQuery {
    /// Window start (Unix ns).
    pub start_ns: i64,
    /// Window end (Unix ns).
    pub end_ns: i64,
    /// Bucket width of the series (ns).
    pub step_ns: i64,
}

/// One replica's lag over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaLag {
    /// `postgresql`, `mysql`, `redis`, … (`db.system`), or `""` when not reported.
    pub system: String,
    /// The primary it replicates from, `""` when unknown.
    pub primary: String,
    /// The replica.
    pub replica: String,
    /// The node that reported it.
    pub node: String,
    /// The latest lag in seconds, `None` when only bytes are reported.
    pub lag_seconds: Option<f64>,
    /// The latest lag in bytes, `None` when only seconds are reported.
    pub lag_bytes: Option<f64>,
    /// Time of the latest point of this replica (Unix ns).
    pub observed_at: i64,
    /// The largest lag in seconds over the window.
    pub max_lag_seconds: Option<f64>,
    /// The largest lag in bytes over the window.
    pub max_lag_bytes: Option<f64>,
    /// `streaming`, `stopped` or `unreachable`.
    pub state: String,
    /// Why the replica is not streaming (`error.type`), when reported.
    pub error: Option<String>,
    /// `[bucket start, max lag seconds]` for the buckets holding points, oldest first.
    pub series: Vec<(i64, f64)>,
}

/// Which quantity a data point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Seconds,
    Bytes,
    Up,
    RedisOffset,
    RedisReplicaOffset,
}

/// The attributes of one row of a map column.
struct Attrs<'a> {
    map: &'a MapArray,
    row: usize,
}

impl<'a> Attrs<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        let (keys, vals) = (self.map.keys().as_string::<i32>(), self.map.values().as_string::<i32>());
        let offsets = self.map.value_offsets();
        let (s, e) = (offsets[self.row] as usize, offsets[self.row + 1] as usize);
        (s..e).find(|&i| keys.value(i) == key).filter(|&i| vals.is_valid(i)).map(|i| vals.value(i)).filter(|v| !v.is_empty())
    }
}

/// The reporting instance of a resource: `server.address[:server.port]`, else
/// `mysql.instance.endpoint`, else `None` (the node stands in).
fn instance(resource: &[(String, String)]) -> Option<String> {
    let get = |k: &str| resource.iter().find(|(key, v)| key == k && !v.is_empty()).map(|(_, v)| v.as_str());
    if let Some(addr) = get("server.address") {
        return Some(match get("server.port") {
            Some(port) => format!("{addr}:{port}"),
            None => addr.to_string(),
        });
    }
    get("mysql.instance.endpoint").map(str::to_string)
}

/// (system, primary, replica, node).
type Key = (String, String, String, String);

/// The points of one replica, oldest first.
#[derive(Default)]
struct Points {
    seconds: Vec<(i64, f64)>,
    bytes: Vec<(i64, f64)>,
    /// Redis `master_repl_offset` and `slave_repl_offset`.
    offsets: Vec<(i64, f64)>,
    replica_offsets: Vec<(i64, f64)>,
    /// Every point time, for the reporting interval and `observed_at`.
    times: Vec<i64>,
    /// The latest `db.replication.state` reported, and when.
    state: Option<(i64, String)>,
    /// The agent probe that reported it (`skein.probe.name`, `""` without one); `None` for
    /// the contrib names.
    probe: Option<String>,
}

/// (node, system, probe name): an agent probe.
type ProbeKey = (String, String, String);

/// The latest `db.replication.up` of a probe.
struct Probe {
    time: i64,
    up: bool,
    error: Option<String>,
    /// `server.address[:server.port]` of the probed server.
    target: String,
    /// Whether a replica entry took this probe's status.
    matched: bool,
}

/// Classifies a metric: what it measures and under which system it is reported
/// (`None`: from the `db.system` attribute).
fn classify(name: &str) -> Option<(Measure, Option<&'static str>)> {
    Some(match name {
        LAG_SECONDS => (Measure::Seconds, None),
        LAG_BYTES => (Measure::Bytes, None),
        UP => (Measure::Up, None),
        "postgresql.replication.data_delay" => (Measure::Bytes, Some("postgresql")),
        "postgresql.wal.lag" | "postgresql.wal.delay" => (Measure::Seconds, Some("postgresql")),
        "mysql.replica.time_behind_source" => (Measure::Seconds, Some("mysql")),
        "redis.replication.offset" => (Measure::RedisOffset, Some("redis")),
        "redis.replication.replica_offset" => (Measure::RedisReplicaOffset, Some("redis")),
        _ => return None,
    })
}

impl Engine {
    /// The lag of every replica reporting within `q`'s window; `now_ns` is the time the state
    /// is judged at (the end of the window when that is earlier).
    ///
    /// # Errors
    /// `BadRequest` for a non-positive step, an end before the start, or more than
    /// [`super::signals::MAX_BUCKETS`] steps; engine failures.
    pub async fn replica_lag(&self, q: &ReplicaLagQuery, now_ns: i64) -> Result<Vec<ReplicaLag>, QueryError> {
        check_window(q.start_ns, q.end_ns, q.step_ns)?;
        let ctx = self.context(self.store.snapshot(), Part::All).await?;
        let names = [LAG_SECONDS, LAG_BYTES, UP].into_iter().chain(CONTRIB_METRICS).map(lit).collect();
        let ts = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), Some("UTC".into())));
        let batches = ctx
            .table("metrics_raw")
            .await
            .and_then(|df| df.filter(col("name").in_list(names, false)))
            .and_then(|df| df.filter(col("time").gt_eq(ts(q.start_ns)).and(col("time").lt_eq(ts(q.end_ns)))))
            // Newest first under the limit, so a window with more points loses its oldest.
            .and_then(|df| df.sort(vec![col("time").sort(false, true)]))
            .and_then(|df| df.limit(0, Some(super::MAX_SERIES_POINTS)))
            .map_err(datafusion_error)?
            .collect()
            .await
            .map_err(datafusion_error)?;
        let mut replicas: BTreeMap<Key, Points> = BTreeMap::new();
        let mut probes: BTreeMap<ProbeKey, Probe> = BTreeMap::new();
        let mut seen = HashSet::new();
        // Read oldest first (the rows came newest first).
        for b in batches.iter().rev() {
            let c = |name: &str| b.column_by_name(name).ok_or_else(|| QueryError::new(ErrorCode::Internal, format!("no column {name}")));
            let time = c("time")?.as_primitive::<TimestampNanosecondType>();
            let value = c("value")?.as_primitive::<Float64Type>();
            let fps = c("fingerprint")?.as_primitive::<UInt64Type>();
            let name = super::signals::dict(c("name")?)?;
            let node = super::signals::dict(c("node")?)?;
            let attrs = c("attributes")?.as_map();
            let resource = c("resource")?
                .as_dictionary_opt::<Int32Type>()
                .ok_or_else(|| QueryError::new(ErrorCode::Internal, "the resource column is not a dictionary"))?;
            // Each distinct resource of the batch is decoded once.
            let resource_values = resource.values().as_binary::<i32>();
            let instances: Vec<Option<String>> = (0..resource_values.len())
                .map(|i| instance(&skein_columnar::spans::resource_attributes(resource_values.value(i))))
                .collect();
            for r in (0..b.num_rows()).rev() {
                if !value.is_valid(r) || !seen.insert(fps.value(r)) {
                    continue;
                }
                let Some((measure, system)) = name.get(r).and_then(classify) else { continue };
                let a = Attrs { map: attrs, row: r };
                let node = node.get(r).unwrap_or_default();
                let inst = usize::try_from(resource.keys().value(r)).ok().and_then(|k| instances.get(k)).and_then(Option::as_deref);
                let inst = inst.unwrap_or(node);
                let (t, v) = (time.value(r), value.value(r));
                let db_system = a.get("db.system").or_else(|| a.get("db.system.name")).unwrap_or_default();
                let probe_name = a.get("skein.probe.name").unwrap_or_default();
                if measure == Measure::Up {
                    let target = match (a.get("server.address"), a.get("server.port")) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        (Some(h), None) => h.to_string(),
                        _ => inst.to_string(),
                    };
                    let probe = (node.to_string(), db_system.to_string(), probe_name.to_string());
                    let latest = Probe { time: t, up: v > 0.0, error: a.get("error.type").map(str::to_string), target, matched: false };
                    match probes.get_mut(&probe) {
                        Some(p) if p.time > t => {}
                        Some(p) => *p = latest,
                        None => {
                            probes.insert(probe, latest);
                        }
                    }
                    continue;
                }
                let key = match system {
                    None => {
                        // Write and flush lag are not the lag.
                        if a.get("db.replication.lag.kind").is_some_and(|k| k != "replay") {
                            continue;
                        }
                        let primary = a.get("db.replication.primary").unwrap_or_default();
                        let replica = a.get("db.replication.replica").unwrap_or(inst);
                        (db_system.to_string(), primary.to_string(), replica.to_string(), node.to_string())
                    }
                    Some(system) => {
                        if a.get("operation").is_some_and(|o| o != "replay") {
                            continue;
                        }
                        let (primary, replica) = match a.get("replication_client") {
                            Some(client) => (inst, client),
                            None => ("", inst),
                        };
                        (system.to_string(), primary.to_string(), replica.to_string(), node.to_string())
                    }
                };
                let p = replicas.entry(key).or_default();
                match measure {
                    Measure::Seconds => p.seconds.push((t, v)),
                    Measure::Bytes => p.bytes.push((t, v)),
                    Measure::RedisOffset => p.offsets.push((t, v)),
                    Measure::RedisReplicaOffset => p.replica_offsets.push((t, v)),
                    Measure::Up => {}
                }
                if matches!(measure, Measure::Seconds | Measure::Bytes) {
                    p.times.push(t);
                }
                if system.is_none() {
                    p.probe = Some(probe_name.to_string());
                }
                if let Some(state) = a.get("db.replication.state")
                    && p.state.as_ref().is_none_or(|s| t >= s.0)
                {
                    p.state = Some((t, state.to_string()));
                }
            }
        }
        let reference = now_ns.min(q.end_ns);
        let mut out: Vec<ReplicaLag> = replicas
            .into_iter()
            .filter_map(|(key, mut p)| {
                let probe = p.probe.clone().and_then(|name| probes.get_mut(&(key.3.clone(), key.0.clone(), name)));
                p.finish(key, q, reference, probe)
            })
            .collect();
        // A probe that is down and reported no replica in the window: it never connected, or
        // not for a while.
        for ((node, system, _), p) in probes {
            if !p.matched && !p.up {
                out.push(ReplicaLag {
                    system,
                    primary: String::new(),
                    replica: p.target,
                    node,
                    lag_seconds: None,
                    lag_bytes: None,
                    observed_at: p.time,
                    max_lag_seconds: None,
                    max_lag_bytes: None,
                    state: "unreachable".into(),
                    error: p.error,
                    series: Vec::new(),
                });
            }
        }
        out.sort_by(|a, b| (&a.system, &a.primary, &a.replica, &a.node).cmp(&(&b.system, &b.primary, &b.replica, &b.node)));
        Ok(out)
    }
}

impl Points {
    /// The entry of a replica, `None` when it has no lag point (a Redis primary's offsets).
    /// `probe` is the status of the agent probe that reported it; it is marked as matched.
    fn finish(
        &mut self,
        (system, primary, replica, node): Key,
        q: &ReplicaLagQuery,
        reference: i64,
        probe: Option<&mut Probe>,
    ) -> Option<ReplicaLag> {
        self.pair_redis_offsets();
        if self.times.is_empty() {
            return None;
        }
        let observed_at = self.times.iter().copied().max().unwrap_or_default();
        self.times.sort_unstable();
        self.times.dedup();
        let mut gaps: Vec<i64> = self.times.windows(2).map(|w| w[1] - w[0]).collect();
        let interval = if gaps.is_empty() {
            0
        } else {
            let mid = gaps.len() / 2;
            *gaps.select_nth_unstable(mid).1
        };
        let down = probe.and_then(|p| {
            p.matched = true;
            (!p.up && p.time >= observed_at).then(|| p.error.clone())
        });
        let stale = reference - observed_at > STALE_AFTER_NS.max(interval.saturating_mul(3));
        let (state, error) = match (down, &self.state) {
            (Some(error), _) => ("unreachable".to_string(), error),
            _ if stale => ("unreachable".to_string(), None),
            (None, Some((_, state))) => (state.clone(), None),
            (None, None) => ("streaming".to_string(), None),
        };
        let max = |v: &[(i64, f64)]| v.iter().map(|p| p.1).reduce(f64::max);
        let mut series: BTreeMap<i64, f64> = BTreeMap::new();
        for &(t, v) in &self.seconds {
            let bucket = q.start_ns + (t - q.start_ns).div_euclid(q.step_ns) * q.step_ns;
            let e = series.entry(bucket).or_insert(v);
            *e = e.max(v);
        }
        Some(ReplicaLag {
            system,
            primary,
            replica,
            node,
            lag_seconds: self.seconds.last().map(|p| p.1),
            lag_bytes: self.bytes.last().map(|p| p.1),
            observed_at,
            max_lag_seconds: max(&self.seconds),
            max_lag_bytes: max(&self.bytes),
            state,
            error,
            series: series.into_iter().collect(),
        })
    }

    /// Redis lag in bytes: each replica offset paired with the latest offset of the same
    /// instance at or before it (the same scrape), `offset - replica_offset`, never negative.
    fn pair_redis_offsets(&mut self) {
        if self.replica_offsets.is_empty() {
            return;
        }
        let mut i = 0;
        let mut latest: Option<(i64, f64)> = None;
        for &(t, replica) in &self.replica_offsets {
            while i < self.offsets.len() && self.offsets[i].0 <= t {
                latest = Some(self.offsets[i]);
                i += 1;
            }
            if let Some((ot, offset)) = latest
                && t - ot <= REDIS_PAIR_NS
            {
                self.bytes.push((t, (offset - replica).max(0.0)));
                self.times.push(t);
            }
        }
        self.bytes.sort_by_key(|p| p.0);
    }
}
