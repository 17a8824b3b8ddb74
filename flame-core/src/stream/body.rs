//! [`Body`]: a payload in memory or arriving as a stream of chunks, and its binary encode and
//! decode without holding it twice.

use crate::codec::binary;
use crate::error::{Error, ErrorCode, Result};
use bincode::de::read::Reader;
use bincode::enc::write::Writer;
use bincode::error::{DecodeError, EncodeError};
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Payloads up to this size are encoded and decoded in one piece on the calling task; larger
/// ones go through a blocking thread, a chunk at a time, so neither end holds them twice.
pub const STREAM_THRESHOLD: u64 = 256 * 1024;

/// The size of the chunks a streamed encode produces.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Chunks a streamed encode may have ready ahead of the reader (backpressure beyond it).
const CHUNKS_AHEAD: usize = 4;

/// A payload: in memory, or a stream of chunks (a request or reply body read from the network,
/// a large value being encoded), with its length when known.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::stream::Body;
/// let body = Body::encode((2i64, String::from("two"))).unwrap();
/// assert_eq!(body.len(), Some(5));
/// let (n, s): (i64, String) = body.decode().await.unwrap();
/// assert_eq!((n, s.as_str()), (2, "two"));
/// # });
/// ```
pub struct Body {
    repr: Repr,
}

enum Repr {
    Full(Bytes),
    Stream {
        len: Option<u64>,
        chunks: BoxStream<'static, Result<Bytes>>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Full(b) => f.debug_tuple("Body::Full").field(&b.len()).finish(),
            Repr::Stream { len, .. } => f.debug_struct("Body::Stream").field("len", len).finish(),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::full(Bytes::new())
    }
}

