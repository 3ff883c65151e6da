//! The `replica_lag` source: probes PostgreSQL, MySQL/MariaDB and Redis servers on an interval
//! and reports how far each replica is behind its primary, as OTLP gauges.
//!
//! Each [`ProbeConfig`] names one server. A [`Probe`] keeps one connection to it, reconnects
//! after any error, and bounds every attempt (connect and queries together) by the probe's
//! `timeout`. [`run`] (or [`spawn`], which hands the exports to an [`OtlpIngest`]) drives one
//! tokio task per probe; a probe that fails never stops the others or the agent, it reports
//! itself down and tries again at its next tick.
//!
//! # Metrics
//! One point per replica, every interval:
//!
//! | metric | unit | value |
//! | --- | --- | --- |
//! | `db.replication.lag` | `s` | how far the replica's applied data is behind the primary (f64); **the** lag, never carries `db.replication.lag.kind` |
//! | `db.replication.lag_bytes` | `By` | bytes the replica has not applied yet (int) |
//! | `db.replication.wal_lag` | `s` | PostgreSQL primaries only: `write_lag`, `flush_lag` and `replay_lag` of `pg_stat_replication`, one point each, attribute `db.replication.lag.kind` = `write` \| `flush` \| `replay` |
//!
//! Attributes: `db.system` (`postgresql`, `mysql`, `redis`), `db.replication.primary`,
//! `db.replication.replica`, `db.replication.state` (`streaming` or `stopped`) and
//! `skein.probe.name` when the probe has a name. A point the server cannot give (MySQL's
//! `Seconds_Behind_Source` is NULL, a PostgreSQL replica that has replayed nothing yet) is left
//! out rather than reported as 0; the other points of that replica still carry its state.
//!
//! And one point per probe: `db.replication.up` (int, 1 when the probe read the server's
//! replication status, 0 when it could not), with `db.system`, `server.address`,
//! `server.port`, `skein.probe.name`, `db.replication.role` (`primary` or `replica`, when
//! known) and, when down, `db.replication.state` = `unreachable`, `error.type` (`connect`,
//! `auth`, `query`, `timeout`, `protocol`, `role`, `unsupported`) and `error.message`. A
//! failure is also sent as a WARN log record when it starts, when its message changes and
//! every [`ERROR_LOG_EVERY`] while it lasts; the recovery is an INFO record.
//!
//! # What each system reports
//! - **PostgreSQL replica** (`pg_is_in_recovery()`): lag is 0 while
//!   `pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()` and the WAL receiver is streaming,
//!   otherwise `now() - pg_last_xact_replay_timestamp()` (which keeps growing while the primary
//!   is idle, so it is an upper bound when the receiver is down); bytes are
//!   `pg_wal_lsn_diff(receive, replay)`, WAL received but not replayed. The primary is
//!   `pg_stat_wal_receiver.sender_host:sender_port`, the replica the probed address. State is
//!   `stopped` when replay is paused or no WAL receiver is streaming.
//! - **PostgreSQL primary**: one replica per row of `pg_stat_replication` (base backups are
//!   skipped), named `application_name/client_addr`; lag is `replay_lag`, bytes
//!   `pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)`. The lag intervals are NULL while a
//!   replica is idle and caught up, reported as 0. PostgreSQL updates them only when the replica
//!   reports progress, so a replica whose replay is paused shows a frozen `replay_lag` while its
//!   bytes grow. State is `streaming` for `streaming` and `catchup`, else `stopped`. The probe's
//!   user needs `pg_monitor` to see these columns; without it the probe fails with that hint.
//! - **MySQL/MariaDB replica**: one replica per row of `SHOW REPLICA STATUS` (falling back to
//!   `SHOW SLAVE STATUS`): lag is `Seconds_Behind_Source` (`Seconds_Behind_Master`), bytes are
//!   `Read_Source_Log_Pos - Exec_Source_Log_Pos` when both positions are in the same binary log
//!   file (relay backlog; left out otherwise). State is `streaming` when both the IO and SQL
//!   threads run. The probe's user needs `REPLICATION CLIENT` (MySQL) or `SLAVE MONITOR`
//!   (MariaDB 10.5+). A MySQL primary does not know its replicas' lag: probing one reports only
//!   `db.replication.up` with role `primary`. The client speaks the protocol itself
//!   (`mysql_native_password`, and `caching_sha2_password` when the server has the user's
//!   password cached; a full `caching_sha2_password` exchange needs TLS and fails with a clear
//!   message).
//! - **Redis primary** (`INFO replication`, `role:master`): one replica per `slaveN` line, named
//!   `ip:port`; bytes are `master_repl_offset - offset`, lag is the line's `lag`, the seconds
//!   since that replica last acknowledged (replicas acknowledge every second). State is
//!   `streaming` for `state=online`, else `stopped` (including a full sync in progress).
//! - **Redis replica** (`role:slave`): a replica cannot know its primary's offset, so its own
//!   view is weaker: lag is `master_last_io_seconds_ago` while the link is up (seconds since it
//!   last heard from the primary; an idle, healthy pair reads between 0 and the primary's
//!   `repl-ping-replica-period`, 10 s by default) and `master_link_down_since_seconds` while it
//!   is down; bytes are `slave_read_repl_offset - slave_repl_offset` (Redis 7+: read from the
//!   primary but not applied yet). Probe the primary for the precise figures. State is
//!   `streaming` when `master_link_status:up` and no sync is in progress.
//!
//! Names are what each server says: a primary probed as `localhost:6379` reports a replica at
//! `127.0.0.1:6380`, while that replica reports its primary as its `master_host`.
//!
//! # Configuration
//! ```toml
//! [[replica_lag.probes]]
//! name = "orders"                 # optional, becomes skein.probe.name
//! system = "postgresql"           # postgresql | mysql | redis
//! dsn = "host=10.0.0.5 port=5432 user=skein dbname=postgres"  # or postgres://user@host:5432/db
//! interval = "10s"
//! role = "auto"                   # auto | primary | replica: a mismatch is reported as an error
//! timeout = "5s"                  # connect and queries of one check, together
//! ```

