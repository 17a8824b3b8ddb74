//! `cargo run --release -p flame-bench`: every server side by side in one run, on 127.0.0.1,
//! driven by the same load generator; then the full parent paths, spawn → first result and
//! idle memory. Prints markdown tables (the ones in `BENCHMARKS.md`).
//!
//! ```text
//! flame-bench [--connections N] [--warmup-ms MS] [--duration-ms MS] [--max-requests N]
//!             [--client-threads N] [--repeat N] [--rounds N] [--no-bun] [--no-docker] [--quick]
//!             [--no-payloads] [--sizes-mib 1,16,256] [--payload-reps N] [--stream-calls N]
//!             [--sustained-ms MS]
//! flame-bench echo-server        # the raw hyper echo server (started by the run itself)
//! flame-bench runner             # our runner (FLAME_* from the environment)
//! flame-bench load URL [--secret S] [--echo] [--binary] [flags]   # only the load generator
//! ```
//!
//! Environment: `FLAME_BENCH_RUNNER` (a prebuilt `interop` binary; else the run builds it with
//! cargo in its own profile), and Bun as the interop tests find it (`FLAME_BUN`, the cache of
//! `.ci/setup/30-bun.sh`, `PATH`; `FLAME_REFERENCE_JS`).

use bytes::Bytes;
use flame_bench::loadgen::{self, LoadConfig, RequestKind};
use flame_bench::methods::ADD;
use flame_bench::payload::{self, RawClient, StreamTiming};
use flame_bench::procs::{self, Bun, Child, TempDir};
use flame_bench::stats::{human, Summary};
use flame_core::codec::Codec;
use flame_core::pool::RunnerTemplate;
use flame_core::{
    Backend, Config, Endpoint, Flame, Invocation, LocalProcess, Mode, PoolConfig, Registry, Secret, Transport,
};
use flame_http::{ClientOptions, HttpExt, HttpTransport};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::time::Instant;

/// The reference's runner and parent scripts (written to a temporary copy of the reference).
const TS_RUNNER: &str = include_str!("../ts/bench_runner.ts");
const TS_PARENT: &str = include_str!("../ts/bench_parent.ts");

#[derive(Debug, Clone)]
struct Args {
    load: LoadConfig,
    client_threads: usize,
    repeat: usize,
    rounds: usize,
    bun: bool,
    docker: bool,
    payloads: bool,
    sizes_mib: Vec<u64>,
    payload_reps: usize,
    stream_calls: usize,
    sustained: Option<Duration>,
}

fn usage(err: &str) -> ! {
    eprintln!("flame-bench: {err}");
    eprintln!(
        "usage: flame-bench [--connections N] [--warmup-ms MS] [--duration-ms MS] [--max-requests N] \
         [--client-threads N] [--repeat N] [--rounds N] [--no-bun] [--no-docker] [--quick] [--no-payloads] \
         [--sizes-mib 1,16,256] [--payload-reps N] [--stream-calls N] [--sustained-ms MS] | echo-server | runner \
         | load URL [--secret S] [--echo] [--binary]"
    );
    std::process::exit(2)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        load: LoadConfig::default(),
        client_threads: 1,
        repeat: 1,
        rounds: 10,
        bun: true,
        docker: true,
        payloads: true,
        sizes_mib: vec![1, 16, 256],
        payload_reps: 3,
        stream_calls: 20,
        sustained: None,
    };
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&format!("{name} needs a number")))
        };
        match flag.as_str() {
            "--connections" => a.load.connections = num("--connections").max(1) as usize,
            "--warmup-ms" => a.load.warmup = Duration::from_millis(num("--warmup-ms")),
            "--duration-ms" => a.load.duration = Duration::from_millis(num("--duration-ms").max(1)),
            "--max-requests" => a.load.max_requests = num("--max-requests").max(1),
            "--client-threads" => a.client_threads = num("--client-threads").max(1) as usize,
            "--repeat" => a.repeat = num("--repeat").max(1) as usize,
            "--rounds" => a.rounds = num("--rounds").max(1) as usize,
            "--no-bun" => a.bun = false,
            "--no-docker" => a.docker = false,
            "--no-payloads" => a.payloads = false,
            "--payload-reps" => a.payload_reps = num("--payload-reps").max(1) as usize,
            "--stream-calls" => a.stream_calls = num("--stream-calls").max(1) as usize,
            "--sustained-ms" => a.sustained = Some(Duration::from_millis(num("--sustained-ms").max(1))),
            "--sizes-mib" => {
                a.sizes_mib = it
                    .next()
                    .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                    .filter(|v: &Vec<u64>| !v.is_empty())
                    .unwrap_or_else(|| usage("--sizes-mib needs sizes, e.g. 1,16,256"));
            }
            "--quick" => {
                a.load.warmup = Duration::from_millis(200);
                a.load.duration = Duration::from_millis(1000);
                a.rounds = 3;
                a.sizes_mib = vec![1, 16];
                a.payload_reps = 1;
                a.stream_calls = 5;
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    a
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("echo-server") {
        return echo_server();
    }
    if argv.peek().map(String::as_str) == Some("runner") {
        return runner();
    }
    if argv.peek().map(String::as_str) == Some("load") {
        argv.next();
        return load_only(argv);
    }
    let args = parse_args(argv);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => usage(&format!("cannot start the client runtime: {e}")),
    };
    let code = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(code);
}

/// The raw hyper echo server in its own process (a default multi-threaded runtime, like the
/// runner's `#[tokio::main]`).
#[tokio::main]
async fn echo_server() {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => usage(&format!("echo server cannot listen: {e}")),
    };
    if let Ok(addr) = listener.local_addr() {
        println!("ECHO_READY http://{addr}");
    }
    flame_bench::echo::serve(listener).await
}

