//! Deterministic synthetic OTLP traces for `--demo` and the load generator.
//!
//! A trace is one request to a small web shop running on six hosts in three tiers: a `frontend`
//! on `web-1`/`web-2`, `checkout-api` and `cart-api` pods on `api-1`/`api-2`, and PostgreSQL
//! with the primary on `db-1` and a read replica on `db-2`. The root is a SERVER span on the
//! frontend; every hop to another service is a CLIENT span with a SERVER child on the callee's
//! host; database calls are CLIENT spans (`db.system`, `db.statement`, `server.address`) whose
//! SERVER children run on the database host (as `pg_tracing` reports them), with planner and
//! executor spans below. Reads go to the replica, writes to the primary. Attributes follow the
//! OpenTelemetry semantic conventions, with 5–15 per span and typed values (int, double, bool,
//! string array) so that type round-trips are exercised.
//!
//! A configurable share of traces fail (a database error turns into a 5xx up the chain, with
//! `exception` events) and a share are slow (one query takes long enough for the trace to last
//! 1–3 s). Children always lie within their parents in time: the generator adds no clock skew.
//!
//! The generator has its own SplitMix64 PRNG, so the same seed and the same `now` give the
//! same bytes on every platform, without a dependency.

use crate::ExportTraceServiceRequest;
use crate::proto::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use crate::proto::resource::v1::Resource;
use crate::proto::trace::v1::span::{Event, SpanKind};
use crate::proto::trace::v1::status::StatusCode;
use crate::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use std::collections::BTreeMap;

/// What the generator produces; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Seed of the PRNG: the same seed and the same `now` give the same traces.
    pub seed: u64,
    /// Fewest spans per trace; raised to 5, the smallest trace that reaches all three tiers.
    pub min_spans: usize,
    /// Most spans per trace; raised to `min_spans` when lower.
    pub max_spans: usize,
    /// Share of traces, in `[0, 1]`, that fail with a database error and a 5xx.
    pub error_ratio: f64,
    /// Share of traces, in `[0, 1]`, with one slow query that makes the trace last 1–3 s.
    pub slow_ratio: f64,
}

impl Default for SynthConfig {
    /// The load-generator profile: 10–40 spans, 5% errors, 2% slow.
    fn default() -> Self {
        Self {
            seed: 0x5EED_5EED,
            min_spans: 10,
            max_spans: 40,
            error_ratio: 0.05,
            slow_ratio: 0.02,
        }
    }
}

/// The smallest trace that spans the three tiers: root, client, API server, query, DB server.
const MIN_TRACE_SPANS: usize = 5;
const MS: u64 = 1_000_000;
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";
/// W3C sampled flag plus `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
const FLAGS_LOCAL: u32 = 0x101;
/// As above, with `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: the parent came over the wire.
const FLAGS_REMOTE: u32 = 0x301;

/// SplitMix64 (Steele, Lea and Flood), small and good enough for test data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.index(xs.len())]
    }
    /// A duration between `lo_us` and `hi_us` microseconds, in nanoseconds.
    fn us(&mut self, lo_us: u64, hi_us: u64) -> u64 {
        self.range(lo_us * 1000, hi_us * 1000)
    }
    fn nonzero(&mut self) -> u64 {
        loop {
            let v = self.next_u64();
            if v != 0 {
                return v;
            }
        }
    }
}

struct Host {
    name: &'static str,
    id: &'static str,
    ip: &'static str,
}

const HOSTS: [Host; 6] = [
    Host { name: "web-1", id: "4c1f7e0a9b2d4e6f8a1b3c5d7e9f0a21", ip: "10.0.1.11" },
    Host { name: "web-2", id: "9d3e5f7a1b2c4d6e8f0a2b4c6d8e0f12", ip: "10.0.1.12" },
    Host { name: "api-1", id: "2b4d6f8a0c1e3f5a7b9c1d3e5f7a9b31", ip: "10.0.2.21" },
    Host { name: "api-2", id: "7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a42", ip: "10.0.2.22" },
    Host { name: "db-1", id: "5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c51", ip: "10.0.3.31" },
    Host { name: "db-2", id: "8f0a2b4c6d8e0f2a4b6c8d0e2f4a6b62", ip: "10.0.3.32" },
];
const WEB_HOSTS: [usize; 2] = [0, 1];
const API_HOSTS: [usize; 2] = [2, 3];
const DB_PRIMARY: usize = 4;
const DB_REPLICA: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Svc {
    Frontend,
    Checkout,
    Cart,
    Postgres,
}

