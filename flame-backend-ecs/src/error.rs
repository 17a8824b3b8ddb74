//! Typed ECS failures and how they map onto flame's [`Error`].
//!
//! Every error this backend returns is a [`flame_core::Error`] (code `BACKEND`, `CONFIG` or
//! `SPAWN_TIMEOUT`) whose [`source`](std::error::Error::source) is an [`EcsError`]; read the
//! kind back with [`EcsError::kind_of`]. The kind is also in the error's details as
//! `{"ecs": "<kind>"}` for logs.

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use flame_core::{Error, ErrorCode};
use std::fmt;

/// What went wrong talking to ECS or with a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EcsErrorKind {
    /// The ECS API kept throttling (`ThrottlingException`, HTTP 429) after every retry.
    Throttled,
    /// The ECS API kept failing with 5xx, timing out, or could not be reached, after every
    /// retry.
    Unavailable,
    /// The ECS API answered with something that is not a valid reply (truncated or invalid
    /// JSON, a missing field this backend needs).
    MalformedReply,
    /// The ECS API refused the request (4xx other than throttling: bad parameter, access
    /// denied, unknown cluster or task definition).
    Rejected,
    /// RunTask reported a capacity failure (`RESOURCE:*`, capacity provider without capacity).
    Capacity,
    /// RunTask reported an agent failure (`AGENT`: the container instance's agent is
    /// disconnected).
    Agent,
    /// RunTask reported another failure (`MISSING`, `ATTRIBUTE`, ...).
    RunTaskFailed,
    /// The task stopped (or started stopping) before it was `RUNNING` with an address. (One
    /// that stops later, before its runner answers, fails core's readiness probe with a
    /// `BACKEND` error carrying [`Backend::exit_details`](flame_core::Backend::exit_details).)
    StoppedDuringBoot,
    /// The task did not become reachable within `boot_timeout`.
    BootTimeout,
    /// The task runs but has no ENI address (its task definition is not `awsvpc`).
    NoAddress,
    /// The backend's settings are incomplete or invalid.
    Config,
}

impl EcsErrorKind {
    /// A stable lower-case name, e.g. `"throttled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EcsErrorKind::Throttled => "throttled",
            EcsErrorKind::Unavailable => "unavailable",
            EcsErrorKind::MalformedReply => "malformed_reply",
            EcsErrorKind::Rejected => "rejected",
            EcsErrorKind::Capacity => "capacity",
            EcsErrorKind::Agent => "agent",
            EcsErrorKind::RunTaskFailed => "run_task_failed",
            EcsErrorKind::StoppedDuringBoot => "stopped_during_boot",
            EcsErrorKind::BootTimeout => "boot_timeout",
            EcsErrorKind::NoAddress => "no_address",
            EcsErrorKind::Config => "config",
        }
    }

    /// Whether trying again later can help.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            EcsErrorKind::Throttled
                | EcsErrorKind::Unavailable
                | EcsErrorKind::Capacity
                | EcsErrorKind::Agent
                | EcsErrorKind::BootTimeout
        )
    }

    /// The flame error code this kind maps to.
    pub const fn code(self) -> ErrorCode {
        match self {
            EcsErrorKind::BootTimeout => ErrorCode::SpawnTimeout,
            EcsErrorKind::Config => ErrorCode::Config,
            _ => ErrorCode::Backend,
        }
    }
}

impl fmt::Display for EcsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ECS failure: its kind, the ECS error code if the API sent one, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ecs {kind}: {message}")]
pub struct EcsError {
    /// The kind.
    pub kind: EcsErrorKind,
    /// The ECS error code (`ThrottlingException`, `ClusterNotFoundException`) or RunTask
    /// failure reason (`RESOURCE:MEMORY`, `AGENT`), when there is one.
    pub ecs_code: Option<String>,
    /// What happened, for people.
    pub message: String,
}

impl EcsError {
    /// A new error.
    pub fn new(kind: EcsErrorKind, message: impl Into<String>) -> Self {
        EcsError {
            kind,
            ecs_code: None,
            message: message.into(),
        }
    }

    /// Sets the ECS code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.ecs_code = Some(code.into());
        self
    }

    /// The kind of an error this backend returned, if it came from this backend.
    ///
    /// ```
    /// use flame_backend_ecs::{EcsError, EcsErrorKind};
    /// let err: flame_core::Error = EcsError::new(EcsErrorKind::Capacity, "no room").into();
    /// assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Capacity));
    /// assert!(err.is_retryable());
    /// ```
    pub fn kind_of(error: &Error) -> Option<EcsErrorKind> {
        Self::of(error).map(|e| e.kind)
    }

    /// The [`EcsError`] behind an error this backend returned, if any.
    pub fn of(error: &Error) -> Option<&EcsError> {
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<EcsError>())
    }
}