mod config;
mod encode;
mod mysql;
mod postgres;
mod redis;

pub use config::{ProbeConfig, ReplicaLagConfig, Role, System, redact_dsn};
pub use encode::{encode_log, encode_metrics};

use config::{UrlParts, address_of, host_port, parse_url};
use skein_core::Duration;
use skein_otlp::proto::logs::v1::SeverityNumber;
use skein_server::{Export, OtlpIngest};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// While a probe keeps failing with the same message, its WARN log record is repeated this often.
pub const ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Largest reply a probe reads from Redis or MySQL; a bigger one is a protocol error.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// What a server said it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Accepts writes; its replicas are listed.
    Primary,
    /// Follows a primary.
    Replica,
}

impl ServerRole {
    /// The `db.replication.role` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

/// Errors of the `replica_lag` source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A probe's configuration is invalid (found before anything runs).
    #[error("invalid replica_lag probe {probe}: {field} = {value:?}: {expected}")]
    Config {
        /// The probe's label.
        probe: String,
        /// The offending key.
        field: &'static str,
        /// Its value (passwords masked).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A check of a running probe failed; the probe tries again at its next tick.
    #[error("replica_lag probe {probe} ({system} at {addr}): {failure}")]
    Probe {
        /// The probe's label.
        probe: String,
        /// `postgresql`, `mysql` or `redis`.
        system: &'static str,
        /// The probed `host:port`.
        addr: String,
        /// What failed.
        failure: Failure,
    },
}

impl Error {
    /// The `error.type` attribute: `config` or the failure's [`Failure::kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::Probe { failure, .. } => failure.kind(),
        }
    }
}

/// What went wrong during one check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The TCP connection or the protocol's start-up failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server refused the credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server answered a query with an error.
    #[error("{query} failed: {message}")]
    Query {
        /// The query or command.
        query: &'static str,
        /// The server's message.
        message: String,
    },
    /// The check took longer than the probe's timeout.
    #[error("no answer within the timeout of {after} (while waiting for {stage})")]
    Timeout {
        /// The probe's timeout.
        after: Duration,
        /// What was being waited for.
        stage: &'static str,
    },
    /// The server's reply could not be understood.
    #[error("unexpected reply to {query}: {message}")]
    Protocol {
        /// The query or command.
        query: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The server's role is not the configured one.
    #[error("role = {configured:?} is configured but the server is a {actual}")]
    Role {
        /// The configured role.
        configured: Role,
        /// What the server said.
        actual: &'static str,
    },
    /// The server needs something this probe does not do.
    #[error("{0}")]
    Unsupported(String),
}

impl Failure {
    /// The `error.type` attribute.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Auth(_) => "auth",
            Self::Query { .. } => "query",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
            Self::Role { .. } => "role",
            Self::Unsupported(_) => "unsupported",
        }
    }

    fn io(query: &'static str, e: &std::io::Error) -> Self {
        Self::Connect(format!("{query}: {e}"))
    }
}

