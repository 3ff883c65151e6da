//! Alert rules (`[[alerts.rules]]`) evaluated against the query engine, and the alerts they
//! raise (`GET /api/v1/alerts`).
//!
//! Every `alerts.interval` the collector calls [`Evaluator::evaluate`] with the current time.
//! Each rule measures its input (replica lag from [`Engine::replica_lag`], a service's requests
//! from [`Engine::span_stats`], node silence from [`Engine::nodes_last_seen`]) and yields the
//! label sets for which its condition holds. Per (rule, labels) an alert is *pending* from the
//! first evaluation that sees the condition, *firing* once it has held for the rule's `for`, and
//! *resolved* at the first evaluation that no longer sees it; a pending alert whose condition
//! goes away is forgotten without a notice. `evaluate` returns the firing and resolved
//! transitions, which the collector sends to the webhook.
//!
//! A rule whose measurement fails keeps its alerts as they are (a failed query is not a
//! recovery). State is in memory: a restart forgets pending and resolved alerts, and firing
//! ones fire again after their `for`. Resolved alerts are kept for [`RESOLVED_RETENTION_NS`],
//! at most [`MAX_RESOLVED`] of them.

mod config;

pub use config::{AlertsConfig, Check, DEFAULT_SILENT_AFTER, DEFAULT_WINDOW, Rule, RuleConfig, WebhookConfig};

#[cfg(test)]
mod tests;

use crate::engine::replica_lag::ReplicaLagQuery;
use crate::engine::{Engine, QueryError};
use serde::Serialize;
use skein_core::metrics::{self, Counter};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// How long a resolved alert stays in `GET /api/v1/alerts`.
pub const RESOLVED_RETENTION_NS: i64 = 24 * 3600 * 1_000_000_000;
/// Resolved alerts kept at most; the oldest go first.
pub const MAX_RESOLVED: usize = 1000;
/// The window replica lag is read from at each evaluation.
const REPLICA_LOOKBACK_NS: i64 = 600 * 1_000_000_000;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition has held for the rule's `for` and still holds.
    Firing,
    /// The condition held and no longer does.
    Resolved,
}

/// Labels of an alert: what it is about (`service`, `node`, `replica`, …).
pub type Labels = BTreeMap<String, String>;

/// A firing or resolved alert, as `GET /api/v1/alerts` and the webhook show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// The rule's kind.
    pub kind: &'static str,
    /// What the alert is about.
    pub labels: Labels,
    /// Firing or resolved.
    pub state: AlertState,
    /// When it started firing (Unix ns).
    pub since: i64,
    /// When it resolved (Unix ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
    /// The latest measured value while it held (`unit`), `None` when there is none (a node
    /// that never sent data).
    pub value: Option<f64>,
    /// The rule's threshold (`unit`).
    pub threshold: f64,
    /// `s` or `%`.
    pub unit: &'static str,
    /// What holds, for a person.
    pub message: String,
}

/// A condition holding for one label set.
struct Hit {
    labels: Labels,
    value: Option<f64>,
    message: String,
    /// The condition cannot be judged now (a replica whose probe is unreachable): an alert
    /// already pending or firing for these labels stays as it is; none is started.
    unknown: bool,
}

/// An alert pending or firing.
struct Active {
    pending_since: i64,
    firing_since: Option<i64>,
    value: Option<f64>,
    message: String,
}

#[derive(Default)]
struct State {
    /// Pending and firing alerts by (rule index, labels).
    active: BTreeMap<(usize, Labels), Active>,
    /// Resolved alerts, oldest first.
    resolved: VecDeque<Alert>,
}

/// Evaluates the rules and keeps the alerts' state.
pub struct Evaluator {
    rules: Vec<Rule>,
    state: Mutex<State>,
    evaluations: Counter,
    failures: Counter,
}

