//! Encoding byte-compatible with Go's `json.Marshal`.
//!
//! Field order and key spelling come from the serde attributes on the message types. Go
//! also escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings (its default HTML-safe
//! mode); [`encode`] does the same so a message from this node is byte-identical to the
//! one a Go node would send. Raw `Data` payloads are passed through untouched.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Encodes a message as Go would. Fails only for a type that cannot be JSON (never for
/// the types of this crate, whose payloads are valid JSON by construction).
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    msg.serialize(&mut ser)?;
    Ok(out)
}

/// [`encode`] into a `String`.
pub fn encode_to_string<T: Serialize + ?Sized>(msg: &T) -> Result<String, serde_json::Error> {
    let bytes = encode(msg)?;
    // The serializer only writes UTF-8.
    String::from_utf8(bytes).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_like_go() {
        let s = encode_to_string("a<b>&c\u{2028}").expect("encodes");
        assert_eq!(s, r#""a\u003cb\u003e\u0026c\u2028""#);
    }
}
