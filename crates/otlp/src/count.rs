//! Items (spans, log records, data points) in an encoded export request, counted on the wire
//! without decoding it: the agent counts what it delivers and drops per signal this way.

use crate::Signal;
use crate::wire::{Cur, LEN};

/// Calls `f(field, bytes)` for each length-delimited field of the message `b`, skipping the
/// others; `None` if `b` is not a well-formed message.
fn fields<'a>(b: &'a [u8], mut f: impl FnMut(u64, &'a [u8]) -> Option<()>) -> Option<()> {
    let mut c = Cur::new(b);
    while !c.done() {
        match c.key()? {
            (field, LEN) => f(field, c.len_delimited()?)?,
            (_, wire_type) => c.skip(wire_type)?,
        }
    }
    Some(())
}

/// `body` (an export request: repeated top-level resources) cut at resource boundaries into
/// pieces of at most `max` bytes each; a single resource over `max` is a piece of its own. A
/// body that is not well formed is one piece (the receiver will say what is wrong with it).
/// Each piece is an export request itself, and their items together are the body's.
pub fn split_request(body: &[u8], max: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let (mut start, mut c) = (0usize, Cur::new(body));
    while !c.done() {
        let at = c.pos();
        let Some(()) = c.key().and_then(|(_, wire_type)| c.skip(wire_type)) else { return vec![body] };
        if c.pos() - start > max && at > start {
            pieces.push(&body[start..at]);
            start = at;
        }
    }
    if start < body.len() || pieces.is_empty() {
        pieces.push(&body[start..]);
    }
    pieces
}

/// Occurrences of the last field of `path` inside the fields before it (each level repeated).
fn count_path(b: &[u8], path: &[u64], leaf: &dyn Fn(&[u8]) -> Option<usize>) -> Option<usize> {
    let Some((&first, rest)) = path.split_first() else { return leaf(b) };
    let mut n = 0usize;
    fields(b, |field, inner| {
        if field == first {
            n += count_path(inner, rest, leaf)?;
        }
        Some(())
    })?;
    Some(n)
}

/// Data points of one encoded `Metric`: `data_points` (field 1) of its gauge (5), sum (7),
/// histogram (9), exponential histogram (10) or summary (11).
fn metric_points(b: &[u8]) -> Option<usize> {
    let mut n = 0;
    fields(b, |field, data| {
        if matches!(field, 5 | 7 | 9 | 10 | 11) {
            n += count_path(data, &[1], &|_| Some(1))?;
        }
        Some(())
    })?;
    Some(n)
}

/// Spans, log records or data points in the protobuf `Export*ServiceRequest` of `signal`;
/// `None` if `body` is not well formed.
pub fn count_items(signal: Signal, body: &[u8]) -> Option<usize> {
    match signal {
        // request.resource_* (1) → resource_*.scope_* (2) → scope_*.spans / log_records (2)
        Signal::Traces | Signal::Logs => count_path(body, &[1, 2, 2], &|_| Some(1)),
        // … → scope_metrics.metrics (2) → each metric's points
        Signal::Metrics => count_path(body, &[1, 2, 2], &metric_points),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::signals::{Line, logs_request};
    use crate::synth::{Synth, SynthConfig};
    use prost::Message;

    #[test]
    fn counts_match_the_decoded_requests() {
        let (traces, _) = Synth::new(SynthConfig::default()).batch(7, 1_700_000_000_000_000_000);
        let spans: usize = traces.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        assert!(spans > 7);
        assert_eq!(count_items(Signal::Traces, &traces.encode_to_vec()), Some(spans));
        let lines: Vec<Line> = (0..5).map(|i| Line { time: i, body: format!("line {i}"), ..Line::default() }).collect();
        assert_eq!(count_items(Signal::Logs, &logs_request("n", "s", &lines).encode_to_vec()), Some(5));
        let mut metrics = crate::synth::signals::metrics_for_spans(&traces, &mut Default::default(), 1, 2);
        let gauge = crate::synth::signals::metrics_request("n", "g", false, &[(1, 1.0), (2, 2.0)], &[]);
        metrics.resource_metrics.extend(gauge.resource_metrics);
        let points: usize = metrics
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(crate::validate_signals::data_points)
            .sum();
        assert!(points > 3);
        assert_eq!(count_items(Signal::Metrics, &metrics.encode_to_vec()), Some(points));
        assert_eq!(count_items(Signal::Traces, &[]), Some(0));
        // Truncated or garbage input is an answer of None, never a panic.
        let b = traces.encode_to_vec();
        for cut in [1, 5, b.len() / 2, b.len() - 1] {
            let _ = count_items(Signal::Traces, &b[..cut]);
        }
        assert_eq!(count_items(Signal::Traces, &[0x0a, 0xff]), None);
        assert_eq!(count_items(Signal::Logs, &[0xff; 12]), None);
    }

    #[test]
    fn a_request_splits_into_whole_resources() {
        let (traces, _) = Synth::new(SynthConfig::default()).batch(40, 1_700_000_000_000_000_000);
        let b = traces.encode_to_vec();
        let resources: Vec<usize> = traces.resource_spans.iter().map(|r| r.encoded_len()).collect();
        assert!(resources.len() > 3);
        let max = b.len() / 3;
        let pieces = split_request(&b, max);
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        assert_eq!(pieces.concat(), b);
        let mut spans = 0;
        for p in &pieces {
            let r = crate::ExportTraceServiceRequest::decode(*p).unwrap();
            assert!(p.len() <= max || r.resource_spans.len() == 1, "{} bytes in {} resources", p.len(), r.resource_spans.len());
            spans += count_items(Signal::Traces, p).unwrap();
        }
        assert_eq!(Some(spans), count_items(Signal::Traces, &b));
        // Under the limit, or not protobuf: one piece, as it was.
        assert_eq!(split_request(&b, b.len()), vec![&b[..]]);
        assert_eq!(split_request(&[0x0a, 0xff], 1), vec![&[0x0a, 0xff][..]]);
        assert_eq!(split_request(&[], 1), vec![&[0u8; 0][..]]);
        // Smaller than any resource: one resource a piece.
        assert_eq!(split_request(&b, 1).len(), traces.resource_spans.len());
    }
}
