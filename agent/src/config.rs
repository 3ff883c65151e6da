//! The agent's configuration: every key, its default, and its documentation. The file
//! `config/agent.example.toml` shows all of them and a test keeps the two in step.

use serde::{Deserialize, Serialize};
pub use skein_core::config::LogConfig;
use skein_core::{ByteSize, Duration};
use skein_exporter::ExporterConfig;
use skein_sources::enrich::NodeConfig;
use skein_sources::file_tail::FileTailConfig;
use skein_sources::prom_scrape::PromTarget;
use skein_sources::replica_lag::ReplicaLagConfig;
use std::path::PathBuf;

/// Top-level agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Directory of the queue (one sub-directory per collector) and `listen.json`.
    pub data_dir: PathBuf,
    /// How long a SIGTERM waits for the exporters to push what is queued; the rest stays
    /// queued for the next start.
    pub shutdown_timeout: Duration,
    /// OTLP receiver for the apps on this node.
    pub otlp: OtlpConfig,
    /// Admin endpoints.
    pub admin: AdminConfig,
    /// Node identity overrides (empty values are detected).
    pub node: NodeConfig,
    /// The disk-backed queue.
    pub queue: QueueConfig,
    /// Pushing to the collector(s).
    pub exporter: ExporterConfig,
    /// The node's CPU, memory, load, network and disk figures.
    pub host_metrics: HostMetricsConfig,
    /// Log files read as they grow.
    pub file_tail: FileTailConfig,
    /// `[[prom_scrape]]`: local Prometheus endpoints forwarded as OTLP metrics.
    pub prom_scrape: Vec<PromTarget>,
    /// `[[replica_lag.probes]]`: PostgreSQL, MySQL/MariaDB and Redis replication probes.
    pub replica_lag: ReplicaLagConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The `host_metrics` source (`skein_sources::host_metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostMetricsConfig {
    /// Time between scrapes of `/proc`; `0s` turns the source off.
    pub interval: Duration,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        Self { interval: Duration::secs(30) }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./skein-agent-data"),
            shutdown_timeout: Duration::secs(10),
            otlp: OtlpConfig::default(),
            admin: AdminConfig::default(),
            node: NodeConfig::default(),
            queue: QueueConfig::default(),
            exporter: ExporterConfig::default(),
            host_metrics: HostMetricsConfig::default(),
            file_tail: FileTailConfig::default(),
            prom_scrape: Vec::new(),
            replica_lag: ReplicaLagConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// OTLP receiver and input limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address (an SDK's default endpoint is `localhost:4317`).
    pub grpc_addr: String,
    /// OTLP/HTTP listen address (an SDK's default endpoint is `http://localhost:4318`).
    pub http_addr: String,
    /// Largest accepted request body (HTTP, compressed and inflated) or gRPC message: 413 past it.
    pub max_body_size: ByteSize,
    /// Attributes kept per span, event and link; the rest are dropped and counted.
    pub max_attributes_per_span: usize,
    /// Longest string or bytes attribute value; longer ones are truncated.
    pub max_attribute_value_len: usize,
    /// Request bytes decoded, stamped or queued at once (at least one max_body_size); past it
    /// exports get 429 / RESOURCE_EXHAUSTED with a short retry hint.
    pub max_inflight_bytes: ByteSize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:4317".into(),
            http_addr: "127.0.0.1:4318".into(),
            max_body_size: ByteSize::mib(20),
            max_attributes_per_span: 128,
            max_attribute_value_len: 4096,
            max_inflight_bytes: ByteSize::mib(64),
        }
    }
}

/// Admin endpoints: `/healthz`, `/readyz`, `/metrics`, `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address.
    pub addr: String,
    /// How often the agent pushes its own queue gauges to the collector as OTLP metrics
    /// (`skein.agent.queue.bytes`, ...); `0s` turns it off.
    pub report_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { addr: "127.0.0.1:13133".into(), report_interval: Duration::secs(15) }
    }
}

