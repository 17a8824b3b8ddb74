//! The processes a benchmark run starts — our runner, Bun with the reference, the echo server
//! — and what it reads about them: readiness lines and resident memory.
//!
//! Every child is killed (and reaped) when its [`Child`] guard drops, also when the run fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// A child process killed when dropped.
pub struct Child {
    child: tokio::process::Child,
    name: String,
}

impl Child {
    /// Starts `cmd` with piped stdout/stderr and `kill_on_drop`.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Child, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Child {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Reads stdout until a line starting with `prefix` (within `within`) and returns the rest
    /// of it. Other lines, before and after, and stderr go to this process's stderr, prefixed
    /// with the child's name, so the child never blocks on a full pipe.
    pub async fn wait_line(&mut self, prefix: &str, within: Duration) -> Result<String, String> {
        if let Some(err) = self.child.stderr.take() {
            forward(err, self.name.clone());
        }
        let out = self
            .child
            .stdout
            .take()
            .ok_or_else(|| format!("{}: stdout already taken", self.name))?;
        let mut lines = BufReader::new(out).lines();
        let name = self.name.clone();
        let found = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.trim().strip_prefix(prefix) {
                    return Some(rest.trim().to_owned());
                }
                eprintln!("[{name}] {line}");
            }
            None
        })
        .await;
        let name = self.name.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
        match found {
            Ok(Some(rest)) => Ok(rest),
            Ok(None) => Err(format!("{} exited before printing {prefix}", self.name)),
            Err(_) => Err(format!("{} did not print {prefix} within {within:?}", self.name)),
        }
    }

    /// Waits (bounded) for the process to exit on its own; kills it past `within`.
    pub async fn wait(mut self, within: Duration) -> Result<bool, String> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Ok(status.success()),
            Ok(Err(e)) => Err(format!("{}: {e}", self.name)),
            Err(_) => Err(format!("{} did not finish within {within:?}", self.name)),
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

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`), if readable.
///
/// ```
/// let kib = flame_bench::procs::rss_kib(std::process::id()).unwrap();
/// assert!(kib > 0);
/// ```
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time process `pid` has used so far, all threads, user + system (`utime` + `stime` of
/// `/proc/<pid>/stat`, in the kernel's 100 Hz `USER_HZ` ticks), if readable.
///
/// ```
/// assert!(flame_bench::procs::cpu_time(std::process::id()).is_some());
/// ```
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

/// Bun, the reference's dependencies and the reference itself, found the way the interop
/// tests find them (`examples/tests/interop_common`): `FLAME_BUN`, the cache of
/// `.ci/setup/30-bun.sh` (`$FLAME_BUN_HOME`, default `~/.cache/flame-bun`), or `bun` on `PATH`;
/// `FLAME_BUN_NODE_MODULES` (or beside Bun, or the cache) for `superjson` and `errore`;
/// `FLAME_REFERENCE_JS` or `../shared/reference/flame-js` beside the repository.
#[derive(Debug, Clone)]
pub struct Bun {
    /// The Bun executable.
    pub bun: PathBuf,
    /// A `node_modules` holding `superjson` and `errore`.
    pub node_modules: PathBuf,
    /// The reference's checkout (`src/`, `e2e/`).
    pub reference: PathBuf,
}

fn bun_package() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "bun-linux-aarch64"
    } else {
        "bun-linux-x64"
    }
}

impl Bun {
    /// Finds Bun and the reference, or says why not.
    pub fn find(repo_root: &Path) -> Result<Bun, String> {
        let home = std::env::var_os("FLAME_BUN_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flame-bun")));
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
            .ok_or("Bun not found: set FLAME_BUN or run `source .ci/setup/30-bun.sh`")?;
        let version = std::process::Command::new(&bun)
            .arg("--version")
            .output()
            .map_err(|e| format!("{} does not run: {e}", bun.display()))?;
        if !version.status.success() {
            return Err(format!("{} --version failed", bun.display()));
        }
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
                    "{dep} is not installed in {} (run `source .ci/setup/30-bun.sh`)",
                    node_modules.display()
                ));
            }
        }
        let reference = std::env::var_os("FLAME_REFERENCE_JS")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root.join("../shared/reference/flame-js"));
        if !reference.join("e2e/services.ts").exists() {
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

    /// The version Bun reports.
    pub fn version(&self) -> String {
        std::process::Command::new(&self.bun)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// A temporary copy of the reference (`src/`, `e2e/`, `package.json`, `tsconfig.json`) with
    /// `node_modules` linked in and `scripts` written to `bench/`; removed on drop. The
    /// reference itself stays read-only.
    pub fn workdir(&self, scripts: &[(&str, &str)]) -> Result<TempDir, String> {
        let dir = TempDir(std::env::temp_dir().join(format!("flame-bench-{}", uuid::Uuid::new_v4())));
        let io = |e: std::io::Error| format!("preparing {}: {e}", dir.0.display());
        copy_dir(&self.reference.join("src"), &dir.0.join("src")).map_err(io)?;
        copy_dir(&self.reference.join("e2e"), &dir.0.join("e2e")).map_err(io)?;
        for f in ["package.json", "tsconfig.json"] {
            std::fs::copy(self.reference.join(f), dir.0.join(f)).map_err(io)?;
        }
        std::os::unix::fs::symlink(&self.node_modules, dir.0.join("node_modules")).map_err(io)?;
        std::fs::create_dir_all(dir.0.join("bench")).map_err(io)?;
        for (name, text) in scripts {
            std::fs::write(dir.0.join("bench").join(name), text).map_err(io)?;
        }
        Ok(dir)
    }

    /// `bun <script>` in `dir`, with `env` (and none of the caller's `FLAME_*`).
    pub fn command(&self, dir: &TempDir, script: &str, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(&self.bun);
        cmd.arg(script)
            .current_dir(&dir.0)
            .env("BUN_RUNTIME_TRANSPILER_CACHE_PATH", "0")
            .env_remove("FLAME_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
