//! The binary codec over HTTP (Rust ⇄ Rust; DESIGN.md §5): the envelope in one readable,
//! signed header, the payload in the body, streamed both ways.
//!
//! A binary request is `POST {invoke_path}` with `content-type: application/x-flame-bincode`
//! and the envelope in [`CALL`] — space-separated `key=value` pairs, values percent-encoded
//! where they hold a space, `%`, `=` or anything but visible ASCII:
//!
//! ```text
//! x-flame-call: s=math m=add q=9f2c4e1a7b3d5f60.42 i=1764230400000 e=30000 n=2
//! ```
//!
//! | key | field | |
//! |---|---|---|
//! | `s`, `m` | service and method ids | |
//! | `q` | the sender's sequence, `<sender: 16 hex>.<n>`; also the invocation id | replay window |
//! | `i` | issued at, ms since the epoch | |
//! | `e` | expiry, ms after `i` | |
//! | `t` | the handler's timeout, ms (absent: same as `e`) | |
//! | `a` | attempt (absent: 1) | |
//! | `k` | idempotency key | optional |
//! | `f` | flags: `c` cast, `s` streamed result, `t` signature trailer | optional |
//! | `r` | trace context, a JSON object of strings | optional |
//! | `n` | the payload's length in bytes | |
//!
//! The body is the payload's bincode, then — for a signed payload over [`INLINE_MAX`] bytes —
//! a 32-byte trailer.
//!
//! **Signature.** `M = HMAC-SHA256(secret, "fb1\n" ‖ x-flame-call ‖ "\n" ‖ payload)`. A payload of
//! at most [`INLINE_MAX`] bytes is signed inline: `x-flame-signature: hex(M)`, checked once the
//! (small) body is read. A larger one sets flag `t` and is signed twice: `x-flame-signature:
//! hex(HMAC(secret, "fb1\n" ‖ x-flame-call ‖ "\n"))` — checked before a byte of the body is read,
//! so the runner knows who sends what (method, sizes, `seq`) before it reads the payload — and
//! `M` as the body's last 32 bytes, checked as the payload ends, before the handler sees it.
//! Either way the signature covers every envelope field and every payload byte, and the
//! envelope stays readable in a capture. (One short header rather than one header per field:
//! hyper parses and hashes every header, and the signed text is one or two SHA-256 blocks.)
//!
//! **Reply.** 200 with `x-flame-result`: `ok` (the result's bincode, `content-length` known up
//! front, streamed when large), `error` (the JSON `WireError`), or `stream` (a streamed
//! result's frames, `flame_core::stream::frame`); other statuses are plain text as in wire v1.

use bytes::{Bytes, BytesMut};
use flame_core::codec::InvocationRequest;
use flame_core::stream::Body;
use flame_core::{Error, ErrorCode, Result};
use futures::stream::{BoxStream, StreamExt};
use futures::Stream;
use hmac::Mac;
use http::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Frame, Incoming, SizeHint};
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::sign::{HmacSha256, Signer};

/// `x-flame-call`: the envelope of a binary request (see the [module docs](self)).
pub const CALL: HeaderName = HeaderName::from_static("x-flame-call");
/// `x-flame-signature`.
pub const SIGNATURE: HeaderName = HeaderName::from_static("x-flame-signature");
/// `x-flame-result` of a binary reply: `ok`, `error` or `stream`.
pub const RESULT: HeaderName = HeaderName::from_static("x-flame-result");
/// `x-flame-codecs` of a runner's replies: the codecs it takes besides JSON (`bincode`).
pub const CODECS: HeaderName = HeaderName::from_static("x-flame-codecs");
/// `x-flame-max-body` of a runner's replies: its default request limit in bytes.
pub const MAX_BODY: HeaderName = HeaderName::from_static("x-flame-max-body");

/// What the signed text starts with (the version of this scheme).
pub const CANONICAL_PREFIX: &[u8] = b"fb1\n";

