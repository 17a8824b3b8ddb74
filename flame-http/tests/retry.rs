//! The retry layer over any transport: what it retries, what it never repeats, and deadlines.
#![allow(clippy::unwrap_used)]

mod common;

use async_trait::async_trait;
use common::*;
use flame_core::{codec, Endpoint, Error, ErrorCode, Invocation, Result, RunnerStatus, Transport};
use flame_http::{HttpTransport, Retry, TransportExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fails with the scripted errors, then succeeds; records every attempt number.
struct Scripted {
    errors: Mutex<Vec<Error>>,
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Scripted {
    fn new(errors: Vec<Error>) -> (Self, Arc<Mutex<Vec<u32>>>) {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        (
            Scripted {
                errors: Mutex::new(errors.into_iter().rev().collect()),
                attempts: attempts.clone(),
            },
            attempts,
        )
    }
}

#[async_trait]
impl Transport for Scripted {
    async fn invoke(&self, _: &Endpoint, invocation: &Invocation) -> Result<String> {
        self.attempts.lock().unwrap().push(invocation.attempt);
        match self.errors.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(r#"{"json":"done"}"#.into()),
        }
    }
    async fn ping(&self, _: &Endpoint) -> Result<RunnerStatus> {
        match self.errors.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(RunnerStatus {
                ok: true,
                ..Default::default()
            }),
        }
    }
}

fn ep() -> Endpoint {
    Endpoint::new("http://127.0.0.1:1", "r")
}

#[tokio::test]
async fn retries_errors_that_prove_the_handler_never_ran() {
    let (t, attempts) = Scripted::new(vec![
        Error::not_delivered("refused"),
        Error::new(ErrorCode::Overloaded, "busy"),
    ]);
    let out = t
        .with_retry(3)
        .invoke(&ep(), &invocation(ADD, &(1, 2), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(out, r#"{"json":"done"}"#);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
}

#[tokio::test]
async fn never_repeats_a_call_that_may_have_run_without_a_key() {
    let (t, attempts) = Scripted::new(vec![Error::transport("connection reset mid-call")]);
    let err = Retry::new(t, 3)
        .invoke(&ep(), &invocation(ADD, &(1, 2), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert_eq!(attempts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn with_a_key_any_retryable_error_is_retried_but_not_handler_errors() {
    let (t, attempts) = Scripted::new(vec![
        Error::transport("reset"),
        Error::new(ErrorCode::Timeout, "slow"),
    ]);
    let mut inv = invocation(ADD, &(1, 2), Duration::from_secs(5));
    inv.idempotency_key = Some("k".into());
    Retry::new(t, 5).invoke(&ep(), &inv).await.unwrap();
    assert_eq!(attempts.lock().unwrap().len(), 3);

    let (t, attempts) = Scripted::new(vec![Error::handler("bad input")]);
    let err = Retry::new(t, 5).invoke(&ep(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(attempts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn gives_up_after_max_retries_and_before_the_deadline() {
    let errors = (0..10).map(|_| Error::not_delivered("refused")).collect();
    let (t, attempts) = Scripted::new(errors);
    let err = Retry::new(t, 2)
        .invoke(&ep(), &invocation(ADD, &(1, 2), Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert!(err.handler_never_ran());
    assert_eq!(attempts.lock().unwrap().len(), 3);

    let errors = (0..10).map(|_| Error::not_delivered("refused")).collect();
    let (t, attempts) = Scripted::new(errors);
    let started = std::time::Instant::now();
    Retry::new(t, 10)
        .invoke(&ep(), &invocation(ADD, &(1, 2), Duration::from_millis(120)))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(attempts.lock().unwrap().len() < 11);
}

#[tokio::test]
async fn ping_retries_retryable_errors() {
    let (t, _) = Scripted::new(vec![Error::not_delivered("refused")]);
    assert!(t.with_retry(1).ping(&ep()).await.unwrap().ok);
}

#[tokio::test]
async fn over_http_each_attempt_gets_a_fresh_invocation_id_and_signature() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new().with_retry(4);
    let mut inv = invocation(FLAKY, &2, Duration::from_secs(10));
    inv.idempotency_key = Some("flaky".into());
    let out = t.invoke(&server.endpoint(), &inv).await.unwrap();
    assert_eq!(codec::decode_result::<usize>(&out).unwrap(), 3);
    let ids = server.probe.invocation_ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 3);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 3, "replay cache would reject a reused id: {ids:?}");
}

#[tokio::test]
async fn over_http_retries_an_overloaded_runner_without_a_key() {
    let server = start_with(Some(SECRET), options().max_in_flight(1), |c| c).await;
    let plain = HttpTransport::new();
    let (p, ep) = (plain.clone(), server.endpoint());
    let busy = tokio::spawn(async move {
        p.invoke(&ep, &invocation(SLOW, &300, Duration::from_secs(5)))
            .await
    });
    while server.probe.started() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = plain
        .with_retry(8)
        .invoke(
            &server.endpoint(),
            &invocation(COUNT, &(), Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(codec::decode_result::<usize>(&out).unwrap(), 1);
    busy.await.unwrap().unwrap();
}
