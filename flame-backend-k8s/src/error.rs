//! Typed Kubernetes failures and how they map onto flame's [`Error`].
//!
//! Every error this backend returns is a [`flame_core::Error`] (code `BACKEND`, `CONFIG` or
//! `SPAWN_TIMEOUT`) whose [`source`](std::error::Error::source) is a [`K8sError`]; read it back
//! with [`K8sError::of`] or [`K8sError::kind_of`]. The kind, the HTTP status and the API's (or
//! the Pod's) reason are also in the error's details, for logs:
//! `{"backend": "k8s", "k8s": "<kind>", "httpStatus": 409, "reason": "AlreadyExists", ...}`.

use flame_core::{Error, ErrorCode};
use std::fmt;
use std::time::Duration;

/// What went wrong talking to the Kubernetes API or with a runner Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum K8sErrorKind {
    /// 409 Conflict: the Pod already exists (`AlreadyExists`) or a precondition failed. Not
    /// retried.
    Conflict,
    /// 422 Unprocessable Entity: the API refused the Pod as invalid (`Invalid`; the message
    /// names the field). Not retried.
    Invalid,
    /// 401/403: the parent's credentials may not do this (RBAC: the parent's ServiceAccount
    /// needs a Role with `pods` create/get/list/watch/delete). Not retried.
    Forbidden,
    /// 404 where something had to exist (the namespace, the parent Pod). Not retried.
    NotFound,
    /// Another 4xx. Not retried.
    Rejected,
    /// 429 Too Many Requests after every retry (API priority and fairness). Retryable.
    Throttled,
    /// 5xx, a timeout or a connection failure after every retry. Retryable.
    Unavailable,
    /// The API answered with something that is not a valid reply. Not retried.
    MalformedReply,
    /// The runner's image cannot be pulled (`ImagePullBackOff`, `ErrImagePull`,
    /// `InvalidImageName`, `ErrImageNeverPull`). Not retryable: the Pod spec must change.
    ImagePull,
    /// The container cannot be created from its spec (`CreateContainerConfigError`,
    /// `CreateContainerError`, `RunContainerError`): a missing Secret or ConfigMap, a bad
    /// command. Not retryable.
    ContainerConfig,
    /// The Pod failed, exited or was deleted or evicted before it was running with a Pod IP
    /// (`OOMKilled`, `Error`, `Evicted`, `DeadlineExceeded`, ...). Retryable: another Pod may
    /// fare better; the pool's breaker stops a crash loop. (One that fails later, before its
    /// runner answers, fails core's readiness probe with a `BACKEND` error carrying
    /// [`Backend::exit_details`](flame_core::Backend::exit_details).)
    PodFailed,
    /// The Pod was still unschedulable at `boot_timeout` (the scheduler's message says why,
    /// e.g. `Insufficient nvidia.com/gpu`). Code `SPAWN_TIMEOUT`, retryable.
    Unschedulable,
    /// The Pod was not running with a Pod IP within `boot_timeout` (still `ContainerCreating`,
    /// say). Code `SPAWN_TIMEOUT`, retryable. (A runner that runs but never answers its health
    /// ping is core's readiness probe's `SPAWN_TIMEOUT`.)
    BootTimeout,
    /// The backend's settings are incomplete or invalid, or no cluster could be found.
    Config,
}

impl K8sErrorKind {
    /// A stable lower-case name, e.g. `"image_pull"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            K8sErrorKind::Conflict => "conflict",
            K8sErrorKind::Invalid => "invalid",
            K8sErrorKind::Forbidden => "forbidden",
            K8sErrorKind::NotFound => "not_found",
            K8sErrorKind::Rejected => "rejected",
            K8sErrorKind::Throttled => "throttled",
            K8sErrorKind::Unavailable => "unavailable",
            K8sErrorKind::MalformedReply => "malformed_reply",
            K8sErrorKind::ImagePull => "image_pull",
            K8sErrorKind::ContainerConfig => "container_config",
            K8sErrorKind::PodFailed => "pod_failed",
            K8sErrorKind::Unschedulable => "unschedulable",
            K8sErrorKind::BootTimeout => "boot_timeout",
            K8sErrorKind::Config => "config",
        }
    }

    /// Whether trying again later can help (and whether the API client retries it).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            K8sErrorKind::Throttled
                | K8sErrorKind::Unavailable
                | K8sErrorKind::PodFailed
                | K8sErrorKind::Unschedulable
                | K8sErrorKind::BootTimeout
        )
    }

    /// The flame error code this kind maps to.
    pub const fn code(self) -> ErrorCode {
        match self {
            K8sErrorKind::BootTimeout | K8sErrorKind::Unschedulable => ErrorCode::SpawnTimeout,
            K8sErrorKind::Config => ErrorCode::Config,
            _ => ErrorCode::Backend,
        }
    }
}

