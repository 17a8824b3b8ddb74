//! Positional arguments: a tuple request is several arguments on the wire, any other type one.
//!
//! `Method<(i64, i64), i64>` sends `[2,3]`, so it interoperates with a TypeScript handler
//! `add(ctx, a, b)`; `Method<Resize, Thumb>` sends `[{"url":…,"width":…}]`; `Method<(), T>`
//! sends `[]`. The shape is read from the type's own serde implementation (a tuple serializes
//! with `serialize_tuple`), so no extra trait is needed on user types.

use crate::error::{Error, Result};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Impossible};
use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// How a request type maps to positional arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgShape {
    /// `()`: no arguments.
    Unit,
    /// A tuple of this many elements: that many arguments.
    Tuple(usize),
    /// Any other type: one argument.
    Single,
}

/// Encodes a request as the positional-argument array.
pub fn to_args<T: Serialize>(req: &T) -> Result<Vec<Value>> {
    let shape = ser_shape(req);
    let value = serde_json::to_value(req)?;
    Ok(match (shape, value) {
        (ArgShape::Unit, _) => Vec::new(),
        (ArgShape::Tuple(_), Value::Array(items)) => items,
        (_, v) => vec![v],
    })
}

/// Decodes positional arguments into the request type, checking the count.
pub fn from_args<T: DeserializeOwned>(args: Vec<Value>) -> Result<T> {
    match de_shape::<T>() {
        ArgShape::Unit => {
            if args.iter().all(Value::is_null) {
                serde_json::from_value(Value::Null).map_err(arg_error)
            } else {
                Err(Error::serialization(format!(
                    "expected no arguments, got {}",
                    args.len()
                )))
            }
        }
        ArgShape::Tuple(n) => {
            if args.len() > n {
                return Err(Error::serialization(format!(
                    "expected {n} arguments, got {}",
                    args.len()
                )));
            }
            let mut args = args;
            // A JavaScript caller may leave trailing arguments out (undefined).
            args.resize(n, Value::Null);
            serde_json::from_value(Value::Array(args)).map_err(arg_error)
        }
        ArgShape::Single => {
            if args.len() > 1 {
                return Err(Error::serialization(format!(
                    "expected 1 argument, got {}",
                    args.len()
                )));
            }
            let v = args.into_iter().next().unwrap_or(Value::Null);
            serde_json::from_value(v).map_err(arg_error)
        }
    }
}

fn arg_error(e: serde_json::Error) -> Error {
    Error::serialization(format!("arguments do not match the method's request type: {e}"))
}

/// The argument shape of a value, from how it serializes.
pub fn ser_shape<T: Serialize + ?Sized>(value: &T) -> ArgShape {
    match value.serialize(ShapeProbe) {
        Err(Found(shape)) => shape,
        Ok(()) => ArgShape::Single,
    }
}

/// The argument shape of a type, from how it deserializes.
pub fn de_shape<T: DeserializeOwned>() -> ArgShape {
    match T::deserialize(ShapeProbe) {
        Err(Found(shape)) => shape,
        Ok(_) => ArgShape::Single,
    }
}

/// Carries the detected shape out of the probe as its "error".
#[derive(Debug)]
struct Found(ArgShape);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Found(ArgShape::Single)
    }
}

impl de::Error for Found {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Found(ArgShape::Single)
    }
}

/// A serializer and deserializer that stops at the first call and reports its shape.
struct ShapeProbe;

macro_rules! single {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> std::result::Result<Self::Ok, Self::Error> {
            Err(Found(ArgShape::Single))
        })*
    };
}

impl ser::Serializer for ShapeProbe {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Impossible<(), Found>;
    type SerializeTuple = Impossible<(), Found>;
    type SerializeTupleStruct = Impossible<(), Found>;
    type SerializeTupleVariant = Impossible<(), Found>;
    type SerializeMap = Impossible<(), Found>;
    type SerializeStruct = Impossible<(), Found>;
    type SerializeStructVariant = Impossible<(), Found>;

    single!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_unit(self) -> std::result::Result<(), Found> {
        Err(Found(ArgShape::Unit))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> std::result::Result<(), Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self::SerializeSeq, Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_tuple(self, len: usize) -> std::result::Result<Self::SerializeTuple, Found> {
        Err(Found(ArgShape::Tuple(len)))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self::SerializeMap, Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, Found> {
        Err(Found(ArgShape::Single))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, Found> {
        Err(Found(ArgShape::Single))
    }
}

impl<'de> de::Deserializer<'de> for ShapeProbe {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Found> {
        Err(Found(ArgShape::Single))
    }
    fn deserialize_unit<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Found> {
        Err(Found(ArgShape::Unit))
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, _: V) -> std::result::Result<V::Value, Found> {
        Err(Found(ArgShape::Tuple(len)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit_struct newtype_struct seq
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Resize {
        url: String,
        width: u32,
    }

    #[test]
    fn tuples_are_positional() {
        assert_eq!(to_args(&(2i64, 3i64)).unwrap(), vec![json!(2), json!(3)]);
        assert_eq!(from_args::<(i64, i64)>(vec![json!(2), json!(3)]).unwrap(), (2, 3));
    }

    #[test]
    fn unit_is_no_arguments() {
        assert!(to_args(&()).unwrap().is_empty());
        from_args::<()>(vec![]).unwrap();
    }

    #[test]
    fn other_types_are_one_argument() {
        let r = Resize {
            url: "u".into(),
            width: 3,
        };
        assert_eq!(to_args(&r).unwrap(), vec![json!({"url":"u","width":3})]);
        assert_eq!(
            from_args::<Resize>(vec![json!({"url":"u","width":3})]).unwrap(),
            r
        );
        // A Vec is one argument (an array), not positional.
        assert_eq!(to_args(&vec![1, 2]).unwrap(), vec![json!([1, 2])]);
        assert_eq!(to_args(&"s").unwrap(), vec![json!("s")]);
    }

    #[test]
    fn wrong_counts_and_types_are_serialization_errors() {
        assert!(from_args::<(i64, i64)>(vec![json!(1), json!(2), json!(3)]).is_err());
        assert!(from_args::<(i64, i64)>(vec![json!("a"), json!(2)]).is_err());
        assert!(from_args::<Resize>(vec![json!(1), json!(2)]).is_err());
        assert!(from_args::<()>(vec![json!(1)]).is_err());
        let err = from_args::<(i64, i64)>(vec![json!(1)]).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Serialization);
    }

    #[test]
    fn trailing_undefined_fills_options() {
        let v: (i64, Option<String>) = from_args(vec![json!(1)]).unwrap();
        assert_eq!(v, (1, None));
    }

    proptest::proptest! {
        #[test]
        fn tuple_round_trip(a: i64, b: String, c: bool) {
            let args = to_args(&(a, b.clone(), c)).unwrap();
            proptest::prop_assert_eq!(args.len(), 3);
            let back: (i64, String, bool) = from_args(args).unwrap();
            proptest::prop_assert_eq!(back, (a, b, c));
        }

        #[test]
        fn struct_round_trip(url: String, width: u32) {
            let r = Resize { url, width };
            let back: Resize = from_args(to_args(&r).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, r);
        }
    }
}
