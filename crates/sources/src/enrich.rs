//! The node's identity, and stamping it on every resource: `host.name`, `host.id`,
//! `k8s.pod.name`, `k8s.namespace.name`, `k8s.node.name` (from the Kubernetes Downward API
//! environment) and `skein.agent.version`. What the app already set is never overwritten.

use serde::{Deserialize, Serialize};
use skein_otlp::proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use skein_otlp::proto::resource::v1::Resource;

/// The agent's version, stamped as `skein.agent.version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Overrides of the detected identity; an empty value means "detect".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// `host.name`; detected from the kernel's host name.
    pub host_name: String,
    /// `host.id`; detected from `/etc/machine-id`.
    pub host_id: String,
    /// `k8s.pod.name`; detected from `K8S_POD_NAME` (or `POD_NAME`).
    pub k8s_pod_name: String,
    /// `k8s.namespace.name`; detected from `K8S_NAMESPACE_NAME` (or `K8S_POD_NAMESPACE`, `POD_NAMESPACE`).
    pub k8s_namespace_name: String,
    /// `k8s.node.name`; detected from `K8S_NODE_NAME` (or `NODE_NAME`).
    pub k8s_node_name: String,
}

/// The attributes stamped on every record, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    attrs: Vec<(&'static str, String)>,
}

fn first(cfg: &str, env: &dyn Fn(&str) -> Option<String>, vars: &[&str]) -> Option<String> {
    if !cfg.is_empty() {
        return Some(cfg.to_string());
    }
    vars.iter().filter_map(|v| env(v)).map(|v| v.trim().to_string()).find(|v| !v.is_empty())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl NodeIdentity {
    /// The identity from `cfg`, then the environment (through `env`), then the system.
    pub fn detect(cfg: &NodeConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut attrs = Vec::new();
        let host = first(&cfg.host_name, env, &[]).or_else(|| read_trimmed("/proc/sys/kernel/hostname")).or_else(|| env("HOSTNAME"));
        if let Some(h) = host {
            attrs.push(("host.name", h));
        }
        if let Some(id) = first(&cfg.host_id, env, &[]).or_else(|| read_trimmed("/etc/machine-id")) {
            attrs.push(("host.id", id));
        }
        for (key, cfg, vars) in [
            ("k8s.pod.name", &cfg.k8s_pod_name, &["K8S_POD_NAME", "POD_NAME"][..]),
            ("k8s.namespace.name", &cfg.k8s_namespace_name, &["K8S_NAMESPACE_NAME", "K8S_POD_NAMESPACE", "POD_NAMESPACE"][..]),
            ("k8s.node.name", &cfg.k8s_node_name, &["K8S_NODE_NAME", "NODE_NAME"][..]),
        ] {
            if let Some(v) = first(cfg, env, vars) {
                attrs.push((key, v));
            }
        }
        attrs.push(("skein.agent.version", AGENT_VERSION.to_string()));
        Self { attrs }
    }

    /// The node's name as the collector derives it: `host.name`, else `k8s.pod.name`.
    pub fn node(&self) -> &str {
        self.get("host.name").or_else(|| self.get("k8s.pod.name")).unwrap_or("unknown_node")
    }

    /// One attribute's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// The attributes, in stamping order.
    pub fn attributes(&self) -> &[(&'static str, String)] {
        &self.attrs
    }

    /// Adds every attribute `resource` does not have yet (creating the resource if absent).
    pub fn stamp(&self, resource: &mut Option<Resource>) {
        let r = resource.get_or_insert_with(Resource::default);
        for (k, v) in &self.attrs {
            if !r.attributes.iter().any(|a| a.key == *k) {
                r.attributes.push(KeyValue {
                    key: (*k).to_string(),
                    value: Some(AnyValue { value: Some(Value::StringValue(v.clone())) }),
                    ..Default::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_wins_then_the_downward_api_environment_and_app_values_are_kept() {
        let env = |k: &str| match k {
            "K8S_POD_NAME" => Some("checkout-7d9f-abcde".to_string()),
            "K8S_POD_NAMESPACE" => Some("shop".to_string()),
            "NODE_NAME" => Some("worker-3".to_string()),
            _ => None,
        };
        let cfg = NodeConfig { host_name: "web-1".into(), host_id: "abc123".into(), ..Default::default() };
        let id = NodeIdentity::detect(&cfg, &env);
        assert_eq!(id.get("host.name"), Some("web-1"));
        assert_eq!(id.get("host.id"), Some("abc123"));
        assert_eq!(id.get("k8s.pod.name"), Some("checkout-7d9f-abcde"));
        assert_eq!(id.get("k8s.namespace.name"), Some("shop"));
        assert_eq!(id.get("k8s.node.name"), Some("worker-3"));
        assert_eq!(id.get("skein.agent.version"), Some(AGENT_VERSION));
        assert_eq!(id.node(), "web-1");
        let mut r = Some(Resource {
            attributes: vec![KeyValue {
                key: "host.name".into(),
                value: Some(AnyValue { value: Some(Value::StringValue("set-by-app".into())) }),
                ..Default::default()
            }],
            ..Default::default()
        });
        id.stamp(&mut r);
        let attrs = r.unwrap().attributes;
        assert_eq!(attrs.iter().filter(|a| a.key == "host.name").count(), 1);
        assert_eq!(attrs[0].value.as_ref().unwrap().value, Some(Value::StringValue("set-by-app".into())));
        assert!(attrs.iter().any(|a| a.key == "k8s.node.name"));
        let mut none = None;
        id.stamp(&mut none);
        assert_eq!(none.unwrap().attributes.len(), id.attributes().len());
    }

    #[test]
    fn without_overrides_the_system_is_asked() {
        let id = NodeIdentity::detect(&NodeConfig::default(), &|_| None);
        // this machine has a host name; no Kubernetes environment here
        assert!(id.get("host.name").is_some_and(|h| !h.is_empty()));
        assert_eq!(id.get("k8s.pod.name"), None);
    }
}
