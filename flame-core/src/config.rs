//! Configuration: modes, the secret, timeouts and limits, read from the environment
//! (DESIGN.md §1) or set in code.

use crate::call::RetryPolicy;
use crate::error::{Error, Result};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Which side of FLAME this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Handlers run in-process (tests and development).
    #[default]
    Local,
    /// Calls go to runners.
    Parent,
    /// This process serves handlers for a parent.
    Runner,
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Mode::Local),
            "parent" => Ok(Mode::Parent),
            "runner" => Ok(Mode::Runner),
            _ => Err(Error::config(format!(
                "FLAME_MODE={s:?} is not a mode: expected `local`, `parent` or `runner`"
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Local => "local",
            Mode::Parent => "parent",
            Mode::Runner => "runner",
        })
    }
}

/// A shared secret (HMAC key). Its `Debug` and `Display` never show the value.
///
/// ```
/// let s = flame_core::Secret::new("hunter2");
/// assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// A fresh random secret (two UUID v4s, 244 random bits), e.g. one per pool.
    pub fn generate() -> Self {
        Secret::new(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// The secret's value; only for signing and for handing it to a runner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Process-wide settings. Build with [`Config::default`] and its setters, or read the
/// environment with [`Config::from_env`].
///
/// ```
/// use flame_core::{Config, Mode};
/// let cfg = Config::from_lookup(|k| match k {
///     "FLAME_MODE" => Some("parent".into()),
///     "FLAME_REQUEST_TIMEOUT_MS" => Some("5000".into()),
///     _ => None,
/// }).unwrap();
/// assert_eq!(cfg.mode, Mode::Parent);
/// assert_eq!(cfg.request_timeout.as_millis(), 5000);
///
/// let err = Config::from_lookup(|k| (k == "FLAME_MODE").then(|| "parnet".into())).unwrap_err();
/// assert!(err.to_string().contains("FLAME_MODE"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Mode (`FLAME_MODE`, or `FLAME_RUNNER=true`); default local.
    pub mode: Mode,
    /// HMAC secret (`FLAME_SECRET`).
    pub secret: Option<Secret>,
    /// Runner listen address (`FLAME_LISTEN`); `None` means the transport's default.
    pub listen: Option<SocketAddr>,
    /// Static runner URLs for parent mode (`FLAME_RUNNER_URL`, comma-separated).
    pub runner_urls: Vec<String>,
    /// Pool for calls that name none (`FLAME_DEFAULT_POOL`); default `default`.
    pub default_pool: String,
    /// Default call timeout (`FLAME_REQUEST_TIMEOUT_MS`); default 30 s.
    pub request_timeout: Duration,
    /// Request body limit in bytes (`FLAME_MAX_BODY_BYTES`); default 1 MiB.
    pub max_body_bytes: usize,
    /// Send handler error details to the parent (`FLAME_EXPOSE_ERRORS`); default false.
    pub expose_errors: bool,
    /// A runner exits after this long without authenticated parent contact
    /// (`FLAME_PARENT_TIMEOUT`); default 20 s.
    pub parent_timeout: Duration,
    /// The id of the parent that spawned this runner (`FLAME_PARENT_ID`).
    pub parent_id: Option<String>,
    /// The invoke path; default `/invoke`.
    pub invoke_path: String,
    /// Default retry policy of calls (the last in the precedence of [`crate::call`]); default
    /// [`RetryPolicy::NONE`].
    pub retry: RetryPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Local,
            secret: None,
            listen: None,
            runner_urls: Vec::new(),
            default_pool: "default".into(),
            request_timeout: Duration::from_millis(30_000),
            max_body_bytes: 1_048_576,
            expose_errors: false,
            parent_timeout: Duration::from_millis(20_000),
            parent_id: None,
            invoke_path: "/invoke".into(),
            retry: RetryPolicy::NONE,
        }
    }
}

/// Names of every environment variable flame reads.
pub const ENV_VARS: [&str; 11] = [
    "FLAME_MODE",
    "FLAME_RUNNER",
    "FLAME_SECRET",
    "FLAME_LISTEN",
    "FLAME_RUNNER_URL",
    "FLAME_DEFAULT_POOL",
    "FLAME_REQUEST_TIMEOUT_MS",
    "FLAME_MAX_BODY_BYTES",
    "FLAME_EXPOSE_ERRORS",
    "FLAME_PARENT_TIMEOUT",
    "FLAME_PARENT_ID",
];

