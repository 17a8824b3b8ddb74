//! The test runner of flame-backend-docker: one binary that the tests pack into an image.
//!
//! - `FLAME_MODE=runner` (how the backend starts it): serves `math/add`, `utils/nonce` and
//!   `utils/whoami` over HTTP and prints `FLAME_READY <url>`.
//! - `docker_runner hold <image> <app> <parent-id> <parent-timeout-ms>`: a parent that spawns one
//!   runner from `<image>`, prints `SPAWNED <container-id> <url>` and then pings it (signed)
//!   forever, like a pool's health checks (a test kills it with SIGKILL and checks the runner's
//!   failsafe removes the container).
//! - `docker_runner own-image <app>`: a parent that runs inside a container, spawns one runner
//!   from its own image (nothing configured), calls it, prints `IMAGE <image>`,
//!   `PARENT <its own whoami json>` and `WHOAMI <the runner's json>`, terminates the runner and exits.
//! - `docker_runner never-ready`: prints a line and sleeps, never announcing `FLAME_READY`.

use flame_backend_docker::DockerBackend;
use flame_core::{Backend, Context, Error, Flame, Method, Registry, Secret, SpawnRequest};
use flame_http::{HttpExt, HttpTransport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `math/add`.
const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// `utils/nonce`: a fresh random string per call.
const NONCE: Method<(), String> = Method::new("utils", "nonce");
/// `utils/whoami`: where the runner runs (pid, hostname, cgroup, executable, pid 1).
const WHOAMI: Method<(), WhoAmI> = Method::new("utils", "whoami");

/// What `utils/whoami` answers.
#[derive(Debug, Serialize, Deserialize)]
struct WhoAmI {
    pid: u32,
    hostname: String,
    cgroup: String,
    exe: String,
    pid1: String,
}

fn whoami() -> WhoAmI {
    WhoAmI {
        pid: std::process::id(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        pid1: std::fs::read("/proc/1/cmdline")
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
            .unwrap_or_default(),
    }
}

fn registry() -> Registry {
    Registry::new()
        .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
        .handle(NONCE, |ctx: Context, (): ()| async move {
            Ok(format!("{}-{}", ctx.invocation_id(), std::process::id()))
        })
        .handle(WHOAMI, |_ctx: Context, (): ()| async move { Ok(whoami()) })
}

fn spawn_request(app: &str, parent: &str, parent_timeout_ms: u64) -> SpawnRequest {
    let secret = Secret::generate();
    let runner_id = format!("r-{}", std::process::id());
    let env = BTreeMap::from([
        ("FLAME_MODE".to_owned(), "runner".to_owned()),
        ("FLAME_PARENT_ID".to_owned(), parent.to_owned()),
        ("FLAME_PARENT_TIMEOUT".to_owned(), parent_timeout_ms.to_string()),
        ("FLAME_SECRET".to_owned(), secret.expose().to_owned()),
    ]);
    SpawnRequest {
        runner_id,
        app: app.to_owned(),
        pool: "default".to_owned(),
        parent_id: parent.to_owned(),
        env,
        labels: BTreeMap::new(),
        boot_timeout: Duration::from_secs(30),
        secret: Some(secret),
        prober: Arc::new(HttpTransport::new()),
    }
}

async fn parent(args: &[String]) -> Result<(), Error> {
    match args.first().map(String::as_str) {
        Some("hold") => {
            let [_, image, app, parent_id, timeout_ms] = args else {
                return Err(Error::config(
                    "usage: hold <image> <app> <parent-id> <timeout-ms>",
                ));
            };
            let backend = DockerBackend::builder()
                .image(image.clone())
                .use_own_image(false)
                .build()?;
            let timeout_ms = timeout_ms
                .parse()
                .map_err(|_| Error::config("timeout-ms is not a number"))?;
            let handle = backend.spawn(spawn_request(app, parent_id, timeout_ms)).await?;
            println!("SPAWNED {} {}", handle.backend_id, handle.endpoint.url);
            // Keep the runner's failsafe fed, as a pool's health pings do, until killed.
            let transport = HttpTransport::new();
            loop {
                tokio::time::sleep(Duration::from_millis(timeout_ms / 5)).await;
                if let Err(e) = flame_core::Transport::ping(&transport, &handle.endpoint).await {
                    eprintln!("ping failed: {e}");
                }
            }
        }
        Some("own-image") => {
            let app = args.get(1).cloned().unwrap_or_else(|| "own-image".into());
            let backend = DockerBackend::builder().build()?;
            println!("IMAGE {}", backend.runner_image().await?);
            println!("PARENT {}", serde_json::to_string(&whoami())?);
            let request = spawn_request(&app, &format!("p-{}", std::process::id()), 20_000);
            let handle = backend.spawn(request).await?;
            let transport = HttpTransport::new();
            let invocation = flame_core::Invocation {
                service_id: "utils".into(),
                method_id: "whoami".into(),
                args: flame_core::codec::encode_args(&())?,
                deadline: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
                idempotency_key: None,
                trace: BTreeMap::new(),
                attempt: 1,
            };
            let result = flame_core::Transport::invoke(&transport, &handle.endpoint, &invocation).await;
            backend.terminate(&handle).await?;
            let who: WhoAmI = flame_core::codec::decode_result(&result?)?;
            println!("WHOAMI {}", serde_json::to_string(&who)?);
            Ok(())
        }
        _ => Err(Error::config(
            "set FLAME_MODE=runner, or pass `hold`, `own-image` or `never-ready`",
        )),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("never-ready") {
        // A runner that boots forever: it never announces `FLAME_READY`.
        println!("booting, but never ready");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return Ok(());
    }
    // As in every flame binary, FLAME_MODE decides: a runner ignores its arguments.
    let runner = std::env::var("FLAME_MODE").is_ok_and(|m| m == "runner");
    if !runner && !args.is_empty() {
        return parent(&args).await;
    }
    // Runner mode serves until stopped, then exits the process.
    let flame = Flame::builder(registry()).http().from_env()?.start().await?;
    flame.shutdown().await
}
