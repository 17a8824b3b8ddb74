//! The one error type of flame: a stable code, a message, optional details.
//!
//! Errors are values: every call returns `Result<Resp, Error>`. The code is stable across
//! versions and languages ([`ErrorCode::as_str`] for Rust, [`ErrorCode::wire`] for the
//! `@monotykamary/flame`-compatible wire names).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// `Result` with flame's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable category of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The call ran past its deadline.
    Timeout,
    /// No runner could be found or started for the call.
    NoRunner,
    /// Every slot is busy (pool at `max`, or a runner at its in-flight cap).
    Overloaded,
    /// Bad or missing signature, or a request outside its time window, or a replay.
    Unauthorized,
    /// The request body exceeded the configured limit.
    PayloadTooLarge,
    /// Unknown service or method.
    NotFound,
    /// The request could not be understood (malformed envelope, wrong arguments).
    BadRequest,
    /// The handler failed (returned an error or panicked).
    Handler,
    /// The transport failed (connection refused, reset, bad status).
    Transport,
    /// A backend (process, Docker, ECS, Fly) failed.
    Backend,
    /// A runner did not become healthy within its boot timeout.
    SpawnTimeout,
    /// flame is shutting down and does not take new calls.
    Shutdown,
    /// Invalid configuration.
    Config,
    /// A value could not be encoded or decoded.
    Serialization,
    /// A remote peer reported an error whose code flame does not know.
    Remote,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Timeout,
        ErrorCode::NoRunner,
        ErrorCode::Overloaded,
        ErrorCode::Unauthorized,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::BadRequest,
        ErrorCode::Handler,
        ErrorCode::Transport,
        ErrorCode::Backend,
        ErrorCode::SpawnTimeout,
        ErrorCode::Shutdown,
        ErrorCode::Config,
        ErrorCode::Serialization,
        ErrorCode::Remote,
    ];

    /// The stable upper-case name, e.g. `"TIMEOUT"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::NoRunner => "NO_RUNNER",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Handler => "HANDLER_ERROR",
            ErrorCode::Transport => "TRANSPORT",
            ErrorCode::Backend => "BACKEND",
            ErrorCode::SpawnTimeout => "SPAWN_TIMEOUT",
            ErrorCode::Shutdown => "SHUTDOWN",
            ErrorCode::Config => "CONFIG",
            ErrorCode::Serialization => "SERIALIZATION",
            ErrorCode::Remote => "REMOTE",
        }
    }

    /// The lower-case wire name (DESIGN.md §8), e.g. `"signature_error"` for
    /// [`ErrorCode::Unauthorized`].
    pub const fn wire(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "timeout",
            ErrorCode::NoRunner => "no_runner",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unauthorized => "signature_error",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "registry_error",
            ErrorCode::BadRequest => "invoke_error",
            ErrorCode::Handler => "handler_error",
            ErrorCode::Transport => "transport_error",
            ErrorCode::Backend => "backend_error",
            ErrorCode::SpawnTimeout => "spawn_timeout",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Config => "config_error",
            ErrorCode::Serialization => "serialization_error",
            ErrorCode::Remote => "remote_error",
        }
    }

    /// Maps a wire name back to a code; unknown names map to [`ErrorCode::Remote`].
    pub fn from_wire(wire: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.wire() == wire || c.as_str() == wire)
            .unwrap_or(ErrorCode::Remote)
    }

    /// Whether errors of this code are worth retrying by default.
    pub const fn retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::NoRunner
                | ErrorCode::Overloaded
                | ErrorCode::Transport
                | ErrorCode::SpawnTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every flame operation.
