//! The configuration of the `replica_lag` source: one [`ProbeConfig`] per server, and the DSN
//! parsing and redaction the probes share.

use super::postgres;
use serde::{Deserialize, Serialize};
use skein_core::Duration;
use std::fmt;

/// The `replica_lag` section of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaLagConfig {
    /// The servers to probe; none by default.
    pub probes: Vec<ProbeConfig>,
}

/// Which database a probe talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// PostgreSQL 10 or later.
    Postgresql,
    /// MySQL 5.7+/8 or MariaDB.
    Mysql,
    /// Redis 5 or later.
    Redis,
}

impl System {
    /// The `db.system` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
        }
    }
}

/// The role a probe expects of its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ask the server and report whatever it is.
    #[default]
    Auto,
    /// The server must be a primary; a replica is reported as an error.
    Primary,
    /// The server must be a replica; a primary is reported as an error.
    Replica,
}

/// One probed server.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Label of the probe's series (`skein.probe.name`) and of its messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `postgresql`, `mysql` or `redis`.
    pub system: System,
    /// Where and as whom to connect. PostgreSQL: a libpq URL or key=value string
    /// (`host=127.0.0.1 port=5432 user=skein dbname=postgres`); MySQL:
    /// `mysql://user:password@host:3306`; Redis: `redis://[[user]:password@]host:6379`.
    /// Percent-encode reserved characters of a password in a URL. No TLS.
    pub dsn: String,
    /// Time between two checks.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// `auto`, `primary` or `replica`.
    #[serde(default)]
    pub role: Role,
    /// Bound of one check: connecting and all its queries.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::secs(10)
}

fn default_timeout() -> Duration {
    Duration::secs(5)
}

impl ProbeConfig {
    /// A probe of `system` at `dsn` with the default interval, role and timeout.
    pub fn new(system: System, dsn: impl Into<String>) -> Self {
        Self { name: None, system, dsn: dsn.into(), interval: default_interval(), role: Role::Auto, timeout: default_timeout() }
    }

    /// The probe's name, or its system and address when it has none (never the password).
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}:{}", self.system.as_str(), address_of(self).map_or_else(|_| "?".into(), |(h, p)| host_port(&h, p))),
        }
    }
}

impl fmt::Debug for ProbeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeConfig")
            .field("name", &self.name)
            .field("system", &self.system)
            .field("dsn", &redact_dsn(&self.dsn))
            .field("interval", &self.interval)
            .field("role", &self.role)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The `(host, port)` a probe connects to.
pub(super) fn address_of(cfg: &ProbeConfig) -> Result<(String, u16), String> {
    match cfg.system {
        System::Postgresql => postgres::address(&cfg.dsn),
        System::Redis => parse_url(&cfg.dsn, &["redis"], 6379).map(|u| (u.host, u.port)),
        System::Mysql => parse_url(&cfg.dsn, &["mysql", "mariadb"], 3306).map(|u| (u.host, u.port)),
    }
}

pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// A `scheme://[user[:password]@]host[:port][/path]` URL, percent-decoded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct UrlParts {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub path: String,
}

