//! Docker-specific behaviours against a real dockerd: the runner really runs in a container,
//! calls round-trip, the container carries its labels and limits, the address resolver wins,
//! an unreachable or vanishing engine gives typed errors and leaks nothing, a parent killed
//! with SIGKILL leaves no container after the failsafe window, and a parent that runs in a
//! container starts runners from its own image.
#![allow(clippy::unwrap_used)]

mod common;

use bollard::Docker;
use common::*;
use flame_backend_docker::{Gpus, Network, PullPolicy};
use flame_core::backend::labels;
use flame_core::{Backend, ErrorCode, ReapScope, RunnerAddress, RunnerState};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_really_runs_inside_a_container() {
    if !docker_available() {
        return;
    }
    let app = unique_app("whoami");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    let handle = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(30)))
        .await
        .unwrap();
    let who: WhoAmI = call(&handle.endpoint, "utils", "whoami", &()).await.unwrap();
    backend.terminate(&handle).await.unwrap();

    // Host networking shares the host's hostname, so the evidence is the cgroup (the
    // container's own), the filesystem (the image's root) and the pid namespace (Docker's init
    // is pid 1).
    let my_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let my_pid1 = std::fs::read("/proc/1/cmdline").unwrap();
    let my_pid1 = String::from_utf8_lossy(&my_pid1).replace('\0', " ");
    assert_ne!(who.cgroup, my_cgroup, "same cgroup as the test");
    assert!(
        who.cgroup.contains(&handle.backend_id) || !who.cgroup.contains("docker"),
        "cgroup {:?} is not container {}",
        who.cgroup,
        handle.backend_id
    );
    assert_eq!(who.exe, "/docker_runner", "not the image's root filesystem");
    assert_ne!(who.pid1, my_pid1.trim(), "same pid namespace as the test");
    assert!(who.pid1.contains("docker-init"), "pid 1 is {:?}", who.pid1);
    assert_ne!(who.pid, std::process::id());
    eprintln!(
        "runner in container {}: pid {}, hostname {}, pid 1 {:?}, cgroup {:?}",
        &handle.backend_id[..12],
        who.pid,
        who.hostname,
        who.pid1,
        who.cgroup.lines().next()
    );
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_round_trip_through_the_container() {
    if !docker_available() {
        return;
    }
    let app = unique_app("roundtrip");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().build().unwrap();
    let handle = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(30)))
        .await
        .unwrap();
    let sum: i64 = call(&handle.endpoint, "math", "add", &(40i64, 2i64))
        .await
        .unwrap();
    assert_eq!(sum, 42);
    let mut calls = JoinSet::new();
    for _ in 0..16 {
        let endpoint = handle.endpoint.clone();
        calls.spawn(async move { call::<_, String>(&endpoint, "utils", "nonce", &()).await });
    }
    let mut nonces = HashSet::new();
    while let Some(n) = calls.join_next().await {
        nonces.insert(n.unwrap().unwrap());
    }
    assert_eq!(nonces.len(), 16, "every call ran once, with its own invocation");
    let err = call::<_, i64>(&handle.endpoint, "math", "nope", &(1i64, 2i64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    backend.terminate(&handle).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_carries_labels_limits_env_and_auto_remove() {
    if !docker_available() {
        return;
    }
    let app = unique_app("config");
    let _cleanup = Cleanup::new(&app);
    std::env::set_var("FLAME_DOCKER_TEST_FORWARDED", "forwarded-value");
    let backend = backend_builder()
        .pull_policy(PullPolicy::IfMissing) // present locally: no pull
        .label("team", "media")
        .forward_env(["FLAME_DOCKER_TEST_FORWARDED", "FLAME_DOCKER_TEST_UNSET"])
        .env("EXTRA", "1")
        .memory_bytes(256 << 20)
        .cpus(0.5)
        .build()
        .unwrap();
    let mut request = spawn_request(&app, "parent-7", Duration::from_secs(30));
    request.pool = "gpu".into();
    let handle = start(&backend, request.clone()).await.unwrap();

    let docker = Docker::connect_with_defaults().unwrap();
    let info = docker.inspect_container(&handle.backend_id, None).await.unwrap();
    backend.terminate(&handle).await.unwrap();

    let config = info.config.unwrap();
    let l = config.labels.unwrap();
    assert_eq!(l[labels::APP], app);
    assert_eq!(l[labels::POOL], "gpu");
    assert_eq!(l[labels::PARENT], "parent-7");
    assert_eq!(l[labels::RUNNER], request.runner_id);
    assert_eq!(l["team"], "media");
    let env = config.env.unwrap();
    for expected in [
        "FLAME_MODE=runner",
        "FLAME_PARENT_ID=parent-7",
        "FLAME_DOCKER_TEST_FORWARDED=forwarded-value",
        "EXTRA=1",
    ] {
        assert!(
            env.iter().any(|e| e == expected),
            "{expected} missing from {env:?}"
        );
    }
    assert!(!env.iter().any(|e| e.starts_with("FLAME_DOCKER_TEST_UNSET")));
    assert!(env
        .iter()
        .any(|e| e == &format!("FLAME_RUNNER_ID={}", request.runner_id)));
    // The image's own command ran (no command configured).
    assert_eq!(config.cmd.unwrap(), vec!["/docker_runner".to_owned()]);
    let host = info.host_config.unwrap();
    assert_eq!(host.auto_remove, Some(true));
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_resolver_overrides_the_announced_url() {
    if !docker_available() {
        return;
    }
    let app = unique_app("resolver");
    let _cleanup = Cleanup::new(&app);
    let seen: Arc<Mutex<Vec<RunnerAddress>>> = Arc::default();
    let record = seen.clone();
    let backend = backend_builder()
        .address_resolver(Arc::new(move |address: &RunnerAddress| {
            record.lock().unwrap().push(address.clone());
            Some(format!("http://localhost:{}", address.port))
        }))
        .build()
        .unwrap();
    let request = spawn_request(&app, "parent-1", Duration::from_secs(30));
    let handle = start(&backend, request.clone()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].runner_id, request.runner_id);
    assert_eq!(seen[0].backend_id, handle.backend_id);
    assert_eq!(seen[0].host.as_deref(), Some("127.0.0.1"));
    assert_eq!(handle.endpoint.url, format!("http://localhost:{}", seen[0].port));
    let sum: i64 = call(&handle.endpoint, "math", "add", &(1i64, 1i64))
        .await
        .unwrap();
    assert_eq!(sum, 2);
    backend.terminate(&handle).await.unwrap();
    assert!(app_containers(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_that_fails_to_boot_is_a_typed_error_and_gone() {
    if !docker_available() {
        return;
    }
    let app = unique_app("exits");
    let _cleanup = Cleanup::new(&app);
    // The runner starts and exits at once (it cannot parse its listen address).
    let backend = backend_builder().build().unwrap();
    let mut request = spawn_request(&app, "parent-1", Duration::from_secs(20));
    request.env.insert("FLAME_LISTEN".into(), "not-an-address".into());
    let err = start(&backend, request).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("exited before it announced"), "{err}");
    assert!(
        err.message().contains("not-an-address"),
        "the runner's output is missing: {err}"
    );
    assert!(wait_no_containers(&app, Duration::from_secs(10)).await);

    // The command does not exist in the image: dockerd refuses to start it.
    let backend = backend_builder().command(["/no-such-binary"]).build().unwrap();
    let err = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("no-such-binary"), "{err}");
    assert!(wait_no_containers(&app, Duration::from_secs(10)).await);
}

/// A runner that announces `FLAME_READY` and then dies (exit code 3, a last line on stderr)
/// is placed, but never answers: core's readiness probe hears from dockerd that the container
/// stopped and fails the start at once — long before the boot timeout — with the exit code and
/// the last output from `exit_details`, although `AutoRemove` removed the container; nothing
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_that_dies_after_announcing_fails_fast_with_its_exit_details() {
    if !docker_available() {
        return;
    }
    let app = unique_app("dies");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder()
        .command(["/docker_runner", "ready-then-die"])
        .build()
        .unwrap();
    let boot_timeout = Duration::from_secs(120);
    let request = spawn_request(&app, "parent-1", boot_timeout);
    let secret = request.secret.clone().unwrap();
    let started = std::time::Instant::now();
    let err = start(&backend, request).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("exited before it was ready"), "{err}");
    assert!(
        err.message().contains("exited with code 3"),
        "no exit code: {err}"
    );
    assert!(
        err.message().contains("fatal: lost the database"),
        "no last output: {err}"
    );
    assert!(
        !err.to_string().contains(secret.expose()),
        "the secret leaked: {err}"
    );
    assert!(
        took < boot_timeout / 2,
        "the probe waited for the boot timeout instead of the engine's word: {took:?}"
    );
    assert!(wait_no_containers(&app, Duration::from_secs(15)).await);
    eprintln!("a runner that died after announcing failed its start in {took:?}: {err}");
}

/// A closed port and a missing socket: every operation fails fast with a retryable `BACKEND`
/// error that names the engine address; nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_dockerd_gives_typed_retryable_errors() {
    if !docker_available() {
        return;
    }
    let app = unique_app("unreachable");
    let _cleanup = Cleanup::new(&app);
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for host in [
        format!("tcp://127.0.0.1:{closed_port}"),
        "unix:///tmp/flame-no-dockerd-here.sock".to_owned(),
    ] {
        let backend = backend_builder()
            .docker_host(&host)
            .api_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(6), "{host}: slow failure");
        assert_eq!(err.code(), ErrorCode::Backend, "{host}: {err}");
        assert!(err.is_retryable(), "{host}: {err}");
        assert!(
            err.message().contains(host.trim_start_matches("unix://"))
                || err.message().contains(&closed_port.to_string()),
            "{host}: {err}"
        );
        let handle = flame_core::RunnerHandle {
            runner_id: "r".into(),
            backend_id: "c".into(),
            endpoint: flame_core::Endpoint::new("http://127.0.0.1:1", "r"),
        };
        for err in [
            backend.terminate(&handle).await.unwrap_err(),
            backend.status(&handle).await.unwrap_err(),
            backend
                .reap(&ReapScope::new(
                    &app,
                    "p",
                    Arc::new(flame_http::HttpTransport::new()),
                ))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(err.code(), ErrorCode::Backend, "{host}: {err}");
            assert!(err.is_retryable(), "{host}: {err}");
        }
    }
    assert!(app_containers(&app).await.is_empty());
}

