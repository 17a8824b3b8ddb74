//! Settings of the Fly backend: which app and image, the API token, the machine size, what
//! the runners get in their environment, and how the API client retries.

use flame_core::{Error, Result, Secret};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The public Machines API (`FLY_API_HOSTNAME` overrides it, e.g. `http://_api.internal:4280`
/// from inside the Fly private network).
pub const DEFAULT_API_URL: &str = "https://api.machines.dev";

/// The port a runner machine listens on by default (`FLAME_LISTEN=[::]:8080`).
pub const DEFAULT_RUNNER_PORT: u16 = 8080;

/// Every environment variable [`FlyConfig::from_env`] reads.
pub const ENV_VARS: [&str; 15] = [
    "FLY_APP_NAME",
    "FLY_IMAGE_REF",
    "FLY_API_TOKEN",
    "FLY_API_HOSTNAME",
    "FLY_REGION",
    "FLY_MACHINE_ID",
    "FLAME_FLY_REGION",
    "FLAME_FLY_IMAGE",
    "FLAME_FLY_CPU_KIND",
    "FLAME_FLY_CPUS",
    "FLAME_FLY_MEMORY_MB",
    "FLAME_FLY_GPU_KIND",
    "FLAME_FLY_GPUS",
    "FLAME_FLY_PORT",
    "FLAME_FLY_FORWARD_ENV",
];

/// The machine size (`config.guest` of the create request).
///
/// Defaults follow Elixir FLAME's FlyBackend: `performance` CPUs, as many as this (parent)
/// process sees, 4096 MB of memory, no GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// `shared` or `performance`.
    pub cpu_kind: String,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory in MB.
    pub memory_mb: u32,
    /// GPU model (e.g. `a100-pcie-40gb`, `l40s`), if any.
    pub gpu_kind: Option<String>,
    /// Number of GPUs; `1` when `gpu_kind` is set and this is not.
    pub gpus: Option<u32>,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            cpu_kind: "performance".into(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_mb: 4096,
            gpu_kind: None,
            gpus: None,
        }
    }
}

/// What the machine runs (`config.init`): empty means the image's own entrypoint and command,
/// which is what a FLAME runner wants (same binary, `FLAME_MODE=runner` decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Init {
    /// Replaces the image's `CMD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Replaces the image's `ENTRYPOINT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces both (`exec` form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
}

/// How the API client retries: 5xx replies and connection failures back off exponentially with
/// jitter; 429 waits for `Retry-After` (at most `max_retry_after`). 409, 412 and 422 are never
/// retried here: they become typed errors for the pool to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Largest backoff delay.
    pub max_delay: Duration,
    /// A `Retry-After` longer than this ends the retries at once.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Settings of a [`FlyBackend`](crate::FlyBackend).
///
/// The token's value never shows in `Debug` output, errors or logs; runner environment values
/// are not shown either (only their names).
///
/// ```
/// use flame_backend_fly::FlyConfig;
/// let cfg = FlyConfig::from_lookup(|k| match k {
///     "FLY_APP_NAME" => Some("my-app".into()),
///     "FLY_IMAGE_REF" => Some("registry.fly.io/my-app:deployment-01".into()),
///     "FLY_API_TOKEN" => Some("fm2_very_secret".into()),
///     "FLY_REGION" => Some("ams".into()),
///     "FLAME_FLY_MEMORY_MB" => Some("2048".into()),
///     _ => None,
/// }).unwrap();
/// assert_eq!(cfg.app, "my-app");
/// assert_eq!(cfg.region.as_deref(), Some("ams"));
/// assert_eq!(cfg.guest.memory_mb, 2048);
/// assert!(!format!("{cfg:?}").contains("fm2_very_secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct FlyConfig {
    /// The Fly app the runner machines are created in (`FLY_APP_NAME`).
    pub app: String,
    /// The image runners boot (`FLY_IMAGE_REF`: the parent's own image).
    pub image: String,
    /// The Machines API token (`FLY_API_TOKEN`).
    pub token: Secret,
    /// Base URL of the Machines API (`FLY_API_HOSTNAME`, default [`DEFAULT_API_URL`]).
    pub api_url: String,
    /// Region for runners (`FLAME_FLY_REGION`, else the parent's `FLY_REGION`); `None` lets
    /// Fly choose.
    pub region: Option<String>,
    /// Machine size.
    pub guest: Guest,
    /// What the machine runs.
    pub init: Init,
    /// Extra environment for every runner: only what is listed here (and the runner variables
    /// flame sets) reaches a runner, nothing else of the parent's environment.
    pub env: BTreeMap<String, String>,
    /// Extra machine metadata (the `flame_*` keys are always set by the backend and win).
    pub metadata: BTreeMap<String, String>,
    /// Port runners listen on (on `[::]`, the 6PN private network).
    pub runner_port: u16,
    /// The parent's own machine id (`FLY_MACHINE_ID`), recorded as `flame_parent_machine`.
    pub parent_machine_id: Option<String>,
    /// How long `terminate` lets a runner drain after the stop signal before forcing.
    pub stop_timeout: Duration,
    /// Timeout of one API request (the `/wait` long-poll gets its own, longer one).
    pub request_timeout: Duration,
    /// Retries of the API client.
    pub retry: RetryPolicy,
}

