//! Real database servers for the replica-lag tests: a PostgreSQL primary with a streaming
//! replica (`pg_basebackup -R`), Redis with a `--replicaof` replica, MariaDB with a replica, each
//! on free loopback ports in a temporary directory and stopped when dropped (passed or not).
//! The servers must be installed (`.ci/run` installs Debian's packages); a missing binary
//! fails the test with what to install.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// How long a server may take to listen.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `cmd` to completion; panics with its output when it fails.
///
/// # Panics
/// The command cannot run or fails.
pub fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest installed PostgreSQL's program `name`.
///
/// # Panics
/// PostgreSQL is not installed.
pub fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("{name} not found under /usr/lib/postgresql/*/bin: install the PostgreSQL server (apt-get install postgresql)")
    })
}

/// uid and gid of the `postgres` system user.
///
/// # Panics
/// There is none.
pub fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
        .and_then(|(u, g)| Some((u?, g?)))
        .expect("no postgres system user: install Debian's postgresql package, which creates it")
}

/// PostgreSQL servers started with `pg_ctl`, stopped (immediate mode) on drop.
pub struct PgCluster {
    user: (u32, u32),
    started: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl Default for PgCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl PgCluster {
    /// An empty cluster directory owned by the `postgres` user.
    ///
    /// # Panics
    /// PostgreSQL is not installed.
    pub fn new() -> Self {
        let user = postgres_user();
        let dir = tempfile::tempdir().expect("temp dir");
        chown(dir.path(), Some(user.0), Some(user.1)).expect("chown the temp dir to postgres");
        Self { user, started: Vec::new(), dir }
    }

    /// A PostgreSQL program run as `postgres` in the cluster directory.
    pub fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(pg_bin(bin));
        c.uid(self.user.0).gid(self.user.1).current_dir(self.dir.path()).env_remove("PGDATA").stdin(Stdio::null());
        c
    }

    /// A path in the cluster directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the server of data directory `name` on `port` (more `postgres` options in `extra`).
    ///
    /// # Panics
    /// It does not start.
    pub fn start(&mut self, name: &str, port: u16, extra: &str) {
        let data = self.path(name);
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c wal_receiver_status_interval=1s {extra}",
            self.dir.path().display()
        );
        let log = self.path(&format!("{name}.log"));
        let out = self.cmd("pg_ctl").arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "20", "-o", &opts, "start"]).output();
        self.started.push(data);
        let out = out.expect("run pg_ctl start");
        assert!(out.status.success(), "pg_ctl start {name} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), read_log(&log));
    }
}

/// A server's log, or nothing.
pub fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl PgCluster {
    /// initdb, a primary on `primary_port` and a streaming replica (`pg_basebackup -R`) on
    /// `replica_port`, with trust authentication for `postgres` on loopback.
    ///
    /// # Panics
    /// A step fails.
    pub fn primary_and_replica(&mut self, primary_port: u16, replica_port: u16) {
        run_ok(
            self.cmd("initdb").arg("-D").arg(self.path("primary")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            "initdb",
        );
        self.start("primary", primary_port, "-c wal_level=replica -c max_wal_senders=5");
        let port = primary_port.to_string();
        run_ok(
            self.cmd("pg_basebackup").arg("-D").arg(self.path("replica")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]),
            "pg_basebackup",
        );
        self.start("replica", replica_port, "");
    }
}

/// A client of the server on `127.0.0.1:port` as `postgres`.
///
/// # Panics
/// It cannot connect.
pub async fn pg_client(port: u16) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
    tokio::spawn(conn);
    client
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for data in self.started.iter().rev() {
            let _ = self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Redis servers, killed on drop.
pub struct RedisServers {
    children: Vec<Child>,
    /// Where their data and logs are.
    pub dir: tempfile::TempDir,
}

impl Default for RedisServers {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisServers {
    /// No servers yet.
    ///
    /// # Panics
    /// No temporary directory.
    pub fn new() -> Self {
        Self { children: Vec::new(), dir: tempfile::tempdir().expect("temp dir") }
    }

    /// Starts `redis-server` `name` on `port` with `extra` arguments; waits until it listens.
    ///
    /// # Panics
    /// Redis is not installed or does not listen.
    pub fn start(&mut self, name: &str, port: u16, extra: &[&str]) {
        let bin = "/usr/bin/redis-server";
        assert!(Path::new(bin).exists(), "{bin} not found: install the Redis server (apt-get install redis-server)");
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("create the redis dir");
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("redis log");
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--repl-ping-replica-period", "1"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.children.push(child);
        // ready once it accepts connections
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "redis-server {name} did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Process id of the `i`-th server started.
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// Kills the `i`-th server started.
    pub fn stop(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for RedisServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `redis-cli` against `127.0.0.1:port`.
///
/// # Panics
/// It fails.
pub fn redis_cli(port: u16, pass: &str, args: &[&str]) {
    let cli = "/usr/bin/redis-cli";
    assert!(Path::new(cli).exists(), "{cli} not found: install redis-tools");
    run_ok(Command::new(cli).args(["-h", "127.0.0.1", "-p", &port.to_string(), "--no-auth-warning", "-a", pass]).args(args), "redis-cli");
}

/// A MariaDB program, which must exist.
///
/// # Panics
/// MariaDB is not installed.
pub fn mariadb_bin(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "{path} not found: install the MariaDB server (apt-get install mariadb-server)");
    p
}

/// MariaDB servers, killed on drop.
pub struct MariaDbServers {
    children: Vec<Child>,
    /// Where their data and logs are.
    pub dir: tempfile::TempDir,
}

impl Default for MariaDbServers {
    fn default() -> Self {
        Self::new()
    }
}

impl MariaDbServers {
    /// No servers yet.
    ///
    /// # Panics
    /// No temporary directory.
    pub fn new() -> Self {
        Self { children: Vec::new(), dir: tempfile::tempdir().expect("temp dir") }
    }

    /// Starts `mariadbd` on the data directory `name`, on `port`; waits until it listens.
    ///
    /// # Panics
    /// It does not start.
    pub fn start(&mut self, name: &str, port: u16, server_id: u32) {
        let d = self.dir.path();
        let child = Command::new(mariadb_bin("/usr/sbin/mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join(name).display()))
            .arg(format!("--socket={}", d.join(format!("{name}.sock")).display()))
            .arg(format!("--pid-file={}", d.join(format!("{name}.pid")).display()))
            .arg(format!("--log-error={}", d.join(format!("{name}.err")).display()))
            .arg(format!("--port={port}"))
            .arg(format!("--server-id={server_id}"))
            .args(["--bind-address=127.0.0.1", "--user=root", "--log-bin=bin", "--relay-log=relay", "--innodb-buffer-pool-size=16M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        self.children.push(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "mariadbd {name} did not listen on {port}: {}", read_log(&d.join(format!("{name}.err"))));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Runs `sql` as root over the server's socket with the `mariadb` client.
    pub fn sql(&self, name: &str, sql: &str) {
        let sock = self.dir.path().join(format!("{name}.sock"));
        run_ok(Command::new(mariadb_bin("/usr/bin/mariadb")).arg("--no-defaults").arg("-S").arg(sock).args(["-u", "root", "-e", sql]), sql);
    }
}

impl Drop for MariaDbServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
