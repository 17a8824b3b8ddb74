//! Limits: body size while reading, in-flight cap, header and body timeouts (slowloris).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flame_core::{ErrorCode, Transport};
use flame_http::HttpTransport;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn declared_2_mib_body_gets_413_without_being_read() {
    let server = start(Some(SECRET)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /invoke HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        2 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Not one body byte sent: the answer comes from the headers alone.
    let (status, text) = read_response(&mut stream).await;
    assert_eq!((status, text.as_str()), (413, "Payload too large"));
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn chunked_2_mib_body_is_cut_off_at_the_limit_while_streaming() {
    let server = start(Some(SECRET)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /invoke HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // The client means to send 2 MiB but sends only the first 1 MiB + 128 KiB, then waits
    // with the body unfinished. A server that buffered the whole body before checking its size
    // would wait for the rest (until its body timeout); this one must answer 413 now, having
    // held at most the limit.
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    while sent < MIB + 128 * 1024 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break; // the runner already answered and closed
        }
        sent += chunk.len();
    }
    let started = std::time::Instant::now();
    let (status, text) = read_response(&mut stream).await;
    eprintln!("413 after {sent} of {} body bytes were sent", 2 * MIB);
    assert_eq!((status, text.as_str()), (413, "Payload too large"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn transport_maps_413_to_payload_too_large() {
    let server = start_with(Some(SECRET), options(), |mut c| {
        c.max_body_bytes = 1024;
        c
    })
    .await;
    let err = HttpTransport::new()
        .invoke(
            &server.endpoint(),
            &invocation(SLOW_COUNT, &1, Duration::from_secs(5)),
        )
        .await
        .map(|_| ());
    assert!(err.is_ok(), "a small call fits: {err:?}");
    let big = invocation(
        flame_core::Method::<String, String>::new("test", "slow"),
        &"y".repeat(2048),
        Duration::from_secs(5),
    );
    let err = HttpTransport::new()
        .invoke(&server.endpoint(), &big)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
}

#[tokio::test]
async fn partial_headers_then_stall_is_closed_by_the_header_timeout() {
    let server = start_with(
        Some(SECRET),
        options().header_read_timeout(Duration::from_millis(300)),
        |c| c,
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /invoke HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the runner kept a stalled connection open")
        .unwrap_or(0);
    let _ = n; // hyper may answer 408 or just close; either way the connection ends.
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(3));
    still_serves(&server).await;
}

#[tokio::test]
async fn headers_then_stalled_body_gets_408_and_is_closed() {
    let server = start_with(
        Some(SECRET),
        options().body_read_timeout(Duration::from_millis(300)),
        |c| c,
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /invoke HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the runner kept a stalled connection open")
        .unwrap();
    let (status, text) = parse_response(&all);
    assert_eq!((status, text.as_str()), (408, "Request timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(server.probe.runs(), 0);
    still_serves(&server).await;
}

#[tokio::test]
async fn in_flight_cap_answers_overloaded_and_retryable() {
    let server = start_with(Some(SECRET), options().max_in_flight(2), |c| c).await;
    let t = HttpTransport::new();
    let mut busy = Vec::new();
    for _ in 0..2 {
        let t = t.clone();
        let ep = server.endpoint();
        busy.push(tokio::spawn(async move {
            t.invoke(&ep, &invocation(SLOW, &1500, Duration::from_secs(10)))
                .await
        }));
    }
    while server.probe.started() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = t
        .invoke(
            &server.endpoint(),
            &invocation(COUNT, &(), Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Overloaded, "{err}");
    assert!(err.is_retryable());
    assert!(err.handler_never_ran());
    assert_eq!(server.probe.runs(), 0);
    for b in busy {
        b.await.unwrap().unwrap();
    }
    still_serves(&server).await;
}