impl fmt::Debug for FlyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlyConfig")
            .field("app", &self.app)
            .field("image", &self.image)
            .field("token", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("guest", &self.guest)
            .field("init", &self.init)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("metadata", &self.metadata)
            .field("runner_port", &self.runner_port)
            .field("parent_machine_id", &self.parent_machine_id)
            .field("stop_timeout", &self.stop_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl FlyConfig {
    /// Settings for `app`, booting `image`, authenticated by `token`; everything else default.
    pub fn new(app: impl Into<String>, image: impl Into<String>, token: impl Into<String>) -> Self {
        FlyConfig {
            app: app.into(),
            image: image.into(),
            token: Secret::new(token.into()),
            api_url: DEFAULT_API_URL.into(),
            region: None,
            guest: Guest::default(),
            init: Init::default(),
            env: BTreeMap::new(),
            metadata: BTreeMap::new(),
            runner_port: DEFAULT_RUNNER_PORT,
            parent_machine_id: None,
            stop_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// Reads the variables a Fly machine sees (`FLY_APP_NAME`, `FLY_IMAGE_REF`,
    /// `FLY_API_TOKEN`, `FLY_REGION`, `FLY_MACHINE_ID`, optional `FLY_API_HOSTNAME`) and the
    /// optional `FLAME_FLY_*` settings (see [`ENV_VARS`]). A missing required variable or a
    /// malformed value is a `CONFIG` error naming the variable (never the token's value).
    pub fn from_env() -> Result<Self> {
        FlyConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`FlyConfig::from_env`] through `lookup` (for tests and embedding).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let required = |k: &str, what: &str| {
            get(k).ok_or_else(|| {
                Error::config(format!(
                    "{k} is not set: the Fly backend needs {what} (set it, or build FlyConfig::new in code)"
                ))
            })
        };
        let app = required("FLY_APP_NAME", "the Fly app to create runner machines in")?;
        let image = match get("FLAME_FLY_IMAGE") {
            Some(image) => image,
            None => required("FLY_IMAGE_REF", "the image runners boot")?,
        };
        let token = required("FLY_API_TOKEN", "a Machines API token")?;
        let mut cfg = FlyConfig::new(app, image, token);
        if let Some(url) = get("FLY_API_HOSTNAME") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::config(format!(
                    "FLY_API_HOSTNAME={url:?} is not an http(s) URL"
                )));
            }
            cfg.api_url = url.trim_end_matches('/').to_owned();
        }
        cfg.region = get("FLAME_FLY_REGION").or_else(|| get("FLY_REGION"));
        cfg.parent_machine_id = get("FLY_MACHINE_ID");
        if let Some(kind) = get("FLAME_FLY_CPU_KIND") {
            cfg.guest.cpu_kind = kind;
        }
        if let Some(v) = get("FLAME_FLY_CPUS") {
            cfg.guest.cpus = parse_positive("FLAME_FLY_CPUS", &v)?;
        }
        if let Some(v) = get("FLAME_FLY_MEMORY_MB") {
            cfg.guest.memory_mb = parse_positive("FLAME_FLY_MEMORY_MB", &v)?;
        }
        cfg.guest.gpu_kind = get("FLAME_FLY_GPU_KIND");
        if let Some(v) = get("FLAME_FLY_GPUS") {
            cfg.guest.gpus = Some(parse_positive("FLAME_FLY_GPUS", &v)?);
        }
        if let Some(v) = get("FLAME_FLY_PORT") {
            cfg.runner_port = u16::try_from(parse_positive("FLAME_FLY_PORT", &v)?)
                .map_err(|_| Error::config(format!("FLAME_FLY_PORT={v:?} is not a port")))?;
        }
        if let Some(names) = get("FLAME_FLY_FORWARD_ENV") {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Some(value) = lookup(name) {
                    cfg.env.insert(name.to_owned(), value);
                }
            }
        }
        Ok(cfg)
    }

    /// Sets the Machines API base URL (no trailing slash needed).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into().trim_end_matches('/').to_owned();
        self
    }

    /// Sets the runners' region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets the machine size.
    pub fn guest(mut self, guest: Guest) -> Self {
        self.guest = guest;
        self
    }

    /// Sets `cpu_kind` and `cpus`.
    pub fn cpus(mut self, cpu_kind: impl Into<String>, cpus: u32) -> Self {
        self.guest.cpu_kind = cpu_kind.into();
        self.guest.cpus = cpus;
        self
    }

    /// Sets the memory in MB.
    pub fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.guest.memory_mb = memory_mb;
        self
    }

    /// Asks for `gpus` GPUs of `kind`.
    pub fn gpu(mut self, kind: impl Into<String>, gpus: u32) -> Self {
        self.guest.gpu_kind = Some(kind.into());
        self.guest.gpus = Some(gpus);
        self
    }

    /// Sets what the machine runs.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Adds one variable to every runner's environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Forwards these variables of the parent's environment (those that are set) to every
    /// runner. Nothing else of the parent's environment reaches a runner.
    pub fn forward_env<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        flame_core::backend::forward_parent_env(&mut self.env, names, "fly");
        self
    }

    /// Adds one metadata entry to every runner machine.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the port runners listen on.
    pub fn runner_port(mut self, port: u16) -> Self {
        self.runner_port = port;
        self
    }

    /// Sets how long `terminate` lets a runner drain.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Sets the timeout of one API request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the retry policy of the API client.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

