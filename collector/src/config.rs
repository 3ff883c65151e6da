//! The collector's configuration: every key, its default, and its documentation. The file
//! `config/collector.example.toml` shows all of them and a test keeps the two in step.

use serde::{Deserialize, Serialize};
pub use skein_core::config::LogConfig;
use skein_core::{ByteSize, Duration};
use std::path::PathBuf;

/// Top-level collector configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Directory for the write-ahead log, and for blocks unless `storage.url` points elsewhere.
    pub data_dir: PathBuf,
    /// OTLP ingest.
    pub otlp: OtlpConfig,
    /// Query API.
    pub query: QueryConfig,
    /// Write-ahead log.
    pub wal: WalConfig,
    /// In-memory head.
    pub head: HeadConfig,
    /// Blocks on the local disk or S3: flush, compaction, retention.
    pub storage: skein_storage::StorageConfig,
    /// Alert rules, their evaluation interval and the webhook that hears of transitions.
    pub alerts: skein_query::alerts::AlertsConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./skein-data"),
            otlp: OtlpConfig::default(),
            query: QueryConfig::default(),
            wal: WalConfig::default(),
            head: HeadConfig::default(),
            storage: skein_storage::StorageConfig::default(),
            alerts: skein_query::alerts::AlertsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// OTLP receivers and input limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address.
    pub grpc_addr: String,
    /// OTLP/HTTP listen address.
    pub http_addr: String,
    /// Largest accepted request body (HTTP, compressed and inflated) or gRPC message: 413 past it.
    pub max_body_size: ByteSize,
    /// Attributes kept per span, event and link; the rest are dropped and counted.
    pub max_attributes_per_span: usize,
    /// Longest string or bytes attribute value; longer ones are truncated and counted.
    pub max_attribute_value_len: usize,
    /// Request bytes decoded or waiting for the WAL at once (at least one max_body_size);
    /// past it ingest answers 429 / RESOURCE_EXHAUSTED with a short retry hint.
    pub max_inflight_bytes: ByteSize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "0.0.0.0:4317".into(),
            http_addr: "0.0.0.0:4318".into(),
            max_body_size: ByteSize::mib(20),
            max_attributes_per_span: 128,
            max_attribute_value_len: 4096,
            max_inflight_bytes: ByteSize::mib(256),
        }
    }
}

/// Query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Listen address of the query API, Jaeger API and ops endpoints.
    pub addr: String,
    /// Largest clock-skew correction `?adjust=skew` applies; larger ones are reported, not applied.
    pub max_clock_skew_adjustment: Duration,
    /// Time limit of one SQL query (`POST /api/v1/sql`).
    pub sql_timeout: Duration,
    /// Memory limit of one SQL query's operators (sorts, aggregations, joins).
    pub sql_memory_limit: ByteSize,
    /// Rows one SQL answer returns at most (`"truncated": true` when cut).
    pub sql_max_rows: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:16686".into(),
            max_clock_skew_adjustment: Duration::secs(60),
            sql_timeout: Duration::secs(30),
            sql_memory_limit: ByteSize::mib(512),
            sql_max_rows: 10_000,
        }
    }
}

/// When the WAL syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSync {
    /// fdatasync (group commit) before every acknowledgement: acked means durable.
    Always,
    /// Leave syncing to the OS: a machine crash can lose acked data. For benchmarks only.
    Never,
}

/// Write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Sync policy: "always" (default) or "never".
    pub sync: WalSync,
    /// A segment file is closed and a new one started past this size.
    pub segment_size: ByteSize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self { sync: WalSync::Always, segment_size: ByteSize::mib(64) }
    }
}

/// In-memory head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Estimated memory of the heads (the one taking spans and those being flushed) past which
    /// ingest answers 429 / RESOURCE_EXHAUSTED.
    pub memory_limit: ByteSize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { memory_limit: ByteSize::gib(2) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_and_toml_round_trip_are_the_default() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/collector.example.toml");
        skein_core::config::check_example_and_default::<CollectorConfig>(&example, "SKEIN_").unwrap();
    }

    #[test]
    fn env_and_overrides_layer() {
        let env = vec![("SKEIN_HEAD__MEMORY_LIMIT".to_string(), "2GiB".to_string()), ("SKEIN_WAL__SYNC".into(), "never".into())];
        let c: CollectorConfig = skein_core::config::load(None, env, "SKEIN_", &["head.memory_limit=3GiB".into()]).unwrap();
        assert_eq!(c.head.memory_limit, ByteSize::gib(3));
        assert_eq!(c.wal.sync, WalSync::Never);
        let e = skein_core::config::load::<CollectorConfig>(None, Vec::new(), "SKEIN_", &["otlp.max_body=1".into()]).unwrap_err();
        assert!(e.to_string().contains("max_body"), "{e}");
        let c: CollectorConfig = skein_core::config::load(None, Vec::new(), "SKEIN_", &["alerts.interval=1m".into()]).unwrap();
        assert_eq!(c.alerts.interval, Duration::secs(60));
    }
}
