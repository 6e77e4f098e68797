//! The built-in DNS listener (UDP and TCP, hickory-server): the same answers as PowerDNS
//! in front of `/dns`, for the demo and small deployments that run no PowerDNS.
//!
//! Like PowerDNS, it looks every question up as `ANY` and keeps what was asked (plus a
//! CNAME at the name), so static records answer exactly as through PowerDNS. Unlike the
//! PowerDNS path it counts a usage hit only for the family asked (W3 is kept on the
//! PowerDNS path while Go nodes share the usage tables). The EDNS client subnet is used
//! and echoed with the scope the answer holds for.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Metadata, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record as DnsRecord, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ibp_geodns::answer::network_of;
use ibp_geodns::{Client, Record};

use crate::roles::GeoDnsService;

/// How long a TCP connection may stay idle.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running listener; dropping it does not stop it, [`DnsListener::shutdown`] does.
pub struct DnsListener {
    server: hickory_server::Server<Handler>,
    /// The bound address (UDP and TCP share it).
    pub addr: SocketAddr,
}

impl DnsListener {
    /// Binds UDP and TCP on `addr` (port 0: one free port for both) and serves.
    pub async fn start(addr: SocketAddr, geo: GeoDnsService) -> std::io::Result<DnsListener> {
        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp.local_addr()?;
        let mut server = hickory_server::Server::new(Handler { geo });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64);
        tracing::info!(listen = %addr, "built-in DNS listener serving UDP and TCP");
        Ok(DnsListener { server, addr })
    }

    /// Stops serving.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

async fn bind_pair(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    if addr.port() != 0 {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        let tcp = tokio::net::TcpListener::bind(addr).await?;
        return Ok((udp, tcp));
    }
    // Port 0: the UDP port the kernel picks must also be free for TCP; retry if not.
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        let mut a = udp.local_addr()?;
        a.set_ip(addr.ip());
        match tokio::net::TcpListener::bind(a).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

/// Answers questions from the GeoDNS service.
pub struct Handler {
    geo: GeoDnsService,
}

/// Converts a backend record to wire form; types the listener cannot express are skipped
/// (PowerDNS serves them on the production path).
fn to_wire(r: &Record) -> Option<DnsRecord> {
    let name = Name::from_ascii(format!("{}.", r.qname.trim_end_matches('.'))).ok()?;
    let host = |s: &str| {
        Name::from_ascii(if s.ends_with('.') {
            s.to_string()
        } else {
            format!("{s}.")
        })
        .ok()
    };
    let rdata = match r.qtype.as_str() {
        "A" => RData::A(A(r.content.trim().parse().ok()?)),
        "AAAA" => RData::AAAA(AAAA(r.content.trim().parse().ok()?)),
        "NS" => RData::NS(NS(host(r.content.trim())?)),
        "CNAME" => RData::CNAME(CNAME(host(r.content.trim())?)),
        "TXT" => RData::TXT(TXT::new(vec![r.content.trim_matches('"').to_string()])),
        "MX" => {
            let mut p = r.content.split_whitespace();
            let pref = p.next()?.parse().ok()?;
            RData::MX(MX::new(pref, host(p.next()?)?))
        }
        "SOA" => {
            let f: Vec<&str> = r.content.split_whitespace().collect();
            if f.len() != 7 {
                return None;
            }
            RData::SOA(SOA::new(
                host(f[0])?,
                host(f[1])?,
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f[4].parse().ok()?,
                f[5].parse().ok()?,
                f[6].parse().ok()?,
            ))
        }
        _ => return None,
    };
    Some(DnsRecord::from_rdata(name, r.ttl, rdata))
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let mut edns_out = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e
        });
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                meta.response_code = ResponseCode::FormErr;
                return send(&mut response, request, meta, edns_out.as_ref(), &[], &[]).await;
            }
        };
        let asked = info.query.query_type();
        let qname = ibp_geodns::normalize(&info.query.name().to_string());
        let ecs = request
            .edns
            .as_ref()
            .and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some(*s),
                _ => None,
            });
        let client = match &ecs {
            Some(s) => Client {
                ip: network_of(s.addr(), s.source_prefix()),
                prefix: s.source_prefix(),
            },
            None => {
                let ip = info.src.ip();
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                    v4 => v4,
                };
                Client {
                    ip,
                    prefix: if ip.is_ipv4() { 32 } else { 128 },
                }
            }
        };
        let Some(zone) = self.geo.zone_of(&qname) else {
            meta.authoritative = false;
            meta.response_code = ResponseCode::Refused;
            return send(&mut response, request, meta, edns_out.as_ref(), &[], &[]).await;
        };
        let count = match asked {
            RecordType::A => Some(false),
            RecordType::AAAA => Some(true),
            _ => None,
        };
        let all = self
            .geo
            .lookup_counting(&qname, "ANY", Some(&client), |h| {
                asked == RecordType::ANY || count == Some(h.is_ipv6)
            })
            .await;
        let soa_extra: Vec<Record>;
        let mut wanted: Vec<&Record> = all
            .iter()
            .filter(|r| {
                asked == RecordType::ANY
                    || r.qtype == "CNAME"
                    || RecordType::from_str(&r.qtype).is_ok_and(|t| t == asked)
            })
            .collect();
        if matches!(asked, RecordType::SOA | RecordType::ANY) && qname == zone {
            // PowerDNS answers a SOA question from its SOA lookup (the synthesized one),
            // never from a static SOA the ANY lookup also returned: one SOA, as there.
            wanted.retain(|r| r.qtype != "SOA");
            soa_extra = self.geo.soa(&zone).into_iter().collect();
            wanted.extend(soa_extra.iter());
        }
        let mut answers: Vec<DnsRecord> = wanted.iter().filter_map(|r| to_wire(r)).collect();
        answers.dedup();
        let mut authority = Vec::new();
        if answers.is_empty() {
            // NODATA at a name that has records (or is a zone apex), else NXDOMAIN; the
            // SOA tells resolvers how long to cache the negative answer.
            if all.is_empty() && qname != zone {
                meta.response_code = ResponseCode::NXDomain;
            }
            if let Some(soa) = self.geo.soa(&zone).as_ref().and_then(to_wire) {
                authority.push(soa);
            }
        }
        let scope = all.iter().filter_map(|r| r.scope_mask).max();
        if let (Some(e), Some(s)) = (edns_out.as_mut(), ecs) {
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                s.addr(),
                s.source_prefix(),
                scope.unwrap_or(0),
            )));
        }
        send(
            &mut response,
            request,
            meta,
            edns_out.as_ref(),
            &answers,
            &authority,
        )
        .await
    }
}

async fn send<R: ResponseHandler>(
    response: &mut R,
    request: &Request,
    meta: Metadata,
    edns: Option<&Edns>,
    answers: &[DnsRecord],
    authority: &[DnsRecord],
) -> ResponseInfo {
    let builder = MessageResponseBuilder::new(&request.queries, edns);
    let msg = builder.build(
        meta,
        answers.iter(),
        authority.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "DNS answer not sent");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}
