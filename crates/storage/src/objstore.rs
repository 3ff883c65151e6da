//! Opening the object store that holds blocks and manifests: the local file system or any
//! S3-compatible bucket, behind the same `ObjectStore` trait so the rest of the crate has one
//! code path.

use crate::config::{S3Config, StorageConfig};
use crate::error::{Error, Result};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened object store, already scoped to the configured prefix.
#[derive(Clone)]
pub struct Objects {
    /// The store; paths are relative to the configured location.
    pub store: Arc<dyn ObjectStore>,
    /// Where it points, for logs and errors (`file:///…`, `s3://bucket/prefix`).
    pub location: String,
    /// The directory behind a local store: its writes are fsynced by [`Objects::sync`], which
    /// `LocalFileSystem` itself does not do.
    pub local_root: Option<PathBuf>,
}

impl Objects {
    /// Makes an object just written durable: a no-op for S3 (a completed PUT is durable), an
    /// fsync of the file and of its directory for the local file system.
    ///
    /// # Errors
    /// The fsync failed.
    pub fn sync(&self, path: &object_store::path::Path) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let file = root.join(path.as_ref());
        let io = |source| Error::Io { op: "syncing", path: file.display().to_string(), source };
        std::fs::File::open(&file).and_then(|f| f.sync_all()).map_err(io)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("location", &self.location).finish()
    }
}

/// Opens the store named by `cfg.url`, or `data_dir` on the local disk when it is empty.
///
/// # Errors
/// [`Error::Config`] for an unsupported scheme or a bad URL, [`Error::ObjectStore`] when the
/// store cannot be set up (a local directory that cannot be created, incomplete S3 settings).
pub fn open(cfg: &StorageConfig, data_dir: &Path) -> Result<Objects> {
    if cfg.url.is_empty() {
        return local(data_dir);
    }
    let url = url::Url::parse(&cfg.url)
        .map_err(|e| Error::Config(format!("storage.url {:?} is not a URL: {e} (expected file:///path or s3://bucket/prefix)", cfg.url)))?;
    match url.scheme() {
        "file" => {
            let path = url.to_file_path().map_err(|()| Error::Config(format!("storage.url {:?} is not an absolute file path", cfg.url)))?;
            local(&path)
        }
        "s3" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| Error::Config(format!("storage.url {:?} names no bucket (expected s3://bucket/prefix)", cfg.url)))?;
            let store = s3(bucket, &cfg.s3)?;
            let prefix = url.path().trim_matches('/');
            let store: Arc<dyn ObjectStore> =
                if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix.to_string())) };
            Ok(Objects { store, location: cfg.url.clone(), local_root: None })
        }
        other => Err(Error::Config(format!("storage.url scheme {other:?} is not supported (expected file or s3)"))),
    }
}

fn local(dir: &Path) -> Result<Objects> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Config(format!("creating storage directory {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().map_err(|e| Error::Config(format!("resolving storage directory {}: {e}", dir.display())))?;
    let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| Error::ObjectStore {
        op: "open",
        path: dir.display().to_string(),
        source: e,
    })?;
    Ok(Objects { store: Arc::new(store), location: format!("file://{}", dir.display()), local_root: Some(dir) })
}

fn s3(bucket: &str, c: &S3Config) -> Result<object_store::aws::AmazonS3> {
    // from_env reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    // AWS_ENDPOINT_URL and friends; explicit settings override them.
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_allow_http(c.allow_http);
    if !c.endpoint.is_empty() {
        b = b.with_endpoint(&c.endpoint);
    }
    if !c.region.is_empty() {
        b = b.with_region(&c.region);
    }
    if !c.access_key_id.is_empty() {
        b = b.with_access_key_id(&c.access_key_id);
    }
    if !c.secret_access_key.is_empty() {
        b = b.with_secret_access_key(&c.secret_access_key);
    }
    b = b.with_virtual_hosted_style_request(c.virtual_hosted_style);
    b.build().map_err(|e| Error::ObjectStore { op: "configure S3", path: format!("s3://{bucket}"), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(&StorageConfig::default(), dir.path()).unwrap();
        assert!(o.location.starts_with("file:///"), "{}", o.location);
        let cfg = StorageConfig { url: format!("file://{}/blocks", dir.path().display()), ..Default::default() };
        open(&cfg, Path::new("/nonexistent")).unwrap();
        assert!(dir.path().join("blocks").is_dir());
        for (url, want) in [("gs://b/p", "not supported"), ("s3:///p", "names no bucket"), ("not a url", "is not a URL")] {
            let cfg = StorageConfig { url: url.into(), ..Default::default() };
            let e = open(&cfg, dir.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
        let cfg = StorageConfig {
            url: "s3://bucket/some/prefix".into(),
            s3: S3Config { endpoint: "http://127.0.0.1:1".into(), region: "us-east-1".into(), allow_http: true, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(open(&cfg, dir.path()).unwrap().location, "s3://bucket/some/prefix");
    }
}