///
/// ```
/// use flame_core::{Error, ErrorCode};
/// let err = Error::new(ErrorCode::Overloaded, "pool `gpu` is full");
/// assert_eq!(err.code(), ErrorCode::Overloaded);
/// assert_eq!(err.code().as_str(), "OVERLOADED");
/// assert!(err.is_retryable());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    code: ErrorCode,
    message: String,
    details: Option<Value>,
    retryable: Option<bool>,
    remote_code: Option<String>,
    not_delivered: bool,
    app: Option<Value>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// A new error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                code,
                message: message.into(),
                details: None,
                retryable: None,
                remote_code: None,
                not_delivered: false,
                app: None,
                source: None,
            }),
        }
    }

    /// A configuration error naming the variable and the rejected value.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Config, message)
    }

    /// A serialization error.
    pub fn serialization(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Serialization, message)
    }

    /// A transport error.
    pub fn transport(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Transport, message)
    }

    /// A transport error that proves the request never reached a handler (e.g. connection
    /// refused), so the call is safe to repeat even without an idempotency key.
    pub fn not_delivered(message: impl Into<String>) -> Self {
        let mut e = Error::new(ErrorCode::Transport, message);
        e.inner.not_delivered = true;
        e
    }

    /// A backend error; `retryable` says whether trying again can help.
    pub fn backend(message: impl Into<String>, retryable: bool) -> Self {
        Error::new(ErrorCode::Backend, message).with_retryable(retryable)
    }

    /// A handler error with just a message.
    pub fn handler(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Handler, message)
    }

    /// A typed application error returned by a handler. The value travels to the caller (also
    /// over the wire) and comes back with [`Error::app_error`].
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// enum PayError { Declined { reason: String } }
    /// impl std::fmt::Display for PayError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "declined") }
    /// }
    /// let err = flame_core::Error::app(PayError::Declined { reason: "funds".into() });
    /// assert_eq!(err.app_error::<PayError>(), Some(PayError::Declined { reason: "funds".into() }));
    /// ```
    pub fn app<E: Serialize + fmt::Display>(error: E) -> Self {
        let message = error.to_string();
        let mut e = Error::new(ErrorCode::Handler, message);
        match serde_json::to_value(&error) {
            Ok(v) => e.inner.app = Some(v),
            Err(err) => e.inner.details = Some(Value::String(format!("app error not serializable: {err}"))),
        }
        e
    }

    /// The application error carried by this error, decoded as `E`, if any.
    pub fn app_error<E: DeserializeOwned>(&self) -> Option<E> {
        self.inner
            .app
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The raw application error value, if any.
    pub fn app_value(&self) -> Option<&Value> {
        self.inner.app.as_ref()
    }

    /// Attaches an application error value (used when decoding a remote error).
    pub fn with_app_value(mut self, app: Value) -> Self {
        self.inner.app = Some(app);
        self
    }

    /// Attaches JSON details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.inner.details = Some(details);
        self
    }

    /// Overrides whether this error is retryable.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = Some(retryable);
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// Keeps the code text a remote peer sent (kept even when flame does not know it).
    pub fn with_remote_code(mut self, code: impl Into<String>) -> Self {
        self.inner.remote_code = Some(code.into());
        self
    }

    /// Prefixes the message with context, keeping code and everything else.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.inner.message = format!("{context}: {}", self.inner.message);
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.inner.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Optional JSON details.
    pub fn details(&self) -> Option<&Value> {
        self.inner.details.as_ref()
    }

    /// The wire code: the remote's own text when this error came from a peer, else the
    /// mapping of [`ErrorCode::wire`].
    pub fn wire_code(&self) -> &str {
        self.inner
            .remote_code
            .as_deref()
            .unwrap_or(self.inner.code.wire())
    }

    /// The code text a remote peer sent, if this error came over the wire.
    pub fn remote_code(&self) -> Option<&str> {
        self.inner.remote_code.as_deref()
    }

    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        self.inner
            .retryable
            .unwrap_or(self.inner.code.retryable_by_default())
    }

    /// The explicit retryable flag, if one was set.
    pub fn retryable_flag(&self) -> Option<bool> {
        self.inner.retryable
    }

    /// Whether this error proves the handler never ran for this attempt, so repeating the call
    /// cannot run it twice: refused connections, rejected signatures or windows, overload,
    /// no runner, spawn timeouts, shutdown.
    pub fn handler_never_ran(&self) -> bool {
        self.inner.not_delivered
            || matches!(
                self.inner.code,
                ErrorCode::Overloaded
                    | ErrorCode::NoRunner
                    | ErrorCode::Unauthorized
                    | ErrorCode::SpawnTimeout
                    | ErrorCode::PayloadTooLarge
            )
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::serialization(err.to_string()).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.wire()), code, "{code}");
            assert_eq!(ErrorCode::from_wire(code.as_str()), code, "{code}");
        }
    }

    #[test]
    fn reference_wire_codes_map_to_codes() {
        assert_eq!(ErrorCode::from_wire("signature_error"), ErrorCode::Unauthorized);
        assert_eq!(ErrorCode::from_wire("registry_error"), ErrorCode::NotFound);
        assert_eq!(ErrorCode::from_wire("handler_error"), ErrorCode::Handler);
        assert_eq!(ErrorCode::from_wire("whatever_else"), ErrorCode::Remote);
    }

    #[test]
    fn unknown_remote_code_survives_as_text() {
        let e = Error::new(ErrorCode::Remote, "x").with_remote_code("quota_exceeded");
        assert_eq!(e.wire_code(), "quota_exceeded");
        assert_eq!(e.code(), ErrorCode::Remote);
    }

    #[test]
    fn retryable_defaults_and_overrides() {
        assert!(Error::new(ErrorCode::Overloaded, "").is_retryable());
        assert!(!Error::handler("boom").is_retryable());
        assert!(Error::handler("boom").with_retryable(true).is_retryable());
        assert!(!Error::transport("x").with_retryable(false).is_retryable());
        assert!(Error::backend("throttled", true).is_retryable());
    }

    #[test]
    fn never_ran_is_only_claimed_when_proven() {
        assert!(Error::not_delivered("refused").handler_never_ran());
        assert!(!Error::transport("reset mid-body").handler_never_ran());
        assert!(Error::new(ErrorCode::Unauthorized, "").handler_never_ran());
        assert!(!Error::new(ErrorCode::Timeout, "").handler_never_ran());
    }

    #[test]
    fn display_names_code_and_message() {
        let e = Error::config("FLAME_MODE=parnet is not a mode");
        assert_eq!(e.to_string(), "CONFIG: FLAME_MODE=parnet is not a mode");
        assert_eq!(
            e.context("config").message(),
            "config: FLAME_MODE=parnet is not a mode"
        );
    }
}
