//! Turns a planned span into an OTLP span with semantic-convention attributes and events.

use super::catalog::{CALLS, Cat, DB_PRIMARY, FLOWS, HOSTS, QUERIES, Svc, db_error};
use super::{Ctx, FLAGS_LOCAL, FLAGS_REMOTE, Keyed, MS, Planned, Rng, Role, Synth};
use crate::proto::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use crate::proto::trace::v1::span::{Event, SpanKind};
use crate::proto::trace::v1::status::StatusCode;
use crate::proto::trace::v1::{Span, Status};

impl Synth {
    pub(super) fn render(&mut self, spans: &[Planned], i: usize, ctx: &Ctx, tid: &[u8; 16], base: u64) -> Keyed {
        let p = &spans[i];
        let flow = &FLOWS[ctx.flow];
        let (start, end) = (base + p.start, base + p.end);
        let mut a = Attrs::default();
        let mut events = Vec::new();
        let mut status = None;
        let failed_status = |msg: String| Some(Status { message: msg, code: StatusCode::Error as i32 });
        let (kind, cat, name) = match p.role {
            Role::WebServer => {
                let code = http_code(p.error, 502, flow.method);
                a.s("http.request.method", flow.method)
                    .s("http.route", flow.route)
                    .s("url.path", fill(flow.route, ctx))
                    .s("url.scheme", "https")
                    .i("http.response.status_code", code)
                    .s("server.address", Svc::Frontend.dns())
                    .i("server.port", 443)
                    .s("client.address", ctx.client_ip.as_str())
                    .s("user_agent.original", ctx.user_agent)
                    .s("network.protocol.version", "1.1");
                a.extra_s("app.user.id", format!("u-{}", ctx.user_id));
                a.extra_i("http.response.body.size", self.rng.range(800, 60_000) as i64);
                a.extra_s("network.peer.address", "10.0.0.5");
                a.extra_arr("http.request.header.x-forwarded-for", vec![ctx.client_ip.clone()]);
                a.extra_b("app.session.new", self.rng.chance(0.2));
                if p.error {
                    a.s("error.type", "502");
                    status = failed_status(String::new());
                    events.push(exception(
                        end - 200_000,
                        "Error",
                        "Request failed with status code 500",
                        "Error: Request failed with status code 500\n    at settle (node_modules/axios/lib/core/settle.js:19:12)",
                    ));
                }
                (SpanKind::Server, Cat::HttpServer, format!("{} {}", flow.method, flow.route))
            }
            Role::WebInternal(name) => {
                a.s("code.function", name)
                    .s("code.filepath", "src/server/pages.ts")
                    .i("code.lineno", line_of(name, 20, 400))
                    .s("app.user.id", format!("u-{}", ctx.user_id));
                a.s("app.page", flow.route);
                a.extra_arr("app.feature_flags", vec!["new-checkout".into(), "reco-v2".into()]);
                a.extra_b("app.cache.hit", self.rng.chance(0.7));
                a.extra_s("thread.name", "main");
                (SpanKind::Internal, Cat::Internal, name.to_string())
            }
            Role::HttpClient { call, target } => {
                let c = &CALLS[call];
                let code = http_code(p.error, 500, c.method);
                a.s("http.request.method", c.method)
                    .s("url.full", format!("http://{}:8080{}", c.svc.dns(), fill(c.route, ctx)))
                    .s("server.address", c.svc.dns())
                    .i("server.port", 8080)
                    .i("http.response.status_code", code)
                    .s("network.peer.address", HOSTS[target].ip);
                a.extra_s("network.protocol.version", "1.1");
                a.extra_i("http.response.body.size", self.rng.range(200, 20_000) as i64);
                a.extra_i("network.peer.port", 8080);
                if p.error {
                    a.s("error.type", "500");
                    status = failed_status(String::new());
                }
                (SpanKind::Client, Cat::HttpClient, c.method.to_string())
            }
            Role::ApiServer { call } => {
                let c = &CALLS[call];
                let code = http_code(p.error, 500, c.method);
                let caller = p.parent.map_or(0, |c| spans[c].host);
                a.s("http.request.method", c.method)
                    .s("http.route", c.route)
                    .s("url.path", fill(c.route, ctx))
                    .s("url.scheme", "http")
                    .i("http.response.status_code", code)
                    .s("server.address", c.svc.dns())
                    .i("server.port", 8080)
                    .s("client.address", HOSTS[caller].ip)
                    .s("network.protocol.version", "1.1");
                a.extra_s("user_agent.original", if spans[caller].svc.java() { "Java-http-client/21.0.5" } else { "node" });
                a.extra_s("app.cart.id", ctx.cart_id.to_string());
                a.extra_s("app.user.id", format!("u-{}", ctx.user_id));
                a.extra_i("thread.id", self.rng.range(30, 250) as i64);
                a.extra_s("thread.name", format!("http-nio-8080-exec-{}", self.rng.range(1, 20)));
                a.extra_i("http.request.body.size", self.rng.range(0, 4000) as i64);
                if p.error {
                    a.s("error.type", "500");
                    status = failed_status(String::new());
                    if p.svc.java() {
                        events.push(exception(end - 300_000, "org.springframework.dao.DataAccessResourceFailureException", "could not execute statement", "org.springframework.dao.DataAccessResourceFailureException: could not execute statement\n\tat com.example.shop.checkout.OrderService.place(OrderService.java:88)"));
                    }
                }
                (SpanKind::Server, Cat::HttpServer, format!("{} {}", c.method, c.route))
            }
            Role::ApiInternal { call, name } => {
                let lang = if p.svc.java() { "com.example.shop.checkout.OrderService" } else { "example.com/shop/cart" };
                a.s("code.function", name)
                    .s("code.namespace", lang)
                    .i("code.lineno", line_of(name, 20, 600))
                    .i("thread.id", self.rng.range(30, 250) as i64)
                    .s("app.endpoint", CALLS[call].route);
                a.extra_i("app.cart.items", self.rng.range(1, 12) as i64);
                a.extra_f("app.order.total", self.rng.range(500, 50_000) as f64 / 100.0);
                a.extra_s("app.currency", "EUR");
                a.extra_b("app.cache.hit", self.rng.chance(0.6));
                a.extra_s("app.user.tier", self.rng.pick(&["free", "plus", "gold"]));
                a.extra_s("app.product.id", ctx.product_id.to_string());
                if name == "payment.authorize" {
                    events.push(Event {
                        time_unix_nano: end - 1000,
                        name: "payment.authorized".into(),
                        attributes: vec![
                            kv("app.payment.provider", Value::StringValue("stripe".into())),
                            kv("app.payment.attempt", Value::IntValue(1)),
                        ],
                        ..Default::default()
                    });
                }
                (SpanKind::Internal, Cat::Internal, name.to_string())
            }
            Role::DbClient { q, db } => {
                let qq = &QUERIES[q];
                a.s("db.system", "postgresql")
                    .s("db.name", "shop")
                    .s("db.statement", qq.stmt)
                    .s("db.operation", qq.op)
                    .s("db.sql.table", qq.table)
                    .s("server.address", HOSTS[db].name)
                    .i("server.port", 5432);
                a.extra_s("db.user", "shop_app");
                a.extra_s("network.peer.address", HOSTS[db].ip);
                a.extra_i("db.response.returned_rows", self.rng.range(0, 40) as i64);
                a.extra_s("db.client.connection.pool.name", if p.svc.java() { "HikariPool-1" } else { "pgxpool" });
                a.extra_i("thread.id", self.rng.range(30, 250) as i64);
                if p.error {
                    let (ty, msg, code) = db_error(qq, ctx.slow, p.svc.java());
                    a.s("error.type", ty).s("db.response.status_code", code);
                    status = failed_status(msg.to_string());
                    events.push(exception(end - 50_000, ty, msg, &format!("{ty}: {msg}")));
                }
                (SpanKind::Client, Cat::Db, format!("{} {}", qq.op, qq.table))
            }
            Role::PgServer { q } => {
                let qq = &QUERIES[q];
                let caller = p.parent.map_or(0, |c| spans[c].host);
                a.s("db.system", "postgresql")
                    .s("db.name", "shop")
                    .s("db.statement", qq.stmt)
                    .s("db.operation", qq.op)
                    .s("db.user", "shop_app")
                    .s("client.address", HOSTS[caller].ip);
                // The caller's connection pool holds a few long-lived connections, each with
                // its own client port and backend process.
                let conn = Connection::of(caller, p.host, self.rng.below(POOL_SIZE));
                a.extra_i("client.port", conn.port);
                a.extra_i("db.postgresql.backend_pid", conn.pid);
                a.extra_i("db.query.id", query_id(qq.stmt));
                a.extra_i("db.response.returned_rows", self.rng.range(0, 40) as i64);
                a.extra_s("db.postgresql.role", if p.host == DB_PRIMARY { "primary" } else { "replica" });
                if p.error {
                    let (_, msg, code) = db_error(qq, ctx.slow, false);
                    a.s("db.response.status_code", code);
                    status = failed_status(msg.to_string());
                }
                if p.extra > 0 || spans[i].children.iter().any(|&c| spans[c].extra > 0) {
                    events.push(Event {
                        time_unix_nano: start + 100_000,
                        name: "lock.wait".into(),
                        attributes: vec![
                            kv("db.postgresql.lock.mode", Value::StringValue("RowExclusiveLock".into())),
                            kv("db.postgresql.lock.wait_ms", Value::IntValue(((end - start) / MS) as i64)),
                        ],
                        ..Default::default()
                    });
                }
                (SpanKind::Server, Cat::Db, format!("{} {}", qq.op, qq.table))
            }
            Role::PgInternal { q, name } => {
                a.s("db.system", "postgresql")
                    .s("db.name", "shop")
                    .s("db.operation", QUERIES[q].op)
                    // Planner estimates: the same for every run of a statement's step.
                    .f("db.postgresql.plan.total_cost", (1 + estimate(q, name) % 5000) as f64 / 10.0)
                    .i("db.postgresql.plan.rows", (1 + (estimate(q, name) >> 32) % 400) as i64);
                a.extra_s("db.postgresql.plan.node_type", self.rng.pick(&["Index Scan", "Seq Scan", "Bitmap Heap Scan", "Nested Loop"]));
                a.extra_i("db.postgresql.blocks.shared_hit", self.rng.range(0, 2000) as i64);
                a.extra_i("db.postgresql.blocks.shared_read", self.rng.range(0, 200) as i64);
                (SpanKind::Internal, Cat::Db, name.to_string())
            }
        };
        let want = self.rng.range(5, 15) as usize;
        let attributes = a.finish(want, &mut self.rng);
        let remote = kind == SpanKind::Server && p.parent.is_some();
        let span = Span {
            trace_id: tid.to_vec(),
            span_id: p.id.to_be_bytes().to_vec(),
            parent_span_id: p.parent.map(|q| spans[q].id.to_be_bytes().to_vec()).unwrap_or_default(),
            flags: if remote { FLAGS_REMOTE } else { FLAGS_LOCAL },
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            events,
            status,
            ..Default::default()
        };
        ((p.host, p.svc, cat), span)
    }
}

