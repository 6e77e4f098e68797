//! Decoding that is at least as lenient as Go's `encoding/json` (protocol §3, decoding rules).
//!
//! * Keys match the field name exactly or, failing that, case-insensitively (with Go's
//!   special folds of `K` and `ſ`). When a key repeats, the last non-null value wins.
//! * `null` leaves a scalar field at its default and empties arrays and payloads.
//! * Unknown keys are ignored; missing keys take defaults.
//! * Invalid UTF-8 is replaced with U+FFFD, as Go does, instead of failing the message.
//! * A value of the wrong JSON type is an error naming the field, as in Go.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{Data, WireTime};

/// What kind of problem a [`DecodeError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The bytes are not JSON.
    Syntax,
    /// The JSON is valid but not an object where one is expected.
    NotAnObject,
    /// A field has a value of the wrong JSON type or an unparseable value (e.g. a timestamp).
    FieldType,
}

/// A message that could not be decoded. The message names the type and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    path: String,
    reason: String,
}

impl DecodeError {
    /// What kind of problem this is.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// Where the problem is, e.g. `FinalizeMessage.Proposal.Timestamp`.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn new(kind: DecodeErrorKind, path: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError {
            kind,
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An error about a scalar value; [`DecodeError::within`] adds the field name.
    pub(crate) fn scalar(kind: DecodeErrorKind, reason: impl Into<String>) -> Self {
        DecodeError::new(kind, "", reason)
    }

    /// Prefixes the path with the enclosing field or type (`[i]` indices attach directly).
    pub(crate) fn within(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_string()
        } else if self.path.starts_with('[') {
            format!("{outer}{}", self.path)
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode {}: {}", self.path, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// A wire message (or nested object) with Go-lenient decoding.
pub trait WireDecode: Sized + Default {
    /// The Go type name, used in error messages.
    const NAME: &'static str;

    /// Decodes one JSON value. `null` gives the default value, as in Go.
    fn decode_raw(raw: &RawValue) -> Result<Self, DecodeError>;

    /// A fast, strict decode that succeeds only where it agrees with [`WireDecode::decode_raw`]
    /// (exact keys, no nulls, no unknown or repeated keys); `None` means "use the lenient one".
    fn decode_strict(_bytes: &[u8]) -> Option<Self> {
        None
    }
}

/// Decodes a message from bytes received off the bus.
pub fn decode<T: WireDecode>(bytes: &[u8]) -> Result<T, DecodeError> {
    // Messages from Go nodes (and from this project) take the strict path; anything unusual
    // falls back to the lenient decoder, which has the final say.
    if let Some(v) = T::decode_strict(bytes) {
        return Ok(v);
    }
    decode_lenient(bytes)
}

/// The lenient decoder alone (tests compare it with the strict fast path).
pub fn decode_lenient<T: WireDecode>(bytes: &[u8]) -> Result<T, DecodeError> {
    let text: Cow<'_, str> = String::from_utf8_lossy(bytes);
    let raw: &RawValue = serde_json::from_str(&text)
        .map_err(|e| DecodeError::new(DecodeErrorKind::Syntax, T::NAME, e.to_string()))?;
    T::decode_raw(raw).map_err(|e| e.within(T::NAME))
}

/// The entries of a JSON object, in order, with values left undecoded.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// Go's key folding for ASCII field names: ASCII case, plus U+212A KELVIN SIGN as `k`
/// and U+017F LATIN SMALL LETTER LONG S as `s`.
fn key_matches_fold(key: &str, field: &str) -> bool {
    let mut f = field.bytes();
    for c in key.chars() {
        let folded = match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            c if c.is_ascii() => c.to_ascii_lowercase(),
            _ => return false,
        };
        match f.next() {
            Some(b) if b.to_ascii_lowercase() as char == folded => {}
            _ => return false,
        }
    }
    f.next().is_none()
}

/// Walks the object `raw`, calling `set(index, value)` for every key that names one of
/// `fields` (exact match preferred, else case-insensitive). Null values are passed too, so
/// the setter can decide what null means for its field.
pub(crate) fn decode_object(
    raw: &RawValue,
    type_name: &'static str,
    fields: &[&'static str],
    mut set: impl FnMut(usize, &RawValue) -> Result<(), DecodeError>,
) -> Result<bool, DecodeError> {
    if is_null(raw) {
        return Ok(false);
    }
    let entries: Entries<'_> = serde_json::from_str(raw.get()).map_err(|_| {
        DecodeError::new(
            DecodeErrorKind::NotAnObject,
            "",
            format!(
                "expected a JSON object for {type_name}, got {}",
                json_kind(raw)
            ),
        )
    })?;
    for (key, value) in &entries.0 {
        let idx = fields
            .iter()
            .position(|f| f == key)
            .or_else(|| fields.iter().position(|f| key_matches_fold(key, f)));
        if let Some(i) = idx {
            set(i, value)?;
        }
    }
    Ok(true)
}

pub(crate) fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A field type with Go's decoding rules.
pub(crate) trait Field: Sized {
    /// Decodes a non-null value. Errors carry a path relative to the field.
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError>;
    /// What `null` does to the field: nothing for scalars (Go leaves them untouched).
    fn null_into(_slot: &mut Self) {}
}

/// Decodes `raw` into `slot`, naming `field` in any error.
pub(crate) fn set<T: Field>(
    slot: &mut T,
    field: &'static str,
    raw: &RawValue,
) -> Result<(), DecodeError> {
    if is_null(raw) {
        T::null_into(slot);
        return Ok(());
    }
    *slot = T::decode_field(raw).map_err(|e| e.within(field))?;
    Ok(())
}

fn type_error(reason: String) -> DecodeError {
    DecodeError::scalar(DecodeErrorKind::FieldType, reason)
}

impl Field for String {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        serde_json::from_str::<String>(raw.get())
            .map_err(|_| type_error(format!("expected a string, got {}", json_kind(raw))))
    }
}

impl Field for bool {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        match raw.get().trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(type_error(format!(
                "expected a boolean, got {}",
                json_kind(raw)
            ))),
        }
    }
}

impl Field for i64 {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        serde_json::from_str::<i64>(raw.get()).map_err(|_| {
            type_error(match json_kind(raw) {
                "a number" => format!("expected an integer, got {}", raw.get().trim()),
                k => format!("expected an integer, got {k}"),
            })
        })
    }
}

impl Field for WireTime {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        let s: String = serde_json::from_str(raw.get()).map_err(|_| {
            type_error(format!(
                "expected an RFC 3339 string, got {}",
                json_kind(raw)
            ))
        })?;
        WireTime::parse(&s).map_err(|e| type_error(e.to_string()))
    }
}

impl Field for Data {
    fn decode_field(raw: &RawValue) -> Result<Self, DecodeError> {
        Ok(Data::from_raw(raw))
    }
    fn null_into(slot: &mut Self) {
        *slot = Data::none();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_matches_go() {
        assert!(key_matches_fold("nodeid", "nodeID"));
        assert!(key_matches_fold("NODEID", "nodeID"));
        assert!(key_matches_fold("\u{212A}ey", "Key"));
        assert!(key_matches_fold("\u{017F}ender", "Sender"));
        assert!(!key_matches_fold("nodeid2", "nodeID"));
        assert!(!key_matches_fold("node", "nodeID"));
        assert!(!key_matches_fold("nödeid", "nodeID"));
    }
}
