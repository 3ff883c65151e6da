//! Redis probe: a few lines of RESP over one TCP connection (optional `AUTH`, then
//! `INFO replication`), every read bounded by [`MAX_REPLY_BYTES`]. [`parse_info`] and
//! [`observations`] work on text, tested without a server.

use super::{Failure, MAX_REPLY_BYTES, Observation, ServerRole, State, Status, UrlParts, host_port};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A Redis probe's connection.
pub(super) struct Redis {
    url: UrlParts,
    conn: Option<BufReader<TcpStream>>,
    /// What the current check waits for, named in a timeout.
    pub(super) stage: &'static str,
}

/// A RESP2 reply (arrays are never asked for).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply of at most `max` bytes.
pub(super) async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R, max: usize, query: &'static str) -> Result<Reply, Failure> {
    let proto = |message: String| Failure::Protocol { query, message };
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    (&mut *r).take(limit).read_until(b'\n', &mut line).await.map_err(|e| Failure::io(query, &e))?;
    if line.is_empty() {
        return Err(Failure::Connect(format!("the server closed the connection during {query}")));
    }
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return Err(proto(if line.len() >= max {
            format!("reply line longer than {max} bytes")
        } else {
            "reply line without CRLF".into()
        }));
    };
    let Some((&kind, rest)) = body.split_first() else { return Err(proto("an empty reply line".into())) };
    let text = String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Simple(text)),
        b'-' => Ok(Reply::Error(text)),
        b':' => text.parse().map(Reply::Int).map_err(|_| proto(format!("bad integer {text:?}"))),
        b'$' => {
            let n: i64 = text.parse().map_err(|_| proto(format!("bad bulk length {text:?}")))?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max {
                return Err(proto(format!("a reply of {n} bytes is over the limit of {max}")));
            }
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf).await.map_err(|e| Failure::io(query, &e))?;
            if !buf.ends_with(b"\r\n") {
                return Err(proto("bulk string without its CRLF".into()));
            }
            buf.truncate(n);
            Ok(Reply::Bulk(Some(buf)))
        }
        b => Err(proto(format!("unexpected reply type {:?}", char::from(b)))),
    }
}

impl Redis {
    pub(super) fn new(url: UrlParts) -> Self {
        Self { url, conn: None, stage: "connect" }
    }

    /// Drops the connection; the next check opens a new one.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    async fn call(conn: &mut BufReader<TcpStream>, args: &[&str], query: &'static str) -> Result<Reply, Failure> {
        conn.get_mut().write_all(&command(args)).await.map_err(|e| Failure::io(query, &e))?;
        read_reply(conn, MAX_REPLY_BYTES, query).await
    }

    pub(super) async fn check(&mut self) -> Result<Status, Failure> {
        if self.conn.is_none() {
            self.stage = "connect";
            let stream = TcpStream::connect((self.url.host.as_str(), self.url.port)).await.map_err(|e| Failure::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let mut conn = BufReader::new(stream);
            if let Some(pass) = &self.url.password {
                self.stage = "AUTH";
                let mut args = vec!["AUTH"];
                if let Some(u) = &self.url.user {
                    args.push(u);
                }
                args.push(pass);
                match Self::call(&mut conn, &args, "AUTH").await? {
                    Reply::Simple(_) => {}
                    Reply::Error(e) => return Err(Failure::Auth(e)),
                    other => return Err(Failure::Protocol { query: "AUTH", message: format!("{other:?}") }),
                }
            }
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else { return Err(Failure::Connect("no connection".into())) };
        self.stage = "INFO replication";
        let text = match Self::call(conn, &["INFO", "replication"], "INFO replication").await? {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            Reply::Error(e) if e.starts_with("NOAUTH") || e.starts_with("WRONGPASS") => return Err(Failure::Auth(e)),
            Reply::Error(message) => return Err(Failure::Query { query: "INFO replication", message }),
            other => {
                return Err(Failure::Protocol { query: "INFO replication", message: format!("expected a bulk string, got {other:?}") });
            }
        };
        observations(&parse_info(&text), &host_port(&self.url.host, self.url.port))
    }
}

/// One `slaveN:` line of a primary.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Replica {
    pub ip: String,
    pub port: u16,
    pub state: String,
    pub offset: u64,
    pub lag: Option<f64>,
}