/// Whether a replica is applying its primary's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Receiving and applying.
    Streaming,
    /// Not receiving or not applying (paused, a thread stopped, the link down, a full sync).
    Stopped,
}

impl State {
    /// The `db.replication.state` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Stopped => "stopped",
        }
    }
}

/// One replica as a probe saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The primary, as the server names it (unknown on a replica whose receiver is down).
    pub primary: Option<String>,
    /// The replica, as the server names it.
    pub replica: String,
    /// Streaming or stopped.
    pub state: State,
    /// `db.replication.lag`, when the server can tell.
    pub lag_seconds: Option<f64>,
    /// `db.replication.lag_bytes`, when the server can tell.
    pub lag_bytes: Option<u64>,
    /// PostgreSQL primaries: write, flush and replay lag in seconds.
    pub wal_lag: Option<[f64; 3]>,
}

/// The result of one successful check.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// What the server is.
    pub role: ServerRole,
    /// Its replicas (a primary) or itself (a replica).
    pub observations: Vec<Observation>,
}

/// The open connection of a probe, one kind per system.
enum Conn {
    // boxed: libpq's parsed configuration is several times the size of the others
    Postgres(Box<postgres::Pg>),
    Redis(redis::Redis),
    Mysql(mysql::Mysql),
}

/// One server's probe: its configuration, its connection and what it last reported.
pub struct Probe {
    cfg: ProbeConfig,
    label: String,
    host: String,
    port: u16,
    conn: Conn,
    /// The last failure's message and when it was last logged.
    failing: Option<(String, Instant)>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Probe {
    /// Checks `cfg` and prepares its probe; nothing is connected until [`Probe::check`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: a DSN that does not parse, a zero interval or timeout.
    pub fn new(cfg: ProbeConfig) -> Result<Self, Error> {
        let label = cfg.label();
        let bad = |field: &'static str, value: String, expected: String| Error::Config { probe: label.clone(), field, value, expected };
        if cfg.interval.0.is_zero() {
            return Err(bad("interval", cfg.interval.to_string(), "a duration above zero, e.g. \"10s\"".into()));
        }
        if cfg.timeout.0.is_zero() {
            return Err(bad("timeout", cfg.timeout.to_string(), "a duration above zero, e.g. \"5s\"".into()));
        }
        if cfg.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(bad("name", String::new(), "a non-empty label, or no name key".into()));
        }
        let example = match cfg.system {
            System::Postgresql => "\"host=127.0.0.1 port=5432 user=skein dbname=postgres\" or \"postgres://skein@127.0.0.1:5432/postgres\"",
            System::Mysql => "\"mysql://user:password@127.0.0.1:3306\"",
            System::Redis => "\"redis://:password@127.0.0.1:6379\"",
        };
        let dsn_error = |why: String| bad("dsn", redact_dsn(&cfg.dsn), format!("{why}; expected e.g. {example}"));
        let (host, port) = address_of(&cfg).map_err(dsn_error)?;
        let conn = match cfg.system {
            System::Postgresql => Conn::Postgres(Box::new(postgres::Pg::new(&cfg.dsn, cfg.timeout.0).map_err(dsn_error)?)),
            System::Redis => {
                let u = parse_url(&cfg.dsn, &["redis"], 6379).map_err(dsn_error)?;
                Conn::Redis(redis::Redis::new(u))
            }
            System::Mysql => {
                let u = parse_url(&cfg.dsn, &["mysql", "mariadb"], 3306).map_err(dsn_error)?;
                if u.user.is_none() {
                    return Err(dsn_error("the URL names no user".into()));
                }
                Conn::Mysql(mysql::Mysql::new(u))
            }
        };
        Ok(Self { cfg, label, host, port, conn, failing: None })
    }

    /// The probe's name, or `system:host:port`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The probe's configuration.
    pub fn config(&self) -> &ProbeConfig {
        &self.cfg
    }

