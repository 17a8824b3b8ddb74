//! Round trips over real sockets on 127.0.0.1: results, every error code, deadlines, statuses.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{codec, Endpoint, ErrorCode, Secret, Transport};
use flame_http::HttpTransport;
use std::time::Duration;

#[tokio::test]
async fn signed_call_round_trips() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let text = t
        .invoke(
            &server.endpoint(),
            &invocation(ADD, &(2, 3), Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(codec::decode_result::<i64>(text.json_text().unwrap()).unwrap(), 5);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_error_code_round_trips_with_its_retryable_flag() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    for code in ErrorCode::ALL {
        for retryable in [false, true] {
            let inv = invocation(
                FAIL_WITH,
                &(code.wire().to_owned(), retryable),
                Duration::from_secs(5),
            );
            let err = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
            assert_eq!(err.code(), code, "{code}: {err}");
            assert_eq!(err.wire_code(), code.wire());
            assert_eq!(err.remote_code(), Some(code.wire()));
            assert_eq!(err.is_retryable(), retryable, "{code}");
            assert!(err.message().contains(code.wire()), "{err}");
        }
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn unknown_remote_codes_survive_as_text() {
    let server = start(Some(SECRET)).await;
    let err = HttpTransport::new()
        .invoke(
            &server.endpoint(),
            &invocation(REMOTE_CODE, &"quota_exceeded".to_owned(), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Remote);
    assert_eq!(err.wire_code(), "quota_exceeded");
}

#[tokio::test]
async fn typed_app_errors_and_panics_cross_the_wire() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let err = t
        .invoke(
            &server.endpoint(),
            &invocation(TYPED_FAIL, &7, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(
        err.app_error::<Declined>(),
        Some(Declined::Insufficient { needed: 7 })
    );
    let err = t
        .invoke(
            &server.endpoint(),
            &invocation(PANIC, &(), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    // Panic text stays on the runner unless FLAME_EXPOSE_ERRORS.
    assert!(err.details().is_none(), "{err:?}");
    still_serves(&server).await;
}

#[tokio::test]
async fn deadline_fires_handler_cancellation_and_caller_gets_timeout() {
    let server = start(Some(SECRET)).await;
    let started = std::time::Instant::now();
    let err = HttpTransport::new()
        .invoke(
            &server.endpoint(),
            &invocation(SLOW, &10_000, Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.probe.cancelled() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.probe.cancelled(), 1, "handler cancellation did not fire");
    assert_eq!(server.dispatcher.in_flight(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn caller_hanging_up_cancels_the_handler() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let endpoint = server.endpoint();
    let call = tokio::spawn(async move {
        t.invoke(&endpoint, &invocation(SLOW, &10_000, Duration::from_secs(30)))
            .await
    });
    while server.probe.started() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.probe.cancelled() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.probe.cancelled(), 1);
}

#[tokio::test]
async fn non_200_statuses_map_to_codes() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    // 404: unknown method.
    let mut inv = invocation(ADD, &(1, 2), Duration::from_secs(5));
    inv.method_id = "nope".into();
    let err = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    // 413: arguments over the 1 MiB limit.
    let big = "x".repeat(1_100_000);
    let inv = invocation(
        Method::<String, String>::new("math", "add"),
        &big,
        Duration::from_secs(5),
    );
    let err = t.invoke(&server.endpoint(), &inv).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    assert!(err.handler_never_ran());
    // 401: the wrong secret.
    let wrong = Endpoint::new(server.url.clone(), "r").with_secret(Some(Secret::new("nope")));
    let err = t
        .invoke(&wrong, &invocation(ADD, &(1, 2), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unauthorized, "{err}");
    // 400: malformed JSON, signed.
    let body = b"{not json".to_vec();
    let (status, text) = raw(server.addr, "POST", "/invoke", &signed(&body), &body).await;
    assert_eq!((status, text.as_str()), (400, "Invalid JSON"));
    let err = flame_core::transport::error_for_status(status, &text);
    assert_eq!(err.code(), ErrorCode::BadRequest);
    still_serves(&server).await;
}

#[tokio::test]
async fn connection_refused_is_not_delivered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = HttpTransport::new()
        .invoke(
            &Endpoint::new(format!("http://{addr}"), "gone"),
            &invocation(ADD, &(1, 2), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.handler_never_ran(), "{err}");
    assert!(err.is_retryable(), "safe to retry without a key: {err}");
}

#[tokio::test]
async fn traceparent_reaches_the_handler() {
    let server = start(Some(SECRET)).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut inv = invocation(TRACE, &(), Duration::from_secs(5));
    inv.trace.insert("traceparent".into(), tp.into());
    let text = HttpTransport::new()
        .invoke(&server.endpoint(), &inv)
        .await
        .unwrap();
    assert_eq!(
        codec::decode_result::<Option<String>>(text.json_text().unwrap())
            .unwrap()
            .as_deref(),
        Some(tp)
    );
}

#[tokio::test]
async fn ping_is_signed_and_reports_status() {
    let server = start(Some(SECRET)).await;
    let t = HttpTransport::new();
    let status = t.ping(&server.endpoint()).await.unwrap();
    assert!(status.ok);
    assert_eq!(status.runner_id.as_deref(), Some("test-runner"));
    assert_eq!(status.in_flight, Some(0));
    assert!(status.uptime_ms.is_some());
    // Without the secret: liveness only.
    let anon = t.ping(&Endpoint::new(server.url.clone(), "r")).await.unwrap();
    assert_eq!(
        anon,
        flame_core::RunnerStatus {
            ok: true,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn flame_parent_over_http_with_the_builder_extension() {
    use flame_http::HttpExt;
    let server = start(Some(SECRET)).await;
    let probe = Probe::default();
    let flame = flame_core::Flame::builder(registry(&probe))
        .http()
        .mode(flame_core::Mode::Parent)
        .runner_urls(vec![server.url.clone()])
        .config({
            let mut c = flame_core::Config::default();
            c.secret = Some(Secret::new(SECRET));
            c
        })
        .start()
        .await
        .unwrap();
    assert_eq!(flame.call(ADD, (40, 2)).await.unwrap(), 42);
    // Ran remotely: the local probe saw nothing, the server's did.
    assert_eq!(flame.call(COUNT, ()).await.unwrap(), 1);
    assert_eq!(server.probe.runs(), 1);
    assert_eq!(probe.runs(), 0);
    flame.shutdown().await.unwrap();
}

use flame_core::Method;
