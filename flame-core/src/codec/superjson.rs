//! The subset of [superjson](https://github.com/flightcontrolhq/superjson) that the wire uses.
//!
//! superjson wraps a value as `{"json": value}` and adds `"meta"` only for values plain JSON
//! cannot hold. flame encodes plain JSON only (so its output is exactly what superjson writes for
//! a plain value) and decodes plain values, `Date` (kept as its ISO 8601 text, so it deserializes
//! into `String` or any RFC 3339 time type) and `undefined` (as `null`). Every other annotation
//! (`bigint`, `map`, `set`, `regexp`, `number` for NaN/Infinity, classes, ...) is rejected with a
//! clear [`ErrorCode::Serialization`](crate::ErrorCode::Serialization) error.

use crate::error::{Error, Result};
use serde_json::Value;

/// Encodes a plain JSON value as superjson text: `{"json":<value>}`. Numbers are written as
/// JavaScript writes them where serde_json would differ for a whole `f64`: `5.0` is `5`, so a
/// Rust `f64` handler answers byte for byte what the reference's JavaScript one does, and a
/// caller that expects an integer can read it. (`-0.0` stays `-0.0`, bit-exact for a Rust
/// caller, where JavaScript would print `0`.)
pub fn encode(value: &Value) -> Result<String> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(b"{\"json\":");
    if has_whole_float(value) {
        let mut js = value.clone();
        to_js_numbers(&mut js);
        serde_json::to_writer(&mut out, &js)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    out.push(b'}');
    String::from_utf8(out).map_err(|e| Error::serialization(format!("superjson text is not UTF-8: {e}")))
}

/// Integers an `f64` holds exactly, as JavaScript's `Number.isSafeInteger` bounds them.
const SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn whole(n: &serde_json::Number) -> Option<i64> {
    let f = n.as_f64().filter(|_| n.is_f64())?;
    // `-0.0` stays `-0.0` (JavaScript would print `0`): a Rust caller gets its bits back.
    let negative_zero = f == 0.0 && f.is_sign_negative();
    (!negative_zero && f.fract() == 0.0 && f.abs() <= SAFE_INTEGER).then_some(f as i64)
}

fn has_whole_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => whole(n).is_some(),
        Value::Array(items) => items.iter().any(has_whole_float),
        Value::Object(map) => map.values().any(has_whole_float),
        _ => false,
    }
}

fn to_js_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(i) = whole(n) {
                *v = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_js_numbers),
        Value::Object(map) => map.values_mut().for_each(to_js_numbers),
        _ => {}
    }
}

/// Decodes superjson text into a plain JSON value, accepting only `Date` and `undefined`
/// annotations.
pub fn decode(text: &str) -> Result<Value> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| Error::serialization(format!("superjson payload is not valid JSON: {e}")))?;
    decode_value(root)
}

/// Decodes an already-parsed superjson object (`{"json": …, "meta"?: …}`).
pub fn decode_value(root: Value) -> Result<Value> {
    let Value::Object(mut obj) = root else {
        return Err(Error::serialization(
            "superjson payload must be an object with a `json` key",
        ));
    };
    let json = obj
        .remove("json")
        .ok_or_else(|| Error::serialization("superjson payload has no `json` key"))?;
    if let Some(meta) = obj.remove("meta") {
        if let Some(values) = meta.get("values") {
            check_annotations(values, "")?;
        }
    }
    Ok(json)
}

/// Walks `meta.values`: a leaf `[annotation]`, an inner node `[annotation, {children}]`, or at
/// the root a map from escaped dotted paths to trees.
fn check_annotations(tree: &Value, path: &str) -> Result<()> {
    match tree {
        Value::Array(items) => {
            let annotation = items.first().ok_or_else(|| {
                Error::serialization(format!("superjson meta has an empty annotation at `{path}`"))
            })?;
            check_annotation(annotation, path)?;
            if let Some(children) = items.get(1) {
                check_children(children, path)?;
            }
            Ok(())
        }
        Value::Object(_) => check_children(tree, path),
        Value::Null => Ok(()),
        other => Err(Error::serialization(format!(
            "superjson meta has an unexpected annotation tree at `{path}`: {other}"
        ))),
    }
}

fn check_children(children: &Value, path: &str) -> Result<()> {
    let Value::Object(map) = children else {
        return Err(Error::serialization(format!(
            "superjson meta children at `{path}` are not an object"
        )));
    };
    for (key, sub) in map {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        check_annotations(sub, &child)?;
    }
    Ok(())
}

