// Shared by the integration tests of flame-core (included with `mod`).
#![allow(dead_code)]
use flame_core::{Context, Error, Method, Registry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
pub const SLOW: Method<u64, String> = Method::new("test", "slow");
pub const PANIC: Method<(), ()> = Method::new("test", "panic");
pub const FAIL: Method<String, ()> = Method::new("test", "fail");
pub const TYPED_FAIL: Method<u32, u32> = Method::new("test", "typed_fail");
pub const COUNT: Method<(), usize> = Method::new("test", "count");

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
pub enum Declined {
    Insufficient { needed: u32 },
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "declined")
    }
}

pub struct Probe {
    pub cancelled: Arc<AtomicUsize>,
    pub runs: Arc<AtomicUsize>,
}

pub fn registry() -> (Registry, Probe) {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let c = cancelled.clone();
    let r = runs.clone();
    let reg = Registry::new()
        .handle(ADD, |_ctx: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
        .handle(SLOW, move |ctx: Context, ms: u64| {
            let c = c.clone();
            async move {
                let watcher = ctx.cancellation().clone();
                tokio::spawn(async move {
                    watcher.cancelled().await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(format!("slept {ms}"))
            }
        })
        .handle(PANIC, |_ctx: Context, ()| async move {
            panic!("handler exploded");
        })
        .handle(FAIL, |_ctx: Context, msg: String| async move {
            Err::<(), _>(Error::handler(msg))
        })
        .handle(TYPED_FAIL, |_ctx: Context, needed: u32| async move {
            Err::<u32, _>(Error::app(Declined::Insufficient { needed }))
        })
        .handle(COUNT, move |_ctx: Context, ()| {
            let r = r.clone();
            async move { Ok(r.fetch_add(1, Ordering::SeqCst) + 1) }
        });
    (reg, Probe { cancelled, runs })
}
