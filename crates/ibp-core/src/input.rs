//! Validating what operators and tools send a node (`POST /v1/observations` and friends):
//! one JSON object or an array of them, each field named in errors. Pure, so it can be
//! fuzzed and tested without a node.

use serde_json::Value;

use crate::{CheckKey, Observation};
use ibp_wire::{CheckType, Data};

/// Most observations or hits accepted in one request.
pub const MAX_BATCH: usize = 10_000;

/// Parses a body that is one JSON object or an array of them.
pub fn objects(body: &[u8], what: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        other => {
            return Err(format!(
                "body must be a JSON object or an array of {what}, got {}",
                kind(&other)
            ));
        }
    };
    if items.is_empty() {
        return Err(format!("no {what} in the body"));
    }
    if items.len() > MAX_BATCH {
        return Err(format!(
            "{} {what} in one request; at most {MAX_BATCH}",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            other => Err(format!(
                "{what}[{i}]: expected an object, got {}",
                kind(&other)
            )),
        })
        .collect()
}

/// How a JSON value is named in errors.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field (trimmed); `required` refuses a missing or empty one.
pub fn field_str(
    m: &serde_json::Map<String, Value>,
    at: &str,
    name: &str,
    required: bool,
) -> Result<String, String> {
    match m.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() || !required => Ok(s.trim().to_string()),
        Some(Value::String(_)) => Err(format!("{at}.{name}: must not be empty")),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None => Err(format!("{at}.{name}: missing")),
        Some(other) => Err(format!(
            "{at}.{name}: expected a string, got {}",
            kind(other)
        )),
    }
}

/// A boolean field, required.
pub fn field_bool(
    m: &serde_json::Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<bool, String> {
    match m.get(name) {
        Some(Value::Bool(b)) => Ok(*b),
        None => Err(format!("{at}.{name}: missing")),
        Some(other) => Err(format!(
            "{at}.{name}: expected a boolean, got {}",
            kind(other)
        )),
    }
}

const OBSERVATION_FIELDS: [&str; 9] = [
    "checkType",
    "checkName",
    "memberName",
    "domainName",
    "endpoint",
    "isIPv6",
    "status",
    "errorText",
    "data",
];

/// Refuses a field of `m` that is not in `allowed`, naming it and what is expected (every
/// JSON body of the API takes only the fields it documents).
pub fn known_fields(
    m: &serde_json::Map<String, Value>,
    at: &str,
    allowed: &[&str],
) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{at}.{k}: unknown field (expected {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// A day as the API takes it: exactly `YYYY-MM-DD`, years 2000–9999 (no sign, no week
/// dates, nothing chrono would otherwise stretch to).
pub fn parse_day(text: &str, field: &str) -> Result<chrono::NaiveDate, String> {
    let shaped = text.len() == 10
        && text.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    let day = shaped
        .then(|| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| format!("{field}: {text:?} is not a YYYY-MM-DD date"))?;
    if !(2000..=9999).contains(&chrono::Datelike::year(&day)) {
        return Err(format!("{field}: {text:?} is out of range"));
    }
    Ok(day)
}

/// Validates one observation object.
pub fn parse_observation(
    m: &serde_json::Map<String, Value>,
    at: &str,
) -> Result<Observation, String> {
    known_fields(m, at, &OBSERVATION_FIELDS)?;
    let ty = field_str(m, at, "checkType", true)?;
    let check_type = match ty.as_str() {
        "site" => CheckType::Site,
        "domain" => CheckType::Domain,
        "endpoint" => CheckType::Endpoint,
        other => {
            return Err(format!(
                "{at}.checkType: {other:?} is not site, domain or endpoint"
            ));
        }
    };
    // The widths of the member_events columns these end up in.
    let check_name = field_str_max(m, at, "checkName", true, 64)?;
    let member = field_str_max(m, at, "memberName", true, 128)?;
    let domain = field_str_max(m, at, "domainName", check_type != CheckType::Site, 128)?;
    let endpoint = field_str_max(m, at, "endpoint", check_type == CheckType::Endpoint, 256)?;
    if check_type == CheckType::Site && (!domain.is_empty() || !endpoint.is_empty()) {
        return Err(format!(
            "{at}.domainName: site checks have no domain or endpoint"
        ));
    }
    if check_type == CheckType::Domain && !endpoint.is_empty() {
        return Err(format!("{at}.endpoint: domain checks have no endpoint"));
    }
    if !endpoint.is_empty() && !endpoint.contains("://") {
        return Err(format!("{at}.endpoint: {endpoint:?} is not a URL"));
    }
    let is_ipv6 = field_bool(m, at, "isIPv6")?;
    let status = field_bool(m, at, "status")?;
    let error_text = field_str_max(m, at, "errorText", false, 4096)?;
    let data = match m.get("data") {
        None | Some(Value::Null) => Data::none(),
        Some(v @ Value::Object(_)) => Data::from_value(v),
        Some(other) => {
            return Err(format!(
                "{at}.data: expected an object, got {}",
                kind(other)
            ));
        }
    };
    Ok(Observation {
        key: CheckKey::new(check_type, check_name, member, domain, endpoint, is_ipv6),
        status,
        error_text,
        data,
    })
}

/// [`field_str`] at most `max` characters long (the width of its column).
pub fn field_str_max(
    m: &serde_json::Map<String, Value>,
    at: &str,
    name: &str,
    required: bool,
    max: usize,
) -> Result<String, String> {
    let v = field_str(m, at, name, required)?;
    if v.chars().count() > max {
        return Err(format!("{at}.{name}: longer than {max} characters"));
    }
    Ok(v)
}

/// Parses a `POST /v1/observations` body: one observation object or an array of them.
pub fn parse_observations(body: &[u8]) -> Result<Vec<Observation>, String> {
    objects(body, "observations").and_then(|items| {
        items
            .iter()
            .enumerate()
            .map(|(i, m)| parse_observation(m, &format!("observations[{i}]")))
            .collect()
    })
}
