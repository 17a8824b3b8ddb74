// Shared by the interop tests (included with `mod interop_common;`): builds the `interop`
// example, finds Bun and the reference, and runs child processes that die with the test.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The `interop` example binary, built (or found up to date) for this test's profile, once per
/// test binary.
pub fn interop_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_interop).clone()
}

fn build_interop() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO")
        .ok()
        .or(option_env!("CARGO").map(str::to_owned))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    // `--workspace` unifies features as `cargo test --workspace` does, so after it this is
    // a no-op instead of a rebuild with other features.
    cmd.args(["build", "--quiet", "--workspace", "--example", "interop"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the interop example");
    assert!(status.success(), "building the interop example failed");
    let bin = profile_dir.join("examples").join("interop");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A child process killed (and reaped) when the guard drops, also when a test fails.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Reads stdout until a line starting with `prefix` (bounded); returns the rest of that
    /// line. Stderr is forwarded to the test's stderr.
    pub async fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        if let Some(err) = self.child.stderr.take() {
            forward(err, self.name.clone());
        }
        let out = self.child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let found = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Some(rest.trim().to_owned());
                }
                eprintln!("[{}] {line}", self.name);
            }
            None
        })
        .await;
        // Keep draining stdout so the child never blocks on a full pipe.
        let name = self.name.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
        match found {
            Ok(Some(rest)) => rest,
            Ok(None) => panic!("{} exited before printing {prefix}", self.name),
            Err(_) => panic!("{} did not print {prefix} within {within:?}", self.name),
        }
    }

    /// Waits (bounded) for the process to exit; returns (success, stdout, stderr).
    pub async fn finish(mut self, within: Duration) -> (bool, String, String) {
        let out = self.child.stdout.take();
        let err = self.child.stderr.take();
        let result = tokio::time::timeout(within, async {
            use tokio::io::AsyncReadExt;
            let (mut o, mut e) = (String::new(), String::new());
            let read_out = async {
                if let Some(mut out) = out {
                    let _ = out.read_to_string(&mut o).await;
                }
            };
            let read_err = async {
                if let Some(mut err) = err {
                    let _ = err.read_to_string(&mut e).await;
                }
            };
            let (_, _, status) = tokio::join!(read_out, read_err, self.child.wait());
            (status.map(|s| s.success()).unwrap_or(false), o, e)
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => panic!("{} did not finish within {within:?}", self.name),
        }
    }
}

fn forward(stream: impl AsyncRead + Unpin + Send + 'static, name: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{name}] {line}");
        }
    });
}

/// Starts the interop binary as a runner on 127.0.0.1 with `secret`; returns it and its URL.
pub async fn start_rust_runner(bin: &Path, secret: &str) -> (ChildGuard, String) {
    let mut cmd = Command::new(bin);
    cmd.env_remove("FLAME_RUNNER_URL")
        .env_remove("FLAME_PARENT_ID")
        .env("FLAME_MODE", "runner")
        .env("FLAME_SECRET", secret)
        .env("FLAME_LISTEN", "127.0.0.1:0")
        .env("FLAME_RUNNER_ID", "interop-runner");
    let mut child = ChildGuard::spawn("rust-runner", cmd);
    let url = child.wait_line("FLAME_READY ", Duration::from_secs(20)).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

/// Runs the interop binary as a parent against `url`; returns (success, stdout, stderr).
pub async fn run_rust_parent(bin: &Path, url: &str, secret: &str) -> (bool, String, String) {
    let mut cmd = Command::new(bin);
    cmd.env("FLAME_MODE", "parent")
        .env("FLAME_RUNNER_URL", url)
        .env("FLAME_SECRET", secret)
        .env("FLAME_REQUEST_TIMEOUT_MS", "10000");
    ChildGuard::spawn("rust-parent", cmd)
        .finish(Duration::from_secs(60))
        .await
}

/// Bun and the reference's dependencies, found as `.ci/setup/30-bun.sh` installs them.
pub struct Bun {
    pub bun: PathBuf,
    pub node_modules: PathBuf,
    pub reference: PathBuf,
}

fn default_bun_home() -> Option<PathBuf> {
    std::env::var_os("FLAME_BUN_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flame-bun")))
}

fn bun_package() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "bun-linux-aarch64"
    } else {
        "bun-linux-x64"
    }
}

