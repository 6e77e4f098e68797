//! The PowerDNS remote-backend protocol (dns.md §2) as PowerDNS speaks it with
//! `post=1,post_json=1`: one JSON object `{"method", "parameters"}` in, `{"result": …}`
//! out. Compatible with the Go node's answers, with its weaknesses fixed: the client
//! subnet is used and answers carry `scopeMask` (W1, W2), `list` works (W4), and no
//! answer is `null` or an HTTP error where PowerDNS would log a backend failure (W5).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::answer::{Client, Resolver};
use crate::normalize;
use crate::zones::Record;

/// Largest request body read (as the Go node).
pub const MAX_BODY: usize = 1 << 20;

/// A request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `initialize`.
    Initialize,
    /// `lookup`: name (normalized), type (upper case), client.
    Lookup {
        /// Normalized name.
        qname: String,
        /// Upper-case type.
        qtype: String,
        /// Who asks.
        client: Option<Client>,
    },
    /// `list` (AXFR).
    List {
        /// Normalized zone.
        zone: String,
    },
    /// `getAllDomains`.
    GetAllDomains,
    /// `getDomainInfo`.
    GetDomainInfo {
        /// Normalized zone.
        name: String,
    },
    /// `getAllDomainMetadata`.
    GetAllDomainMetadata {
        /// Normalized zone.
        name: String,
    },
    /// `getDomainKeys`.
    GetDomainKeys {
        /// Normalized zone.
        name: String,
    },
    /// `getMemberEvents` (not a PowerDNS method): outages of a member.
    GetMemberEvents {
        /// Member.
        member: String,
        /// Hostname filter.
        domain: String,
        /// RFC 3339 start (may be empty).
        start: String,
        /// RFC 3339 end (may be empty).
        end: String,
    },
    /// A method this backend does not implement.
    Unknown(String),
}

#[derive(Deserialize)]
struct Envelope {
    method: String,
    #[serde(default)]
    parameters: Params,
}

/// A string, or (W4: PowerDNS sends `domain_id` as a number) a number as text.
#[derive(Default)]
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Text(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Params {
    qname: Text,
    qtype: Text,
    remote: Text,
    #[serde(rename = "real-remote")]
    real_remote: Text,
    zonename: Text,
    name: Text,
    #[serde(rename = "memberName")]
    member_name: Text,
    domain: Text,
    #[serde(rename = "startTime")]
    start_time: Text,
    #[serde(rename = "endTime")]
    end_time: Text,
}

fn get(t: &Text) -> &str {
    t.0.as_deref().unwrap_or("")
}

/// Parses a request body; an error is the answer to give (HTTP 400).
pub fn parse(body: &[u8]) -> Result<Request, (u16, Value)> {
    if body.len() > MAX_BODY {
        return Err((
            400,
            json!({"result": "Bad request", "error": "body larger than 1 MiB"}),
        ));
    }
    let e: Envelope = serde_json::from_slice(body).map_err(|e| {
        (
            400,
            json!({"result": "Bad request", "error": e.to_string()}),
        )
    })?;
    let p = &e.parameters;
    Ok(match e.method.as_str() {
        "initialize" => Request::Initialize,
        "lookup" => Request::Lookup {
            qname: get(&p.qname)
                .to_ascii_lowercase()
                .strip_suffix('.')
                .map(str::to_string)
                .unwrap_or_else(|| get(&p.qname).to_ascii_lowercase()),
            qtype: get(&p.qtype).trim().to_ascii_uppercase(),
            client: Client::from_params(p.real_remote.0.as_deref(), p.remote.0.as_deref()),
        },
        "list" => Request::List {
            zone: normalize(get(&p.zonename)),
        },
        "getAllDomains" => Request::GetAllDomains,
        "getDomainInfo" => Request::GetDomainInfo {
            name: normalize(if get(&p.name).is_empty() {
                get(&p.qname)
            } else {
                get(&p.name)
            }),
        },
        "getAllDomainMetadata" => Request::GetAllDomainMetadata {
            name: normalize(get(&p.name)),
        },
        "getDomainKeys" => Request::GetDomainKeys {
            name: normalize(get(&p.name)),
        },
        "getMemberEvents" => Request::GetMemberEvents {
            member: get(&p.member_name).to_string(),
            domain: get(&p.domain).to_string(),
            start: get(&p.start_time).to_string(),
            end: get(&p.end_time).to_string(),
        },
        other => Request::Unknown(other.to_string()),
    })
}

#[derive(Serialize)]
struct Reply<T: Serialize> {
    result: T,
}

/// Serializes `{"result": value}` keeping struct field order (the Go node's key order).
fn body<T: Serialize>(result: T) -> Vec<u8> {
    let mut v =
        serde_json::to_vec(&Reply { result }).unwrap_or_else(|_| b"{\"result\":false}".to_vec());
    v.push(b'\n');
    v
}

/// `{"result": records}`.
pub fn records(rs: &[Record]) -> Vec<u8> {
    body(rs)
}

#[derive(Serialize)]
struct DomainInfo<'a> {
    id: u32,
    zone: &'a str,
    masters: Option<Vec<String>>,
    notified_serial: i64,
    serial: i64,
    last_check: i64,
    kind: &'static str,
}

