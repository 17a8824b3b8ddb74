//! Hand-made requests for hostile-input tests: signed envelopes and raw HTTP/1.1 over TCP.

use flame_core::codec::InvocationRequest;
use flame_core::transport::now_millis;
use flame_core::Secret;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An envelope for `service/method` with superjson `args`, issued now, expiring in 30 s.
pub fn envelope(service: &str, method: &str, args: &str) -> InvocationRequest {
    let iat = now_millis();
    InvocationRequest {
        invocation_id: uuid::Uuid::new_v4().to_string(),
        service_id: service.into(),
        method_id: method.into(),
        args: args.into(),
        iat,
        exp: iat + 30_000,
        timeout_ms: Some(30_000),
        idempotency_key: None,
        trace: None,
        attempt: None,
        cast: None,
        stream: None,
        seq: None,
    }
}

/// The JSON body of `req`.
pub fn body(req: &InvocationRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap_or_default()
}

/// `hex(HMAC-SHA256(secret, body))`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    flame_http::sign::sign(secret, body)
}

/// A `POST /invoke` request with `Content-Length`, `Connection: close`, the signature header
/// when given, and `extra` header lines (each without CRLF).
pub fn post_invoke(addr: &str, body: &[u8], signature: Option<&str>, extra: &[String]) -> Vec<u8> {
    let mut head = format!(
        "POST /invoke HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(sig) = signature {
        head.push_str(&format!("x-flame-signature: {sig}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// What came back on a raw connection.
#[derive(Debug, Clone, Default)]
pub struct RawReply {
    /// The status code of the first response line, if one arrived.
    pub status: Option<u16>,
    /// Everything read (head and body), lossy UTF-8.
    pub text: String,
}

impl RawReply {
    /// The body after the blank line, if any.
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

fn parse(bytes: &[u8]) -> RawReply {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    RawReply { status, text }
}

/// Writes `request` to `addr` and reads until the peer closes or `within` passes. Write
/// errors (the peer closed early) are not errors: the reply read so far is returned.
pub async fn exchange(addr: &str, request: &[u8], within: Duration) -> std::io::Result<RawReply> {
    let mut stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let _ = stream.write_all(request).await;
    read_reply(&mut stream, within).await
}

/// Reads what `stream` sends until it closes or `within` passes.
pub async fn read_reply(stream: &mut TcpStream, within: Duration) -> std::io::Result<RawReply> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    Ok(parse(&buf))
}