/// Signed payloads up to this size carry their signature inline; larger ones in a trailer.
pub const INLINE_MAX: u64 = 64 * 1024;

/// The length of the signature trailer.
pub const TAG_LEN: u64 = 32;

/// Feeds the signed text of the envelope in `headers` to `mac`.
pub fn update_canonical(mac: &mut HmacSha256, headers: &HeaderMap) {
    mac.update(CANONICAL_PREFIX);
    if let Some(v) = headers.get(CALL) {
        mac.update(v.as_bytes());
    }
    mac.update(b"\n");
}

/// Appends `text` percent-encoded: everything but visible ASCII other than `%` and `=`.
fn escape(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(text: &str) -> std::result::Result<String, String> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_owned())
}

/// The `x-flame-call` value of `envelope` (its `seq` is the invocation id), with `flags` and
/// the payload's length.
pub fn call_header(envelope: &InvocationRequest, flags: &str, payload_len: u64) -> Result<HeaderValue> {
    let seq = envelope
        .seq
        .as_deref()
        .ok_or_else(|| Error::config("a binary request needs a seq"))?;
    let mut v = String::with_capacity(96);
    v.push_str("s=");
    escape(&mut v, &envelope.service_id);
    v.push_str(" m=");
    escape(&mut v, &envelope.method_id);
    v.push_str(" q=");
    escape(&mut v, seq);
    let ttl = envelope.exp.saturating_sub(envelope.iat);
    let _ = write!(v, " i={} e={ttl}", envelope.iat);
    if let Some(t) = envelope.timeout_ms.filter(|t| *t != ttl) {
        let _ = write!(v, " t={t}");
    }
    if let Some(a) = envelope.attempt.filter(|a| *a != 1) {
        let _ = write!(v, " a={a}");
    }
    if let Some(key) = &envelope.idempotency_key {
        v.push_str(" k=");
        escape(&mut v, key);
    }
    if !flags.is_empty() {
        v.push_str(" f=");
        escape(&mut v, flags);
    }
    if let Some(trace) = &envelope.trace {
        v.push_str(" r=");
        escape(&mut v, &serde_json::to_string(trace)?);
    }
    let _ = write!(v, " n={payload_len}");
    HeaderValue::from_str(&v).map_err(|e| Error::new(ErrorCode::BadRequest, format!("bad x-flame-call: {e}")))
}

/// The headers of a binary request: its content type and envelope ([`CALL`]; `envelope.seq`
/// must be set), with `flags` and the payload's length, plus `traceparent` when the trace has
/// one. Unsigned: see [`sign_inline`] and [`sign_envelope`].
pub fn headers(envelope: &InvocationRequest, flags: &str, payload_len: u64) -> Result<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(flame_core::codec::binary::CONTENT_TYPE),
    );
    headers.insert(CALL, call_header(envelope, flags, payload_len)?);
    if let Some(tp) = envelope.trace.as_ref().and_then(|t| t.get("traceparent")) {
        if let Ok(v) = HeaderValue::from_str(tp) {
            headers.insert(HeaderName::from_static("traceparent"), v);
        }
    }
    Ok(headers)
}

/// Signs a small payload inline: `x-flame-signature: hex(HMAC(secret, canonical ‖ payload))`.
pub fn sign_inline(headers: &mut HeaderMap, signer: &Signer, payload: &[u8]) -> Result<()> {
    let mut mac = signer.mac();
    update_canonical(&mut mac, headers);
    mac.update(payload);
    insert_signature(headers, mac)
}

/// Signs the envelope of a payload whose signature travels in its trailer (flag `t`):
/// `x-flame-signature: hex(HMAC(secret, canonical))`; returns the MAC fed the canonical text,
/// for [`signed`] to finish over the payload.
pub fn sign_envelope(headers: &mut HeaderMap, signer: &Signer) -> Result<HmacSha256> {
    let mut mac = signer.mac();
    update_canonical(&mut mac, headers);
    insert_signature(headers, mac.clone())?;
    Ok(mac)
}