/// Looks for Bun (`FLAME_BUN`, the setup script's cache, `bun` on PATH), the reference
/// (`FLAME_REFERENCE_JS` or `../shared/reference/flame-js` beside the repository) and its
/// dependencies (`superjson`, `errore`).
pub fn find_bun() -> Result<Bun, String> {
    let home = default_bun_home();
    let bun = std::env::var_os("FLAME_BUN")
        .map(PathBuf::from)
        .or_else(|| {
            home.as_ref()
                .map(|h| h.join("node_modules/@oven").join(bun_package()).join("bin/bun"))
                .filter(|p| p.exists())
        })
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("bun"))
                    .find(|p| p.is_file())
            })
        })
        .ok_or("Bun not found: set FLAME_BUN or run .ci/setup/30-bun.sh")?;
    let version = std::process::Command::new(&bun)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} does not run: {e}", bun.display()))?;
    if !version.status.success() {
        return Err(format!("{} --version failed", bun.display()));
    }
    // node_modules: FLAME_BUN_NODE_MODULES, else beside an npm-installed Bun, else the cache.
    let beside_bun = bun
        .ancestors()
        .nth(4)
        .filter(|p| p.ends_with("node_modules"))
        .map(Path::to_path_buf);
    let node_modules = std::env::var_os("FLAME_BUN_NODE_MODULES")
        .map(PathBuf::from)
        .or(beside_bun)
        .or_else(|| home.map(|h| h.join("node_modules")))
        .ok_or("no node_modules for the reference's dependencies")?;
    for dep in ["superjson", "errore"] {
        if !node_modules.join(dep).exists() {
            return Err(format!(
                "{dep} is not installed in {} (run .ci/setup/30-bun.sh)",
                node_modules.display()
            ));
        }
    }
    let reference = std::env::var_os("FLAME_REFERENCE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/flame-js"));
    if !reference.join("e2e/parent.ts").exists() {
        return Err(format!(
            "the reference flame-js is not at {} (set FLAME_REFERENCE_JS)",
            reference.display()
        ));
    }
    Ok(Bun {
        bun,
        node_modules,
        reference,
    })
}

/// A copy of the reference (its `src`, `e2e`, `package.json`, `tsconfig.json`) with
/// `node_modules` linked in, removed on drop. The reference itself stays read-only.
pub struct ReferenceCopy {
    pub dir: PathBuf,
}

impl Drop for ReferenceCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Bun {
    pub fn reference_copy(&self) -> ReferenceCopy {
        let dir = std::env::temp_dir().join(format!("flame-interop-{}", uuid::Uuid::new_v4()));
        copy_dir(&self.reference.join("src"), &dir.join("src"));
        copy_dir(&self.reference.join("e2e"), &dir.join("e2e"));
        for f in ["package.json", "tsconfig.json"] {
            std::fs::copy(self.reference.join(f), dir.join(f)).unwrap();
        }
        std::os::unix::fs::symlink(&self.node_modules, dir.join("node_modules")).unwrap();
        ReferenceCopy { dir }
    }

    /// `bun <script>` in `copy`, with `env`.
    pub fn command(&self, copy: &ReferenceCopy, script: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(&self.bun);
        cmd.arg(script)
            .current_dir(&copy.dir)
            .env("BUN_RUNTIME_TRANSPILER_CACHE_PATH", "0")
            .env_remove("FLAME_SECRET")
            .env_remove("RUNNER_URL")
            .env_remove("PORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the reference's `e2e/runner.ts` on a free port; returns it and a 127.0.0.1 URL.
    pub async fn start_reference_runner(&self, copy: &ReferenceCopy, secret: &str) -> (ChildGuard, String) {
        let cmd = self.command(copy, "e2e/runner.ts", &[("FLAME_SECRET", secret), ("PORT", "0")]);
        let mut child = ChildGuard::spawn("ts-runner", cmd);
        let url = child.wait_line("RUNNER_READY ", Duration::from_secs(30)).await;
        // It binds 0.0.0.0 and reports that; reach it on loopback only.
        let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
        (child, format!("http://127.0.0.1:{port}"))
    }

    /// Runs the reference's `e2e/parent.ts` against `url`; returns (success, stdout, stderr).
    pub async fn run_reference_parent(
        &self,
        copy: &ReferenceCopy,
        url: &str,
        secret: &str,
    ) -> (bool, String, String) {
        let cmd = self.command(
            copy,
            "e2e/parent.ts",
            &[("FLAME_SECRET", secret), ("RUNNER_URL", url)],
        );
        ChildGuard::spawn("ts-parent", cmd)
            .finish(Duration::from_secs(60))
            .await
    }
}