/// Our runner: this binary in runner mode (flame's one-binary model), serving
/// [`flame_bench::methods`] (`math/add`, the payload methods, the streamed `bench/ticks`)
/// through the flame-http server (`Flame::builder(..).http()`), configured from the environment
/// (`FLAME_SECRET`, `FLAME_LISTEN`, …). Prints `FLAME_READY <url>`; serves until SIGTERM.
#[tokio::main]
async fn runner() {
    let registry = flame_bench::methods::registry();
    let built = Flame::builder(registry).http().mode(Mode::Runner).from_env();
    let served = match built {
        Ok(b) => b.serve_runner().await,
        Err(e) => Err(e),
    };
    if let Err(e) = served {
        eprintln!("flame-bench runner: {e}");
        std::process::exit(1);
    }
}

/// `flame-bench load <url> [--secret S] [--echo] [flags]`: only the load generator, against a
/// server started elsewhere (e.g. under `valgrind --tool=callgrind` to count instructions per
/// request). Prints the summary.
fn load_only(mut argv: impl Iterator<Item = String>) {
    let url = argv.next().unwrap_or_else(|| usage("load needs a URL"));
    let (mut secret, mut echo, mut binary, mut rest) = (None, false, false, Vec::new());
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--secret" => secret = argv.next().map(Secret::new),
            "--echo" => echo = true,
            "--binary" => binary = true,
            _ => rest.push(a),
        }
    }
    let args = parse_args(rest.into_iter());
    let addr = addr_of(&url).unwrap_or_else(|e| usage(&e));
    let codec = if binary { Codec::Binary } else { Codec::Json };
    let kind = match (echo, codec) {
        (true, _) => RequestKind::echo(codec),
        (false, Codec::Json) => RequestKind::math_add(secret),
        (false, Codec::Binary) => RequestKind::math_add_binary(secret),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage(&format!("cannot start the client runtime: {e}")));
    let s = rt.block_on(loadgen::run(addr, &kind, &args.load));
    println!(
        "{} ok, {} errors, {:.0} requests/s, p50 {}, p99 {}{}",
        s.ok,
        s.errors,
        s.rps(),
        human(s.p50),
        human(s.p99),
        s.first_error
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
}

/// One row of the server table.
struct Row {
    name: String,
    /// `None`: skipped, with the reason.
    result: Result<Summary, String>,
    idle_rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    /// Server CPU time (all its threads) per correct reply, over the kept run.
    cpu_per_req: Option<Duration>,
    /// The row whose requests/s this row is compared with in "vs flame-js".
    peer: Option<usize>,
    /// The echo row this row is compared with in "vs hyper" (same request shape).
    floor: usize,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn addr_of(url: &str) -> Result<SocketAddr, String> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("cannot read an address from {url:?}: {e}"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// A runner program and its arguments.
type RunnerCmd = (PathBuf, Vec<String>);

/// How to start our runner: `FLAME_BENCH_RUNNER` (a flame runner binary such as
/// `target/release/examples/interop`, started with no arguments), else this binary with the
/// argument `runner`.
fn runner_command() -> Result<RunnerCmd, String> {
    if let Some(p) = std::env::var_os("FLAME_BENCH_RUNNER") {
        return Ok((PathBuf::from(p), Vec::new()));
    }
    let exe = std::env::current_exe().map_err(|e| format!("no current executable: {e}"))?;
    Ok((exe, vec!["runner".to_owned()]))
}

/// A started server: the child and the address to drive.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn idle_rss(&self) -> Option<u64> {
        self.child.pid().and_then(procs::rss_kib)
    }
    fn peak_rss(&self) -> Option<u64> {
        self.child.pid().and_then(peak_rss_kib)
    }
}

/// `VmHWM` (peak resident memory) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn start_echo() -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("echo-server");
    let mut child = Child::spawn("echo", cmd)?;
    let url = child.wait_line("ECHO_READY ", Duration::from_secs(10)).await?;
    Ok(Server {
        addr: addr_of(&url)?,
        child,
    })
}

async fn start_our_runner(bin: &RunnerCmd, secret: Option<&Secret>) -> Result<Server, String> {
    let mut cmd = Command::new(&bin.0);
    cmd.args(&bin.1)
        .env_remove("FLAME_RUNNER_URL")
        .env_remove("FLAME_PARENT_ID")
        .env_remove("FLAME_SECRET")
        .env("FLAME_MODE", "runner")
        .env("FLAME_LISTEN", "127.0.0.1:0")
        .env("FLAME_RUNNER_ID", "bench-runner");
    if let Some(s) = secret {
        cmd.env("FLAME_SECRET", s.expose());
    }
    let mut child = Child::spawn("flame-rs runner", cmd)?;
    let url = child.wait_line("FLAME_READY ", Duration::from_secs(20)).await?;
    Ok(Server {
        addr: addr_of(&url)?,
        child,
    })
}

async fn start_ref_runner(bun: &Bun, dir: &TempDir, secret: Option<&Secret>) -> Result<Server, String> {
    let env: Vec<(&str, String)> = secret
        .map(|s| vec![("FLAME_SECRET", s.expose().to_owned())])
        .unwrap_or_default();
    let cmd = bun.command(dir, "bench/bench_runner.ts", &env);
    let mut child = Child::spawn("flame-js runner", cmd)?;
    let url = child.wait_line("RUNNER_READY ", Duration::from_secs(30)).await?;
    Ok(Server {
        addr: addr_of(&url)?,
        child,
    })
}

/// Keeps the run with the most requests/s.
fn keep_best(best: &mut Option<Summary>, s: Summary) {
    if best.as_ref().map_or(true, |b| s.rps() > b.rps()) {
        *best = Some(s);
    }
}

/// A server being measured (or skipped, with the reason).
struct Target {
    name: &'static str,
    server: Result<Server, String>,
    kind: RequestKind,
    peer: Option<usize>,
    floor: usize,
}