/// When the queue syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueSync {
    /// fdatasync before an app gets its answer: acknowledged data survives a machine crash.
    Always,
    /// Leave syncing to the OS: acknowledged data survives an agent crash, not a machine crash.
    Never,
}

/// The disk-backed queue (one per collector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Disk cap of each collector's queue; past it the oldest undelivered data is dropped,
    /// counted in `/metrics` and logged.
    pub max_bytes: ByteSize,
    /// Segment file size (at most a quarter of `max_bytes`).
    pub segment_size: ByteSize,
    /// "always" (default) or "never".
    pub sync: QueueSync,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_bytes: ByteSize::gib(1), segment_size: ByteSize::mib(16), sync: QueueSync::Always }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_and_toml_round_trip_are_the_default() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.example.toml");
        skein_core::config::check_example_and_default::<AgentConfig>(&example, "SKEIN_AGENT_").unwrap();
    }

    #[test]
    fn env_and_overrides_layer() {
        let env = vec![("SKEIN_AGENT_QUEUE__SYNC".to_string(), "never".to_string())];
        let sets = ["exporter.endpoints=[\"http://a:4317\",\"http://b:4317\"]".to_string(), "node.host_name=web-9".into()];
        let c: AgentConfig = skein_core::config::load(None, env, "SKEIN_AGENT_", &sets).unwrap();
        assert_eq!(c.queue.sync, QueueSync::Never);
        assert_eq!(c.exporter.endpoints, vec!["http://a:4317".to_string(), "http://b:4317".into()]);
        assert_eq!(c.node.host_name, "web-9");
        let e = skein_core::config::load::<AgentConfig>(None, Vec::new(), "SKEIN_AGENT_", &["queue.max=1".into()]).unwrap_err();
        assert!(e.to_string().contains("max"), "{e}");
    }

    /// The sidecar example's ConfigMap and environment load as they are written.
    #[test]
    fn kubernetes_sidecar_example_loads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let yaml = std::fs::read_to_string(root.join("k8s-sidecar.yaml")).unwrap();
        let toml_text: String = yaml
            .lines()
            .skip_while(|l| !l.trim_end().ends_with("agent.toml: |"))
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, toml_text).unwrap();
        let value_of = |name: &str| -> String {
            let mut lines = yaml.lines().skip_while(|l| !l.contains(&format!("name: {name}")));
            lines.next();
            let v = lines.next().unwrap().trim().strip_prefix("value: ").unwrap();
            v.trim_matches('\'').to_string()
        };
        let env = ["SKEIN_AGENT_EXPORTER__ENDPOINTS", "SKEIN_AGENT_DATA_DIR"].map(|k| (k.to_string(), value_of(k)));
        let c: AgentConfig = skein_core::config::load(Some(&file), env, "SKEIN_AGENT_", &[]).unwrap();
        assert_eq!(c.exporter.endpoints, vec!["http://skein-collector.observability.svc:4317".to_string()]);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/skein-agent"));
        assert_eq!(c.admin.addr, "0.0.0.0:13133");
        assert_eq!(c.shutdown_timeout, Duration::secs(20));
        assert_eq!(c.file_tail.inputs[0].include, vec!["/var/log/app/*.log".to_string()]);
        c.file_tail.validate().unwrap();
        // the agent is a native sidecar: an init container that keeps running, gating the app
        // on its startup probe
        let agent_entry = yaml.split("  initContainers:\n").nth(1).and_then(|r| r.split("  containers:\n").next()).unwrap();
        assert!(agent_entry.contains("- name: skein-agent") && agent_entry.contains("restartPolicy: Always"), "{agent_entry}");
        assert!(agent_entry.contains("startupProbe:"), "{agent_entry}");
        // the systemd unit runs the agent with a config file and its state directory
        let unit = std::fs::read_to_string(root.join("skein-agent.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/skein-agent --config /etc/skein/agent.toml --data-dir /var/lib/skein-agent run"));
        assert!(unit.contains("StateDirectory=skein-agent"));
    }
}
