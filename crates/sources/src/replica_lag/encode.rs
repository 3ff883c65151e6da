//! Turning one check's result into OTLP: the gauges of the module doc and the probe's log
//! records. Pure functions, tested without a server.

use super::{Error, Failure, ProbeConfig, Status};
use skein_otlp::proto::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use skein_otlp::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use skein_otlp::proto::metrics::v1::{Metric, NumberDataPoint, number_data_point};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::synth::signals::kv;
use skein_otlp::{ExportLogsServiceRequest, ExportMetricsServiceRequest};

fn point(now: u64, value: number_data_point::Value, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint { time_unix_nano: now, value: Some(value), attributes, ..Default::default() }
}

fn gauge(name: &str, unit: &str, description: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric { description: description.into(), ..crate::otlp_build::gauge(name, unit, data_points) }
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(any_value::Value::IntValue(v)) }), ..Default::default() }
}

fn scope() -> InstrumentationScope {
    crate::otlp_build::scope("replica_lag")
}

/// Attributes of the probe itself (the `db.replication.up` point and the log records).
fn probe_attrs(cfg: &ProbeConfig, host: &str, port: u16) -> Vec<KeyValue> {
    // Always named (the configured name, else `system:host:port`), so that the collector can
    // tell two unnamed probes on one node apart.
    vec![
        kv("db.system", cfg.system.as_str()),
        kv("server.address", host),
        kv_int("server.port", i64::from(port)),
        kv("skein.probe.name", &cfg.label()),
    ]
}

/// The metrics of one check (see the module doc for names and attributes).
pub fn encode_metrics(cfg: &ProbeConfig, host: &str, port: u16, res: &Result<Status, Error>, now: u64) -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let mut up_attrs = probe_attrs(cfg, host, port);
    let mut metrics = Vec::new();
    match res {
        Ok(status) => {
            up_attrs.push(kv("db.replication.role", status.role.as_str()));
            let (mut lag, mut bytes, mut wal) = (Vec::new(), Vec::new(), Vec::new());
            for o in &status.observations {
                let mut a = vec![kv("db.system", cfg.system.as_str())];
                if let Some(p) = &o.primary {
                    a.push(kv("db.replication.primary", p));
                }
                a.push(kv("db.replication.replica", &o.replica));
                a.push(kv("db.replication.state", o.state.as_str()));
                a.push(kv("skein.probe.name", &cfg.label()));
                if let Some(s) = o.lag_seconds {
                    lag.push(point(now, AsDouble(s), a.clone()));
                }
                if let Some(b) = o.lag_bytes {
                    bytes.push(point(now, AsInt(i64::try_from(b).unwrap_or(i64::MAX)), a.clone()));
                }
                if let Some(w) = o.wal_lag {
                    for (kind, v) in ["write", "flush", "replay"].into_iter().zip(w) {
                        let mut a = a.clone();
                        a.push(kv("db.replication.lag.kind", kind));
                        wal.push(point(now, AsDouble(v), a));
                    }
                }
            }
            if !lag.is_empty() {
                metrics.push(gauge("db.replication.lag", "s", "How far the replica's applied data is behind its primary.", lag));
            }
            if !bytes.is_empty() {
                metrics.push(gauge(
                    "db.replication.lag_bytes",
                    "By",
                    "Bytes of the primary's changes the replica has not applied yet.",
                    bytes,
                ));
            }
            if !wal.is_empty() {
                metrics.push(gauge("db.replication.wal_lag", "s", "PostgreSQL write, flush and replay lag of each replica.", wal));
            }
            metrics.push(gauge(
                "db.replication.up",
                "1",
                "1 when the probe read the server's replication status.",
                vec![point(now, AsInt(1), up_attrs)],
            ));
        }
        Err(e) => {
            up_attrs.push(kv("db.replication.state", "unreachable"));
            up_attrs.push(kv("error.type", e.kind()));
            up_attrs.push(kv("error.message", &e.to_string()));
            if let Error::Probe { failure: Failure::Role { actual, .. }, .. } = e {
                up_attrs.push(kv("db.replication.role", actual));
            }
            metrics.push(gauge(
                "db.replication.up",
                "1",
                "1 when the probe read the server's replication status.",
                vec![point(now, AsInt(0), up_attrs)],
            ));
        }
    }
    crate::otlp_build::metrics_request(Resource::default(), "replica_lag", metrics)
}

