//! The messages of protocol §3, with the exact Go keys and key order.

use std::fmt;

use chrono::NaiveDate;
use serde::Serializer;
use serde_json::value::RawValue;

use crate::decode::{DecodeError, DecodeErrorKind, Field, WireDecode, decode_object, set};
use crate::{Data, WireTime};

/// Declares a wire struct: the struct itself, its Go-keyed `Serialize`, and its lenient
/// decoder, from one list of `field: Type = "GoKey"` entries so the two can never drift.
macro_rules! wire_message {
    (
        $(#[$m:meta])*
        pub struct $name:ident as $go:literal {
            $( $(#[$fm:meta])* $field:ident : $ty:ty = $key:literal ),* $(,)?
        }
    ) => {
        $(#[$m])*
        ///
        /// `Deserialize` is the strict fast path (exact keys only, no nulls, no unknown or
        /// repeated keys); [`crate::decode`] falls back to the lenient decoder when it fails.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
        pub struct $name {
            $( $(#[$fm])* #[serde(rename = $key)] pub $field: $ty, )*
        }

        impl WireDecode for $name {
            const NAME: &'static str = $go;
            fn decode_strict(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
            fn decode_raw(raw: &RawValue) -> Result<Self, DecodeError> {
                const FIELDS: &[&str] = &[$($key),*];
                let mut v = Self::default();
                decode_object(raw, $go, FIELDS, |i, val| match FIELDS[i] {
                    $( $key => set(&mut v.$field, $key, val), )*
                    _ => Ok(()),
                })?;
                Ok(v)
            }
        }

        impl Field for $name {
            fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
                <$name as WireDecode>::decode_raw(raw)
            }
        }

        // Hand-written rather than derived: a derived struct also accepts a JSON array
        // (fields by position), which neither Go nor the lenient decoder does.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {} object", $go)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        const FIELDS: &[&str] = &[$($key),*];
                        let mut v = $name::default();
                        let mut seen: u64 = 0;
                        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                            let Some(i) = FIELDS.iter().position(|f| *f == key.as_ref()) else {
                                return Err(serde::de::Error::unknown_field(&key, FIELDS));
                            };
                            if seen & (1 << i) != 0 {
                                return Err(serde::de::Error::custom("repeated key"));
                            }
                            seen |= 1 << i;
                            match FIELDS[i] {
                                $( $key => v.$field = map.next_value()?, )*
                                _ => {}
                            }
                        }
                        Ok(v)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

fn null_if_empty<T: serde::Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_unit()
    } else {
        s.collect_seq(v)
    }
}

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

impl<T: WireDecode> Field for Vec<T> {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
            DecodeError::field_type(format!(
                "expected an array, got {}",
                crate::decode::json_kind(raw)
            ))
        })?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| T::decode_raw(item).map_err(|e| e.within(&format!("[{i}]"))))
            .collect()
    }
    fn null_into(slot: &mut Self) {
        slot.clear();
    }
}

impl<T: WireDecode> Field for Option<Vec<T>> {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        Vec::<T>::decode_field(raw).map(Some)
    }
    fn null_into(slot: &mut Self) {
        *slot = None;
    }
}

wire_message! {
    /// A node as it describes itself in a cluster message.
    pub struct NodeInfo as "NodeInfo" {
        /// The node's ID (its `Nats.NodeID`).
        node_id: String = "NodeID",
        /// Public address, if configured.
        public_address: String = "PublicAddress",
        /// Listen address of its API.
        listen_address: String = "ListenAddress",
        /// Listen port of its API — a string on the wire, not a number.
        listen_port: String = "ListenPort",
        /// One of the role strings, or empty.
        node_role: String = "NodeRole",
        /// The sender's clock when it sent this; receivers use their own clock instead.
        last_heard: WireTime = "LastHeard",
    }
}

wire_message! {
    /// A membership message on `consensus.cluster`.
    pub struct ClusterMessage as "ClusterMessage" {
        /// `join` is the only type Go nodes send.
        kind: String = "type",
        /// The sending node.
        sender: NodeInfo = "sender",
        /// Always `null` from Go nodes; `None` encodes as `null`.
        members: Option<Vec<NodeInfo>> = "members",
    }
}

