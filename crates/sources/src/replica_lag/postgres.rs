//! PostgreSQL probe: `pg_is_in_recovery()`, then the replica's own LSNs and WAL receiver, or
//! the primary's `pg_stat_replication`. The rows are read into plain structs and turned into
//! [`Observation`]s by pure functions, tested without a server.

use super::{Failure, Observation, ServerRole, State, Status, host_port};
use std::str::FromStr;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

const RECOVERY: &str = "SELECT pg_is_in_recovery()";

// `pg_stat_wal_receiver` has at most one row; the join keeps the row of functions when it has none.
const REPLICA: &str = "SELECT \
       pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), \
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::float8, \
       pg_is_wal_replay_paused(), \
       r.pid IS NOT NULL, r.status, r.sender_host, r.sender_port \
     FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true";

const PRIMARY: &str = "SELECT application_name, host(client_addr), state, \
       extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8, \
       extract(epoch FROM replay_lag)::float8, \
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 \
     FROM pg_stat_replication ORDER BY application_name, client_addr";

/// The `(host, port)` of a libpq connection string: its first host.
pub(super) fn address(dsn: &str) -> Result<(String, u16), String> {
    let cfg = Config::from_str(dsn).map_err(|e| chain(&e))?;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => match cfg.get_hostaddrs().first() {
            Some(ip) => ip.to_string(),
            None => return Err("no host".into()),
        },
    };
    Ok((host, cfg.get_ports().first().copied().unwrap_or(5432)))
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

/// A PostgreSQL probe's connection.
pub(super) struct Pg {
    config: Config,
    addr: String,
    client: Option<Client>,
    /// The task driving the connection of `client`.
    conn_task: Option<tokio::task::JoinHandle<()>>,
    /// What the current check waits for, named in a timeout.
    pub(super) stage: &'static str,
}

impl Pg {
    pub(super) fn new(dsn: &str, timeout: std::time::Duration) -> Result<Self, String> {
        let mut config = Config::from_str(dsn).map_err(|e| chain(&e))?;
        if config.get_application_name().is_none() {
            config.application_name("skein-agent replica_lag");
        }
        config.connect_timeout(timeout);
        let (h, p) = address(dsn)?;
        Ok(Self { config, addr: host_port(&h, p), client: None, conn_task: None, stage: "connect" })
    }

    /// Drops the connection; the next check opens a new one. The connection task is aborted:
    /// with a query still pending (a check that timed out) it would otherwise keep its socket
    /// and server backend open, one more per timed-out check.
    pub(super) fn reset(&mut self) {
        self.client = None;
        if let Some(task) = self.conn_task.take() {
            task.abort();
        }
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.stage = "connect";
            let (client, conn) = self.config.connect(NoTls).await.map_err(|e| {
                let text = chain(&e);
                let auth = e.code().is_some_and(|c| {
                    *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
                        || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                });
                if auth { Failure::Auth(text) } else { Failure::Connect(text) }
            })?;
            // The connection ends with an error when the server goes away; the client then
            // reports closed and the next check reconnects.
            if let Some(old) = self.conn_task.take() {
                old.abort();
            }
            self.conn_task = Some(tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "replica lag postgresql connection ended");
                }
            }));
            self.client = Some(client);
        }
        Ok(())
    }

    pub(super) async fn check(&mut self) -> Result<Status, Failure> {
        self.connect().await?;
        let Some(client) = self.client.as_ref() else { return Err(Failure::Connect("no connection".into())) };
        let addr = self.addr.as_str();
        self.stage = RECOVERY;
        let failed = |query: &'static str| move |e: tokio_postgres::Error| Failure::Query { query, message: chain(&e) };
        let in_recovery: bool = client.query_one(RECOVERY, &[]).await.map_err(failed(RECOVERY))?.try_get(0).map_err(failed(RECOVERY))?;
        if in_recovery {
            self.stage = "the replica's WAL positions";
            let r = client.query_one(REPLICA, &[]).await.map_err(failed("the replica's WAL positions query"))?;
            let g = failed("reading the replica's WAL positions");
            let row = ReplicaRow {
                caught_up: r.try_get(0).map_err(&g)?,
                replay_age: r.try_get(1).map_err(&g)?,
                backlog: r.try_get(2).map_err(&g)?,
                paused: r.try_get(3).map_err(&g)?,
                receiver: r.try_get(4).map_err(&g)?,
                status: r.try_get(5).map_err(&g)?,
                sender_host: r.try_get(6).map_err(&g)?,
                sender_port: r.try_get(7).map_err(&g)?,
            };
            Ok(Status { role: ServerRole::Replica, observations: vec![replica_observation(&row, addr)] })
        } else {
            self.stage = "pg_stat_replication";
            let rows = client.query(PRIMARY, &[]).await.map_err(failed("the pg_stat_replication query"))?;
            let g = failed("reading pg_stat_replication");
            let mut senders = Vec::with_capacity(rows.len());
            for r in rows {
                senders.push(SenderRow {
                    application_name: r.try_get::<_, Option<String>>(0).map_err(&g)?.unwrap_or_default(),
                    client_addr: r.try_get(1).map_err(&g)?,
                    state: r.try_get(2).map_err(&g)?,
                    write_lag: r.try_get(3).map_err(&g)?,
                    flush_lag: r.try_get(4).map_err(&g)?,
                    replay_lag: r.try_get(5).map_err(&g)?,
                    backlog: r.try_get(6).map_err(&g)?,
                });
            }
            let observations = primary_observations(&senders, addr)?;
            Ok(Status { role: ServerRole::Primary, observations })
        }
    }
}

