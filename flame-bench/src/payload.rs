//! Large payloads and streamed results: through a real runner ([`crate::methods`]) and, for the
//! floor, as raw hyper requests of the same bytes on the same loopback (the echo server's
//! `/upload` and `/download`).

use crate::methods::{now_ns, DOWNLOAD, TICKS, UPLOAD};
use bytes::Bytes;
use flame_core::{Args, Endpoint, Flame, Invocation, Method, Transport};
use flame_http::HttpTransport;
use futures::StreamExt;
use http::{Method as HttpMethod, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// A plain pooled hyper client, configured like `HttpTransport`'s.
#[derive(Clone)]
pub struct RawClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for RawClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        RawClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl RawClient {
    /// `POST /upload` of `data` (the server reads it whole and answers its length); the time
    /// until the answer.
    pub async fn upload(&self, addr: SocketAddr, data: Bytes) -> Result<Duration, String> {
        let len = data.len();
        let request = Request::builder()
            .method(HttpMethod::POST)
            .uri(format!("http://{addr}/upload"))
            .body(Full::new(data))
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let took = t0.elapsed();
        if body != len.to_string().as_bytes() {
            return Err(format!(
                "raw upload: the server read {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(took)
    }

    /// `GET /download?n=N`, read whole into memory; the time until the last byte.
    pub async fn download(&self, addr: SocketAddr, n: usize) -> Result<Duration, String> {
        let request = Request::builder()
            .uri(format!("http://{addr}/download?n={n}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let took = t0.elapsed();
        if body.len() != n {
            return Err(format!("raw download: {} bytes, not {n}", body.len()));
        }
        Ok(took)
    }
}

fn invocation<Req: serde::Serialize + Send + 'static, Resp>(
    method: Method<Req, Resp>,
    req: Req,
) -> Invocation {
    Invocation {
        service_id: method.service_id().into(),
        method_id: method.method_id().into(),
        args: Args::typed(req),
        deadline: Some(Instant::now() + Duration::from_secs(600)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: method.limits(),
    }
}

/// `bench/upload` of `data` through `transport` to the runner at `endpoint`; the time until
/// its answer (the length the handler got) is decoded.
pub async fn flame_upload(
    transport: &HttpTransport,
    endpoint: &Endpoint,
    data: Bytes,
) -> Result<Duration, String> {
    let len = data.len() as u64;
    let t0 = Instant::now();
    let reply = transport
        .invoke(endpoint, &invocation(UPLOAD, data))
        .await
        .map_err(|e| e.to_string())?;
    let got: u64 = reply.decode().await.map_err(|e| e.to_string())?;
    let took = t0.elapsed();
    if got != len {
        return Err(format!("flame upload: the handler got {got} bytes, not {len}"));
    }
    Ok(took)
}

/// `bench/download` of `n` bytes; the time until they are decoded into a `Bytes`.
pub async fn flame_download(
    transport: &HttpTransport,
    endpoint: &Endpoint,
    n: u64,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let reply = transport
        .invoke(endpoint, &invocation(DOWNLOAD, n))
        .await
        .map_err(|e| e.to_string())?;
    let got: Bytes = reply.decode().await.map_err(|e| e.to_string())?;
    let took = t0.elapsed();
    if got.len() as u64 != n {
        return Err(format!("flame download: {} bytes, not {n}", got.len()));
    }
    Ok(took)
}

/// One streamed call of `n` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamTiming {
    /// From the handler yielding the first item to the caller holding it (wall clock of one
    /// machine).
    pub first_item: Duration,
    /// From the call to the first item at the caller.
    pub first_after_call: Duration,
    /// From the call to the last item at the caller.
    pub all_items: Duration,
}

/// Reads one `bench/ticks(n)` stream through `flame` (a parent whose pool reaches our runner).
pub async fn stream_once(flame: &Flame, n: u32) -> Result<StreamTiming, String> {
    let t0 = Instant::now();
    let mut items = flame.call_stream(TICKS, n);
    let mut timing = StreamTiming::default();
    let mut count = 0u32;
    while let Some(item) = items.next().await {
        let (i, yielded_ns) = item.map_err(|e| e.to_string())?;
        if i != count {
            return Err(format!("item {i} arrived as number {count}"));
        }
        if count == 0 {
            timing.first_item = Duration::from_nanos(now_ns().saturating_sub(yielded_ns));
            timing.first_after_call = t0.elapsed();
        }
        count += 1;
    }
    timing.all_items = t0.elapsed();
    if count != n {
        return Err(format!("{count} items, not {n}"));
    }
    Ok(timing)
}
