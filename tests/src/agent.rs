//! Runs the real `skein-agent` binary for a test, like [`crate::Collector`] does for the
//! collector: a temporary data directory, every listener on `127.0.0.1:0`, a wait (with a
//! deadline) for `listen.json` and `/readyz`, the log printed when dropped, and `kill -9`,
//! SIGTERM and restart on the same data directory.

use crate::collector::binary;
use crate::wait::wait_until;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The agent binary: `$SKEIN_AGENT_BIN`, else `target/debug/skein-agent`.
///
/// # Errors
/// The binary does not exist.
pub fn agent_bin() -> Result<PathBuf> {
    binary("skein-agent", "SKEIN_AGENT_BIN")
}

/// A free loopback port (bound and released: another process could take it in between, which
/// on a test machine's loopback does not happen in practice).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `skein-agent`.
#[derive(Debug)]
pub struct Agent {
    bin: PathBuf,
    sets: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// OTLP/gRPC, OTLP/HTTP and admin addresses of the current process.
    pub addrs: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    client: reqwest::Client,
}

impl Agent {
    /// Starts an agent pushing to `collectors` (OTLP/gRPC URLs) with extra `--set`s.
    ///
    /// # Errors
    /// The binary is missing, exits, or is not ready within 60 s.
    pub async fn start(collectors: &[String], sets: &[(&str, &str)]) -> Result<Agent> {
        let tmp = tempfile::Builder::new().prefix("skein-agent-e2e-").tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut all: Vec<(String, String)> = vec![
            ("otlp.grpc_addr".into(), "127.0.0.1:0".into()),
            ("otlp.http_addr".into(), "127.0.0.1:0".into()),
            ("admin.addr".into(), "127.0.0.1:0".into()),
            ("exporter.endpoints".into(), serde_json::to_string(collectors)?),
        ];
        all.extend(sets.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())));
        let mut a = Agent {
            bin: agent_bin()?,
            sets: all,
            log_path: tmp.path().join("agent.log"),
            data_dir,
            _tmp: tmp,
            child: None,
            addrs: None,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        };
        a.spawn_and_wait().await?;
        Ok(a)
    }

    /// The data directory (its queue survives restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr, SocketAddr) {
        self.addrs.expect("the agent is not running")
    }

    /// `http://<otlp http addr>`.
    pub fn otlp_http_url(&self) -> String {
        format!("http://{}", self.addrs().1)
    }

    /// `http://<otlp grpc addr>`.
    pub fn otlp_grpc_url(&self) -> String {
        format!("http://{}", self.addrs().0)
    }

    /// The admin port's `/metrics` text.
    ///
    /// # Errors
    /// The request failed.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self.client.get(format!("http://{}/metrics", self.addrs().2)).send().await?.text().await?)
    }

    /// The admin port's `/status`.
    ///
    /// # Errors
    /// The request failed.
    pub async fn status(&self) -> Result<Value> {
        Ok(self.client.get(format!("http://{}/status", self.addrs().2)).send().await?.json().await?)
    }

    /// GET on the admin port: (status code, body).
    ///
    /// # Errors
    /// The request failed.
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let r = self.client.get(format!("http://{}{path}", self.addrs().2)).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// POSTs an OTLP/HTTP protobuf body to `/v1/<signal>`; returns the status code.
    ///
    /// # Errors
    /// The request failed.
    pub async fn post(&self, signal: &str, body: Vec<u8>) -> Result<u16> {
        let r = self
            .client
            .post(format!("{}/v1/{signal}", self.otlp_http_url()))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// POSTs `body` to `/v1/<signal>` as `content_type`, gzip-compressed when `gzip`; returns
    /// the status code and the answer's body.
    ///
    /// # Errors
    /// The request failed.
    pub async fn post_as(&self, signal: &str, body: Vec<u8>, content_type: &str, gzip: bool) -> Result<(u16, String)> {
        let mut req = self.client.post(format!("{}/v1/{signal}", self.otlp_http_url())).header("content-type", content_type);
        let body = if gzip {
            req = req.header("content-encoding", "gzip");
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut e, &body)?;
            e.finish()?
        } else {
            body
        };
        let r = req.body(body).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// Kills the agent with SIGKILL; the data directory stays.
    ///
    /// # Errors
    /// Signalling or reaping failed.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        self.addrs = None;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for the agent to exit; its exit status.
    ///
    /// # Errors
    /// It did not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else { bail!("the agent is not running") };
        // std only sends SIGKILL; the workspace forbids `unsafe`, so kill(1) sends SIGTERM.
        let sent = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        if !sent.is_ok_and(|s| s.success()) {
            bail!("cannot send SIGTERM to {}", c.id());
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait()? {
                self.addrs = None;
                return Ok(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("the agent did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the agent again on the same data directory (killing it first if running).
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn_and_wait().await
    }

    /// The process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let listen = self.data_dir.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let mut args = vec!["--data-dir".to_string(), self.data_dir.display().to_string()];
        for (k, v) in &self.sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        args.push("run".into());
        writeln!(log, "==== skein-tests: $ {} {}", self.bin.display(), args.join(" "))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SKEIN_") {
                cmd.env_remove(&k);
            }
        }
        self.child = Some(cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?);
        let client = self.client.clone();
        let child = &mut self.child;
        let found = wait_until(Duration::from_secs(60), "the agent's listen.json and /readyz", || {
            let exited = child.as_mut().map(Child::try_wait);
            let (listen, client) = (listen.clone(), client.clone());
            async move {
                if let Some(Ok(Some(status))) = exited {
                    return Some(Err(format!("the agent exited: {status}")));
                }
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&listen).ok()?).ok()?;
                let addr = |k: &str| v[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
                let (g, h, a) = (addr("otlp_grpc")?, addr("otlp_http")?, addr("admin")?);
                let ok = client.get(format!("http://{a}/readyz")).send().await.map(|r| r.status().as_u16() == 200).unwrap_or(false);
                ok.then_some(Ok((g, h, a)))
            }
        })
        .await;
        match found {
            Ok(Ok(addrs)) => {
                self.addrs = Some(addrs);
                Ok(())
            }
            Ok(Err(why)) => bail!("{why}; log:\n{}", self.log()),
            Err(e) => {
                let _ = self.kill9();
                bail!("{e}; log:\n{}", self.log())
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        eprintln!("---- skein-agent log ({}) ----\n{}\n---- end of skein-agent log ----", self.log_path.display(), self.log());
    }
}
