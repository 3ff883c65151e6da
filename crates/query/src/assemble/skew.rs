//! Clock skew between nodes: detection (always) and Jaeger's adjustment (on request).
//!
//! Only a parent→child edge that crosses nodes is compared; spans of one node share a clock.
//! A node named `unknown_node` (no `host.name` or pod name) is never compared, since two such
//! spans may well share a clock. The estimated offset of an edge is Jaeger's delta
//! (`querysvc/adjuster/clockskew.go`): the shift that centres the child in its parent, or, for a
//! child longer than its parent, the shift that makes it start with the parent.
//!
//! One deliberate difference from Jaeger: on an asynchronous edge (the parent is a producer or
//! the child a consumer) the child may legitimately start after the parent ended, so only a
//! child that starts *before* its parent counts, and the delta is the smallest shift that
//! restores causality rather than centring the consumer in the producer.

use super::{Notes, Tree, fmt_ms, fmt_ms_signed};
use serde::Serialize;
use skein_columnar::SpanRecord;
use skein_columnar::spans::UNKNOWN_NODE;
use std::collections::BTreeMap;

/// Clock skew observed between a parent node and a child node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClockSkew {
    /// Node of the parent spans.
    pub parent_node: String,
    /// Node of the child spans.
    pub child_node: String,
    /// Median of the per-span estimates: what to add to the child node's timestamps to line
    /// them up with the parent node's (positive: the child node's clock runs behind).
    pub estimated_offset_ns: i64,
    /// Span ids (hex) of the child spans that fall outside their parent.
    pub spans: Vec<String>,
}

const PRODUCER: i8 = 4;
const CONSUMER: i8 = 5;

/// Whether the edge `parent → child` crosses between two known nodes.
fn cross_node(parent: &SpanRecord, child: &SpanRecord) -> bool {
    parent.node != child.node && parent.node != UNKNOWN_NODE && child.node != UNKNOWN_NODE
}

fn is_async(parent: &SpanRecord, child: &SpanRecord) -> bool {
    parent.kind == PRODUCER || child.kind == CONSUMER
}

/// The shift to apply to a child with times `(cs, ce)` under a parent with `(ps, pe)`; 0 when
/// the child is consistent with its parent.
fn edge_delta((ps, pe): (i64, i64), (cs, ce): (i64, i64), asynchronous: bool) -> i64 {
    let parent_dur = pe.saturating_sub(ps);
    let child_dur = ce.saturating_sub(cs);
    if asynchronous || child_dur > parent_dur {
        // An async child may outlive its parent, and a child longer than its parent cannot be
        // centred: the only safe correction is to make it not start before the parent.
        return if cs < ps { ps.saturating_sub(cs) } else { 0 };
    }
    if cs >= ps && ce <= pe {
        return 0;
    }
    // Assume the network latency is split evenly between request and response.
    ps.saturating_add((parent_dur - child_dur) / 2).saturating_sub(cs)
}

fn times(s: &SpanRecord) -> (i64, i64) {
    (s.start_time_unix_nano, s.end_time_unix_nano)
}

/// Finds every cross-node child that starts before or ends after its parent (on the stored,
/// unadjusted times), warns on the child span and, per node pair, on the trace.
pub(super) fn detect(spans: &[SpanRecord], tree: &Tree, notes: &mut Notes) -> Vec<ClockSkew> {
    let mut pairs: BTreeMap<(&str, &str), Vec<(i64, String)>> = BTreeMap::new();
    for &(i, _) in &tree.order {
        let Some(p) = tree.parent[i] else { continue };
        let (parent, child) = (&spans[p], &spans[i]);
        if !cross_node(parent, child) {
            continue;
        }
        let ((ps, pe), (cs, ce)) = (times(parent), times(child));
        let delta = edge_delta((ps, pe), (cs, ce), is_async(parent, child));
        if delta == 0 {
            continue;
        }
        let mut what = Vec::new();
        if cs < ps {
            what.push(format!("starts {} before", fmt_ms(ps - cs)));
        }
        if ce > pe {
            what.push(format!("ends {} after", fmt_ms(ce - pe)));
        }
        notes.spans[i].push(format!(
            "clock skew: {} its parent {} on node {}; estimated offset of node {}: {}",
            what.join(" and "),
            parent.span_id,
            parent.node,
            child.node,
            fmt_ms_signed(delta)
        ));
        pairs.entry((parent.node.as_str(), child.node.as_str())).or_default().push((delta, child.span_id.to_hex()));
    }
    pairs
        .into_iter()
        .map(|((parent_node, child_node), mut edges)| {
            edges.sort();
            let mid = edges.len() / 2;
            let median =
                if edges.len() % 2 == 1 { edges[mid].0 } else { ((i128::from(edges[mid - 1].0) + i128::from(edges[mid].0)) / 2) as i64 };
            notes.trace.push(format!(
                "clock skew between node {parent_node} (parent) and node {child_node} (child): \
                 estimated offset {} over {} span(s)",
                fmt_ms_signed(median),
                edges.len()
            ));
            let mut ids: Vec<String> = edges.into_iter().map(|(_, id)| id).collect();
            ids.sort();
            ClockSkew { parent_node: parent_node.to_string(), child_node: child_node.to_string(), estimated_offset_ns: median, spans: ids }
        })
        .collect()
}