impl Config {
    /// Reads the process environment over the defaults.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `lookup` over the defaults (for tests and embedding).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let mut cfg = Config::default();
        cfg.apply_lookup(&lookup)?;
        Ok(cfg)
    }

    /// Applies every variable `lookup` knows on top of this config. A malformed value is a
    /// `CONFIG` error naming the variable and the value.
    pub fn apply_lookup(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(m) = get("FLAME_MODE") {
            self.mode = m.parse()?;
        } else if let Some(r) = get("FLAME_RUNNER") {
            if parse_bool("FLAME_RUNNER", &r)? {
                self.mode = Mode::Runner;
            }
        }
        if let Some(s) = lookup("FLAME_SECRET") {
            self.secret = if s.is_empty() { None } else { Some(Secret::new(s)) };
        }
        if let Some(l) = get("FLAME_LISTEN") {
            self.listen = Some(l.trim().parse().map_err(|_| {
                Error::config(format!(
                    "FLAME_LISTEN={l:?} is not a socket address like 127.0.0.1:8080"
                ))
            })?);
        }
        if let Some(u) = get("FLAME_RUNNER_URL") {
            self.runner_urls = u
                .split(',')
                .map(|s| s.trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            for url in &self.runner_urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::config(format!(
                        "FLAME_RUNNER_URL contains {url:?}, which is not an http(s) URL"
                    )));
                }
            }
        }
        if let Some(p) = get("FLAME_DEFAULT_POOL") {
            self.default_pool = p.trim().to_owned();
        }
        if let Some(t) = get("FLAME_REQUEST_TIMEOUT_MS") {
            self.request_timeout = parse_millis("FLAME_REQUEST_TIMEOUT_MS", &t)?;
        }
        if let Some(b) = get("FLAME_MAX_BODY_BYTES") {
            self.max_body_bytes = parse_positive("FLAME_MAX_BODY_BYTES", &b)? as usize;
        }
        if let Some(e) = get("FLAME_EXPOSE_ERRORS") {
            self.expose_errors = parse_bool("FLAME_EXPOSE_ERRORS", &e)?;
        }
        if let Some(t) = get("FLAME_PARENT_TIMEOUT") {
            self.parent_timeout = parse_millis("FLAME_PARENT_TIMEOUT", &t)?;
        }
        if let Some(p) = get("FLAME_PARENT_ID") {
            self.parent_id = Some(p);
        }
        Ok(())
    }
}

fn parse_positive(var: &str, value: &str) -> Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::config(format!(
            "{var}={value:?} is not a positive whole number"
        ))),
    }
}

fn parse_millis(var: &str, value: &str) -> Result<Duration> {
    parse_positive(var, value)
        .map(Duration::from_millis)
        .map_err(|_| {
            Error::config(format!(
                "{var}={value:?} is not a positive number of milliseconds"
            ))
        })
}

fn parse_bool(var: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(format!(
            "{var}={value:?} is not a boolean (true/false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn env(pairs: &[(&str, &str)]) -> Result<Config> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_match_the_design() {
        let c = env(&[]).unwrap();
        assert_eq!(c.mode, Mode::Local);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.parent_timeout, Duration::from_secs(20));
        assert_eq!(c.default_pool, "default");
        assert!(!c.expose_errors);
    }

    #[test]
    fn mode_resolution_order() {
        assert_eq!(env(&[("FLAME_RUNNER", "true")]).unwrap().mode, Mode::Runner);
        assert_eq!(
            env(&[("FLAME_MODE", "parent"), ("FLAME_RUNNER", "true")])
                .unwrap()
                .mode,
            Mode::Parent
        );
        assert_eq!(env(&[("FLAME_MODE", "RUNNER")]).unwrap().mode, Mode::Runner);
    }

    #[test]
    fn malformed_values_name_variable_and_value() {
        for (k, v) in [
            ("FLAME_MODE", "parnet"),
            ("FLAME_REQUEST_TIMEOUT_MS", "abc"),
            ("FLAME_REQUEST_TIMEOUT_MS", "0"),
            ("FLAME_MAX_BODY_BYTES", "-1"),
            ("FLAME_EXPOSE_ERRORS", "maybe"),
            ("FLAME_LISTEN", "nowhere"),
            ("FLAME_RUNNER_URL", "ftp://x"),
            ("FLAME_PARENT_TIMEOUT", "1.5s"),
        ] {
            let e = env(&[(k, v)]).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Config);
            assert!(e.message().contains(k) && e.message().contains(v), "{e}");
        }
    }

    #[test]
    fn values_are_read() {
        let c = env(&[
            ("FLAME_SECRET", "s3"),
            ("FLAME_LISTEN", "127.0.0.1:9000"),
            ("FLAME_RUNNER_URL", "http://127.0.0.1:1/, http://127.0.0.1:2"),
            ("FLAME_EXPOSE_ERRORS", "1"),
            ("FLAME_MAX_BODY_BYTES", "10"),
            ("FLAME_PARENT_ID", "p1"),
        ])
        .unwrap();
        assert_eq!(c.secret.unwrap().expose(), "s3");
        assert_eq!(c.listen.unwrap().port(), 9000);
        assert_eq!(c.runner_urls, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(c.expose_errors);
        assert_eq!(c.max_body_bytes, 10);
        assert_eq!(c.parent_id.as_deref(), Some("p1"));
    }

    #[test]
    fn secret_never_prints() {
        let c = env(&[("FLAME_SECRET", "topsecret")]).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
