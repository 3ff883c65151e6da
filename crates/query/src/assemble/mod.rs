//! Cross-node trace assembly: turns the stored spans of one trace, gathered from every node,
//! into the answer of `GET /api/v1/traces/{id}` (ARCHITECTURE §5 and §6).
//!
//! The steps, all pure: de-duplicate by span id (a retried export delivers a span twice), link
//! every span to its parent, order the spans depth-first with children by start time, say what
//! is wrong with the trace (a missing root, orphans whose parent never arrived, parent links that
//! loop, clock skew between nodes), correct the skew with Jaeger's adjuster when asked, and
//! compute the critical path.
//!
//! Malformed input never panics or hangs: every walk is iterative and guarded, and a parent
//! chain that loops is cut at one span, which becomes a subtree root and is reported.

mod critical_path;
mod skew;
#[cfg(test)]
pub(crate) mod tests;

pub use critical_path::PathSegment;
pub use skew::ClockSkew;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use skein_columnar::SpanRecord;
use skein_columnar::record::{Attr, status_name};
use skein_core::{SpanId, TraceId};
use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};

/// How to assemble a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssembleOptions {
    /// Shift spans to correct clock skew between nodes (`?adjust=skew`). Skew is detected and
    /// reported whether or not this is set; without it no span is moved.
    pub adjust_skew: bool,
    /// Largest correction applied, in nanoseconds. A larger estimated delta is not applied;
    /// the span gets a warning instead.
    pub max_skew_adjustment_ns: i64,
}

impl Default for AssembleOptions {
    /// No adjustment; when adjustment is asked for, corrections up to one minute (the
    /// collector's `query.max_clock_skew_adjustment` default).
    fn default() -> Self {
        Self { adjust_skew: false, max_skew_adjustment_ns: 60_000_000_000 }
    }
}

/// One trace with every span from every node, ordered as a tree: the native API answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssembledTrace {
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Earliest span start (after adjustment), Unix nanoseconds.
    pub start_time_unix_nano: i64,
    /// Earliest start to latest end, nanoseconds.
    pub duration_ns: i64,
    /// Distinct spans (duplicates delivered by retries are counted once).
    pub span_count: usize,
    /// Services involved, sorted and unique.
    pub services: Vec<String>,
    /// Nodes involved, sorted and unique.
    pub nodes: Vec<String>,
    /// Span id of the root span, or `None` when no span without a parent arrived.
    pub root: Option<String>,
    /// Exactly one root, no orphans and no parent cycles.
    pub complete: bool,
    /// What is wrong with the trace, in words.
    pub warnings: Vec<String>,
    /// Clock skew detected between nodes, one entry per (parent node, child node) pair.
    pub clock_skew: Vec<ClockSkew>,
    /// The critical path from the root, in time order (empty without a root).
    pub critical_path: Vec<PathSegment>,
    /// The spans, depth-first, children by start time.
    pub spans: Vec<AssembledSpan>,
}

/// One span of an [`AssembledTrace`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssembledSpan {
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id as stored (even when the parent is missing), or `None` for a root.
    pub parent_span_id: Option<String>,
    /// Operation name.
    pub name: String,
    /// Lowercase span kind (`server`, `client`, …, `unspecified`).
    pub kind: &'static str,
    /// Service name.
    pub service: String,
    /// Node the span came from.
    pub node: String,
    /// Start, Unix nanoseconds (adjusted when skew adjustment moved the span).
    pub start_time_unix_nano: i64,
    /// End, Unix nanoseconds (adjusted when skew adjustment moved the span).
    pub end_time_unix_nano: i64,
    /// End minus start.
    pub duration_ns: i64,
    /// Status code and message.
    pub status: SpanStatus,
    /// Span attributes with their types.
    pub attributes: Map<String, Json>,
    /// Resource attributes with their types.
    pub resource: Map<String, Json>,
    /// Instrumentation scope, if the span named one.
    pub scope: Option<Scope>,
    /// Span events.
    pub events: Vec<SpanEvent>,
    /// Links to other spans.
    pub links: Vec<SpanLink>,
    /// 0 for roots, orphans and other subtree roots.
    pub depth: usize,
    /// What is wrong with, or was done to, this span.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A span's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpanStatus {
    /// `unset`, `ok` or `error`.
    pub code: &'static str,
    /// Status message, if any.
    pub message: Option<String>,
}

