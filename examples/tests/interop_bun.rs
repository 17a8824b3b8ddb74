//! Interop with the TypeScript reference under Bun, both directions, over 127.0.0.1:
//! the reference's `e2e/parent.ts` (unchanged) against our `interop` runner, and our `interop`
//! parent against the reference's `e2e/runner.ts`. Skips with a reason when Bun or the
//! reference is missing; fails instead with `FLAME_TEST_ENGINES=required`.
#![allow(clippy::unwrap_used)]

mod interop_common;

use flame_core::testkit::engine_available;
use interop_common::*;

const SECRET: &str = "flame-secret";

fn bun() -> Option<Bun> {
    let found = find_bun();
    let available = found.as_ref().map(|_| ()).map_err(Clone::clone);
    engine_available("bun", available).then(|| found.ok()).flatten()
}

#[tokio::test]
async fn reference_parent_passes_against_our_runner_signed() {
    let Some(bun) = bun() else { return };
    let copy = bun.reference_copy();
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, SECRET).await;
    let (ok, out, err) = bun.run_reference_parent(&copy, &url, SECRET).await;
    assert!(
        ok && out.contains("E2E_OK"),
        "e2e/parent.ts failed:\n{out}\n{err}"
    );
    drop(runner);
}

#[tokio::test]
async fn our_parent_passes_against_the_reference_runner_signed() {
    let Some(bun) = bun() else { return };
    let copy = bun.reference_copy();
    let bin = interop_binary();
    let (runner, url) = bun.start_reference_runner(&copy, SECRET).await;
    let (ok, out, err) = run_rust_parent(&bin, &url, SECRET).await;
    assert!(
        ok && out.contains("E2E_OK"),
        "interop parent failed:\n{out}\n{err}"
    );

    // Our transport maps the reference runner's replies and statuses to typed errors.
    use flame_core::{Endpoint, ErrorCode, Invocation, Secret, Transport};
    let t = flame_http::HttpTransport::new();
    let ep = Endpoint::new(url.clone(), "ts").with_secret(Some(Secret::new(SECRET)));
    let call = |service: &str, method: &str| Invocation {
        service_id: service.into(),
        method_id: method.into(),
        args: r#"{"json":[]}"#.into(),
        deadline: Some(tokio::time::Instant::now() + std::time::Duration::from_secs(10)),
        idempotency_key: Some("k-1".into()),
        trace: [(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let pong = t.invoke(&ep, &call("utils", "ping")).await.unwrap();
    assert_eq!(pong.decode::<String>().await.unwrap(), "pong");
    let err = t.invoke(&ep, &call("utils", "nope")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    let wrong = Endpoint::new(url.clone(), "ts").with_secret(Some(Secret::new("nope")));
    let err = t.invoke(&wrong, &call("utils", "ping")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
    drop(runner);
}

#[tokio::test]
async fn both_directions_pass_unsigned() {
    // An empty FLAME_SECRET turns signing off on both sides (the reference's `secret: ""`).
    let Some(bun) = bun() else { return };
    let copy = bun.reference_copy();
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, "").await;
    let (ok, out, err) = bun.run_reference_parent(&copy, &url, "").await;
    assert!(
        ok && out.contains("E2E_OK"),
        "e2e/parent.ts unsigned failed:\n{out}\n{err}"
    );
    drop(runner);
    let (runner, url) = bun.start_reference_runner(&copy, "").await;
    let (ok, out, err) = run_rust_parent(&bin, &url, "").await;
    assert!(
        ok && out.contains("E2E_OK"),
        "interop parent unsigned failed:\n{out}\n{err}"
    );
    drop(runner);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_both_ways_and_our_runner_keeps_serving() {
    let Some(bun) = bun() else { return };
    let copy = bun.reference_copy();
    let bin = interop_binary();
    let (runner, url) = start_rust_runner(&bin, SECRET).await;
    let (ok, out, _) = bun.run_reference_parent(&copy, &url, "not-the-secret").await;
    assert!(
        !ok && !out.contains("E2E_OK"),
        "a wrongly signed parent got through:\n{out}"
    );
    let (ok, out, err) = bun.run_reference_parent(&copy, &url, SECRET).await;
    assert!(
        ok && out.contains("E2E_OK"),
        "runner stopped serving:\n{out}\n{err}"
    );
    drop(runner);

    let (runner, url) = bun.start_reference_runner(&copy, SECRET).await;
    let (ok, out, err) = run_rust_parent(&bin, &url, "not-the-secret").await;
    assert!(!ok && !out.contains("E2E_OK"), "{out}");
    assert!(
        err.contains("E2E_FAILED math/add(2, 3)") && err.contains("401"),
        "{err}"
    );
    drop(runner);
}