    /// Connects if needed and reads the server's replication status, within the probe's timeout.
    /// After a failure the connection is dropped, and the next check opens a new one.
    ///
    /// # Errors
    /// [`Error::Probe`] saying what failed: connecting, authenticating, a query, the timeout,
    /// an unexpected reply, or a server whose role is not the configured one.
    pub async fn check(&mut self) -> Result<Status, Error> {
        let addr = host_port(&self.host, self.port);
        let timeout = self.cfg.timeout;
        // The check borrows the connection; its stage is read once the timed-out future is gone.
        macro_rules! bounded {
            ($c:expr) => {{
                let r = tokio::time::timeout(timeout.0, $c.check()).await;
                r.unwrap_or_else(|_| Err(Failure::Timeout { after: timeout, stage: $c.stage }))
            }};
        }
        let res = match &mut self.conn {
            Conn::Postgres(c) => bounded!(c),
            Conn::Redis(c) => bounded!(c),
            Conn::Mysql(c) => bounded!(c),
        };
        let res = res.and_then(|status| match (self.cfg.role, status.role) {
            (Role::Primary, ServerRole::Replica) | (Role::Replica, ServerRole::Primary) => {
                Err(Failure::Role { configured: self.cfg.role, actual: status.role.as_str() })
            }
            _ => Ok(status),
        });
        res.map_err(|failure| {
            match &mut self.conn {
                Conn::Postgres(c) => c.reset(),
                Conn::Redis(c) => c.reset(),
                Conn::Mysql(c) => c.reset(),
            }
            Error::Probe { probe: self.label.clone(), system: self.cfg.system.as_str(), addr, failure }
        })
    }

    /// One check turned into exports: the metrics always, and a log record when a failure
    /// starts, changes, repeats past [`ERROR_LOG_EVERY`] or ends. `now_unix_nano` stamps them.
    pub async fn scrape(&mut self, now_unix_nano: u64) -> Vec<Export> {
        let res = self.check().await;
        let mut out = vec![Export::Metrics(encode_metrics(&self.cfg, &self.host, self.port, &res, now_unix_nano))];
        match &res {
            Err(e) => {
                let msg = e.to_string();
                let due = match &self.failing {
                    Some((last, at)) => *last != msg || at.elapsed() >= ERROR_LOG_EVERY,
                    None => true,
                };
                if due {
                    tracing::warn!(probe = %self.label, error.type = e.kind(), error = %msg, "replica lag probe failed; retrying every interval");
                    out.push(Export::Logs(encode_log(
                        &self.cfg,
                        &self.host,
                        self.port,
                        SeverityNumber::Warn,
                        &msg,
                        Some(e.kind()),
                        now_unix_nano,
                    )));
                    self.failing = Some((msg, Instant::now()));
                }
            }
            Ok(_) => {
                if self.failing.take().is_some() {
                    let msg = format!(
                        "replica_lag probe {} ({} at {}): reachable again",
                        self.label,
                        self.cfg.system.as_str(),
                        host_port(&self.host, self.port)
                    );
                    tracing::info!(probe = %self.label, "replica lag probe recovered");
                    out.push(Export::Logs(encode_log(&self.cfg, &self.host, self.port, SeverityNumber::Info, &msg, None, now_unix_nano)));
                }
            }
        }
        out
    }
}

/// Checks every probe's configuration, then starts one task per probe that checks its server
/// every `interval` (the first check at once) and hands each export to `sink`. The returned
/// task ends once every probe task has seen `stop` become true (or its sender dropped); a
/// check in progress is abandoned then.
///
/// Must be called within a tokio runtime.
///
/// # Errors
/// [`Error::Config`] for the first invalid probe, or two probes with the same name; nothing
/// is started then.
pub fn run<F, Fut>(probes: &[ProbeConfig], sink: F, stop: watch::Receiver<bool>) -> Result<JoinHandle<()>, Error>
where
    F: Fn(Export) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let built = build(probes)?;
    let tasks: Vec<JoinHandle<()>> = built.into_iter().map(|p| tokio::spawn(probe_loop(p, sink.clone(), stop.clone()))).collect();
    Ok(tokio::spawn(async move {
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a replica lag probe task died");
            }
        }
    }))
}

/// The probes of `probes`, checked: each valid, no two with the same name.
///
/// # Errors
/// [`Error::Config`] for the first invalid probe or repeated name.
pub fn build(probes: &[ProbeConfig]) -> Result<Vec<Probe>, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut built = Vec::with_capacity(probes.len());
    for cfg in probes {
        if let Some(n) = &cfg.name
            && !seen.insert(n.clone())
        {
            return Err(Error::Config { probe: n.clone(), field: "name", value: n.clone(), expected: "a name no other probe has".into() });
        }
        built.push(Probe::new(cfg.clone())?);
    }
    Ok(built)
}

/// [`run`] with the exports handed to `ingest` (the agent's queue); a refused export is
/// logged and dropped, and the probe carries on.
///
/// # Errors
/// As [`run`].
pub fn spawn<I: OtlpIngest + ?Sized>(probes: &[ProbeConfig], ingest: Arc<I>, stop: watch::Receiver<bool>) -> Result<JoinHandle<()>, Error> {
    let sink = move |export: Export| {
        let ingest = Arc::clone(&ingest);
        async move {
            match ingest.export(export).await {
                Ok(o) if o.rejected > 0 => {
                    tracing::warn!(rejected = o.rejected, reason = %o.message, "replica lag points were partly rejected")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "queueing replica lag metrics failed"),
            }
        }
    };
    run(probes, sink, stop)
}