wire_message! {
    /// A proposed status change for one check.
    pub struct Proposal as "Proposal" {
        /// UUID v4 chosen by the proposer.
        id: String = "ID",
        /// The proposing monitor.
        sender_node_id: String = "SenderNodeID",
        /// `site`, `domain` or `endpoint`; other values are tracked but never voted on.
        check_type: String = "CheckType",
        /// The check, e.g. `ping`, `ssl`, `wss`, `ethrpc`.
        check_name: String = "CheckName",
        /// The member the check is about.
        member_name: String = "MemberName",
        /// Hostname only, lower case; empty for site checks.
        domain_name: String = "DomainName",
        /// Full URL; empty unless an endpoint check.
        endpoint: String = "Endpoint",
        /// The proposed status: true = online.
        proposed_status: bool = "ProposedStatus",
        /// The check's error text.
        error_text: String = "ErrorText",
        /// Free-form details from the check, kept untouched.
        data: Data = "Data",
        /// Whether this is about the IPv6 family.
        is_ipv6: bool = "IsIPv6",
        /// The proposer's clock at creation.
        timestamp: WireTime = "Timestamp",
    }
}

wire_message! {
    /// One monitor's vote on a proposal.
    pub struct Vote as "Vote" {
        /// The proposal voted on.
        proposal_id: String = "ProposalID",
        /// The sending node (equal to `node_id`).
        sender_node_id: String = "SenderNodeID",
        /// The voter.
        node_id: String = "NodeID",
        /// Whether the voter's local status equals the proposed status.
        agree: bool = "Agree",
        /// The voter's clock.
        timestamp: WireTime = "Timestamp",
    }
}

wire_message! {
    /// The outcome of a proposal, sent by every monitor that reached it.
    pub struct FinalizeMessage as "FinalizeMessage" {
        /// The whole proposal.
        proposal: Proposal = "Proposal",
        /// The finalizing node; omitted when empty (v0.2.0 senders), then the proposer counts.
        #[serde(skip_serializing_if = "is_empty")]
        sender_node_id: String = "SenderNodeID",
        /// Whether the proposal passed.
        passed: bool = "Passed",
        /// The finalizer's clock at the decision.
        decided_at: WireTime = "DecidedAt",
    }
}

wire_message! {
    /// Usage request (collator → DNS nodes). Empty strings mean "any".
    pub struct UsageRequest as "UsageRequest" {
        /// First day, `YYYY-MM-DD`.
        start_date: String = "startDate",
        /// Last day (inclusive), `YYYY-MM-DD`.
        end_date: String = "endDate",
        /// Domain filter.
        domain: String = "domain",
        /// Member filter.
        member_name: String = "memberName",
        /// Country code filter.
        country: String = "country",
    }
}

wire_message! {
    /// One usage row: hits for a (date, domain, member, country, network, family) key.
    pub struct UsageRecord as "UsageRecord" {
        /// The DNS node that counted the hits. Go DNS nodes leave it empty; requesters of
        /// this project stamp it with the responder's `nodeID`.
        node_id: String = "nodeid",
        /// The day: Go sends RFC 3339 midnight; see [`parse_usage_date`] for what is accepted.
        date: String = "date",
        /// The queried domain.
        domain: String = "domain",
        /// The member whose address was answered.
        member_name: String = "memberName",
        /// ISO country code of the client.
        country_code: String = "countryCode",
        /// `AS<number>` of the client network.
        asn: String = "asn",
        /// Name of the client network.
        network_name: String = "networkName",
        /// Country name of the client.
        country_name: String = "countryName",
        /// Number of answered queries.
        hits: i64 = "hits",
        /// Whether the queries arrived over IPv6 (absent from v0.2.0 senders: false).
        is_ipv6: bool = "isIPv6",
    }
}

wire_message! {
    /// A DNS node's answer to a usage request.
    pub struct UsageResponse as "UsageResponse" {
        /// The answering node.
        node_id: String = "nodeID",
        /// The records; empty encodes as `null`, as Go's nil slice does.
        #[serde(serialize_with = "null_if_empty")]
        usage_records: Vec<UsageRecord> = "usageRecords",
        /// Why the request failed; omitted when empty.
        #[serde(skip_serializing_if = "is_empty")]
        error: String = "error",
    }
}

wire_message! {
    /// Downtime request (collator / tools → monitors).
    pub struct DowntimeRequest as "DowntimeRequest" {
        /// Window start.
        start_time: WireTime = "startTime",
        /// Window end.
        end_time: WireTime = "endTime",
        /// Member filter; empty means every member.
        member_name: String = "memberName",
    }
}

wire_message! {
    /// One outage as a monitor reports it.
    pub struct DowntimeEvent as "DowntimeEvent" {
        /// The member.
        member_name: String = "memberName",
        /// `site`, `domain` or `endpoint`.
        check_type: String = "checkType",
        /// The check name.
        check_name: String = "checkName",
        /// Domain; omitted when empty.
        #[serde(skip_serializing_if = "is_empty")]
        domain_name: String = "domainName",
        /// Endpoint URL; omitted when empty.
        #[serde(skip_serializing_if = "is_empty")]
        endpoint: String = "endpoint",
        /// Status of the event (false for outages).
        status: bool = "status",
        /// When the outage started.
        start_time: WireTime = "startTime",
        /// When it ended; the zero time while it is still open.
        end_time: WireTime = "endTime",
        /// Error text of the check.
        error_text: String = "errorText",
        /// Check details, kept untouched.
        data: Data = "data",
        /// Whether this is about the IPv6 family.
        is_ipv6: bool = "isIPv6",
    }
}

