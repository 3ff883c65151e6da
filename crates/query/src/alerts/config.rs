//! The `[alerts]` section of the collector's configuration, and its validation into typed
//! [`Rule`]s. Rules are read as flat tables (`kind` plus the fields of that kind) so that a
//! mistake is reported with the rule's position, its name and the field, not as a bare serde
//! error.

use serde::{Deserialize, Serialize};
use skein_core::Duration;
use std::collections::HashSet;

/// Alert rules, how often they are evaluated, and where transitions are sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often every rule is evaluated.
    pub interval: Duration,
    /// Where each firing and resolved transition is POSTed as JSON; no webhook when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// The rules (`[[alerts.rules]]`).
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { interval: Duration::secs(15), webhook: None, rules: Vec::new() }
    }
}

/// The webhook that receives `{"status": "firing"|"resolved", "alert": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the transitions are POSTed to.
    pub url: String,
    /// Time limit of one POST, connection included.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { url: String::new(), timeout: Duration::secs(5) }
    }
}

/// One `[[alerts.rules]]` table as written. Which fields apply depends on `kind`; see
/// [`AlertsConfig::validate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Unique name of the rule, reported with every alert.
    pub name: String,
    /// `replica_lag`, `error_rate`, `latency_p99` or `node_silent`.
    pub kind: String,
    /// error_rate, latency_p99: the service whose SERVER and CONSUMER spans are the requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// latency_p99: only spans of this operation (span name); all operations when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// node_silent: only this node; every node that has sent data when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// replica_lag: fires when a replica's latest lag is above this many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above_seconds: Option<f64>,
    /// error_rate: fires when more than this percentage of the requests failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above_percent: Option<f64>,
    /// latency_p99: fires when the 99th percentile of request durations is above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub above: Option<Duration>,
    /// error_rate, latency_p99: the window the requests are taken from (default 5m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How long the condition must hold before the alert fires (default 0s: at once).
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<Duration>,
    /// node_silent: fires when a node has sent nothing for this long (default 2m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
}

/// The kinds of rule, and the fields each takes.
const KINDS: [(&str, &[&str]); 4] = [
    ("replica_lag", &["above_seconds", "for"]),
    ("error_rate", &["service", "above_percent", "window", "for"]),
    ("latency_p99", &["service", "operation", "above", "window", "for"]),
    ("node_silent", &["node", "after"]),
];

/// Window of error_rate and latency_p99 when not given.
pub const DEFAULT_WINDOW: Duration = Duration::secs(300);
/// `after` of node_silent when not given.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::secs(120);

/// What a rule checks, with its thresholds.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The latest lag of any replica above `above_seconds`.
    ReplicaLag {
        /// Threshold in seconds.
        above_seconds: f64,
    },
    /// The share of failed requests of `service` over `window_ns`.
    ErrorRate {
        /// The service.
        service: String,
        /// Threshold in percent.
        above_percent: f64,
        /// Window (ns).
        window_ns: i64,
    },
    /// The 99th percentile of request durations of `service` (and `operation`) over `window_ns`.
    LatencyP99 {
        /// The service.
        service: String,
        /// Only this operation.
        operation: Option<String>,
        /// Threshold (ns).
        above_ns: i64,
        /// Window (ns).
        window_ns: i64,
    },
    /// A node that has sent nothing for `after_ns`.
    NodeSilent {
        /// Only this node.
        node: Option<String>,
        /// Silence that fires (ns).
        after_ns: i64,
    },
}

impl Check {
    /// The `kind` this check was configured with.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ReplicaLag { .. } => "replica_lag",
            Self::ErrorRate { .. } => "error_rate",
            Self::LatencyP99 { .. } => "latency_p99",
            Self::NodeSilent { .. } => "node_silent",
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// How long the condition must hold before the alert fires (ns).
    pub hold_ns: i64,
    /// What it checks.
    pub check: Check,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.0.as_nanos()).unwrap_or(i64::MAX)
}

