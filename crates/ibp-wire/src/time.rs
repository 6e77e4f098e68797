use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Offset, TimeZone, Timelike, Utc};

/// A timestamp as Go's `time.Time` puts it on the wire: RFC 3339 with up to nine
/// fractional digits, trailing zeros trimmed (`2026-11-27T10:50:59.458685253Z`).
///
/// The UTC offset of a decoded value is kept so that re-encoding gives the same string
/// Go would; comparisons ([`Ord`], [`WireTime::instant`]) use the instant only.
/// The default value is Go's zero time, `0001-01-01T00:00:00Z`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct WireTime {
    instant: DateTime<Utc>,
    offset_secs: i32,
}

/// Why a timestamp string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 timestamp {input:?}: {reason}")]
pub struct TimeParseError {
    /// The refused input (truncated to 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Unix seconds of `0001-01-01T00:00:00Z`.
const GO_ZERO_UNIX_SECS: i64 = -62_135_596_800;

impl WireTime {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub fn zero() -> WireTime {
        WireTime {
            instant: DateTime::from_timestamp(GO_ZERO_UNIX_SECS, 0)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            offset_secs: 0,
        }
    }

    /// A UTC timestamp at `instant`.
    pub fn from_utc(instant: DateTime<Utc>) -> WireTime {
        WireTime {
            instant,
            offset_secs: 0,
        }
    }

    /// The instant, in UTC.
    pub fn instant(&self) -> DateTime<Utc> {
        self.instant
    }

    /// True for Go's zero time (an unset timestamp, or an outage still open).
    pub fn is_zero(&self) -> bool {
        self.instant == WireTime::zero().instant
    }

    /// Parses RFC 3339 as Go's `time.Time.UnmarshalJSON` does, with any number of
    /// fractional digits (digits past the ninth are truncated) and `t`/`z` in either case.
    pub fn parse(input: &str) -> Result<WireTime, TimeParseError> {
        let err = |reason| TimeParseError {
            input: input.chars().take(64).collect(),
            reason,
        };
        let b = input.as_bytes();
        let num = |range: std::ops::Range<usize>| -> Option<u32> {
            let s = b.get(range)?;
            if s.iter().all(u8::is_ascii_digit) {
                Some(s.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0')))
            } else {
                None
            }
        };
        if b.len() < 20 {
            return Err(err("too short"));
        }
        let (year, month, day) = match (num(0..4), num(5..7), num(8..10)) {
            (Some(y), Some(m), Some(d)) if b[4] == b'-' && b[7] == b'-' => (y, m, d),
            _ => return Err(err("date must be YYYY-MM-DD")),
        };
        if !matches!(b[10], b'T' | b't') {
            return Err(err("missing 'T' between date and time"));
        }
        let (hour, min, sec) = match (num(11..13), num(14..16), num(17..19)) {
            (Some(h), Some(m), Some(s)) if b[13] == b':' && b[16] == b':' => (h, m, s),
            _ => return Err(err("time must be HH:MM:SS")),
        };
        let mut pos = 19;
        let mut nanos: u32 = 0;
        if b[pos] == b'.' {
            pos += 1;
            let start = pos;
            while pos < b.len() && b[pos].is_ascii_digit() {
                if pos - start < 9 {
                    nanos = nanos * 10 + u32::from(b[pos] - b'0');
                }
                pos += 1;
            }
            let digits = pos - start;
            if digits == 0 {
                return Err(err("'.' without fractional digits"));
            }
            for _ in digits..9 {
                nanos *= 10;
            }
        }
        let offset_secs: i32 = match b.get(pos..) {
            Some([b'Z' | b'z']) => 0,
            Some([sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]) => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(err("offset must be Z or ±HH:MM"));
                }
                let h = i32::from(h1 - b'0') * 10 + i32::from(h2 - b'0');
                let m = i32::from(m1 - b'0') * 10 + i32::from(m2 - b'0');
                if h > 23 || m > 59 {
                    return Err(err("offset out of range"));
                }
                let s = (h * 60 + m) * 60;
                if *sign == b'-' { -s } else { s }
            }
            _ => return Err(err("offset must be Z or ±HH:MM")),
        };
        if hour > 23 || min > 59 || sec > 59 {
            return Err(err("time of day out of range"));
        }
        let date =
            NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| err("no such date"))?;
        let naive = date
            .and_hms_nano_opt(hour, min, sec, nanos)
            .ok_or_else(|| err("time of day out of range"))?;
        let offset =
            FixedOffset::east_opt(offset_secs).ok_or_else(|| err("offset out of range"))?;
        let local = offset
            .from_local_datetime(&naive)
            .single()
            .ok_or_else(|| err("ambiguous local time"))?;
        Ok(WireTime {
            instant: local.with_timezone(&Utc),
            offset_secs,
        })
    }

    /// Formats as Go's `time.RFC3339Nano` (trailing fractional zeros trimmed).
    pub fn to_go_string(&self) -> String {
        // Offsets are validated when parsed, so the fallback never triggers.
        let offset = FixedOffset::east_opt(self.offset_secs).unwrap_or_else(|| Utc.fix());
        let t = self.instant.with_timezone(&offset);
        let mut s = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let nanos = t.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        if self.offset_secs == 0 {
            s.push('Z');
        } else {
            let sign = if self.offset_secs < 0 { '-' } else { '+' };
            let abs = self.offset_secs.unsigned_abs();
            s.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs / 60) % 60));
        }
        s
    }
}

