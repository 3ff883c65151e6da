//! A real S3-compatible server for tests: moto's `moto_server`, installed in the test venv
//! (`tests/python/requirements.txt`), run as its own process on 127.0.0.1 with an ephemeral
//! port, killed when the [`S3Server`] is dropped.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::collector::workspace_root;

/// A running moto S3 server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

fn moto_server() -> Result<PathBuf> {
    let venv = std::env::var_os("SKEIN_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("tests/.venv"));
    let bin = venv.join("bin/moto_server");
    if !bin.is_file() {
        bail!(
            "moto_server not found at {}: run tests/run-all.sh, which installs tests/python/requirements.txt into the venv",
            bin.display()
        );
    }
    Ok(bin)
}

impl S3Server {
    /// Starts the server and waits (at most 30 s) until it answers.
    ///
    /// # Errors
    /// moto is not installed, exits, or does not come up in time.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("skein-s3-").tempdir()?;
        let log = dir.path().join("moto.log");
        let child = Command::new(moto_server()?)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("moto.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting moto_server")?;
        let mut s = Self { child, endpoint: String::new(), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Some(status) = s.child.try_wait()? {
                bail!("moto_server exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if s.endpoint.is_empty() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(rest) = text.split("Running on http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    s.endpoint = format!("http://127.0.0.1:{port}");
                }
            }
            if !s.endpoint.is_empty() && client.get(format!("{}/", s.endpoint)).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("moto_server did not answer within 30 s: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a bucket.
    ///
    /// # Errors
    /// The server refused.
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let r = reqwest::Client::new().put(format!("{}/{name}", self.endpoint)).send().await?;
        if !r.status().is_success() {
            bail!("creating bucket {name}: {}", r.status());
        }
        Ok(())
    }

    /// The keys under `prefix` in `bucket` (ListObjectsV2, first 1000).
    ///
    /// # Errors
    /// The server refused.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let body =
            reqwest::Client::new().get(format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint)).send().await?.text().await?;
        Ok(body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_string).collect())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