/// The instrumentation scope that produced a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Scope name.
    pub name: Option<String>,
    /// Scope version.
    pub version: Option<String>,
}

/// A span event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanEvent {
    /// Unix nanoseconds (shifted with its span by skew adjustment).
    pub time_unix_nano: i64,
    /// Event name.
    pub name: String,
    /// Event attributes with their types.
    pub attributes: Map<String, Json>,
}

/// A link to another span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanLink {
    /// Linked trace, lowercase hex.
    pub trace_id: String,
    /// Linked span, lowercase hex.
    pub span_id: String,
    /// Link attributes with their types.
    pub attributes: Map<String, Json>,
}

/// Assembles the spans of `trace_id` into one tree. The spans are assumed to belong to the
/// trace; they may come in any order and contain duplicates.
pub fn assemble(trace_id: TraceId, spans: Vec<SpanRecord>, opts: &AssembleOptions) -> AssembledTrace {
    let (spans, mut warnings) = dedup_by_span_id(spans);
    if spans.is_empty() {
        warnings.push("trace has no spans".to_string());
        return AssembledTrace {
            trace_id: trace_id.to_hex(),
            start_time_unix_nano: 0,
            duration_ns: 0,
            span_count: 0,
            services: Vec::new(),
            nodes: Vec::new(),
            root: None,
            complete: false,
            warnings,
            clock_skew: Vec::new(),
            critical_path: Vec::new(),
            spans: Vec::new(),
        };
    }
    let tree = Tree::build(&spans);
    let mut notes = Notes { trace: warnings, spans: vec![Vec::new(); spans.len()] };
    tree.report(&spans, &mut notes);
    let clock_skew = skew::detect(&spans, &tree, &mut notes);
    let shift = if opts.adjust_skew { skew::adjust(&spans, &tree, opts.max_skew_adjustment_ns, &mut notes) } else { vec![0; spans.len()] };
    let times: Vec<(i64, i64)> = spans
        .iter()
        .zip(&shift)
        .map(|(s, d)| (s.start_time_unix_nano.saturating_add(*d), s.end_time_unix_nano.saturating_add(*d)))
        .collect();
    let root = tree.roots.first().copied();
    let critical_path = root.map(|r| critical_path::compute(r, &spans, &tree.children, &times)).unwrap_or_default();
    let start = times.iter().map(|t| t.0).min().unwrap_or(0);
    let end = times.iter().map(|t| t.1).max().unwrap_or(0);
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let nodes: BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    let complete = tree.roots.len() == 1 && tree.orphans.is_empty() && tree.cycle_cuts.is_empty();
    let mut span_notes = notes.spans;
    let out = tree
        .order
        .iter()
        .map(|&(i, depth)| {
            let w = std::mem::take(&mut span_notes[i]);
            span_json(&spans[i], times[i], shift[i], depth, w)
        })
        .collect();
    AssembledTrace {
        trace_id: trace_id.to_hex(),
        start_time_unix_nano: start,
        duration_ns: end.saturating_sub(start),
        span_count: spans.len(),
        services: services.into_iter().map(str::to_string).collect(),
        nodes: nodes.into_iter().map(str::to_string).collect(),
        root: root.map(|r| spans[r].span_id.to_hex()),
        complete,
        warnings: notes.trace,
        clock_skew,
        critical_path,
        spans: out,
    }
}

/// Warnings gathered while assembling: for the trace and for each span (by index).
struct Notes {
    trace: Vec<String>,
    spans: Vec<Vec<String>>,
}