impl RuleConfig {
    /// The names of the optional fields that are set.
    fn present(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (set, name) in [
            (self.service.is_some(), "service"),
            (self.operation.is_some(), "operation"),
            (self.node.is_some(), "node"),
            (self.above_seconds.is_some(), "above_seconds"),
            (self.above_percent.is_some(), "above_percent"),
            (self.above.is_some(), "above"),
            (self.window.is_some(), "window"),
            (self.hold.is_some(), "for"),
            (self.after.is_some(), "after"),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }

    fn validate(&self) -> Result<Rule, String> {
        if self.name.trim().is_empty() {
            return Err("name is required: every rule needs a unique name".into());
        }
        let names: Vec<&str> = KINDS.iter().map(|k| k.0).collect();
        let Some((kind, fields)) = KINDS.iter().find(|k| k.0 == self.kind) else {
            let what = if self.kind.is_empty() { "kind is required".to_string() } else { format!("kind = {:?} is unknown", self.kind) };
            return Err(format!("{what}: expected one of {}", names.join(", ")));
        };
        for f in self.present() {
            if !fields.contains(&f) {
                return Err(format!("{f} does not apply to kind {kind} (it takes {})", fields.join(", ")));
            }
        }
        let positive = |field: &str, d: Option<Duration>, default: Duration| {
            let d = d.unwrap_or(default);
            if d.0.is_zero() {
                Err(format!("{field} = \"{d}\": expected a positive duration such as \"30s\" or \"5m\""))
            } else {
                Ok(ns(d))
            }
        };
        let service = || match self.service.as_deref().map(str::trim) {
            None => Err(format!("kind {kind} needs service (the service.name whose requests are measured)")),
            Some("") => Err("service is empty: expected a service.name".to_string()),
            Some(s) => Ok(s.to_string()),
        };
        let check = match *kind {
            "replica_lag" => {
                let above_seconds = self.above_seconds.ok_or("kind replica_lag needs above_seconds (the lag in seconds that fires)")?;
                if !above_seconds.is_finite() || above_seconds < 0.0 {
                    return Err(format!("above_seconds = {above_seconds}: expected a number of seconds, 0 or more"));
                }
                Check::ReplicaLag { above_seconds }
            }
            "error_rate" => {
                let service = service()?;
                let above_percent =
                    self.above_percent.ok_or("kind error_rate needs above_percent (the share of failed requests that fires)")?;
                if !(0.0..=100.0).contains(&above_percent) {
                    return Err(format!("above_percent = {above_percent}: expected a percentage from 0 to 100"));
                }
                Check::ErrorRate { service, above_percent, window_ns: positive("window", self.window, DEFAULT_WINDOW)? }
            }
            "latency_p99" => {
                let service = service()?;
                let above = self.above.ok_or("kind latency_p99 needs above (the p99 duration that fires, e.g. \"500ms\")")?;
                let operation = match self.operation.as_deref().map(str::trim) {
                    Some("") => return Err("operation is empty: expected a span name, or leave it out for all operations".into()),
                    o => o.map(str::to_string),
                };
                Check::LatencyP99 {
                    service,
                    operation,
                    above_ns: positive("above", Some(above), above)?,
                    window_ns: positive("window", self.window, DEFAULT_WINDOW)?,
                }
            }
            _ => {
                let node = match self.node.as_deref().map(str::trim) {
                    Some("") => return Err("node is empty: expected a node name, or leave it out for every node".into()),
                    n => n.map(str::to_string),
                };
                Check::NodeSilent { node, after_ns: positive("after", self.after, DEFAULT_SILENT_AFTER)? }
            }
        };
        Ok(Rule { name: self.name.trim().to_string(), hold_ns: self.hold.map_or(0, ns), check })
    }
}

impl AlertsConfig {
    /// The rules, validated and typed.
    ///
    /// # Errors
    /// A message naming the rule (`alerts.rules[i]` and its name) and the field: a missing or
    /// unknown kind, a field that does not apply to the kind, a missing threshold, a value out
    /// of range, a duplicate name; or a bad `interval` or `webhook.url`.
    pub fn validate(&self) -> Result<Vec<Rule>, String> {
        if self.interval.0.is_zero() {
            return Err(format!("alerts.interval = \"{}\": expected a positive duration such as \"15s\"", self.interval));
        }
        if let Some(w) = &self.webhook {
            let rest = w.url.strip_prefix("http://").or_else(|| w.url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(format!("alerts.webhook.url = {:?}: expected an http:// or https:// URL with a host", w.url));
            }
            if w.timeout.0.is_zero() {
                return Err(format!("alerts.webhook.timeout = \"{}\": expected a positive duration such as \"5s\"", w.timeout));
            }
        }
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let at = if r.name.trim().is_empty() { format!("alerts.rules[{i}]") } else { format!("alerts.rules[{i}] ({:?})", r.name) };
            let rule = r.validate().map_err(|e| format!("{at}: {e}"))?;
            if !names.insert(rule.name.clone()) {
                return Err(format!("{at}: name {:?} is used by an earlier rule; rule names must be unique", rule.name));
            }
            out.push(rule);
        }
        Ok(out)
    }
}