fn domain_info<'a>(r: &Resolver, zone: &'a str, now_unix: i64) -> DomainInfo<'a> {
    DomainInfo {
        id: r.zones.zone_id(zone),
        zone,
        masters: r.zones.masters(zone),
        notified_serial: now_unix,
        serial: now_unix,
        last_check: now_unix,
        kind: "NATIVE",
    }
}

/// The answer to every request but `getMemberEvents` (which needs the database; the
/// node answers it) and the ACME part of `lookup` (which needs fetching): HTTP status
/// and body.
pub fn respond(r: &Resolver, req: &Request, now_unix: i64) -> (u16, Vec<u8>) {
    match req {
        Request::Initialize => (200, body(true)),
        Request::Lookup {
            qname,
            qtype,
            client,
        } => {
            let a = r.lookup(qname, qtype, client.as_ref(), now_unix);
            (200, records(&a.records))
        }
        Request::List { zone } if r.zones.is_zone(zone) => {
            (200, records(&r.zones.list(zone, now_unix)))
        }
        // W4/W5: not our zone → false ("no such zone"), not an HTTP error.
        Request::List { .. } => (200, body(false)),
        Request::GetAllDomains => {
            let all: Vec<DomainInfo<'_>> = r
                .zones
                .zones()
                .map(|(z, _)| domain_info(r, z, now_unix))
                .collect();
            (200, body(all))
        }
        Request::GetDomainInfo { name } if r.zones.is_zone(name) => {
            (200, body(domain_info(r, name, now_unix)))
        }
        Request::GetDomainInfo { .. } => (200, body(false)),
        Request::GetAllDomainMetadata { name } if r.zones.is_zone(name) => {
            (200, body(json!({"PRESIGNED": ["0"]})))
        }
        Request::GetAllDomainMetadata { .. } => (200, body(json!({}))),
        Request::GetDomainKeys { .. } => (200, body(Vec::<Value>::new())),
        Request::GetMemberEvents { .. } => (500, body("getMemberEvents needs the database")),
        // W5: an unknown method is "not implemented" (false), which PowerDNS handles.
        Request::Unknown(_) => (200, body(false)),
    }
}