/// What a replica says about itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ReplicaRow {
    /// Receive LSN = replay LSN.
    pub caught_up: bool,
    /// `now() - pg_last_xact_replay_timestamp()`, seconds.
    pub replay_age: Option<f64>,
    /// `pg_wal_lsn_diff(receive, replay)`.
    pub backlog: Option<f64>,
    /// `pg_is_wal_replay_paused()`.
    pub paused: bool,
    /// A WAL receiver process exists.
    pub receiver: bool,
    /// Its status (NULL without `pg_read_all_stats`).
    pub status: Option<String>,
    pub sender_host: Option<String>,
    pub sender_port: Option<i32>,
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct SenderRow {
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub write_lag: Option<f64>,
    pub flush_lag: Option<f64>,
    pub replay_lag: Option<f64>,
    pub backlog: Option<f64>,
}

pub(super) fn replica_observation(r: &ReplicaRow, addr: &str) -> Observation {
    // A receiver whose status is hidden (the probe's user lacks pg_read_all_stats) is taken to
    // be streaming: the LSNs still tell whether replay keeps up.
    let streaming = r.receiver && r.status.as_deref().is_none_or(|s| s == "streaming");
    let lag_seconds = if r.caught_up && streaming { Some(0.0) } else { r.replay_age.map(|a| a.max(0.0)) };
    let primary = match (&r.sender_host, r.sender_port) {
        (Some(h), Some(p)) => Some(host_port(h, u16::try_from(p).unwrap_or(0))),
        (Some(h), None) => Some(h.clone()),
        _ => None,
    };
    Observation {
        primary,
        replica: addr.to_string(),
        state: if r.paused || !streaming { State::Stopped } else { State::Streaming },
        lag_seconds,
        lag_bytes: r.backlog.map(|b| b.max(0.0) as u64),
        wal_lag: None,
    }
}