fn insert_signature(headers: &mut HeaderMap, mac: HmacSha256) -> Result<()> {
    let sig = crate::sign::finish_hex(mac);
    let v = HeaderValue::from_str(&sig).map_err(|e| Error::config(format!("bad signature header: {e}")))?;
    headers.insert(SIGNATURE, v);
    Ok(())
}

/// The envelope of a binary request, read from its headers.
#[derive(Debug)]
pub struct Envelope {
    /// The request (its `args` empty: the payload is the body).
    pub request: InvocationRequest,
    /// The payload's length.
    pub payload_len: u64,
    /// Whether a signature trailer follows the payload.
    pub trailer: bool,
}

/// Reads the envelope of a binary request from its [`CALL`] header; the error is the 400 text.
///
/// ```
/// use flame_core::codec::InvocationRequest;
/// let mut req = InvocationRequest {
///     invocation_id: String::new(), service_id: "math".into(), method_id: "a dd%".into(),
///     args: String::new(), iat: 1_000, exp: 31_000, timeout_ms: Some(30_000),
///     idempotency_key: Some("k=1".into()), trace: None, attempt: Some(2), cast: None,
///     stream: None, seq: Some("00000000000000ff.7".into()),
/// };
/// let headers = flame_http::wire::headers(&req, "t", 2).unwrap();
/// assert_eq!(
///     headers["x-flame-call"],
///     "s=math m=a%20dd%25 q=00000000000000ff.7 i=1000 e=30000 a=2 k=k%3D1 f=t n=2"
/// );
/// let env = flame_http::wire::read_envelope(&headers).unwrap();
/// req.invocation_id = "00000000000000ff.7".into();
/// assert_eq!(env.request, req);
/// assert!(env.trailer && env.payload_len == 2);
/// ```
pub fn read_envelope(headers: &HeaderMap) -> std::result::Result<Envelope, String> {
    let text = headers
        .get(CALL)
        .ok_or("missing x-flame-call")?
        .to_str()
        .map_err(|_| "x-flame-call is not visible ASCII")?;
    let (mut service, mut method, mut seq, mut iat, mut ttl) = (None, None, None, None, None);
    let (mut timeout, mut attempt, mut key, mut flags, mut trace, mut len) =
        (None, None, None, "", None, None);
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("x-flame-call: {k} is not a number"))
    };
    for pair in text.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or("x-flame-call: a field without `=`")?;
        match k {
            "s" => service = Some(unescape(v)?),
            "m" => method = Some(unescape(v)?),
            "q" => seq = Some(unescape(v)?),
            "i" => iat = Some(number(k, v)?),
            "e" => ttl = Some(number(k, v)?),
            "t" => timeout = Some(number(k, v)?),
            "a" => attempt = Some(u32::try_from(number(k, v)?).unwrap_or(u32::MAX)),
            "k" => key = Some(unescape(v)?),
            "f" => flags = v,
            "r" => {
                trace = Some(
                    serde_json::from_str(&unescape(v)?)
                        .map_err(|_| "x-flame-call: r is not a JSON object of strings")?,
                )
            }
            "n" => len = Some(number(k, v)?),
            _ => {} // fields of later versions: signed, ignored
        }
    }
    let missing = |k: &str| format!("x-flame-call: missing {k}");
    let seq = seq.ok_or_else(|| missing("q"))?;
    let iat = iat.ok_or_else(|| missing("i"))?;
    let ttl = ttl.ok_or_else(|| missing("e"))?;
    let request = InvocationRequest {
        invocation_id: seq.clone(),
        service_id: service.ok_or_else(|| missing("s"))?,
        method_id: method.ok_or_else(|| missing("m"))?,
        args: String::new(),
        iat,
        exp: iat.saturating_add(ttl),
        timeout_ms: Some(timeout.unwrap_or(ttl)),
        idempotency_key: key,
        trace,
        attempt: Some(attempt.unwrap_or(1)),
        cast: flags.contains('c').then_some(true),
        stream: flags.contains('s').then_some(true),
        seq: Some(seq),
    };
    Ok(Envelope {
        request,
        payload_len: len.ok_or_else(|| missing("n"))?,
        trailer: flags.contains('t'),
    })
}

