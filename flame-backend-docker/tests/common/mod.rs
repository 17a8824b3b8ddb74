//! Shared helpers of the Docker engine tests: engine gating, the runner image (the
//! `docker_runner` example packed with `docker import`), spawn requests, calls, and a guard
//! that removes every container a test started, also when the test fails.
#![allow(dead_code, clippy::unwrap_used)]

pub mod parents;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use flame_backend_docker::{DockerBackend, DockerBackendBuilder, PullPolicy};
use flame_core::backend::labels;
use flame_core::backend::readiness::start_runner;
use flame_core::{Backend, Endpoint, Invocation, RunnerHandle, Secret, SpawnRequest, Transport};
use flame_http::HttpTransport;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Label value every test container carries besides the `flame.*` labels.
pub const TEST_LABEL: &str = "flame.test";

/// Whether dockerd answers; with `FLAME_TEST_ENGINES=required` a missing engine panics.
pub fn docker_available() -> bool {
    let check = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let result = match check {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`docker version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run the docker CLI: {e}")),
    };
    flame_core::testkit::engine_available("docker", result)
}

/// A unique app name for one test (containers are found and removed by it).
pub fn unique_app(test: &str) -> String {
    format!("t-{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Removes every container of `app` when dropped (the test passed or panicked).
pub struct Cleanup {
    pub app: String,
}

impl Cleanup {
    pub fn new(app: &str) -> Cleanup {
        Cleanup { app: app.to_owned() }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_app_containers(&self.app);
    }
}

/// `docker rm -f` every container labelled `flame.app=<app>`.
pub fn remove_app_containers(app: &str) {
    let ids = app_container_ids_cli(app);
    if ids.is_empty() {
        return;
    }
    let _ = Command::new("docker")
        .arg("rm")
        .arg("-f")
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Ids of every container (any state) labelled `flame.app=<app>`, through the CLI.
pub fn app_container_ids_cli(app: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={}={app}", labels::APP))
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Ids of every container labelled `flame.app=<app>`, through the API.
pub async fn app_containers(app: &str) -> Vec<String> {
    let docker = Docker::connect_with_defaults().unwrap();
    let filters = HashMap::from([("label".to_owned(), vec![format!("{}={app}", labels::APP)])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Waits (bounded) until no container of `app` is left; returns whether that happened.
pub async fn wait_no_containers(app: &str, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        if app_containers(app).await.is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `docker_runner` example binary cargo built next to this test.
pub fn runner_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/docker_runner
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let mut bin = profile_dir.join("examples").join("docker_runner");
    if !bin.exists() {
        // A benchmark (release profile) may use the runner `cargo test` built.
        bin = profile_dir.parent().unwrap().join("debug/examples/docker_runner");
    }
    assert!(
        bin.exists(),
        "{} is missing: `cargo test -p flame-backend-docker` builds it (or `cargo build -p flame-backend-docker --examples`)",
        bin.display()
    );
    bin
}

static IMAGE: Mutex<Option<String>> = Mutex::new(None);

/// The runner image: the `docker_runner` binary plus the shared libraries `ldd` lists and the
/// dynamic loader, imported with `docker import` (no registry involved). Built once per
/// binary version; the tag names the binary's size and modification time.
pub fn runner_image() -> String {
    let mut cached = IMAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tag) = cached.as_ref() {
        return tag.clone();
    }
    let bin = runner_binary();
    let meta = std::fs::metadata(&bin).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = format!("flame-docker-test-runner:{}-{mtime}", meta.len());
    let exists = Command::new("docker")
        .args(["image", "inspect", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        build_image(&bin, &tag);
    }
    *cached = Some(tag.clone());
    tag
}

fn build_image(bin: &Path, tag: &str) {
    let root = std::env::temp_dir().join(format!("flame-docker-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("docker_runner");
    std::fs::copy(bin, &target).unwrap();
    // Smaller image, faster import; fine if strip is missing.
    let _ = Command::new("strip").arg(&target).stderr(Stdio::null()).status();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    assert!(ldd.status.success(), "ldd failed on {}", bin.display());
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(path, &dest).unwrap(); // follows symlinks, like `cp -L`
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            r#"CMD ["/docker_runner"]"#,
            "--change",
            "LABEL flame.test.image=runner",
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the runner image failed");
    let _ = std::fs::remove_dir_all(&root);
    assert!(import.success(), "docker import of the runner image failed");
    // Drop older builds of the test image (never a container's image in use: rmi refuses).
    let old = Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "flame-docker-test-runner",
        ])
        .output()
        .unwrap();
    for name in String::from_utf8_lossy(&old.stdout).lines() {
        if name != tag {
            let _ = Command::new("docker")
                .args(["rmi", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A backend for tests: the runner image, never pulled, short stop grace.
pub fn backend_builder() -> DockerBackendBuilder {
    DockerBackend::builder()
        .image(runner_image())
        .use_own_image(false)
        .pull_policy(PullPolicy::Never)
        .stop_grace(Duration::from_secs(2))
        .label(TEST_LABEL, "1")
}

/// A spawn request as a pool would make it.
pub fn spawn_request(app: &str, parent: &str, boot_timeout: Duration) -> SpawnRequest {
    spawn_request_with(app, parent, boot_timeout, 20_000)
}

/// A spawn request with the runner's failsafe window set.
pub fn spawn_request_with(
    app: &str,
    parent: &str,
    boot_timeout: Duration,
    parent_timeout_ms: u64,
) -> SpawnRequest {
    let secret = Secret::generate();
    let runner_id = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let env = BTreeMap::from([
        ("FLAME_MODE".to_owned(), "runner".to_owned()),
        ("FLAME_PARENT_ID".to_owned(), parent.to_owned()),
        ("FLAME_PARENT_TIMEOUT".to_owned(), parent_timeout_ms.to_string()),
        ("FLAME_SECRET".to_owned(), secret.expose().to_owned()),
        ("FLAME_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
    ]);
    SpawnRequest {
        runner_id,
        app: app.to_owned(),
        pool: "default".to_owned(),
        parent_id: parent.to_owned(),
        env,
        labels: BTreeMap::new(),
        boot_timeout,
        secret: Some(secret),
    }
}

/// Starts a runner as a pool does: `spawn` places it, core's readiness probe pings it over
/// HTTP until healthy (or ends it).
pub async fn start(backend: &dyn Backend, request: SpawnRequest) -> flame_core::Result<RunnerHandle> {
    start_runner(backend, request, &HttpTransport::new()).await
}

/// Calls `service/method` with `req` on `endpoint` over HTTP.
pub async fn call<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
    endpoint: &Endpoint,
    service: &str,
    method: &str,
    req: &Req,
) -> flame_core::Result<Resp> {
    let invocation = Invocation {
        service_id: service.into(),
        method_id: method.into(),
        args: flame_core::codec::encode_args(req)?.into(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
        idempotency_key: None,
        trace: BTreeMap::new(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = HttpTransport::new().invoke(endpoint, &invocation).await?;
    text.decode().await
}

/// What `utils/whoami` answers.
#[derive(Debug, serde::Deserialize)]
pub struct WhoAmI {
    pub pid: u32,
    pub hostname: String,
    pub cgroup: String,
    pub exe: String,
    pub pid1: String,
}
