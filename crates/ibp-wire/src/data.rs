use std::fmt;

use serde_json::value::RawValue;

/// The free-form `Data` / `data` payload of proposals and downtime events.
///
/// It is kept as the exact JSON text that arrived (numbers, key order and all), so a
/// message re-encoded by this node carries the payload untouched. `null` and an absent
/// field are both [`Data::none`].
#[derive(Clone, Default)]
pub struct Data(Option<Box<RawValue>>);

impl Data {
    /// No payload (`null` on the wire).
    pub fn none() -> Data {
        Data(None)
    }

    /// Wraps raw JSON text as received; `null` becomes [`Data::none`].
    pub fn from_raw(raw: &RawValue) -> Data {
        if raw.get().trim() == "null" {
            Data(None)
        } else {
            Data(Some(raw.to_owned()))
        }
    }

    /// Builds a payload from a JSON value (`Null` becomes [`Data::none`]).
    pub fn from_value(value: &serde_json::Value) -> Data {
        if value.is_null() {
            return Data(None);
        }
        // Serializing a Value into RawValue cannot fail: Value keys are strings.
        Data(serde_json::value::to_raw_value(value).ok())
    }

    /// True when there is no payload.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The raw JSON text (`null` when there is no payload).
    pub fn as_json(&self) -> &str {
        self.0.as_deref().map(RawValue::get).unwrap_or("null")
    }

    /// The payload as a JSON value (`Null` when there is none or it cannot be parsed).
    pub fn to_value(&self) -> serde_json::Value {
        self.0
            .as_deref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Data {
    /// Payloads are equal when they are the same JSON value (whitespace and key order aside).
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => a.get() == b.get() || self.to_value() == other.to_value(),
            _ => false,
        }
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({})", self.as_json())
    }
}

impl serde::Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_unit(),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Data(Option::<Box<RawValue>>::deserialize(d)?))
    }
}

impl From<serde_json::Value> for Data {
    fn from(v: serde_json::Value) -> Self {
        Data::from_value(&v)
    }
}
