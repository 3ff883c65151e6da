//! The simulated shop: hosts, services, their instrumentation scopes and resources, the
//! endpoints and the SQL they run.

use super::render::kv;
use crate::proto::common::v1::any_value::Value;
use crate::proto::resource::v1::Resource;

pub(super) struct Host {
    pub(super) name: &'static str,
    pub(super) id: &'static str,
    pub(super) ip: &'static str,
}

pub(super) const HOSTS: [Host; 6] = [
    Host { name: "web-1", id: "4c1f7e0a9b2d4e6f8a1b3c5d7e9f0a21", ip: "10.0.1.11" },
    Host { name: "web-2", id: "9d3e5f7a1b2c4d6e8f0a2b4c6d8e0f12", ip: "10.0.1.12" },
    Host { name: "api-1", id: "2b4d6f8a0c1e3f5a7b9c1d3e5f7a9b31", ip: "10.0.2.21" },
    Host { name: "api-2", id: "7e9f1a3b5c7d9e1f3a5b7c9d1e3f5a42", ip: "10.0.2.22" },
    Host { name: "db-1", id: "5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c51", ip: "10.0.3.31" },
    Host { name: "db-2", id: "8f0a2b4c6d8e0f2a4b6c8d0e2f4a6b62", ip: "10.0.3.32" },
];
pub(super) const WEB_HOSTS: [usize; 2] = [0, 1];
pub(super) const API_HOSTS: [usize; 2] = [2, 3];
pub(super) const DB_PRIMARY: usize = 4;
pub(super) const DB_REPLICA: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Svc {
    Frontend,
    Checkout,
    Cart,
    Postgres,
}

/// Which instrumentation library reported a span; one `ScopeSpans` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Cat {
    HttpServer,
    HttpClient,
    Db,
    Internal,
}

impl Svc {
    pub(super) fn name(self) -> &'static str {
        match self {
            Svc::Frontend => "frontend",
            Svc::Checkout => "checkout-api",
            Svc::Cart => "cart-api",
            Svc::Postgres => "postgres",
        }
    }
    pub(super) fn dns(self) -> &'static str {
        match self {
            Svc::Checkout => "checkout-api.shop.svc.cluster.local",
            Svc::Cart => "cart-api.shop.svc.cluster.local",
            Svc::Frontend => "shop.example.com",
            Svc::Postgres => "db-1",
        }
    }
    /// `(service.version, telemetry.sdk.name, telemetry.sdk.language, telemetry.sdk.version)`.
    pub(super) fn sdk(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Svc::Frontend => ("2.14.1", "opentelemetry", "nodejs", "1.30.1"),
            Svc::Checkout => ("1.8.3", "opentelemetry", "java", "1.46.0"),
            Svc::Cart => ("0.9.12", "opentelemetry", "go", "1.34.0"),
            Svc::Postgres => ("16.4", "pg_tracing", "c", "0.1.3"),
        }
    }
    pub(super) fn java(self) -> bool {
        self == Svc::Checkout
    }
    pub(super) fn scope(self, cat: Cat) -> (&'static str, &'static str) {
        match (self, cat) {
            (Svc::Frontend, Cat::Internal) => ("shop-frontend", "2.14.1"),
            (Svc::Frontend, _) => ("@opentelemetry/instrumentation-http", "0.57.1"),
            (Svc::Checkout, Cat::HttpServer) => ("io.opentelemetry.tomcat-10.0", "2.12.0-alpha"),
            (Svc::Checkout, Cat::HttpClient) => ("io.opentelemetry.java-http-client", "2.12.0-alpha"),
            (Svc::Checkout, Cat::Db) => ("io.opentelemetry.jdbc", "2.12.0-alpha"),
            (Svc::Checkout, Cat::Internal) => ("com.example.shop.checkout", "1.8.3"),
            (Svc::Cart, Cat::Db) => ("github.com/XSAM/otelsql", "0.36.0"),
            (Svc::Cart, Cat::Internal) => ("example.com/shop/cart", "0.9.12"),
            (Svc::Cart, _) => ("go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", "0.59.0"),
            (Svc::Postgres, _) => ("pg_tracing", "0.1.3"),
        }
    }
}

pub(super) struct Query {
    pub(super) op: &'static str,
    pub(super) table: &'static str,
    pub(super) stmt: &'static str,
    pub(super) write: bool,
}

