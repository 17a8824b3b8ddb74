//! The wire codecs (DESIGN.md §8): envelopes, positional arguments, superjson — the JSON wire
//! of the TypeScript reference, kept byte for byte — and, for Rust ⇄ Rust, the [`binary`]
//! codec, negotiated per request by content type ([`Codec`]).
//!
//! ```
//! use flame_core::codec;
//! let text = codec::encode_args(&(2i64, 3i64)).unwrap();
//! assert_eq!(text, r#"{"json":[2,3]}"#);
//! let (a, b): (i64, i64) = codec::decode_args(&text).unwrap();
//! assert_eq!(a + b, 5);
//! ```

pub mod args;
pub mod binary;
pub mod envelope;
pub mod superjson;

pub use args::{from_args, to_args, ArgShape};
pub use envelope::{InvocationRequest, InvocationResponse, WireError};

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The codec of a request or reply payload, named by its content type.
///
/// ```
/// use flame_core::codec::Codec;
/// assert_eq!(Codec::from_content_type("application/json; charset=utf-8"), Some(Codec::Json));
/// assert_eq!(Codec::from_content_type(Codec::Binary.content_type()), Some(Codec::Binary));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Wire protocol v1: a JSON envelope with superjson `args` (the TypeScript reference's).
    Json,
    /// The binary codec ([`binary`]): the envelope in headers, the payload in bincode.
    Binary,
}

impl Codec {
    /// The content type of this codec's requests.
    pub const fn content_type(self) -> &'static str {
        match self {
            Codec::Json => "application/json",
            Codec::Binary => binary::CONTENT_TYPE,
        }
    }

    /// The codec of a content type (parameters such as `charset` ignored).
    pub fn from_content_type(content_type: &str) -> Option<Codec> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Some(Codec::Json)
        } else if essence.eq_ignore_ascii_case(binary::CONTENT_TYPE) {
            Some(Codec::Binary)
        } else {
            None
        }
    }

    /// The name a runner lists in its `x-flame-codecs` header (`bincode`).
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Binary => "bincode",
        }
    }
}

/// Encodes a request as superjson text of its positional-argument array.
pub fn encode_args<T: Serialize>(req: &T) -> Result<String> {
    superjson::encode(&Value::Array(to_args(req)?))
}

/// Decodes superjson text of a positional-argument array into a request.
pub fn decode_args<T: DeserializeOwned>(text: &str) -> Result<T> {
    from_args(decode_arg_values(text)?)
}

/// Decodes superjson text of a positional-argument array into plain values.
pub fn decode_arg_values(text: &str) -> Result<Vec<Value>> {
    match superjson::decode(text)? {
        Value::Array(items) => Ok(items),
        other => Err(Error::serialization(format!(
            "`args` must be a superjson array of positional arguments, got {}",
            kind(&other)
        ))),
    }
}

/// Encodes a handler's result as superjson text.
pub fn encode_result<T: Serialize>(resp: &T) -> Result<String> {
    superjson::encode(&serde_json::to_value(resp)?)
}

/// Decodes superjson result text into the response type.
pub fn decode_result<T: DeserializeOwned>(text: &str) -> Result<T> {
    let value = superjson::decode(text)?;
    serde_json::from_value(value)
        .map_err(|e| Error::serialization(format!("result does not match the method's response type: {e}")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_must_be_an_array() {
        let err = decode_args::<(i64,)>(r#"{"json":{"a":1}}"#).unwrap_err();
        assert!(err.message().contains("an object"), "{err}");
    }

    #[test]
    fn results_round_trip() {
        let t = encode_result(&vec!["a", "b"]).unwrap();
        assert_eq!(t, r#"{"json":["a","b"]}"#);
        assert_eq!(decode_result::<Vec<String>>(&t).unwrap(), vec!["a", "b"]);
        // A TypeScript handler returning nothing sends undefined: decodes as ().
        decode_result::<()>(r#"{"json":null,"meta":{"values":["undefined"],"v":1}}"#).unwrap();
        assert!(decode_result::<u8>(r#"{"json":"x"}"#).is_err());
    }
}
