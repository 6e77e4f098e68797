//! Reading a Go node config the way Go's `encoding/json` reads it into its structs.
//!
//! Go matches object keys to struct fields case-insensitively and applies them in document
//! order, so of `"NodeID":"x","nodeid":"y"` the last one wins (`y`), and a `null` leaves
//! the field as it was. `serde_json`'s map is sorted and keeps both spellings, which loses
//! the order; this parser keeps it and folds the keys of struct-shaped objects the Go way.
//! Objects Go decodes into maps (`GeoDNSOverrides`, `ExtraOptions`, this project's own
//! `IbpNode` section, which serde reads) keep their keys as written.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A JSON value with object keys in document order.
enum Ordered {
    Leaf(Value),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Leaf(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Ordered, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed)? {
            items.push(v);
        }
        Ok(Ordered::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            entries.push((k, map.next_value_seed(Seed)?));
        }
        Ok(Ordered::Object(entries))
    }
}

struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Ordered;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Ordered, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

/// Objects Go decodes into maps or this project reads with serde: keys kept as written.
fn is_map(key: &str) -> bool {
    ["GeoDNSOverrides", "ExtraOptions", "IbpNode"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(key))
}

fn fold(v: Ordered, struct_shaped: bool) -> Value {
    match v {
        Ordered::Leaf(v) => v,
        Ordered::Array(items) => {
            Value::Array(items.into_iter().map(|i| fold(i, struct_shaped)).collect())
        }
        Ordered::Object(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let inner = struct_shaped && !is_map(&k);
                put(&mut out, k, fold(v, inner), struct_shaped, inner);
            }
            Value::Object(out)
        }
    }
}

/// Applies one key as Go's decoder does: into a struct field matched case-insensitively
/// (a null leaves the field as it was), or a map entry matched exactly; an object decoded
/// over an existing struct or map merges into it, anything else replaces it.
fn put(out: &mut Map<String, Value>, k: String, v: Value, struct_shaped: bool, inner: bool) {
    let earlier = if struct_shaped {
        out.keys().find(|e| e.eq_ignore_ascii_case(&k)).cloned()
    } else {
        out.contains_key(&k).then(|| k.clone())
    };
    let Some(e) = earlier else {
        out.insert(k, v);
        return;
    };
    if struct_shaped && v.is_null() {
        return;
    }
    match (out.get_mut(&e), v) {
        (Some(Value::Object(into)), Value::Object(from)) => {
            for (k2, v2) in from {
                let inner2 = inner && !is_map(&k2);
                put(into, k2, v2, inner, inner2);
            }
        }
        (_, v) => {
            out.remove(&e);
            out.insert(k, v);
        }
    }
}

/// Parses a Go node config: keys of struct-shaped objects folded case-insensitively, the
/// last occurrence winning, as Go's decoder applies them.
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let ordered = Seed.deserialize(&mut de)?;
    de.end()?;
    Ok(fold(ordered, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_of_case_duplicate_keys_wins_as_in_go() {
        let v = parse(r#"{"Nats":{"NodeID":"x","nodeid":"y"}}"#).expect("json");
        assert_eq!(v["Nats"].as_object().map(|o| o.len()), Some(1));
        assert_eq!(v["Nats"]["nodeid"], "y");
        let v = parse(r#"{"Nats":{"nodeid":"y","NodeID":"x"}}"#).expect("json");
        assert_eq!(v["Nats"]["NodeID"], "x");
    }

    #[test]
    fn a_later_null_leaves_the_field_as_go_does() {
        let v = parse(r#"{"Nats":{"NodeID":"x","nodeid":null}}"#).expect("json");
        assert_eq!(v["Nats"]["NodeID"], "x");
    }

    #[test]
    fn a_section_given_twice_merges_as_go_decodes_into_the_same_struct() {
        let v =
            parse(r#"{"nats":{"NodeID":"a","Url":"nats://old:1"},"Nats":{"url":"nats://h:1"}}"#)
                .expect("json");
        let n = v.as_object().map(|o| o.len());
        assert_eq!(n, Some(1));
        let nats = v.as_object().and_then(|o| o.values().next()).expect("Nats");
        assert_eq!(nats["NodeID"], "a");
        assert_eq!(nats["url"], "nats://h:1");
        assert_eq!(nats.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn maps_keep_their_keys() {
        let v = parse(
            r#"{"GeoDNSOverrides":{"a.example":{"CN":{"memberName":"x"}},"A.example":{}},
                "Checks":[{"Name":"ping","name":"wss","ExtraOptions":{"Port":1,"port":2}}],
                "IbpNode":{"role":"dns"}}"#,
        )
        .expect("json");
        assert_eq!(v["GeoDNSOverrides"].as_object().map(|o| o.len()), Some(2));
        assert_eq!(v["Checks"][0]["name"], "wss");
        assert_eq!(v["Checks"][0]["ExtraOptions"]["port"], 2);
        assert_eq!(v["Checks"][0]["ExtraOptions"]["Port"], 1);
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse(r#"{"a":1} x"#).is_err());
    }
}
