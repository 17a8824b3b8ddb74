//! Spawn safety: who may start runners (DESIGN.md §9, README "Safety").
//!
//! Two fences live here, read from the process environment every time they are asked, so no
//! builder setting can get around them:
//!
//! - **A runner is a runner.** A process a flame parent started as a runner carries
//!   `FLAME_MODE=runner` (or `FLAME_RUNNER=true`) *and* `FLAME_PARENT_ID`. Such a process serves
//!   as a runner whatever its code says ([`spawned_runner`]; the builder applies it).
//! - **Spawn depth.** Every runner is started with `FLAME_SPAWN_DEPTH` one above its parent's
//!   ([`spawn_depth`]; a process without it is at depth 0, or 1 if it is a spawned runner). A
//!   pool may start runners only while `depth + 1 <= max_depth`; `max_depth` is 1 unless a user
//!   opts into nested pools (`FlameBuilder::allow_nested`), and never above
//!   [`MAX_NESTING_DEPTH`]. [`check_spawn_allowed`] is what every elastic pool asks before it
//!   starts a runner, on every backend.
//!
//! ```
//! use flame_core::spawn_guard::{self, SPAWN_DEPTH_VAR};
//! // A top-level process (no FLAME_* runner variables) may start runners at depth 1.
//! let lookup = |_: &str| None::<String>;
//! assert_eq!(spawn_guard::spawn_depth_from(&lookup).unwrap(), 0);
//! assert_eq!(spawn_guard::check_spawn_allowed_from(&lookup, 1).unwrap(), 1);
//! // A runner (depth 1) may not, unless nesting was opted into.
//! let runner = |k: &str| match k {
//!     "FLAME_MODE" => Some("runner".to_owned()),
//!     "FLAME_PARENT_ID" => Some("p-1".to_owned()),
//!     k if k == SPAWN_DEPTH_VAR => Some("1".to_owned()),
//!     _ => None,
//! };
//! let err = spawn_guard::check_spawn_allowed_from(&runner, 1).unwrap_err();
//! assert_eq!(err.code(), flame_core::ErrorCode::Config);
//! assert_eq!(spawn_guard::check_spawn_allowed_from(&runner, 2).unwrap(), 2);
//! ```

use crate::error::{Error, Result};

/// The environment variable that carries a runner's spawn depth (1 for a runner of a top-level
/// parent).
pub const SPAWN_DEPTH_VAR: &str = "FLAME_SPAWN_DEPTH";

/// The hard cap on nesting: no opt-in lets a runner tree grow deeper than this.
pub const MAX_NESTING_DEPTH: u32 = 3;

/// The default `max_depth`: a top-level parent starts runners; runners start none.
pub const DEFAULT_MAX_DEPTH: u32 = 1;

/// What the environment says about a process a flame parent started as a runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnedRunner {
    /// `FLAME_PARENT_ID`: the parent that started this process.
    pub parent_id: String,
    /// This process's spawn depth.
    pub depth: u32,
}

/// `Some` when this process was started by a flame parent as a runner (`FLAME_MODE=runner` or
/// `FLAME_RUNNER=true`, with `FLAME_PARENT_ID`): it must serve as a runner.
pub fn spawned_runner() -> Option<SpawnedRunner> {
    spawned_runner_from(&|k| std::env::var(k).ok())
}

/// [`spawned_runner`] over a variable lookup (for tests and embedding).
pub fn spawned_runner_from(lookup: &dyn Fn(&str) -> Option<String>) -> Option<SpawnedRunner> {
    let get = |k: &str| lookup(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let parent_id = get("FLAME_PARENT_ID")?;
    let runner = match get("FLAME_MODE") {
        Some(mode) => mode.eq_ignore_ascii_case("runner"),
        None => get("FLAME_RUNNER")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
    };
    if !runner {
        return None;
    }
    // A malformed depth must not make a runner look like a top-level parent.
    let depth = spawn_depth_from(lookup).unwrap_or(MAX_NESTING_DEPTH).max(1);
    Some(SpawnedRunner { parent_id, depth })
}

/// This process's spawn depth: `FLAME_SPAWN_DEPTH`, else 1 for a spawned runner (started by a
/// flame version that did not set it), else 0.
pub fn spawn_depth() -> Result<u32> {
    spawn_depth_from(&|k| std::env::var(k).ok())
}

/// [`spawn_depth`] over a variable lookup.
pub fn spawn_depth_from(lookup: &dyn Fn(&str) -> Option<String>) -> Result<u32> {
    match lookup(SPAWN_DEPTH_VAR).map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => v.parse::<u32>().map_err(|_| {
            Error::config(format!(
                "{SPAWN_DEPTH_VAR}={v:?} is not a whole number: refusing to start runners from a process whose spawn depth is unknown"
            ))
        }),
        _ => {
            let has_parent = lookup("FLAME_PARENT_ID").is_some_and(|v| !v.trim().is_empty());
            Ok(u32::from(has_parent))
        }
    }
}

