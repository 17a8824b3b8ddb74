//! Test support shared by every crate's engine tests (feature `testkit`).
//!
//! Engine tests (dockerd, moto_server, Bun) live inside `cargo test`. With
//! `FLAME_TEST_ENGINES=required` a missing engine fails the test; without it the test skips
//! and prints why.
//!
//! [`conformance`] is the behaviour suite every backend's tests run (DESIGN.md §6);
//! [`InMemoryTransport`] hands envelopes to in-process dispatchers through the same runner
//! pipeline as HTTP (window, replay, idempotency), so pools and the parent path are testable
//! without sockets.

pub mod conformance;
mod memory;
mod memory_backend;
pub mod parent_process;
pub mod parent_program;

pub use memory::InMemoryTransport;
pub use memory_backend::MemoryBackend;

/// Whether engine tests must run (`FLAME_TEST_ENGINES=required`).
pub fn engines_required() -> bool {
    std::env::var("FLAME_TEST_ENGINES")
        .map(|v| v.trim() == "required")
        .unwrap_or(false)
}

/// Gates an engine test: returns `true` when `engine` is available; otherwise panics when
/// engines are required, or prints the reason and returns `false` (the test then returns
/// early, skipped).
///
/// ```
/// let available: Result<(), String> = Err("dockerd is not running".into());
/// if std::env::var("FLAME_TEST_ENGINES").is_err() {
///     assert!(!flame_core::testkit::engine_available("docker", available));
/// }
/// ```
pub fn engine_available(engine: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(why) if engines_required() => {
            panic!("engine `{engine}` is required (FLAME_TEST_ENGINES=required) but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: engine `{engine}` unavailable: {why} (set FLAME_TEST_ENGINES=required to fail instead)");
            false
        }
    }
}