fn parse_positive(var: &str, value: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::config(format!(
            "{var}={value:?} is not a positive whole number"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flame_core::ErrorCode;

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    const BASE: &[(&str, &str)] = &[
        ("FLY_APP_NAME", "app"),
        ("FLY_IMAGE_REF", "registry.fly.io/app:1"),
        ("FLY_API_TOKEN", "tok_abc"),
    ];

    #[test]
    fn defaults_follow_elixir_flame() {
        let cfg = FlyConfig::from_lookup(lookup(BASE)).unwrap();
        assert_eq!(cfg.api_url, DEFAULT_API_URL);
        assert_eq!(cfg.guest.cpu_kind, "performance");
        assert_eq!(cfg.guest.memory_mb, 4096);
        assert!(cfg.guest.cpus >= 1);
        assert_eq!(cfg.guest.gpu_kind, None);
        assert_eq!(cfg.runner_port, 8080);
        assert!(cfg.env.is_empty());
    }

    #[test]
    fn missing_required_variables_are_named() {
        for missing in ["FLY_APP_NAME", "FLY_IMAGE_REF", "FLY_API_TOKEN"] {
            let err =
                FlyConfig::from_lookup(|k| if k == missing { None } else { lookup(BASE)(k) }).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Config);
            assert!(err.message().contains(missing), "{err}");
        }
    }

    #[test]
    fn settings_and_forwarding_are_read() {
        const ALL: &[(&str, &str)] = &[
            ("FLY_APP_NAME", "app"),
            ("FLY_IMAGE_REF", "registry.fly.io/app:1"),
            ("FLY_API_TOKEN", "tok_abc"),
            ("FLY_API_HOSTNAME", "http://_api.internal:4280/"),
            ("FLY_REGION", "ams"),
            ("FLAME_FLY_REGION", "ord"),
            ("FLY_MACHINE_ID", "p123"),
            ("FLAME_FLY_CPU_KIND", "shared"),
            ("FLAME_FLY_CPUS", "2"),
            ("FLAME_FLY_MEMORY_MB", "1024"),
            ("FLAME_FLY_GPU_KIND", "l40s"),
            ("FLAME_FLY_GPUS", "2"),
            ("FLAME_FLY_PORT", "9000"),
            ("FLAME_FLY_FORWARD_ENV", "DATABASE_URL, MISSING"),
            ("DATABASE_URL", "postgres://db"),
        ];
        let cfg = FlyConfig::from_lookup(lookup(ALL)).unwrap();
        assert_eq!(cfg.api_url, "http://_api.internal:4280");
        assert_eq!(cfg.region.as_deref(), Some("ord"));
        assert_eq!(cfg.parent_machine_id.as_deref(), Some("p123"));
        assert_eq!(
            cfg.guest,
            Guest {
                cpu_kind: "shared".into(),
                cpus: 2,
                memory_mb: 1024,
                gpu_kind: Some("l40s".into()),
                gpus: Some(2)
            }
        );
        assert_eq!(cfg.runner_port, 9000);
        assert_eq!(
            cfg.env.into_iter().collect::<Vec<_>>(),
            vec![("DATABASE_URL".to_string(), "postgres://db".to_string())]
        );
    }

    #[test]
    fn malformed_values_are_config_errors() {
        for (k, v) in [
            ("FLAME_FLY_CPUS", "many"),
            ("FLAME_FLY_MEMORY_MB", "0"),
            ("FLAME_FLY_PORT", "70000"),
            ("FLY_API_HOSTNAME", "api.machines.dev"),
        ] {
            let err = FlyConfig::from_lookup(|q| {
                if q == k {
                    Some(v.to_string())
                } else {
                    lookup(BASE)(q)
                }
            })
            .unwrap_err();
            assert_eq!(err.code(), ErrorCode::Config);
            assert!(err.message().contains(k), "{err}");
        }
    }

    #[test]
    fn debug_hides_token_and_env_values() {
        let cfg = FlyConfig::new("app", "img", "tok_supersecret").env("DATABASE_URL", "postgres://pw@db");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("tok_supersecret"), "{shown}");
        assert!(!shown.contains("postgres://pw@db"), "{shown}");
        assert!(shown.contains("DATABASE_URL"));
    }
}
