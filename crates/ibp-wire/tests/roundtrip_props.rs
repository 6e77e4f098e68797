//! Property tests: every message type survives encode → decode unchanged, and decoding
//! does not care about the case of keys.

use ibp_wire::{
    ClusterMessage, Data, DowntimeEvent, DowntimeRequest, DowntimeResponse, FinalizeMessage,
    NodeInfo, Proposal, UsageRecord, UsageRequest, UsageResponse, Vote, WireDecode, WireTime,
    decode, encode,
};
use proptest::prelude::*;

mod common;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_:/.-]{0,12}",
        1 => any::<String>(),
        1 => Just("<&>\u{2028}\"\\".to_string()),
    ]
}

fn wire_time() -> impl Strategy<Value = WireTime> {
    let secs = -62_135_596_800i64..253_402_300_799i64;
    (
        secs,
        0u32..1_000_000_000,
        prop::sample::select(vec![0i32, 3600, -19_800, 20_700]),
        any::<bool>(),
    )
        .prop_map(|(s, n, off, zero)| {
            if zero {
                return WireTime::zero();
            }
            let t = chrono::DateTime::from_timestamp(s, n).expect("in range");
            let utc = WireTime::from_utc(t).to_go_string();
            if off == 0 {
                return WireTime::parse(&utc).expect("parses");
            }
            let local = t.with_timezone(&chrono::FixedOffset::east_opt(off).expect("offset"));
            let s = local.to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
            WireTime::parse(&s).unwrap_or_else(|_| WireTime::parse(&utc).expect("parses"))
        })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1e12f64..1e12).prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        Just(Data::none()),
        json_value().prop_map(|v| Data::from_value(&v))
    ]
}

prop_compose! {
    fn node_info()(node_id in text(), public_address in text(), listen_address in text(), listen_port in text(),
                   node_role in prop::sample::select(vec!["IBPMonitor", "IBPDns", "IBPCollator", ""]), last_heard in wire_time()) -> NodeInfo {
        NodeInfo { node_id, public_address, listen_address, listen_port, node_role: node_role.to_string(), last_heard }
    }
}

prop_compose! {
    fn cluster()(kind in text(), sender in node_info(), members in prop::option::of(prop::collection::vec(node_info(), 0..3))) -> ClusterMessage {
        ClusterMessage { kind, sender, members }
    }
}

prop_compose! {
    fn proposal()(id in text(), sender_node_id in text(), check_type in prop::sample::select(vec!["site", "domain", "endpoint", "other"]),
                  check_name in text(), member_name in text(), domain_name in text(), endpoint in text(),
                  proposed_status in any::<bool>(), error_text in text(), data in data(), is_ipv6 in any::<bool>(), timestamp in wire_time()) -> Proposal {
        Proposal { id, sender_node_id, check_type: check_type.to_string(), check_name, member_name, domain_name, endpoint,
                   proposed_status, error_text, data, is_ipv6, timestamp }
    }
}

prop_compose! {
    fn vote()(proposal_id in text(), node_id in text(), agree in any::<bool>(), timestamp in wire_time()) -> Vote {
        Vote { proposal_id, sender_node_id: node_id.clone(), node_id, agree, timestamp }
    }
}

prop_compose! {
    fn finalize()(proposal in proposal(), sender_node_id in text(), passed in any::<bool>(), decided_at in wire_time()) -> FinalizeMessage {
        FinalizeMessage { proposal, sender_node_id, passed, decided_at }
    }
}

prop_compose! {
    fn usage_request()(start_date in text(), end_date in text(), domain in text(), member_name in text(), country in text()) -> UsageRequest {
        UsageRequest { start_date, end_date, domain, member_name, country }
    }
}

prop_compose! {
    fn usage_record()(node_id in text(), date in text(), domain in text(), member_name in text(), country_code in text(),
                      asn in text(), network_name in text(), country_name in text(), hits in any::<i64>(), is_ipv6 in any::<bool>()) -> UsageRecord {
        UsageRecord { node_id, date, domain, member_name, country_code, asn, network_name, country_name, hits, is_ipv6 }
    }
}

prop_compose! {
    fn usage_response()(node_id in text(), usage_records in prop::collection::vec(usage_record(), 0..4), error in text()) -> UsageResponse {
        UsageResponse { node_id, usage_records, error }
    }
}

prop_compose! {
    fn downtime_request()(start_time in wire_time(), end_time in wire_time(), member_name in text()) -> DowntimeRequest {
        DowntimeRequest { start_time, end_time, member_name }
    }
}

prop_compose! {
    fn downtime_event()(member_name in text(), check_type in text(), check_name in text(), domain_name in text(), endpoint in text(),
                        status in any::<bool>(), start_time in wire_time(), end_time in wire_time(), error_text in text(), data in data(), is_ipv6 in any::<bool>()) -> DowntimeEvent {
        DowntimeEvent { member_name, check_type, check_name, domain_name, endpoint, status, start_time, end_time, error_text, data, is_ipv6 }
    }
}

prop_compose! {
    fn downtime_response()(node_id in text(), events in prop::collection::vec(downtime_event(), 0..3), error in text()) -> DowntimeResponse {
        DowntimeResponse { node_id, events, error }
    }
}

fn round_trip<T: WireDecode + serde::Serialize + PartialEq + std::fmt::Debug>(
    msg: &T,
) -> Result<(), TestCaseError> {
    let bytes = encode(msg).expect("encodes");
    let back: T = decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(&back, msg);
    // Go matches keys case-insensitively: shouting every key must not change the value.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    shout_keys(&mut v);
    let shouted = serde_json::to_vec(&v).expect("json");
    let back: T = decode(&shouted).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// Upper-cases every key outside free-form payloads.
fn shout_keys(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        let old = std::mem::take(map);
        for (k, mut val) in old {
            if !k.eq_ignore_ascii_case("data") {
                shout_keys(&mut val);
            }
            map.insert(k.to_uppercase(), val);
        }
    } else if let serde_json::Value::Array(items) = v {
        items.iter_mut().for_each(shout_keys);
    }
}

fn config() -> ProptestConfig {
    let seed = common::test_seed("wire round-trip properties");
    ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]
    #[test] fn cluster_message_round_trips(m in cluster()) { round_trip(&m)?; }
    #[test] fn proposal_round_trips(m in proposal()) { round_trip(&m)?; }
    #[test] fn vote_round_trips(m in vote()) { round_trip(&m)?; }
    #[test] fn finalize_round_trips(m in finalize()) { round_trip(&m)?; }
    #[test] fn usage_request_round_trips(m in usage_request()) { round_trip(&m)?; }
    #[test] fn usage_response_round_trips(m in usage_response()) { round_trip(&m)?; }
    #[test] fn downtime_request_round_trips(m in downtime_request()) { round_trip(&m)?; }
    #[test] fn downtime_response_round_trips(m in downtime_response()) { round_trip(&m)?; }
}
