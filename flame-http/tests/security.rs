//! Bad inputs: each gets its status, the handler never runs, and the runner keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{Config, Dispatcher, ErrorCode, Secret};
use flame_http::sign::{health_message, sign};
use flame_http::HttpServer;
use std::sync::Arc;

async fn post(server: &TestServer, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    raw(server.addr, "POST", "/invoke", headers, body).await
}

#[tokio::test]
async fn missing_signature_is_401_and_nothing_runs() {
    let server = start(Some(SECRET)).await;
    let body = count_envelope();
    let (status, text) = post(&server, &[("content-type", "application/json".into())], &body).await;
    assert_eq!((status, text.as_str()), (401, "Invalid signature"));
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn wrong_or_malformed_signature_is_401() {
    let server = start(Some(SECRET)).await;
    let body = count_envelope();
    let wrong = sign(&Secret::new("other-secret"), &body);
    for sig in [wrong, "zz-not-hex".into(), String::new(), "ab".repeat(32)] {
        let (status, _) = post(&server, &[("x-flame-signature", sig)], &body).await;
        assert_eq!(status, 401);
    }
    // A valid signature of other bytes: the body was tampered with.
    let mut tampered = body.clone();
    let sig = sign(&Secret::new(SECRET), &body);
    tampered.extend_from_slice(b" ");
    let (status, _) = post(&server, &[("x-flame-signature", sig)], &tampered).await;
    assert_eq!(status, 401);
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn stale_future_and_inverted_windows_are_401() {
    let server = start(Some(SECRET)).await;
    let now = now();
    let cases: [(u64, u64); 3] = [
        (now - 300_000, now - 120_000), // expired long ago
        (now + 120_000, now + 180_000), // issued in the future
        (now, now),                     // exp <= iat
    ];
    for (iat, exp) in cases {
        let body = envelope_with(|r| {
            r.service_id = "test".into();
            r.method_id = "count".into();
            r.args = r#"{"json":[]}"#.into();
            r.iat = iat;
            r.exp = exp;
        });
        let (status, text) = post(&server, &signed(&body), &body).await;
        assert_eq!((status, text.as_str()), (401, "Request expired"), "{iat} {exp}");
    }
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn replayed_body_is_401_and_runs_once() {
    let server = start(Some(SECRET)).await;
    let body = count_envelope();
    let (status, text) = post(&server, &signed(&body), &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""ok":true"#));
    let (status, text) = post(&server, &signed(&body), &body).await;
    assert_eq!((status, text.as_str()), (401, "Replayed request"));
    assert_eq!(server.probe.runs(), 1);
    still_serves(&server).await;
}

#[tokio::test]
async fn malformed_json_and_wrong_shapes_are_400() {
    let server = start(Some(SECRET)).await;
    for body in [
        b"{not json".to_vec(),
        b"[]".to_vec(),
        br#"{"invocationId":"x","serviceId":"test"}"#.to_vec(),
        br#"{"invocationId":"x","serviceId":"test","methodId":"count","args":"{}","iat":"soon","exp":1}"#
            .to_vec(),
    ] {
        let (status, text) = post(&server, &signed(&body), &body).await;
        assert_eq!((status, text.as_str()), (400, "Invalid JSON"));
    }
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn bad_arguments_are_a_serialization_error_not_a_run() {
    let server = start(Some(SECRET)).await;
    let body = envelope_with(|r| r.args = r#"{"json":["two","three"]}"#.into());
    let (status, text) = post(&server, &signed(&body), &body).await;
    assert_eq!(status, 200);
    let reply: flame_core::codec::InvocationResponse = serde_json::from_str(&text).unwrap();
    let err = reply.into_result().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Serialization, "{err}");
    still_serves(&server).await;
}

#[tokio::test]
async fn unknown_method_path_and_verb_are_404() {
    let server = start(Some(SECRET)).await;
    let body = envelope_with(|r| r.method_id = "nope".into());
    let (status, text) = post(&server, &signed(&body), &body).await;
    assert_eq!((status, text.as_str()), (404, "Not found"));
    let body = envelope();
    assert_eq!(
        raw(server.addr, "POST", "/elsewhere", &signed(&body), &body)
            .await
            .0,
        404
    );
    assert_eq!(raw(server.addr, "GET", "/invoke", &[], b"").await.0, 404);
    assert_eq!(raw(server.addr, "POST", "/health", &[], b"").await.0, 404);
    still_serves(&server).await;
}

#[tokio::test]
async fn a_spawned_runner_tells_strangers_how_long_its_parent_has_been_silent() {
    // What reap needs to tell a live parent's runner from an orphan, and nothing more.
    let server = start_with(Some(SECRET), options(), |mut c| {
        c.parent_id = Some("parent-1".into());
        c
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, text) = raw(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = seen.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["ok", "parentSilentMs"], "{text}");
    assert!(seen["parentSilentMs"].as_u64().unwrap() >= 300, "{text}");
    // The parent's signed ping resets it; strangers see that too.
    let ts = now();
    let headers = [
        ("x-flame-timestamp", ts.to_string()),
        (
            "x-flame-signature",
            sign(&Secret::new(SECRET), health_message(ts).as_bytes()),
        ),
    ];
    let (_, full) = raw(server.addr, "GET", "/health", &headers, b"").await;
    assert!(full.contains("parentSilentMs"), "{full}");
    let (_, text) = raw(server.addr, "GET", "/health", &[], b"").await;
    let seen: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(seen["parentSilentMs"].as_u64().unwrap() < 300, "{text}");
}

#[tokio::test]
async fn health_tells_strangers_only_liveness_and_counts_signed_contact() {
    let server = start(Some(SECRET)).await;
    let (status, text) = raw(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!((status, text.as_str()), (200, r#"{"ok":true}"#));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = server.dispatcher.since_parent_contact();
    assert!(before >= std::time::Duration::from_millis(200), "{before:?}");
    // A wrong signature or an old timestamp: liveness only, no contact.
    let ts = now();
    let secret = Secret::new(SECRET);
    let stale = ts - 120_000;
    for (t, sig) in [
        (ts, sign(&Secret::new("x"), health_message(ts).as_bytes())),
        (stale, sign(&secret, health_message(stale).as_bytes())),
    ] {
        let headers = [("x-flame-timestamp", t.to_string()), ("x-flame-signature", sig)];
        let (_, text) = raw(server.addr, "GET", "/health", &headers, b"").await;
        assert_eq!(text, r#"{"ok":true}"#);
    }
    assert!(server.dispatcher.since_parent_contact() >= before);
    // Signed: the full status, and the watchdog is fed.
    let headers = [
        ("x-flame-timestamp", ts.to_string()),
        ("x-flame-signature", sign(&secret, health_message(ts).as_bytes())),
    ];
    let before = server.dispatcher.since_parent_contact();
    let (_, text) = raw(server.addr, "GET", "/health", &headers, b"").await;
    let status: flame_core::RunnerStatus = serde_json::from_str(&text).unwrap();
    assert_eq!(status.runner_id.as_deref(), Some("test-runner"));
    assert!(
        server.dispatcher.since_parent_contact() < before,
        "contact was not noted"
    );
}

#[tokio::test]
async fn signed_invocations_feed_the_parent_watchdog_and_rejected_ones_do_not() {
    let server = start(Some(SECRET)).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let body = count_envelope();
    post(&server, &[("x-flame-signature", "00".into())], &body).await;
    let before = server.dispatcher.since_parent_contact();
    assert!(before >= std::time::Duration::from_millis(200));
    post(&server, &signed(&body), &body).await;
    assert!(
        server.dispatcher.since_parent_contact() < before,
        "contact was not noted"
    );
}

#[tokio::test]
async fn unsigned_mode_accepts_every_request() {
    let server = start(None).await;
    let body = count_envelope();
    let (status, _) = post(&server, &[], &body).await;
    assert_eq!(status, 200);
    let (_, text) = raw(server.addr, "GET", "/health", &[], b"").await;
    assert!(text.contains("runnerId"), "{text}");
}

#[tokio::test]
async fn no_secret_refuses_non_loopback_unless_allowed() {
    let dispatcher = Arc::new(Dispatcher::new(flame_core::Registry::new(), "r"));
    let mut cfg = Config::default();
    cfg.listen = Some("0.0.0.0:0".parse().unwrap());
    let err = HttpServer::with_options(options().allow_insecure(false))
        .bind(dispatcher.clone(), &cfg)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(err.message().contains("FLAME_ALLOW_INSECURE"), "{err}");
    // With a secret, or explicitly allowed, it binds.
    cfg.secret = Some(Secret::new("s"));
    let bound = HttpServer::with_options(options())
        .bind(dispatcher.clone(), &cfg)
        .await
        .unwrap();
    assert!(bound.url().starts_with("http://127.0.0.1:"));
    drop(bound);
    cfg.secret = None;
    HttpServer::with_options(options().allow_insecure(true))
        .bind(dispatcher, &cfg)
        .await
        .unwrap();
}

#[test]
fn listen_address_defaults() {
    let mut cfg = Config::default();
    assert_eq!(flame_http::server::listen_addr(&cfg).to_string(), "0.0.0.0:8080");
    cfg.parent_id = Some("p".into());
    assert_eq!(flame_http::server::listen_addr(&cfg).to_string(), "127.0.0.1:0");
    cfg.listen = Some("127.0.0.1:9999".parse().unwrap());
    assert_eq!(
        flame_http::server::listen_addr(&cfg).to_string(),
        "127.0.0.1:9999"
    );
}
