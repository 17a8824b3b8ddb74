//! The parent side: [`HttpTransport`], core's [`Transport`] over a pooled keep-alive hyper
//! client.

use crate::sign::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use async_trait::async_trait;
use bytes::Bytes;
use flame_core::codec::InvocationResponse;
use flame_core::transport::{error_for_status, now_millis};
use flame_core::{Endpoint, Error, ErrorCode, Invocation, Result, RunnerStatus, Transport};
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Settings of [`HttpTransport`].
///
/// ```
/// use flame_http::ClientOptions;
/// use std::time::Duration;
/// let opts = ClientOptions::default().connect_timeout(Duration::from_secs(2));
/// assert_eq!(opts.invoke_path, "/invoke");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The runner's invoke path. Default `/invoke`.
    pub invoke_path: String,
    /// Timeout of establishing a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Timeout of a `ping`. Default 5 s.
    pub ping_timeout: Duration,
    /// Idle pooled connections close after this. Default 20 s (below the runner's 30 s header
    /// read timeout, which also ends idle connections).
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per runner. Default 32.
    pub pool_max_idle_per_host: usize,
    /// Largest response body accepted. Default 64 MiB.
    pub max_response_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            invoke_path: "/invoke".into(),
            connect_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(20),
            pool_max_idle_per_host: 32,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::invoke_path`].
    pub fn invoke_path(mut self, path: impl Into<String>) -> Self {
        self.invoke_path = path.into();
        self
    }
    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::ping_timeout`].
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::pool_idle_timeout`].
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }
    /// Sets [`ClientOptions::max_response_bytes`].
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }
}

/// Core's [`Transport`] over HTTP/1.1: pooled keep-alive connections, requests signed with the
/// endpoint's secret, a fresh `invocationId` per attempt. It sends exactly one attempt: core
/// owns the call's deadline (it drops this future when the deadline passes, which cancels the
/// request) and its retries.
///
/// ```no_run
/// # async fn run() -> flame_core::Result<()> {
/// use flame_core::{Endpoint, Secret, Transport};
/// let transport = flame_http::HttpTransport::new();
/// let runner = Endpoint::new("http://127.0.0.1:8080", "r1").with_secret(Some(Secret::new("s3cret")));
/// let status = transport.ping(&runner).await?;
/// assert!(status.ok);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    options: ClientOptions,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("options", &self.options)
            .finish()
    }
}

impl Default for HttpTransport {
    fn default() -> Self {
        HttpTransport::new()
    }
}

impl HttpTransport {
    /// A transport with [`ClientOptions::default`].
    pub fn new() -> Self {
        HttpTransport::with_options(ClientOptions::default())
    }

    /// A transport with `options`.
    pub fn with_options(options: ClientOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(options.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .build(connector);
        HttpTransport { client, options }
    }

    /// The options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    async fn exchange(&self, request: Request<Full<Bytes>>, url: &str) -> Result<(StatusCode, Bytes)> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| client_error(e, url))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), self.options.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    Error::transport(format!(
                        "runner {url} sent a response over {} bytes",
                        self.options.max_response_bytes
                    ))
                    .with_retryable(false)
                } else {
                    Error::transport(format!("reading the reply of {url} failed: {e}"))
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

fn uri(endpoint: &Endpoint, path: &str) -> Result<Uri> {
    let text = format!("{}{}", endpoint.url, path);
    text.parse::<Uri>()
        .map_err(|e| Error::config(format!("runner URL {text:?} is invalid: {e}")))
}

/// Maps a hyper client error: failing to connect proves the request was never delivered.
fn client_error(err: hyper_util::client::legacy::Error, url: &str) -> Error {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if err.is_connect() {
        Error::not_delivered(format!("cannot connect to runner {url}: {text}")).with_source(err)
    } else {
        Error::transport(format!("request to runner {url} failed: {text}")).with_source(err)
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<String> {
        if invocation.remaining().is_some_and(|left| left.is_zero()) {
            return Err(Error::new(
                ErrorCode::Timeout,
                "call deadline passed before it was sent",
            ));
        }
        let envelope = invocation.to_request();
        let body = serde_json::to_vec(&envelope)?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri(endpoint, &self.options.invoke_path)?)
            .header(CONTENT_TYPE, "application/json");
        if let Some(secret) = &endpoint.secret {
            builder = builder.header(SIGNATURE_HEADER, sign::sign(secret, &body));
        }
        if let Some(tp) = invocation.trace.get("traceparent") {
            builder = builder.header("traceparent", tp.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let (status, body) = self.exchange(request, &endpoint.url).await?;
        if status != StatusCode::OK {
            return Err(error_for_status(status.as_u16(), &String::from_utf8_lossy(&body)));
        }
        let response: InvocationResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::transport(format!("runner {} sent a malformed reply: {e}", endpoint.url)))?;
        response.into_result()
    }

    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(uri(endpoint, "/health")?);
        if let Some(secret) = &endpoint.secret {
            let ts = now_millis();
            builder = builder.header(TIMESTAMP_HEADER, ts.to_string()).header(
                SIGNATURE_HEADER,
                sign::sign(secret, sign::health_message(ts).as_bytes()),
            );
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::config(format!("cannot build the request: {e}")))?;
        let (status, body) = match tokio::time::timeout(
            self.options.ping_timeout,
            self.exchange(request, &endpoint.url),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "runner {} did not answer ping within {} ms",
                        endpoint.url,
                        self.options.ping_timeout.as_millis()
                    ),
                ))
            }
        };
        if status != StatusCode::OK {
            return Err(error_for_status(status.as_u16(), &String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::transport(format!(
                "runner {} sent a malformed health reply: {e}",
                endpoint.url
            ))
        })
    }
}