/// A TCP front for the local dockerd socket that a test can take down and bring back.
struct EngineProxy {
    port: u16,
    tasks: JoinSet<()>,
}

impl EngineProxy {
    async fn start(port: u16) -> EngineProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            // Aborting the accept task drops `conns`, which aborts every relay.
            while let Ok((mut tcp, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut unix) = UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        EngineProxy { port, tasks }
    }

    async fn stop(mut self) -> u16 {
        self.tasks.shutdown().await;
        self.port
    }
}

/// dockerd goes away mid-test (its front is taken down): status, terminate, reap and spawn
/// fail with typed retryable errors and create nothing; when it is back, the same backend
/// terminates the runner and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_gone_mid_test_gives_typed_errors_and_no_leak() {
    if !docker_available() {
        return;
    }
    let app = unique_app("engine-gone");
    let _cleanup = Cleanup::new(&app);
    let proxy = EngineProxy::start(0).await;
    let backend = backend_builder()
        .docker_host(format!("tcp://127.0.0.1:{}", proxy.port))
        .api_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Running);

    let port = proxy.stop().await;
    let scope = ReapScope::new(&app, "someone-else", Arc::new(flame_http::HttpTransport::new()));
    let errors = [
        backend.status(&handle).await.unwrap_err(),
        backend.terminate(&handle).await.unwrap_err(),
        backend.reap(&scope).await.unwrap_err(),
        start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(10)))
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(err.code(), ErrorCode::Backend, "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(err.message().contains(&port.to_string()), "{err}");
    }
    // Only the first runner exists: the failed spawn created nothing.
    assert_eq!(app_containers(&app).await, vec![handle.backend_id.clone()]);

    // The engine is back: a retry works, and nothing leaks.
    let proxy = EngineProxy::start(port).await;
    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    proxy.stop().await;
    assert!(app_containers(&app).await.is_empty());
}

