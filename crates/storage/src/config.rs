//! Configuration of persistent storage: where blocks go, when the head is flushed, and how
//! blocks are compacted and expired. The collector embeds it as the `[storage]` table.

use serde::{Deserialize, Serialize};
use skein_core::{ByteSize, Duration};

/// Persistent storage: blocks on an object store, flush, compaction and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where blocks and the manifest live: `file:///var/lib/skein` or `s3://bucket/prefix`.
    /// Empty (the default) means the collector's `data_dir` on the local disk.
    pub url: String,
    /// S3 connection settings, used when `url` is `s3://…`. Each empty value falls back to
    /// the standard AWS environment variable (`AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub s3: S3Config,
    /// When the head becomes a block.
    pub flush: FlushConfig,
    /// Merging small blocks into larger ones.
    pub compaction: CompactionConfig,
    /// Blocks whose newest span is older than this are deleted; "0s" keeps everything.
    pub retention: Duration,
    /// Parquet layout of blocks.
    pub block: BlockConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            s3: S3Config::default(),
            flush: FlushConfig::default(),
            compaction: CompactionConfig::default(),
            retention: Duration::secs(14 * 24 * 3600),
            block: BlockConfig::default(),
        }
    }
}

/// S3-compatible object store settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible stores (MinIO, Ceph, R2, …); empty for AWS.
    pub endpoint: String,
    /// Region; empty means `AWS_REGION` or `us-east-1`.
    pub region: String,
    /// Access key id; empty means `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// Secret access key; empty means `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (local test servers).
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of `host/bucket` (AWS prefers it; most
    /// self-hosted servers want path style, the default).
    pub virtual_hosted_style: bool,
}

/// Flush thresholds: the head becomes a block when any one is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// Spans in the head.
    pub max_rows: u64,
    /// Estimated memory of the head.
    pub max_bytes: ByteSize,
    /// Age of the oldest span in the head (time since it was received).
    pub max_age: Duration,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self { max_rows: 1_000_000, max_bytes: ByteSize::mib(512), max_age: Duration::secs(300) }
    }
}

/// Compaction of small blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Run compaction at all.
    pub enabled: bool,
    /// How often to look for blocks to merge and blocks to expire.
    pub interval: Duration,
    /// Blocks smaller than this on disk are merged until a block reaches it.
    pub target_block_size: ByteSize,
    /// Most spans one merge reads into memory (bounds compaction memory: about 500 bytes per span).
    pub max_rows_per_merge: u64,
    /// How long a compacted or expired block stays readable after it left the manifest, so a
    /// query that planned to read it still can; longer than `query.sql_timeout`.
    pub delete_delay: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::secs(30),
            target_block_size: ByteSize::mib(64),
            max_rows_per_merge: 2_000_000,
            delete_delay: Duration::secs(300),
        }
    }
}

/// Parquet layout of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    /// Rows per row group, at least (a group ends at the next trace boundary, so a trace is
    /// in one group unless it is longer than the group). Larger groups repeat each column's
    /// metadata and dictionary less often (with about 90 columns, 16,384 -> 65,536 rows saved
    /// 1.1 B/span in `blockbench`), smaller ones keep the dictionary pages a trace lookup
    /// decodes small (a lookup there: p50 4.4 ms at 16,384 rows, 5.5 ms at 65,536).
    pub row_group_rows: usize,
    /// Rows per data page at most: smaller pages make trace-by-id read less, larger ones compress better.
    pub page_rows: usize,
    /// zstd level (1–22).
    pub zstd_level: i32,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self { row_group_rows: 65_536, page_rows: 4096, zstd_level: 3 }
    }
}
