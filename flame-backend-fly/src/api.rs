//! A small client of the Fly Machines REST API: the five calls the backend makes (create,
//! wait, get, stop, delete, plus list), Bearer authentication, retries (5xx with backoff, 429
//! after `Retry-After`), the per-machine rate limits, and Fly's JSON error bodies turned into
//! typed errors that never carry the token.

use crate::config::{FlyConfig, Guest, Init, RetryPolicy};
use backon::{BackoffBuilder, ExponentialBuilder};
use flame_core::{Error, ErrorCode, Result, Secret};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A machine's lifecycle state as the Machines API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineState {
    /// `created`: not started yet.
    Created,
    /// `starting`.
    Starting,
    /// `started`: running and reachable.
    Started,
    /// `stopping`.
    Stopping,
    /// `stopped`.
    Stopped,
    /// `suspending` / `suspended`.
    Suspended,
    /// `failed`: could not start.
    Failed,
    /// `destroying`.
    Destroying,
    /// `destroyed`.
    Destroyed,
    /// `replaced` (an older version).
    Replaced,
    /// `launch_failed`.
    LaunchFailed,
    /// Anything else, kept as text.
    Other(String),
}

impl MachineState {
    /// Parses the API's state text.
    pub fn parse(s: &str) -> MachineState {
        match s {
            "created" => MachineState::Created,
            "starting" => MachineState::Starting,
            "started" => MachineState::Started,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "suspending" | "suspended" => MachineState::Suspended,
            "failed" => MachineState::Failed,
            "destroying" => MachineState::Destroying,
            "destroyed" => MachineState::Destroyed,
            "replaced" => MachineState::Replaced,
            "launch_failed" => MachineState::LaunchFailed,
            other => MachineState::Other(other.to_owned()),
        }
    }

    /// Whether a machine in this state can no longer become `started` by itself (with restart
    /// policy `no`, a stopped FLAME runner stays down).
    pub fn is_dead(&self) -> bool {
        matches!(
            self,
            MachineState::Stopping
                | MachineState::Stopped
                | MachineState::Suspended
                | MachineState::Failed
                | MachineState::Destroying
                | MachineState::Destroyed
                | MachineState::Replaced
                | MachineState::LaunchFailed
        )
    }

    /// Whether the machine is gone or going (`destroying`, `destroyed`).
    pub fn is_gone(&self) -> bool {
        matches!(self, MachineState::Destroying | MachineState::Destroyed)
    }
}

/// An error reply of the Machines API. It is the `source` of the flame [`Error`] the backend
/// returns (code `BACKEND`), so callers can look at Fly's own status and text.
///
/// ```
/// use flame_backend_fly::FlyApiError;
/// # fn check(err: &flame_core::Error) {
/// if let Some(fly) = std::error::Error::source(err).and_then(|s| s.downcast_ref::<FlyApiError>()) {
///     println!("Fly said {} ({:?}): {}", fly.http_status, fly.fly_status, fly.message);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlyApiError {
    /// What the backend was doing (`create`, `wait`, `get`, `stop`, `destroy`, `list`).
    pub operation: &'static str,
    /// The HTTP status (0 when no reply came: connection failure, timeout).
    pub http_status: u16,
    /// Fly's machine-readable `status` field (e.g. `insufficient_capacity`), if any.
    pub fly_status: Option<String>,
    /// Fly's `error` (or `message`) text, or the body / transport failure (token redacted).
    pub message: String,
}