/// A parent process spawns a runner and pings it; the runner lives past its failsafe window.
/// Then the parent is killed with SIGKILL: nobody terminates the runner, its failsafe (no
/// parent contact for FLAME_PARENT_TIMEOUT) makes it exit, and AutoRemove removes the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_killed_leaves_no_container_after_the_failsafe_window() {
    if !docker_available() {
        return;
    }
    let app = unique_app("kill9");
    let _cleanup = Cleanup::new(&app);
    let image = runner_image();
    let parent_timeout_ms = 5_000u64;
    let mut parent = tokio::process::Command::new(runner_binary())
        .args([
            "hold",
            &image,
            &app,
            "doomed-parent",
            &parent_timeout_ms.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(60), async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("SPAWNED ") {
                return line;
            }
        }
        panic!("the parent exited without spawning");
    })
    .await
    .expect("the parent did not spawn its runner within 60 s");
    let container = line.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(app_containers(&app).await, vec![container.clone()]);
    // While the parent lives (and pings), the runner outlives its failsafe window.
    tokio::time::sleep(Duration::from_millis(parent_timeout_ms * 2)).await;
    assert_eq!(
        app_containers(&app).await,
        vec![container],
        "the runner died although its parent kept in touch"
    );

    parent.start_kill().unwrap(); // SIGKILL: no cleanup code runs in the parent
    parent.wait().await.unwrap();
    let killed = std::time::Instant::now();
    let window = Duration::from_millis(parent_timeout_ms) + Duration::from_secs(15);
    assert!(
        wait_no_containers(&app, window).await,
        "the runner's container outlived its parent by more than {window:?}"
    );
    eprintln!(
        "container gone {:?} after the parent's SIGKILL (FLAME_PARENT_TIMEOUT {parent_timeout_ms} ms)",
        killed.elapsed()
    );
}