/// The body of a request or reply that flame-http sends: in memory or a stream of chunks (with
/// its length when known, so hyper sets `content-length`). A held value (an in-flight permit)
/// lives as long as the body.
pub struct WireBody {
    repr: Repr,
    _hold: Option<Box<dyn Send + Sync>>,
}

enum Repr {
    Full(Option<Bytes>),
    Stream {
        len: Option<u64>,
        chunks: BoxStream<'static, Result<Bytes>>,
    },
}

impl WireBody {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> WireBody {
        WireBody {
            repr: Repr::Full(Some(bytes.into())),
            _hold: None,
        }
    }

    /// An empty body.
    pub fn empty() -> WireBody {
        WireBody {
            repr: Repr::Full(None),
            _hold: None,
        }
    }

    /// A body of `chunks`, `len` bytes when known.
    pub fn stream(len: Option<u64>, chunks: BoxStream<'static, Result<Bytes>>) -> WireBody {
        WireBody {
            repr: Repr::Stream { len, chunks },
            _hold: None,
        }
    }

    /// A core [`Body`] as it is.
    pub fn from_body(body: Body) -> WireBody {
        match body.as_full() {
            Some(b) => WireBody::full(b.clone()),
            None => {
                let len = body.len();
                WireBody::stream(len, body.into_stream())
            }
        }
    }

    /// Whether the body is a stream (not in memory).
    pub fn is_streamed(&self) -> bool {
        matches!(self.repr, Repr::Stream { .. })
    }

    /// Keeps `value` alive as long as the body.
    pub fn holding(mut self, value: impl Send + Sync + 'static) -> WireBody {
        self._hold = Some(Box::new(value));
        self
    }
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.repr {
            Repr::Full(b) => f
                .debug_tuple("WireBody::Full")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
            Repr::Stream { len, .. } => f.debug_struct("WireBody::Stream").field("len", len).finish(),
        }
    }
}