impl fmt::Display for K8sErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Kubernetes failure: its kind, the HTTP status and reason the API (or the Pod) gave, and
/// a message that carries the API's own text.
///
/// ```
/// use flame_backend_k8s::{K8sError, K8sErrorKind};
/// let err: flame_core::Error = K8sError::new(K8sErrorKind::Conflict, "pods \"flame-r1\" already exists")
///     .with_status(409)
///     .with_reason("AlreadyExists")
///     .into();
/// assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::Conflict));
/// assert!(!err.is_retryable());
/// assert_eq!(err.details().unwrap()["httpStatus"], 409);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kubernetes {kind}: {message}")]
#[non_exhaustive]
pub struct K8sError {
    /// The kind.
    pub kind: K8sErrorKind,
    /// The HTTP status of the API reply, when the API answered.
    pub http_status: Option<u16>,
    /// The API's `Status.reason` (`AlreadyExists`, `Forbidden`, `Invalid`, `TooManyRequests`)
    /// or the Pod's reason (`ImagePullBackOff`, `Unschedulable`, `OOMKilled`, `Evicted`).
    pub reason: Option<String>,
    /// What happened, for people (includes the API's or the Pod's message).
    pub message: String,
    /// The runner Pod concerned, if any.
    pub pod: Option<String>,
    /// How long the API asked us to wait (`Status.details.retryAfterSeconds`).
    pub retry_after: Option<Duration>,
    /// How many API attempts were made (1 when the first answer was final).
    pub attempts: u32,
}

impl K8sError {
    /// A new error.
    pub fn new(kind: K8sErrorKind, message: impl Into<String>) -> Self {
        K8sError {
            kind,
            http_status: None,
            reason: None,
            message: message.into(),
            pod: None,
            retry_after: None,
            attempts: 1,
        }
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// Sets the reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        self.reason = (!reason.is_empty()).then_some(reason);
        self
    }

    /// Sets the Pod concerned.
    pub fn with_pod(mut self, pod: impl Into<String>) -> Self {
        self.pod = Some(pod.into());
        self
    }

    /// The kind of an error this backend returned, if it came from this backend.
    pub fn kind_of(error: &Error) -> Option<K8sErrorKind> {
        Self::of(error).map(|e| e.kind)
    }

    /// The [`K8sError`] behind an error this backend returned, if any.
    pub fn of(error: &Error) -> Option<&K8sError> {
        std::error::Error::source(error).and_then(|s| s.downcast_ref::<K8sError>())
    }
}

impl From<K8sError> for Error {
    fn from(e: K8sError) -> Self {
        let mut details =
            serde_json::json!({ "backend": "k8s", "k8s": e.kind.as_str(), "attempts": e.attempts });
        if let Some(status) = e.http_status {
            details["httpStatus"] = status.into();
        }
        if let Some(reason) = &e.reason {
            details["reason"] = reason.clone().into();
        }
        if let Some(pod) = &e.pod {
            details["pod"] = pod.clone().into();
        }
        Error::new(e.kind.code(), e.to_string())
            .with_retryable(e.kind.is_retryable())
            .with_details(details)
            .with_source(e)
    }
}

