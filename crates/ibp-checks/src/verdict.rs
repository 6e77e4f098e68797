//! What one run of a check found.

use std::time::Duration;

use serde_json::{Map, Value};

/// The outcome of one check of one unit (one item, one family).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// True when the target is healthy.
    pub status: bool,
    /// Why not (the Go monitor's texts); empty when healthy.
    pub error_text: String,
    /// The check's `Data` (its keys are the Go monitor's), `Null` on most failures.
    pub data: Value,
    /// How long the check took.
    pub latency: Duration,
}

impl Verdict {
    /// A failure with `text` and no data.
    pub fn fail(text: impl Into<String>) -> Verdict {
        Verdict {
            status: false,
            error_text: text.into(),
            data: Value::Null,
            latency: Duration::ZERO,
        }
    }

    /// A failure with `text` that keeps the check's `data`.
    pub fn fail_with(text: impl Into<String>, data: Map<String, Value>) -> Verdict {
        Verdict {
            status: false,
            error_text: text.into(),
            data: Value::Object(data),
            latency: Duration::ZERO,
        }
    }

    /// A pass with `data`.
    pub fn pass(data: Map<String, Value>) -> Verdict {
        Verdict {
            status: true,
            error_text: String::new(),
            data: Value::Object(data),
            latency: Duration::ZERO,
        }
    }

    /// Records the latency, also as `Data.LatencyMs` when there is data.
    pub fn timed(mut self, latency: Duration) -> Verdict {
        self.latency = latency;
        if let Value::Object(m) = &mut self.data {
            m.insert("LatencyMs".into(), Value::from(latency.as_millis() as u64));
        }
        self
    }
}