impl fmt::Display for FlyApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fly {}: ", self.operation)?;
        if self.http_status != 0 {
            write!(f, "HTTP {}", self.http_status)?;
            if let Some(s) = &self.fly_status {
                write!(f, " ({s})")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FlyApiError {}

/// `POST /v1/apps/{app}/machines` body.
#[derive(Debug, Serialize)]
pub(crate) struct CreateMachineRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub config: MachineConfig,
}

/// `config` of the create body.
#[derive(Debug, Serialize)]
pub(crate) struct MachineConfig {
    pub image: String,
    pub init: Init,
    pub guest: GuestBody,
    pub env: BTreeMap<String, String>,
    pub auto_destroy: bool,
    pub restart: Restart,
    pub metadata: BTreeMap<String, String>,
}

/// `config.guest`.
#[derive(Debug, Serialize)]
pub(crate) struct GuestBody {
    pub cpu_kind: String,
    pub cpus: u32,
    pub memory_mb: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

impl From<&Guest> for GuestBody {
    fn from(g: &Guest) -> Self {
        GuestBody {
            cpu_kind: g.cpu_kind.clone(),
            cpus: g.cpus,
            memory_mb: g.memory_mb,
            gpu_kind: g.gpu_kind.clone(),
            gpus: g.gpu_kind.as_ref().map(|_| g.gpus.unwrap_or(1)),
        }
    }
}

/// `config.restart`.
#[derive(Debug, Serialize)]
pub(crate) struct Restart {
    pub policy: &'static str,
}

/// The parts of a machine object the backend reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Machine {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub config: Option<MachineConfigView>,
    /// The machine's recent events (`[{type, status, source, timestamp, request}]`), read
    /// loosely: their shape is not part of the backend's contract.
    #[serde(default)]
    pub events: Option<Value>,
}

/// The parts of a machine's `config` the backend reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct MachineConfigView {
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, Value>>,
}

impl Machine {
    pub fn state(&self) -> MachineState {
        MachineState::parse(&self.state)
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.config.as_ref()?.metadata.as_ref()?.get(key)?.as_str()
    }

    /// What Fly says about how the machine is: `fly machine <id> is `stopped`; last event
    /// `exit` (status stopped, from flyd): exit code 3, OOM-killed`.
    pub fn describe(&self) -> String {
        let mut text = format!("fly machine {} is `{}`", self.id, self.state);
        if let Some(event) = self.last_event() {
            text.push_str("; last event ");
            text.push_str(&describe_event(event));
        }
        text
    }

    /// The newest event (by timestamp; the first one when none has a timestamp).
    fn last_event(&self) -> Option<&Value> {
        let events = self.events.as_ref()?.as_array()?;
        let stamp = |e: &Value| e.get("timestamp").and_then(Value::as_i64);
        events
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (stamp(e), std::cmp::Reverse(*i)))
            .map(|(_, e)| e)
    }
}

/// One machine event, for people: `` `exit` (status stopped, from flyd): exit code 3 ``.
fn describe_event(event: &Value) -> String {
    let text = |key: &str| event.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut out = format!("`{}`", text("type").unwrap_or("?"));
    let mut about = Vec::new();
    if let Some(status) = text("status") {
        about.push(format!("status {status}"));
    }
    if let Some(source) = text("source") {
        about.push(format!("from {source}"));
    }
    if !about.is_empty() {
        out.push_str(&format!(" ({})", about.join(", ")));
    }
    let Some(exit) = event.get("request").and_then(|r| r.get("exit_event")) else {
        return out;
    };
    let mut facts = Vec::new();
    let number = |key: &str| exit.get(key).and_then(Value::as_i64);
    let flag = |key: &str| exit.get(key).and_then(Value::as_bool) == Some(true);
    let words = |key: &str| exit.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(code) = number("exit_code") {
        facts.push(format!("exit code {code}"));
    }
    if let Some(code) = number("guest_exit_code").filter(|c| *c != 0) {
        facts.push(format!("guest exit code {code}"));
    }
    for key in ["signal", "guest_signal"] {
        if let Some(signal) = number(key).filter(|s| *s > 0) {
            facts.push(format!("{} {signal}", key.replace('_', " ")));
        }
    }
    if flag("oom_killed") {
        facts.push("OOM-killed".into());
    }
    if flag("requested_stop") {
        facts.push("a stop was requested".into());
    }
    for key in ["error", "guest_error"] {
        if let Some(error) = words(key) {
            facts.push(format!("{}: {error}", key.replace('_', " ")));
        }
    }
    if !facts.is_empty() {
        out.push_str(": ");
        out.push_str(&facts.join(", "));
    }
    out
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<Value>,
}