/// Measures every server: all are started first (idle RSS read then), and the `repeat` runs go
/// round-robin over them, so a burst of load from elsewhere on the machine hits one run of each
/// rather than every run of one; the best run of each server is kept.
async fn measure_servers(targets: Vec<Target>, args: &Args) -> Vec<Row> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle: Vec<Option<u64>> = targets
        .iter()
        .map(|t| t.server.as_ref().ok().and_then(Server::idle_rss))
        .collect();
    let mut best: Vec<Option<(Summary, Option<Duration>)>> = vec![None; targets.len()];
    for round in 1..=args.repeat {
        for (t, b) in targets.iter().zip(best.iter_mut()) {
            if let Ok(server) = &t.server {
                eprintln!("== {} (run {round}/{})", t.name, args.repeat);
                let pid = server.child.pid();
                let cpu0 = pid.and_then(procs::cpu_time);
                let s = loadgen::run(server.addr, &t.kind, &args.load).await;
                let cpu = cpu0
                    .zip(pid.and_then(procs::cpu_time))
                    .map(|(a, b)| b.saturating_sub(a));
                let per_req = cpu.filter(|_| s.answered > 0).map(|c| c / s.answered as u32);
                if b.as_ref().map_or(true, |(prev, _)| s.rps() > prev.rps()) {
                    *b = Some((s, per_req));
                }
            }
        }
    }
    targets
        .into_iter()
        .zip(best)
        .zip(idle)
        .map(|((t, best), idle)| {
            let (summary, cpu_per_req) = best.unwrap_or_default();
            Row {
                name: t.name.into(),
                peak_rss_kib: t.server.as_ref().ok().and_then(Server::peak_rss),
                result: t.server.map(|_| summary),
                idle_rss_kib: idle,
                cpu_per_req,
                peer: t.peer,
                floor: t.floor,
            }
        })
        .collect()
}

/// Our full parent path: `Flame::call` → `ElasticPool` checkout → `HttpTransport` (signed with
/// the pool's secret) → our runner, started by the pool through `LocalProcess`. Returns the
/// handle once a first call succeeded.
async fn start_our_parent(bin: &RunnerCmd, args: &Args) -> Result<Flame, String> {
    let conns = args.load.connections;
    let mut client = ClientOptions::default();
    client.pool_max_idle_per_host = conns.max(32);
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .handle_signals(false)
        .app("flame-bench")
        .backend(LocalProcess::command(&bin.0, bin.1.clone()).grace(Duration::from_secs(2)))
        .pool(
            "default",
            PoolConfig::default()
                .min(1)
                .max(1)
                .max_concurrency(conns)
                .boot_timeout(Duration::from_secs(20)),
        )
        .transport(Arc::new(HttpTransport::with_options(client)))
        .start()
        .await
        .map_err(|e| format!("cannot start the parent: {e}"))?;
    // The pool starts its runner at once (min 1); the first call waits for it.
    match flame.call(ADD, (2, 3)).await {
        Ok(5) => Ok(flame),
        other => {
            let _ = flame.shutdown().await;
            Err(format!("first call: {other:?}"))
        }
    }
}

/// Both parent paths, round-robin like the servers.
async fn measure_parents(
    bin: &RunnerCmd,
    reference: Result<(&Bun, &TempDir), String>,
    args: &Args,
) -> [Row; 2] {
    let ours = start_our_parent(bin, args).await;
    let secret = Secret::generate();
    let theirs = match reference {
        Ok((bun, dir)) => start_ref_runner(bun, dir, Some(&secret))
            .await
            .map(|runner| (bun, dir, runner)),
        Err(e) => Err(e),
    };
    let (mut our_best, mut their_best, mut their_err) = (None, None, None);
    for round in 1..=args.repeat {
        if let Ok(flame) = &ours {
            eprintln!("== flame-rs parent (run {round}/{})", args.repeat);
            keep_best(&mut our_best, parent_loop(flame, &args.load).await);
        }
        if let Ok((bun, dir, runner)) = &theirs {
            eprintln!("== flame-js parent (run {round}/{})", args.repeat);
            match ref_parent_once(bun, dir, runner.addr, &secret, args).await {
                Ok(s) => keep_best(&mut their_best, s),
                Err(e) => their_err = Some(e),
            }
        }
    }
    if let Ok(flame) = &ours {
        if let Err(e) = flame.shutdown().await {
            eprintln!("flame-bench: parent shutdown: {e}");
        }
    }
    let result = |started: Result<(), String>, best: Option<Summary>, err: Option<String>| {
        started.and_then(|_| match (best, err) {
            (Some(b), _) => Ok(b),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(Summary::default()),
        })
    };
    [
        Row {
            name: "flame-rs parent → flame-rs runner (Flame::call, ElasticPool, HttpTransport)".into(),
            result: result(ours.map(|_| ()), our_best, None),
            idle_rss_kib: None,
            peak_rss_kib: None,
            cpu_per_req: None,
            peer: Some(1),
            floor: 0,
        },
        Row {
            name: "flame-js parent → flame-js runner (Bun)".into(),
            result: result(theirs.map(|_| ()), their_best, their_err),
            idle_rss_kib: None,
            peak_rss_kib: None,
            cpu_per_req: None,
            peer: None,
            floor: 0,
        },
    ]
}

