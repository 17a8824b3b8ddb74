//! Scenario 5 — hostile input at a runner (a real `rel_runner` process, raw TCP): bad or
//! missing signatures, stale and future windows, replays, a 1 GiB body (claimed and streamed),
//! slowloris headers, malformed and deeply nested JSON, superjson with unknown meta types,
//! wrong arguments, unknown ids, huge header sets. Each gets its status, the handler never runs
//! (the runner's execution counter stays put), and the runner serves the next good call.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

mod common;

use common::*;
use flame_core::codec::InvocationRequest;
use flame_core::transport::now_millis;
use flame_core::Secret;
use flame_reliability::methods::{Record, RECORD, STATS};
use flame_reliability::procfs::rss_kb;
use flame_reliability::wire::{body, envelope, exchange, post_invoke, read_reply, sign};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn secret() -> Secret {
    Secret::new(SECRET)
}

fn record_envelope(tag: &str) -> InvocationRequest {
    envelope("rel", "record", &format!(r#"{{"json":[{{"tag":"{tag}"}}]}}"#))
}

/// Sends `req` signed with the runner's secret.
async fn send_signed(r: &HandRunner, bytes: &[u8]) -> flame_reliability::wire::RawReply {
    let sig = sign(&secret(), bytes);
    exchange(&r.addr, &post_invoke(&r.addr, bytes, Some(&sig), &[]), T)
        .await
        .unwrap()
}

/// The runner has run the handler `n` times, and still serves a good call.
async fn executions_then_good_call(r: &HandRunner, n: u64, what: &str) {
    let stats = r.call(STATS, ()).await.unwrap();
    assert_eq!(stats.executions, n, "a handler ran for {what}");
    let good = r
        .call(RECORD, Record::new(format!("good-after-{what}")))
        .await
        .unwrap();
    assert_eq!(good.runs, 1);
    let stats = r.call(STATS, ()).await.unwrap();
    assert_eq!(stats.executions, n + 1);
}

#[tokio::test]
async fn bad_signatures_windows_and_replays_get_401_and_run_nothing() {
    let r = HandRunner::start(&[]);
    let s = secret();
    let mut ran = 0;

    // Signatures: missing, empty, not hex, truncated, extended, one bit off, other body,
    // other secret.
    let good = body(&record_envelope("sig"));
    let right = sign(&s, &good);
    let mut flipped = hex_bytes(&right);
    flipped[0] ^= 1;
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty", Some(String::new())),
        ("not hex", Some("zz".repeat(32))),
        ("truncated", Some(right[..62].to_owned())),
        ("extended", Some(format!("{right}00"))),
        ("one bit off", Some(hex_string(&flipped))),
        ("other body", Some(sign(&s, &body(&record_envelope("other"))))),
        ("other secret", Some(sign(&Secret::new("not-the-secret"), &good))),
    ];
    for (what, sig) in cases {
        let reply = exchange(&r.addr, &post_invoke(&r.addr, &good, sig.as_deref(), &[]), T)
            .await
            .unwrap();
        assert_eq!(reply.status, Some(401), "{what}: {}", reply.text);
        executions_then_good_call(&r, ran, what).await;
        ran += 1;
    }

    // Windows: stale, future, expiry before issue.
    let now = now_millis();
    for (what, iat, exp) in [
        ("stale", now - 600_000, now - 540_000),
        ("future", now + 600_000, now + 660_000),
        ("exp before iat", now, now - 1),
        ("exp equals iat", now, now),
    ] {
        let mut req = record_envelope(what);
        req.iat = iat;
        req.exp = exp;
        let reply = send_signed(&r, &body(&req)).await;
        assert_eq!(reply.status, Some(401), "{what}: {}", reply.text);
        executions_then_good_call(&r, ran, what).await;
        ran += 1;
    }

    // Replays: the same signed bytes twice run once; a replay with a new signature too.
    let once = body(&record_envelope("replayed"));
    let first = send_signed(&r, &once).await;
    assert_eq!(first.status, Some(200), "{}", first.text);
    assert!(first.body().contains(r#""ok":true"#), "{}", first.text);
    ran += 1;
    for _ in 0..3 {
        let again = send_signed(&r, &once).await;
        assert_eq!(again.status, Some(401), "replay: {}", again.text);
    }
    executions_then_good_call(&r, ran, "replays").await;
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn malformed_nested_and_mistyped_requests_get_their_status_and_run_nothing() {
    let r = HandRunner::start(&[]);
    let deep = "[".repeat(100_000);
    let mut cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("malformed JSON", b"{\"invocationId\": ".to_vec(), 400, None),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x7b], 400, None),
        ("empty body", Vec::new(), 400, None),
        ("JSON array", b"[1,2,3]".to_vec(), 400, None),
        (
            "missing fields",
            br#"{"serviceId":"rel","methodId":"record"}"#.to_vec(),
            400,
            None,
        ),
        (
            "100 000 nested [ as the body",
            deep.clone().into_bytes(),
            400,
            None,
        ),
        (
            "negative iat",
            {
                let mut v: serde_json::Value = serde_json::to_value(record_envelope("neg")).unwrap();
                v["iat"] = serde_json::json!(-5);
                serde_json::to_vec(&v).unwrap()
            },
            400,
            None,
        ),
    ];
    let args_cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "100 000 nested [ in args",
            format!(r#"{{"json":{deep}}}"#),
            200,
            Some("serialization_error"),
        ),
        (
            "100 000 nested [ in meta",
            format!(r#"{{"json":[],"meta":{{"values":{deep}}}}}"#),
            200,
            Some("serialization_error"),
        ),
        (
            "args not superjson",
            "not json".into(),
            200,
            Some("serialization_error"),
        ),
        (
            "args without json key",
            r#"{"meta":{}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "args not an array",
            r#"{"json":{"tag":"x"}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta bigint",
            r#"{"json":[{"tag":"1"}],"meta":{"values":{"0.tag":["bigint"]},"v":1}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta map",
            r#"{"json":[[["tag","x"]]],"meta":{"values":{"0":["map"]},"v":1}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta set",
            r#"{"json":[["x"]],"meta":{"values":{"0":["set"]},"v":1}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta class",
            r#"{"json":[{"tag":"x"}],"meta":{"values":{"0":[["class","Evil"]]},"v":1}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta custom",
            r#"{"json":[{"tag":"x"}],"meta":{"values":{"0":[["custom","Decimal"]]},"v":1}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "meta not a tree",
            r#"{"json":[{"tag":"x"}],"meta":{"values":42}}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "two arguments",
            r#"{"json":[{"tag":"x"},{"tag":"y"}]}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "wrong type",
            r#"{"json":[{"tag":7}]}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "string argument",
            r#"{"json":["tag"]}"#.into(),
            200,
            Some("serialization_error"),
        ),
        (
            "no argument",
            r#"{"json":[]}"#.into(),
            200,
            Some("serialization_error"),
        ),
    ];
    for (what, args, status, code) in args_cases {
        cases.push((what, body(&envelope("rel", "record", &args)), status, code));
    }
    for (what, service, method) in [
        ("unknown service", "nope", "record"),
        ("unknown method", "rel", "nope"),
        ("empty ids", "", ""),
    ] {
        cases.push((
            what,
            body(&envelope(service, method, r#"{"json":[]}"#)),
            404,
            None,
        ));
    }
    for (what, bytes, status, code) in &cases {
        let reply = send_signed(&r, bytes).await;
        assert_eq!(reply.status, Some(*status), "{what}: {}", reply.text);
        if let Some(code) = code {
            assert!(reply.body().contains(r#""ok":false"#), "{what}: {}", reply.text);
            assert!(reply.body().contains(code), "{what}: {}", reply.text);
        }
        let stats = r.call(STATS, ()).await.unwrap();
        assert_eq!(stats.executions, 0, "a handler ran for {what}");
    }
    // Wrong paths and methods.
    for (what, request) in [
        (
            "GET /invoke",
            format!(
                "GET /invoke HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                r.addr
            ),
        ),
        (
            "POST /other",
            format!(
                "POST /other HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                r.addr
            ),
        ),
    ] {
        let reply = exchange(&r.addr, request.as_bytes(), T).await.unwrap();
        assert_eq!(reply.status, Some(404), "{what}: {}", reply.text);
    }
    // An unsigned health probe learns nothing about the runner.
    let health = exchange(
        &r.addr,
        format!(
            "GET /health HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            r.addr
        )
        .as_bytes(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(health.status, Some(200));
    assert_eq!(health.body().trim(), r#"{"ok":true}"#);
    executions_then_good_call(&r, 0, "malformed input").await;
}

#[tokio::test]
async fn a_1_gib_body_is_refused_early_and_rss_does_not_grow_by_it() {
    let r = HandRunner::start(&[]);
    // Warm the runner up so the baseline includes its steady state.
    for i in 0..20 {
        r.call(RECORD, Record::new(format!("warm-{i}"))).await.unwrap();
    }
    let before = rss_kb(r.pid()).unwrap();

    // Claimed: Content-Length 1 GiB, nothing sent: 413 at once, unread.
    let gib: u64 = 1 << 30;
    let head = format!(
        "POST /invoke HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {gib}\r\nx-flame-signature: {}\r\n\r\n",
        r.addr,
        "0".repeat(64)
    );
    let started = Instant::now();
    let reply = exchange(&r.addr, head.as_bytes(), T).await.unwrap();
    assert_eq!(reply.status, Some(413), "{}", reply.text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Streamed: chunked, up to 1 GiB, as fast as loopback takes it. The runner must cut it off
    // near the 1 MiB limit.
    let mut stream = TcpStream::connect(&r.addr).await.unwrap();
    let head = format!(
        "POST /invoke HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nx-flame-signature: {}\r\n\r\n",
        r.addr,
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk_size = 64 * 1024;
    let mut chunk = format!("{chunk_size:x}\r\n").into_bytes();
    chunk.extend(std::iter::repeat(b'[').take(chunk_size));
    chunk.extend_from_slice(b"\r\n");
    let mut sent: u64 = 0;
    let started = Instant::now();
    while sent < gib {
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk_size as u64,
            // Reset by the runner, or the runner stopped reading: either way it refused.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let cut_after = started.elapsed();
    let reply = read_reply(&mut stream, T).await.unwrap();
    assert!(
        sent < 256 * 1024 * 1024,
        "the runner read {sent} bytes of a 1 GiB body"
    );
    if let Some(status) = reply.status {
        assert_eq!(status, 413, "{}", reply.text);
    }
    let after = rss_kb(r.pid()).unwrap();
    eprintln!(
        "1 GiB streamed body: cut off after {} KiB sent in {cut_after:?}; runner RSS {before} KiB -> {after} KiB",
        sent / 1024
    );
    assert!(
        after < before + 16 * 1024,
        "runner RSS grew from {before} KiB to {after} KiB"
    );
    executions_then_good_call(&r, 20, "1 GiB bodies").await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_while_good_calls_are_served() {
    let r = HandRunner::start(&[("REL_HEADER_TIMEOUT_MS", "1000")]);
    let slow = 100;
    let started = Instant::now();
    let mut trickles = Vec::new();
    for _ in 0..slow {
        let addr = r.addr.clone();
        trickles.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /invoke HTTP/1.1\r\nhost: {addr}\r\nx-filler: {}",
                "a".repeat(1000)
            );
            let opened = Instant::now();
            for byte in head.as_bytes() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return opened.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if opened.elapsed() > Duration::from_secs(20) {
                    break;
                }
            }
            opened.elapsed()
        }));
    }
    // Good calls go through while the slow connections hang on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let t = Instant::now();
        r.call(RECORD, Record::new(format!("during-slowloris-{i}")))
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a good call took {:?}",
            t.elapsed()
        );
    }
    let mut longest = Duration::ZERO;
    for t in trickles {
        longest = longest.max(t.await.unwrap());
    }
    eprintln!("slowloris: {slow} connections cut off, the last after {longest:?} (header timeout 1 s)");
    assert!(
        longest < Duration::from_secs(5),
        "a slow connection stayed open {longest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    executions_then_good_call(&r, 10, "slowloris").await;
}

#[tokio::test]
async fn huge_header_sets_are_refused_and_run_nothing() {
    let r = HandRunner::start(&[]);
    let good = body(&record_envelope("headers"));
    let sig = sign(&secret(), &good);
    let many: Vec<String> = (0..10_000).map(|i| format!("x-h{i}: {i}")).collect();
    let big = vec![format!("x-big: {}", "b".repeat(1024 * 1024))];
    for (what, extra) in [("10 000 headers", many), ("one 1 MiB header", big)] {
        let reply = exchange(&r.addr, &post_invoke(&r.addr, &good, Some(&sig), &extra), T)
            .await
            .unwrap();
        // hyper answers 431, or closes the connection for a head past its buffer.
        assert!(
            matches!(reply.status, Some(431) | None),
            "{what}: {}",
            &reply.text[..reply.text.len().min(200)]
        );
        let stats = r.call(STATS, ()).await.unwrap();
        assert_eq!(stats.executions, 0, "a handler ran for {what}");
    }
    executions_then_good_call(&r, 0, "huge headers").await;
}
