//! Local mode: handlers run in-process with the same context semantics as remote calls.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use flame_core::{CallOptions, ErrorCode, Flame, Method, Mode};
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn local() -> (Flame, Probe) {
    let (reg, probe) = registry();
    (Flame::builder(reg).mode(Mode::Local).build().unwrap(), probe)
}

#[tokio::test]
async fn typed_call_returns_result() {
    let (flame, _) = local().await;
    assert_eq!(flame.call(ADD, (40, 2)).await.unwrap(), 42);
}

#[tokio::test]
async fn deadline_fires_cancellation_and_times_out() {
    let (flame, probe) = local().await;
    let err = flame
        .call_with(SLOW, 5_000, CallOptions::new().timeout(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(probe.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn panic_is_a_handler_error_for_that_call_only() {
    let (flame, _) = local().await;
    let err = flame.call(PANIC, ()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(flame.call(ADD, (1, 1)).await.unwrap(), 2);
}

#[tokio::test]
async fn typed_app_error_comes_back_typed() {
    let (flame, _) = local().await;
    let err = flame.call(TYPED_FAIL, 7).await.unwrap_err();
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 7 })
    );
}

#[tokio::test]
async fn unknown_method_is_not_found() {
    let (flame, _) = local().await;
    const NOPE: Method<(), ()> = Method::new("nope", "nothing");
    assert_eq!(
        flame.call(NOPE, ()).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn mismatched_types_go_through_the_codec() {
    let (flame, _) = local().await;
    // Same ids as ADD, other (compatible) types: decoded like a remote call would be.
    const ADD_I32: Method<(i32, i32), i32> = Method::new("math", "add");
    assert_eq!(flame.call(ADD_I32, (1, 2)).await.unwrap(), 3);
    const ADD_BAD: Method<String, i64> = Method::new("math", "add");
    assert_eq!(
        flame.call(ADD_BAD, "x".into()).await.unwrap_err().code(),
        ErrorCode::Serialization
    );
}

#[tokio::test]
async fn shutdown_waits_for_calls_in_flight_then_refuses() {
    let (flame, _) = local().await;
    let f2 = flame.clone();
    let slow = tokio::spawn(async move { f2.call(SLOW, 100).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    flame.shutdown().await.unwrap();
    assert!(
        slow.is_finished(),
        "shutdown returned before the call in flight finished"
    );
    assert_eq!(slow.await.unwrap().unwrap(), "slept 100");
    assert_eq!(
        flame.call(ADD, (1, 1)).await.unwrap_err().code(),
        ErrorCode::Shutdown
    );
}

#[tokio::test]
async fn duplicate_registration_fails_start() {
    let (reg, _) = registry();
    let reg = reg.handle(ADD, |_c: flame_core::Context, (a, b): (i64, i64)| async move {
        Ok(a * b)
    });
    let err = Flame::builder(reg).build().err().unwrap();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("math/add"));
}

#[tokio::test]
async fn parent_mode_without_transport_is_a_config_error() {
    let (reg, _) = registry();
    let err = Flame::builder(reg).mode(Mode::Parent).build().err().unwrap();
    assert_eq!(err.code(), ErrorCode::Config);
}
