//! How a parent reaches a runner: the [`Transport`] trait, the [`Invocation`] it carries (with
//! its [`Args`], encoded in the codec the runner speaks) and the [`Reply`] it returns (an
//! in-memory transport for tests is in `testkit`).

mod args;

pub use args::{Args, Reply};

use crate::codec::InvocationRequest;
use crate::config::Secret;
use crate::error::{Error, ErrorCode, Result};
use crate::method::PayloadLimits;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Where a runner listens and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    /// The runner's id (for logs and stats).
    pub runner_id: String,
    /// The secret requests to this runner are signed with.
    pub secret: Option<Secret>,
}

impl Endpoint {
    /// An endpoint at `url` with id `runner_id` and no secret.
    pub fn new(url: impl Into<String>, runner_id: impl Into<String>) -> Self {
        Endpoint {
            url: url.into().trim_end_matches('/').to_owned(),
            runner_id: runner_id.into(),
            secret: None,
        }
    }

    /// Sets the signing secret.
    pub fn with_secret(mut self, secret: Option<Secret>) -> Self {
        self.secret = secret;
        self
    }
}

/// One call on its way to a runner: everything but the per-attempt id and times, which
/// [`Invocation::to_request`] fills in fresh for every attempt.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The service id.
    pub service_id: String,
    /// The method id.
    pub method_id: String,
    /// The arguments: superjson text of the positional-argument array, or the typed request,
    /// which the transport encodes in the codec the runner speaks (binary for a flame-rs
    /// runner, superjson for the TypeScript reference).
    pub args: Args,
    /// The call's deadline.
    pub deadline: Option<Instant>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Trace context.
    pub trace: BTreeMap<String, String>,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// A cast ([`Flame::cast`](crate::Flame::cast)): the runner acknowledges once it accepted
    /// the call and runs the handler on its own.
    pub cast: bool,
    /// A streamed result ([`Flame::call_stream`](crate::Flame::call_stream)): the reply is
    /// [`Reply::Stream`] (binary codec only).
    pub stream: bool,
    /// The method's own payload limits (the request is not sent over its limit; a reply over
    /// its limit is refused).
    pub limits: PayloadLimits,
}

/// The reference's expiry window when a call has no timeout.
pub const DEFAULT_EXPIRY: Duration = Duration::from_millis(60_000);

impl Invocation {
    /// Time left until the deadline, if any.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The JSON wire envelope for one attempt: a fresh `invocationId`, `iat` now, `exp` and
    /// `timeoutMs` from the time left, the arguments as superjson text.
    pub fn to_request(&self) -> Result<InvocationRequest> {
        Ok(self.envelope(self.args.to_json()?))
    }

    /// The envelope for one attempt (as [`Invocation::to_request`]) with `args` as given (empty
    /// for a binary request, whose payload travels beside it).
    pub fn envelope(&self, args: String) -> InvocationRequest {
        let iat = now_millis();
        let timeout_ms = self.remaining().map(|d| d.as_millis().max(1) as u64);
        InvocationRequest {
            invocation_id: uuid::Uuid::new_v4().to_string(),
            service_id: self.service_id.clone(),
            method_id: self.method_id.clone(),
            args,
            iat,
            exp: iat + timeout_ms.unwrap_or(DEFAULT_EXPIRY.as_millis() as u64),
            timeout_ms,
            idempotency_key: self.idempotency_key.clone(),
            trace: (!self.trace.is_empty()).then(|| self.trace.clone()),
            attempt: Some(self.attempt),
            cast: self.cast.then_some(true),
            stream: self.stream.then_some(true),
            seq: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a runner says about itself on `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerStatus {
    /// Always true for a live runner.
    pub ok: bool,
    /// The runner's id (authenticated callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// Calls in flight (authenticated callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<usize>,
    /// Milliseconds since the runner started (authenticated callers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// True once the runner drains and takes no new calls.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Milliseconds since the runner last heard from its parent (runners a parent started;
    /// also told to strangers: it is how `reap` tells a live parent's runner from an orphan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_silent_ms: Option<u64>,
}

/// The parent's way to reach a runner: one attempt at a time (core owns the deadline and the
/// retries).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one attempt of `invocation` to `endpoint`; returns the reply — in the codec the
    /// runner answered with, possibly still arriving ([`Reply::decode`] reads it) — or the
    /// error (a remote `ok:false` keeps its remote code).
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<Reply>;

    /// Asks the runner whether it is alive (and, when authenticated, how busy).
    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus>;
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<Reply> {
        (**self).invoke(endpoint, invocation).await
    }
    async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
        (**self).ping(endpoint).await
    }
}

/// Maps a non-200 reply of a runner (DESIGN.md §8: plain-text bodies) to an [`Error`].
pub fn error_for_status(status: u16, body: &str) -> Error {
    let text = body.trim();
    let (code, what) = match status {
        400 => (ErrorCode::BadRequest, "bad request"),
        401 | 403 => (ErrorCode::Unauthorized, "unauthorized"),
        404 => (ErrorCode::NotFound, "not found"),
        408 | 504 => (ErrorCode::Timeout, "timed out"),
        413 => (ErrorCode::PayloadTooLarge, "payload too large"),
        429 | 503 => (ErrorCode::Overloaded, "overloaded"),
        _ => (ErrorCode::Transport, "unexpected status"),
    };
    let mut err = Error::new(
        code,
        format!("runner replied {status} ({what}): {}", truncate(text, 200)),
    );
    if status == 503 || status == 429 {
        err = err.with_retryable(true);
    }
    err
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
