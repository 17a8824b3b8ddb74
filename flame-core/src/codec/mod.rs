//! The wire codec (DESIGN.md §8): envelopes, positional arguments, superjson.
//!
//! ```
//! use flame_core::codec;
//! let text = codec::encode_args(&(2i64, 3i64)).unwrap();
//! assert_eq!(text, r#"{"json":[2,3]}"#);
//! let (a, b): (i64, i64) = codec::decode_args(&text).unwrap();
//! assert_eq!(a + b, 5);
//! ```

pub mod args;
pub mod envelope;
pub mod superjson;

pub use args::{from_args, to_args, ArgShape};
pub use envelope::{InvocationRequest, InvocationResponse, WireError};

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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