async fn parent_loop(flame: &Flame, load: &LoadConfig) -> Summary {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..load.connections {
        let (flame, sent, max) = (flame.clone(), sent.clone(), load.max_requests);
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut errors, mut first_error) = (Vec::new(), 0u64, None);
            while Instant::now() < end && sent.fetch_add(1, Ordering::Relaxed) < max {
                let t0 = Instant::now();
                let r = flame.call(ADD, (2, 3)).await;
                let t1 = Instant::now();
                let measured = t0 >= measure_from && t1 <= end;
                match r {
                    Ok(5) if measured => samples.push((t1 - t0).as_nanos() as u64),
                    Ok(5) => {}
                    other => {
                        if measured {
                            errors += 1;
                        }
                        first_error.get_or_insert_with(|| format!("{other:?}"));
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }
    let (mut samples, mut errors, mut first_error) = (Vec::new(), 0, None);
    for t in tasks {
        if let Ok((s, e, f)) = t.await {
            samples.extend(s);
            errors += e;
            first_error = first_error.or(f);
        }
    }
    let elapsed = Instant::now().min(end).saturating_duration_since(measure_from);
    Summary::from_samples(&mut samples, errors, elapsed, first_error)
}

/// One run of the reference's full parent path: `bench_parent.ts` (its pool and client) → its
/// runner at `addr`.
async fn ref_parent_once(
    bun: &Bun,
    dir: &TempDir,
    addr: SocketAddr,
    secret: &Secret,
    args: &Args,
) -> Result<Summary, String> {
    let env = vec![
        ("FLAME_SECRET", secret.expose().to_owned()),
        ("RUNNER_URL", format!("http://{addr}")),
        ("CONCURRENCY", args.load.connections.to_string()),
        ("WARMUP_MS", args.load.warmup.as_millis().to_string()),
        ("DURATION_MS", args.load.duration.as_millis().to_string()),
        ("MAX_REQUESTS", args.load.max_requests.to_string()),
    ];
    let mut child = Child::spawn("flame-js parent", bun.command(dir, "bench/bench_parent.ts", &env))?;
    let within = args.load.warmup + args.load.duration + Duration::from_secs(60);
    let line = child.wait_line("BENCH_RESULT ", within).await?;
    let _ = child.wait(Duration::from_secs(10)).await;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("bad BENCH_RESULT {line:?}: {e}"))?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    Ok(Summary {
        ok: num("ok") as u64,
        answered: num("ok") as u64,
        errors: num("errors") as u64,
        elapsed: Duration::from_secs_f64(num("elapsedMs").max(0.0) / 1000.0),
        p50: Duration::from_micros(num("p50Us") as u64),
        p99: Duration::from_micros(num("p99Us") as u64),
        first_error: v
            .get("firstError")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        overloaded: 0,
    })
}

/// Spawn → first result through `LocalProcess` (fork/exec, `FLAME_READY`, ping, one signed
/// `math/add`), `rounds` times after one warm-up; also the idle RSS of each fresh runner.
struct SpawnResult {
    ready: Vec<Duration>,
    first: Vec<Duration>,
    rss_kib: Vec<u64>,
}

async fn spawn_bench(bin: &RunnerCmd, rounds: usize) -> Result<SpawnResult, String> {
    let transport = Arc::new(HttpTransport::new());
    let backend = LocalProcess::command(&bin.0, bin.1.clone()).grace(Duration::from_secs(2));
    let template = RunnerTemplate::new(
        "flame-bench",
        uuid::Uuid::new_v4().to_string(),
        Secret::generate(),
        transport.clone(),
    );
    let args = flame_core::Args::typed((2i64, 3i64));
    let mut out = SpawnResult {
        ready: vec![],
        first: vec![],
        rss_kib: vec![],
    };
    for round in 0..=rounds {
        let t0 = Instant::now();
        let handle = backend
            .spawn(template.request("spawn", Duration::from_secs(20)))
            .await
            .map_err(|e| format!("spawn: {e}"))?;
        let ready = t0.elapsed();
        let inv = Invocation {
            service_id: "math".into(),
            method_id: "add".into(),
            args: args.clone(),
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            idempotency_key: None,
            trace: Default::default(),
            attempt: 1,
            cast: false,
            stream: false,
            limits: Default::default(),
        };
        let result = match transport.invoke(&handle.endpoint, &inv).await {
            Ok(reply) => reply.decode::<i64>().await,
            Err(e) => Err(e),
        };
        let first = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss = handle.backend_id.parse().ok().and_then(procs::rss_kib);
        let _ = backend.terminate(&handle).await;
        match result {
            Ok(5) => {}
            other => return Err(format!("first call: {other:?}")),
        }
        if round > 0 {
            out.ready.push(ready);
            out.first.push(first);
            out.rss_kib.extend(rss);
        }
    }
    Ok(out)
}

fn median<T: Ord + Copy + Default>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

/// Docker spawn → first result: the Docker backend's own benchmark
/// (`flame-backend-docker/benches/spawn_to_first_result.rs`), run as a subprocess.
fn docker_bench(rounds: usize) -> Result<Vec<String>, String> {
    let up = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !up {
        return Err("dockerd is not running (`docker version` fails)".into());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?
        .to_path_buf();
    let run = |args: &[&str]| {
        std::process::Command::new(&cargo)
            .args(args)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("FLAME_BENCH_ROUNDS", rounds.to_string())
            .current_dir(repo_root())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))
    };
    eprintln!("building the Docker runner and its benchmark…");
    let built = run(&[
        "build",
        "--quiet",
        "--release",
        "-p",
        "flame-backend-docker",
        "--example",
        "docker_runner",
    ])?;
    if !built.status.success() {
        return Err("building flame-backend-docker's docker_runner example failed".into());
    }
    let out = run(&[
        "bench",
        "--quiet",
        "-p",
        "flame-backend-docker",
        "--bench",
        "spawn_to_first_result",
    ])?;
    if !out.status.success() {
        return Err("flame-backend-docker's spawn_to_first_result bench failed".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

async fn run(args: Args) -> i32 {
    let load_before = loadavg();
    println!("# flame-bench");
    println!();
    println!(
        "machine: {} logical CPUs ({}), load average before: {load_before}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model()
    );
    println!(
        "load: {} connections, {} ms warm-up + {} ms measured per row (best of {}), client on {} thread(s); all on 127.0.0.1",
        args.load.connections,
        args.load.warmup.as_millis(),
        args.load.duration.as_millis(),
        args.repeat,
        args.client_threads
    );
    let bin = match runner_command() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("flame-bench: {e}");
            return 1;
        }
    };
    let bun = if args.bun {
        Bun::find(&repo_root())
    } else {
        Err("--no-bun".into())
    };
    let scripts = [("bench_runner.ts", TS_RUNNER), ("bench_parent.ts", TS_PARENT)];
    let workdir = bun
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| b.workdir(&scripts));
    let runner_name = bin
        .0
        .file_name()
        .map(|n| {
            format!("{} {}", n.to_string_lossy(), bin.1.join(" "))
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    println!("our runner: `{runner_name}` ({})", bin.0.display());
    match &bun {
        Ok(b) => println!("bun: {} ({})", b.version(), b.bun.display()),
        Err(why) => println!("bun: skipped — {why}"),
    }
    println!();

    let secret = Secret::generate();
    let reference = match (&bun, &workdir) {
        (Ok(b), Ok(d)) => Ok((b, d)),
        (Err(e), _) | (_, Err(e)) => Err(format!("skipped: {e}")),
    };
    let ref_server = |signed: bool| {
        let (reference, secret) = (reference.clone(), secret.clone());
        async move {
            let (b, d) = reference?;
            start_ref_runner(b, d, signed.then_some(&secret)).await
        }
    };
    // Rows: the two floors (the same requests, echoed), our runner in the binary codec (what a
    // flame-rs parent sends it) and on the JSON wire (what the reference's parent sends), the
    // reference. `peer` is the flame-js row compared with, `floor` the echo row.
    let targets = vec![
        Target {
            name: "raw hyper echo, JSON request (floor)",
            server: start_echo().await,
            kind: RequestKind::echo(Codec::Json),
            peer: None,
            floor: 0,
        },
        Target {
            name: "raw hyper echo, binary request (floor)",
            server: start_echo().await,
            kind: RequestKind::echo(Codec::Binary),
            peer: None,
            floor: 1,
        },
        Target {
            name: "flame-rs runner, signed, binary",
            server: start_our_runner(&bin, Some(&secret)).await,
            kind: RequestKind::math_add_binary(Some(secret.clone())),
            peer: Some(6),
            floor: 1,
        },
        Target {
            name: "flame-rs runner, unsigned, binary",
            server: start_our_runner(&bin, None).await,
            kind: RequestKind::math_add_binary(None),
            peer: Some(7),
            floor: 1,
        },
        Target {
            name: "flame-rs runner, signed, JSON",
            server: start_our_runner(&bin, Some(&secret)).await,
            kind: RequestKind::math_add(Some(secret.clone())),
            peer: Some(6),
            floor: 0,
        },
        Target {
            name: "flame-rs runner, unsigned, JSON",
            server: start_our_runner(&bin, None).await,
            kind: RequestKind::math_add(None),
            peer: Some(7),
            floor: 0,
        },
        Target {
            name: "flame-js runner (Bun), signed",
            server: ref_server(true).await,
            kind: RequestKind::math_add(Some(secret.clone())),
            peer: None,
            floor: 0,
        },
        Target {
            name: "flame-js runner (Bun), unsigned",
            server: ref_server(false).await,
            kind: RequestKind::math_add(None),
            peer: None,
            floor: 0,
        },
    ];
    let rows = measure_servers(targets, &args).await;
    let parent_rows = measure_parents(&bin, reference.clone(), &args).await;
    let payloads = if args.payloads {
        eprintln!("== payloads");
        payload_bench(&bin, &args.sizes_mib, args.payload_reps).await
    } else {
        Vec::new()
    };
    eprintln!("== streamed result, first item");
    let stream = stream_bench(&bin, args.stream_calls).await;

    eprintln!("== spawn → first result (LocalProcess)");
    let spawn = spawn_bench(&bin, args.rounds).await;
    let docker = if args.docker {
        docker_bench(args.rounds.min(5))
    } else {
        Err("--no-docker".into())
    };
    let sustained = match args.sustained {
        Some(d) => {
            eprintln!("== sustained, {} s", d.as_secs());
            Some(sustained_run(&bin, d, args.load.connections).await)
        }
        None => None,
    };
    let load_after = loadavg();

    // ---- the tables ----
    let rps_of = |i: usize| {
        rows.get(i)
            .and_then(|r| r.result.as_ref().ok())
            .map_or(0.0, Summary::rps)
    };
    let p50_of = |i: usize| {
        rows.get(i)
            .and_then(|r| r.result.as_ref().ok())
            .map_or(0.0, |s| s.p50.as_secs_f64())
    };
    println!("## Servers: one load generator, math/add");
    println!();
    println!(
        "| server | requests/s | p50 | p99 | errors | rps vs hyper | p50 vs hyper | rps vs flame-js \
         | server CPU per request | CPU per request vs hyper | calls per CPU-second vs flame-js | idle RSS | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        print_row(row, &rows, rps_of(row.floor), p50_of(row.floor), true);
    }
    println!();
    println!(
        "## Full parent path: call in a loop, {} at once",
        args.load.connections
    );
    println!();
    println!("| path | calls/s | p50 | p99 | errors | vs flame-js |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &parent_rows {
        print_row(row, &parent_rows, 0.0, 0.0, false);
    }
    println!();
    let payload_goals = print_payloads(&payloads, args.payload_reps);
    let stream_first = print_stream(&stream);
    println!("## Spawn → first result");
    println!();
    let mut spawn_first_ms = None;
    let mut spawn_rss = None;
    match &spawn {
        Ok(s) => {
            let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
            let first = median(&s.first);
            spawn_first_ms = Some(first.as_secs_f64() * 1e3);
            spawn_rss = Some(median(&s.rss_kib));
            println!("| backend | spawn (until ping ok), median | spawn → first result: min / median / max | idle runner RSS (median) |");
            println!("|---|---:|---:|---:|");
            println!(
                "| LocalProcess ({}, {} rounds) | {} | {} / {} / {} | {} |",
                runner_name,
                s.first.len(),
                ms(median(&s.ready)),
                ms(s.first.iter().min().copied().unwrap_or_default()),
                ms(first),
                ms(s.first.iter().max().copied().unwrap_or_default()),
                mib(spawn_rss)
            );
        }
        Err(e) => println!("LocalProcess: failed — {e}"),
    }
    println!();
    match &docker {
        Ok(lines) => {
            println!("Docker (flame-backend-docker's spawn_to_first_result bench):");
            println!();
            println!("```text");
            for l in lines {
                println!("{l}");
            }
            println!("```");
        }
        Err(e) => println!("Docker: skipped — {e}"),
    }
    println!();
    if let Some(result) = &sustained {
        print_sustained(result);
    }
    println!("## Goals");
    println!();
    let verdict = |ok: bool, have: bool| match (have, ok) {
        (false, _) => "n/a",
        (true, true) => "met",
        (true, false) => "MISSED",
    };
    let goal = |text: String, ok: bool, have: bool| println!("- {text}: **{}**", verdict(ok, have));
    let cpu = |i: usize| {
        rows.get(i)
            .and_then(|r| r.cpu_per_req)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    for (ours, theirs, what) in [
        (2, 6, "signed, binary"),
        (3, 7, "unsigned, binary"),
        (4, 6, "signed, JSON"),
        (5, 7, "unsigned, JSON"),
    ] {
        let c = cpu(theirs) / cpu(ours).max(f64::MIN_POSITIVE);
        goal(
            format!("runner ≥ 3× flame-js calls per CPU-second of the server ({what}): {c:.2}×"),
            c >= 3.0,
            cpu(ours) > 0.0 && cpu(theirs) > 0.0,
        );
    }
    for (ours, floor, what) in [(2, 1, "signed, binary"), (4, 0, "signed, JSON")] {
        let c = cpu(ours) / cpu(floor).max(f64::MIN_POSITIVE);
        goal(
            format!("signed runner CPU per request ≤ 1.5× raw hyper echo ({what}; CPU-seconds): {c:.2}×"),
            c <= 1.5,
            cpu(ours) > 0.0 && cpu(floor) > 0.0,
        );
    }
    for (i, what) in [(2, "signed, binary"), (3, "unsigned, binary")] {
        let r = rps_of(i) / rps_of(1).max(f64::MIN_POSITIVE);
        let p = p50_of(i) / p50_of(1).max(f64::MIN_POSITIVE);
        let have = rps_of(i) > 0.0 && rps_of(1) > 0.0;
        goal(
            format!("runner ≥ 0.75× raw hyper rps ({what}): {r:.2}×"),
            r >= 0.75,
            have,
        );
        goal(
            format!("runner p50 ≤ 1.3× raw hyper ({what}): {p:.2}×"),
            p <= 1.3,
            have,
        );
    }
    for (text, ok) in payload_goals {
        goal(text, ok, true);
    }
    if let Some(first) = stream_first {
        let ms = first.as_secs_f64() * 1e3;
        goal(
            format!("streamed result: first item at the caller < 5 ms after the handler yields it (median): {ms:.2} ms"),
            ms < 5.0,
            true,
        );
    }
    if let Some(Ok(s)) = &sustained {
        goal(
            format!(
                "sustained signed run ({} s at {:.0} calls/s): zero 503s — {} 503s, {} other errors",
                s.summary.elapsed.as_secs(),
                s.summary.rps(),
                s.summary.overloaded,
                s.summary.errors.saturating_sub(s.summary.overloaded)
            ),
            s.summary.overloaded == 0,
            true,
        );
    }
    goal(
        format!(
            "LocalProcess spawn → first result < 50 ms: {}",
            spawn_first_ms.map_or("–".into(), |m| format!("{m:.1} ms"))
        ),
        spawn_first_ms.is_some_and(|m| m < 50.0),
        spawn_first_ms.is_some(),
    );
    goal(
        format!("idle runner RSS < 10 MiB: {}", mib(spawn_rss)),
        spawn_rss.is_some_and(|k| k < 10 * 1024),
        spawn_rss.is_some(),
    );
    println!("- local-mode overhead, pool checkout, codec, HMAC: `cargo bench -p flame-bench` (criterion)");
    println!("- instructions per request: `flame-bench/callgrind.sh`");
    println!();
    println!("load average after: {load_after}");
    for row in rows.iter().chain(parent_rows.iter()) {
        if let Ok(s) = &row.result {
            if let Some(e) = &s.first_error {
                eprintln!("{}: {} error(s), first: {e}", row.name, s.errors);
            }
        }
    }
    0
}

/// One payload case: a size and a direction, raw hyper and our runner (signed and unsigned).
struct PayloadRow {
    mib: u64,
    up: bool,
    raw: Result<Duration, String>,
    signed: Result<Duration, String>,
    unsigned: Result<Duration, String>,
    /// Peak RSS (`VmHWM`) of the runner process of each case, KiB.
    rss_signed: Option<u64>,
    rss_unsigned: Option<u64>,
}

fn median_of(times: &[Duration]) -> Option<Duration> {
    (!times.is_empty()).then(|| median(times))
}

/// `reps` transfers of each case, round-robin over raw / signed / unsigned; each case's runners
/// are fresh processes, so their peak RSS is that case's.
async fn payload_bench(bin: &RunnerCmd, sizes_mib: &[u64], reps: usize) -> Vec<PayloadRow> {
    let echo = match start_echo().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("flame-bench: payloads skipped, no echo server: {e}");
            return Vec::new();
        }
    };
    let raw = RawClient::default();
    let mut rows = Vec::new();
    for &mib in sizes_mib {
        let n = mib << 20;
        let data = Bytes::from(vec![0x5Au8; n as usize]);
        for up in [true, false] {
            let mut case = PayloadRow {
                mib,
                up,
                raw: Err("not run".into()),
                signed: Err("not run".into()),
                unsigned: Err("not run".into()),
                rss_signed: None,
                rss_unsigned: None,
            };
            let mut runners = Vec::new();
            for signed in [true, false] {
                let secret = signed.then(Secret::generate);
                let started = start_our_runner(bin, secret.as_ref()).await.map(|server| {
                    let endpoint =
                        Endpoint::new(format!("http://{}", server.addr), "bench-runner").with_secret(secret);
                    (server, endpoint, HttpTransport::new())
                });
                if let Ok((_, endpoint, transport)) = &started {
                    // Learns the runner's codecs (as a pool's readiness probe does).
                    let _ = transport.ping(endpoint).await;
                }
                runners.push(started);
            }
            let (mut t_raw, mut t_signed, mut t_unsigned) = (Vec::new(), Vec::new(), Vec::new());
            for rep in 0..reps {
                eprintln!(
                    "   {mib} MiB {} (rep {}/{reps})",
                    if up { "up" } else { "down" },
                    rep + 1
                );
                let r = if up {
                    raw.upload(echo.addr, data.clone()).await
                } else {
                    raw.download(echo.addr, n as usize).await
                };
                match r {
                    Ok(t) => t_raw.push(t),
                    Err(e) => case.raw = Err(e),
                }
                for (i, runner) in runners.iter().enumerate() {
                    let Ok((_, endpoint, transport)) = runner else {
                        continue;
                    };
                    let r = if up {
                        payload::flame_upload(transport, endpoint, data.clone()).await
                    } else {
                        payload::flame_download(transport, endpoint, n).await
                    };
                    let (times, slot) = if i == 0 {
                        (&mut t_signed, &mut case.signed)
                    } else {
                        (&mut t_unsigned, &mut case.unsigned)
                    };
                    match r {
                        Ok(t) => times.push(t),
                        Err(e) => *slot = Err(e),
                    }
                }
            }
            if let Some(t) = median_of(&t_raw) {
                case.raw = Ok(t);
            }
            if let Some(t) = median_of(&t_signed) {
                case.signed = Ok(t);
            }
            if let Some(t) = median_of(&t_unsigned) {
                case.unsigned = Ok(t);
            }
            case.rss_signed = runners.first().and_then(runner_peak_rss);
            case.rss_unsigned = runners.get(1).and_then(runner_peak_rss);
            if let Err(e) = &runners[0] {
                case.signed = Err(e.clone());
            }
            rows.push(case);
        }
    }
    rows
}

/// The peak RSS of a payload case's runner, if it started.
fn runner_peak_rss(r: &Result<(Server, Endpoint, HttpTransport), String>) -> Option<u64> {
    r.as_ref().ok().and_then(|(s, _, _)| s.peak_rss())
}

/// Prints the payload table; returns the goals it decides.
fn print_payloads(rows: &[PayloadRow], reps: usize) -> Vec<(String, bool)> {
    let mut goals = Vec::new();
    if rows.is_empty() {
        return goals;
    }
    println!("## Payloads: through a runner vs raw hyper, median of {reps}");
    println!();
    println!("| payload | direction | raw hyper | flame signed | vs raw | flame unsigned | vs raw | runner peak RSS signed / unsigned | RSS goal (payload + 32 MiB) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |r: &Result<Duration, String>| match r {
        Ok(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        Err(e) => format!("failed: {e}"),
    };
    let secs = |r: &Result<Duration, String>| r.as_ref().map_or(0.0, |d| d.as_secs_f64());
    for row in rows {
        let dir = if row.up {
            "up (parent → runner)"
        } else {
            "down (runner → parent)"
        };
        let budget = (row.mib + 32) * 1024;
        println!(
            "| {} MiB | {dir} | {} | {} | {} | {} | {} | {} / {} | {} |",
            row.mib,
            ms(&row.raw),
            ms(&row.signed),
            ratio(secs(&row.signed), secs(&row.raw)),
            ms(&row.unsigned),
            ratio(secs(&row.unsigned), secs(&row.raw)),
            mib(row.rss_signed),
            mib(row.rss_unsigned),
            mib(Some(budget)),
        );
        if row.mib >= 16 {
            let r = secs(&row.signed) / secs(&row.raw).max(f64::MIN_POSITIVE);
            goals.push((
                format!(
                    "{} MiB {} signed ≤ 2× raw hyper: {r:.2}×",
                    row.mib,
                    if row.up { "up" } else { "down" }
                ),
                r <= 2.0 && secs(&row.signed) > 0.0,
            ));
        }
        let peak = row
            .rss_signed
            .into_iter()
            .chain(row.rss_unsigned)
            .max()
            .unwrap_or(0);
        goals.push((
            format!(
                "{} MiB {}: runner peak RSS ≤ payload + 32 MiB: {}",
                row.mib,
                if row.up { "up" } else { "down" },
                mib(Some(peak))
            ),
            peak > 0 && peak <= budget,
        ));
    }
    println!();
    goals
}

/// `calls` streamed calls of 10 000 items from our runner (signed) through a flame parent.
async fn stream_bench(bin: &RunnerCmd, calls: usize) -> Result<Vec<StreamTiming>, String> {
    let secret = Secret::generate();
    let server = start_our_runner(bin, Some(&secret)).await?;
    let mut config = Config::default();
    config.secret = Some(secret);
    let flame = Flame::builder(Registry::new())
        .http()
        .mode(Mode::Parent)
        .handle_signals(false)
        .runner_urls(vec![format!("http://{}", server.addr)])
        .config(config)
        .start()
        .await
        .map_err(|e| format!("cannot start the parent: {e}"))?;
    let mut out = Vec::new();
    let mut failed = None;
    for i in 0..=calls {
        match payload::stream_once(&flame, 10_000).await {
            Ok(t) if i > 0 => out.push(t),
            Ok(_) => {} // the first call: connections and the codec probe
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let _ = flame.shutdown().await;
    drop(server);
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Prints the streamed-result table; returns the median first-item latency.
fn print_stream(result: &Result<Vec<StreamTiming>, String>) -> Option<Duration> {
    println!("## Streamed result: 10 000 items from a runner (signed, binary)");
    println!();
    let timings = match result {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            println!("no calls measured");
            println!();
            return None;
        }
        Err(e) => {
            println!("failed: {e}");
            println!();
            return None;
        }
    };
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let stats = |f: fn(&StreamTiming) -> Duration| {
        let mut v: Vec<Duration> = timings.iter().map(f).collect();
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (first_med, first_max) = stats(|t| t.first_item);
    let (call_med, call_max) = stats(|t| t.first_after_call);
    let (all_med, all_max) = stats(|t| t.all_items);
    println!("| {} calls | median | max |", timings.len());
    println!("|---|---:|---:|");
    println!(
        "| first item: handler yields it → caller has it | {} | {} |",
        ms(first_med),
        ms(first_max)
    );
    println!(
        "| first item after the call | {} | {} |",
        ms(call_med),
        ms(call_max)
    );
    println!(
        "| all 10 000 items after the call | {} | {} |",
        ms(all_med),
        ms(all_max)
    );
    println!();
    Some(first_med)
}

/// What a sustained run measured.
struct Sustained {
    summary: Summary,
    rss_start_kib: Option<u64>,
    rss_max_kib: Option<u64>,
    rss_end_kib: Option<u64>,
}

/// Drives our signed runner with binary `math/add` for `duration` (after a 2 s warm-up) at the
/// highest rate the load generator reaches, sampling the runner's RSS every 5 s.
async fn sustained_run(bin: &RunnerCmd, duration: Duration, connections: usize) -> Result<Sustained, String> {
    let secret = Secret::generate();
    let server = start_our_runner(bin, Some(&secret)).await?;
    let pid = server.child.pid();
    let rss_start_kib = pid.and_then(procs::rss_kib);
    let load = LoadConfig {
        connections,
        warmup: Duration::from_secs(2),
        duration,
        max_requests: u64::MAX,
    };
    let kind = RequestKind::math_add_binary(Some(secret));
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut max = 0;
            loop {
                if let Some(k) = pid.and_then(procs::rss_kib) {
                    max = max.max(k);
                }
                tokio::select! {
                    _ = done.notified() => return max,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        })
    };
    let summary = loadgen::run(server.addr, &kind, &load).await;
    let rss_end_kib = pid.and_then(procs::rss_kib);
    done.notify_one();
    let rss_max_kib = sampler.await.ok().filter(|m| *m > 0);
    Ok(Sustained {
        summary,
        rss_start_kib,
        rss_max_kib,
        rss_end_kib,
    })
}

fn print_sustained(result: &Result<Sustained, String>) {
    println!("## Sustained: signed binary math/add, as fast as the load generator goes");
    println!();
    match result {
        Ok(s) => {
            println!(
                "| measured | calls/s | p50 | p99 | 503s | other errors | runner RSS start / max / end |"
            );
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} s | {:.0} | {} | {} | {} | {} | {} / {} / {} |",
                s.summary.elapsed.as_secs(),
                s.summary.rps(),
                human(s.summary.p50),
                human(s.summary.p99),
                s.summary.overloaded,
                s.summary.errors.saturating_sub(s.summary.overloaded),
                mib(s.rss_start_kib),
                mib(s.rss_max_kib),
                mib(s.rss_end_kib)
            );
        }
        Err(e) => println!("failed: {e}"),
    }
    println!();
}

fn print_row(row: &Row, all: &[Row], echo_rps: f64, echo_p50: f64, servers: bool) {
    let peer_rps = row
        .peer
        .and_then(|i| all.get(i))
        .and_then(|p| p.result.as_ref().ok())
        .map_or(0.0, Summary::rps);
    let peer_cpu = row
        .peer
        .and_then(|i| all.get(i))
        .and_then(|p| p.cpu_per_req)
        .map_or(0.0, |d| d.as_secs_f64());
    let floor_cpu = all
        .get(row.floor)
        .and_then(|p| p.cpu_per_req)
        .map_or(0.0, |d| d.as_secs_f64());
    match &row.result {
        Ok(s) if servers => println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            s.rps(),
            human(s.p50),
            human(s.p99),
            s.errors,
            ratio(s.rps(), echo_rps),
            ratio(s.p50.as_secs_f64(), echo_p50),
            ratio(s.rps(), peer_rps),
            row.cpu_per_req.map_or("–".into(), human),
            ratio(row.cpu_per_req.map_or(0.0, |d| d.as_secs_f64()), floor_cpu),
            ratio(peer_cpu, row.cpu_per_req.map_or(0.0, |d| d.as_secs_f64())),
            mib(row.idle_rss_kib),
            mib(row.peak_rss_kib)
        ),
        Ok(s) => println!(
            "| {} | {:.0} | {} | {} | {} | {} |",
            row.name,
            s.rps(),
            human(s.p50),
            human(s.p99),
            s.errors,
            ratio(s.rps(), peer_rps)
        ),
        Err(why) if servers => println!("| {} | skipped: {why} | | | | | | | | | | | |", row.name),
        Err(why) => println!("| {} | skipped: {why} | | | | |", row.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let a = parse_args(
            ["--connections", "8", "--quick", "--no-docker", "--repeat", "3"]
                .into_iter()
                .map(String::from),
        );
        assert_eq!(a.load.connections, 8);
        assert_eq!(a.load.duration, Duration::from_millis(1000));
        assert_eq!(a.repeat, 3);
        assert!(!a.docker && a.bun);
    }

    #[test]
    fn addresses_from_urls() {
        assert_eq!(
            addr_of("http://127.0.0.1:8080/").ok(),
            "127.0.0.1:8080".parse().ok()
        );
        assert!(addr_of("http://[::1").is_err());
    }
}
