//! Rules and constants of membership and consensus, defaulting to the reference values
//! (protocol §8).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every tunable of the core. `Default` gives the values of the Go nodes in production,
/// plus this project's safety caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    /// Startup joins broadcast when a role is enabled (3).
    pub startup_joins: u32,
    /// Spacing of the startup joins (500 ms).
    #[serde(with = "duration_serde")]
    pub startup_join_interval: Duration,
    /// Delay of the first heartbeat after enabling (2 s).
    #[serde(with = "duration_serde")]
    pub first_heartbeat: Duration,
    /// Heartbeat join interval (90 s).
    #[serde(with = "duration_serde")]
    pub heartbeat_interval: Duration,
    /// Minimum spacing of joins that are not forced (5 s).
    #[serde(with = "duration_serde")]
    pub join_throttle: Duration,
    /// A node is active while heard within this window (10 min).
    #[serde(with = "duration_serde")]
    pub active_window: Duration,
    /// Nodes unheard for this long are removed (15 min).
    #[serde(with = "duration_serde")]
    pub stale_after: Duration,
    /// Timeout after which an undecided proposal is re-evaluated (30 s).
    #[serde(with = "duration_serde")]
    pub proposal_timeout: Duration,
    /// Number of timeouts after which an undecided proposal fails (3).
    pub max_timeouts: u32,
    /// An own unresolved proposal is republished when proposed again this long after its
    /// last broadcast (10 s).
    #[serde(with = "duration_serde")]
    pub republish_after: Duration,
    /// Minimum number of agreeing (or disagreeing) votes for any decision (2).
    pub min_votes: usize,
    /// No decision while fewer monitors than this are active (2).
    pub min_active_monitors: usize,
    /// Optional quorum floor: when set, a decision needs at least this many votes whatever
    /// the number of active monitors, so a minority partition can never decide. Set it to
    /// `expected_monitors / 2 + 1`. Trade-off: with more than half of the expected monitors
    /// down, nothing is decided at all (the official status freezes) until they return.
    pub min_quorum: Option<usize>,
    /// Buffered votes for an unknown proposal live this long (2 min).
    #[serde(with = "duration_serde")]
    pub buffered_vote_ttl: Duration,
    /// Tracked proposals are dropped this long after this node first saw them (10 min).
    #[serde(with = "duration_serde")]
    pub proposal_ttl: Duration,
    /// Garbage-collection period (5 s).
    #[serde(with = "duration_serde")]
    pub gc_interval: Duration,
    /// How long a decided proposal ID is remembered to ignore late duplicates (15 min:
    /// longer than any node can still be tracking it).
    #[serde(with = "duration_serde")]
    pub decided_ttl: Duration,
    /// Cap on tracked proposals; proposals past it are refused and counted.
    pub max_proposals: usize,
    /// Cap on buffered-vote buckets (one per unknown proposal ID).
    pub max_pending_buckets: usize,
    /// Cap on known nodes; nodes past it are refused and counted.
    pub max_nodes: usize,
    /// Cap on remembered decided proposal IDs.
    pub max_decided: usize,
    /// With a quorum floor (or `verify_finalizes`), how long a passed finalize from another
    /// node waits for the votes that back it before it is dropped (2 s): votes and
    /// finalizes travel on different subjects.
    #[serde(with = "duration_serde")]
    pub finalize_grace: Duration,
    /// Apply another node's passed finalize only when this node holds the agreeing votes
    /// it would need to decide itself (always on with `min_quorum`; trust enforcement turns
    /// it on too).
    pub verify_finalizes: bool,
    /// Cap on official and on local results (each).
    pub max_results: usize,
    /// A local result not refreshed for this long (its check removed, its member gone) is
    /// no longer proposed again by reconcile (15 min); it stays readable.
    #[serde(with = "duration_serde")]
    pub stale_local_after: Duration,
    /// Collator: how long after the first finalize of a decision its votes are still
    /// collected before the decision is reported (500 ms). Votes and finalizes travel on
    /// different subjects, so a voter's vote can be handled after its own finalize.
    #[serde(with = "duration_serde")]
    pub collator_vote_grace: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            startup_joins: 3,
            startup_join_interval: Duration::from_millis(500),
            first_heartbeat: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(90),
            join_throttle: Duration::from_secs(5),
            active_window: Duration::from_secs(600),
            stale_after: Duration::from_secs(900),
            proposal_timeout: Duration::from_secs(30),
            max_timeouts: 3,
            republish_after: Duration::from_secs(10),
            min_votes: 2,
            min_active_monitors: 2,
            min_quorum: None,
            buffered_vote_ttl: Duration::from_secs(120),
            proposal_ttl: Duration::from_secs(600),
            gc_interval: Duration::from_secs(5),
            decided_ttl: Duration::from_secs(900),
            max_proposals: 50_000,
            max_pending_buckets: 50_000,
            max_nodes: 1_024,
            max_decided: 200_000,
            collator_vote_grace: Duration::from_millis(500),
            finalize_grace: Duration::from_secs(2),
            verify_finalizes: false,
            max_results: 100_000,
            stale_local_after: Duration::from_secs(900),
        }
    }
}