impl Default for WireTime {
    fn default() -> Self {
        WireTime::zero()
    }
}

impl PartialOrd for WireTime {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WireTime {
    fn cmp(&self, other: &Self) -> Ordering {
        self.instant
            .cmp(&other.instant)
            .then(self.offset_secs.cmp(&other.offset_secs))
    }
}

impl From<DateTime<Utc>> for WireTime {
    fn from(t: DateTime<Utc>) -> Self {
        WireTime::from_utc(t)
    }
}

impl fmt::Display for WireTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_go_string())
    }
}

impl<'de> serde::Deserialize<'de> for WireTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        WireTime::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for WireTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_go_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_go_strings() {
        for s in [
            "2026-11-27T10:50:59.458685253Z",
            "2026-11-27T10:50:59.46110823Z",
            "2026-11-27T10:50:59Z",
            "0001-01-01T00:00:00Z",
            "2026-01-01T10:00:00.5+02:00",
            "2026-01-01T10:00:00-07:30",
        ] {
            assert_eq!(
                WireTime::parse(s).map(|t| t.to_go_string()),
                Ok(s.to_string())
            );
        }
    }

    #[test]
    fn accepts_any_fraction_length() {
        let t = WireTime::parse("2026-11-27T10:50:59.1234567891234Z").expect("parses");
        assert_eq!(t.to_go_string(), "2026-11-27T10:50:59.123456789Z");
        let t = WireTime::parse("2026-11-27t10:50:59.1z").expect("parses");
        assert_eq!(t.to_go_string(), "2026-11-27T10:50:59.1Z");
    }

    #[test]
    fn rejects_garbage_with_reason() {
        for s in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T25:00:00Z",
            "2026-11-27T10:50:59.Z",
            "2026-11-27T10:50:59",
            "2026-11-27T10:50:59+0200",
        ] {
            assert!(WireTime::parse(s).is_err(), "{s:?} should fail");
        }
    }

    #[test]
    fn zero_is_go_zero() {
        assert!(WireTime::default().is_zero());
        assert_eq!(WireTime::default().to_go_string(), "0001-01-01T00:00:00Z");
        let a = WireTime::parse("2026-01-01T12:00:00+02:00").expect("parses");
        let b = WireTime::parse("2026-01-01T10:00:00Z").expect("parses");
        assert_eq!(a.instant(), b.instant());
    }
}