/// A parent running in a container (with the engine's socket) starts runners from its own
/// image, configured with nothing, and the runner is a different container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_in_a_container_uses_its_own_image() {
    if !docker_available() {
        return;
    }
    let app = unique_app("own-image");
    let _cleanup = Cleanup::new(&app);
    let image = runner_image();
    let run = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", "host"])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["--label", &format!("{}={app}", labels::APP)])
        .args(["--label", &format!("{}=parent", labels::POOL)])
        .args([&image, "/docker_runner", "own-image", &app])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the containerised parent did not finish within 90 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "parent failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image_id = Docker::connect_with_defaults()
        .unwrap()
        .inspect_image(&image)
        .await
        .unwrap()
        .id
        .unwrap();
    let used = stdout
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE "))
        .expect("no IMAGE line");
    assert_eq!(used, image_id, "runner image is not the parent's own");
    let who: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("WHOAMI "))
            .expect("no WHOAMI line"),
    )
    .unwrap();
    let parent: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("PARENT "))
            .expect("no PARENT line"),
    )
    .unwrap();
    assert_eq!(who["exe"], "/docker_runner");
    assert_ne!(
        who["cgroup"], parent["cgroup"],
        "the runner is the parent's own container"
    );
    assert!(wait_no_containers(&app, Duration::from_secs(10)).await);
}

/// Engine refusals at create (memory below dockerd's minimum) and at start (GPUs on an engine
/// without a GPU driver) are typed, not retryable, carry dockerd's message, and leave nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refusals_at_create_and_start_are_typed_and_leave_nothing() {
    if !docker_available() {
        return;
    }
    let app = unique_app("refusals");
    let _cleanup = Cleanup::new(&app);
    let tiny = backend_builder().memory_bytes(1024).build().unwrap();
    let err = start(&tiny, spawn_request(&app, "parent-1", Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("Minimum memory limit"), "{err}");

    let gpu = backend_builder().gpus(Gpus::All).build().unwrap();
    let err = start(&gpu, spawn_request(&app, "parent-1", Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("could not select device driver"), "{err}");
    assert!(
        app_containers(&app).await.is_empty(),
        "a refused spawn left a container"
    );
}

/// A caller that gives up on a spawn (its future dropped mid-boot) leaves no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_spawn_leaves_nothing() {
    if !docker_available() {
        return;
    }
    let app = unique_app("abandoned");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder()
        .command(["/docker_runner", "never-ready"])
        .build()
        .unwrap();
    let spawn = backend.spawn(spawn_request(&app, "parent-1", Duration::from_secs(60)));
    let gave_up = tokio::time::timeout(Duration::from_secs(2), spawn).await;
    assert!(gave_up.is_err(), "a never-ready runner cannot have booted");
    assert!(
        wait_no_containers(&app, Duration::from_secs(15)).await,
        "the abandoned spawn's container is still there"
    );
}

/// Removes a Docker network when dropped.
struct NetworkGuard(String);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        remove_app_containers_on_network(&self.0);
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.0])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn remove_app_containers_on_network(network: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("network={network}")])
        .output();
    if let Ok(out) = out {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
}

