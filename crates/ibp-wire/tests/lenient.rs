//! Decoding is at least as lenient as Go's encoding/json, and strict where Go is strict.

use ibp_wire::{
    ClusterMessage, DecodeErrorKind, DowntimeEvent, DowntimeResponse, FinalizeMessage, Proposal,
    UsageRecord, UsageRequest, UsageResponse, Vote, WireTime, decode, encode_to_string,
    parse_usage_date,
};

#[test]
fn keys_match_case_insensitively() {
    let v: Vote = decode(br#"{"proposalid":"p1","SENDERNODEID":"a","nodeId":"a","agree":true}"#)
        .expect("decodes");
    assert_eq!(v.proposal_id, "p1");
    assert_eq!(v.sender_node_id, "a");
    assert_eq!(v.node_id, "a");
    assert!(v.agree);
    let r: UsageRecord = decode(br#"{"NodeID":"dns1","HITS":5,"isipv6":true}"#).expect("decodes");
    assert_eq!((r.node_id.as_str(), r.hits, r.is_ipv6), ("dns1", 5, true));
    let c: ClusterMessage =
        decode(br#"{"Type":"join","Sender":{"nodeid":"x","noderole":"IBPDns"}}"#).expect("decodes");
    assert_eq!(c.kind, "join");
    assert_eq!(c.sender.node_id, "x");
    assert_eq!(c.sender.node_role, "IBPDns");
}

#[test]
fn repeated_keys_last_non_null_wins_like_go() {
    let r: UsageResponse = decode(br#"{"nodeid":"a","nodeID":"b"}"#).expect("decodes");
    assert_eq!(r.node_id, "b");
    let r: UsageResponse = decode(br#"{"nodeID":"b","NODEID":"c"}"#).expect("decodes");
    assert_eq!(r.node_id, "c");
    let r: UsageResponse = decode(br#"{"nodeID":"b","nodeid":null}"#).expect("decodes");
    assert_eq!(r.node_id, "b", "null leaves a scalar untouched, as in Go");
}

#[test]
fn nulls_become_empty_and_missing_fields_take_defaults() {
    let p: Proposal =
        decode(br#"{"ID":"x","ErrorText":null,"Data":null,"Timestamp":null,"IsIPv6":null}"#)
            .expect("decodes");
    assert_eq!(p.id, "x");
    assert_eq!(p.error_text, "");
    assert!(p.data.is_none());
    assert!(p.timestamp.is_zero());
    assert!(!p.is_ipv6);
    let r: UsageResponse = decode(br#"{"nodeID":"d","usageRecords":null}"#).expect("decodes");
    assert!(r.usage_records.is_empty());
    let d: DowntimeResponse =
        decode(br#"{"nodeID":"m","events":[null,{"memberName":"x"}]}"#).expect("decodes");
    assert_eq!(d.events.len(), 2);
    assert_eq!(d.events[0], DowntimeEvent::default());
    let f: FinalizeMessage = decode(b"{}").expect("decodes");
    assert_eq!(f, FinalizeMessage::default());
    let n: Vote = decode(b"null").expect("top-level null is a zero value in Go");
    assert_eq!(n, Vote::default());
}

#[test]
fn unknown_keys_are_ignored() {
    let v: Vote =
        decode(br#"{"ProposalID":"p","Extra":{"deep":[1,2,{"x":null}]},"Signature":"abc"}"#)
            .expect("decodes");
    assert_eq!(v.proposal_id, "p");
}

#[test]
fn data_payload_is_kept_untouched() {
    let raw =
        br#"{"ID":"p","Data":{"b":1.50,"a":[1e3, 12345678901234567890123],"nested":{"k":null}}}"#;
    let p: Proposal = decode(raw).expect("decodes");
    assert_eq!(
        p.data.as_json(),
        r#"{"b":1.50,"a":[1e3, 12345678901234567890123],"nested":{"k":null}}"#
    );
    let out = encode_to_string(&p).expect("encodes");
    assert!(
        out.contains(r#""Data":{"b":1.50,"a":[1e3, 12345678901234567890123],"nested":{"k":null}}"#),
        "{out}"
    );
    let arr: Proposal = decode(br#"{"Data":[1,2]}"#).expect("non-object payloads are kept too");
    assert_eq!(arr.data.as_json(), "[1,2]");
}

#[test]
fn timestamps_accept_any_number_of_fraction_digits() {
    for (raw, want) in [
        ("2026-11-27T10:50:59Z", "2026-11-27T10:50:59Z"),
        ("2026-11-27T10:50:59.4Z", "2026-11-27T10:50:59.4Z"),
        (
            "2026-11-27T10:50:59.458685253Z",
            "2026-11-27T10:50:59.458685253Z",
        ),
        (
            "2026-11-27T10:50:59.4586852531234Z",
            "2026-11-27T10:50:59.458685253Z",
        ),
    ] {
        let json = format!(r#"{{"Timestamp":"{raw}"}}"#);
        let v: Vote = decode(json.as_bytes()).expect("decodes");
        assert_eq!(v.timestamp.to_go_string(), want);
    }
}

#[test]
fn usage_dates_accept_the_three_go_forms() {
    let want = chrono::NaiveDate::from_ymd_opt(2026, 4, 15).expect("date");
    for s in [
        "2026-04-15",
        "2026-04-15T00:00:00Z",
        " 2026-04-15 13:14:15 ",
        "2026-04-15T23:30:00-00:00",
        "2026-04-16T01:00:00+02:00",
    ] {
        assert_eq!(parse_usage_date(s), Ok(want), "{s:?}");
    }
    for s in ["", "2026-4-15", "15.04.2026", "2026-02-30"] {
        assert!(parse_usage_date(s).is_err(), "{s:?}");
    }
    assert_eq!(UsageRecord::format_day(want), "2026-04-15T00:00:00Z");
}

#[test]
fn usage_request_validation_names_the_field() {
    let ok = UsageRequest {
        start_date: "2026-01-01".into(),
        end_date: "2026-01-02".into(),
        ..Default::default()
    };
    assert!(ok.date_range().is_ok());
    let bad = UsageRequest {
        start_date: "2026-01-03".into(),
        end_date: "2026-01-02".into(),
        ..Default::default()
    };
    assert!(bad.date_range().unwrap_err().contains("after"));
    let bad = UsageRequest {
        start_date: "2026-01-3".into(),
        end_date: "2026-01-02".into(),
        ..Default::default()
    };
    assert!(bad.date_range().unwrap_err().contains("startDate"));
}

#[test]
fn wrong_types_are_errors_naming_the_field() {
    let e = decode::<Vote>(br#"{"Agree":"yes"}"#).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::FieldType);
    assert_eq!(e.path(), "Vote.Agree");
    let e = decode::<FinalizeMessage>(br#"{"Proposal":{"Timestamp":"yesterday"}}"#).unwrap_err();
    assert_eq!(e.path(), "FinalizeMessage.Proposal.Timestamp");
    assert!(e.to_string().contains("RFC 3339"), "{e}");
    let e = decode::<UsageResponse>(br#"{"usageRecords":[{},{"hits":1.5}]}"#).unwrap_err();
    assert_eq!(e.path(), "UsageResponse.usageRecords[1].hits");
    let e = decode::<Vote>(b"[1,2]").unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::NotAnObject);
    let e = decode::<Vote>(b"{\"ProposalID\":").unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::Syntax);
}

#[test]
fn invalid_utf8_is_replaced_not_refused() {
    let v: Vote = decode(b"{\"ProposalID\":\"a\xffb\"}").expect("decodes");
    assert_eq!(v.proposal_id, "a\u{FFFD}b");
}

#[test]
fn encoding_uses_exact_go_keys() {
    let rec = UsageRecord {
        node_id: "d1".into(),
        hits: 3,
        ..Default::default()
    };
    let resp = UsageResponse {
        node_id: "d1".into(),
        usage_records: vec![rec],
        error: String::new(),
    };
    let s = encode_to_string(&resp).expect("encodes");
    assert!(
        s.starts_with(r#"{"nodeID":"d1","usageRecords":[{"nodeid":"d1","date":"""#),
        "{s}"
    );
    assert!(!s.contains("error"), "empty error omitted: {s}");
    let empty = encode_to_string(&UsageResponse {
        node_id: "d".into(),
        error: "boom".into(),
        ..Default::default()
    })
    .expect("encodes");
    assert_eq!(
        empty,
        r#"{"nodeID":"d","usageRecords":null,"error":"boom"}"#
    );
    let f = encode_to_string(&FinalizeMessage::default()).expect("encodes");
    assert!(
        !f.contains("SenderNodeID\":\"\",\"Passed"),
        "empty finalizer omitted: {f}"
    );
    assert!(f.contains(r#""DecidedAt":"0001-01-01T00:00:00Z""#), "{f}");
    let c = encode_to_string(&ClusterMessage {
        kind: "join".into(),
        ..Default::default()
    })
    .expect("encodes");
    assert!(
        c.starts_with(r#"{"type":"join","sender":{"NodeID":"""#)
            && c.ends_with(r#""members":null}"#),
        "{c}"
    );
    let ev = encode_to_string(&DowntimeEvent {
        member_name: "m".into(),
        ..Default::default()
    })
    .expect("encodes");
    assert!(
        !ev.contains("domainName") && !ev.contains("\"endpoint\""),
        "{ev}"
    );
    assert!(ev.contains(r#""endTime":"0001-01-01T00:00:00Z""#));
}

#[test]
fn finalizer_falls_back_to_proposer() {
    let mut f = FinalizeMessage::default();
    f.proposal.sender_node_id = "proposer".into();
    assert_eq!(f.finalizer(), "proposer");
    f.sender_node_id = "finalizer".into();
    assert_eq!(f.finalizer(), "finalizer");
    let _ = WireTime::zero();
}