/// A parse failure's answer as bytes.
pub fn error_body(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn resolver() -> Resolver {
        let members = serde_json::json!({
            "Alpha": {"Details": {"Name": "Alpha"}, "Service": {"Active": 1, "ServiceIPv4": "10.0.0.1", "ServiceIPv6": ""},
                      "ServiceAssignments": {"N": ["Svc"]}}
        });
        let services = serde_json::json!({
            "Svc": {"Configuration": {"Active": 1}, "Providers": {"P": {"RpcUrls": ["wss://rpc.example.test/x"]}}}
        });
        let lists = ibp_lists::IbpConfig::parse(&members.to_string(), &services.to_string())
            .expect("lists");
        let statics = serde_json::from_value(serde_json::json!([
            {"qname": "example.test", "qtype": "NS", "content": "ns1.example.test", "ttl": 3600},
            {"qname": "dns-01.example.test", "qtype": "A", "content": "10.5.5.5", "ttl": 3600}
        ]))
        .expect("statics");
        let zones = crate::zones::Zones::build(&lists, statics);
        Resolver::new(&lists, zones, Arc::new(crate::geo::NoGeo))
    }

    fn call(r: &Resolver, body: Value) -> (u16, Value) {
        match parse(body.to_string().as_bytes()) {
            Ok(req) => {
                let (s, b) = respond(r, &req, 1000);
                (s, serde_json::from_slice(&b).expect("json"))
            }
            Err(e) => e,
        }
    }

    fn raw(r: &Resolver, body: Value) -> String {
        let req = parse(body.to_string().as_bytes()).expect("request");
        String::from_utf8(respond(r, &req, 1000).1).expect("utf-8")
    }

    #[test]
    fn lookups_answer_as_the_go_node_with_a_scope() {
        let r = resolver();
        let v = raw(
            &r,
            json!({"method": "lookup", "parameters": {"qname": "RPC.example.test.", "qtype": "ANY",
            "remote": "127.0.0.1", "real-remote": "10.1.0.0/24", "zone-id": -1}}),
        );
        assert_eq!(
            v.trim_end(),
            r#"{"result":[{"qname":"rpc.example.test","qtype":"A","content":"10.0.0.1","ttl":30,"auth":true,"domain_id":"#.to_string()
                + &crate::zones::crc_id("rpc.example.test").to_string()
                + r#","scopeMask":0}]}"#
        );
        let (_, v) = call(
            &r,
            json!({"method": "lookup", "parameters": {"qname": "nothing.test.", "qtype": "ANY"}}),
        );
        assert_eq!(v, json!({"result": []}));
    }

    #[test]
    fn zone_methods_never_answer_null() {
        let r = resolver();
        assert_eq!(
            call(&r, json!({"method": "initialize", "parameters": {}})),
            (200, json!({"result": true}))
        );
        let (_, info) = call(
            &r,
            json!({"method": "getDomainInfo", "parameters": {"name": "example.test."}}),
        );
        assert_eq!(info["result"]["zone"], "example.test");
        assert_eq!(info["result"]["masters"], json!(["10.5.5.5"]));
        assert_eq!(info["result"]["serial"], 1000);
        assert_eq!(
            call(
                &r,
                json!({"method": "getDomainInfo", "parameters": {"name": "nope.test"}})
            )
            .1,
            json!({"result": false})
        );
        assert_eq!(
            call(
                &r,
                json!({"method": "getDomainKeys", "parameters": {"name": "nope.test"}})
            )
            .1,
            json!({"result": []})
        );
        assert_eq!(
            call(
                &r,
                json!({"method": "getAllDomainMetadata", "parameters": {"name": "example.test"}})
            )
            .1,
            json!({"result": {"PRESIGNED": ["0"]}})
        );
        let (_, all) = call(
            &r,
            json!({"method": "getAllDomains", "parameters": {"include_disabled": true}}),
        );
        assert_eq!(all["result"].as_array().map(Vec::len), Some(2));
        // list with domain_id as a number (what PowerDNS sends; the Go node answered 400).
        let (s, l) = call(
            &r,
            json!({"method": "list", "parameters": {"zonename": "example.test.", "domain_id": 7}}),
        );
        assert_eq!(s, 200);
        assert!(
            l["result"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["qtype"] == "SOA"))
        );
        assert_eq!(
            call(
                &r,
                json!({"method": "list", "parameters": {"zonename": "nope.test"}})
            )
            .1,
            json!({"result": false})
        );
        assert_eq!(
            call(&r, json!({"method": "getUpdatedMasters", "parameters": {}})).1,
            json!({"result": false})
        );
        let (s, bad) = call(&r, json!([1, 2]));
        assert_eq!(s, 400);
        assert_eq!(bad["result"], "Bad request");
    }
}