/// On a named network the runner listens on 0.0.0.0:<runner_port> and the backend reports its
/// address on that network. The resolver hook maps it to a runner the test serves on 127.0.0.1
/// (no packet goes to the container's private address), as for every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_network_reports_the_container_address_to_the_resolver() {
    if !docker_available() {
        return;
    }
    let app = unique_app("named-net");
    let _cleanup = Cleanup::new(&app);
    let network = format!("flame-test-{}", &app[app.len() - 8..]);
    let created = std::process::Command::new("docker")
        .args(["network", "create", &network])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "docker network create failed");
    let _network = NetworkGuard(network.clone());

    let request = spawn_request(&app, "parent-1", Duration::from_secs(30));
    // The stand-in runner on 127.0.0.1, verifying the same secret.
    let mut config = flame_core::Config::default();
    config.secret = request.secret.clone();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let dispatcher = Arc::new(flame_core::Dispatcher::new(
        flame_core::Registry::new().handle(
            flame_core::Method::<(i64, i64), i64>::new("math", "add"),
            |_ctx: flame_core::Context, (a, b): (i64, i64)| async move { Ok(a + b) },
        ),
        request.runner_id.clone(),
    ));
    let bound = flame_http::HttpServer::with_options(
        flame_http::ServerOptions::default()
            .announce(false)
            .handle_signals(false),
    )
    .bind(dispatcher, &config)
    .await
    .unwrap();
    let local_url = bound.url();
    let seen_url = local_url.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(bound.run(stop.clone()));

    let seen: Arc<Mutex<Vec<RunnerAddress>>> = Arc::default();
    let record = seen.clone();
    let backend = backend_builder()
        .network(Network::Named(network.clone()))
        .runner_port(8088)
        .address_resolver(Arc::new(move |address: &RunnerAddress| {
            record.lock().unwrap().push(address.clone());
            Some(local_url.clone())
        }))
        .build()
        .unwrap();
    let handle = start(&backend, request.clone()).await.unwrap();
    let address = seen.lock().unwrap()[0].clone();

    // With a log driver that cannot be read, the known port stands in for `FLAME_READY`.
    let silent = backend_builder()
        .network(Network::Named(network.clone()))
        .runner_port(8088)
        .log_driver("none")
        .address_resolver(Arc::new({
            let url = seen_url.clone();
            move |_: &RunnerAddress| Some(url.clone())
        }))
        .build()
        .unwrap();
    let mut quiet = request.clone();
    quiet.runner_id = format!("{}-quiet", request.runner_id);
    let quiet = start(&silent, quiet).await.unwrap();
    silent.terminate(&quiet).await.unwrap();

    let info = Docker::connect_with_defaults()
        .unwrap()
        .inspect_container(&handle.backend_id, None)
        .await
        .unwrap();
    backend.terminate(&handle).await.unwrap();
    stop.cancel();
    let _ = server.await;

    let ip = info.network_settings.unwrap().networks.unwrap()[&network]
        .ip_address
        .clone()
        .unwrap();
    assert!(!ip.is_empty());
    assert_eq!(address.host.as_deref(), Some(ip.as_str()));
    assert_eq!(address.port, 8088);
    assert_eq!(address.backend_id, handle.backend_id);
    let env = info.config.unwrap().env.unwrap();
    assert!(env.iter().any(|e| e == "FLAME_LISTEN=0.0.0.0:8088"), "{env:?}");
    assert_eq!(
        info.host_config.unwrap().network_mode.as_deref(),
        Some(network.as_str())
    );
    assert!(app_containers(&app).await.is_empty());
}

/// A dockerd of the test's own (own socket, data and exec roots, and its own containerd, as
/// a service manager runs them), so the test can kill dockerd without disturbing the shared
/// engine. Everything is stopped, unmounted and deleted on drop.
struct PrivateDockerd {
    dir: std::path::PathBuf,
    containerd: Option<std::process::Child>,
    dockerd: Option<std::process::Child>,
}

