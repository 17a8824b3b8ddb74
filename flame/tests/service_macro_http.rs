//! `#[flame::service]` over real HTTP on 127.0.0.1: a runner serves the macro's registration,
//! a parent calls it through the generated client, signed, with deadlines and typed errors —
//! the same checks flame-http's round-trip tests make of hand-written handlers.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame::http::{HttpServer, ServerOptions};
use flame::raw::Dispatcher;
use flame::{CallOptions, Config, ErrorCode, Flame, Method, Mode, Registry, Secret};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "macro-test-secret";

/// A runner on 127.0.0.1 serving `MathService`; stopped on drop.
struct Runner {
    url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<flame::Result<()>>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Runner {
    async fn start(cancelled: Arc<AtomicUsize>) -> Runner {
        let service = MathImpl {
            cancelled,
            ..Default::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(MathService::registry(service), "macro-runner"));
        let mut cfg = Config::default();
        cfg.secret = Some(Secret::new(SECRET));
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        let options = ServerOptions::default()
            .announce(false)
            .handle_signals(false)
            .drain_grace(Duration::from_secs(5));
        let bound = HttpServer::with_options(options)
            .bind(dispatcher, &cfg)
            .await
            .unwrap();
        let url = bound.url();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Runner {
            url,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the server and waits (bounded) for it to return.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the runner did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A parent over HTTP to `runner`; its own registry is empty, so every call runs remotely.
async fn parent(runner: &Runner, secret: &str) -> Flame {
    flame::builder(Registry::new())
        .mode(Mode::Parent)
        .runner_urls(vec![runner.url.clone()])
        .config({
            let mut c = Config::default();
            c.secret = Some(Secret::new(secret));
            c
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn generated_client_round_trips_over_http() {
    let runner = Runner::start(Arc::default()).await;
    let flame = parent(&runner, SECRET).await;
    let math = MathClient::new(flame.clone());
    assert_eq!(math.add(2, 3).await.unwrap(), 5);
    assert_eq!(math.mul(2.5, 4.0).await.unwrap(), 10.0);
    assert_eq!(math.count().await.unwrap(), 1);
    assert_eq!(math.count().await.unwrap(), 2);
    assert_eq!(math.sum_pair((40, 2)).await.unwrap(), 42);
    assert_eq!(math.version().await.unwrap(), "v1");
    assert_eq!(
        math.greet("ada".into(), Some("hi".into())).await.unwrap(),
        "hi, ada"
    );
    assert_eq!(
        math.resize(Resize {
            url: "cat.png".into(),
            width: 64
        })
        .await
        .unwrap(),
        "cat.png@64w"
    );
    // A hand-written handle with the same ids reaches the macro's handler over the wire.
    const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
    assert_eq!(flame.call(ADD, (20, 22)).await.unwrap(), 42);
    flame.shutdown().await.unwrap();
    runner.stop().await;
}

#[tokio::test]
async fn errors_keep_their_codes_and_types_over_http() {
    let runner = Runner::start(Arc::default()).await;
    let flame = parent(&runner, SECRET).await;
    let math = MathClient::new(flame.clone());
    let err = math.fail("nope".into()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(err.wire_code(), "handler_error");
    let err = math.typed_fail(9).await.unwrap_err();
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 9 })
    );
    let err = math.explode().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert!(
        err.details().is_none(),
        "panic text must not leave the runner by default"
    );
    // The runner still serves after all of that.
    assert_eq!(math.add(1, 1).await.unwrap(), 2);
    flame.shutdown().await.unwrap();
    runner.stop().await;
}

#[tokio::test]
async fn deadline_reaches_the_runner_and_cancels_the_handler() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let runner = Runner::start(cancelled.clone()).await;
    let flame = parent(&runner, SECRET).await;
    let math =
        MathClient::new(flame.clone()).with_options(CallOptions::new().timeout(Duration::from_millis(150)));
    let err = math.slow(10_000).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    wait_for_one(&cancelled).await;
    flame.shutdown().await.unwrap();
    runner.stop().await;
}

#[tokio::test]
async fn a_parent_with_the_wrong_secret_is_refused() {
    let runner = Runner::start(Arc::default()).await;
    let flame = parent(&runner, "not-the-secret").await;
    let err = MathClient::new(flame.clone()).add(1, 2).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
    flame.shutdown().await.unwrap();
    runner.stop().await;
}
