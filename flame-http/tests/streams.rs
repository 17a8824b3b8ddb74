//! Streamed results across a real runner: order, backpressure, cancellation on drop reaching
//! the handler, the deadline, and a runner that dies mid-stream.
#![allow(clippy::unwrap_used)]

mod common;

use common::SECRET;
use flame_core::{
    CallOptions, Config, Context, Dispatcher, Error, ErrorCode, Flame, Method, Mode, Registry, Secret,
    Streamed,
};
use flame_http::{BoundServer, HttpExt, HttpServer, ServerOptions};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// `n -> 0, 1, …, n-1`.
const COUNT: Method<u32, Streamed<u32>> = Method::new("s", "count");
/// One item every 10 ms, forever; notes its cancellation.
const TICKS: Method<(), Streamed<u64>> = Method::new("s", "ticks");
/// Three items, then nothing (the stream stays open).
const THREE_THEN_HANG: Method<(), Streamed<u32>> = Method::new("s", "hang");
/// 64 KiB items as fast as they are taken, counting how many were made.
const FLOOD: Method<(), Streamed<bytes::Bytes>> = Method::new("s", "flood");
/// Never yields.
const SILENT: Method<(), Streamed<u32>> = Method::new("s", "silent");
/// Two items, then an error.
const FAILS: Method<(), Streamed<u32>> = Method::new("s", "fails");

#[derive(Default)]
struct Probe {
    cancelled: Notify,
    cancellations: AtomicUsize,
    made: AtomicUsize,
    hanging: Notify,
}

fn registry(probe: Arc<Probe>) -> Registry {
    let (p1, p2, p3) = (probe.clone(), probe.clone(), probe);
    Registry::new()
        .handle_stream(COUNT, |_c: Context, n: u32| futures::stream::iter((0..n).map(Ok)))
        .handle_stream(TICKS, move |ctx: Context, ()| {
            let p = p1.clone();
            tokio::spawn(async move {
                ctx.cancellation().cancelled().await;
                p.cancellations.fetch_add(1, Ordering::SeqCst);
                p.cancelled.notify_waiters();
            });
            futures::stream::unfold(0u64, |i| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok(i), i + 1))
            })
        })
        .handle_stream(THREE_THEN_HANG, move |_c: Context, ()| {
            let p = p2.clone();
            futures::stream::iter((0..3).map(Ok)).chain(futures::stream::once(async move {
                p.hanging.notify_waiters();
                futures::future::pending::<()>().await;
                Ok(99)
            }))
        })
        .handle_stream(FLOOD, move |_c: Context, ()| {
            let p = p3.clone();
            futures::stream::iter(0..100_000).map(move |_| {
                p.made.fetch_add(1, Ordering::SeqCst);
                Ok(bytes::Bytes::from(vec![3u8; 64 * 1024]))
            })
        })
        .handle_stream(SILENT, |_c: Context, ()| futures::stream::pending())
        .handle_stream(FAILS, |_c: Context, ()| {
            futures::stream::iter(vec![Ok(1), Ok(2), Err(Error::handler("third failed"))])
        })
}

struct Runner {
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<flame_core::Result<()>>,
}

async fn runner(probe: Arc<Probe>) -> Runner {
    let mut cfg = Config::default();
    cfg.secret = Some(Secret::new(SECRET));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    let dispatcher = Arc::new(Dispatcher::new(registry(probe), "stream-runner"));
    let options = ServerOptions::default().announce(false).handle_signals(false);
    let bound: BoundServer = HttpServer::with_options(options)
        .bind(dispatcher, &cfg)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    Runner {
        url: bound.url(),
        task: tokio::spawn(bound.run(shutdown.clone())),
        shutdown,
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

async fn parent(url: &str) -> Flame {
    Flame::builder(Registry::new())
        .http()
        .mode(Mode::Parent)
        .runner_urls(vec![url.to_owned()])
        .config({
            let mut c = Config::default();
            c.secret = Some(Secret::new(SECRET));
            c
        })
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn items_arrive_in_order_and_errors_end_the_stream() {
    let r = runner(Arc::default()).await;
    let flame = parent(&r.url).await;
    let items: Vec<u32> = flame.call_stream(COUNT, 1000).map(|i| i.unwrap()).collect().await;
    assert_eq!(items, (0..1000).collect::<Vec<_>>());
    let out: Vec<_> = flame.call_stream(FAILS, ()).collect().await;
    assert_eq!(out.len(), 3);
    assert_eq!(*out[1].as_ref().unwrap(), 2);
    let err = out[2].as_ref().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Handler);
    assert_eq!(err.message(), "third failed");
    // A unary call of a streaming method is refused, typed.
    let unary: Method<u32, u32> = Method::new("s", "count");
    let err = flame.call(unary, 3).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_handler_on_the_runner() {
    let probe = Arc::new(Probe::default());
    let r = runner(probe.clone()).await;
    let flame = parent(&r.url).await;
    let cancelled = probe.cancelled.notified();
    let mut ticks = flame.call_stream(TICKS, ());
    for want in 0..3u64 {
        assert_eq!(ticks.next().await.unwrap().unwrap(), want);
    }
    assert_eq!(probe.cancellations.load(Ordering::SeqCst), 0);
    drop(ticks);
    tokio::time::timeout(Duration::from_secs(20), cancelled)
        .await
        .expect("the handler's context was not cancelled after the caller dropped the stream");
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_reader_holds_the_handler_back() {
    let probe = Arc::new(Probe::default());
    let r = runner(probe.clone()).await;
    let flame = parent(&r.url).await;
    let mut flood = flame.call_stream(FLOOD, ());
    assert_eq!(flood.next().await.unwrap().unwrap().len(), 64 * 1024);
    // Wait until the producer stops (the socket buffers are full), then check it stopped far
    // short of its 100 000 items (6.4 GB): it makes items only as fast as they are read.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let made = probe.made.load(Ordering::SeqCst);
        if made == last {
            break;
        }
        last = made;
    }
    assert!(last < 2_000, "{last} items made while one was read");
    drop(flood);
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_deadline_ends_a_silent_stream_with_timeout() {
    let r = runner(Arc::default()).await;
    let flame = parent(&r.url).await;
    let started = std::time::Instant::now();
    let out: Vec<_> = flame
        .call_stream_with(SILENT, (), CallOptions::new().timeout(Duration::from_millis(300)))
        .collect()
        .await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_runner_dying_mid_stream_gives_a_typed_retryable_error_after_the_items() {
    let probe = Arc::new(Probe::default());
    let mut r = runner(probe.clone()).await;
    let flame = parent(&r.url).await;
    let hanging = probe.hanging.notified();
    let mut s = flame.call_stream(THREE_THEN_HANG, ());
    for want in 0..3u32 {
        assert_eq!(s.next().await.unwrap().unwrap(), want);
    }
    tokio::time::timeout(Duration::from_secs(20), hanging)
        .await
        .unwrap();
    // The runner dies: its serving task and every connection it holds are gone.
    r.task.abort();
    let _ = (&mut r.task).await;
    let err = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("the cut stream was not noticed")
        .expect("an error item, not a silent end")
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(s.next().await.is_none(), "nothing after the error");
}