fn check_annotation(annotation: &Value, path: &str) -> Result<()> {
    match annotation.as_str() {
        Some("Date") | Some("undefined") => Ok(()),
        Some(other) => Err(Error::serialization(format!(
            "unsupported superjson type `{other}` at `{}`: flame accepts plain JSON, Date and undefined",
            display_path(path)
        ))),
        None => Err(Error::serialization(format!(
            "unsupported superjson type {annotation} at `{}`: flame accepts plain JSON, Date and undefined",
            display_path(path)
        ))),
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "<root>"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    // Golden strings: the output of superjson 2.2.6 `stringify` for each value named.
    #[test]
    fn golden_plain_values_encode_byte_for_byte() {
        assert_eq!(encode(&json!([2, 3])).unwrap(), r#"{"json":[2,3]}"#);
        assert_eq!(encode(&json!([])).unwrap(), r#"{"json":[]}"#);
        assert_eq!(encode(&json!("pong")).unwrap(), r#"{"json":"pong"}"#);
        assert_eq!(encode(&json!(null)).unwrap(), r#"{"json":null}"#);
        assert_eq!(
            encode(&json!({"a":1,"b":[1,2]})).unwrap(),
            r#"{"json":{"a":1,"b":[1,2]}}"#
        );
        assert_eq!(encode(&json!("ünï\"code")).unwrap(), "{\"json\":\"ünï\\\"code\"}");
    }

    #[test]
    fn golden_numbers_are_written_as_javascript_writes_them() {
        // JSON.stringify of the same JavaScript values.
        assert_eq!(encode(&json!(5.0)).unwrap(), r#"{"json":5}"#);
        assert_eq!(
            encode(&json!([-0.0, 2.5, 1.0e15])).unwrap(),
            r#"{"json":[-0.0,2.5,1000000000000000]}"#
        );
        assert_eq!(
            encode(&json!(0.1 + 0.2)).unwrap(),
            r#"{"json":0.30000000000000004}"#
        );
        assert_eq!(encode(&json!({"a": [3.0]})).unwrap(), r#"{"json":{"a":[3]}}"#);
        // Beyond 2^53 a double is no longer a safe integer: left as serde_json writes it (here
        // as JavaScript does too).
        assert_eq!(encode(&json!(1.0e300)).unwrap(), r#"{"json":1e+300}"#);
        assert_eq!(
            encode(&json!(u64::MAX)).unwrap(),
            format!(r#"{{"json":{}}}"#, u64::MAX)
        );
    }

    #[test]
    fn golden_undefined_decodes_to_null() {
        let v = decode(r#"{"json":null,"meta":{"values":["undefined"],"v":1}}"#).unwrap();
        assert_eq!(v, Value::Null);
        let v = decode(r#"{"json":[null],"meta":{"values":{"0":["undefined"]},"v":1}}"#).unwrap();
        assert_eq!(v, json!([null]));
        let v = decode(r#"{"json":[{"a":null}],"meta":{"values":{"0.a":["undefined"]},"v":1}}"#).unwrap();
        assert_eq!(v, json!([{"a": null}]));
    }

    #[test]
    fn golden_dates_decode_to_iso_text() {
        let v = decode(r#"{"json":"1970-01-01T00:00:00.000Z","meta":{"values":["Date"],"v":1}}"#).unwrap();
        assert_eq!(v, json!("1970-01-01T00:00:00.000Z"));
        let v = decode(
            r#"{"json":{"d":{"e":"1970-01-01T00:00:00.000Z"},"x.y":null},"meta":{"values":{"d.e":["Date"],"x\\.y":["undefined"]},"v":1}}"#,
        )
        .unwrap();
        assert_eq!(v["d"]["e"], json!("1970-01-01T00:00:00.000Z"));
    }

    #[test]
    fn golden_other_types_are_rejected_clearly() {
        for (text, name) in [
            (r#"{"json":"10","meta":{"values":["bigint"],"v":1}}"#, "bigint"),
            (r#"{"json":[[1,2]],"meta":{"values":["map"],"v":1}}"#, "map"),
            (r#"{"json":[1],"meta":{"values":["set"],"v":1}}"#, "set"),
            (r#"{"json":"NaN","meta":{"values":["number"],"v":1}}"#, "number"),
            (
                r#"{"json":{"a":"x"},"meta":{"values":{"a":[["class","Foo"]]}}}"#,
                "class",
            ),
        ] {
            let err = decode(text).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Serialization, "{text}");
            assert!(
                err.message().contains(name) || err.message().contains("unsupported"),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_payloads_are_serialization_errors() {
        for text in [
            "",
            "[",
            "[1,2]",
            r#"{"meta":{}}"#,
            r#"{"json":1,"meta":{"values":[]}}"#,
            "3",
        ] {
            assert_eq!(
                decode(text).unwrap_err().code(),
                ErrorCode::Serialization,
                "{text}"
            );
        }
    }

    #[test]
    fn nested_inner_nodes_are_walked() {
        let err =
            decode(r#"{"json":{"a":[1]},"meta":{"values":{"a":["Date",{"0":["bigint"]}]}}}"#).unwrap_err();
        assert!(err.message().contains("bigint"));
    }
}