/// Jaeger's adjustment: walking the tree from the top, each cross-node child is compared with
/// its parent's already adjusted times and shifted by [`edge_delta`]; same-node descendants
/// are shifted by the same amount. A delta larger than `max_ns` is not applied (and not
/// carried). Returns the shift of every span; every moved span gets a warning.
pub(super) fn adjust(spans: &[SpanRecord], tree: &Tree, max_ns: i64, notes: &mut Notes) -> Vec<i64> {
    let n = spans.len();
    let mut shift = vec![0i64; n];
    // The span whose comparison with its parent produced the shift carried by each span.
    let mut origin: Vec<usize> = (0..n).collect();
    let limit = max_ns.max(0).unsigned_abs();
    for &(i, _) in &tree.order {
        let Some(p) = tree.parent[i] else { continue };
        let (parent, child) = (&spans[p], &spans[i]);
        if !cross_node(parent, child) {
            shift[i] = shift[p];
            origin[i] = origin[p];
            if shift[i] != 0 {
                notes.spans[i].push(format!(
                    "timestamps adjusted by {} (adjust=skew): carried from ancestor {} on the same node {}",
                    fmt_ms_signed(shift[i]),
                    spans[origin[i]].span_id,
                    child.node
                ));
            }
            continue;
        }
        let (ps, pe) = times(parent);
        let parent_adjusted = (ps.saturating_add(shift[p]), pe.saturating_add(shift[p]));
        let delta = edge_delta(parent_adjusted, times(child), is_async(parent, child));
        if delta == 0 {
            continue;
        }
        if delta.unsigned_abs() > limit {
            let msg =
                format!("clock skew adjustment of {} exceeds the maximum of {}; not applied", fmt_ms_signed(delta), fmt_ms(max_ns.max(0)));
            notes.trace.push(format!("span {} on node {}: {msg}", child.span_id, child.node));
            notes.spans[i].push(msg);
            continue;
        }
        shift[i] = delta;
        notes.spans[i].push(format!(
            "timestamps adjusted by {} (adjust=skew): centred in parent {} on node {} to correct \
             the clock skew of node {}",
            fmt_ms_signed(delta),
            parent.span_id,
            parent.node,
            child.node
        ));
    }
    shift
}

#[cfg(test)]
mod tests {
    use super::edge_delta;

    #[test]
    fn edge_delta_follows_jaeger() {
        // Inside the parent: nothing to do.
        assert_eq!(edge_delta((0, 100), (10, 90), false), 0);
        // Starts 50 before a 100-long parent, 40 long: centred at 30.
        assert_eq!(edge_delta((100, 200), (50, 90), false), 80);
        // Ends after the parent: shifted back so that it is centred.
        assert_eq!(edge_delta((0, 100), (80, 120), false), -50);
        // Longer than the parent and starting before it: aligned to the parent's start.
        assert_eq!(edge_delta((100, 150), (90, 200), false), 10);
        // Longer than the parent but starting inside it: left alone.
        assert_eq!(edge_delta((100, 150), (110, 300), false), 0);
        // Async: a consumer after its producer is fine, before it is skew.
        assert_eq!(edge_delta((0, 10), (500, 600), true), 0);
        assert_eq!(edge_delta((100, 110), (60, 70), true), 40);
    }
}