/// One attempt's failure, and whether another attempt may help.
struct Failure {
    api: FlyApiError,
    retry: bool,
    retry_after: Option<Duration>,
}

/// A reply the caller looks at itself (2xx, and statuses the caller handles such as 404/408).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

/// Which of Fly's per-machine rate limits a call counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Limit {
    /// Mutations: 1 request/s, burst 3 per machine.
    Mutate,
    /// Reads (get, wait): 5 requests/s, burst 10 per machine.
    Read,
}

impl Limit {
    fn rate_and_burst(self) -> (f64, f64) {
        match self {
            Limit::Mutate => (1.0, 3.0),
            Limit::Read => (5.0, 10.0),
        }
    }
}

/// Token buckets per (machine, limit): a call reserves a token and waits until the bucket
/// allows it, so the backend stays inside Fly's documented per-machine limits instead of
/// collecting 429s. The lock is never held across an await.
#[derive(Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<(String, Limit), (f64, Instant)>>,
}

impl RateLimiter {
    /// Reserves one token and returns how long to wait before using it.
    pub fn reserve(&self, machine: &str, limit: Limit) -> Duration {
        let (rate, burst) = limit.rate_and_burst();
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        let entry = buckets.entry((machine.to_owned(), limit)).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(entry.1).as_secs_f64();
        entry.0 = (entry.0 + elapsed * rate).min(burst) - 1.0;
        entry.1 = now;
        if entry.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-entry.0 / rate)
        }
    }

    /// Forgets a destroyed machine's buckets.
    pub fn forget(&self, machine: &str) {
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|(m, _), _| m != machine);
        }
    }
}

/// The Machines API client.
pub(crate) struct MachinesClient {
    http: reqwest::Client,
    base: String,
    app: String,
    auth: HeaderValue,
    token: Secret,
    retry: RetryPolicy,
    request_timeout: Duration,
    limiter: RateLimiter,
}

