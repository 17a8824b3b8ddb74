//! The methods `rel_runner` serves, and the ledger that counts handler executions.
//!
//! Every execution of [`RECORD`] is counted per tag before the handler does anything else, so
//! a handler that *started* twice for one tag is seen even if it was killed mid-call. With
//! `REL_LOG_DIR` set, each execution also appends one line (`<tag>\n`) to
//! `$REL_LOG_DIR/<runner id>.log`, written before the handler sleeps or answers: the log of a
//! runner killed with `kill -9` still tells what it ran.

use flame_core::{Context, Error, ErrorCode, Method, Registry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Runs once per call: counts the tag, then sleeps `sleep_ms` (cancellable), then answers.
pub const RECORD: Method<Record, Recorded> = Method::new("rel", "record");
/// The ledger of this runner: executions, distinct tags, the most runs of one tag, RSS.
pub const STATS: Method<(), Stats> = Method::new("rel", "stats");

/// The request of [`RECORD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The caller's id for this call (one tag per logical call).
    pub tag: String,
    /// How long the handler holds its slot after counting, in milliseconds.
    #[serde(default)]
    pub sleep_ms: u64,
}

impl Record {
    /// A call tagged `tag` that answers at once.
    pub fn new(tag: impl Into<String>) -> Self {
        Record {
            tag: tag.into(),
            sleep_ms: 0,
        }
    }

    /// Holds the slot for `ms` milliseconds after counting.
    pub fn sleep(mut self, ms: u64) -> Self {
        self.sleep_ms = ms;
        self
    }
}

/// The reply of [`RECORD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The runner's process id.
    pub pid: u32,
    /// The runner's id (`FLAME_RUNNER_ID`), if it has one.
    pub runner_id: Option<String>,
    /// How many times this runner has run this tag, this run included.
    pub runs: u32,
}

/// The reply of [`STATS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The runner's process id.
    pub pid: u32,
    /// Executions of [`RECORD`] so far.
    pub executions: u64,
    /// Distinct tags seen.
    pub distinct: u64,
    /// The most executions of a single tag.
    pub max_per_tag: u32,
    /// The runner's resident set size (`VmRSS`), in KiB.
    pub rss_kb: u64,
}

struct Ledger {
    counts: Mutex<HashMap<String, u32>>,
    executions: AtomicU64,
    log: Option<Mutex<File>>,
}

fn ledger() -> &'static Ledger {
    static LEDGER: OnceLock<Ledger> = OnceLock::new();
    LEDGER.get_or_init(|| {
        let log = std::env::var_os("REL_LOG_DIR").and_then(|dir| {
            let name = std::env::var("FLAME_RUNNER_ID").unwrap_or_else(|_| std::process::id().to_string());
            let path = std::path::Path::new(&dir).join(format!("{name}.log"));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(Mutex::new)
        });
        Ledger {
            counts: Mutex::new(HashMap::new()),
            executions: AtomicU64::new(0),
            log,
        }
    })
}

impl Ledger {
    fn record(&self, tag: &str) -> Result<u32, Error> {
        self.executions.fetch_add(1, Ordering::AcqRel);
        let runs = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(tag.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        if let Some(log) = &self.log {
            let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line: appends of a few bytes land whole.
            file.write_all(format!("{tag}\n").as_bytes())
                .map_err(|e| Error::handler(format!("cannot append to the execution log: {e}")))?;
        }
        Ok(runs)
    }

    fn stats(&self) -> Stats {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            pid: std::process::id(),
            executions: self.executions.load(Ordering::Acquire),
            distinct: counts.len() as u64,
            max_per_tag: counts.values().copied().max().unwrap_or(0),
            rss_kb: crate::procfs::rss_kb(std::process::id()).unwrap_or(0),
        }
    }
}

/// The registry `rel_runner` serves: [`RECORD`] and [`STATS`].
pub fn registry() -> Registry {
    Registry::new()
        .handle(RECORD, |ctx: Context, req: Record| async move {
            let runs = ledger().record(&req.tag)?;
            if req.sleep_ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(req.sleep_ms)) => {}
                    _ = ctx.cancelled() => return Err(Error::new(ErrorCode::Timeout, "record: cancelled while sleeping")),
                }
            }
            Ok(Recorded {
                pid: std::process::id(),
                runner_id: std::env::var("FLAME_RUNNER_ID").ok(),
                runs,
            })
        })
        .handle(STATS, |_ctx: Context, ()| async move { Ok(ledger().stats()) })
}

/// Reads the execution logs under `dir`: for each runner log file (by file stem), how many
/// times each tag ran there.
pub fn read_logs(dir: &std::path::Path) -> HashMap<String, HashMap<String, u32>> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !path.extension().is_some_and(|x| x == "log") {
            continue;
        }
        let runner = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let counts: &mut HashMap<String, u32> = out.entry(runner).or_default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            *counts.entry(line.to_owned()).or_insert(0) += 1;
        }
    }
    out
}