/// The fields of `INFO replication` the probe uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Info {
    pub role: String,
    pub master_repl_offset: Option<u64>,
    pub replicas: Vec<Replica>,
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    pub master_link_status: Option<String>,
    pub master_last_io_seconds_ago: Option<i64>,
    pub master_link_down_since_seconds: Option<i64>,
    pub master_sync_in_progress: bool,
    pub slave_repl_offset: Option<u64>,
    pub slave_read_repl_offset: Option<u64>,
}

/// Parses the text of `INFO replication` (unknown and malformed lines are skipped).
pub(super) fn parse_info(text: &str) -> Info {
    let mut info = Info::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        match k {
            "role" => info.role = v.to_string(),
            "master_repl_offset" => info.master_repl_offset = v.parse().ok(),
            "master_host" => info.master_host = Some(v.to_string()),
            "master_port" => info.master_port = v.parse().ok(),
            "master_link_status" => info.master_link_status = Some(v.to_string()),
            "master_last_io_seconds_ago" => info.master_last_io_seconds_ago = v.parse().ok(),
            "master_link_down_since_seconds" => info.master_link_down_since_seconds = v.parse().ok(),
            "master_sync_in_progress" => info.master_sync_in_progress = v == "1",
            "slave_repl_offset" => info.slave_repl_offset = v.parse().ok(),
            "slave_read_repl_offset" => info.slave_read_repl_offset = v.parse().ok(),
            _ if k.starts_with("slave") && k[5..].bytes().all(|b| b.is_ascii_digit()) && k.len() > 5 => {
                let mut r = Replica::default();
                for field in v.split(',') {
                    match field.split_once('=') {
                        Some(("ip", x)) => r.ip = x.to_string(),
                        Some(("port", x)) => r.port = x.parse().unwrap_or(0),
                        Some(("state", x)) => r.state = x.to_string(),
                        Some(("offset", x)) => r.offset = x.parse().unwrap_or(0),
                        Some(("lag", x)) => r.lag = x.parse().ok(),
                        _ => {}
                    }
                }
                info.replicas.push(r);
            }
            _ => {}
        }
    }
    info
}