impl fmt::Debug for MachinesClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachinesClient")
            .field("base", &self.base)
            .field("app", &self.app)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl MachinesClient {
    pub fn new(cfg: &FlyConfig) -> Result<Self> {
        let token = cfg.token.expose().trim();
        if token.is_empty() {
            return Err(Error::config("the Fly API token is empty (FLY_API_TOKEN)"));
        }
        // Tokens made by `fly tokens create` come as `FlyV1 fm2_…` and are sent as they are;
        // plain tokens (`fly auth token`) go as `Bearer …` (the documented form).
        let value = if token.starts_with("FlyV1 ") {
            token.to_owned()
        } else {
            format!("Bearer {token}")
        };
        let mut auth = HeaderValue::from_str(&value).map_err(|_| {
            Error::config("the Fly API token contains characters an HTTP header cannot carry")
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("flame-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorCode::Config,
                    format!("cannot build the Fly API HTTP client: {e}"),
                )
            })?;
        Ok(MachinesClient {
            http,
            base: cfg.api_url.trim_end_matches('/').to_owned(),
            app: cfg.app.clone(),
            auth,
            token: cfg.token.clone(),
            retry: cfg.retry.clone(),
            request_timeout: cfg.request_timeout,
            limiter: RateLimiter::default(),
        })
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    fn machines_path(&self) -> String {
        format!("/v1/apps/{}/machines", segment(&self.app))
    }

    fn machine_path(&self, id: &str, action: &str) -> String {
        format!("{}/{}{action}", self.machines_path(), segment(id))
    }

    /// Removes the token (and, for `FlyV1` tokens, each of its parts) from text that came from
    /// outside (reply bodies, transport errors).
    pub fn redact(&self, text: &str) -> String {
        let token = self.token.expose().trim();
        let mut out = text.to_owned();
        let mut parts: Vec<&str> = vec![token];
        if let Some(rest) = token.strip_prefix("FlyV1 ") {
            parts.extend(rest.split(',').map(str::trim));
        }
        for part in parts {
            if part.len() >= 4 {
                out = out.replace(part, "<redacted>");
            }
        }
        out
    }

    /// Sends one call with retries. Statuses in `pass` come back as a [`Reply`] for the caller
    /// to judge; other non-2xx statuses become typed errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        limit: Option<(&str, Limit)>,
        timeout: Option<Duration>,
        pass: &[StatusCode],
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter()
            .build();
        let mut attempts = 0usize;
        loop {
            if let Some((machine, limit)) = limit {
                let wait = self.limiter.reserve(machine, limit);
                if !wait.is_zero() {
                    tracing::debug!(operation, machine, ?wait, "fly: pacing to the API rate limit");
                    tokio::time::sleep(wait).await;
                }
            }
            attempts += 1;
            let failure = match self
                .attempt(operation, method.clone(), path, query, body, timeout)
                .await
            {
                Ok(reply) if reply.status.is_success() || pass.contains(&reply.status) => return Ok(reply),
                Ok(reply) => self.failure(operation, &reply),
                Err(failure) => failure,
            };
            let next = if failure.retry { backoff.next() } else { None };
            let delay = match (next, failure.retry_after) {
                (None, _) => None,
                (Some(_), Some(after)) if after > self.retry.max_retry_after => None,
                (Some(_), Some(after)) => Some(after),
                (Some(backoff), None) => Some(backoff),
            };
            let delay = delay.filter(|d| deadline.map_or(true, |dl| Instant::now() + *d < dl));
            match delay {
                Some(delay) => {
                    tracing::warn!(
                        operation,
                        attempt = attempts,
                        ?delay,
                        error = %failure.api,
                        "fly: retrying the Machines API"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => return Err(self.to_error(failure, attempts)),
            }
        }
    }

    async fn attempt(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> std::result::Result<Reply, Failure> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(timeout.unwrap_or(self.request_timeout));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let transport = |e: reqwest::Error, what: &str| {
            // A refused connection never reached Fly; a timeout may have.
            let retry = e.is_connect() || e.is_timeout() || e.is_request();
            Failure {
                api: FlyApiError {
                    operation,
                    http_status: 0,
                    fly_status: None,
                    message: self.redact(&format!("{what}: {}", error_chain(&e))),
                },
                retry,
                retry_after: None,
            }
        };
        let resp = req.send().await.map_err(|e| transport(e, "request failed"))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport(e, "reading the reply failed"))?
            .to_vec();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let mut f = self.failure(operation, &Reply { status, body });
            f.retry_after = retry_after;
            return Err(f);
        }
        Ok(Reply { status, body })
    }

    /// Classifies a non-2xx reply.
    fn failure(&self, operation: &'static str, reply: &Reply) -> Failure {
        let status = reply.status;
        let text = String::from_utf8_lossy(&reply.body);
        let parsed: Option<ErrorBody> = serde_json::from_slice(&reply.body).ok();
        let (message, fly_status) = match parsed {
            Some(b) => {
                let message = b
                    .error
                    .or(b.message)
                    .unwrap_or_else(|| truncate(text.trim(), 300).to_owned());
                let fly_status = b.status.map(|s| match s {
                    Value::String(s) => s,
                    other => other.to_string(),
                });
                (message, fly_status)
            }
            None => (truncate(text.trim(), 300).to_owned(), None),
        };
        let message = if message.is_empty() {
            status.canonical_reason().unwrap_or("no reason").to_owned()
        } else {
            message
        };
        Failure {
            api: FlyApiError {
                operation,
                http_status: status.as_u16(),
                fly_status: fly_status.map(|s| self.redact(&s)),
                message: self.redact(&message),
            },
            retry: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
            retry_after: None,
        }
    }

    fn to_error(&self, failure: Failure, attempts: usize) -> Error {
        api_error(failure.api, attempts)
    }

    /// Decodes a 2xx reply body, as a typed error when it is not the JSON expected.
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        reply: &Reply,
    ) -> Result<T> {
        serde_json::from_slice(&reply.body).map_err(|e| {
            let api = FlyApiError {
                operation,
                http_status: reply.status.as_u16(),
                fly_status: None,
                message: self.redact(&format!(
                    "malformed JSON in the reply ({e}): {}",
                    truncate(String::from_utf8_lossy(&reply.body).trim(), 200)
                )),
            };
            Error::backend(format!("{api}"), true)
                .with_details(details(&api, 1))
                .with_source(api)
        })
    }

    // ---- the calls -------------------------------------------------------------------------

    /// `POST /v1/apps/{app}/machines`.
    pub async fn create(&self, body: &CreateMachineRequest, deadline: Instant) -> Result<Machine> {
        let body = serde_json::to_value(body)?;
        let reply = self
            .call(
                "create",
                Method::POST,
                &self.machines_path(),
                &[],
                Some(&body),
                None,
                None,
                &[],
                Some(deadline),
            )
            .await?;
        self.decode("create", &reply)
    }

    /// `GET /v1/apps/{app}/machines/{id}/wait?state=…&timeout=…`: `Ok(true)` when the state
    /// was reached, `Ok(false)` on Fly's 408 (not yet).
    pub async fn wait(
        &self,
        id: &str,
        instance_id: Option<&str>,
        state: &str,
        timeout_secs: u64,
    ) -> Result<bool> {
        let timeout_secs = timeout_secs.clamp(1, 60);
        let mut query = vec![("state", state.to_owned()), ("timeout", timeout_secs.to_string())];
        if let Some(instance) = instance_id {
            query.push(("instance_id", instance.to_owned()));
        }
        let reply = self
            .call(
                "wait",
                Method::GET,
                &self.machine_path(id, "/wait"),
                &query,
                None,
                Some((id, Limit::Read)),
                Some(Duration::from_secs(timeout_secs) + Duration::from_secs(10)),
                &[StatusCode::REQUEST_TIMEOUT],
                None,
            )
            .await?;
        Ok(reply.status != StatusCode::REQUEST_TIMEOUT)
    }

    /// `GET /v1/apps/{app}/machines/{id}`; `None` when Fly does not know it (404).
    pub async fn get(&self, id: &str) -> Result<Option<Machine>> {
        let reply = self
            .call(
                "get",
                Method::GET,
                &self.machine_path(id, ""),
                &[],
                None,
                Some((id, Limit::Read)),
                None,
                &[StatusCode::NOT_FOUND],
                None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.decode("get", &reply).map(Some)
    }

    /// `POST /v1/apps/{app}/machines/{id}/stop`; `false` when the machine is gone (404).
    pub async fn stop(&self, id: &str, signal: &str) -> Result<bool> {
        let body = serde_json::json!({ "signal": signal });
        let reply = self
            .call(
                "stop",
                Method::POST,
                &self.machine_path(id, "/stop"),
                &[],
                Some(&body),
                Some((id, Limit::Mutate)),
                None,
                &[StatusCode::NOT_FOUND],
                None,
            )
            .await?;
        Ok(reply.status != StatusCode::NOT_FOUND)
    }

    /// `DELETE /v1/apps/{app}/machines/{id}?force=true`; `false` when it was already gone.
    pub async fn destroy(&self, id: &str) -> Result<bool> {
        let reply = self
            .call(
                "destroy",
                Method::DELETE,
                &self.machine_path(id, ""),
                &[("force", "true".to_owned())],
                None,
                Some((id, Limit::Mutate)),
                None,
                &[StatusCode::NOT_FOUND],
                None,
            )
            .await?;
        self.limiter.forget(id);
        Ok(reply.status != StatusCode::NOT_FOUND)
    }

    /// `GET /v1/apps/{app}/machines?metadata.{key}={value}`.
    pub async fn list(&self, key: &str, value: &str) -> Result<Vec<Machine>> {
        let reply = self
            .call(
                "list",
                Method::GET,
                &self.machines_path(),
                &[(&format!("metadata.{key}"), value.to_owned())],
                None,
                None,
                None,
                &[],
                None,
            )
            .await?;
        self.decode("list", &reply)
    }
}

