//! The binary codec of Rust ⇄ Rust calls: [bincode] 2 through its serde API, standard
//! configuration (little-endian, variable-length integers), negotiated per request by content
//! type ([`CONTENT_TYPE`]); the superjson JSON wire stays for the TypeScript reference.
//!
//! A request is its type's own serialization (a tuple is its elements in order: no positional
//! array, both ends are Rust and share the type); bytes (`bytes::Bytes`, `serde_bytes`) travel
//! raw, a length and the bytes. bincode is not self-describing: a type whose `Deserialize` asks
//! the format what comes next (`serde_json::Value`, `#[serde(untagged)]` or internally tagged
//! enums, `#[serde(flatten)]`) cannot be decoded from it. [`supports`] finds those once per type
//! (by tracing its `Deserialize` with serde-reflection), and calls that would decode one travel
//! as JSON instead. Why bincode (measured against postcard and rmp-serde, see
//! `BENCHMARKS.md`): equal sizes to postcard, the fastest decode from a stream, and the only one
//! of the three whose streaming decoder reads a byte buffer straight into its final `Vec` — a
//! 256 MiB payload is held once while it arrives, not twice.
//!
//! ```
//! use flame_core::codec::binary;
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Frame { seq: u32, #[serde(with = "serde_bytes")] pixels: Vec<u8> }
//! let frame = Frame { seq: 7, pixels: vec![1, 2, 3] };
//! let bytes = binary::encode(&frame).unwrap();
//! assert_eq!(bytes, [7, 3, 1, 2, 3]); // varint 7, length 3, the raw bytes
//! assert_eq!(binary::encoded_len(&frame).unwrap(), 5);
//! assert_eq!(binary::decode::<Frame>(&bytes).unwrap(), frame);
//! ```

use crate::error::{Error, Result};
use bincode::de::read::Reader;
use bincode::enc::write::{SizeWriter, Writer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// The content type of a binary request or reply payload.
pub const CONTENT_TYPE: &str = "application/x-flame-bincode";

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// The exact size of `value`'s encoding, without encoding it (a counting pass: for a byte
/// buffer it adds its length, it does not copy it).
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64> {
    let mut size = SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).map_err(encode_error)?;
    Ok(size.bytes_written as u64)
}

/// Encodes `value` into a vector of exactly its size.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let len = encoded_len(value)?;
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    encode_into(value, VecWriter(&mut out))?;
    Ok(out)
}

/// Encodes `value` into a bincode [`Writer`].
pub fn encode_into<T: Serialize + ?Sized, W: Writer>(value: &T, writer: W) -> Result<()> {
    bincode::serde::encode_into_writer(value, writer, config()).map_err(encode_error)
}

