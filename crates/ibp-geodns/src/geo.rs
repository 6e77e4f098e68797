//! Where a client is (dns.md §4.4): country, coordinates and network from MaxMind
//! databases, behind a trait so the selection logic is tested without files.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// What is known about a client address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoInfo {
    /// ISO country code, upper case (empty when unknown).
    pub country_code: String,
    /// English country name.
    pub country_name: String,
    /// Latitude and longitude, degrees (`None` when unknown: the Go node used (0, 0), W9).
    pub position: Option<(f64, f64)>,
    /// `AS<number>`, or empty.
    pub asn: String,
    /// The AS organisation, or empty.
    pub network: String,
    /// The prefix length of the geo database network the address fell in (the EDNS scope
    /// an answer holds for), when known.
    pub prefix: Option<u8>,
}

/// A source of [`GeoInfo`].
pub trait GeoIp: Send + Sync {
    /// What is known about `ip`.
    fn lookup(&self, ip: IpAddr) -> GeoInfo;
}

/// No database: nothing is known about anyone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGeo;

impl GeoIp for NoGeo {
    fn lookup(&self, _ip: IpAddr) -> GeoInfo {
        GeoInfo::default()
    }
}

/// Great-circle distance in km (haversine, radius 6371 km) between two (lat, lon) points.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[derive(Deserialize, Default)]
struct Names {
    #[serde(default)]
    en: Option<String>,
}

#[derive(Deserialize, Default)]
struct CountryPart {
    #[serde(default)]
    iso_code: Option<String>,
    #[serde(default)]
    names: Names,
}

#[derive(Deserialize, Default)]
struct Location {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

#[derive(Deserialize, Default)]
struct CityRecord {
    #[serde(default)]
    country: CountryPart,
    #[serde(default)]
    location: Location,
}

#[derive(Deserialize, Default)]
struct AsnRecord {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(default)]
    autonomous_system_organization: Option<String>,
}

type Reader = maxminddb::Reader<Vec<u8>>;

/// The three MaxMind databases the Go node uses: `CityLite.mmdb`, `CountryLite.mmdb`,
/// `AsnLite.mmdb` in one directory.
pub struct MaxMind {
    city: Option<Reader>,
    country: Option<Reader>,
    asn: Option<Reader>,
}

impl std::fmt::Debug for MaxMind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaxMind")
            .field("city", &self.city.is_some())
            .field("country", &self.country.is_some())
            .field("asn", &self.asn.is_some())
            .finish()
    }
}

/// The file names in `Maxmind.MaxmindDBPath`.
pub const FILES: [&str; 3] = ["CityLite.mmdb", "CountryLite.mmdb", "AsnLite.mmdb"];

impl MaxMind {
    /// Opens the databases in `dir`. At least one must open; the reasons of those that
    /// did not are returned beside it.
    pub fn open(dir: &Path) -> Result<(MaxMind, Vec<String>), String> {
        let mut problems = Vec::new();
        let mut open = |name: &str| match Reader::open_readfile(dir.join(name)) {
            Ok(r) => Some(r),
            Err(e) => {
                problems.push(format!("{}: {e}", dir.join(name).display()));
                None
            }
        };
        let m = MaxMind {
            city: open(FILES[0]),
            country: open(FILES[1]),
            asn: open(FILES[2]),
        };
        if m.city.is_none() && m.country.is_none() && m.asn.is_none() {
            return Err(format!(
                "no MaxMind database opened: {}",
                problems.join("; ")
            ));
        }
        Ok((m, problems))
    }
}

fn record<T: for<'de> Deserialize<'de>>(r: &Option<Reader>, ip: IpAddr) -> Option<(T, Option<u8>)> {
    let res = r.as_ref()?.lookup(ip).ok()?;
    let prefix = res.network().ok().map(|n| n.prefix());
    let v = res.decode::<T>().ok()??;
    Some((v, prefix))
}

impl GeoIp for MaxMind {
    fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let mut g = GeoInfo::default();
        let city = record::<CityRecord>(&self.city, ip);
        let country = city
            .as_ref()
            .map(|(c, p)| (c.country.iso_code.clone(), c.country.names.en.clone(), *p))
            .filter(|(code, _, _)| code.as_deref().is_some_and(|c| !c.is_empty()))
            .or_else(|| {
                record::<CityRecord>(&self.country, ip)
                    .map(|(c, p)| (c.country.iso_code, c.country.names.en, p))
            });
        if let Some((code, name, prefix)) = country {
            g.country_code = code.unwrap_or_default().to_ascii_uppercase();
            g.country_name = name.unwrap_or_default();
            g.prefix = prefix;
        }
        if let Some((c, prefix)) = &city
            && let (Some(lat), Some(lon)) = (c.location.latitude, c.location.longitude)
        {
            g.position = Some((lat, lon));
            g.prefix = *prefix;
        }
        if let Some((a, _)) = record::<AsnRecord>(&self.asn, ip)
            && let Some(n) = a.autonomous_system_number.filter(|n| *n != 0)
        {
            g.asn = format!("AS{n}");
            g.network = a.autonomous_system_organization.unwrap_or_default();
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_great_circle_km() {
        let frankfurt = (50.11, 8.68);
        let washington = (38.90, -77.04);
        let d = distance_km(frankfurt, washington);
        assert!((6500.0..6600.0).contains(&d), "{d}");
        assert_eq!(distance_km(frankfurt, frankfurt), 0.0);
    }
}
