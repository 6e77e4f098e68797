//! Time as the core sees it: a wall-clock instant handed in by the caller.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The current time, as given to the core by its shell (or a simulation).
pub type Now = DateTime<Utc>;

/// `t + d`, saturating far in the future.
pub fn after(t: Now, d: Duration) -> Now {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Time from `earlier` to `now`; zero if the clock went backwards.
pub fn elapsed(earlier: Now, now: Now) -> Duration {
    (now - earlier).to_std().unwrap_or(Duration::ZERO)
}
