//! The call lifecycle core owns (issue 14): the precedence of timeouts and retry policies (each
//! row of the table in `flame_core::call` is a test), the one retry loop above the pool, and
//! what it never repeats. A scripted transport records every attempt.
#![allow(clippy::unwrap_used)]
mod common;

use async_trait::async_trait;
use common::*;
use flame_core::{
    CallOptions, Endpoint, Error, ErrorCode, Flame, Invocation, Method, Mode, PoolConfig, Registry, Result,
    RetryPolicy, RunnerStatus, StaticPool, Transport,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One attempt as the transport saw it.
#[derive(Debug, Clone)]
struct Seen {
    runner: String,
    attempt: u32,
    remaining: Duration,
}

/// Fails with the scripted errors (per runner: a runner listed in `dead` always refuses),
/// then succeeds; records every attempt.
#[derive(Default)]
struct Scripted {
    errors: Mutex<Vec<Error>>,
    dead: Vec<String>,
    seen: Mutex<Vec<Seen>>,
}

impl Scripted {
    fn failing(errors: Vec<Error>) -> Arc<Scripted> {
        Arc::new(Scripted {
            errors: Mutex::new(errors.into_iter().rev().collect()),
            ..Scripted::default()
        })
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn attempts(&self) -> Vec<u32> {
        self.seen().iter().map(|s| s.attempt).collect()
    }
}

#[async_trait]
impl Transport for Scripted {
    async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<flame_core::Reply> {
        self.seen.lock().unwrap().push(Seen {
            runner: endpoint.runner_id.clone(),
            attempt: invocation.attempt,
            remaining: invocation.remaining().unwrap(),
        });
        if self.dead.contains(&endpoint.runner_id) {
            return Err(Error::not_delivered(format!("{} refused", endpoint.runner_id)));
        }
        match self.errors.lock().unwrap().pop() {
            Some(e) => Err(e),
            None => Ok(flame_core::Reply::Json(r#"{"json":3}"#.into())),
        }
    }
    async fn ping(&self, _: &Endpoint) -> Result<RunnerStatus> {
        Ok(RunnerStatus {
            ok: true,
            ..RunnerStatus::default()
        })
    }
}

fn parent(
    transport: Arc<Scripted>,
    pool: PoolConfig,
    configure: impl FnOnce(flame_core::FlameBuilder) -> flame_core::FlameBuilder,
) -> Flame {
    let endpoints = ["r1", "r2"]
        .iter()
        .map(|r| Endpoint::new(format!("http://{r}.invalid"), *r))
        .collect();
    let static_pool = StaticPool::new("default", endpoints, 10).with_call_defaults(pool.call_defaults());
    let builder = Flame::builder(registry().0)
        .mode(Mode::Parent)
        .transport(transport)
        .with_pool(Arc::new(static_pool))
        .handle_signals(false);
    configure(builder).build().unwrap()
}

fn refusals(n: usize) -> Vec<Error> {
    (0..n).map(|_| Error::not_delivered("refused")).collect()
}

const SECS: fn(u64) -> Duration = Duration::from_secs;
const PLAIN: Method<(i64, i64), i64> = ADD;
const WITH_TIMEOUT: Method<(i64, i64), i64> = ADD.with_timeout_ms(4_000);
const WITH_RETRY: Method<(i64, i64), i64> = ADD.with_retry(RetryPolicy::attempts(3));

async fn timeout_seen(method: Method<(i64, i64), i64>, options: CallOptions, pool: PoolConfig) -> Duration {
    let t = Scripted::failing(vec![]);
    let flame = parent(t.clone(), pool, |b| b.request_timeout(SECS(9)));
    flame.call_with(method, (1, 2), options).await.unwrap();
    t.seen()[0].remaining
}

#[tokio::test(start_paused = true)]
async fn timeout_row_1_the_call_wins() {
    let pool = PoolConfig::default().call_timeout(SECS(6));
    let seen = timeout_seen(WITH_TIMEOUT, CallOptions::new().timeout(SECS(2)), pool).await;
    assert_eq!(seen, SECS(2));
}

#[tokio::test(start_paused = true)]
async fn timeout_row_2_then_the_method() {
    let pool = PoolConfig::default().call_timeout(SECS(6));
    assert_eq!(
        timeout_seen(WITH_TIMEOUT, CallOptions::new(), pool).await,
        SECS(4)
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_row_3_then_the_pool() {
    let pool = PoolConfig::default().call_timeout(SECS(6));
    assert_eq!(timeout_seen(PLAIN, CallOptions::new(), pool).await, SECS(6));
}

#[tokio::test(start_paused = true)]
async fn timeout_row_4_then_the_configuration() {
    assert_eq!(
        timeout_seen(PLAIN, CallOptions::new(), PoolConfig::default()).await,
        SECS(9)
    );
}

async fn attempts_made(method: Method<(i64, i64), i64>, options: CallOptions, pool: PoolConfig) -> usize {
    let t = Scripted::failing(refusals(20));
    let flame = parent(t.clone(), pool, |b| b.default_retry(RetryPolicy::attempts(5)));
    let err = flame.call_with(method, (1, 2), options).await.unwrap_err();
    assert!(err.handler_never_ran(), "{err}");
    t.seen().len()
}

#[tokio::test(start_paused = true)]
async fn retry_row_1_the_call_wins() {
    let pool = PoolConfig::default().retry(RetryPolicy::attempts(4));
    assert_eq!(
        attempts_made(WITH_RETRY, CallOptions::new().retries(1), pool).await,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn retry_row_2_then_the_method() {
    let pool = PoolConfig::default().retry(RetryPolicy::attempts(4));
    assert_eq!(attempts_made(WITH_RETRY, CallOptions::new(), pool).await, 3);
}

#[tokio::test(start_paused = true)]
async fn retry_row_3_then_the_pool() {
    let pool = PoolConfig::default().retry(RetryPolicy::attempts(4));
    assert_eq!(attempts_made(PLAIN, CallOptions::new(), pool).await, 4);
}

#[tokio::test(start_paused = true)]
async fn retry_row_4_then_the_configuration() {
    assert_eq!(
        attempts_made(PLAIN, CallOptions::new(), PoolConfig::default()).await,
        5
    );
}

#[tokio::test(start_paused = true)]
async fn without_any_policy_a_call_is_attempted_once() {
    let t = Scripted::failing(refusals(3));
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    flame.call(ADD, (1, 2)).await.unwrap_err();
    assert_eq!(t.attempts(), [1]);
}

#[tokio::test(start_paused = true)]
async fn retries_errors_that_prove_the_handler_never_ran_with_rising_attempt_numbers() {
    let t = Scripted::failing(vec![
        Error::not_delivered("refused"),
        Error::new(ErrorCode::Overloaded, "busy"),
    ]);
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let out = flame
        .call_with(ADD, (1, 2), CallOptions::new().retries(3))
        .await
        .unwrap();
    assert_eq!(out, 3);
    assert_eq!(t.attempts(), [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_keyless_call_that_may_have_run_is_never_retried() {
    let t = Scripted::failing(vec![Error::transport("connection reset mid-call")]);
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let err = flame
        .call_with(ADD, (1, 2), CallOptions::new().retries(3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert_eq!(t.attempts(), [1]);
}

#[tokio::test(start_paused = true)]
async fn with_a_key_any_retryable_error_is_retried_but_not_handler_errors() {
    let t = Scripted::failing(vec![
        Error::transport("reset"),
        Error::new(ErrorCode::Timeout, "slow"),
    ]);
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let keyed = CallOptions::new().retries(5).idempotency_key("k");
    flame.call_with(ADD, (1, 2), keyed.clone()).await.unwrap();
    assert_eq!(t.attempts().len(), 3);

    let t = Scripted::failing(vec![Error::handler("bad input")]);
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let err = flame.call_with(ADD, (1, 2), keyed).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(t.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_policy_and_before_the_deadline() {
    let t = Scripted::failing(refusals(10));
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let err = flame
        .call_with(ADD, (1, 2), CallOptions::new().retries(2).timeout(SECS(30)))
        .await
        .unwrap_err();
    assert!(err.handler_never_ran());
    assert_eq!(t.attempts().len(), 3);

    let t = Scripted::failing(refusals(10));
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let slow = RetryPolicy::attempts(11)
        .with_jitter(false)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(50));
    let started = tokio::time::Instant::now();
    flame
        .call_with(
            ADD,
            (1, 2),
            CallOptions::new().retry(slow).timeout(Duration::from_millis(120)),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        t.attempts().len(),
        3,
        "attempts at 0, 50 and 100 ms; the next would pass the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_reaches_another_runner_when_the_first_is_dead() {
    let t = Arc::new(Scripted {
        dead: vec!["r1".into(), "r2".into()],
        ..Scripted::default()
    });
    // Both runners refuse: the retries go to both, not twice to the same one.
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    flame
        .call_with(ADD, (1, 2), CallOptions::new().retries(1))
        .await
        .unwrap_err();
    let runners: Vec<String> = t.seen().into_iter().map(|s| s.runner).collect();
    assert_eq!(runners.len(), 2);
    assert_ne!(
        runners[0], runners[1],
        "the retry went to the same dead runner: {runners:?}"
    );

    // One runner dead: whichever the first attempt hits, the call succeeds on the other.
    let t = Arc::new(Scripted {
        dead: vec!["r1".into()],
        ..Scripted::default()
    });
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    for _ in 0..5 {
        assert_eq!(
            flame
                .call_with(ADD, (1, 2), CallOptions::new().retries(1))
                .await
                .unwrap(),
            3
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_retries_when_a_pool_keeps_failing() {
    // Every call fails with a safe-to-retry error; the budget (20 % of calls, floor 10/s, which
    // a fresh pool starts with ten seconds of) caps retries however many each call may make.
    let t = Scripted::failing(refusals(100_000));
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    let policy = RetryPolicy::attempts(10).with_backoff(Duration::from_millis(1), Duration::from_millis(1));
    for _ in 0..50 {
        flame
            .call_with(ADD, (1, 2), CallOptions::new().retry(policy))
            .await
            .unwrap_err();
    }
    let attempts = t.seen().len();
    // 50 first attempts + at most the 100-token floor + 20 % of 50 calls (+ refill in the few ms
    // the backoffs take): far below the 500 the policy alone allows.
    assert!(
        (150..=170).contains(&attempts),
        "{attempts} attempts for 50 calls"
    );
    let no_budget = RetryPolicy::attempts(3).with_budget(None);
    let t = Scripted::failing(refusals(100_000));
    let flame = parent(t.clone(), PoolConfig::default(), |b| b);
    for _ in 0..100 {
        flame
            .call_with(ADD, (1, 2), CallOptions::new().retry(no_budget))
            .await
            .unwrap_err();
    }
    assert_eq!(
        t.seen().len(),
        300,
        "without a budget every call makes its 3 attempts"
    );
}

#[tokio::test]
async fn the_attempt_number_reaches_the_handler_over_the_wire() {
    const ATTEMPT: Method<(), u32> = Method::new("t", "attempt");
    let registry = Registry::new().handle(ATTEMPT, |ctx: flame_core::Context, ()| async move {
        Ok(ctx.attempt())
    });
    let transport = flame_core::testkit::InMemoryTransport::new();
    transport.add("mem://r1", flame_core::Dispatcher::new(registry, "r1"));
    let mut inv = Invocation {
        service_id: "t".into(),
        method_id: "attempt".into(),
        args: flame_core::codec::encode_args(&()).unwrap().into(),
        deadline: Some(tokio::time::Instant::now() + SECS(5)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 3,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let out = transport
        .invoke(&Endpoint::new("mem://r1", "r1"), &inv)
        .await
        .unwrap();
    assert_eq!(out.decode::<u32>().await.unwrap(), 3);
    inv.attempt = 1;
    let envelope = inv.to_request().unwrap();
    assert_eq!(envelope.attempt, Some(1));
}
