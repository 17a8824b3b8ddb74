//! The framing of a streamed result (binary codec): `[kind: u8][length: u32 LE][bytes]`, where
//! kind 1 is an item (its bincode encoding), 2 the end (length 0), 3 an error (the JSON
//! `WireError` of the reference's `ok:false` reply). A stream that stops without an end or
//! error frame was cut (the runner died, the connection broke).

use crate::codec::{binary, InvocationResponse, WireError};
use crate::error::{Error, ErrorCode, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use futures::Stream;
use serde::Serialize;

/// The content type of a streamed result.
pub const CONTENT_TYPE: &str = "application/x-flame-frames";

const ITEM: u8 = 1;
const END: u8 = 2;
const ERROR: u8 = 3;
const HEADER: usize = 5;

/// One frame of a streamed result.
#[derive(Debug)]
pub enum Frame {
    /// An item's bincode encoding.
    Item(Bytes),
    /// The stream ended cleanly.
    End,
    /// The stream ended with this error.
    Error(Error),
}

fn header(buf: &mut BytesMut, kind: u8, len: u32) {
    buf.put_u8(kind);
    buf.put_u32_le(len);
}

/// The frame of one item, encoded in place. An item over `max` bytes is `PAYLOAD_TOO_LARGE`.
pub fn item<T: Serialize>(value: &T, max: Option<u64>) -> Result<Bytes> {
    let len = binary::encoded_len(value)?;
    if let Some(max) = max.filter(|m| len > *m) {
        return Err(too_large(len, max));
    }
    let len32 = u32::try_from(len).map_err(|_| too_large(len, u64::from(u32::MAX)))?;
    let mut out = Vec::with_capacity(HEADER + len as usize);
    out.push(ITEM);
    out.extend_from_slice(&len32.to_le_bytes());
    binary::encode_into(value, binary::VecWriter(&mut out))?;
    Ok(Bytes::from(out))
}

/// The end frame.
pub fn end() -> Bytes {
    Bytes::from_static(&[END, 0, 0, 0, 0])
}

/// The frame of an error (details only when `expose`, a typed application error always).
pub fn error(err: &Error, expose: bool) -> Bytes {
    let wire = InvocationResponse::failure(err, expose).error;
    let json = wire
        .and_then(|w| serde_json::to_vec(&w).ok())
        .unwrap_or_else(|| br#"{"code":"serialization_error","message":"cannot encode the error"}"#.to_vec());
    let mut buf = BytesMut::with_capacity(HEADER + json.len());
    header(&mut buf, ERROR, json.len() as u32);
    buf.extend_from_slice(&json);
    buf.freeze()
}

fn too_large(len: u64, max: u64) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!("a streamed item of {len} bytes is over the limit of {max} bytes"),
    )
}

/// The error of a stream that stopped without its end.
pub fn cut() -> Error {
    Error::transport("the runner's stream stopped before its end (the runner may have died)")
        .with_retryable(true)
}

/// Parses frames out of a body's chunks. An item over `max_item` bytes is
/// `PAYLOAD_TOO_LARGE`; chunks that stop mid-stream give [`cut`]'s error. Nothing is yielded
/// after an end or error frame.
pub fn decode(
    chunks: BoxStream<'static, Result<Bytes>>,
    max_item: u64,
) -> impl Stream<Item = Result<Frame>> + Send + 'static {
    struct State {
        chunks: BoxStream<'static, Result<Bytes>>,
        buf: BytesMut,
        done: bool,
    }
    let state = State {
        chunks,
        buf: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.buf.len() >= HEADER {
                let kind = st.buf[0];
                let len = u32::from_le_bytes([st.buf[1], st.buf[2], st.buf[3], st.buf[4]]) as u64;
                if kind == ITEM && len > max_item {
                    st.done = true;
                    return Some((Err(too_large(len, max_item)), st));
                }
                if kind == ERROR && len > 1 << 20 {
                    st.done = true;
                    return Some((Err(Error::transport("a stream's error frame is over 1 MiB")), st));
                }
                let need = HEADER + len as usize;
                if st.buf.len() >= need {
                    st.buf.advance(HEADER);
                    let body = st.buf.split_to(len as usize).freeze();
                    let frame = match kind {
                        ITEM => Frame::Item(body),
                        END => {
                            st.done = true;
                            Frame::End
                        }
                        ERROR => {
                            st.done = true;
                            match serde_json::from_slice::<WireError>(&body) {
                                Ok(w) => Frame::Error(w.into_error()),
                                Err(e) => Frame::Error(Error::transport(format!(
                                    "a stream's error frame is malformed: {e}"
                                ))),
                            }
                        }
                        other => {
                            st.done = true;
                            return Some((
                                Err(Error::transport(format!("unknown stream frame kind {other}"))),
                                st,
                            ));
                        }
                    };
                    return Some((Ok(frame), st));
                }
                st.buf.reserve(need - st.buf.len());
            }
            match st.chunks.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    return Some((Err(cut()), st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    #[tokio::test]
    async fn frames_round_trip_across_any_chunking() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&item(&7u32, None).unwrap());
        wire.extend_from_slice(&item(&String::from("two"), None).unwrap());
        wire.extend_from_slice(&error(&Error::handler("boom"), false));
        for size in [1, 3, 5, 64] {
            let chunks: Vec<Result<Bytes>> =
                wire.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let frames: Vec<_> = decode(stream::iter(chunks).boxed(), 1024).collect().await;
            assert_eq!(frames.len(), 3);
            match &frames[0] {
                Ok(Frame::Item(b)) => assert_eq!(binary::decode::<u32>(b).unwrap(), 7),
                other => panic!("{other:?}"),
            }
            match &frames[2] {
                Ok(Frame::Error(e)) => assert_eq!(e.code(), ErrorCode::Handler),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn cut_streams_and_big_items_are_typed_errors() {
        let one = item(&1u8, None).unwrap();
        let frames: Vec<_> = decode(stream::iter(vec![Ok(one.clone())]).boxed(), 1024)
            .collect()
            .await;
        assert!(matches!(frames[0], Ok(Frame::Item(_))));
        let err = frames[1].as_ref().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Transport);
        assert!(err.is_retryable());
        let big = item(&vec![0u8; 100], None).unwrap();
        let frames: Vec<_> = decode(stream::iter(vec![Ok(big)]).boxed(), 10).collect().await;
        assert_eq!(frames[0].as_ref().unwrap_err().code(), ErrorCode::PayloadTooLarge);
        assert_eq!(
            item(&vec![0u8; 100], Some(10)).unwrap_err().code(),
            ErrorCode::PayloadTooLarge
        );
        let frames: Vec<_> = decode(stream::iter(vec![Ok(end())]).boxed(), 10).collect().await;
        assert!(matches!(frames.as_slice(), [Ok(Frame::End)]));
    }
}