/// Keeps the first copy of each span id, in input order. A retried export delivers identical
/// copies, which are dropped silently; copies that differ are reported, because then the
/// answer depends on which one was kept.
pub(crate) fn dedup_by_span_id<T: Borrow<SpanRecord>>(spans: impl IntoIterator<Item = T>) -> (Vec<T>, Vec<String>) {
    let mut seen: HashMap<SpanId, usize> = HashMap::new();
    let mut kept: Vec<T> = Vec::new();
    let mut differing: Vec<SpanId> = Vec::new();
    for s in spans {
        let id = s.borrow().span_id;
        match seen.get(&id) {
            Some(&k) => {
                if kept[k].borrow() != s.borrow() && !differing.contains(&id) {
                    differing.push(id);
                }
            }
            None => {
                seen.insert(id, kept.len());
                kept.push(s);
            }
        }
    }
    let warnings =
        differing.iter().map(|id| format!("span {id} was received more than once with different content; kept the first copy")).collect();
    (kept, warnings)
}

/// Attributes as a JSON object of typed values (a repeated key keeps its last value).
pub(crate) fn attrs_json(attrs: &[Attr]) -> Map<String, Json> {
    attrs.iter().map(|a| (a.key.clone(), a.value.to_json())).collect()
}

fn span_json(s: &SpanRecord, (start, end): (i64, i64), shift: i64, depth: usize, warnings: Vec<String>) -> AssembledSpan {
    let scope = (s.scope_name.is_some() || s.scope_version.is_some())
        .then(|| Scope { name: s.scope_name.clone(), version: s.scope_version.clone() });
    AssembledSpan {
        span_id: s.span_id.to_hex(),
        parent_span_id: s.parent_span_id.map(|p| p.to_hex()),
        name: s.name.clone(),
        kind: s.kind_name(),
        service: s.service.clone(),
        node: s.node.clone(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        duration_ns: end.saturating_sub(start),
        status: SpanStatus { code: status_name(s.status_code), message: s.status_message.clone().filter(|m| !m.is_empty()) },
        attributes: attrs_json(&s.attributes),
        resource: attrs_json(&s.resource),
        scope,
        events: s
            .events
            .iter()
            .map(|e| SpanEvent {
                time_unix_nano: e.time_unix_nano.saturating_add(shift),
                name: e.name.clone(),
                attributes: attrs_json(&e.attributes),
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| SpanLink { trace_id: l.trace_id.to_hex(), span_id: l.span_id.to_hex(), attributes: attrs_json(&l.attributes) })
            .collect(),
        depth,
        warnings,
    }
}

/// The parent/child structure of a de-duplicated trace, as a forest: every span has at most
/// one parent and every walk from a span upwards ends at a subtree root.
struct Tree {
    /// Index of each span's parent; `None` for subtree roots (roots, orphans, cut cycles).
    parent: Vec<Option<usize>>,
    /// Children of each span, by start time.
    children: Vec<Vec<usize>>,
    /// Every span once, depth-first, with its depth.
    order: Vec<(usize, usize)>,
    /// Spans without a parent, by start time.
    roots: Vec<usize>,
    /// Spans whose parent is not in the trace, by start time.
    orphans: Vec<usize>,
    /// Spans whose parent link closed a cycle and was ignored.
    cycle_cuts: Vec<usize>,
}

impl Tree {
    fn build(spans: &[SpanRecord]) -> Self {
        let n = spans.len();
        let mut by_start: Vec<usize> = (0..n).collect();
        by_start.sort_by_key(|&i| {
            let s = &spans[i];
            (s.start_time_unix_nano, s.end_time_unix_nano, s.span_id)
        });
        let index: HashMap<SpanId, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id, i)).collect();
        let mut parent = vec![None; n];
        let mut roots = Vec::new();
        let mut orphans = Vec::new();
        for &i in &by_start {
            match spans[i].parent_span_id {
                None => roots.push(i),
                Some(p) => match index.get(&p) {
                    Some(&j) => parent[i] = Some(j),
                    None => orphans.push(i),
                },
            }
        }
        let mut children = vec![Vec::new(); n];
        for &i in &by_start {
            if let Some(p) = parent[i] {
                children[p].push(i);
            }
        }
        // A span reached from no root or orphan hangs below a loop of parent links. Walking up
        // from it must revisit a span, which lies on the loop: cutting that span's parent link
        // turns the loop into a subtree.
        let mut reached = vec![false; n];
        for &t in roots.iter().chain(&orphans) {
            mark(t, &children, &mut reached);
        }
        let mut cycle_cuts = Vec::new();
        for &i in &by_start {
            if reached[i] {
                continue;
            }
            let mut seen = HashSet::new();
            let mut c = i;
            while seen.insert(c) {
                match parent[c] {
                    Some(p) => c = p,
                    None => break,
                }
            }
            if let Some(p) = parent[c].take() {
                children[p].retain(|&x| x != c);
            }
            cycle_cuts.push(c);
            mark(c, &children, &mut reached);
        }
        let mut order = Vec::with_capacity(n);
        let mut visited = vec![false; n];
        let tops = roots.iter().chain(&orphans).chain(&cycle_cuts);
        for &t in tops {
            let mut stack = vec![(t, 0usize)];
            while let Some((i, depth)) = stack.pop() {
                if std::mem::replace(&mut visited[i], true) {
                    continue;
                }
                order.push((i, depth));
                stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
            }
        }
        Self { parent, children, order, roots, orphans, cycle_cuts }
    }

    /// Reports the missing root, extra roots, orphans and cycles.
    fn report(&self, spans: &[SpanRecord], notes: &mut Notes) {
        let id = |i: usize| spans[i].span_id.to_hex();
        if self.roots.is_empty() {
            let missing: BTreeSet<String> = self.orphans.iter().filter_map(|&i| spans[i].parent_span_id.map(|p| p.to_hex())).collect();
            let missing: Vec<String> = missing.into_iter().collect();
            notes.trace.push(if missing.is_empty() {
                "root span missing: every span has a parent and the parent links form a cycle".to_string()
            } else {
                format!("root span missing: no span without a parent arrived; spans refer to missing parent(s) {}", missing.join(", "))
            });
        } else if self.roots.len() > 1 {
            let ids: Vec<String> = self.roots.iter().map(|&i| id(i)).collect();
            notes.trace.push(format!(
                "{} spans have no parent ({}); the earliest, {}, is taken as the root",
                ids.len(),
                ids.join(", "),
                ids[0]
            ));
        }
        for &i in &self.orphans {
            let s = &spans[i];
            let parent = s.parent_span_id.map(|p| p.to_hex()).unwrap_or_default();
            let msg =
                format!("orphan span {} ({} \"{}\" on node {}): parent {} is not in the trace", id(i), s.service, s.name, s.node, parent);
            notes.spans[i].push(format!("parent {parent} is not in the trace"));
            notes.trace.push(msg);
        }
        for &i in &self.cycle_cuts {
            let parent = spans[i].parent_span_id.map(|p| p.to_hex()).unwrap_or_default();
            notes.trace.push(format!(
                "parent links form a cycle: span {} names {} as its parent; treated as a subtree root",
                id(i),
                parent
            ));
            notes.spans[i].push(format!("parent link to {parent} closes a cycle; treated as a subtree root"));
        }
    }
}

/// Marks `top` and everything below it as reached.
fn mark(top: usize, children: &[Vec<usize>], reached: &mut [bool]) {
    let mut stack = vec![top];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        stack.extend(children[i].iter().copied());
    }
}

/// `ns` as signed milliseconds with three decimals, e.g. `+12.500 ms`.
fn fmt_ms_signed(ns: i64) -> String {
    format!("{:+.3} ms", ns as f64 / 1e6)
}

/// `ns` as milliseconds with three decimals, e.g. `12.500 ms`.
fn fmt_ms(ns: i64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}
