//! The manifest: the list of a tenant's blocks, and how far the WAL is covered by them.
//!
//! # Layout in the object store
//! ```text
//! tenants/<tenant>/manifest.json           this file (JSON, rewritten whole on every change)
//! tenants/<tenant>/spans/<block id>.parquet one block per flush or compaction
//! tenants/<tenant>/logs/<block id>.parquet  one block per flush (logs)
//! tenants/<tenant>/metrics/<block id>.parquet one block per flush (metrics)
//! ```
//!
//! # Invariants
//! - A block is visible to queries only once the manifest lists it. A block file is written
//!   (and made durable) before the manifest that lists it, so a listed block always exists.
//! - `wal_flushed_before` names the first WAL segment whose records are *not* all in listed
//!   blocks, for the WAL `wal_id`. Replay skips the earlier segments of that WAL, so a crash
//!   between writing the manifest and truncating the WAL does not load the flushed spans a
//!   second time. A different WAL (an empty local disk over an existing bucket) skips nothing.
//! - A block removed by compaction or retention is moved to `pending_deletes` in the same
//!   manifest write that removes it, and its file is deleted only after `delete_after_unix_ms`,
//!   so a query that planned to read it can still finish. A crash at any point of a flush, a
//!   compaction or an expiry therefore leaves every span listed exactly once.
//! - Files under `spans/`, `logs/` and `metrics/` that are neither listed nor pending are leftovers of a crash before
//!   the manifest write and are deleted on start-up.
//!
//! The manifest is small (a few hundred bytes per block) and replaced with a single PUT, which
//! both S3 and the local file system (write to a temporary file, rename) make atomic.

use crate::error::{Error, Result};
use crate::objstore::Objects;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format version written by this code.
pub const VERSION: u32 = 1;

/// What the manifest says about one block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Unique id; also the file name.
    pub id: String,
    /// Object path, relative to the store's root.
    pub path: String,
    /// Spans in the block.
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Earliest span start (Unix ns).
    pub min_start_ns: i64,
    /// Latest span start (Unix ns).
    pub max_start_ns: i64,
    /// Latest span end (Unix ns): retention expires a block by it.
    pub max_end_ns: i64,
    /// 0 for a flushed head, one more than the highest input for a compacted block.
    pub level: u32,
    /// When the block was written (Unix ms).
    pub created_unix_ms: u64,
    /// service → (operation, span kind) pairs in the block, so the services API needs no file.
    #[serde(default)]
    pub operations: BTreeMap<String, Vec<(String, i8)>>,
    /// The block's columns beyond the table's stored schema (for spans: `parent_offset` and
    /// the `attr:` columns of `skein_columnar::spans::layout`), so a query can plan over
    /// every block without opening one. Empty for blocks written before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
}

/// A block file waiting to be deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingDelete {
    /// Object path.
    pub path: String,
    /// Not before this time (Unix ms).
    pub delete_after_unix_ms: u64,
}

/// The manifest of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Incremented on every write.
    pub generation: u64,
    /// Identity of the WAL `wal_flushed_before` refers to.
    pub wal_id: String,
    /// Segments of that WAL below this one are entirely in listed blocks.
    pub wal_flushed_before: u64,
    /// The `spans` blocks, oldest first.
    pub blocks: Vec<BlockMeta>,
    /// The `logs` blocks, oldest first. Their `*_start_ns` and `max_end_ns` are record times.
    #[serde(default)]
    pub logs: Vec<BlockMeta>,
    /// The `metrics` blocks, oldest first, as `logs`.
    #[serde(default)]
    pub metrics: Vec<BlockMeta>,
    /// Every node whose records were flushed, with its statistics (all-time: retention
    /// removes blocks, not the fact that a node sent data).
    #[serde(default)]
    pub nodes: crate::signal_head::NodeMap,
    /// Block files removed from the list, to delete later.
    pub pending_deletes: Vec<PendingDelete>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            version: VERSION,
            generation: 0,
            wal_id: String::new(),
            wal_flushed_before: 0,
            blocks: Vec::new(),
            logs: Vec::new(),
            metrics: Vec::new(),
            nodes: crate::signal_head::NodeMap::new(),
            pending_deletes: Vec::new(),
        }
    }
}

/// Object path of a tenant's manifest.
pub fn manifest_path(tenant: &str) -> Path {
    Path::from(format!("tenants/{tenant}/manifest.json"))
}

/// Object path prefix of a tenant's span blocks.
pub fn spans_dir(tenant: &str) -> Path {
    Path::from(format!("tenants/{tenant}/spans"))
}

/// Object path prefix of a tenant's blocks of `table` (`spans`, `logs`, `metrics`).
pub fn table_dir(tenant: &str, table: &str) -> Path {
    Path::from(format!("tenants/{tenant}/{table}"))
}

impl Manifest {
    /// Reads the manifest of `tenant`; an absent one is an empty manifest.
    ///
    /// # Errors
    /// The store failed, or the manifest does not parse or has a newer version.
    pub async fn load(objects: &Objects, tenant: &str) -> Result<Self> {
        let path = manifest_path(tenant);
        let bytes = match objects.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|source| Error::ObjectStore { op: "reading", path: path.to_string(), source })?,
            Err(object_store::Error::NotFound { .. }) => return Ok(Self::default()),
            Err(source) => return Err(Error::ObjectStore { op: "reading", path: path.to_string(), source }),
        };
        let m: Self = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Manifest { path: path.to_string(), message: format!("does not parse: {e}") })?;
        if m.version > VERSION {
            return Err(Error::Manifest {
                path: path.to_string(),
                message: format!("version {} is newer than this collector understands ({VERSION})", m.version),
            });
        }
        Ok(m)
    }

    /// Writes the manifest (with the generation incremented) and makes it durable.
    ///
    /// # Errors
    /// The store failed; the previous manifest is then still the valid one.
    pub async fn store(&mut self, objects: &Objects, tenant: &str) -> Result<()> {
        self.generation += 1;
        let path = manifest_path(tenant);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Manifest { path: path.to_string(), message: e.to_string() })?;
        objects.store.put(&path, bytes.into()).await.map_err(|source| Error::ObjectStore {
            op: "writing",
            path: path.to_string(),
            source,
        })?;
        objects.sync(&path)
    }

    /// Rows in listed blocks.
    pub fn rows(&self) -> u64 {
        self.blocks.iter().map(|b| b.rows).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_absent() {
        let dir = tempfile::tempdir().unwrap();
        let objects = crate::objstore::open(&crate::StorageConfig::default(), dir.path()).unwrap();
        assert_eq!(Manifest::load(&objects, "t").await.unwrap(), Manifest::default());
        let mut m = Manifest { wal_id: "w".into(), wal_flushed_before: 3, ..Default::default() };
        m.store(&objects, "t").await.unwrap();
        let back = Manifest::load(&objects, "t").await.unwrap();
        assert_eq!(back, m);
        assert_eq!(back.generation, 1);
        std::fs::write(dir.path().join("tenants/t/manifest.json"), b"{\"version\": 99}").unwrap();
        let e = Manifest::load(&objects, "t").await.unwrap_err().to_string();
        assert!(e.contains("does not parse") || e.contains("newer"), "{e}");
    }
}
