//! MySQL/MariaDB probe: a minimal client of the classic protocol, just enough to log in and
//! read `SHOW REPLICA STATUS` (falling back to `SHOW SLAVE STATUS`) as text.
//!
//! Handshake v10 with `mysql_native_password`, or `caching_sha2_password` when the server
//! has the user's password cached (its fast path); anything else (a full `caching_sha2_password`
//! exchange, `sha256_password`, the clear-text plugin) needs TLS or RSA, which this client does
//! not do, and fails with a message that says so. Every reply is bounded by
//! [`MAX_REPLY_BYTES`]. The byte-level pieces are plain functions, tested on fixed bytes.

use super::{Failure, MAX_REPLY_BYTES, Observation, ServerRole, State, Status, UrlParts, host_port};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_LONG_FLAG: u32 = 4;
const CLIENT_CONNECT_WITH_DB: u32 = 8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// utf8mb4_general_ci, known to MySQL 5.5.3+ and every MariaDB.
const CHARSET_UTF8MB4: u8 = 45;
const NATIVE: &str = "mysql_native_password";
const SHA2: &str = "caching_sha2_password";

/// A MySQL probe's connection.
pub(super) struct Mysql {
    url: UrlParts,
    conn: Option<BufReader<TcpStream>>,
    /// What the current check waits for, named in a timeout.
    pub(super) stage: &'static str,
}

/// What the server's first packet says.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Handshake {
    pub server_version: String,
    pub capabilities: u32,
    pub nonce: Vec<u8>,
    pub plugin: String,
}

/// A text result set.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// A server's ERR packet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ServerError {
    pub code: u16,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

/// Reads the bytes a packet promised, or says the packet is short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("packet ends {} bytes early", n - self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
    fn nul_str(&mut self) -> Result<&'a [u8], String> {
        let end = self.0.iter().position(|b| *b == 0).ok_or("a string without its NUL")?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }
    /// A length-encoded integer; `None` for the NULL marker 0xFB.
    fn lenenc(&mut self) -> Result<Option<u64>, String> {
        match self.u8()? {
            0xFB => Ok(None),
            0xFC => self.uint(2).map(Some),
            0xFD => self.uint(3).map(Some),
            0xFE => self.uint(8).map(Some),
            0xFF => Err("0xFF is not a length".into()),
            n => Ok(Some(u64::from(n))),
        }
    }
    fn lenenc_str(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.lenenc()? {
            None => Ok(None),
            Some(n) => self.take(usize::try_from(n).map_err(|_| "length too large")?).map(Some),
        }
    }
}