/// A log record about a probe (a failure or a recovery).
pub fn encode_log(
    cfg: &ProbeConfig,
    host: &str,
    port: u16,
    severity: SeverityNumber,
    message: &str,
    error_type: Option<&str>,
    now: u64,
) -> ExportLogsServiceRequest {
    let mut attributes = probe_attrs(cfg, host, port);
    if let Some(t) = error_type {
        attributes.push(kv("error.type", t));
    }
    let text = match severity {
        SeverityNumber::Warn => "WARN",
        SeverityNumber::Error => "ERROR",
        _ => "INFO",
    };
    let record = LogRecord {
        time_unix_nano: now,
        observed_time_unix_nano: now,
        severity_number: severity as i32,
        severity_text: text.into(),
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(message.into())) }),
        attributes,
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource::default()),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: vec![record], ..Default::default() }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica_lag::{Observation, ServerRole, State, System};
    use skein_otlp::proto::metrics::v1::metric::Data;

    fn values(req: &ExportMetricsServiceRequest, name: &str) -> Vec<(f64, Vec<(String, String)>)> {
        let m = req.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name);
        let Some(Metric { data: Some(Data::Gauge(g)), .. }) = m else { return vec![] };
        g.data_points
            .iter()
            .map(|p| {
                let v = match p.value {
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    None => f64::NAN,
                };
                let attrs = p
                    .attributes
                    .iter()
                    .map(|a| {
                        let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            Some(any_value::Value::IntValue(i)) => i.to_string(),
                            _ => String::new(),
                        };
                        (a.key.clone(), v)
                    })
                    .collect();
                (v, attrs)
            })
            .collect()
    }

    fn attr<'a>(attrs: &'a [(String, String)], k: &str) -> Option<&'a str> {
        attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn observations_become_gauges_with_their_attributes() {
        let mut cfg = ProbeConfig::new(System::Postgresql, "host=db port=5432");
        cfg.name = Some("orders".into());
        let status = Status {
            role: ServerRole::Primary,
            observations: vec![
                Observation {
                    primary: Some("db:5432".into()),
                    replica: "walreceiver/10.0.0.2".into(),
                    state: State::Streaming,
                    lag_seconds: Some(0.25),
                    lag_bytes: Some(4096),
                    wal_lag: Some([0.1, 0.2, 0.25]),
                },
                Observation {
                    primary: None,
                    replica: "r2".into(),
                    state: State::Stopped,
                    lag_seconds: None,
                    lag_bytes: Some(0),
                    wal_lag: None,
                },
            ],
        };
        let req = encode_metrics(&cfg, "db", 5432, &Ok(status), 7);
        let lag = values(&req, "db.replication.lag");
        assert_eq!(lag.len(), 1, "no lag point where the server could not tell");
        assert_eq!(lag[0].0, 0.25);
        for (k, v) in [
            ("db.system", "postgresql"),
            ("db.replication.primary", "db:5432"),
            ("db.replication.replica", "walreceiver/10.0.0.2"),
            ("db.replication.state", "streaming"),
            ("skein.probe.name", "orders"),
        ] {
            assert_eq!(attr(&lag[0].1, k), Some(v), "{k}");
        }
        assert_eq!(attr(&lag[0].1, "db.replication.lag.kind"), None);
        let bytes = values(&req, "db.replication.lag_bytes");
        assert_eq!(bytes.iter().map(|b| b.0).collect::<Vec<_>>(), vec![4096.0, 0.0]);
        assert_eq!(attr(&bytes[1].1, "db.replication.state"), Some("stopped"));
        let wal = values(&req, "db.replication.wal_lag");
        assert_eq!(
            wal.iter().map(|w| (w.0, attr(&w.1, "db.replication.lag.kind").unwrap())).collect::<Vec<_>>(),
            vec![(0.1, "write"), (0.2, "flush"), (0.25, "replay")]
        );
        let up = values(&req, "db.replication.up");
        assert_eq!(up[0].0, 1.0);
        assert_eq!(attr(&up[0].1, "db.replication.role"), Some("primary"));
        assert_eq!(attr(&up[0].1, "server.port"), Some("5432"));
        let mut req = req;
        let v = skein_otlp::validate_metrics(&mut req, &skein_otlp::Limits::default());
        assert_eq!(v.rejected, 0, "{}", v.message());
    }

    #[test]
    fn a_failure_is_a_down_point_and_a_warn_log() {
        let cfg = ProbeConfig::new(System::Redis, "redis://db:6379");
        let err = Error::Probe {
            probe: cfg.label(),
            system: "redis",
            addr: "db:6379".into(),
            failure: Failure::Connect("connection refused".into()),
        };
        let msg = err.to_string();
        assert_eq!(msg, "replica_lag probe redis:db:6379 (redis at db:6379): cannot connect: connection refused");
        let req = encode_metrics(&cfg, "db", 6379, &Err(err), 7);
        assert_eq!(req.resource_metrics[0].scope_metrics[0].metrics.len(), 1);
        let up = values(&req, "db.replication.up");
        assert_eq!(up[0].0, 0.0);
        assert_eq!(attr(&up[0].1, "db.replication.state"), Some("unreachable"));
        assert_eq!(attr(&up[0].1, "error.type"), Some("connect"));
        assert_eq!(attr(&up[0].1, "error.message"), Some(msg.as_str()));
        let mut log = encode_log(&cfg, "db", 6379, SeverityNumber::Warn, &msg, Some("connect"), 7);
        let r = &log.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!((r.severity_number, r.severity_text.as_str()), (SeverityNumber::Warn as i32, "WARN"));
        let v = skein_otlp::validate_logs(&mut log, &skein_otlp::Limits::default());
        assert_eq!(v.rejected, 0, "{}", v.message());
    }
}
