//! The audit log's canonical JSON: the one byte form of an audit entry its hash is
//! computed over, so that a row read back from `jsonb` hashes as it did when written,
//! whatever order and spacing PostgreSQL gives it back in. Kept as it is because every
//! audit chain written so far is hashed in it; envelope signatures use RFC 8785
//! instead ([`crate::signing::jcs`]), which agrees with this form on the integers and
//! strings audit entries hold.
//!
//! The form: no whitespace; object members sorted by key, compared as UTF-8 bytes;
//! strings escaped as `serde_json` escapes them (`"`, `\`, and control characters,
//! which become `\n`-style or `\u00XX` escapes; everything else as UTF-8); numbers as
//! `serde_json` prints them (integers as digits, floats in their shortest round-trip
//! form). It is RFC 8785 (JCS) for every value without floats.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        other => scalar(other, out),
    }
}

fn scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_sorted_at_every_depth_and_spacing_is_dropped() {
        let v: Value = serde_json::from_str(
            r#"{ "b": 1, "a": { "z": [ 2, {"y": null, "x": true} ], "c": "d" } }"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"a":{"c":"d","z":[2,{"x":true,"y":null}]},"b":1}"#
        );
    }

    #[test]
    fn keys_compare_as_bytes_and_strings_keep_their_escapes() {
        let v = json!({"é": "a\"b\n", "Z": 1, "a": -3});
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            "{\"Z\":1,\"a\":-3,\"é\":\"a\\\"b\\n\"}"
        );
    }

    #[test]
    fn the_same_value_written_two_ways_has_one_form() {
        let a: Value = serde_json::from_str(r#"{"x": [1, 2], "y": {"q": "r"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y":{"q":"r"},"x":[1,2]}"#).unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
    }
}