/// Which instrumentation library reported a span; one `ScopeSpans` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cat {
    HttpServer,
    HttpClient,
    Db,
    Internal,
}

impl Svc {
    fn name(self) -> &'static str {
        match self {
            Svc::Frontend => "frontend",
            Svc::Checkout => "checkout-api",
            Svc::Cart => "cart-api",
            Svc::Postgres => "postgres",
        }
    }
    fn dns(self) -> &'static str {
        match self {
            Svc::Checkout => "checkout-api.shop.svc.cluster.local",
            Svc::Cart => "cart-api.shop.svc.cluster.local",
            Svc::Frontend => "shop.example.com",
            Svc::Postgres => "db-1",
        }
    }
    /// `(service.version, telemetry.sdk.name, telemetry.sdk.language, telemetry.sdk.version)`.
    fn sdk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Svc::Frontend => ("2.14.1", "opentelemetry", "nodejs", "1.30.1"),
            Svc::Checkout => ("1.8.3", "opentelemetry", "java", "1.46.0"),
            Svc::Cart => ("0.9.12", "opentelemetry", "go", "1.34.0"),
            Svc::Postgres => ("16.4", "pg_tracing", "c", "0.1.3"),
        }
    }
    fn java(self) -> bool {
        self == Svc::Checkout
    }
    fn scope(self, cat: Cat) -> (&'static str, &'static str) {
        match (self, cat) {
            (Svc::Frontend, Cat::Internal) => ("shop-frontend", "2.14.1"),
            (Svc::Frontend, _) => ("@opentelemetry/instrumentation-http", "0.57.1"),
            (Svc::Checkout, Cat::HttpServer) => ("io.opentelemetry.tomcat-10.0", "2.12.0-alpha"),
            (Svc::Checkout, Cat::HttpClient) => ("io.opentelemetry.java-http-client", "2.12.0-alpha"),
            (Svc::Checkout, Cat::Db) => ("io.opentelemetry.jdbc", "2.12.0-alpha"),
            (Svc::Checkout, Cat::Internal) => ("com.example.shop.checkout", "1.8.3"),
            (Svc::Cart, Cat::Db) => ("github.com/XSAM/otelsql", "0.36.0"),
            (Svc::Cart, Cat::Internal) => ("example.com/shop/cart", "0.9.12"),
            (Svc::Cart, _) => (
                "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
                "0.59.0",
            ),
            (Svc::Postgres, _) => ("pg_tracing", "0.1.3"),
        }
    }
}

struct Query {
    op: &'static str,
    table: &'static str,
    stmt: &'static str,
    write: bool,
}