/// Whether this process may start a runner under `max_depth` (clamped to
/// [`MAX_NESTING_DEPTH`]); returns the depth the new runner gets. A `CONFIG` error names the
/// cause otherwise, and nothing may be spawned.
pub fn check_spawn_allowed(max_depth: u32) -> Result<u32> {
    check_spawn_allowed_from(&|k| std::env::var(k).ok(), max_depth)
}

/// [`check_spawn_allowed`] over a variable lookup.
pub fn check_spawn_allowed_from(lookup: &dyn Fn(&str) -> Option<String>, max_depth: u32) -> Result<u32> {
    let depth = spawn_depth_from(lookup)?;
    let max_depth = max_depth.clamp(1, MAX_NESTING_DEPTH);
    let child = depth.saturating_add(1);
    if child <= max_depth {
        return Ok(child);
    }
    let parent = lookup("FLAME_PARENT_ID").unwrap_or_default();
    Err(Error::config(if max_depth == DEFAULT_MAX_DEPTH {
        format!(
            "this process is a flame runner ({SPAWN_DEPTH_VAR}={depth}, started by parent {parent:?}) and runners do not start runners: \
             a pool inside a runner never spawns (did `main` build a parent without honouring FLAME_MODE=runner?); \
             nested pools need an explicit opt-in, FlameBuilder::allow_nested(depth)"
        )
    } else {
        format!(
            "this process is at spawn depth {depth} ({SPAWN_DEPTH_VAR}), and nested pools were allowed only up to depth {max_depth}: no runner is started"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn a_runner_needs_both_mode_and_parent_id() {
        assert!(spawned_runner_from(&env(&[("FLAME_MODE", "runner")])).is_none());
        assert!(spawned_runner_from(&env(&[("FLAME_PARENT_ID", "p")])).is_none());
        assert!(spawned_runner_from(&env(&[("FLAME_MODE", "parent"), ("FLAME_PARENT_ID", "p")])).is_none());
        let r = spawned_runner_from(&env(&[("FLAME_MODE", "Runner"), ("FLAME_PARENT_ID", "p")])).unwrap();
        assert_eq!((r.parent_id.as_str(), r.depth), ("p", 1));
        let r = spawned_runner_from(&env(&[("FLAME_RUNNER", "true"), ("FLAME_PARENT_ID", "p")])).unwrap();
        assert_eq!(r.depth, 1);
    }

    #[test]
    fn a_malformed_depth_fails_closed() {
        let bad = env(&[
            ("FLAME_MODE", "runner"),
            ("FLAME_PARENT_ID", "p"),
            ("FLAME_SPAWN_DEPTH", "x"),
        ]);
        assert_eq!(spawned_runner_from(&bad).unwrap().depth, MAX_NESTING_DEPTH);
        let e = check_spawn_allowed_from(&bad, MAX_NESTING_DEPTH).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Config);
        assert!(e.message().contains("FLAME_SPAWN_DEPTH"), "{e}");
    }

    #[test]
    fn depth_is_capped_even_when_nesting_is_allowed() {
        let top = env(&[]);
        assert_eq!(
            check_spawn_allowed_from(&top, 0).unwrap(),
            1,
            "max_depth below 1 is 1"
        );
        let deep = env(&[("FLAME_PARENT_ID", "p"), ("FLAME_SPAWN_DEPTH", "3")]);
        let e = check_spawn_allowed_from(&deep, 100).unwrap_err();
        assert!(e.message().contains("depth 3"), "{e}");
        let runner = env(&[("FLAME_PARENT_ID", "p")]);
        let e = check_spawn_allowed_from(&runner, 1).unwrap_err();
        assert!(e.message().contains("runners do not start runners"), "{e}");
    }
}