pub(super) fn parse_handshake(p: &[u8]) -> Result<Handshake, String> {
    let mut c = Cursor(p);
    let version = c.u8()?;
    if version != 10 {
        return Err(format!("protocol version {version}, expected 10"));
    }
    let server_version = String::from_utf8_lossy(c.nul_str()?).into_owned();
    c.take(4)?; // connection id
    let mut nonce = c.take(8)?.to_vec();
    c.take(1)?;
    let mut capabilities = u32::try_from(c.uint(2)?).unwrap_or(0);
    let mut plugin = NATIVE.to_string();
    if !c.0.is_empty() {
        c.take(1)?; // charset
        c.take(2)?; // status
        capabilities |= u32::try_from(c.uint(2)?).unwrap_or(0) << 16;
        let data_len = usize::from(c.u8()?);
        c.take(10)?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let n = data_len.saturating_sub(8).max(13).min(c.0.len());
            let part2 = c.take(n)?;
            nonce.extend_from_slice(part2.strip_suffix(&[0]).unwrap_or(part2));
        }
        if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            // some servers leave out the final NUL
            let end = c.0.iter().position(|b| *b == 0).unwrap_or(c.0.len());
            plugin = String::from_utf8_lossy(&c.0[..end]).into_owned();
        }
    }
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(format!("server {server_version} does not speak protocol 4.1"));
    }
    Ok(Handshake { server_version, capabilities, nonce, plugin })
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))`.
pub(super) fn scramble_native(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let s1 = Sha1::digest(password.as_bytes());
    let s2 = Sha1::digest(s1);
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(s2);
    xor(&s1, &h.finalize())
}

/// `SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce)`.
pub(super) fn scramble_sha2(password: &str, nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let s1 = Sha256::digest(password.as_bytes());
    let s2 = Sha256::digest(s1);
    let mut h = Sha256::new();
    h.update(s2);
    h.update(nonce);
    xor(&s1, &h.finalize())
}

/// The auth data for `plugin`, or why this client cannot use it.
fn auth_data(plugin: &str, password: &str, nonce: &[u8]) -> Result<Vec<u8>, Failure> {
    match plugin {
        NATIVE => Ok(scramble_native(password, nonce)),
        SHA2 => Ok(scramble_sha2(password, nonce)),
        other => Err(Failure::Unsupported(format!(
            "the server asks for the {other:?} authentication plugin, which needs TLS; \
             give the probe's user mysql_native_password or caching_sha2_password"
        ))),
    }
}

pub(super) fn handshake_response(h: &Handshake, user: &str, password: &str, db: &str) -> Result<(Vec<u8>, String), Failure> {
    // An unknown default plugin: answer as mysql_native_password; the server switches if needed.
    let plugin = if h.plugin == SHA2 { SHA2 } else { NATIVE };
    let auth = auth_data(plugin, password, &h.nonce)?;
    let mut caps = CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION;
    caps |= h.capabilities & CLIENT_PLUGIN_AUTH;
    if !db.is_empty() {
        caps |= h.capabilities & CLIENT_CONNECT_WITH_DB;
    }
    let mut p = Vec::with_capacity(64 + user.len() + db.len());
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(CHARSET_UTF8MB4);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(u8::try_from(auth.len()).unwrap_or(0));
    p.extend_from_slice(&auth);
    if caps & CLIENT_CONNECT_WITH_DB != 0 {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    if caps & CLIENT_PLUGIN_AUTH != 0 {
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
    }
    Ok((p, plugin.to_string()))
}

pub(super) fn parse_err(p: &[u8]) -> ServerError {
    let mut c = Cursor(p.get(1..).unwrap_or_default());
    let code = c.uint(2).ok().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
    let mut rest = c.0;
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        rest = &rest[6..];
    }
    ServerError { code, message: String::from_utf8_lossy(rest).into_owned() }
}

fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xFE) && p.len() < 9
}

async fn read_packet<R: AsyncRead + Unpin>(r: &mut R, seq: &mut u8, budget: &mut usize, query: &'static str) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await.map_err(|e| Failure::io(query, &e))?;
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        *seq = head[3].wrapping_add(1);
        // The header counts too, so that a stream of empty packets also runs out.
        if len + 4 > *budget {
            return Err(Failure::Protocol { query, message: format!("the reply is over the limit of {MAX_REPLY_BYTES} bytes") });
        }
        *budget -= len + 4;
        let start = out.len();
        out.resize(start + len, 0);
        r.read_exact(&mut out[start..]).await.map_err(|e| Failure::io(query, &e))?;
        if len < 0xFF_FFFF {
            return Ok(out);
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(w: &mut W, seq: u8, payload: &[u8], query: &'static str) -> Result<(), Failure> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l < 0xFF_FFFF)
        .ok_or(Failure::Protocol { query, message: "request too large".into() })?;
    let mut buf = Vec::with_capacity(payload.len() + 4);
    buf.extend_from_slice(&len.to_le_bytes()[..3]);
    buf.push(seq);
    buf.extend_from_slice(payload);
    w.write_all(&buf).await.map_err(|e| Failure::io(query, &e))?;
    w.flush().await.map_err(|e| Failure::io(query, &e))
}

/// Logs in on a fresh connection.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, user: &str, password: &str, db: &str) -> Result<(), Failure> {
    const Q: &str = "the login";
    let mut budget = MAX_REPLY_BYTES;
    let mut seq = 0u8;
    let first = read_packet(s, &mut seq, &mut budget, Q).await?;
    if first.first() == Some(&0xFF) {
        return Err(Failure::Connect(parse_err(&first).to_string()));
    }
    let h = parse_handshake(&first).map_err(|message| Failure::Protocol { query: "the server greeting", message })?;
    let (resp, mut plugin) = handshake_response(&h, user, password, db)?;
    write_packet(s, seq, &resp, Q).await?;
    // OK, ERR, an auth switch or more auth data; a few rounds at most.
    for _ in 0..4 {
        let p = read_packet(s, &mut seq, &mut budget, Q).await?;
        match p.first() {
            Some(0x00) => return Ok(()),
            Some(0xFF) => return Err(Failure::Auth(parse_err(&p).to_string())),
            Some(0xFE) => {
                let mut c = Cursor(&p[1..]);
                let name = c.nul_str().map_err(|_| Failure::Unsupported("the server asks for the pre-4.1 password scheme".into()))?;
                plugin = String::from_utf8_lossy(name).into_owned();
                let nonce = c.0.strip_suffix(&[0]).unwrap_or(c.0);
                let data = auth_data(&plugin, password, nonce)?;
                write_packet(s, seq, &data, Q).await?;
            }
            Some(0x01) if plugin == SHA2 => match p.get(1) {
                Some(3) => {} // fast path: the cached password matched; OK follows
                Some(4) => {
                    return Err(Failure::Unsupported(format!(
                        "caching_sha2_password needs a full authentication of {user:?} (the server has not cached its password), \
                         which needs TLS or RSA that this probe does not do; log that user in once with the mysql client \
                         so the server caches it, or give it mysql_native_password"
                    )));
                }
                other => return Err(Failure::Protocol { query: Q, message: format!("unexpected caching_sha2_password step {other:?}") }),
            },
            other => return Err(Failure::Protocol { query: Q, message: format!("unexpected packet type {other:?}") }),
        }
    }
    Err(Failure::Protocol { query: Q, message: "authentication did not finish".into() })
}

/// The result of a text query: rows, or the server's error.
async fn read_result<R: AsyncRead + Unpin>(r: &mut R, query: &'static str) -> Result<Result<ResultSet, ServerError>, Failure> {
    let proto = |message: String| Failure::Protocol { query, message };
    let mut budget = MAX_REPLY_BYTES;
    let mut seq = 0u8;
    let first = read_packet(r, &mut seq, &mut budget, query).await?;
    match first.first() {
        Some(0xFF) => return Ok(Err(parse_err(&first))),
        Some(0x00) => return Ok(Ok(ResultSet::default())),
        None => return Err(proto("an empty packet".into())),
        _ => {}
    }
    let n = Cursor(&first).lenenc().map_err(proto)?.ok_or_else(|| proto("no column count".into()))?;
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(4096);
    if n == 0 {
        return Err(proto("a result set of 0 columns".into()));
    }
    let mut rs = ResultSet::default();
    for _ in 0..n {
        let p = read_packet(r, &mut seq, &mut budget, query).await?;
        let mut c = Cursor(&p);
        for _ in 0..4 {
            c.lenenc_str().map_err(proto)?; // catalog, schema, table, org_table
        }
        let name = c.lenenc_str().map_err(proto)?.unwrap_or_default();
        rs.columns.push(String::from_utf8_lossy(name).into_owned());
    }
    let eof = read_packet(r, &mut seq, &mut budget, query).await?;
    if !is_eof(&eof) {
        return Err(proto("no EOF after the column definitions".into()));
    }
    loop {
        let p = read_packet(r, &mut seq, &mut budget, query).await?;
        if is_eof(&p) {
            return Ok(Ok(rs));
        }
        if p.first() == Some(&0xFF) {
            return Ok(Err(parse_err(&p)));
        }
        let mut c = Cursor(&p);
        let mut row = Vec::with_capacity(n);
        for _ in 0..n {
            row.push(c.lenenc_str().map_err(proto)?.map(|v| String::from_utf8_lossy(v).into_owned()));
        }
        rs.rows.push(row);
    }
}

async fn query<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sql: &'static str) -> Result<Result<ResultSet, ServerError>, Failure> {
    let mut p = Vec::with_capacity(sql.len() + 1);
    p.push(0x03); // COM_QUERY
    p.extend_from_slice(sql.as_bytes());
    write_packet(s, 0, &p, sql).await?;
    read_result(s, sql).await
}

impl Mysql {
    pub(super) fn new(url: UrlParts) -> Self {
        Self { url, conn: None, stage: "connect" }
    }

    /// Drops the connection; the next check opens a new one.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    pub(super) async fn check(&mut self) -> Result<Status, Failure> {
        if self.conn.is_none() {
            self.stage = "connect";
            let stream = TcpStream::connect((self.url.host.as_str(), self.url.port)).await.map_err(|e| Failure::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let mut conn = BufReader::new(stream);
            self.stage = "the login";
            let user = self.url.user.as_deref().unwrap_or_default();
            login(&mut conn, user, self.url.password.as_deref().unwrap_or_default(), &self.url.path).await?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else { return Err(Failure::Connect("no connection".into())) };
        self.stage = "SHOW REPLICA STATUS";
        let first = query(conn, "SHOW REPLICA STATUS").await?;
        let rs = match first {
            Ok(rs) if !rs.rows.is_empty() => rs,
            first => {
                // MariaDB before 10.5 and MySQL before 8.0.22 only know the old name; MySQL 8.4
                // only the new one.
                self.stage = "SHOW SLAVE STATUS";
                match (first, query(conn, "SHOW SLAVE STATUS").await?) {
                    (_, Ok(rs)) => rs,
                    (Ok(empty), Err(_)) => empty,
                    (Err(a), Err(b)) => {
                        let message = if a == b { a.to_string() } else { format!("{a}; {b}") };
                        return Err(Failure::Query { query: "SHOW REPLICA STATUS and SHOW SLAVE STATUS", message });
                    }
                }
            }
        };
        let addr = host_port(&self.url.host, self.url.port);
        if rs.rows.is_empty() {
            return Ok(Status { role: ServerRole::Primary, observations: Vec::new() });
        }
        Ok(Status { role: ServerRole::Replica, observations: replica_observations(&rs, &addr) })
    }
}

/// One replica per row (one row per replication channel).
pub(super) fn replica_observations(rs: &ResultSet, addr: &str) -> Vec<Observation> {
    let col = |names: &[&str]| rs.columns.iter().position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)));
    let (host, port) = (col(&["Source_Host", "Master_Host"]), col(&["Source_Port", "Master_Port"]));
    let (io, sql) = (col(&["Replica_IO_Running", "Slave_IO_Running"]), col(&["Replica_SQL_Running", "Slave_SQL_Running"]));
    let behind = col(&["Seconds_Behind_Source", "Seconds_Behind_Master"]);
    let (read_file, read_pos) = (col(&["Source_Log_File", "Master_Log_File"]), col(&["Read_Source_Log_Pos", "Read_Master_Log_Pos"]));
    let (exec_file, exec_pos) =
        (col(&["Relay_Source_Log_File", "Relay_Master_Log_File"]), col(&["Exec_Source_Log_Pos", "Exec_Master_Log_Pos"]));
    rs.rows
        .iter()
        .map(|row| {
            let get = |i: Option<usize>| i.and_then(|i| row.get(i)).and_then(|v| v.as_deref());
            let running = |i| get(i).is_some_and(|v| v.eq_ignore_ascii_case("yes"));
            let primary = get(host).filter(|h| !h.is_empty()).map(|h| match get(port).and_then(|p| p.parse::<u16>().ok()) {
                Some(p) => host_port(h, p),
                None => h.to_string(),
            });
            let num = |i| get(i).and_then(|v| v.parse::<u64>().ok());
            let lag_bytes = match (get(read_file), get(exec_file), num(read_pos), num(exec_pos)) {
                (Some(a), Some(b), Some(r), Some(e)) if a == b && !a.is_empty() => Some(r.saturating_sub(e)),
                _ => None,
            };
            Observation {
                primary,
                replica: addr.to_string(),
                state: if running(io) && running(sql) { State::Streaming } else { State::Stopped },
                lag_seconds: get(behind).and_then(|v| v.parse::<f64>().ok()),
                lag_bytes,
                wal_lag: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    fn lenenc_str(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }

    fn greeting(plugin: &str) -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"8.0.36\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        g.push(0);
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_WITH_DB;
        g.extend_from_slice(&(caps as u16).to_le_bytes());
        g.push(255);
        g.extend_from_slice(&[2, 0]);
        g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0; 10]);
        g.extend_from_slice(&[9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 0]);
        g.extend_from_slice(plugin.as_bytes());
        g.push(0);
        g
    }

    #[test]
    fn scrambles_match_the_servers_formulas() {
        let nonce: Vec<u8> = (1..=20).collect();
        // computed independently with Python's hashlib
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(scramble_native("secret", &nonce)), "b32bb3a583e1340c0a1108d58b1be49781ad8c2f");
        assert_eq!(hex(scramble_sha2("secret", &nonce)), "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9");
        assert!(scramble_native("", &nonce).is_empty());
    }

    #[test]
    fn the_greeting_is_parsed_and_answered() {
        let h = parse_handshake(&greeting("caching_sha2_password")).unwrap();
        assert_eq!(h.server_version, "8.0.36");
        assert_eq!(h.nonce, (1..=20).collect::<Vec<u8>>());
        assert_eq!(h.plugin, "caching_sha2_password");
        let (resp, plugin) = handshake_response(&h, "skein", "secret", "").unwrap();
        assert_eq!(plugin, "caching_sha2_password");
        let caps = u32::from_le_bytes(resp[..4].try_into().unwrap());
        assert_eq!(caps & CLIENT_CONNECT_WITH_DB, 0, "no database asked for");
        assert_ne!(caps & CLIENT_PLUGIN_AUTH, 0);
        assert_eq!(&resp[32..38], b"skein\0");
        assert_eq!(resp[38], 32, "a 32-byte SHA-256 scramble");
        assert!(resp.ends_with(b"caching_sha2_password\0"));
        assert!(parse_handshake(&[9, 0]).unwrap_err().contains("protocol version 9"));
        assert!(parse_handshake(&[10, b'x']).is_err(), "truncated, not a panic");
        assert!(handshake_response(&Handshake { plugin: "sha256_password".into(), ..h }, "u", "p", "").is_ok(), "answered as native");
    }

    #[tokio::test]
    async fn login_follows_an_auth_switch_and_reports_refusals() {
        // server: greeting, then a switch to native with a new nonce, then OK
        let switch: Vec<u8> = [&[0xFE][..], b"mysql_native_password\0", &[20u8; 20][..], &[0][..]].concat();
        let script = [packet(0, &greeting("caching_sha2_password")), packet(2, &switch), packet(4, &[0, 0, 0, 2, 0, 0, 0])].concat();
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(&script).await.unwrap();
        login(&mut client, "skein", "secret", "").await.unwrap();
        // what the client sent: the response (seq 1), then the native scramble of the new nonce (seq 3)
        drop(client);
        let mut sent = Vec::new();
        server.read_to_end(&mut sent).await.unwrap();
        let first_len = usize::from(sent[0]) | usize::from(sent[1]) << 8;
        assert_eq!(sent[3], 1);
        let second = &sent[4 + first_len..];
        assert_eq!((second[0], second[3]), (20, 3));
        assert_eq!(&second[4..], scramble_native("secret", &[20u8; 20]).as_slice());

        // access denied
        let err: Vec<u8> = [&[0xFF, 0x15, 0x04][..], b"#28000Access denied for user 'skein'"].concat();
        let script = [packet(0, &greeting("mysql_native_password")), packet(2, &err)].concat();
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(&script).await.unwrap();
        let e = login(&mut client, "skein", "bad", "").await.unwrap_err();
        assert_eq!(e.to_string(), "authentication failed: error 1045: Access denied for user 'skein'");

        // caching_sha2 without a cached entry
        let script = [packet(0, &greeting("caching_sha2_password")), packet(2, &[1, 4])].concat();
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(&script).await.unwrap();
        let e = login(&mut client, "skein", "pw", "").await.unwrap_err().to_string();
        assert!(e.contains("full authentication") && e.contains("TLS"), "{e}");
    }

    fn column(name: &str) -> Vec<u8> {
        [
            lenenc_str(b"def"),
            lenenc_str(b""),
            lenenc_str(b""),
            lenenc_str(b""),
            lenenc_str(name.as_bytes()),
            lenenc_str(b""),
            vec![0x0c, 0x21, 0, 0, 0, 0, 0xFD, 0, 0, 0, 0, 0],
        ]
        .concat()
    }

    fn result(cols: &[&str], rows: &[Vec<Option<&str>>]) -> Vec<u8> {
        let mut out = packet(1, &[cols.len() as u8]);
        let mut seq = 2;
        for c in cols {
            out.extend(packet(seq, &column(c)));
            seq += 1;
        }
        out.extend(packet(seq, &[0xFE, 0, 0, 2, 0]));
        seq += 1;
        for r in rows {
            let body: Vec<u8> = r.iter().flat_map(|v| v.map_or(vec![0xFB], |s| lenenc_str(s.as_bytes()))).collect();
            out.extend(packet(seq, &body));
            seq += 1;
        }
        out.extend(packet(seq, &[0xFE, 0, 0, 2, 0]));
        out
    }

    #[tokio::test]
    async fn result_sets_and_errors_are_read() {
        let bytes = result(&["a", "b"], &[vec![Some("1"), None], vec![Some(""), Some("x")]]);
        let rs = read_result(&mut bytes.as_slice(), "q").await.unwrap().unwrap();
        assert_eq!(rs.columns, vec!["a", "b"]);
        assert_eq!(rs.rows, vec![vec![Some("1".to_string()), None], vec![Some(String::new()), Some("x".to_string())]]);
        let err = packet(1, &[&[0xFF, 0x28, 0x04][..], b"#42000You have an error in your SQL syntax"].concat());
        let e = read_result(&mut err.as_slice(), "q").await.unwrap().unwrap_err();
        assert_eq!(e.code, 1064);
        let ok = packet(1, &[0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(read_result(&mut ok.as_slice(), "q").await.unwrap().unwrap(), ResultSet::default());
        let truncated = &bytes[..bytes.len() - 3];
        assert!(read_result(&mut &truncated[..], "q").await.is_err());
        let mut huge = vec![0xFF, 0xFF, 0xFF, 1];
        huge.extend(vec![0u8; 64]);
        assert!(read_result(&mut huge.as_slice(), "q").await.unwrap_err().to_string().contains("over the limit"));
    }

    #[test]
    fn replica_rows_become_observations_under_either_naming() {
        let rs = ResultSet {
            columns: [
                "Replica_IO_State",
                "Source_Host",
                "Source_Port",
                "Source_Log_File",
                "Read_Source_Log_Pos",
                "Relay_Source_Log_File",
                "Exec_Source_Log_Pos",
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Seconds_Behind_Source",
            ]
            .map(String::from)
            .to_vec(),
            rows: vec![
                ["w", "10.0.0.1", "3306", "bin.000003", "5000", "bin.000003", "4200", "Yes", "Yes", "3"]
                    .map(|s| Some(s.to_string()))
                    .to_vec(),
                vec![
                    Some("".into()),
                    Some("10.0.0.9".into()),
                    Some("3306".into()),
                    Some("bin.000007".into()),
                    Some("100".into()),
                    Some("bin.000006".into()),
                    Some("900".into()),
                    Some("Connecting".into()),
                    Some("Yes".into()),
                    None,
                ],
            ],
        };
        let o = replica_observations(&rs, "r:3306");
        assert_eq!(
            o[0],
            Observation {
                primary: Some("10.0.0.1:3306".into()),
                replica: "r:3306".into(),
                state: State::Streaming,
                lag_seconds: Some(3.0),
                lag_bytes: Some(800),
                wal_lag: None
            }
        );
        assert_eq!((o[1].state, o[1].lag_seconds, o[1].lag_bytes), (State::Stopped, None, None));
        let old = ResultSet {
            columns: ["Master_Host", "Master_Port", "Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master"]
                .map(String::from)
                .to_vec(),
            rows: vec![["m", "3307", "Yes", "No", "0"].map(|s| Some(s.to_string())).to_vec()],
        };
        let o = replica_observations(&old, "r:3306");
        assert_eq!((o[0].primary.as_deref(), o[0].state, o[0].lag_seconds), (Some("m:3307"), State::Stopped, Some(0.0)));
    }
}