const QUERIES: [Query; 10] = [
    Query { op: "SELECT", table: "shop.cart_items", write: false, stmt: "SELECT ci.product_id, ci.quantity, ci.added_at FROM shop.cart_items ci WHERE ci.cart_id = $1 ORDER BY ci.added_at" },
    Query { op: "SELECT", table: "shop.products", write: false, stmt: "SELECT p.id, p.name, p.price_cents, p.currency FROM shop.products p WHERE p.id = ANY($1)" },
    Query { op: "SELECT", table: "shop.inventory", write: false, stmt: "SELECT i.product_id, i.available FROM shop.inventory i WHERE i.product_id = $1" },
    Query { op: "INSERT", table: "shop.cart_items", write: true, stmt: "INSERT INTO shop.cart_items (cart_id, product_id, quantity) VALUES ($1, $2, $3) ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = shop.cart_items.quantity + EXCLUDED.quantity" },
    Query { op: "INSERT", table: "shop.orders", write: true, stmt: "INSERT INTO shop.orders (user_id, cart_id, total_cents, currency, status) VALUES ($1, $2, $3, $4, 'pending') RETURNING id" },
    Query { op: "INSERT", table: "shop.order_items", write: true, stmt: "INSERT INTO shop.order_items (order_id, product_id, quantity, price_cents) SELECT $1, product_id, quantity, $2 FROM shop.cart_items WHERE cart_id = $3" },
    Query { op: "UPDATE", table: "shop.inventory", write: true, stmt: "UPDATE shop.inventory SET available = available - $1, reserved = reserved + $1 WHERE product_id = $2 AND available >= $1" },
    Query { op: "SELECT", table: "shop.orders", write: false, stmt: "SELECT o.id, o.status, o.total_cents, o.currency, o.created_at FROM shop.orders o WHERE o.id = $1 AND o.user_id = $2" },
    Query { op: "SELECT", table: "shop.order_items", write: false, stmt: "SELECT oi.product_id, oi.quantity, oi.price_cents FROM shop.order_items oi WHERE oi.order_id = $1" },
    Query { op: "SELECT", table: "shop.promotions", write: false, stmt: "SELECT pr.code, pr.percent_off FROM shop.promotions pr WHERE pr.valid_until > now() AND pr.segment = $1" },
];

/// An API endpoint: who serves it, which queries and internal steps it runs.
struct Call {
    svc: Svc,
    method: &'static str,
    route: &'static str,
    queries: &'static [usize],
    steps: &'static [&'static str],
}

const CALLS: [Call; 6] = [
    Call { svc: Svc::Cart, method: "GET", route: "/api/carts/{cart_id}", queries: &[0, 1], steps: &["cart.load", "cart.price_items", "cache.get"] },
    Call { svc: Svc::Cart, method: "POST", route: "/api/carts/{cart_id}/items", queries: &[1, 2, 3], steps: &["cart.add_item", "inventory.check", "request.validate"] },
    Call { svc: Svc::Checkout, method: "POST", route: "/api/orders", queries: &[4, 5, 6], steps: &["order.validate", "pricing.compute_totals", "payment.authorize"] },
    Call { svc: Svc::Checkout, method: "GET", route: "/api/orders/{order_id}", queries: &[7, 8], steps: &["order.load", "order.serialize"] },
    Call { svc: Svc::Cart, method: "GET", route: "/api/products/{product_id}", queries: &[1, 2], steps: &["catalog.lookup", "cache.get"] },
    Call { svc: Svc::Checkout, method: "GET", route: "/api/promotions", queries: &[9], steps: &["promotions.evaluate", "cache.get"] },
];

/// A page of the shop: the frontend route, the API call it needs, an API-to-API hop the
/// callee makes, and other calls the page may make.
struct Flow {
    method: &'static str,
    route: &'static str,
    call: usize,
    hop: Option<usize>,
    side: &'static [usize],
    weight: u64,
}

const FLOWS: [Flow; 5] = [
    Flow { method: "GET", route: "/cart", call: 0, hop: Some(5), side: &[], weight: 30 },
    Flow { method: "POST", route: "/cart/items", call: 1, hop: None, side: &[0], weight: 20 },
    Flow { method: "POST", route: "/checkout", call: 2, hop: Some(0), side: &[], weight: 15 },
    Flow { method: "GET", route: "/orders/{order_id}", call: 3, hop: None, side: &[5], weight: 15 },
    Flow { method: "GET", route: "/products/{product_id}", call: 4, hop: None, side: &[5, 0], weight: 20 },
];

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];
const WEB_STEPS: [&str; 3] = ["session.load", "feature_flags.evaluate", "render.page"];
const PG_STEPS: [&str; 3] = ["Planner", "ExecutorRun", "ExecutorFinish"];