impl From<EcsError> for Error {
    fn from(e: EcsError) -> Self {
        let mut details = serde_json::json!({ "ecs": e.kind.as_str() });
        if let Some(code) = &e.ecs_code {
            details["ecsCode"] = serde_json::Value::String(code.clone());
        }
        Error::new(e.kind.code(), format!("ecs {}: {}", e.kind, e.message))
            .with_retryable(e.kind.is_retryable())
            .with_details(details)
            .with_source(e)
    }
}

/// Error codes ECS (and the AWS SDKs) use for throttling.
const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
];

/// Classifies an SDK error of operation `op` (after the SDK's own retries gave up).
pub(crate) fn classify<E>(op: &str, err: &SdkError<E, HttpResponse>) -> EcsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ConstructionFailure(_) => EcsError::new(
            EcsErrorKind::Config,
            format!("{op}: request could not be built: {}", chain(err)),
        ),
        SdkError::TimeoutError(_) => EcsError::new(
            EcsErrorKind::Unavailable,
            format!("{op}: timed out after every retry"),
        ),
        SdkError::DispatchFailure(_) => EcsError::new(
            EcsErrorKind::Unavailable,
            format!("{op}: could not reach the ECS API: {}", chain(err)),
        ),
        SdkError::ResponseError(e) => {
            let status = e.raw().status().as_u16();
            // An unreadable 5xx is a failing server (an HTML error page), not a bad reply.
            let kind = if status >= 500 {
                EcsErrorKind::Unavailable
            } else {
                EcsErrorKind::MalformedReply
            };
            EcsError::new(
                kind,
                format!("{op}: unreadable reply (HTTP {status}): {}", chain(err)),
            )
        }
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let service = e.err();
            let code = service.code().map(str::to_owned);
            let message = service.message().unwrap_or_default();
            let kind = if code.as_deref().is_some_and(|c| THROTTLING_CODES.contains(&c)) || status == 429 {
                EcsErrorKind::Throttled
            } else if (200..300).contains(&status) {
                EcsErrorKind::MalformedReply
            } else if status >= 500 || code.as_deref() == Some("ServerException") {
                EcsErrorKind::Unavailable
            } else if code.is_none() && status < 400 {
                EcsErrorKind::MalformedReply
            } else {
                EcsErrorKind::Rejected
            };
            let text = if message.is_empty() {
                chain(err)
            } else {
                message.to_owned()
            };
            let mut out = EcsError::new(
                kind,
                format!(
                    "{op}: HTTP {status} {}: {text}",
                    code.as_deref().unwrap_or("(no error code)")
                ),
            );
            if let Some(code) = code {
                out = out.with_code(code);
            }
            out
        }
        _ => EcsError::new(EcsErrorKind::Unavailable, format!("{op}: {}", chain(err))),
    }
}

/// Whether a classified error says the task (or its cluster) is not there: terminate treats
/// that as done.
pub(crate) fn is_not_found(e: &EcsError) -> bool {
    let code = e.ecs_code.as_deref().unwrap_or_default();
    e.kind == EcsErrorKind::Rejected
        && (code == "ClusterNotFoundException"
            || (code == "InvalidParameterException" && e.message.contains("not found")))
}

/// The error and its sources, joined with `: `.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes_and_retryability() {
        assert_eq!(EcsErrorKind::BootTimeout.code(), ErrorCode::SpawnTimeout);
        assert_eq!(EcsErrorKind::Config.code(), ErrorCode::Config);
        assert_eq!(EcsErrorKind::MalformedReply.code(), ErrorCode::Backend);
        assert!(EcsErrorKind::Throttled.is_retryable());
        assert!(!EcsErrorKind::MalformedReply.is_retryable());
        assert!(!EcsErrorKind::Rejected.is_retryable());
    }

    #[test]
    fn flame_error_keeps_kind_code_and_details() {
        let err: Error = EcsError::new(EcsErrorKind::Agent, "agent gone")
            .with_code("AGENT")
            .into();
        assert_eq!(err.code(), ErrorCode::Backend);
        assert!(err.is_retryable());
        assert_eq!(EcsError::kind_of(&err), Some(EcsErrorKind::Agent));
        assert_eq!(
            EcsError::of(&err).and_then(|e| e.ecs_code.as_deref()),
            Some("AGENT")
        );
        let details = err.details().cloned().unwrap_or_default();
        assert_eq!(details["ecs"], "agent");
        assert_eq!(details["ecsCode"], "AGENT");
    }

    #[test]
    fn not_found_is_recognised() {
        let gone = EcsError::new(
            EcsErrorKind::Rejected,
            "StopTask: HTTP 400 InvalidParameterException: The referenced task was not found.",
        )
        .with_code("InvalidParameterException");
        assert!(is_not_found(&gone));
        let other =
            EcsError::new(EcsErrorKind::Rejected, "bad subnet").with_code("InvalidParameterException");
        assert!(!is_not_found(&other));
    }
}
