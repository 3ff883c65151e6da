//! Layered configuration: a TOML file, then `SKEIN_*` environment variables, then
//! command-line `--set key=value` overrides; later layers win. Unknown keys are errors that
//! name the key, because a misspelt key silently ignored is a production incident.
//!
//! Environment variables map onto keys by stripping the prefix, lowercasing and reading a
//! double underscore as a section separator: `SKEIN_HEAD__MEMORY_LIMIT=2GiB` sets
//! `head.memory_limit`. A variable without a double underscore is read only when it names a
//! top-level key (`SKEIN_DATA_DIR`); any other is ignored, because Kubernetes injects
//! `<SERVICE>_PORT`, `<SERVICE>_SERVICE_HOST`, … for every Service, and a Service called
//! `skein` must not stop the collector from starting.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    /// An override was not `key=value`.
    #[error("invalid override {0:?}: expected key.path=value")]
    Override(String),
    /// An override tried to set a key inside a value that is not a table.
    #[error("cannot set {key}: {parent} is not a table")]
    NotATable { key: String, parent: String },
    /// The merged configuration does not fit the schema (unknown key, wrong type).
    #[error("invalid configuration{}: {message}", origin.as_deref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Invalid { origin: Option<String>, message: String },
}

/// Loads `T` from an optional TOML file, the environment variables starting with `env_prefix`
/// (`SKEIN_` normally), and explicit `key.path=value` overrides, in that order.
///
/// # Errors
/// Fails on an unreadable file, invalid TOML, or a key or value the schema does not accept.
pub fn load<T: DeserializeOwned + serde::Serialize + Default>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    env_prefix: &str,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut root = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            text.parse::<toml::Table>().map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?
        }
        None => toml::Table::new(),
    };
    let top_level: Vec<String> = toml::Table::try_from(T::default()).map(|t| t.keys().cloned().collect()).unwrap_or_default();
    let mut origins = Vec::new();
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix(env_prefix) {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if rest.is_empty() || !(rest.contains("__") || top_level.contains(&key)) {
                continue;
            }
            set_path(&mut root, &key, &v)?;
            origins.push(format!("{k} -> {key}"));
        }
    }
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| ConfigError::Override(o.clone()))?;
        set_path(&mut root, k.trim(), v.trim())?;
    }
    T::deserialize(toml::Value::Table(root)).map_err(|e| ConfigError::Invalid {
        origin: if origins.is_empty() {
            file.map(|p| p.display().to_string())
        } else {
            Some(format!(
                "file {}, environment {}",
                file.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
                origins.join(", ")
            ))
        },
        message: e.to_string().trim().to_string(),
    })
}

/// Reads a scalar written on the command line or in the environment as the TOML value it
/// most plausibly is: a bool, an integer, a float, an array/inline table, else a string.
fn parse_scalar(v: &str) -> toml::Value {
    if let Some(val) = format!("x = {v}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("x")) {
        return val;
    }
    toml::Value::String(v.to_string())
}

fn set_path(root: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::NotATable { key: key.to_string(), parent: parts[..=i].join(".") })?;
    }
    table.insert(parts[parts.len() - 1].to_string(), parse_scalar(value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, serde::Serialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        limit: u64,
        name: String,
    }

    #[derive(Debug, Deserialize, serde::Serialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        head: Inner,
        flag: bool,
    }

    #[test]
    fn later_layers_win() {
        let dir = std::env::temp_dir().join(format!("skein-core-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "flag = false\n[head]\nlimit = 1\nname = \"file\"\n").unwrap();
        let env = vec![("SKEIN_HEAD__LIMIT".to_string(), "2".to_string()), ("OTHER".into(), "x".into())];
        let c: Cfg = load(Some(&f), env, "SKEIN_", &["head.name=flag".into(), "flag=true".into()]).unwrap();
        assert_eq!(c, Cfg { head: Inner { limit: 2, name: "flag".into() }, flag: true });
    }

    #[test]
    fn environment_without_a_section_is_read_only_for_top_level_keys() {
        // What Kubernetes injects for a Service named `skein` or `skein-collector`.
        let env = vec![
            ("SKEIN_PORT".to_string(), "tcp://10.0.0.1:4317".to_string()),
            ("SKEIN_COLLECTOR_SERVICE_HOST".into(), "10.0.0.1".into()),
            ("SKEIN_FLAG".into(), "true".into()),
        ];
        let c: Cfg = load(None, env, "SKEIN_", &[]).unwrap();
        assert_eq!(c, Cfg { head: Inner::default(), flag: true });
        let e = load::<Cfg>(None, vec![("SKEIN_HEAD__LIMT".to_string(), "1".to_string())], "SKEIN_", &[]).unwrap_err();
        assert!(e.to_string().contains("limt"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load::<Cfg>(None, vec![], "SKEIN_", &["head.limt=3".into()]).unwrap_err();
        assert!(e.to_string().contains("limt"), "{e}");
    }
}

/// Logging, the same section in every binary's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level or filter (`info`, `debug`, `skein_storage=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// For tests of a binary's example file: loads `example` (no environment, no overrides) and
/// serialises the default through TOML and back; both must equal `T::default()`.
///
/// # Errors
/// Which of the two differs, and how.
pub fn check_example_and_default<T>(example: &Path, env_prefix: &str) -> Result<(), String>
where
    T: DeserializeOwned + serde::Serialize + Default + PartialEq + std::fmt::Debug,
{
    let loaded: T = load(Some(example), Vec::new(), env_prefix, &[]).map_err(|e| e.to_string())?;
    if loaded != T::default() {
        return Err(format!("{} differs from the defaults:\n{loaded:#?}\nvs\n{:#?}", example.display(), T::default()));
    }
    let text = toml::to_string(&T::default()).map_err(|e| e.to_string())?;
    let back: T = toml::from_str(&text).map_err(|e| e.to_string())?;
    if back != T::default() {
        return Err(format!("the default does not round-trip through TOML:\n{text}"));
    }
    Ok(())
}