#[derive(Debug, Clone, Copy)]
enum Role {
    WebServer,
    WebInternal(&'static str),
    HttpClient { call: usize, target: usize },
    ApiServer { call: usize },
    ApiInternal { call: usize, name: &'static str },
    DbClient { q: usize, db: usize },
    PgServer { q: usize },
    PgInternal { q: usize, name: &'static str },
}

/// One span of a trace being planned; times are relative to the root's start.
struct Planned {
    parent: Option<usize>,
    host: usize,
    svc: Svc,
    role: Role,
    /// Delay after the previous sibling (or the parent's own work) before this span starts.
    gap: u64,
    pre: u64,
    post: u64,
    /// Added at the end: the slow query.
    extra: u64,
    children: Vec<usize>,
    error: bool,
    start: u64,
    end: u64,
    id: u64,
}

/// Per-trace values that several spans repeat.
struct Ctx {
    flow: usize,
    cart_id: u64,
    order_id: u64,
    product_id: u64,
    user_id: u64,
    client_ip: String,
    user_agent: &'static str,
    slow: bool,
}

/// The generator; see the module documentation.
#[derive(Debug, Clone)]
pub struct Synth {
    cfg: SynthConfig,
    rng: Rng,
}

type Keyed = ((usize, Svc, Cat), Span);

impl Synth {
    /// A generator for `cfg`.
    pub fn new(cfg: SynthConfig) -> Self {
        let mut cfg = cfg;
        cfg.min_spans = cfg.min_spans.max(MIN_TRACE_SPANS);
        cfg.max_spans = cfg.max_spans.max(cfg.min_spans);
        Self {
            rng: Rng(cfg.seed),
            cfg,
        }
    }

    /// One trace ending shortly before `now_unix_nano`, split into one request per node (host),
    /// as the agent on each node would send it; the node names are the `host.name`s.
    pub fn next_requests(&mut self, now_unix_nano: u64) -> Vec<(String, ExportTraceServiceRequest)> {
        let (_, spans) = self.trace(now_unix_nano);
        let mut by_host: BTreeMap<usize, Vec<Keyed>> = BTreeMap::new();
        for s in spans {
            by_host.entry(s.0.0).or_default().push(s);
        }
        by_host
            .into_iter()
            .map(|(h, spans)| (HOSTS[h].name.to_string(), request(spans)))
            .collect()
    }

    /// `traces` traces in one request (one `ResourceSpans` per host and service), and their ids.
    pub fn batch(&mut self, traces: usize, now_unix_nano: u64) -> (ExportTraceServiceRequest, Vec<[u8; 16]>) {
        let mut ids = Vec::with_capacity(traces);
        let mut all = Vec::new();
        for _ in 0..traces {
            let (id, spans) = self.trace(now_unix_nano);
            ids.push(id);
            all.extend(spans);
        }
        (request(all), ids)
    }

    fn trace(&mut self, now: u64) -> ([u8; 16], Vec<Keyed>) {
        let target = self.rng.range(self.cfg.min_spans as u64, self.cfg.max_spans as u64) as usize;
        let error = self.rng.chance(self.cfg.error_ratio);
        let slow = self.rng.chance(self.cfg.slow_ratio);
        let ctx = self.ctx(slow);
        let mut spans = self.plan(&ctx, target);

        let dbs: Vec<usize> = (0..spans.len())
            .filter(|&i| matches!(spans[i].role, Role::DbClient { .. }))
            .collect();
        let slow_db = slow.then(|| self.rng.pick(&dbs));
        if let Some(db) = slow_db {
            // The executor (or the server span itself) is where the time goes.
            let pg = spans[db].children[0];
            let leaf = spans[pg]
                .children
                .iter()
                .copied()
                .find(|&c| matches!(spans[c].role, Role::PgInternal { name: "ExecutorRun", .. }))
                .unwrap_or(pg);
            let fast = layout(&mut spans, 0, 0);
            let total = self.rng.range(1000 * MS, 3000 * MS);
            spans[leaf].extra = total.saturating_sub(fast);
        }
        if error {
            // A statement timeout when the trace is also slow, else any query.
            let db = slow_db.unwrap_or_else(|| self.rng.pick(&dbs));
            let mut at = Some(spans[db].children[0]);
            while let Some(i) = at {
                spans[i].error = true;
                at = spans[i].parent;
            }
        }
        let total = layout(&mut spans, 0, 0);
        let base = now.saturating_sub(total + self.rng.range(0, 50 * MS));

        let mut tid = [0u8; 16];
        tid[..8].copy_from_slice(&self.rng.nonzero().to_be_bytes());
        tid[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        let out = (0..spans.len())
            .map(|i| self.render(&spans, i, &ctx, &tid, base))
            .collect();
        (tid, out)
    }

    fn ctx(&mut self, slow: bool) -> Ctx {
        let total: u64 = FLOWS.iter().map(|f| f.weight).sum();
        let mut r = self.rng.below(total);
        let mut flow = 0;
        while r >= FLOWS[flow].weight {
            r -= FLOWS[flow].weight;
            flow += 1;
        }
        Ctx {
            flow,
            cart_id: self.rng.range(100_000, 999_999),
            order_id: self.rng.range(1_000_000, 9_999_999),
            product_id: self.rng.range(1000, 9999),
            user_id: self.rng.range(10_000, 99_999),
            client_ip: format!("203.0.113.{}", self.rng.range(1, 254)),
            user_agent: self.rng.pick(&USER_AGENTS),
            slow,
        }
    }

    fn add(&mut self, spans: &mut Vec<Planned>, parent: Option<usize>, host: usize, svc: Svc, role: Role) -> usize {
        let r = &mut self.rng;
        let (gap, pre, post) = match role {
            Role::WebServer => (0, r.us(300, 2000), r.us(500, 6000)),
            Role::WebInternal(_) => (r.us(20, 200), r.us(100, 3000), 0),
            Role::HttpClient { .. } => (r.us(50, 500), 0, r.us(200, 1200)),
            Role::ApiServer { .. } => (r.us(200, 1200), r.us(100, 1000), r.us(100, 2000)),
            Role::ApiInternal { .. } => (r.us(10, 200), r.us(50, 3000), r.us(10, 500)),
            Role::DbClient { .. } => (r.us(20, 300), 0, r.us(50, 400)),
            Role::PgServer { .. } => (r.us(50, 400), r.us(20, 200), r.us(100, 4000)),
            Role::PgInternal { name, .. } => match name {
                "Planner" => (r.us(5, 30), r.us(30, 600), 0),
                "ExecutorRun" => (r.us(5, 30), r.us(50, 6000), 0),
                _ => (r.us(5, 30), r.us(5, 50), 0),
            },
        };
        let id = r.nonzero();
        let i = spans.len();
        spans.push(Planned {
            parent, host, svc, role, gap, pre, post, extra: 0,
            children: Vec::new(), error: false, start: 0, end: 0, id,
        });
        if let Some(p) = parent {
            let kids = &mut spans[p].children;
            // Internal steps happen anywhere among their siblings; the rest in call order.
            let at = match role {
                Role::WebInternal(_) | Role::ApiInternal { .. } => self.rng.index(kids.len() + 1),
                _ => kids.len(),
            };
            kids.insert(at, i);
        }
        i
    }

    /// A query run by `parent` (a span of `svc` on `host`): the db client and server spans.
    fn query(&mut self, spans: &mut Vec<Planned>, parent: usize, call: usize) {
        let q = self.rng.pick(CALLS[call].queries);
        let db = if QUERIES[q].write || self.rng.chance(0.15) { DB_PRIMARY } else { DB_REPLICA };
        let (host, svc) = (spans[parent].host, spans[parent].svc);
        let c = self.add(spans, Some(parent), host, svc, Role::DbClient { q, db });
        self.add(spans, Some(c), db, Svc::Postgres, Role::PgServer { q });
    }

    /// An HTTP call from `parent` to `call`'s service: client, server and one query.
    fn http_call(&mut self, spans: &mut Vec<Planned>, parent: usize, call: usize) -> usize {
        let target = self.rng.pick(&API_HOSTS);
        let (host, svc) = (spans[parent].host, spans[parent].svc);
        let c = self.add(spans, Some(parent), host, svc, Role::HttpClient { call, target });
        let s = self.add(spans, Some(c), target, CALLS[call].svc, Role::ApiServer { call });
        self.query(spans, s, call);
        s
    }

    /// Lays out a tree of exactly `target` spans (at least [`MIN_TRACE_SPANS`]).
    fn plan(&mut self, ctx: &Ctx, target: usize) -> Vec<Planned> {
        let flow = &FLOWS[ctx.flow];
        let mut spans = Vec::with_capacity(target);
        let web = self.rng.pick(&WEB_HOSTS);
        let root = self.add(&mut spans, None, web, Svc::Frontend, Role::WebServer);
        let api = self.http_call(&mut spans, root, flow.call);
        // Spans that run queries, with the endpoint they serve.
        let mut containers = vec![(api, flow.call)];
        let (mut hop_done, mut sides, mut web_steps) = (false, 0usize, 0usize);
        while spans.len() < target {
            let left = target - spans.len();
            let pg: Vec<usize> = (0..spans.len())
                .filter(|&i| matches!(spans[i].role, Role::PgServer { .. }) && spans[i].children.len() < PG_STEPS.len())
                .collect();
            // (weight, option): 0 query, 1 pg step, 2 api step, 3 web step, 4 hop, 5 side call.
            let mut options = vec![(2u64, 2usize)];
            if left >= 2 {
                options.push((4, 0));
            }
            if !pg.is_empty() {
                options.push((4, 1));
            }
            if web_steps < WEB_STEPS.len() {
                options.push((1, 3));
            }
            if left >= 4 && !hop_done && flow.hop.is_some() {
                options.push((3, 4));
            }
            if left >= 4 && sides < flow.side.len() {
                options.push((2, 5));
            }
            let total: u64 = options.iter().map(|o| o.0).sum();
            let mut r = self.rng.below(total);
            let mut choice = options[0].1;
            for (w, o) in options {
                if r < w {
                    choice = o;
                    break;
                }
                r -= w;
            }
            match choice {
                0 => {
                    let (p, call) = self.rng.pick(&containers);
                    self.query(&mut spans, p, call);
                }
                1 => {
                    let p = self.rng.pick(&pg);
                    let Role::PgServer { q } = spans[p].role else { continue };
                    let name = PG_STEPS[spans[p].children.len()];
                    self.add(&mut spans, Some(p), spans[p].host, Svc::Postgres, Role::PgInternal { q, name });
                }
                2 => {
                    let (p, call) = self.rng.pick(&containers);
                    let name = self.rng.pick(CALLS[call].steps);
                    let (host, svc) = (spans[p].host, spans[p].svc);
                    let s = self.add(&mut spans, Some(p), host, svc, Role::ApiInternal { call, name });
                    containers.push((s, call));
                }
                3 => {
                    let name = WEB_STEPS[web_steps];
                    web_steps += 1;
                    self.add(&mut spans, Some(root), web, Svc::Frontend, Role::WebInternal(name));
                }
                4 => {
                    hop_done = true;
                    let call = flow.hop.unwrap_or(flow.call);
                    let s = self.http_call(&mut spans, api, call);
                    containers.push((s, call));
                }
                _ => {
                    let call = flow.side[sides];
                    sides += 1;
                    let s = self.http_call(&mut spans, root, call);
                    containers.push((s, call));
                }
            }
        }
        spans
    }

    fn render(&mut self, spans: &[Planned], i: usize, ctx: &Ctx, tid: &[u8; 16], base: u64) -> Keyed {
        let p = &spans[i];
        let flow = &FLOWS[ctx.flow];
        let (start, end) = (base + p.start, base + p.end);
        let mut a = Attrs::default();
        let mut events = Vec::new();
        let mut status = None;
        let failed_status = |msg: String| Some(Status { message: msg, code: StatusCode::Error as i32 });
        let (kind, cat, name) = match p.role {
            Role::WebServer => {
                let code = if p.error { 502 } else if flow.method == "POST" { 201 } else { 200 };
                a.s("http.request.method", flow.method).s("http.route", flow.route)
                    .s("url.path", fill(flow.route, ctx)).s("url.scheme", "https")
                    .i("http.response.status_code", code).s("server.address", Svc::Frontend.dns())
                    .i("server.port", 443).s("client.address", ctx.client_ip.as_str())
                    .s("user_agent.original", ctx.user_agent).s("network.protocol.version", "1.1");
                a.extra_s("app.user.id", format!("u-{}", ctx.user_id));
                a.extra_i("http.response.body.size", self.rng.range(800, 60_000) as i64);
                a.extra_s("network.peer.address", "10.0.0.5");
                a.extra_arr("http.request.header.x-forwarded-for", vec![ctx.client_ip.clone()]);
                a.extra_b("app.session.new", self.rng.chance(0.2));
                if p.error {
                    a.s("error.type", "502");
                    status = failed_status(String::new());
                    events.push(exception(end - 200_000, "Error", "Request failed with status code 500", "Error: Request failed with status code 500\n    at settle (node_modules/axios/lib/core/settle.js:19:12)"));
                }
                (SpanKind::Server, Cat::HttpServer, format!("{} {}", flow.method, flow.route))
            }
            Role::WebInternal(name) => {
                a.s("code.function", name).s("code.filepath", "src/server/pages.ts")
                    .i("code.lineno", self.rng.range(20, 400) as i64).s("app.user.id", format!("u-{}", ctx.user_id));
                a.s("app.page", flow.route);
                a.extra_arr("app.feature_flags", vec!["new-checkout".into(), "reco-v2".into()]);
                a.extra_b("app.cache.hit", self.rng.chance(0.7));
                a.extra_s("thread.name", "main");
                (SpanKind::Internal, Cat::Internal, name.to_string())
            }
            Role::HttpClient { call, target } => {
                let c = &CALLS[call];
                let code = if p.error { 500 } else if c.method == "POST" { 201 } else { 200 };
                a.s("http.request.method", c.method)
                    .s("url.full", format!("http://{}:8080{}", c.svc.dns(), fill(c.route, ctx)))
                    .s("server.address", c.svc.dns()).i("server.port", 8080)
                    .i("http.response.status_code", code).s("network.peer.address", HOSTS[target].ip);
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
                let code = if p.error { 500 } else if c.method == "POST" { 201 } else { 200 };
                let caller = p.parent.map_or(0, |c| spans[c].host);
                a.s("http.request.method", c.method).s("http.route", c.route)
                    .s("url.path", fill(c.route, ctx)).s("url.scheme", "http")
                    .i("http.response.status_code", code).s("server.address", c.svc.dns())
                    .i("server.port", 8080).s("client.address", HOSTS[caller].ip)
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
                a.s("code.function", name).s("code.namespace", lang)
                    .i("code.lineno", self.rng.range(20, 600) as i64)
                    .i("thread.id", self.rng.range(30, 250) as i64).s("app.endpoint", CALLS[call].route);
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
                        attributes: vec![kv("app.payment.provider", Value::StringValue("stripe".into())), kv("app.payment.attempt", Value::IntValue(1))],
                        ..Default::default()
                    });
                }
                (SpanKind::Internal, Cat::Internal, name.to_string())
            }
            Role::DbClient { q, db } => {
                let qq = &QUERIES[q];
                a.s("db.system", "postgresql").s("db.name", "shop").s("db.statement", qq.stmt)
                    .s("db.operation", qq.op).s("db.sql.table", qq.table)
                    .s("server.address", HOSTS[db].name).i("server.port", 5432);
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
                a.s("db.system", "postgresql").s("db.name", "shop").s("db.statement", qq.stmt)
                    .s("db.operation", qq.op).s("db.user", "shop_app").s("client.address", HOSTS[caller].ip);
                a.extra_i("client.port", self.rng.range(32_768, 60_999) as i64);
                a.extra_i("db.postgresql.backend_pid", self.rng.range(1000, 60_000) as i64);
                a.extra_i("db.query.id", (self.rng.next_u64() >> 1) as i64);
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
                        attributes: vec![kv("db.postgresql.lock.mode", Value::StringValue("RowExclusiveLock".into())), kv("db.postgresql.lock.wait_ms", Value::IntValue(((end - start) / MS) as i64))],
                        ..Default::default()
                    });
                }
                (SpanKind::Server, Cat::Db, format!("{} {}", qq.op, qq.table))
            }
            Role::PgInternal { q, name } => {
                a.s("db.system", "postgresql").s("db.name", "shop").s("db.operation", QUERIES[q].op)
                    .f("db.postgresql.plan.total_cost", self.rng.range(1, 5000) as f64 / 10.0)
                    .i("db.postgresql.plan.rows", self.rng.range(1, 400) as i64);
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

/// Places span `i` at `start` and its children one after another; returns its end.
fn layout(spans: &mut [Planned], i: usize, start: u64) -> u64 {
    spans[i].start = start;
    let mut cursor = start + spans[i].pre;
    for k in 0..spans[i].children.len() {
        let c = spans[i].children[k];
        cursor = layout(spans, c, cursor + spans[c].gap);
    }
    let end = cursor + spans[i].post + spans[i].extra;
    spans[i].end = end;
    end
}

/// `(exception.type, message, SQLSTATE)` of a failed query.
fn db_error(q: &Query, timeout: bool, java: bool) -> (&'static str, &'static str, &'static str) {
    let ty = if java { "org.postgresql.util.PSQLException" } else { "*pgconn.PgError" };
    if timeout {
        (ty, "ERROR: canceling statement due to statement timeout", "57014")
    } else if q.write {
        (ty, "ERROR: deadlock detected", "40P01")
    } else {
        (ty, "FATAL: terminating connection due to conflict with recovery", "40001")
    }
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

/// `route` with its `{placeholders}` filled from the trace's ids.
fn fill(route: &str, ctx: &Ctx) -> String {
    route
        .replace("{cart_id}", &ctx.cart_id.to_string())
        .replace("{order_id}", &ctx.order_id.to_string())
        .replace("{product_id}", &ctx.product_id.to_string())
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
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

fn resource(host: usize, svc: Svc) -> Resource {
    let h = &HOSTS[host];
    let (version, sdk, lang, sdk_version) = svc.sdk();
    let s = |k: &str, v: &str| kv(k, Value::StringValue(v.into()));
    let mut attributes = vec![
        s("service.name", svc.name()),
        s("service.namespace", "shop"),
        s("service.version", version),
        s("service.instance.id", &format!("{}-{}", svc.name(), h.name)),
        s("host.name", h.name),
        s("host.id", h.id),
        s("host.arch", "amd64"),
        s("os.type", "linux"),
        s("deployment.environment", "production"),
        s("telemetry.sdk.name", sdk),
        s("telemetry.sdk.language", lang),
        s("telemetry.sdk.version", sdk_version),
    ];
    if matches!(svc, Svc::Checkout | Svc::Cart) {
        let pod = format!("{}-{}-{}", svc.name(), if svc.java() { "6d8f7b9c4" } else { "5c7d9f8b2" }, &h.id[..5]);
        attributes.push(s("k8s.pod.name", &pod));
        attributes.push(s("k8s.namespace.name", "shop"));
        attributes.push(s("k8s.node.name", h.name));
        attributes.push(s("k8s.deployment.name", svc.name()));
    } else {
        let pid = 1000 + host as i64 * 977 + svc as i64 * 31;
        attributes.push(kv("process.pid", Value::IntValue(pid)));
    }
    Resource { attributes, ..Default::default() }
}

/// Groups spans into one `ResourceSpans` per (host, service) and one `ScopeSpans` per scope.
fn request(spans: Vec<Keyed>) -> ExportTraceServiceRequest {
    let mut groups: BTreeMap<(usize, Svc), BTreeMap<Cat, Vec<Span>>> = BTreeMap::new();
    for ((host, svc, cat), span) in spans {
        groups.entry((host, svc)).or_default().entry(cat).or_default().push(span);
    }
    let resource_spans = groups
        .into_iter()
        .map(|((host, svc), scopes)| ResourceSpans {
            resource: Some(resource(host, svc)),
            scope_spans: scopes
                .into_iter()
                .map(|(cat, spans)| {
                    let (name, version) = svc.scope(cat);
                    ScopeSpans {
                        scope: Some(InstrumentationScope { name: name.into(), version: version.into(), ..Default::default() }),
                        spans,
                        schema_url: SCHEMA_URL.into(),
                    }
                })
                .collect(),
            schema_url: SCHEMA_URL.into(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests;
