//! Replica lag with real servers. First the agent's probes alone (PostgreSQL primary and
//! streaming replica, Redis, MariaDB: lag near 0, then growing while replay or the SQL thread
//! is stopped, then back), then the whole path: the agent probing a PostgreSQL replica and a
//! Redis primary, the collector's `GET /api/v1/replica-lag` showing the lag grow while replay
//! is paused and return to 0 after, and a `replica_lag` alert rule firing and resolving.

use skein_core::Duration;
use skein_otlp::proto::metrics::v1::metric::Data;
use skein_server::Export;
use skein_sources::replica_lag::{self, Error, Failure, Observation, Probe, ProbeConfig, Role, ServerRole, State, Status, System};
use skein_tests::dbs::{DEADLINE, MariaDbServers, PgCluster, RedisServers, mariadb_bin, pg_client, redis_cli, run_ok};
use skein_tests::{Agent, Collector, free_port, wait_until};
use std::process::Command;
use std::time::Instant;

/// Polls `check` until `ok` holds for its result, or panics with the last result at the deadline.
async fn wait_for(probe: &mut Probe, what: &str, ok: impl Fn(&Result<Status, Error>) -> bool) -> Result<Status, Error> {
    let start = Instant::now();
    loop {
        let r = probe.check().await;
        if ok(&r) {
            return r;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}; last check: {r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn only(r: &Result<Status, Error>) -> Option<&Observation> {
    match r {
        Ok(s) if s.observations.len() == 1 => s.observations.first(),
        _ => None,
    }
}

fn probe(system: System, dsn: String, role: Role) -> Probe {
    let mut cfg = ProbeConfig::new(system, dsn);
    cfg.role = role;
    cfg.timeout = Duration::secs(3);
    Probe::new(cfg).expect("valid probe config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_lag_follows_a_paused_and_resumed_replay() {
    let (primary_port, replica_port) = (free_port().unwrap(), free_port().unwrap());
    let mut pg = PgCluster::new();
    pg.primary_and_replica(primary_port, replica_port);

    {
        let dsn = |port: u16| format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let mut replica = probe(System::Postgresql, dsn(replica_port), Role::Replica);
        let mut primary = probe(System::Postgresql, dsn(primary_port), Role::Auto);
        let writer = pg_client(primary_port).await;
        writer.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, pad text); INSERT INTO t (pad) SELECT repeat('x', 100) FROM generate_series(1, 1000)").await.unwrap();

        // caught up: lag 0, no backlog, streaming from the primary
        let caught_up = |r: &Result<Status, Error>| {
            only(r).is_some_and(|o| o.state == State::Streaming && o.lag_seconds == Some(0.0) && o.lag_bytes == Some(0))
        };
        let r = wait_for(&mut replica, "the replica catches up", caught_up).await.unwrap();
        assert_eq!(r.role, ServerRole::Replica);
        let o = &r.observations[0];
        assert_eq!(o.primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        assert_eq!(o.replica, format!("127.0.0.1:{replica_port}"));

        let p = wait_for(&mut primary, "the primary sees its replica caught up", |r| {
            only(r).is_some_and(|o| o.state == State::Streaming && o.lag_bytes == Some(0))
        })
        .await
        .unwrap();
        assert_eq!(p.role, ServerRole::Primary);
        let o = &p.observations[0];
        assert!(o.replica.ends_with("/127.0.0.1"), "{o:?}");
        assert_eq!(o.primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        assert!(o.wal_lag.is_some() && o.lag_seconds.is_some_and(|s| s < 5.0), "{o:?}");

        // the wrong role is an error that says so
        let mut wrong = probe(System::Postgresql, dsn(primary_port), Role::Replica);
        let e = wrong.check().await.unwrap_err();
        assert!(matches!(&e, Error::Probe { failure: Failure::Role { actual: "primary", .. }, .. }), "{e}");

        // a user without pg_monitor cannot see the replicas, and is told what to grant
        writer.batch_execute("CREATE ROLE nopriv LOGIN").await.unwrap();
        let mut blind = probe(System::Postgresql, format!("host=127.0.0.1 port={primary_port} user=nopriv dbname=postgres"), Role::Auto);
        let e = blind.check().await.unwrap_err();
        assert!(e.to_string().contains("pg_monitor"), "{e}");

        // pause replay, keep writing: bytes pile up, the replica is stopped, its lag grows
        let on_replica = pg_client(replica_port).await;
        on_replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
        writer.batch_execute("INSERT INTO t (pad) SELECT repeat('y', 100) FROM generate_series(1, 1000)").await.unwrap();
        let behind = |r: &Result<Status, Error>| {
            only(r)
                .is_some_and(|o| o.state == State::Stopped && o.lag_bytes.is_some_and(|b| b > 0) && o.lag_seconds.is_some_and(|s| s > 0.0))
        };
        let first = wait_for(&mut replica, "the paused replica falls behind", behind).await.unwrap();
        let first_lag = first.observations[0].lag_seconds.unwrap_or_default();
        let later = wait_for(&mut replica, "the paused replica's lag grows", |r| {
            behind(r) && only(r).and_then(|o| o.lag_seconds).is_some_and(|s| s > first_lag)
        })
        .await
        .unwrap();
        assert!(later.observations[0].lag_bytes >= first.observations[0].lag_bytes);
        wait_for(&mut primary, "the primary sees the backlog", |r| only(r).is_some_and(|o| o.lag_bytes.is_some_and(|b| b > 0)))
            .await
            .unwrap();

        // resume: back to 0
        on_replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
        wait_for(&mut replica, "the resumed replica catches up", caught_up).await.unwrap();
        wait_for(&mut primary, "the primary sees it caught up", |r| only(r).is_some_and(|o| o.lag_bytes == Some(0))).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replica_lag_from_both_sides_and_after_the_primary_dies() {
    let (primary_port, replica_port) = (free_port().unwrap(), free_port().unwrap());
    let mut servers = RedisServers::new();
    servers.start("primary", primary_port, &["--requirepass", "s3cret"]);
    servers.start("replica", replica_port, &["--replicaof", "127.0.0.1", &primary_port.to_string(), "--masterauth", "s3cret"]);

    {
        let mut primary = probe(System::Redis, format!("redis://:s3cret@127.0.0.1:{primary_port}"), Role::Primary);
        let mut replica = probe(System::Redis, format!("redis://127.0.0.1:{replica_port}"), Role::Auto);
        wait_for(&mut primary, "the replica comes online", |r| only(r).is_some_and(|o| o.state == State::Streaming)).await.unwrap();
        for i in 0..200 {
            redis_cli(primary_port, "s3cret", &["SET", &format!("k{i}"), &"v".repeat(200)]);
        }
        let p = wait_for(&mut primary, "the replica acknowledges every byte", |r| only(r).is_some_and(|o| o.lag_bytes == Some(0)))
            .await
            .unwrap();
        let o = &p.observations[0];
        assert_eq!(o.replica, format!("127.0.0.1:{replica_port}"));
        assert_eq!(o.primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        assert!(o.lag_seconds.is_some_and(|s| s <= 2.0), "{o:?}");

        let r = wait_for(&mut replica, "the replica reports a live link", |r| {
            only(r).is_some_and(|o| o.state == State::Streaming && o.lag_bytes == Some(0))
        })
        .await
        .unwrap();
        assert_eq!(r.role, ServerRole::Replica);
        let o = &r.observations[0];
        assert_eq!(o.primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        assert!(o.lag_seconds.is_some_and(|s| s <= 2.0), "pinged every second: {o:?}");

        // a wrong password is an authentication failure
        let mut bad = probe(System::Redis, format!("redis://:nope@127.0.0.1:{primary_port}"), Role::Auto);
        let e = bad.check().await.unwrap_err();
        assert_eq!(e.kind(), "auth", "{e}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{primary_port}")), "{e}");

        // the runner sends metrics through the sink and stops on request
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
        let mut cfg = ProbeConfig::new(System::Redis, format!("redis://127.0.0.1:{replica_port}"));
        cfg.name = Some("cache".into());
        cfg.interval = Duration::millis(100);
        let task = replica_lag::run(
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
        let Some(Export::Metrics(m)) = erx.recv().await else { panic!("metrics first") };
        let names: Vec<&str> = m.resource_metrics[0].scope_metrics[0].metrics.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"db.replication.lag_bytes") && names.contains(&"db.replication.up"), "{names:?}");
        let lag = m.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == "db.replication.lag_bytes").unwrap();
        let Some(Data::Gauge(g)) = &lag.data else { panic!("a gauge") };
        let keys: Vec<&str> = g.data_points[0].attributes.iter().map(|a| a.key.as_str()).collect();
        for k in ["db.system", "db.replication.primary", "db.replication.replica", "db.replication.state", "skein.probe.name"] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }

        // the primary dies: its probe reports it unreachable, the replica reports a stopped link
        servers.stop(0);
        let e = primary.check().await.unwrap_err();
        assert_eq!(e.kind(), "connect", "{e}");
        let stopped =
            wait_for(&mut replica, "the replica sees its link down", |r| only(r).is_some_and(|o| o.state == State::Stopped)).await.unwrap();
        assert_eq!(stopped.observations[0].primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        // and the runner kept going: a later export still comes, now with the link stopped
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "the runner stopped sending");
            if let Some(Export::Metrics(m)) = erx.recv().await {
                let text = format!("{m:?}");
                if text.contains("\"stopped\"") {
                    break;
                }
            }
        }
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("the runner stops promptly").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replica_lag_follows_a_stopped_and_restarted_sql_thread() {
    let (primary_port, replica_port) = (free_port().unwrap(), free_port().unwrap());
    let mut db = MariaDbServers::new();
    let d = db.dir.path().to_path_buf();
    run_ok(
        Command::new(mariadb_bin("/usr/bin/mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("primary").display()))
            .args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"]),
        "mariadb-install-db",
    );
    // a copy of a fresh data dir is a second fresh server, without a second install
    run_ok(Command::new("cp").arg("-a").arg(d.join("primary")).arg(d.join("replica")), "copying the data dir");
    db.start("primary", primary_port, 1);
    db.start("replica", replica_port, 2);
    let users = "CREATE USER skein@localhost IDENTIFIED BY 'pw'; GRANT SLAVE MONITOR ON *.* TO skein@localhost; \
                 CREATE USER repl@localhost IDENTIFIED BY 'rp'; GRANT REPLICATION SLAVE ON *.* TO repl@localhost;";
    db.sql(
        "primary",
        &format!("{users} RESET MASTER; CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, pad TEXT)"),
    );
    db.sql("replica", users);
    db.sql(
        "replica",
        &format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary_port}, MASTER_USER='repl', MASTER_PASSWORD='rp', \
             MASTER_USE_GTID=slave_pos; START SLAVE"
        ),
    );

    {
        let dsn = |port: u16| format!("mysql://skein:pw@127.0.0.1:{port}");
        let mut replica = probe(System::Mysql, dsn(replica_port), Role::Replica);
        let mut primary = probe(System::Mysql, dsn(primary_port), Role::Auto);
        let caught_up = |r: &Result<Status, Error>| {
            only(r).is_some_and(|o| o.state == State::Streaming && o.lag_seconds == Some(0.0) && o.lag_bytes == Some(0))
        };
        let r = wait_for(&mut replica, "the replica catches up", caught_up).await.unwrap();
        assert_eq!(r.role, ServerRole::Replica);
        assert_eq!(r.observations[0].primary.as_deref(), Some(format!("127.0.0.1:{primary_port}").as_str()));
        assert_eq!(r.observations[0].replica, format!("127.0.0.1:{replica_port}"));
        let p = primary.check().await.unwrap();
        assert_eq!((p.role, p.observations.len()), (ServerRole::Primary, 0), "a MySQL primary has no replica lag to tell");

        // the SQL thread stops: state stopped, no seconds (NULL), the relay backlog grows
        db.sql("replica", "STOP SLAVE SQL_THREAD");
        db.sql("primary", "USE app; INSERT INTO t (pad) SELECT REPEAT('x', 100) FROM seq_1_to_500");
        let r = wait_for(&mut replica, "the stopped replica falls behind", |r| {
            only(r).is_some_and(|o| o.state == State::Stopped && o.lag_bytes.is_some_and(|b| b > 0))
        })
        .await
        .unwrap();
        assert_eq!(r.observations[0].lag_seconds, None, "Seconds_Behind_Master is NULL without the SQL thread");

        db.sql("replica", "START SLAVE SQL_THREAD");
        wait_for(&mut replica, "the restarted replica catches up", caught_up).await.unwrap();

        let mut bad = probe(System::Mysql, format!("mysql://skein:nope@127.0.0.1:{primary_port}"), Role::Auto);
        let e = bad.check().await.unwrap_err();
        assert_eq!(e.kind(), "auth", "{e}");
        assert!(e.to_string().contains("1045"), "{e}");
    }
}

/// The `/api/v1/replica-lag` entry of `system`, if listed.
async fn lag_entry(c: &Collector, system: &str) -> Option<serde_json::Value> {
    let (status, v) = c.get_json("/api/v1/replica-lag?step=1s").await.ok()?;
    assert_eq!(status, 200, "{v}");
    v["replicas"].as_array()?.iter().find(|r| r["system"] == system).cloned()
}

/// The alerts of rule `name` in `state`.
async fn alerts(c: &Collector, name: &str, state: &str) -> Vec<serde_json::Value> {
    let Ok((200, v)) = c.get_json("/api/v1/alerts").await else { return Vec::new() };
    v["alerts"].as_array().into_iter().flatten().filter(|a| a["rule"] == name && a["state"] == state).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_shows_its_lag_growing_in_the_api_and_alerts_until_it_catches_up() {
    let (pg_primary, pg_replica, redis_primary, redis_replica) =
        (free_port().unwrap(), free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    let mut pg = PgCluster::new();
    pg.primary_and_replica(pg_primary, pg_replica);
    let mut redis = RedisServers::new();
    redis.start("primary", redis_primary, &[]);
    redis.start("replica", redis_replica, &["--replicaof", "127.0.0.1", &redis_primary.to_string()]);

    let port = free_port().unwrap();
    let rules = r#"[{name = "replica behind", kind = "replica_lag", above_seconds = 2, for = "2s"}]"#;
    let collector = Collector::builder()
        .set("otlp.grpc_addr", format!("127.0.0.1:{port}"))
        .set("alerts.interval", "1s")
        .set("alerts.rules", rules)
        .start()
        .await
        .unwrap();
    let probes = format!(
        r#"[{{name = "orders", system = "postgresql", dsn = "host=127.0.0.1 port={pg_replica} user=postgres dbname=postgres", interval = "1s"}},
            {{name = "cache", system = "redis", dsn = "redis://127.0.0.1:{redis_primary}", interval = "1s"}}]"#
    );
    let sets = [("replica_lag.probes", probes.as_str()), ("node.host_name", "db-node"), ("exporter.batch_max_age", "100ms")];
    let agent = Agent::start(&[format!("http://127.0.0.1:{port}")], &sets).await.unwrap();

    // Writes flow on the primary all along.
    let writer = pg_client(pg_primary).await;
    writer.batch_execute("CREATE TABLE t (id serial PRIMARY KEY, at timestamptz DEFAULT now())").await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writes = tokio::spawn(async move {
        loop {
            writer.batch_execute("INSERT INTO t DEFAULT VALUES").await.unwrap();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = stop_rx.wait_for(|v| *v) => return,
            }
        }
    });
    let within = std::time::Duration::from_secs(40);
    let fail = |e: anyhow::Error| -> ! { panic!("{e}\nagent log:\n{}", agent.log()) };

    let pg_ok = |r: &serde_json::Value| r["state"] == "streaming" && r["lag_seconds"].as_f64().is_some_and(|s| s < 1.5);
    let e = wait_until(within, "the PostgreSQL replica streaming, lag near 0", || async {
        lag_entry(&collector, "postgresql").await.filter(|r| pg_ok(r))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(e["replica"], format!("127.0.0.1:{pg_replica}"), "{e}");
    assert_eq!(e["primary"], format!("127.0.0.1:{pg_primary}"), "{e}");
    assert_eq!(e["node"], "db-node", "{e}");
    let r = wait_until(within, "the Redis replica caught up", || async {
        lag_entry(&collector, "redis").await.filter(|r| r["lag_bytes"].as_f64() == Some(0.0) && r["state"] == "streaming")
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(r["replica"], format!("127.0.0.1:{redis_replica}"), "{r}");

    // Replay paused while writes go on: the lag grows, the state says stopped, the alert fires.
    let on_replica = pg_client(pg_replica).await;
    on_replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    let behind = wait_until(within, "the paused replica's lag past 3 s", || async {
        lag_entry(&collector, "postgresql").await.filter(|r| r["state"] == "stopped" && r["lag_seconds"].as_f64().is_some_and(|s| s > 3.0))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert!(behind["lag_bytes"].as_f64().is_some_and(|b| b > 0.0), "{behind}");
    let series = behind["series"].as_array().unwrap();
    assert!(series.len() >= 3 && series.windows(2).all(|w| w[0][0].as_i64() < w[1][0].as_i64()), "{behind}");
    let firing = wait_until(within, "the replica_lag alert firing", || async {
        let a = alerts(&collector, "replica behind", "firing").await;
        (!a.is_empty()).then_some(a)
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(firing[0]["labels"]["system"], "postgresql", "{firing:?}");
    assert!(firing[0]["value"].as_f64().is_some_and(|v| v > 2.0), "{firing:?}");

    // Replay resumes: back to near 0, the alert resolves.
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    let back =
        wait_until(within, "the resumed replica back near 0", || async { lag_entry(&collector, "postgresql").await.filter(|r| pg_ok(r)) })
            .await
            .unwrap_or_else(|e| fail(e));
    assert!(back["max_lag_seconds"].as_f64().is_some_and(|m| m > 3.0), "the window remembers the peak: {back}");
    wait_until(within, "the alert resolved", || async { !alerts(&collector, "replica behind", "resolved").await.is_empty() })
        .await
        .unwrap_or_else(|e| fail(e));
    assert!(alerts(&collector, "replica behind", "firing").await.is_empty());
    stop_tx.send(true).unwrap();
    writes.await.unwrap();

    // Redis: the replica process frozen (SIGSTOP) while the primary takes writes: the primary's
    // probe sees its offset fall behind and its last acknowledgement age, the alert fires; thawed,
    // it catches up and the alert resolves.
    let signal = |sig: &str| run_ok(Command::new("kill").args([sig, &redis.pid(1).to_string()]), "kill");
    signal("-STOP");
    for i in 0..50 {
        redis_cli(redis_primary, "", &["SET", &format!("k{i}"), &"v".repeat(1000)]);
    }
    let behind = wait_until(within, "the frozen Redis replica behind by bytes and seconds", || async {
        lag_entry(&collector, "redis")
            .await
            .filter(|r| r["lag_bytes"].as_f64().is_some_and(|b| b > 0.0) && r["lag_seconds"].as_f64().is_some_and(|s| s > 3.0))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(behind["replica"], format!("127.0.0.1:{redis_replica}"), "{behind}");
    wait_until(within, "the replica_lag alert firing for Redis", || async {
        alerts(&collector, "replica behind", "firing").await.iter().any(|a| a["labels"]["system"] == "redis")
    })
    .await
    .unwrap_or_else(|e| fail(e));
    signal("-CONT");
    wait_until(within, "the thawed Redis replica caught up", || async {
        lag_entry(&collector, "redis")
            .await
            .filter(|r| r["lag_bytes"].as_f64() == Some(0.0) && r["lag_seconds"].as_f64().is_some_and(|s| s < 2.0))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    wait_until(within, "the Redis alert resolved", || async {
        alerts(&collector, "replica behind", "resolved").await.iter().any(|a| a["labels"]["system"] == "redis")
    })
    .await
    .unwrap_or_else(|e| fail(e));
}
