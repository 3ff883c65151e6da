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

mod catalog;
mod render;
pub mod signals;

use crate::ExportTraceServiceRequest;
use crate::proto::common::v1::InstrumentationScope;
use crate::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use catalog::{
    API_HOSTS, CALLS, Cat, DB_PRIMARY, DB_REPLICA, FLOWS, HOSTS, PG_STEPS, QUERIES, Svc, USER_AGENTS, WEB_HOSTS, WEB_STEPS, resource,
};
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
        Self { seed: 0x5EED_5EED, min_spans: 10, max_spans: 40, error_ratio: 0.05, slow_ratio: 0.02 }
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
        Self { rng: Rng(cfg.seed), cfg }
    }

    /// One trace ending shortly before `now_unix_nano`, split into one request per node (host),
    /// as the agent on each node would send it; the node names are the `host.name`s.
    pub fn next_requests(&mut self, now_unix_nano: u64) -> Vec<(String, ExportTraceServiceRequest)> {
        let (_, spans) = self.trace(now_unix_nano);
        let mut by_host: BTreeMap<usize, Vec<Keyed>> = BTreeMap::new();
        for s in spans {
            by_host.entry(s.0.0).or_default().push(s);
        }
        by_host.into_iter().map(|(h, spans)| (HOSTS[h].name.to_string(), request(spans))).collect()
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

        let dbs: Vec<usize> = (0..spans.len()).filter(|&i| matches!(spans[i].role, Role::DbClient { .. })).collect();
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
        let out = (0..spans.len()).map(|i| self.render(&spans, i, &ctx, &tid, base)).collect();
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
        spans.push(Planned { parent, host, svc, role, gap, pre, post, extra: 0, children: Vec::new(), error: false, start: 0, end: 0, id });
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
                    let Role::PgServer { q } = spans[p].role else {
                        continue;
                    };
                    let (name, host) = (PG_STEPS[spans[p].children.len()], spans[p].host);
                    self.add(&mut spans, Some(p), host, Svc::Postgres, Role::PgInternal { q, name });
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