/// A configuration value that makes no sense, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consensus.{field}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl CoreConfig {
    /// Agreeing votes needed to decide among `total` active monitors: a majority, at
    /// least `min_votes`, and the quorum floor if set.
    pub fn majority(&self, total: usize) -> usize {
        let mut maj = (total / 2 + 1).max(self.min_votes);
        if let Some(q) = self.min_quorum {
            maj = maj.max(q);
        }
        maj
    }

    /// Whether a foreign passed finalize needs the votes behind it (a floor, or enforced
    /// trust) before it is applied.
    pub fn tally_required(&self) -> bool {
        self.min_quorum.is_some() || self.verify_finalizes
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_string(),
            })
        };
        if self.min_votes < 1 {
            return err("min_votes", "must be at least 1");
        }
        if self.min_quorum == Some(0) {
            return err("min_quorum", "must be at least 1 when set");
        }
        if self.proposal_timeout.is_zero() {
            return err("proposal_timeout", "must be positive");
        }
        if self.gc_interval.is_zero() {
            return err("gc_interval", "must be positive");
        }
        if self.heartbeat_interval.is_zero() {
            return err("heartbeat_interval", "must be positive");
        }
        if self.stale_after < self.active_window {
            return err("stale_after", "must not be shorter than active_window");
        }
        if self.max_proposals == 0
            || self.max_results == 0
            || self.max_pending_buckets == 0
            || self.max_nodes < 2
            || self.max_decided == 0
        {
            return err("max_*", "caps must be positive (max_nodes at least 2)");
        }
        Ok(())
    }
}

/// Durations in config files as humane strings (`"30s"`, `"10m"`, `"500ms"`) or seconds,
/// for `#[serde(with = "ibp_core::duration_serde")]`.
pub mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as text (`"30s"`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::config::format_duration(*d))
    }

    /// Reads text (`"30s"`, `"10m"`) or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!(
                "invalid duration {s}: must be a non-negative number of seconds"
            ))),
            Raw::Text(t) => crate::config::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"1d"` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 10m, 2h"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => n,
        "ms" => n / 1000.0,
        "m" | "min" | "mins" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_values() {
        let c = CoreConfig::default();
        assert_eq!(c.proposal_timeout, Duration::from_secs(30));
        assert_eq!(c.max_timeouts, 3);
        assert_eq!(c.republish_after, Duration::from_secs(10));
        assert_eq!(c.min_votes, 2);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(90));
        assert_eq!(c.active_window, Duration::from_secs(600));
        assert_eq!(c.stale_after, Duration::from_secs(900));
        assert_eq!(c.buffered_vote_ttl, Duration::from_secs(120));
        assert_eq!(c.proposal_ttl, Duration::from_secs(600));
        assert_eq!(c.gc_interval, Duration::from_secs(5));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn config_parses_from_json_and_names_bad_fields() {
        let c: CoreConfig =
            serde_json::from_str(r#"{"proposal_timeout":"5s","min_quorum":3}"#).expect("parses");
        assert_eq!(c.proposal_timeout, Duration::from_secs(5));
        assert_eq!(c.min_quorum, Some(3));
        let e = serde_json::from_str::<CoreConfig>(r#"{"proposal_timeot":"5s"}"#).unwrap_err();
        assert!(e.to_string().contains("proposal_timeot"), "{e}");
        let bad = CoreConfig {
            min_quorum: Some(0),
            ..CoreConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "min_quorum");
    }
}