pub(super) const QUERIES: [Query; 10] = [
    Query {
        op: "SELECT",
        table: "shop.cart_items",
        write: false,
        stmt: "SELECT ci.product_id, ci.quantity, ci.added_at FROM shop.cart_items ci WHERE ci.cart_id = $1 ORDER BY ci.added_at",
    },
    Query {
        op: "SELECT",
        table: "shop.products",
        write: false,
        stmt: "SELECT p.id, p.name, p.price_cents, p.currency FROM shop.products p WHERE p.id = ANY($1)",
    },
    Query {
        op: "SELECT",
        table: "shop.inventory",
        write: false,
        stmt: "SELECT i.product_id, i.available FROM shop.inventory i WHERE i.product_id = $1",
    },
    Query {
        op: "INSERT",
        table: "shop.cart_items",
        write: true,
        stmt: "INSERT INTO shop.cart_items (cart_id, product_id, quantity) VALUES ($1, $2, $3) ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = shop.cart_items.quantity + EXCLUDED.quantity",
    },
    Query {
        op: "INSERT",
        table: "shop.orders",
        write: true,
        stmt: "INSERT INTO shop.orders (user_id, cart_id, total_cents, currency, status) VALUES ($1, $2, $3, $4, 'pending') RETURNING id",
    },
    Query {
        op: "INSERT",
        table: "shop.order_items",
        write: true,
        stmt: "INSERT INTO shop.order_items (order_id, product_id, quantity, price_cents) SELECT $1, product_id, quantity, $2 FROM shop.cart_items WHERE cart_id = $3",
    },
    Query {
        op: "UPDATE",
        table: "shop.inventory",
        write: true,
        stmt: "UPDATE shop.inventory SET available = available - $1, reserved = reserved + $1 WHERE product_id = $2 AND available >= $1",
    },
    Query {
        op: "SELECT",
        table: "shop.orders",
        write: false,
        stmt: "SELECT o.id, o.status, o.total_cents, o.currency, o.created_at FROM shop.orders o WHERE o.id = $1 AND o.user_id = $2",
    },
    Query {
        op: "SELECT",
        table: "shop.order_items",
        write: false,
        stmt: "SELECT oi.product_id, oi.quantity, oi.price_cents FROM shop.order_items oi WHERE oi.order_id = $1",
    },
    Query {
        op: "SELECT",
        table: "shop.promotions",
        write: false,
        stmt: "SELECT pr.code, pr.percent_off FROM shop.promotions pr WHERE pr.valid_until > now() AND pr.segment = $1",
    },
];

/// An API endpoint: who serves it, which queries and internal steps it runs.
pub(super) struct Call {
    pub(super) svc: Svc,
    pub(super) method: &'static str,
    pub(super) route: &'static str,
    pub(super) queries: &'static [usize],
    pub(super) steps: &'static [&'static str],
}

pub(super) const CALLS: [Call; 6] = [
    Call {
        svc: Svc::Cart,
        method: "GET",
        route: "/api/carts/{cart_id}",
        queries: &[0, 1],
        steps: &["cart.load", "cart.price_items", "cache.get"],
    },
    Call {
        svc: Svc::Cart,
        method: "POST",
        route: "/api/carts/{cart_id}/items",
        queries: &[1, 2, 3],
        steps: &["cart.add_item", "inventory.check", "request.validate"],
    },
    Call {
        svc: Svc::Checkout,
        method: "POST",
        route: "/api/orders",
        queries: &[4, 5, 6],
        steps: &["order.validate", "pricing.compute_totals", "payment.authorize"],
    },
    Call {
        svc: Svc::Checkout,
        method: "GET",
        route: "/api/orders/{order_id}",
        queries: &[7, 8],
        steps: &["order.load", "order.serialize"],
    },
    Call { svc: Svc::Cart, method: "GET", route: "/api/products/{product_id}", queries: &[1, 2], steps: &["catalog.lookup", "cache.get"] },
    Call { svc: Svc::Checkout, method: "GET", route: "/api/promotions", queries: &[9], steps: &["promotions.evaluate", "cache.get"] },
];

/// A page of the shop: the frontend route, the API call it needs, an API-to-API hop the
/// callee makes, and other calls the page may make.
pub(super) struct Flow {
    pub(super) method: &'static str,
    pub(super) route: &'static str,
    pub(super) call: usize,
    pub(super) hop: Option<usize>,
    pub(super) side: &'static [usize],
    pub(super) weight: u64,
}

pub(super) const FLOWS: [Flow; 5] = [
    Flow { method: "GET", route: "/cart", call: 0, hop: Some(5), side: &[], weight: 30 },
    Flow { method: "POST", route: "/cart/items", call: 1, hop: None, side: &[0], weight: 20 },
    Flow { method: "POST", route: "/checkout", call: 2, hop: Some(0), side: &[], weight: 15 },
    Flow { method: "GET", route: "/orders/{order_id}", call: 3, hop: None, side: &[5], weight: 15 },
    Flow { method: "GET", route: "/products/{product_id}", call: 4, hop: None, side: &[5, 0], weight: 20 },
];

pub(super) const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];
pub(super) const WEB_STEPS: [&str; 3] = ["session.load", "feature_flags.evaluate", "render.page"];
pub(super) const PG_STEPS: [&str; 3] = ["Planner", "ExecutorRun", "ExecutorFinish"];

/// `(exception.type, message, SQLSTATE)` of a failed query.
pub(super) fn db_error(q: &Query, timeout: bool, java: bool) -> (&'static str, &'static str, &'static str) {
    let ty = if java { "org.postgresql.util.PSQLException" } else { "*pgconn.PgError" };
    if timeout {
        (ty, "ERROR: canceling statement due to statement timeout", "57014")
    } else if q.write {
        (ty, "ERROR: deadlock detected", "40P01")
    } else {
        (ty, "FATAL: terminating connection due to conflict with recovery", "40001")
    }
}

pub(super) fn resource(host: usize, svc: Svc) -> Resource {
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