async fn probe_loop<F, Fut>(mut probe: Probe, sink: F, mut stop: watch::Receiver<bool>)
where
    F: Fn(Export) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(probe.cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::debug!(probe = %probe.label, "replica lag probe started");
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|v| *v) => break,
            _ = tick.tick() => {}
        }
        let exports = tokio::select! {
            biased;
            _ = stop.wait_for(|v| *v) => break,
            e = probe.scrape(crate::otlp_build::now_unix_ns()) => e,
        };
        for e in exports {
            sink(e).await;
        }
    }
    tracing::debug!(probe = %probe.label, "replica lag probe stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_name_the_probe_the_field_and_the_value() {
        let mut c = ProbeConfig::new(System::Mysql, "mysql://127.0.0.1:3306");
        c.name = Some("billing".into());
        let e = Probe::new(c).unwrap_err().to_string();
        assert!(e.contains("billing") && e.contains("dsn") && e.contains("no user") && e.contains("mysql://user:password@"), "{e}");
        let e = Probe::new(ProbeConfig::new(System::Redis, "rediss://:pw@h:6379")).unwrap_err().to_string();
        assert!(e.contains("TLS") && !e.contains("pw@"), "{e}");
        let e = Probe::new(ProbeConfig::new(System::Redis, "redis://h:99999")).unwrap_err().to_string();
        assert!(e.contains("99999") && e.contains("65535"), "{e}");
        let e = Probe::new(ProbeConfig::new(System::Postgresql, "host=h port=x password=secret")).unwrap_err().to_string();
        assert!(e.contains("dsn") && !e.contains("secret"), "{e}");
        let mut c = ProbeConfig::new(System::Redis, "redis://h");
        c.interval = Duration::secs(0);
        assert!(Probe::new(c).unwrap_err().to_string().contains("interval"));
        let (_tx, rx) = watch::channel(true);
        let mut a = ProbeConfig::new(System::Redis, "redis://a");
        a.name = Some("x".into());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = rt.block_on(async { run(&[a.clone(), a], |_e| async {}, rx).unwrap_err() });
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_times_out_naming_the_stage() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // accepts connections and holds them open without a byte
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let hold = tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = l.accept().await {
                    held.push(s);
                }
            });
            for (system, dsn, stage) in [
                (System::Redis, format!("redis://127.0.0.1:{port}"), "INFO replication"),
                (System::Mysql, format!("mysql://u:p@127.0.0.1:{port}"), "the login"),
                (System::Postgresql, format!("host=127.0.0.1 port={port} user=u"), "connect"),
            ] {
                let mut cfg = ProbeConfig::new(system, dsn);
                cfg.timeout = Duration::millis(200);
                let started = Instant::now();
                let e = Probe::new(cfg).unwrap().check().await.unwrap_err();
                assert!(started.elapsed() < std::time::Duration::from_secs(2), "{e}");
                assert_eq!(e.kind(), "timeout", "{e}");
                assert!(e.to_string().contains(stage) && e.to_string().contains("200ms"), "{e}");
            }
            hold.abort();
        });
    }

    #[test]
    fn a_probe_of_a_closed_port_fails_fast_logs_once_and_stops_on_request() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // a port nothing listens on: bind, note it, close
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut cfg = ProbeConfig::new(System::Redis, format!("redis://127.0.0.1:{port}"));
            cfg.interval = Duration::millis(20);
            let mut p = Probe::new(cfg.clone()).unwrap();
            let first = p.scrape(1).await;
            assert_eq!(first.len(), 2, "metrics and a WARN log");
            assert!(matches!(&first[1], Export::Logs(_)));
            assert_eq!(p.scrape(2).await.len(), 1, "the same failure is not logged again at once");

            let (tx, rx) = watch::channel(false);
            let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
            let task = run(
                &[cfg],
                move |e| {
                    let etx = etx.clone();
                    async move {
                        let _ = etx.send(e);
                    }
                },
                rx,
            )
            .unwrap();
            let mut metrics = 0;
            while metrics < 3 {
                if let Some(Export::Metrics(_)) = erx.recv().await {
                    metrics += 1;
                }
            }
            tx.send(true).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(2), task).await.expect("stops promptly").unwrap();
        });
    }
}
