//! "A runner is a runner" and the spawn-depth fence (issue 13), seen from inside a process that
//! carries a runner's environment. The environment is process-wide, so this binary holds one
//! test that sets it once and checks everything in order.
#![allow(clippy::unwrap_used)]
mod common;
mod pool_common;

use common::*;
use flame_core::pool::{ElasticPool, RunnerTemplate};
use flame_core::testkit::InMemoryTransport;
use flame_core::{CheckoutOptions, ErrorCode, Flame, Mode, Pool, PoolConfig, Secret};
use pool_common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn template(fake: &Fake) -> RunnerTemplate {
    RunnerTemplate::new(
        "test-app",
        "nested-parent",
        Secret::generate(),
        Arc::new(fake.transport.clone()),
    )
}

#[tokio::test(start_paused = true)]
async fn inside_a_runner_nothing_spawns_unless_nesting_is_opted_into() {
    // This process now looks exactly like a runner a parent started.
    std::env::set_var("FLAME_MODE", "runner");
    std::env::set_var("FLAME_PARENT_ID", "parent-of-this-test");
    std::env::set_var("FLAME_SPAWN_DEPTH", "1");
    std::env::set_var("FLAME_SECRET", "from-the-parent");

    // 1. A pool built by hand inside a runner refuses at once, names the cause, starts nothing.
    let fake = Fake::new(registry().0);
    let pool = ElasticPool::builder("default", fake.clone(), template(&fake))
        .config(PoolConfig::default().max(4))
        .build()
        .unwrap();
    let err = pool.checkout(&CheckoutOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("runners do not start runners"), "{err}");
    assert!(err.message().contains("FLAME_SPAWN_DEPTH=1"), "{err}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.spawned.load(Ordering::SeqCst), 0, "nothing was spawned");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();

    // 2. With nesting opted into (depth 2), the runner's pool may start runners one level
    //    deeper, and tells them their depth.
    let fake = Fake::new(registry().0);
    let nested = template(&fake).allow_nested(2).unwrap();
    let pool = ElasticPool::builder("default", fake.clone(), nested)
        .config(PoolConfig::default().max(1))
        .build()
        .unwrap();
    let lease = pool.checkout(&CheckoutOptions::default()).await.unwrap();
    drop(lease);
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].env["FLAME_SPAWN_DEPTH"], "2");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    // ...but never past the hard cap.
    let err = template(&fake).allow_nested(4).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);

    // 3. The builder serves as a runner whatever the code asked for.
    let transport = Arc::new(InMemoryTransport::new());
    for builder in [
        Flame::builder(registry().0).mode(Mode::Parent),
        Flame::builder(registry().0).default_mode(Mode::Parent),
        Flame::builder(registry().0).mode(Mode::Local),
        Flame::builder(registry().0).mode(Mode::Parent).allow_nested(1),
    ] {
        let flame = builder.transport(transport.clone()).build().unwrap();
        assert_eq!(flame.mode(), Mode::Runner);
        assert_eq!(
            flame.config().secret.as_ref().map(|s| s.expose()),
            Some("from-the-parent"),
            "the parent's environment wins, even without from_env"
        );
        assert_eq!(flame.config().parent_id.as_deref(), Some("parent-of-this-test"));
    }
    // An explicit opt-in to nesting together with an explicit parent mode is a parent.
    let flame = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .allow_nested(2)
        .transport(transport.clone())
        .build()
        .unwrap();
    assert_eq!(flame.mode(), Mode::Parent);
    flame.shutdown().await.unwrap();
    let err = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .allow_nested(9)
        .transport(transport)
        .build()
        .err()
        .unwrap();
    assert_eq!(err.code(), ErrorCode::Config);
}
