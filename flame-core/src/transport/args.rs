//! [`Args`]: a call's arguments, encoded on demand in the codec of the runner they go to; and
//! [`Reply`]: what comes back.

use crate::codec::{self, binary};
use crate::error::{Error, Result};
use crate::stream::{Body, STREAM_THRESHOLD};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// A call's arguments. Typed arguments ([`Args::typed`], what `Flame::call` sends) are encoded
/// when a transport knows the runner: binary for a flame-rs runner, superjson for the
/// TypeScript reference — once per codec, and a large binary payload is streamed from the
/// value itself, not copied whole first. Text arguments ([`Args::json`]) are superjson as
/// given, for the JSON wire only.
///
/// ```
/// use flame_core::transport::Args;
/// let args = Args::typed((2i64, 3i64));
/// assert_eq!(args.to_json().unwrap(), r#"{"json":[2,3]}"#);
/// assert_eq!(args.binary_len().unwrap(), Some(2));
/// let text: Args = r#"{"json":[2,3]}"#.into();
/// assert!(!text.has_binary());
/// ```
#[derive(Clone)]
pub struct Args {
    repr: Repr,
    /// Whether the binary codec may carry this call (see [`Args::with_binary`]).
    binary: bool,
}

#[derive(Clone)]
enum Repr {
    Json(Arc<str>),
    Typed(Arc<dyn Encode>),
}

trait Encode: Send + Sync {
    fn json(&self) -> Result<String>;
    fn binary_len(&self) -> Result<u64>;
    fn binary(self: Arc<Self>) -> Result<Body>;
}

struct Typed<T> {
    value: Mutex<T>,
    json: OnceLock<Arc<str>>,
    len: OnceLock<u64>,
    small: OnceLock<Bytes>,
}

impl<T> Typed<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        match self.value.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl<T: Serialize + Send + 'static> Encode for Typed<T> {
    fn json(&self) -> Result<String> {
        if let Some(text) = self.json.get() {
            return Ok(text.to_string());
        }
        let text = codec::encode_args(&*self.lock())?;
        let _ = self.json.set(Arc::from(text.as_str()));
        Ok(text)
    }

    fn binary_len(&self) -> Result<u64> {
        if let Some(n) = self.len.get() {
            return Ok(*n);
        }
        let n = binary::encoded_len(&*self.lock())?;
        let _ = self.len.set(n);
        Ok(n)
    }

    fn binary(self: Arc<Self>) -> Result<Body> {
        if let Some(b) = self.small.get() {
            return Ok(Body::full(b.clone()));
        }
        let len = self.binary_len()?;
        if len <= STREAM_THRESHOLD || tokio::runtime::Handle::try_current().is_err() {
            let bytes = Bytes::from(binary::encode(&*self.lock())?);
            let _ = self.small.set(bytes.clone());
            return Ok(Body::full(bytes));
        }
        // Large: encoded a chunk at a time on a blocking thread, from the value itself (kept for
        // a retry), as the transport sends it.
        Ok(Body::encode_streamed(len, move |w| {
            binary::encode_into(&*self.lock(), w)
        }))
    }
}

impl Args {
    /// Text arguments: superjson of the positional-argument array (JSON wire only).
    pub fn json(text: impl Into<String>) -> Args {
        Args {
            repr: Repr::Json(Arc::from(text.into())),
            binary: false,
        }
    }

    /// Typed arguments (a tuple is several positional arguments on the JSON wire, any other
    /// type one), encoded on demand in either codec.
    pub fn typed<T: Serialize + Send + 'static>(value: T) -> Args {
        Args {
            repr: Repr::Typed(Arc::new(Typed {
                value: Mutex::new(value),
                json: OnceLock::new(),
                len: OnceLock::new(),
                small: OnceLock::new(),
            })),
            binary: true,
        }
    }

    /// The same arguments, allowed in the binary codec only if `binary` (a call whose result
    /// type the binary codec cannot decode travels as JSON: see
    /// [`codec::binary::supports`](crate::codec::binary::supports)).
    pub fn with_binary(mut self, binary: bool) -> Args {
        self.binary = binary && matches!(self.repr, Repr::Typed(_));
        self
    }

    /// Whether these arguments may travel in the binary codec (typed arguments can, unless
    /// [`Args::with_binary`] said otherwise).
    pub fn has_binary(&self) -> bool {
        self.binary
    }

    /// The superjson text of the positional-argument array.
    pub fn to_json(&self) -> Result<String> {
        match &self.repr {
            Repr::Json(text) => Ok(text.to_string()),
            Repr::Typed(t) => t.json(),
        }
    }

    /// The size of the binary encoding (`None` for text arguments).
    pub fn binary_len(&self) -> Result<Option<u64>> {
        match &self.repr {
            Repr::Json(_) => Ok(None),
            Repr::Typed(t) => t.binary_len().map(Some),
        }
    }

    /// The binary encoding: in memory when small, else streamed as it is read.
    pub fn to_binary(&self) -> Result<Body> {
        match &self.repr {
            Repr::Json(_) => Err(Error::serialization(
                "these arguments are superjson text and have no binary encoding",
            )),
            Repr::Typed(t) => t.clone().binary(),
        }
    }
}

impl From<String> for Args {
    fn from(text: String) -> Self {
        Args::json(text)
    }
}

impl From<&str> for Args {
    fn from(text: &str) -> Self {
        Args::json(text)
    }
}

impl Default for Args {
    /// No arguments.
    fn default() -> Self {
        Args::json("{\"json\":[]}")
    }
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Json(text) => f.debug_tuple("Args::Json").field(text).finish(),
            Repr::Typed(_) => f.write_str("Args::Typed"),
        }
    }
}

/// A runner's successful reply to one attempt.
#[derive(Debug)]
pub enum Reply {
    /// superjson text of the result (the JSON wire).
    Json(String),
    /// The result's binary encoding, possibly still arriving.
    Binary(Body),
    /// A streamed result: its frames (`stream::frame`), as they arrive.
    Stream(Body),
}

impl Reply {
    /// Decodes the result, whatever the codec (a large binary result straight from the
    /// network as it arrives).
    pub async fn decode<T: DeserializeOwned + Send + 'static>(self) -> Result<T> {
        match self {
            Reply::Json(text) => codec::decode_result(&text),
            Reply::Binary(body) => body.decode().await,
            Reply::Stream(_) => Err(Error::serialization(
                "the runner streamed its result: call this method with call_stream",
            )),
        }
    }

    /// The superjson text, for a JSON reply.
    pub fn json_text(&self) -> Option<&str> {
        match self {
            Reply::Json(text) => Some(text),
            _ => None,
        }
    }
}