/// Connections in each application host's pool to each database host.
const POOL_SIZE: u64 = 10;

/// One pooled connection from an application host to a database host.
struct Connection {
    port: i64,
    pid: i64,
}

impl Connection {
    /// Connection `slot` of the pool from host `client` to host `db`: the same every time.
    fn of(client: usize, db: usize, slot: u64) -> Self {
        let h = mix(((client as u64) << 32) ^ ((db as u64) << 16) ^ slot);
        Self { port: 32_768 + (h % 28_232) as i64, pid: 1000 + ((h >> 32) % 59_000) as i64 }
    }
}

/// `db.query.id`: PostgreSQL's query id is a hash of the normalised statement, so every run of
/// one statement has the same id.
fn query_id(stmt: &str) -> i64 {
    let fnv = stmt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (fnv >> 1) as i64
}

/// The line a function is defined on, in `lo..=hi`: the same for every call.
fn line_of(function: &str, lo: u64, hi: u64) -> i64 {
    (lo + query_id(function) as u64 % (hi - lo + 1)) as i64
}

/// A hash of query `q`'s plan step `step`, for the planner's estimates of it.
fn estimate(q: usize, step: &str) -> u64 {
    mix(q as u64 ^ (query_id(step) as u64) << 8)
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from a small one.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn exception(at: u64, ty: &str, msg: &str, stack: &str) -> Event {
    Event {
        time_unix_nano: at,
        name: "exception".into(),
        attributes: vec![
            kv("exception.type", Value::StringValue(ty.into())),
            kv("exception.message", Value::StringValue(msg.into())),
            kv("exception.stacktrace", Value::StringValue(stack.into())),
        ],
        ..Default::default()
    }
}

/// The status an HTTP span answers with: `failed` when it errored, else 201 for POST, 200.
fn http_code(error: bool, failed: i64, method: &str) -> i64 {
    match (error, method) {
        (true, _) => failed,
        (false, "POST") => 201,
        _ => 200,
    }
}

/// `route` with its `{placeholders}` filled from the trace's ids.
fn fill(route: &str, ctx: &Ctx) -> String {
    route
        .replace("{cart_id}", &ctx.cart_id.to_string())
        .replace("{order_id}", &ctx.order_id.to_string())
        .replace("{product_id}", &ctx.product_id.to_string())
}

pub(super) fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

/// Required attributes, then optional ones drawn until the span has the wanted count.
#[derive(Default)]
struct Attrs {
    base: Vec<KeyValue>,
    extra: Vec<KeyValue>,
}

impl Attrs {
    fn s(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.base.push(kv(k, Value::StringValue(v.into())));
        self
    }
    fn i(&mut self, k: &str, v: i64) -> &mut Self {
        self.base.push(kv(k, Value::IntValue(v)));
        self
    }
    fn f(&mut self, k: &str, v: f64) -> &mut Self {
        self.base.push(kv(k, Value::DoubleValue(v)));
        self
    }
    fn extra_s(&mut self, k: &str, v: impl Into<String>) {
        self.extra.push(kv(k, Value::StringValue(v.into())));
    }
    fn extra_i(&mut self, k: &str, v: i64) {
        self.extra.push(kv(k, Value::IntValue(v)));
    }
    fn extra_f(&mut self, k: &str, v: f64) {
        self.extra.push(kv(k, Value::DoubleValue(v)));
    }
    fn extra_b(&mut self, k: &str, v: bool) {
        self.extra.push(kv(k, Value::BoolValue(v)));
    }
    fn extra_arr(&mut self, k: &str, v: Vec<String>) {
        let values = v.into_iter().map(|s| AnyValue { value: Some(Value::StringValue(s)) }).collect();
        self.extra.push(kv(k, Value::ArrayValue(ArrayValue { values })));
    }
    fn finish(mut self, want: usize, rng: &mut Rng) -> Vec<KeyValue> {
        while self.base.len() < want && !self.extra.is_empty() {
            let k = rng.index(self.extra.len());
            self.base.push(self.extra.swap_remove(k));
        }
        self.base.truncate(15);
        self.base
    }
}