/// The flame error for a Fly API failure: code `BACKEND`, Fly's status and text in the message
/// and details, the [`FlyApiError`] as source. Retryable where another try (later, or by the
/// pool) may help: 5xx, 429, 409 (lease/capacity conflict), 412 (no capacity), transport.
pub(crate) fn api_error(api: FlyApiError, attempts: usize) -> Error {
    let retryable = matches!(api.http_status, 0 | 409 | 412 | 429 | 500..=599);
    let mut message = api.to_string();
    if attempts > 1 {
        message.push_str(&format!(" (after {attempts} attempts)"));
    }
    Error::backend(message, retryable)
        .with_details(details(&api, attempts))
        .with_source(api)
}

fn details(api: &FlyApiError, attempts: usize) -> Value {
    serde_json::json!({
        "backend": "fly",
        "operation": api.operation,
        "http_status": api.http_status,
        "fly_status": api.fly_status,
        "fly_error": api.message,
        "attempts": attempts,
    })
}

/// `Retry-After` in seconds (whole or fractional); HTTP dates are not used by Fly.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// One path segment: ids and app names are `[a-z0-9-]` in practice; anything else is
/// percent-encoded so it cannot change the path.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_escape() {
        assert_eq!(segment("e2865aa01"), "e2865aa01");
        assert_eq!(segment("../x/y"), "..%2Fx%2Fy");
        assert_eq!(segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn states_parse_and_classify() {
        assert_eq!(MachineState::parse("started"), MachineState::Started);
        assert!(MachineState::parse("failed").is_dead());
        assert!(MachineState::parse("destroyed").is_gone());
        assert!(!MachineState::parse("starting").is_dead());
        assert!(!MachineState::parse("created").is_dead());
        assert_eq!(MachineState::parse("weird"), MachineState::Other("weird".into()));
    }

    #[test]
    fn machines_describe_their_state_and_newest_event() {
        let machine: Machine = serde_json::from_value(serde_json::json!({
            "id": "m1",
            "state": "stopped",
            "events": [
                { "type": "start", "status": "started", "source": "flyd", "timestamp": 10 },
                { "type": "exit", "status": "stopped", "source": "flyd", "timestamp": 20,
                  "request": { "exit_event": { "exit_code": 3, "oom_killed": true, "guest_signal": 0 } } },
                { "type": "launch", "status": "created", "source": "user", "timestamp": 5 },
            ],
        }))
        .unwrap();
        assert_eq!(
            machine.describe(),
            "fly machine m1 is `stopped`; last event `exit` (status stopped, from flyd): exit code 3, OOM-killed"
        );
        // No events, or events of an unexpected shape: the state alone.
        for events in [
            serde_json::json!(null),
            serde_json::json!("odd"),
            serde_json::json!([]),
        ] {
            let m: Machine = serde_json::from_value(
                serde_json::json!({ "id": "m2", "state": "failed", "events": events }),
            )
            .unwrap();
            assert_eq!(m.describe(), "fly machine m2 is `failed`");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_the_burst_then_paces() {
        let l = RateLimiter::default();
        for _ in 0..3 {
            assert_eq!(l.reserve("m1", Limit::Mutate), Duration::ZERO);
        }
        let wait = l.reserve("m1", Limit::Mutate);
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Other machines and the read limit have their own buckets.
        assert_eq!(l.reserve("m2", Limit::Mutate), Duration::ZERO);
        assert_eq!(l.reserve("m1", Limit::Read), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.reserve("m1", Limit::Mutate), Duration::ZERO);
        l.forget("m1");
        assert_eq!(l.reserve("m1", Limit::Mutate), Duration::ZERO);
    }

    #[test]
    fn redaction_removes_plain_and_macaroon_tokens() {
        let cfg = FlyConfig::new("a", "i", "FlyV1 fm2_abcdef,fm2_ghijkl");
        let c = MachinesClient::new(&cfg).unwrap();
        let s = c.redact("echo: FlyV1 fm2_abcdef,fm2_ghijkl and fm2_ghijkl");
        assert!(!s.contains("fm2_"), "{s}");
        let cfg = FlyConfig::new("a", "i", "tok_12345");
        let c = MachinesClient::new(&cfg).unwrap();
        assert_eq!(c.redact("Bearer tok_12345"), "Bearer <redacted>");
        assert!(!format!("{c:?}").contains("tok_12345"));
    }
}