impl PrivateDockerd {
    fn socket(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    fn containerd_socket(&self) -> std::path::PathBuf {
        self.dir.join("containerd.sock")
    }

    fn cli(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("docker");
        cmd.args(["-H", &self.socket()]);
        cmd
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap()
    }

    fn start(dir: std::path::PathBuf) -> PrivateDockerd {
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = PrivateDockerd {
            dir,
            containerd: None,
            dockerd: None,
        };
        let log = d.log("containerd.log");
        d.containerd = Some(
            std::process::Command::new("containerd")
                .arg("--address")
                .arg(d.containerd_socket())
                .arg("--root")
                .arg(d.dir.join("containerd-root"))
                .arg("--state")
                .arg(d.dir.join("containerd-state"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        d.launch();
        d
    }

    fn launch(&mut self) {
        let log = self.log("dockerd.log");
        let child = std::process::Command::new("dockerd")
            .args(["--host", &self.socket()])
            .arg("--containerd")
            .arg(self.containerd_socket())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["--bridge=none", "--iptables=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.dockerd = Some(child);
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            if self.cli().arg("info").output().unwrap().status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the private dockerd did not answer within 30 s: {}",
            std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// SIGKILL to dockerd: the engine's API vanishes; containerd and the containers live on.
    fn kill9(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn terminate(child: Option<std::process::Child>) {
        let Some(mut child) = child else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if self.dockerd.is_none() {
            // Killed mid-test and not relaunched: bring it back to clean up.
            self.launch();
        }
        if let Ok(out) = self.cli().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.cli().args(["rm", "-f", id]).output();
            }
        }
        PrivateDockerd::terminate(self.dockerd.take());
        PrivateDockerd::terminate(self.containerd.take());
        let prefix = self.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_unstable_by(|a, b| b.cmp(a));
        for point in points {
            let _ = std::process::Command::new("umount").arg(point).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// dockerd itself is killed (SIGKILL) mid-test: status, terminate, reap and spawn fail with
/// typed retryable errors; the runner keeps serving meanwhile; when dockerd comes back it
/// removes the AutoRemove container, and the backend's retry of terminate is `Ok`. Nothing is
/// left in the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_killed_mid_test_gives_typed_errors_and_no_leak() {
    if !docker_available() {
        return;
    }
    let app = unique_app("dockerd-killed");
    let image = runner_image();
    let dir = std::env::temp_dir().join(format!("flame-{app}"));
    let mut engine = tokio::task::spawn_blocking(move || PrivateDockerd::start(dir))
        .await
        .unwrap();
    let load = format!(
        "docker save {image} | docker -H {} load -q >/dev/null",
        engine.socket()
    );
    let loaded = std::process::Command::new("sh")
        .args(["-c", &load])
        .status()
        .unwrap();
    assert!(
        loaded.success(),
        "loading the runner image into the private dockerd failed"
    );

    let backend = backend_builder()
        .docker_host(engine.socket())
        .api_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(30)))
        .await
        .unwrap();
    let sum: i64 = call(&handle.endpoint, "math", "add", &(2i64, 2i64))
        .await
        .unwrap();
    assert_eq!(sum, 4);

    engine.kill9();
    let scope = ReapScope::new(&app, "someone-else", Arc::new(flame_http::HttpTransport::new()));
    let errors = [
        backend.status(&handle).await.unwrap_err(),
        backend.terminate(&handle).await.unwrap_err(),
        backend.reap(&scope).await.unwrap_err(),
        start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(10)))
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(err.code(), ErrorCode::Backend, "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(err.message().contains("docker.sock"), "{err}");
    }
    // The container outlives its engine for now: the runner still answers.
    let sum: i64 = call(&handle.endpoint, "math", "add", &(3i64, 3i64))
        .await
        .unwrap();
    assert_eq!(sum, 6);

    let engine = tokio::task::spawn_blocking(move || {
        engine.launch();
        engine
    })
    .await
    .unwrap();
    backend.terminate(&handle).await.unwrap();
    assert_eq!(backend.status(&handle).await.unwrap(), RunnerState::Stopped);
    let left = engine.cli().args(["ps", "-aq"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left in the engine: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    tokio::task::spawn_blocking(move || drop(engine)).await.unwrap();
}

/// With host networking the port is only known from the runner's `FLAME_READY` line: a log
/// driver that cannot be read is a typed, non-retryable error that says so, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_log_driver_on_host_network_is_a_typed_error() {
    if !docker_available() {
        return;
    }
    let app = unique_app("no-logs");
    let _cleanup = Cleanup::new(&app);
    let backend = backend_builder().log_driver("none").build().unwrap();
    let err = start(&backend, spawn_request(&app, "parent-1", Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Backend, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("log driver"), "{err}");
    assert!(wait_no_containers(&app, Duration::from_secs(10)).await);
}
