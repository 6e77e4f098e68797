//! Made-up MaxMind databases and a real PowerDNS for the GeoDNS tests (dns.md §8).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::HarnessError;

/// One made-up network of the test databases: where its clients are.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// Networks (CIDR).
    pub networks: &'static [&'static str],
    /// Country code.
    pub code: &'static str,
    /// Country name.
    pub name: &'static str,
    /// Latitude, longitude.
    pub position: (f64, f64),
    /// AS number.
    pub asn: u32,
    /// AS organisation.
    pub org: &'static str,
}

/// The networks of dns.md §8: private and loopback ranges only, never real GeoLite2 data.
/// `127.0.0.1` stays unmapped (an unknown position).
pub const PLACES: [Place; 4] = [
    Place {
        networks: &["10.1.0.0/16", "127.0.0.2/31"],
        code: "DE",
        name: "Germany",
        position: (50.11, 8.68),
        asn: 64501,
        org: "Test Net DE",
    },
    Place {
        networks: &["10.2.0.0/16", "127.0.0.4/31"],
        code: "US",
        name: "United States",
        position: (38.90, -77.04),
        asn: 64502,
        org: "Test Net US",
    },
    Place {
        networks: &["10.3.0.0/16", "127.0.0.6/31"],
        code: "CN",
        name: "China",
        position: (39.90, 116.40),
        asn: 64503,
        org: "Test Net CN",
    },
    Place {
        networks: &["fd00:1::/48"],
        code: "JP",
        name: "Japan",
        position: (35.68, 139.69),
        asn: 64504,
        org: "Test Net JP",
    },
];

#[derive(Serialize)]
struct Names {
    en: &'static str,
}
#[derive(Serialize)]
struct Country {
    iso_code: &'static str,
    names: Names,
}
#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}
#[derive(Serialize)]
struct City {
    country: Country,
    location: Location,
}
#[derive(Serialize)]
struct CountryOnly {
    country: Country,
}
#[derive(Serialize)]
struct Asn {
    autonomous_system_number: u32,
    autonomous_system_organization: &'static str,
}

/// Writes `CityLite.mmdb`, `CountryLite.mmdb` and `AsnLite.mmdb` for [`PLACES`] into `dir`
/// (IPv6 trees with IPv4 reachable, as the real files).
pub fn write_maxmind(dir: &Path) -> Result<(), HarnessError> {
    let bad = |e: String| HarnessError::Io(std::io::Error::other(e));
    let mut city = mmdb_writer::Writer::new("GeoLite2-City");
    let mut country = mmdb_writer::Writer::new("GeoLite2-Country");
    let mut asn = mmdb_writer::Writer::new("GeoLite2-ASN");
    for p in PLACES {
        for n in p.networks {
            let net: ipnet::IpNet = n.parse().map_err(|e| bad(format!("{n}: {e}")))?;
            let c = || Country {
                iso_code: p.code,
                names: Names { en: p.name },
            };
            city.insert(
                net,
                &City {
                    country: c(),
                    location: Location {
                        latitude: p.position.0,
                        longitude: p.position.1,
                    },
                },
            )
            .map_err(|e| bad(e.to_string()))?;
            country
                .insert(net, &CountryOnly { country: c() })
                .map_err(|e| bad(e.to_string()))?;
            asn.insert(
                net,
                &Asn {
                    autonomous_system_number: p.asn,
                    autonomous_system_organization: p.org,
                },
            )
            .map_err(|e| bad(e.to_string()))?;
        }
    }
    for (w, name) in [
        (city, "CityLite.mmdb"),
        (country, "CountryLite.mmdb"),
        (asn, "AsnLite.mmdb"),
    ] {
        std::fs::write(
            dir.join(name),
            w.to_bytes().map_err(|e| bad(e.to_string()))?,
        )?;
    }
    Ok(())
}

/// Finds `pdns_server` (`PDNS_SERVER_BIN`, `PATH`, `/usr/sbin`).
pub fn pdns_server_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PDNS_SERVER_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("pdns_server"))
        .find(|p| p.is_file())
}

/// A real PowerDNS authoritative server on a free loopback port, with the remote backend
/// pointed at a node's `/dns` (production's connection string) and, as dns.md §8 says,
/// its caches off and EDNS client subnet processing on. Killed on drop.
pub struct PowerDns {
    child: Child,
    /// The DNS port (UDP and TCP on 127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PowerDns {
    /// Starts PowerDNS against `backend` (e.g. `http://127.0.0.1:8080/dns`). `caches`
    /// keeps PowerDNS's packet and query caches at the given TTL (seconds) instead of off.
    pub fn start(backend: &str, caches: Option<u32>) -> Result<PowerDns, HarnessError> {
        let bin = pdns_server_bin().ok_or_else(|| {
            HarnessError::Io(std::io::Error::other(
                "pdns_server not found: ./run test installs pdns-server and pdns-backend-remote (or set PDNS_SERVER_BIN)",
            ))
        })?;
        let dir = tempfile::tempdir()?;
        let port = {
            let l = TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let ttl = caches.unwrap_or(0);
        let conf = format!(
            "launch=remote\n\
             remote-connection-string=http:url={backend},post=1,post_json=1,timeout=2000\n\
             remote-dnssec=yes\n\
             local-address=127.0.0.1:{port}\n\
             cache-ttl={ttl}\n\
             query-cache-ttl={ttl}\n\
             negquery-cache-ttl={ttl}\n\
             zone-cache-refresh-interval=0\n\
             edns-subnet-processing=yes\n\
             disable-axfr=no\n\
             allow-axfr-ips=127.0.0.0/8\n\
             log-dns-queries=yes\n\
             loglevel=6\n"
        );
        std::fs::write(dir.path().join("pdns.conf"), conf)?;
        let log = std::fs::File::create(dir.path().join("pdns.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config-dir={}", dir.path().display()))
            .arg(format!("--socket-dir={}", dir.path().display()))
            .args([
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut p = PowerDns { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(HarnessError::NotReady {
                    name: "pdns_server".into(),
                    reason: format!("exited: {status}"),
                    log: p.log(),
                });
            }
            if p.log()
                .contains("Done launching threads, ready to distribute questions")
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    name: "pdns_server".into(),
                    reason: "not ready within 20 s".into(),
                    log: p.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PowerDNS's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pdns.log")).unwrap_or_default()
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dig` with `args` and returns its short output (one answer per line), or an error
/// with dig's own output.
pub fn dig(args: &[&str]) -> Result<Vec<String>, String> {
    let out = Command::new("dig")
        .args(["+short", "+time=3", "+tries=1"])
        .args(args)
        .output()
        .map_err(|e| format!("dig: {e} (./run test installs dnsutils)"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || text.contains(";;") {
        return Err(format!(
            "dig {args:?}: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}
