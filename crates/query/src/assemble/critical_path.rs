//! The critical path: the chain of work that determined the trace's duration.
//!
//! The standard algorithm (Jaeger UI's `criticalPath`): start at the root's end; in the current
//! span, take the child that finished last before the cursor, attribute the time from that
//! child's end to the cursor to the current span, descend into the child, and when it is done
//! continue in the parent from the child's start. The parent's own time fills the gaps.
//! Children are first clipped to their parent's interval (a child sticking out of its parent,
//! usually clock skew or async work, cannot extend the parent's path), and those entirely
//! outside are dropped with their subtree.
//!
//! The walk is iterative and consumes each child at most once, so it terminates on any input.

use serde::Serialize;
use skein_columnar::SpanRecord;

/// One stretch of the critical path spent in one span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathSegment {
    /// The span the time is attributed to, lowercase hex.
    pub span_id: String,
    /// Unix nanoseconds.
    pub start_time_unix_nano: i64,
    /// Unix nanoseconds.
    pub end_time_unix_nano: i64,
}

struct Frame {
    span: usize,
    /// The walk is at this time, going backwards.
    cursor: i64,
    /// Clipped children, latest end first.
    kids: Vec<usize>,
    next: usize,
}

/// Critical path below `root`, in time order. `times` are the (possibly adjusted) start and
/// end of every span; `children` the forest built by the assembler.
pub(super) fn compute(root: usize, spans: &[SpanRecord], children: &[Vec<usize>], times: &[(i64, i64)]) -> Vec<PathSegment> {
    let clip = clip_to_parents(root, children, times);
    let kids_of = |span: usize| {
        let mut kids: Vec<usize> = children[span].iter().copied().filter(|&c| clip[c].is_some()).collect();
        kids.sort_by_key(|&c| {
            let (s, e) = clip[c].unwrap_or_default();
            (std::cmp::Reverse(e), std::cmp::Reverse(s))
        });
        kids
    };
    let Some((_, root_end)) = clip[root] else {
        return Vec::new();
    };
    let mut segments: Vec<(usize, i64, i64)> = Vec::new();
    let mut stack = vec![Frame { span: root, cursor: root_end, kids: kids_of(root), next: 0 }];
    while let Some(f) = stack.last_mut() {
        let found = f.kids[f.next..].iter().position(|&c| clip[c].is_some_and(|(_, e)| e <= f.cursor)).map(|k| f.next + k);
        match found {
            Some(k) => {
                let child = f.kids[k];
                let (cs, ce) = clip[child].unwrap_or_default();
                f.next = k + 1;
                if ce < f.cursor {
                    segments.push((f.span, ce, f.cursor));
                }
                // When the child's part of the path is done, the parent continues from its start.
                f.cursor = cs;
                stack.push(Frame { span: child, cursor: ce, kids: kids_of(child), next: 0 });
            }
            None => {
                let (start, _) = clip[f.span].unwrap_or_default();
                if start < f.cursor {
                    segments.push((f.span, start, f.cursor));
                }
                stack.pop();
            }
        }
    }
    segments
        .into_iter()
        .rev()
        .map(|(i, start, end)| PathSegment { span_id: spans[i].span_id.to_hex(), start_time_unix_nano: start, end_time_unix_nano: end })
        .collect()
}

/// Each span's interval clipped to its parent's clipped interval; `None` outside `root`'s
/// subtree and for spans that fall entirely outside their parent (or have no duration).
fn clip_to_parents(root: usize, children: &[Vec<usize>], times: &[(i64, i64)]) -> Vec<Option<(i64, i64)>> {
    let mut clip = vec![None; times.len()];
    let (rs, re) = times[root];
    if rs >= re {
        return clip;
    }
    clip[root] = Some((rs, re));
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let Some((ps, pe)) = clip[p] else { continue };
        for &c in &children[p] {
            if clip[c].is_some() {
                continue;
            }
            let (cs, ce) = times[c];
            let (s, e) = (cs.max(ps), ce.min(pe));
            if s < e {
                clip[c] = Some((s, e));
                stack.push(c);
            }
        }
    }
    clip
}