pub(super) fn primary_observations(rows: &[SenderRow], addr: &str) -> Result<Vec<Observation>, Failure> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(state) = r.state.as_deref() else {
            return Err(Failure::Query {
                query: "the pg_stat_replication query",
                message: "the probe's user cannot see the replication columns; grant it pg_monitor (GRANT pg_monitor TO <user>)".into(),
            });
        };
        if state == "backup" {
            continue; // a pg_basebackup, not a replica
        }
        let secs = |v: Option<f64>| v.unwrap_or(0.0).max(0.0);
        let replay = secs(r.replay_lag);
        out.push(Observation {
            primary: Some(addr.to_string()),
            replica: format!("{}/{}", r.application_name, r.client_addr.as_deref().unwrap_or("local")),
            state: if matches!(state, "streaming" | "catchup") { State::Streaming } else { State::Stopped },
            lag_seconds: Some(replay),
            lag_bytes: r.backlog.map(|b| b.max(0.0) as u64),
            wal_lag: Some([secs(r.write_lag), secs(r.flush_lag), replay]),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_up_streaming_replica_has_no_lag_even_when_its_last_replay_is_old() {
        let row = ReplicaRow {
            caught_up: true,
            replay_age: Some(3600.0),
            backlog: Some(0.0),
            receiver: true,
            status: Some("streaming".into()),
            sender_host: Some("10.0.0.1".into()),
            sender_port: Some(5432),
            ..Default::default()
        };
        let o = replica_observation(&row, "10.0.0.2:5432");
        assert_eq!(
            o,
            Observation {
                primary: Some("10.0.0.1:5432".into()),
                replica: "10.0.0.2:5432".into(),
                state: State::Streaming,
                lag_seconds: Some(0.0),
                lag_bytes: Some(0),
                wal_lag: None
            }
        );
    }

    #[test]
    fn a_paused_replica_is_stopped_and_its_lag_is_the_replay_age() {
        let row = ReplicaRow {
            caught_up: false,
            replay_age: Some(4.5),
            backlog: Some(81920.0),
            paused: true,
            receiver: true,
            status: Some("streaming".into()),
            ..Default::default()
        };
        let o = replica_observation(&row, "r:5432");
        assert_eq!((o.state, o.lag_seconds, o.lag_bytes, o.primary), (State::Stopped, Some(4.5), Some(81920), None));
    }

    #[test]
    fn a_replica_without_a_receiver_is_not_called_caught_up() {
        let row = ReplicaRow { caught_up: true, replay_age: Some(120.0), backlog: Some(0.0), receiver: false, ..Default::default() };
        let o = replica_observation(&row, "r:5432");
        assert_eq!((o.state, o.lag_seconds), (State::Stopped, Some(120.0)));
        // nothing replayed yet and nothing received: no lag figure at all
        let o = replica_observation(&ReplicaRow::default(), "r:5432");
        assert_eq!((o.lag_seconds, o.lag_bytes), (None, None));
        // hidden status: trusted to stream
        let row = ReplicaRow { caught_up: true, receiver: true, status: None, ..Default::default() };
        assert_eq!(replica_observation(&row, "r").state, State::Streaming);
    }

    #[test]
    fn primary_rows_become_one_replica_each_with_idle_lags_at_zero() {
        let rows = vec![
            SenderRow {
                application_name: "walreceiver".into(),
                client_addr: Some("10.0.0.2".into()),
                state: Some("streaming".into()),
                write_lag: Some(0.001),
                flush_lag: Some(0.002),
                replay_lag: Some(0.5),
                backlog: Some(1024.0),
            },
            SenderRow { application_name: "r2".into(), client_addr: None, state: Some("catchup".into()), ..Default::default() },
            SenderRow { application_name: "pg_basebackup".into(), state: Some("backup".into()), ..Default::default() },
            SenderRow {
                application_name: "r3".into(),
                client_addr: Some("10.0.0.3".into()),
                state: Some("startup".into()),
                ..Default::default()
            },
        ];
        let o = primary_observations(&rows, "db:5432").unwrap();
        assert_eq!(o.len(), 3, "the base backup is not a replica");
        assert_eq!(o[0].replica, "walreceiver/10.0.0.2");
        assert_eq!(o[0].primary.as_deref(), Some("db:5432"));
        assert_eq!((o[0].lag_seconds, o[0].lag_bytes, o[0].wal_lag), (Some(0.5), Some(1024), Some([0.001, 0.002, 0.5])));
        assert_eq!((o[1].replica.as_str(), o[1].state, o[1].lag_seconds, o[1].lag_bytes), ("r2/local", State::Streaming, Some(0.0), None));
        assert_eq!(o[2].state, State::Stopped);
        let hidden = vec![SenderRow { application_name: "walreceiver".into(), ..Default::default() }];
        let e = primary_observations(&hidden, "db:5432").unwrap_err().to_string();
        assert!(e.contains("pg_monitor"), "{e}");
    }

    #[test]
    fn addresses_come_from_the_connection_string() {
        assert_eq!(address("host=10.0.0.5 port=5433 user=skein").unwrap(), ("10.0.0.5".into(), 5433));
        assert_eq!(address("postgres://skein@db/postgres").unwrap(), ("db".into(), 5432));
        assert_eq!(address("host=/tmp/pg port=6000").unwrap(), ("/tmp/pg".into(), 6000));
        assert!(address("port=5432").is_err());
        assert!(address("host=h port=nope").is_err());
    }
}
