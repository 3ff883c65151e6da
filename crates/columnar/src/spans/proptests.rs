//! Property tests of the wire decoder: random requests, and random damage to their
//! encodings, go through both paths (see `tests::check`): either both fail, or both succeed with
//! equal batches and equal validation outcomes. Arbitrary bytes must never make it panic.

use super::tests::{check, tight};
use proptest::prelude::*;
use prost::Message;
use skein_otlp::proto::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value};
use skein_otlp::proto::resource::v1::Resource;
use skein_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use skein_otlp::{ExportTraceServiceRequest, Limits};

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["service.name", "host.name", "k8s.pod.name", "host.id", "k"]).prop_map(String::from),
        1 => "[a-zé𝄞]{0,3}",
    ]
}

fn arb_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        4 => "[ -~é€𝄞]{0,10}".prop_map(Value::StringValue),
        1 => any::<bool>().prop_map(Value::BoolValue),
        2 => any::<i64>().prop_map(Value::IntValue),
        1 => any::<f64>().prop_map(Value::DoubleValue),
        1 => prop::collection::vec(any::<u8>(), 0..10).prop_map(Value::BytesValue),
        1 => any::<i32>().prop_map(Value::StringValueStrindex),
    ];
    let leaf = prop_oneof![1 => Just(AnyValue { value: None }), 12 => leaf.prop_map(|v| AnyValue { value: Some(v) })];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|values| AnyValue { value: Some(Value::ArrayValue(ArrayValue { values })) }),
            prop::collection::vec((arb_key(), inner), 0..3).prop_map(|kvs| {
                let values = kvs.into_iter().map(|(key, v)| KeyValue { key, value: Some(v), ..Default::default() }).collect();
                AnyValue { value: Some(Value::KvlistValue(KeyValueList { values })) }
            }),
        ]
    })
}

fn arb_attrs() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec((arb_key(), prop::option::weighted(0.95, arb_value())), 0..5)
        .prop_map(|kvs| kvs.into_iter().map(|(key, value)| KeyValue { key, value, ..Default::default() }).collect())
}

fn arb_id(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![8 => prop::collection::vec(any::<u8>(), n), 1 => Just(vec![0; n]), 1 => prop::collection::vec(any::<u8>(), 0..n + 2)]
}

fn arb_time() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..1_000, 1 => Just(0u64), 1 => Just(u64::MAX)]
}

fn arb_span() -> impl Strategy<Value = Span> {
    let ids = (arb_id(16), arb_id(8), prop_oneof![Just(vec![]), arb_id(8)], arb_time(), arb_time());
    let text = ("[a-z ]{0,4}", "[a-zé]{0,3}", any::<u32>(), -1i32..8, any::<u32>());
    let events = prop::collection::vec((arb_time(), "[a-z]{0,3}", arb_attrs(), 0u32..3), 0..3).prop_map(|es| {
        es.into_iter()
            .map(|(time_unix_nano, name, attributes, dropped_attributes_count)| span::Event {
                time_unix_nano,
                name,
                attributes,
                dropped_attributes_count,
            })
            .collect::<Vec<_>>()
    });
    let links = prop::collection::vec((arb_id(16), arb_id(8), "[a-z=]{0,3}", arb_attrs(), any::<u32>()), 0..3).prop_map(|ls| {
        ls.into_iter()
            .map(|(trace_id, span_id, trace_state, attributes, flags)| span::Link {
                trace_id,
                span_id,
                trace_state,
                attributes,
                flags,
                dropped_attributes_count: 0,
            })
            .collect::<Vec<_>>()
    });
    let status = prop::option::of(("[a-z]{0,3}", 0i32..4).prop_map(|(message, code)| Status { message, code }));
    (ids, text, arb_attrs(), events, links, status, (0u32..3, prop_oneof![Just(0u32), Just(u32::MAX)])).prop_map(
        |(
            (trace_id, span_id, parent_span_id, start, dur),
            (name, trace_state, flags, kind, dropped),
            attributes,
            events,
            links,
            status,
            (de, dl),
        )| Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_state,
            flags,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(dur % 7).wrapping_sub(u64::from(dur % 5 == 0)),
            attributes,
            dropped_attributes_count: dropped,
            events,
            dropped_events_count: de,
            links,
            dropped_links_count: dl,
            status,
        },
    )
}

fn arb_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope = prop::option::of(("[a-z]{0,2}", "[0-9]{0,2}", arb_attrs()).prop_map(|(name, version, attributes)| InstrumentationScope {
        name,
        version,
        attributes,
        dropped_attributes_count: 0,
    }));
    let ss =
        (scope, prop::collection::vec(arb_span(), 0..4)).prop_map(|(scope, spans)| ScopeSpans { scope, spans, schema_url: String::new() });
    let resource = prop::option::of(arb_attrs().prop_map(|attributes| Resource { attributes, ..Default::default() }));
    let rs = (resource, prop::collection::vec(ss, 0..3)).prop_map(|(resource, scope_spans)| ResourceSpans {
        resource,
        scope_spans,
        schema_url: String::new(),
    });
    prop::collection::vec(rs, 0..3).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn arb_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![1 => Just(Limits::default()), 3 => (0usize..5, 0usize..12).prop_map(|(a, l)| tight(a, l))]
}

/// Damage to an encoding: none, a truncation, a flipped bit, an inserted or a removed byte.
fn damage(mut body: Vec<u8>, kind: u8, at: usize, byte: u8) -> Vec<u8> {
    if body.is_empty() {
        return body;
    }
    let i = at % body.len();
    match kind % 5 {
        1 => body.truncate(i),
        2 => body[i] ^= 1 << (byte % 8),
        3 => body.insert(i, byte),
        4 => drop(body.remove(i)),
        _ => {}
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_match_the_reference(r in arb_request(), limits in arb_limits()) {
        check(&r.encode_to_vec(), &limits).expect("a valid encoding decodes");
    }

    #[test]
    fn damaged_requests_match_the_reference(r in arb_request(), limits in arb_limits(), kind in 1u8..5, at: usize, byte: u8) {
        check(&damage(r.encode_to_vec(), kind, at, byte), &limits).ok();
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_match(body in prop::collection::vec(any::<u8>(), 0..48)) {
        check(&body, &Limits::default()).ok();
    }
}