/// The replicas of a primary, or a replica's view of itself (see the module doc of
/// `replica_lag` for what each figure means).
pub(super) fn observations(info: &Info, addr: &str) -> Result<Status, Failure> {
    match info.role.as_str() {
        "master" => {
            let Some(top) = info.master_repl_offset else {
                return Err(Failure::Protocol { query: "INFO replication", message: "a primary without master_repl_offset".into() });
            };
            let observations = info
                .replicas
                .iter()
                .map(|r| Observation {
                    primary: Some(addr.to_string()),
                    replica: host_port(&r.ip, r.port),
                    state: if r.state == "online" { State::Streaming } else { State::Stopped },
                    lag_seconds: r.lag.map(|l| l.max(0.0)),
                    lag_bytes: Some(top.saturating_sub(r.offset)),
                    wal_lag: None,
                })
                .collect();
            Ok(Status { role: ServerRole::Primary, observations })
        }
        "slave" => {
            let up = info.master_link_status.as_deref() == Some("up");
            let seconds = if up { info.master_last_io_seconds_ago } else { info.master_link_down_since_seconds };
            let primary = match (&info.master_host, info.master_port) {
                (Some(h), Some(p)) => Some(host_port(h, p)),
                (Some(h), None) => Some(h.clone()),
                _ => None,
            };
            let bytes = match (info.slave_read_repl_offset, info.slave_repl_offset) {
                (Some(read), Some(applied)) => Some(read.saturating_sub(applied)),
                _ => None,
            };
            Ok(Status {
                role: ServerRole::Replica,
                observations: vec![Observation {
                    primary,
                    replica: addr.to_string(),
                    state: if up && !info.master_sync_in_progress { State::Streaming } else { State::Stopped },
                    lag_seconds: seconds.filter(|s| *s >= 0).map(|s| s as f64),
                    lag_bytes: bytes,
                    wal_lag: None,
                }],
            })
        }
        "" => Err(Failure::Protocol { query: "INFO replication", message: "no role line".into() }),
        other => Err(Failure::Unsupported(format!("Redis role {other:?} has no replication to report"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: &str = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
        slave0:ip=10.0.0.2,port=6380,state=online,offset=1000,lag=0\r\n\
        slave1:ip=10.0.0.3,port=6381,state=wait_bgsave,offset=0,lag=7\r\n\
        master_failover_state:no-failover\r\nmaster_replid:8d1c\r\nmaster_repl_offset:1500\r\n\
        second_repl_offset:-1\r\nrepl_backlog_active:1\r\n";

    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n\
        master_link_status:up\r\nmaster_last_io_seconds_ago:2\r\nmaster_sync_in_progress:0\r\n\
        slave_read_repl_offset:2100\r\nslave_repl_offset:2000\r\nslave_priority:100\r\n\
        slave_read_only:1\r\nreplica_announced:1\r\nconnected_slaves:0\r\nmaster_repl_offset:2000\r\n";

    #[test]
    fn a_primary_reports_each_replica_behind_its_offset() {
        let s = observations(&parse_info(PRIMARY), "db:6379").unwrap();
        assert_eq!(s.role, ServerRole::Primary);
        assert_eq!(s.observations.len(), 2);
        let (a, b) = (&s.observations[0], &s.observations[1]);
        assert_eq!((a.replica.as_str(), a.primary.as_deref(), a.state), ("10.0.0.2:6380", Some("db:6379"), State::Streaming));
        assert_eq!((a.lag_bytes, a.lag_seconds), (Some(500), Some(0.0)));
        assert_eq!((b.state, b.lag_bytes, b.lag_seconds), (State::Stopped, Some(1500), Some(7.0)));
    }

    #[test]
    fn a_replica_reports_its_link_and_its_unapplied_bytes() {
        let s = observations(&parse_info(REPLICA), "10.0.0.2:6380").unwrap();
        assert_eq!(s.role, ServerRole::Replica);
        assert_eq!(
            s.observations,
            vec![Observation {
                primary: Some("10.0.0.1:6379".into()),
                replica: "10.0.0.2:6380".into(),
                state: State::Streaming,
                lag_seconds: Some(2.0),
                lag_bytes: Some(100),
                wal_lag: None,
            }]
        );
        let down = REPLICA
            .replace("master_link_status:up", "master_link_status:down\r\nmaster_link_down_since_seconds:42")
            .replace("master_last_io_seconds_ago:2", "master_last_io_seconds_ago:-1")
            .replace("slave_read_repl_offset:2100\r\n", "");
        let o = &observations(&parse_info(&down), "r").unwrap().observations[0];
        assert_eq!((o.state, o.lag_seconds, o.lag_bytes), (State::Stopped, Some(42.0), None));
        let never = down.replace("master_link_down_since_seconds:42", "master_link_down_since_seconds:-1");
        assert_eq!(observations(&parse_info(&never), "r").unwrap().observations[0].lag_seconds, None);
    }

    #[test]
    fn odd_info_is_an_error_not_a_panic() {
        assert!(observations(&parse_info(""), "r").is_err());
        assert!(observations(&parse_info("role:sentinel\r\n"), "r").unwrap_err().to_string().contains("sentinel"));
        assert!(observations(&parse_info("role:master\r\n"), "r").is_err());
        let info = parse_info("role:master\r\nmaster_repl_offset:5\r\nslave0:garbage\r\nslaves:1\r\nslave:x\r\n");
        assert_eq!(info.replicas.len(), 1);
        let s = observations(&info, "r").unwrap();
        assert_eq!(s.observations[0].replica, ":0");
    }

    #[tokio::test]
    async fn replies_are_read_within_their_bounds() {
        let mut r: &[u8] = b"+OK\r\n-ERR wrong\r\n:12\r\n$5\r\nhello\r\n$-1\r\n";
        assert_eq!(read_reply(&mut r, 64, "t").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(read_reply(&mut r, 64, "t").await.unwrap(), Reply::Error("ERR wrong".into()));
        assert_eq!(read_reply(&mut r, 64, "t").await.unwrap(), Reply::Int(12));
        assert_eq!(read_reply(&mut r, 64, "t").await.unwrap(), Reply::Bulk(Some(b"hello".to_vec())));
        assert_eq!(read_reply(&mut r, 64, "t").await.unwrap(), Reply::Bulk(None));
        assert!(read_reply(&mut r, 64, "t").await.unwrap_err().to_string().contains("closed"));
        let mut big: &[u8] = b"$100000\r\n";
        assert!(read_reply(&mut big, 1024, "t").await.unwrap_err().to_string().contains("over the limit"));
        let long = vec![b'+'; 5000];
        assert!(read_reply(&mut long.as_slice(), 1024, "t").await.unwrap_err().to_string().contains("longer than"));
        let mut short: &[u8] = b"$10\r\nabc";
        assert!(read_reply(&mut short, 1024, "t").await.is_err());
        let mut odd: &[u8] = b"*2\r\n";
        assert!(read_reply(&mut odd, 1024, "t").await.is_err());
        assert_eq!(command(&["INFO", "replication"]), b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n");
    }
}