/// Decodes a whole payload; bytes left over are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config()).map_err(decode_error)?;
    if used != bytes.len() {
        return Err(Error::serialization(format!(
            "binary payload has {} bytes after its value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Decodes one value from a bincode [`Reader`] (a stream: see `stream::Body::decode`).
pub fn decode_from<T: DeserializeOwned, R: Reader>(reader: R) -> Result<T> {
    bincode::serde::decode_from_reader(reader, config()).map_err(decode_error)
}

/// Whether values of `T` can be decoded from the binary codec: `false` for a type whose
/// `Deserialize` needs a self-describing format (`serde_json::Value`, untagged and internally
/// tagged enums, `#[serde(flatten)]`: serde's `deserialize_any`). Found once per type by tracing
/// its `Deserialize` (serde-reflection), then cached. A trace stopped by something else (a value
/// check of the traced fake data, e.g. `NonZeroU32`) counts as decodable.
///
/// ```
/// use flame_core::codec::binary::supports;
/// #[derive(serde::Deserialize)]
/// #[serde(untagged)]
/// enum Either { N(u32), S(String) }
/// assert!(supports::<(i64, Vec<String>, bytes::Bytes)>());
/// assert!(!supports::<serde_json::Value>());
/// assert!(!supports::<Either>());
/// ```
pub fn supports<T: DeserializeOwned + 'static>() -> bool {
    static CACHE: OnceLock<RwLock<HashMap<TypeId, bool>>> = OnceLock::new();
    let id = TypeId::of::<T>();
    if id == TypeId::of::<serde::de::IgnoredAny>() {
        return true; // never decoded (`stream::Body::decode`)
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.read().ok().and_then(|c| c.get(&id).copied()) {
        return known;
    }
    let traced = std::panic::catch_unwind(|| {
        let mut tracer = serde_reflection::Tracer::new(serde_reflection::TracerConfig::default());
        match tracer.trace_simple_type::<T>() {
            Err(serde_reflection::Error::NotSupported(what)) => {
                tracing::debug!(target: "flame::codec", r#type = std::any::type_name::<T>(), what, "needs a self-describing codec: JSON");
                false
            }
            _ => true,
        }
    })
    .unwrap_or(true);
    if let Ok(mut c) = cache.write() {
        c.insert(id, traced);
    }
    traced
}

/// A bincode [`Writer`] appending to a vector.
#[derive(Debug)]
pub struct VecWriter<'a>(pub &'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

fn encode_error(e: bincode::error::EncodeError) -> Error {
    Error::serialization(format!("cannot encode the binary payload: {e}"))
}

pub(crate) fn decode_error(e: bincode::error::DecodeError) -> Error {
    Error::serialization(format!("binary payload does not match the method's type: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Inner {
        name: String,
        tags: Vec<String>,
        score: Option<f64>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Outer {
        id: u64,
        inner: Vec<Inner>,
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
        blob: bytes::Bytes,
        plain: Vec<u8>,
    }

    fn sample() -> Outer {
        Outer {
            id: u64::MAX,
            inner: vec![Inner {
                name: "ünï".into(),
                tags: vec!["a".into(), String::new()],
                score: Some(-0.5),
            }],
            raw: vec![0, 255, 7],
            blob: bytes::Bytes::from_static(b"\x00\x01frame"),
            plain: vec![9; 4],
        }
    }

    #[test]
    fn nested_structs_vec_u8_and_bytes_round_trip() {
        let v = sample();
        let enc = encode(&v).unwrap();
        assert_eq!(enc.len() as u64, encoded_len(&v).unwrap());
        assert_eq!(decode::<Outer>(&enc).unwrap(), v);
        // Tuples are their elements: no positional wrapper.
        assert_eq!(encode(&(2i64, 3i64)).unwrap(), [4, 6]);
        assert_eq!(decode::<(i64, i64)>(&[4, 6]).unwrap(), (2, 3));
        assert!(encode(&()).unwrap().is_empty());
    }

    #[test]
    fn bytes_travel_raw() {
        let blob = bytes::Bytes::from(vec![0xAB; 1000]);
        let enc = encode(&blob).unwrap();
        // A 2-byte-or-less length prefix (varint 1000 = 251 + u16) and the bytes themselves.
        assert!(enc.len() <= 1003, "{}", enc.len());
        assert_eq!(&enc[enc.len() - 1000..], &blob[..]);
        let json = serde_json::to_string(&blob).unwrap();
        assert!(json.len() > 3 * 1000, "JSON spells each byte as a number");
    }

    #[test]
    fn wrong_types_and_trailing_bytes_are_serialization_errors() {
        let err = decode::<(i64, i64)>(&[4]).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Serialization);
        let err = decode::<i64>(&[4, 6]).unwrap_err();
        assert!(err.message().contains("after its value"), "{err}");
        let err = decode::<String>(&[2, 0xff, 0xfe]).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Serialization);
    }

    proptest::proptest! {
        #[test]
        fn any_struct_round_trips(id: u64, name: String, tags: Vec<String>, raw: Vec<u8>, score: Option<f64>) {
            let v = Outer {
                id,
                inner: vec![Inner { name, tags, score: score.filter(|s| !s.is_nan()) }],
                raw: raw.clone(),
                blob: bytes::Bytes::from(raw.clone()),
                plain: raw,
            };
            let enc = encode(&v).unwrap();
            proptest::prop_assert_eq!(enc.len() as u64, encoded_len(&v).unwrap());
            proptest::prop_assert_eq!(decode::<Outer>(&enc).unwrap(), v);
        }
    }
}
