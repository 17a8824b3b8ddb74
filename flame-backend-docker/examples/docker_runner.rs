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
//! - `docker_runner ready-then-die`: announces `FLAME_READY` with a URL nothing serves, prints
//!   `fatal: lost the database` to stderr and exits with code 3 half a second later (a runner
//!   that dies after it was placed).
//! - `docker_runner parent <image> <app> <runners> <call-ms>`: a real flame parent (an elastic
//!   pool `default` of exactly `<runners>` Docker runners, failsafe window from
//!   `FLAME_PARENT_TIMEOUT`, 10 s boot timeout). It prints `PARENT <its parent id>`, then
//!   `READY` once its runners serve. With `<call-ms>` > 0, one caller per runner calls
//!   `utils/sleep(<call-ms>)` over and over, printing `CALL_START <caller> <n> <unix-ms>` and
//!   `CALL_OK …` or `CALL_ERR <caller> <n> <unix-ms> <error>`. On stdin, `reap` runs this
//!   parent's own reap (the scope `start` reaps with) and prints `REAPED <ended> <start-ms>
//!   <end-ms>` (or `REAP_ERR <error>`); `exit` or end of input shuts it down (runners ended)
//!   and exits. The two-parent tests run two of these side by side and `kill -9` one. With
//!   `DOCKER_RUNNER_LOCAL_POOL=<state dir>` it also has a pool `local` of one LocalProcess runner
//!   (this binary on the host, pid files in that directory) — a second backend in one parent —
//!   waits for it too, and `reap` reaps both backends (`REAPED` then counts both).

use flame_backend_docker::{DockerBackend, PullPolicy};
use flame_core::backend::readiness::start_runner;
use flame_core::testkit::parent_program::{serve_parent, Callers};
use flame_core::{
    Backend, Context, Error, Flame, LocalProcess, Method, Mode, PoolConfig, Registry, Secret, SpawnRequest,
};
use flame_http::{HttpExt, HttpTransport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `math/add`.
const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
/// `utils/nonce`: a fresh random string per call.
const NONCE: Method<(), String> = Method::new("utils", "nonce");
/// `utils/sleep`: sleeps this many milliseconds, then answers them (a call that stays in
/// flight).
const SLEEP: Method<u64, u64> = Method::new("utils", "sleep");
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
        .handle(SLEEP, |_ctx: Context, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
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
            let handle = start_runner(
                &backend,
                spawn_request(app, parent_id, timeout_ms),
                &HttpTransport::new(),
            )
            .await?;
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
            let handle = start_runner(&backend, request, &HttpTransport::new()).await?;
            let transport = HttpTransport::new();
            let invocation = flame_core::Invocation {
                service_id: "utils".into(),
                method_id: "whoami".into(),
                args: flame_core::codec::encode_args(&())?.into(),
                deadline: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
                idempotency_key: None,
                trace: BTreeMap::new(),
                attempt: 1,
                cast: false,
                stream: false,
                limits: Default::default(),
            };
            let result = flame_core::Transport::invoke(&transport, &handle.endpoint, &invocation).await;
            backend.terminate(&handle).await?;
            let who: WhoAmI = result?.decode().await?;
            println!("WHOAMI {}", serde_json::to_string(&who)?);
            Ok(())
        }
        Some("parent") => {
            let [_, image, app, runners, call_ms] = args else {
                return Err(Error::config("usage: parent <image> <app> <runners> <call-ms>"));
            };
            let runners: usize = runners
                .parse()
                .map_err(|_| Error::config("runners is not a number"))?;
            let call_ms: u64 = call_ms
                .parse()
                .map_err(|_| Error::config("call-ms is not a number"))?;
            let backend = DockerBackend::builder()
                .image(image.clone())
                .use_own_image(false)
                .pull_policy(PullPolicy::Never)
                .stop_grace(Duration::from_secs(2))
                .label("flame.test", "1")
                .build()?;
            serve_as_parent(Arc::new(backend), app, runners, call_ms).await
        }
        _ => Err(Error::config(
            "set FLAME_MODE=runner, or pass `hold`, `own-image`, `parent` or `never-ready`",
        )),
    }
}

/// The `parent` mode: a real flame parent with `runners` runners, callers that keep calls in
/// flight, and `reap` / `exit` commands on stdin.
async fn serve_as_parent(
    backend: Arc<dyn Backend>,
    app: &str,
    runners: usize,
    call_ms: u64,
) -> Result<(), Error> {
    let pool_config = |n: usize| {
        PoolConfig::default()
            .min(n)
            .max(n)
            .max_concurrency(1)
            .boot_timeout(Duration::from_secs(10))
            .health_interval(Duration::from_secs(1))
            .idle_shutdown_after(Duration::from_secs(3600))
    };
    let mut builder = Flame::builder(registry())
        .http()
        .from_env()?
        .mode(Mode::Parent)
        .app(app)
        .backend_shared(backend.clone())
        .pool("default", pool_config(runners));
    // A second backend in the same parent: one LocalProcess runner (this binary, on the host).
    let local = match std::env::var("DOCKER_RUNNER_LOCAL_POOL") {
        Ok(dir) if !dir.is_empty() => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::config(format!("cannot find this executable: {e}")))?;
            let local = LocalProcess::command(exe, Vec::<String>::new())
                .state_dir(dir)
                .grace(Duration::from_secs(2));
            builder = builder.pool_with("local", pool_config(1), local.clone());
            Some(local)
        }
        _ => None,
    };
    let flame = builder.start().await?;
    let pools = [("default", runners), ("local", usize::from(local.is_some()))];
    let mut reapers = vec![backend];
    if let Some(local) = local {
        reapers.push(Arc::new(local));
    }
    let callers = Callers {
        method: SLEEP,
        ms: call_ms,
        callers: runners,
    };
    serve_parent(flame, &pools, Some(callers), reapers).await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ready-then-die") {
        // A port nobody serves: the readiness probe's pings are refused until the engine says
        // the container stopped.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        println!("FLAME_READY http://127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!("fatal: lost the database");
        std::process::exit(3);
    }
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