impl Body {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body {
            repr: Repr::Full(bytes.into()),
        }
    }

    /// A body arriving as `chunks`, `len` bytes in all when known.
    pub fn stream(len: Option<u64>, chunks: impl Stream<Item = Result<Bytes>> + Send + 'static) -> Body {
        Body {
            repr: Repr::Stream {
                len,
                chunks: chunks.boxed(),
            },
        }
    }

    /// The length in bytes, when known (always for a body in memory).
    pub fn len(&self) -> Option<u64> {
        match &self.repr {
            Repr::Full(b) => Some(b.len() as u64),
            Repr::Stream { len, .. } => *len,
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The bytes, if the body is in memory.
    pub fn as_full(&self) -> Option<&Bytes> {
        match &self.repr {
            Repr::Full(b) => Some(b),
            Repr::Stream { .. } => None,
        }
    }

    /// The body as a stream of chunks (one chunk for a body in memory).
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        match self.repr {
            Repr::Full(b) if b.is_empty() => stream::empty().boxed(),
            Repr::Full(b) => stream::once(async move { Ok(b) }).boxed(),
            Repr::Stream { chunks, .. } => chunks,
        }
    }

    /// Reads the whole body into memory; more than `limit` bytes is `PAYLOAD_TOO_LARGE`.
    pub async fn collect(self, limit: u64) -> Result<Bytes> {
        let too_large = |n: u64| {
            Error::new(
                ErrorCode::PayloadTooLarge,
                format!("payload of {n} bytes or more is over the limit of {limit} bytes"),
            )
        };
        match self.repr {
            Repr::Full(b) if b.len() as u64 > limit => Err(too_large(b.len() as u64)),
            Repr::Full(b) => Ok(b),
            Repr::Stream { len, mut chunks } => {
                if let Some(n) = len.filter(|n| *n > limit) {
                    return Err(too_large(n));
                }
                let mut buf = BytesMut::with_capacity(len.unwrap_or(0).min(limit) as usize);
                let mut single: Option<Bytes> = None;
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk?;
                    let total = (buf.len() + single.as_ref().map_or(0, Bytes::len) + chunk.len()) as u64;
                    if total > limit {
                        return Err(too_large(total));
                    }
                    // One chunk (the common case) is kept as it is, without a copy.
                    match single.take() {
                        None if buf.is_empty() => single = Some(chunk),
                        None => buf.extend_from_slice(&chunk),
                        Some(first) => {
                            buf.extend_from_slice(&first);
                            buf.extend_from_slice(&chunk);
                        }
                    }
                }
                Ok(single.unwrap_or_else(|| buf.freeze()))
            }
        }
    }

    /// Encodes `value` with the binary codec: in memory when small, else as a stream that a
    /// blocking thread fills a chunk at a time, with backpressure, while the reader drains it
    /// (so the encoded form of a large value is never held whole).
    pub fn encode<T: Serialize + Send + 'static>(value: T) -> Result<Body> {
        Body::encode_within(value, None)
    }

    /// [`Body::encode`], refusing a value whose encoding is over `max` bytes with
    /// `PAYLOAD_TOO_LARGE` (decided by a counting pass, before anything is encoded).
    pub fn encode_within<T: Serialize + Send + 'static>(value: T, max: Option<u64>) -> Result<Body> {
        let len = binary::encoded_len(&value)?;
        if let Some(max) = max.filter(|m| len > *m) {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("the result's {len} bytes are over the method's limit of {max} bytes"),
            ));
        }
        if len <= STREAM_THRESHOLD || tokio::runtime::Handle::try_current().is_err() {
            return Ok(Body::full(binary::encode(&value)?));
        }
        Ok(Body::encode_streamed(len, move |w| {
            binary::encode_into(&value, w)
        }))
    }

    /// A stream of `len` bytes that `encode` writes on a blocking thread into the writer it is
    /// given, a chunk at a time (it blocks while the reader is [`CHUNKS_AHEAD`] chunks behind; a
    /// reader that goes away makes its writes fail).
    pub(crate) fn encode_streamed<F>(len: u64, encode: F) -> Body
    where
        F: FnOnce(&mut ChunkWriter) -> Result<()> + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut writer = ChunkWriter {
                tx,
                buf: BytesMut::new(),
            };
            let outcome = encode(&mut writer).and_then(|()| writer.flush_last());
            if let Err(e) = outcome {
                // The reader is still there unless the write failed because it left.
                let _ = writer.tx.blocking_send(Err(e));
            }
        });
        Body::stream(Some(len), stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Decodes the body with the binary codec. A small body is decoded in one piece; a large or
    /// unknown-length one on a blocking thread straight from its chunks as they arrive (a byte
    /// buffer goes directly into its final vector), so the payload is held once. The value is
    /// returned only once the stream has ended cleanly: an error the stream reports at its end
    /// (a failed signature check, a cut connection) is this call's error, and bytes after the
    /// value are a `SERIALIZATION` error.
    pub async fn decode<T: DeserializeOwned + Send + 'static>(self) -> Result<T> {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<serde::de::IgnoredAny>() {
            // A reply nobody reads (a cast's acknowledgement): read past it, decode nothing
            // (the binary codec cannot skip a value it does not know the type of).
            self.collect(u64::MAX).await?;
            return T::deserialize(serde::de::value::UnitDeserializer::<serde::de::value::Error>::new())
                .map_err(|e| Error::serialization(e.to_string()));
        }
        match self.repr {
            Repr::Full(b) => binary::decode(&b),
            Repr::Stream { len: Some(n), chunks } if n <= STREAM_THRESHOLD => {
                let b = Body::stream(Some(n), chunks).collect(n.max(1)).await?;
                binary::decode(&b)
            }
            Repr::Stream { chunks, .. } => decode_streamed(chunks).await,
        }
    }
}

/// Collects a streamed encode's output into chunks of [`CHUNK_SIZE`] and hands them to the
/// reader's channel, blocking while it is full.
pub(crate) struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes>>,
    buf: BytesMut,
}

impl ChunkWriter {
    fn send(&mut self) -> std::result::Result<(), EncodeError> {
        let chunk = self.buf.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| EncodeError::Other("the reader of the payload went away"))
    }

    fn flush_last(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
            .map_err(|e| Error::transport(format!("payload not sent: {e}")))
    }
}

impl Writer for ChunkWriter {
    fn write(&mut self, mut bytes: &[u8]) -> std::result::Result<(), EncodeError> {
        while !bytes.is_empty() {
            if self.buf.is_empty() && self.buf.capacity() < CHUNK_SIZE {
                self.buf.reserve(CHUNK_SIZE);
            }
            let room = CHUNK_SIZE - self.buf.len();
            let n = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == CHUNK_SIZE {
                self.send()?;
            }
        }
        Ok(())
    }
}

/// Fires `abort` when the decoding call is dropped, so its blocking reader stops.
struct AbortOnDrop(Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

async fn decode_streamed<T: DeserializeOwned + Send + 'static>(
    chunks: BoxStream<'static, Result<Bytes>>,
) -> Result<T> {
    let handle = tokio::runtime::Handle::current();
    let abort = Arc::new(AtomicBool::new(false));
    let _guard = AbortOnDrop(abort.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut reader = StreamReader {
            chunks,
            current: Bytes::new(),
            handle,
            error: None,
            abort,
        };
        let decoded = binary::decode_from::<T, _>(&mut reader);
        // A stream error (e.g. a bad signature at the end, a cut connection) wins over the
        // decode error it caused.
        if let Some(e) = reader.error.take() {
            return Err(e);
        }
        let value = decoded?;
        reader.finish()?;
        Ok(value)
    });
    match task.await {
        Ok(r) => r,
        Err(e) => Err(Error::serialization(format!("decoding the payload failed: {e}"))),
    }
}