wire_message! {
    /// A monitor's answer to a downtime request.
    pub struct DowntimeResponse as "DowntimeResponse" {
        /// The answering node.
        node_id: String = "nodeID",
        /// The events; empty encodes as `null`, as Go's nil slice does.
        #[serde(serialize_with = "null_if_empty")]
        events: Vec<DowntimeEvent> = "events",
        /// Why the request failed; omitted when empty.
        #[serde(skip_serializing_if = "is_empty")]
        error: String = "error",
    }
}

impl ClusterMessage {
    /// The members list, with `null` as empty.
    pub fn members(&self) -> &[NodeInfo] {
        self.members.as_deref().unwrap_or(&[])
    }
}

impl FinalizeMessage {
    /// The node that finalized: `SenderNodeID`, or the proposer when it is absent
    /// (v0.2.0 senders omit it).
    pub fn finalizer(&self) -> &str {
        if self.sender_node_id.is_empty() {
            &self.proposal.sender_node_id
        } else {
            &self.sender_node_id
        }
    }
}

/// The kind of check a proposal or event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckType {
    /// A whole member site (e.g. ping).
    Site,
    /// A domain served by a member (e.g. ssl).
    Domain,
    /// One RPC endpoint URL (e.g. wss, ethrpc).
    Endpoint,
}

impl CheckType {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckType::Site => "site",
            CheckType::Domain => "domain",
            CheckType::Endpoint => "endpoint",
        }
    }

    /// Parses the wire string, or the numeric form `1`/`2`/`3` the v0.2.0 collator stores.
    pub fn parse(s: &str) -> Option<CheckType> {
        match s.trim() {
            "site" | "1" => Some(CheckType::Site),
            "domain" | "2" => Some(CheckType::Domain),
            "endpoint" | "3" => Some(CheckType::Endpoint),
            _ => None,
        }
    }

    /// The numeric form (`1`/`2`/`3`) of the v0.2.0 collator database.
    pub const fn numeric(self) -> &'static str {
        match self {
            CheckType::Site => "1",
            CheckType::Domain => "2",
            CheckType::Endpoint => "3",
        }
    }
}

impl serde::Serialize for CheckType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for CheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a usage date as the collator does: `YYYY-MM-DD`, RFC 3339 (converted to UTC), or
/// `YYYY-MM-DD HH:MM:SS`, after trimming.
pub fn parse_usage_date(s: &str) -> Result<NaiveDate, String> {
    let t = s.trim();
    if t.len() == 10
        && let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
    {
        return Ok(d);
    }
    if let Ok(ts) = WireTime::parse(t) {
        return Ok(ts.instant().date_naive());
    }
    if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
        return Ok(dt.date());
    }
    Err(format!(
        "invalid date {:?}: expected YYYY-MM-DD, RFC 3339 or YYYY-MM-DD HH:MM:SS",
        t.chars().take(40).collect::<String>()
    ))
}

impl UsageRecord {
    /// The record's day, parsed leniently (see [`parse_usage_date`]).
    pub fn day(&self) -> Result<NaiveDate, String> {
        parse_usage_date(&self.date)
    }

    /// Formats a day the way Go DNS nodes send it: RFC 3339 midnight UTC.
    pub fn format_day(day: NaiveDate) -> String {
        day.format("%Y-%m-%dT00:00:00Z").to_string()
    }
}

impl UsageRequest {
    /// Validates the date range as the Go DNS node does (both exactly `YYYY-MM-DD`, start ≤
    /// end) and returns it.
    pub fn date_range(&self) -> Result<(NaiveDate, NaiveDate), String> {
        let day = |name: &str, v: &str| -> Result<NaiveDate, String> {
            let t = v.trim();
            if t.len() != 10 {
                return Err(format!("{name} {t:?} is not a YYYY-MM-DD date"));
            }
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map_err(|_| format!("{name} {t:?} is not a valid date"))
        };
        let start = day("startDate", &self.start_date)?;
        let end = day("endDate", &self.end_date)?;
        if start > end {
            return Err(format!("startDate {start} is after endDate {end}"));
        }
        Ok((start, end))
    }
}

impl DecodeError {
    pub(crate) fn field_type(reason: String) -> DecodeError {
        DecodeError::scalar(DecodeErrorKind::FieldType, reason)
    }
}