/// `ns` for a person: `850ms`, `2.5s`, `3m 20s`.
fn human(ns: f64) -> String {
    let secs = ns / 1e9;
    if secs < 1.0 {
        format!("{:.0}ms", ns / 1e6)
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = secs.round() as u64;
        if s.is_multiple_of(60) { format!("{}m", s / 60) } else { format!("{}m {}s", s / 60, s % 60) }
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Rule {
    /// The threshold and its unit, as alerts report them.
    fn threshold(&self) -> (f64, &'static str) {
        match &self.check {
            Check::ReplicaLag { above_seconds } => (*above_seconds, "s"),
            Check::ErrorRate { above_percent, .. } => (*above_percent, "%"),
            Check::LatencyP99 { above_ns, .. } => (*above_ns as f64 / 1e9, "s"),
            Check::NodeSilent { after_ns, .. } => (*after_ns as f64 / 1e9, "s"),
        }
    }

    /// The label sets for which the condition holds at `now_ns`.
    async fn measure(&self, engine: &Engine, now_ns: i64) -> Result<Vec<Hit>, QueryError> {
        let mut hits = Vec::new();
        match &self.check {
            Check::ReplicaLag { above_seconds } => {
                let start_ns = now_ns.saturating_sub(REPLICA_LOOKBACK_NS);
                let q = ReplicaLagQuery { start_ns, end_ns: now_ns, step_ns: REPLICA_LOOKBACK_NS };
                for r in engine.replica_lag(&q, now_ns).await? {
                    // Labels without the primary: a replica whose WAL receiver is down reports none,
                    // and that must not end one alert and start another.
                    let labels = Labels::from([
                        ("system".to_string(), r.system.clone()),
                        ("replica".to_string(), r.replica.clone()),
                        ("node".to_string(), r.node.clone()),
                    ]);
                    // An unreachable replica has no current lag: whatever was said of it stands.
                    if r.state == "unreachable" {
                        hits.push(Hit { labels, value: None, message: String::new(), unknown: true });
                        continue;
                    }
                    let Some(lag) = r.lag_seconds.filter(|l| *l > *above_seconds) else { continue };
                    let of = if r.primary.is_empty() { String::new() } else { format!(" of {}", r.primary) };
                    let system = if r.system.is_empty() { "database" } else { r.system.as_str() };
                    let message = format!(
                        "{system} replica {}{of} (reported by {}) lags {} behind, above {}",
                        r.replica,
                        r.node,
                        human(lag * 1e9),
                        human(above_seconds * 1e9)
                    );
                    hits.push(Hit { labels, value: Some(lag), message, unknown: false });
                }
            }
            Check::ErrorRate { service, above_percent, window_ns } => {
                let s = engine.span_stats(service, None, now_ns.saturating_sub(*window_ns), now_ns).await?;
                let percent = if s.requests == 0 { 0.0 } else { s.errors as f64 * 100.0 / s.requests as f64 };
                if s.requests > 0 && percent > *above_percent {
                    let message = format!(
                        "service {service}: {percent:.1}% of {} requests failed in the last {}, above {above_percent}%",
                        s.requests,
                        human(*window_ns as f64)
                    );
                    hits.push(Hit {
                        labels: Labels::from([("service".to_string(), service.clone())]),
                        value: Some(percent),
                        message,
                        unknown: false,
                    });
                }
            }
            Check::LatencyP99 { service, operation, above_ns, window_ns } => {
                let s = engine.span_stats(service, operation.as_deref(), now_ns.saturating_sub(*window_ns), now_ns).await?;
                if let Some(p99) = s.p99_ns.filter(|p| *p > *above_ns as f64) {
                    let mut labels = Labels::from([("service".to_string(), service.clone())]);
                    let mut what = format!("service {service}");
                    if let Some(op) = operation {
                        labels.insert("operation".into(), op.clone());
                        what = format!("{what} operation {op}");
                    }
                    let message = format!(
                        "{what}: p99 latency {} over {} requests in the last {}, above {}",
                        human(p99),
                        s.requests,
                        human(*window_ns as f64),
                        human(*above_ns as f64)
                    );
                    hits.push(Hit { labels, value: Some(p99 / 1e9), message, unknown: false });
                }
            }
            Check::NodeSilent { node, after_ns } => {
                let nodes = engine.nodes_last_seen();
                if let Some(n) = node
                    && !nodes.iter().any(|(name, _)| name == n)
                {
                    let message = format!("node {n} has never sent data");
                    hits.push(Hit { labels: Labels::from([("node".to_string(), n.clone())]), value: None, message, unknown: false });
                }
                for (name, last_seen) in nodes {
                    let silent = now_ns.saturating_sub(last_seen);
                    if node.as_ref().is_some_and(|n| *n != name) || silent <= *after_ns {
                        continue;
                    }
                    let message = format!("node {name} has sent nothing for {}, above {}", human(silent as f64), human(*after_ns as f64));
                    hits.push(Hit {
                        labels: Labels::from([("node".to_string(), name)]),
                        value: Some(silent as f64 / 1e9),
                        message,
                        unknown: false,
                    });
                }
            }
        }
        Ok(hits)
    }

    fn alert(&self, labels: Labels, a: &Active, state: AlertState, since: i64, resolved_at: Option<i64>) -> Alert {
        let (threshold, unit) = self.threshold();
        Alert {
            rule: self.name.clone(),
            kind: self.check.kind(),
            labels,
            state,
            since,
            resolved_at,
            value: a.value,
            threshold,
            unit,
            message: a.message.clone(),
        }
    }
}

impl Evaluator {
    /// An evaluator of `rules` (validated by [`AlertsConfig::validate`]) with no alerts yet.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules, state: Mutex::default(), evaluations: Counter::default(), failures: Counter::default() }
    }

    /// The rules evaluated.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates every rule at `now_ns` and returns the alerts that started firing or resolved,
    /// in rule order. A rule whose measurement fails is logged and left as it was.
    pub async fn evaluate(&self, engine: &Engine, now_ns: i64) -> Vec<Alert> {
        // Measure first, then update the state at once: no lock is held across a query, and a
        // cancelled evaluation changes nothing.
        let mut measured = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            measured.push(rule.measure(engine, now_ns).await);
        }
        self.evaluations.inc();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut transitions = Vec::new();
        for (i, (rule, hits)) in self.rules.iter().zip(measured).enumerate() {
            let hits = match hits {
                Ok(h) => h,
                Err(e) => {
                    self.failures.inc();
                    tracing::warn!(rule = %rule.name, error = %e.message, "alert rule evaluation failed");
                    continue;
                }
            };
            let mut holding = HashSet::new();
            for hit in hits {
                if hit.unknown {
                    if st.active.contains_key(&(i, hit.labels.clone())) {
                        holding.insert(hit.labels);
                    }
                    continue;
                }
                let a = st.active.entry((i, hit.labels.clone())).or_insert(Active {
                    pending_since: now_ns,
                    firing_since: None,
                    value: None,
                    message: String::new(),
                });
                (a.value, a.message) = (hit.value, hit.message);
                if a.firing_since.is_none() && now_ns.saturating_sub(a.pending_since) >= rule.hold_ns {
                    a.firing_since = Some(now_ns);
                    transitions.push(rule.alert(hit.labels.clone(), a, AlertState::Firing, now_ns, None));
                }
                holding.insert(hit.labels);
            }
            let gone: Vec<(usize, Labels)> = st.active.keys().filter(|k| k.0 == i && !holding.contains(&k.1)).cloned().collect();
            for key in gone {
                let Some(a) = st.active.remove(&key) else { continue };
                if let Some(since) = a.firing_since {
                    let alert = rule.alert(key.1, &a, AlertState::Resolved, since, Some(now_ns));
                    transitions.push(alert.clone());
                    st.resolved.push_back(alert);
                }
            }
        }
        let horizon = now_ns.saturating_sub(RESOLVED_RETENTION_NS);
        while st.resolved.len() > MAX_RESOLVED || st.resolved.front().is_some_and(|a| a.resolved_at.unwrap_or(0) < horizon) {
            st.resolved.pop_front();
        }
        transitions
    }

    /// Firing alerts (the most recent first), then resolved ones (the most recently resolved
    /// first).
    pub fn alerts(&self) -> Vec<Alert> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut firing: Vec<Alert> = st
            .active
            .iter()
            .filter_map(|((i, labels), a)| {
                let since = a.firing_since?;
                Some(self.rules.get(*i)?.alert(labels.clone(), a, AlertState::Firing, since, None))
            })
            .collect();
        firing.sort_by(|a, b| b.since.cmp(&a.since).then_with(|| a.rule.cmp(&b.rule)));
        firing.extend(st.resolved.iter().rev().cloned());
        firing
    }

    /// Appends the Prometheus text of the alerts firing per rule and of the evaluations.
    pub fn render_metrics(&self, out: &mut String) {
        let mut firing = vec![0u64; self.rules.len()];
        for ((i, _), a) in &self.state.lock().unwrap_or_else(PoisonError::into_inner).active {
            if a.firing_since.is_some()
                && let Some(n) = firing.get_mut(*i)
            {
                *n += 1;
            }
        }
        metrics::header(out, "skein_alerts_firing", "gauge", "Alerts firing, by rule.");
        for (rule, n) in self.rules.iter().zip(firing) {
            metrics::sample(out, "skein_alerts_firing", &format!("rule=\"{}\",kind=\"{}\"", label_value(&rule.name), rule.check.kind()), n);
        }
        metrics::family(out, "skein_alert_evaluations_total", "counter", "Evaluations of the alert rules.", "", self.evaluations.get());
        metrics::family(
            out,
            "skein_alert_rule_failures_total",
            "counter",
            "Rule evaluations whose query failed (the rule's alerts were left as they were).",
            "",
            self.failures.get(),
        );
    }
}