/// A bincode [`Reader`] over a chunk stream, for a blocking thread.
struct StreamReader {
    chunks: BoxStream<'static, Result<Bytes>>,
    current: Bytes,
    handle: tokio::runtime::Handle,
    error: Option<Error>,
    abort: Arc<AtomicBool>,
}

impl StreamReader {
    /// The next chunk, `None` at the end (or on an error, kept in `self.error`).
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.error.is_some() {
            return None;
        }
        if self.abort.load(Ordering::Acquire) {
            self.error = Some(Error::transport("the call went away while its payload arrived"));
            return None;
        }
        match self.handle.block_on(self.chunks.next()) {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => {
                self.error = Some(e);
                None
            }
            None => None,
        }
    }

    /// Reads to the end of the stream: more bytes are an error, so is the stream's own.
    fn finish(&mut self) -> Result<()> {
        let mut extra = self.current.len() as u64;
        while let Some(chunk) = self.next_chunk() {
            extra += chunk.len() as u64;
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if extra > 0 {
            return Err(Error::serialization(format!(
                "binary payload has {extra} bytes after its value"
            )));
        }
        Ok(())
    }
}

impl Reader for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::result::Result<(), DecodeError> {
        let mut filled = 0;
        while filled < out.len() {
            if self.current.is_empty() {
                match self.next_chunk() {
                    Some(chunk) => self.current = chunk,
                    None => {
                        return Err(DecodeError::UnexpectedEnd {
                            additional: out.len() - filled,
                        })
                    }
                }
            }
            let n = self.current.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&self.current[..n]);
            self.current.advance(n);
            filled += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Blob {
        id: u32,
        data: bytes::Bytes,
    }

    fn chunked(bytes: Vec<u8>, size: usize) -> Body {
        let len = bytes.len() as u64;
        let chunks: Vec<Result<Bytes>> = bytes
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::stream(Some(len), stream::iter(chunks))
    }

    #[tokio::test]
    async fn large_values_stream_both_ways() {
        let blob = Blob {
            id: 9,
            data: Bytes::from(vec![0x5A; 3 * CHUNK_SIZE + 17]),
        };
        let body = Body::encode(Blob {
            id: blob.id,
            data: blob.data.clone(),
        })
        .unwrap();
        assert!(body.as_full().is_none(), "large: streamed");
        let len = body.len().unwrap();
        let mut chunks = body.into_stream();
        let mut wire = Vec::new();
        while let Some(c) = chunks.next().await {
            let c = c.unwrap();
            assert!(c.len() <= CHUNK_SIZE);
            wire.extend_from_slice(&c);
        }
        assert_eq!(wire.len() as u64, len);
        let back: Blob = chunked(wire, 1000).decode().await.unwrap();
        assert_eq!(back, blob);
    }

    #[tokio::test]
    async fn stream_errors_and_trailing_bytes_are_reported() {
        let mut wire = binary::encode(&Blob {
            id: 1,
            data: Bytes::from(vec![1; 300_000]),
        })
        .unwrap();
        let good = wire.clone();
        wire.push(0);
        let err = chunked(wire, 4096).decode::<Blob>().await.unwrap_err();
        assert!(err.message().contains("after its value"), "{err}");
        // The stream's own error at its end (e.g. a signature check) is the call's error.
        let len = good.len() as u64;
        let chunks = stream::iter(vec![
            Ok(Bytes::from(good)),
            Err(Error::new(ErrorCode::Unauthorized, "bad tag")),
        ]);
        let err = Body::stream(Some(len), chunks)
            .decode::<Blob>()
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Unauthorized);
        // A cut stream: the bytes end early.
        let cut = stream::iter(vec![Ok(Bytes::from_static(&[1, 0xfc]))]);
        let err = Body::stream(None, cut).decode::<Blob>().await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Serialization);
    }

    #[tokio::test]
    async fn collect_enforces_its_limit() {
        let err = chunked(vec![0; 100], 10).collect(99).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
        let ok = chunked(vec![3; 100], 7).collect(100).await.unwrap();
        assert_eq!(ok.len(), 100);
        let err = Body::stream(Some(1000), stream::empty())
            .collect(10)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    }
}