/// Classifies a kube client error of operation `op` (e.g. `create pod flame-r1`).
pub(crate) fn classify(op: &str, err: &kube::Error) -> K8sError {
    match err {
        kube::Error::Api(status) => {
            let code = status.code;
            let kind = match code {
                409 => K8sErrorKind::Conflict,
                422 => K8sErrorKind::Invalid,
                401 | 403 => K8sErrorKind::Forbidden,
                404 => K8sErrorKind::NotFound,
                429 => K8sErrorKind::Throttled,
                // 410 Gone/Expired: a watch's resourceVersion is too old; the watcher lists
                // again.
                410 => K8sErrorKind::Unavailable,
                500..=599 => K8sErrorKind::Unavailable,
                // An API-shaped reply without a usable status code.
                0..=399 => K8sErrorKind::MalformedReply,
                _ => K8sErrorKind::Rejected,
            };
            let mut text = if status.message.is_empty() {
                "(no message)".to_owned()
            } else {
                status.message.clone()
            };
            if kind == K8sErrorKind::Forbidden {
                text.push_str(
                    " (the parent's ServiceAccount needs a Role granting pods create, get, list, \
                     watch and delete in this namespace)",
                );
            }
            let reason = status.reason.clone();
            let mut out = K8sError::new(
                kind,
                format!(
                    "{op}: HTTP {code} {}: {text}",
                    if reason.is_empty() {
                        "(no reason)"
                    } else {
                        reason.as_str()
                    }
                ),
            )
            .with_status(code)
            .with_reason(reason);
            out.retry_after = status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            out
        }
        kube::Error::SerdeError(e) => K8sError::new(
            K8sErrorKind::MalformedReply,
            format!("{op}: unreadable reply: {e}"),
        ),
        kube::Error::BuildRequest(e) => K8sError::new(
            K8sErrorKind::Config,
            format!("{op}: request could not be built: {e}"),
        ),
        kube::Error::HttpError(e) => K8sError::new(
            K8sErrorKind::Config,
            format!("{op}: request could not be built: {e}"),
        ),
        kube::Error::InferConfig(_)
        | kube::Error::InferKubeconfig(_)
        | kube::Error::Auth(_)
        | kube::Error::RustlsTls(_)
        | kube::Error::TlsRequired => K8sError::new(
            K8sErrorKind::Config,
            format!("{op}: the client is not configured: {}", chain(err)),
        ),
        _ => K8sError::new(
            K8sErrorKind::Unavailable,
            format!("{op}: the API could not be reached: {}", chain(err)),
        ),
    }
}

/// Classifies an error of a Pod watch.
pub(crate) fn classify_watch(op: &str, err: &kube::runtime::watcher::Error) -> K8sError {
    use kube::runtime::watcher::Error as W;
    match err {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => classify(op, e),
        W::WatchError(status) => classify(op, &kube::Error::Api(status.clone())),
        W::NoResourceVersion => K8sError::new(
            K8sErrorKind::MalformedReply,
            format!("{op}: the list reply has no metadata.resourceVersion"),
        ),
    }
}

/// The error and its sources, joined with `: `.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
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
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        let mut v =
            serde_json::json!({ "status": "Failure", "message": message, "reason": reason, "code": code });
        if code == 429 {
            v["details"] = serde_json::json!({ "retryAfterSeconds": 2 });
        }
        let s: Status = serde_json::from_value(v).unwrap();
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn api_statuses_map_to_kinds() {
        for (code, kind, retryable) in [
            (409, K8sErrorKind::Conflict, false),
            (422, K8sErrorKind::Invalid, false),
            (403, K8sErrorKind::Forbidden, false),
            (401, K8sErrorKind::Forbidden, false),
            (404, K8sErrorKind::NotFound, false),
            (400, K8sErrorKind::Rejected, false),
            (429, K8sErrorKind::Throttled, true),
            (500, K8sErrorKind::Unavailable, true),
            (503, K8sErrorKind::Unavailable, true),
        ] {
            let e = classify("create pod p", &api(code, "Reason", "the API's words"));
            assert_eq!(e.kind, kind, "{code}");
            assert_eq!(e.kind.is_retryable(), retryable, "{code}");
            assert_eq!(e.http_status, Some(code));
            assert!(e.message.contains("the API's words"), "{}", e.message);
            assert!(e.message.contains("create pod p"), "{}", e.message);
        }
        let e = classify("x", &api(429, "TooManyRequests", "slow down"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        let e = classify("x", &api(403, "Forbidden", "pods is forbidden"));
        assert!(e.message.contains("Role"), "{}", e.message);
    }

    #[test]
    fn kinds_map_to_codes() {
        assert_eq!(K8sErrorKind::BootTimeout.code(), ErrorCode::SpawnTimeout);
        assert_eq!(K8sErrorKind::Unschedulable.code(), ErrorCode::SpawnTimeout);
        assert_eq!(K8sErrorKind::Config.code(), ErrorCode::Config);
        assert_eq!(K8sErrorKind::ImagePull.code(), ErrorCode::Backend);
        assert!(!K8sErrorKind::ImagePull.is_retryable());
        assert!(K8sErrorKind::PodFailed.is_retryable());
    }

    #[test]
    fn flame_error_keeps_kind_and_details() {
        let err: Error = K8sError::new(K8sErrorKind::ImagePull, "no such image")
            .with_reason("ImagePullBackOff")
            .with_pod("flame-r1")
            .into();
        assert_eq!(err.code(), ErrorCode::Backend);
        assert!(!err.is_retryable());
        assert_eq!(K8sError::kind_of(&err), Some(K8sErrorKind::ImagePull));
        let d = err.details().cloned().unwrap_or_default();
        assert_eq!(d["k8s"], "image_pull");
        assert_eq!(d["reason"], "ImagePullBackOff");
        assert_eq!(d["pod"], "flame-r1");
    }
}
