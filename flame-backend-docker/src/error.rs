//! dockerd errors as flame [`Error`]s: code `BACKEND`, the engine's own message, and a
//! retryable flag that says whether trying again can help.

use bollard::errors::Error as DockerError;
use flame_core::{Error, ErrorCode};
use serde_json::json;

/// The HTTP status dockerd answered with, if the error is an engine reply.
pub(crate) fn status_of(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether `err` is dockerd's "no such container/image" (HTTP 404).
pub(crate) fn is_not_found(err: &DockerError) -> bool {
    status_of(err) == Some(404)
}

/// Whether `err` is dockerd's "conflict" (HTTP 409), e.g. a removal already in progress.
pub(crate) fn is_conflict(err: &DockerError) -> bool {
    status_of(err) == Some(409)
}

/// Engine messages of 5xx replies that no retry can fix.
const PERMANENT_5XX: [&str; 6] = [
    "could not select device driver",
    "invalid",
    "not supported",
    "unknown runtime",
    "executable file not found",
    "no such file or directory",
];

/// Maps a bollard error of operation `op` against the engine at `host` to a typed
/// [`ErrorCode::Backend`] error (or [`ErrorCode::Config`] for an unusable `DOCKER_HOST`).
///
/// Retryable: the engine is unreachable or slow (connection refused, socket missing, timeout),
/// or answered 5xx (busy, out of resources). Not retryable: 4xx replies such as 404 (image or
/// container missing), 409 (name conflict), 400 (bad configuration), and pull errors such as
/// "manifest unknown".
pub(crate) fn engine_error(op: &str, host: &str, err: DockerError) -> Error {
    let (message, retryable, status) = match &err {
        DockerError::DockerResponseServerError { status_code, message } => {
            let lower = message.to_ascii_lowercase();
            let retryable = match *status_code {
                500..=599 => !PERMANENT_5XX.iter().any(|p| lower.contains(p)),
                408 | 429 => true,
                _ => false,
            };
            (
                format!("dockerd refused to {op}: {message} (HTTP {status_code})"),
                retryable,
                Some(*status_code),
            )
        }
        DockerError::RequestTimeoutError => (
            format!("dockerd at {host} did not answer `{op}` in time"),
            true,
            None,
        ),
        DockerError::SocketNotFoundError(path) => (
            format!("cannot reach dockerd to {op}: no socket at {path} (is dockerd running?)"),
            true,
            None,
        ),
        DockerError::HyperLegacyError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. } => (
            format!("cannot reach dockerd at {host} to {op}: {}", chain(&err)),
            true,
            None,
        ),
        DockerError::UnsupportedURISchemeError { uri } => {
            return Error::config(format!(
                "DOCKER_HOST={uri:?} is not supported: use unix:///path/docker.sock or tcp://host:port"
            ))
            .with_source(err);
        }
        DockerError::DockerStreamError { error } => {
            let lower = error.to_ascii_lowercase();
            let retryable = ["timeout", "connection", "temporar", "toomanyrequests"]
                .iter()
                .any(|p| lower.contains(p));
            (format!("dockerd failed to {op}: {error}"), retryable, None)
        }
        other => (format!("dockerd failed to {op}: {other}"), false, None),
    };
    let mut details = json!({ "engine": "docker", "operation": op, "host": host });
    if let Some(status) = status {
        details["status"] = json!(status);
    }
    if let DockerError::DockerResponseServerError { message, .. } = &err {
        details["engine_message"] = json!(message);
    }
    Error::new(ErrorCode::Backend, message)
        .with_retryable(retryable)
        .with_details(details)
        .with_source(err)
}

/// The error and its sources, joined: hyper hides "connection refused" two levels down.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn missing_image_and_conflicts_are_permanent() {
        let e = engine_error(
            "create container",
            "unix:///x",
            server(404, "No such image: nope:1"),
        );
        assert_eq!(e.code(), ErrorCode::Backend);
        assert!(!e.is_retryable());
        assert!(e.message().contains("No such image: nope:1"), "{e}");
        assert_eq!(e.details().unwrap()["status"], 404);
        let e = engine_error(
            "create container",
            "unix:///x",
            server(409, "Conflict. The container name is already in use"),
        );
        assert!(!e.is_retryable());
        assert!(e.message().contains("already in use"));
    }

    #[test]
    fn engine_trouble_is_retryable() {
        assert!(engine_error("x", "h", server(500, "no space left on device")).is_retryable());
        assert!(engine_error("x", "h", server(503, "busy")).is_retryable());
        assert!(engine_error("x", "h", DockerError::RequestTimeoutError).is_retryable());
        assert!(engine_error("x", "h", DockerError::SocketNotFoundError("/nope".into())).is_retryable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = engine_error("ping", "tcp://127.0.0.1:1", DockerError::from(io));
        assert!(e.is_retryable());
        assert!(
            e.message().contains("127.0.0.1:1") && e.message().contains("refused"),
            "{e}"
        );
    }

    #[test]
    fn permanent_5xx_are_not_retryable() {
        let e = engine_error(
            "start container",
            "h",
            server(
                500,
                "could not select device driver \"nvidia\" with capabilities: [[gpu]]",
            ),
        );
        assert!(!e.is_retryable());
        assert!(e.message().contains("nvidia"));
    }

    #[test]
    fn bad_scheme_is_config() {
        let e = engine_error(
            "connect",
            "ftp://x",
            DockerError::UnsupportedURISchemeError {
                uri: "ftp://x".into(),
            },
        );
        assert_eq!(e.code(), ErrorCode::Config);
    }
}