impl hyper::body::Body for WireBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>>>> {
        match &mut self.repr {
            Repr::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Repr::Stream { chunks, .. } => chunks
                .as_mut()
                .poll_next(cx)
                .map(|c| c.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.repr, Repr::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.repr {
            Repr::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Repr::Stream { len: Some(n), .. } => SizeHint::with_exact(*n),
            Repr::Stream { len: None, .. } => SizeHint::default(),
        }
    }
}

/// The data chunks of an incoming body. More than `limit` bytes is `PAYLOAD_TOO_LARGE`; a
/// failed read is a retryable `TRANSPORT` error.
pub fn chunks(incoming: Incoming, limit: u64, what: &'static str) -> BoxStream<'static, Result<Bytes>> {
    use http_body_util::BodyExt;
    futures::stream::unfold(Some((incoming, 0u64)), move |state| async move {
        let (mut incoming, mut seen) = state?;
        loop {
            match incoming.frame().await {
                None => return None,
                Some(Err(e)) => {
                    let err =
                        Error::transport(format!("reading the {what} failed: {e}")).with_retryable(true);
                    return Some((Err(err), None));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    seen += data.len() as u64;
                    if seen > limit {
                        let err = Error::new(
                            ErrorCode::PayloadTooLarge,
                            format!("the {what} is over the limit of {limit} bytes"),
                        );
                        return Some((Err(err), None));
                    }
                    return Some((Ok(data), Some((incoming, seen))));
                }
            }
        }
    })
    .boxed()
}

/// Appends the signature trailer to a payload: `HMAC(secret, canonical ‖ payload)`, `mac`
/// having been fed the canonical text.
pub fn signed(
    payload: BoxStream<'static, Result<Bytes>>,
    mac: HmacSha256,
) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(Some((payload, mac)), |state| async move {
        let (mut payload, mut mac) = state?;
        match payload.next().await {
            Some(Ok(chunk)) => {
                mac.update(&chunk);
                Some((Ok(chunk), Some((payload, mac))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => Some((Ok(Bytes::copy_from_slice(&mac.finalize().into_bytes())), None)),
        }
    })
    .boxed()
}

/// Checks a payload against its signature trailer as it arrives: yields exactly `len`
/// payload bytes, then ends — or ends with `UNAUTHORIZED` if the trailer does not match
/// (`mac` fed the canonical text; `None`: a runner without a secret, which drops the trailer
/// unchecked), `PAYLOAD_TOO_LARGE` if more bytes come, a retryable `TRANSPORT` error if fewer
/// do.
pub fn verified(
    chunks: BoxStream<'static, Result<Bytes>>,
    len: u64,
    mac: Option<HmacSha256>,
) -> BoxStream<'static, Result<Bytes>> {
    struct St {
        chunks: BoxStream<'static, Result<Bytes>>,
        left: u64,
        mac: Option<HmacSha256>,
        tag: BytesMut,
    }
    let st = St {
        chunks,
        left: len,
        mac,
        tag: BytesMut::with_capacity(TAG_LEN as usize),
    };
    futures::stream::unfold(Some(st), |state| async move {
        let mut st = state?;
        loop {
            match st.chunks.next().await {
                Some(Err(e)) => return Some((Err(e), None)),
                Some(Ok(mut chunk)) => {
                    let take = (st.left.min(chunk.len() as u64)) as usize;
                    let payload = chunk.split_to(take);
                    st.left -= take as u64;
                    if st.tag.len() as u64 + chunk.len() as u64 > TAG_LEN {
                        let err = Error::new(
                            ErrorCode::PayloadTooLarge,
                            "the body is longer than its declared payload",
                        );
                        return Some((Err(err), None));
                    }
                    st.tag.extend_from_slice(&chunk);
                    if !payload.is_empty() {
                        if let Some(mac) = st.mac.as_mut() {
                            mac.update(&payload);
                        }
                        return Some((Ok(payload), Some(st)));
                    }
                }
                None => {
                    if st.left > 0 || st.tag.len() as u64 != TAG_LEN {
                        let err = Error::transport("the body ended before its payload and signature")
                            .with_retryable(true);
                        return Some((Err(err), None));
                    }
                    let tag = std::mem::take(&mut st.tag);
                    return match st.mac.map(|mac| mac.verify_slice(&tag)) {
                        None | Some(Ok(())) => None,
                        Some(Err(_)) => Some((
                            Err(Error::new(ErrorCode::Unauthorized, "Invalid signature")),
                            None,
                        )),
                    };
                }
            }
        }
    })
    .boxed()
}

/// Checks an unsigned payload's length as it arrives: exactly `len` bytes.
pub fn exact(chunks: BoxStream<'static, Result<Bytes>>, len: u64) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::unfold(Some((chunks, len)), |state| async move {
        let (mut chunks, left) = state?;
        match chunks.next().await {
            Some(Ok(chunk)) if chunk.len() as u64 > left => Some((
                Err(Error::new(
                    ErrorCode::PayloadTooLarge,
                    "the body is longer than its declared payload",
                )),
                None,
            )),
            Some(Ok(chunk)) => {
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), Some((chunks, left))))
            }
            Some(Err(e)) => Some((Err(e), None)),
            None if left > 0 => Some((
                Err(Error::transport("the body ended before its payload").with_retryable(true)),
                None,
            )),
            None => None,
        }
    })
    .boxed()
}

/// Reads a small body whole (at most `limit` bytes).
pub async fn collect(mut chunks: impl Stream<Item = Result<Bytes>> + Unpin, limit: u64) -> Result<Bytes> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if (first.as_ref().map_or(0, Bytes::len) + buf.len() + chunk.len()) as u64 > limit {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is over {limit} bytes"),
            ));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