fn percent_decode(s: &str, what: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(v) = hex else { return Err(format!("the {what} has a % not followed by two hex digits")) };
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

pub(super) fn parse_url(dsn: &str, schemes: &[&str], default_port: u16) -> Result<UrlParts, String> {
    let dsn = dsn.trim();
    let Some((scheme, rest)) = dsn.split_once("://") else { return Err(format!("not a {}:// URL", schemes[0])) };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        let tls = scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("mysqls");
        return Err(if tls {
            format!("{scheme}:// (TLS) is not supported")
        } else {
            format!("scheme {scheme:?} is not {}://", schemes[0])
        });
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("URL options (?...) are not supported".into());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (mut user, mut password) = (None, None);
    if let Some(u) = userinfo {
        let (name, pass) = match u.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (u, None),
        };
        if !name.is_empty() {
            user = Some(percent_decode(name, "user")?);
        }
        if let Some(p) = pass {
            password = Some(percent_decode(p, "password")?);
        }
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else { return Err("an IPv6 host lacks its closing ]".into()) };
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected {after:?} after the IPv6 host")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok(UrlParts { user, password, host: host.to_string(), port, path: percent_decode(path, "path")? })
}

/// `dsn` with its password replaced by `***` (URL or libpq key=value form).
pub fn redact_dsn(dsn: &str) -> String {
    if let Some((scheme, rest)) = dsn.split_once("://") {
        // The last `@` before the path; a password may itself hold `/` or `@`, so look up to
        // the last `@` of all when the first `/` comes before it.
        let end = rest.find('/').unwrap_or(rest.len());
        let end = rest.rfind('@').map_or(end, |at| end.max(at + 1));
        if let Some(at) = rest[..end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
        // libpq URLs may also carry ?password=...
        if let Some(q) = rest.find("password=") {
            let tail = rest[q..].find('&').map_or("", |a| &rest[q + a..]);
            return format!("{scheme}://{}password=***{tail}", &rest[..q]);
        }
        return dsn.to_string();
    }
    // key = value pairs: mask the value of `password`, quoted or not.
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(i) = rest.find("password") {
        out.push_str(&rest[..i + "password".len()]);
        let after = &rest[i + "password".len()..];
        let trimmed = after.trim_start();
        let Some(v) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        let v = v.trim_start();
        let len = if let Some(q) = v.strip_prefix('\'') {
            let mut end = q.len();
            let mut esc = false;
            for (j, c) in q.char_indices() {
                match c {
                    _ if esc => esc = false,
                    '\\' => esc = true,
                    '\'' => {
                        end = j + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end.min(q.len())
        } else {
            v.find(char::is_whitespace).unwrap_or(v.len())
        };
        out.push_str("=***");
        rest = &v[len.min(v.len())..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_keys() {
        let c: ReplicaLagConfig = toml::from_str(
            "[[probes]]\nsystem = \"redis\"\ndsn = \"redis://127.0.0.1:6379\"\n\n[[probes]]\nname = \"orders\"\nsystem = \"postgresql\"\ndsn = \"host=db port=5433 user=skein\"\ninterval = \"30s\"\nrole = \"replica\"\ntimeout = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.probes[0], ProbeConfig::new(System::Redis, "redis://127.0.0.1:6379"));
        assert_eq!(c.probes[1].interval, Duration::secs(30));
        assert_eq!(c.probes[1].role, Role::Replica);
        assert_eq!(c.probes[1].timeout, Duration::secs(2));
        assert_eq!(c.probes[1].label(), "orders");
        assert_eq!(c.probes[0].label(), "redis:127.0.0.1:6379");
        let round: ReplicaLagConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        let e =
            toml::from_str::<ReplicaLagConfig>("[[probes]]\nsystem = \"redis\"\ndsn = \"redis://h\"\nintervall = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("intervall"), "{e}");
        let e = toml::from_str::<ReplicaLagConfig>("[[probes]]\nsystem = \"oracle\"\ndsn = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("oracle"), "{e}");
    }

    #[test]
    fn urls_parse_and_passwords_are_redacted() {
        let u = parse_url("redis://:p%40ss@10.0.0.1:6380/0", &["redis"], 6379).unwrap();
        assert_eq!((u.user, u.password.as_deref(), u.host.as_str(), u.port), (None, Some("p@ss"), "10.0.0.1", 6380));
        let u = parse_url("mysql://root:pw@[::1]/app", &["mysql"], 3306).unwrap();
        assert_eq!((u.user.as_deref(), u.host.as_str(), u.port, u.path.as_str()), (Some("root"), "::1", 3306, "app"));
        assert!(parse_url("http://h", &["redis"], 1).is_err());
        assert!(parse_url("redis://", &["redis"], 1).unwrap_err().contains("no host"));
        assert_eq!(redact_dsn("mysql://root:s3cret@h:3306/db"), "mysql://root:***@h:3306/db");
        assert_eq!(redact_dsn("mysql://root:pa/ss@h:3306/db"), "mysql://root:***@h:3306/db", "a / in the password");
        assert_eq!(redact_dsn("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_dsn("host=h password = 'a b\\' c' user=u"), "host=h password=*** user=u");
        assert_eq!(redact_dsn("host=h password=x"), "host=h password=***");
        assert_eq!(redact_dsn("postgres://h/db?password=x&sslmode=disable"), "postgres://h/db?password=***&sslmode=disable");
        let mut c = ProbeConfig::new(System::Mysql, "mysql://root:s3cret@h");
        c.name = Some("n".into());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
