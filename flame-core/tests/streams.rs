//! Streamed results in local mode and over the in-memory transport (the runner pipeline):
//! items, cancellation on drop reaching the handler, the deadline, panics, and both codecs'
//! payloads of bytes and nested structs.
#![allow(clippy::unwrap_used)]

use flame_core::codec::Codec;
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    CallOptions, Context, Dispatcher, Endpoint, ErrorCode, Flame, Method, Mode, Registry, StaticPool,
    Streamed,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const COUNT: Method<u32, Streamed<u32>> = Method::new("s", "count");
const TICKS: Method<(), Streamed<u64>> = Method::new("s", "ticks");
const SILENT: Method<(), Streamed<u32>> = Method::new("s", "silent");
const BOOM: Method<(), Streamed<u32>> = Method::new("s", "boom");

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Tile {
    at: (u32, u32),
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
    blob: bytes::Bytes,
    tags: Vec<String>,
}

const TILES: Method<Tile, Streamed<Tile>> = Method::new("s", "tiles");
const ECHO: Method<Tile, Tile> = Method::new("s", "echo");

fn registry(cancelled: Arc<Notify>) -> Registry {
    Registry::new()
        .handle_stream(COUNT, |_c: Context, n: u32| futures::stream::iter((0..n).map(Ok)))
        .handle_stream(TICKS, move |ctx: Context, ()| {
            let cancelled = cancelled.clone();
            tokio::spawn(async move {
                ctx.cancellation().cancelled().await;
                cancelled.notify_one();
            });
            futures::stream::unfold(0u64, |i| async move {
                tokio::task::yield_now().await;
                Some((Ok(i), i + 1))
            })
        })
        .handle_stream(SILENT, |_c: Context, ()| futures::stream::pending())
        .handle_stream(BOOM, |_c: Context, ()| {
            futures::stream::iter(0..3).map(|i| if i == 1 { panic!("boom at one") } else { Ok(i) })
        })
        .handle_stream(TILES, |_c: Context, t: Tile| {
            futures::stream::iter((0..3).map(move |i| {
                let mut t = t.clone();
                t.at = (i, i);
                Ok(t)
            }))
        })
        .handle(ECHO, |_c: Context, t: Tile| async move { Ok(t) })
}

fn tile() -> Tile {
    Tile {
        at: (0, 0),
        pixels: vec![0, 1, 254, 255],
        blob: bytes::Bytes::from_static(b"\x00raw\xff"),
        tags: vec!["a".into(), "ü".into()],
    }
}

async fn local() -> (Flame, Arc<Notify>) {
    let cancelled = Arc::new(Notify::new());
    let flame = Flame::builder(registry(cancelled.clone()))
        .mode(Mode::Local)
        .start()
        .await
        .unwrap();
    (flame, cancelled)
}

fn remote(codec: Codec) -> (Flame, Arc<Notify>) {
    let cancelled = Arc::new(Notify::new());
    let transport = InMemoryTransport::new().with_codec(codec);
    transport.add("mem://r", Dispatcher::new(registry(cancelled.clone()), "r"));
    let pool = StaticPool::new("default", vec![Endpoint::new("mem://r", "r")], 8);
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(Arc::new(transport))
        .with_pool(Arc::new(pool))
        .build()
        .unwrap();
    (flame, cancelled)
}

async fn check_items(flame: &Flame) {
    let items: Vec<u32> = flame.call_stream(COUNT, 5).map(|r| r.unwrap()).collect().await;
    assert_eq!(items, [0, 1, 2, 3, 4]);
    let tiles: Vec<Tile> = flame
        .call_stream(TILES, tile())
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(tiles.len(), 3);
    assert_eq!(tiles[2].at, (2, 2));
    assert_eq!(tiles[2].pixels, tile().pixels);
    assert_eq!(tiles[2].blob, tile().blob);
}

async fn check_cancel_on_drop(flame: &Flame, cancelled: &Notify) {
    let mut ticks = flame.call_stream(TICKS, ());
    assert_eq!(ticks.next().await.unwrap().unwrap(), 0);
    assert_eq!(ticks.next().await.unwrap().unwrap(), 1);
    drop(ticks);
    tokio::time::timeout(Duration::from_secs(20), cancelled.notified())
        .await
        .expect("dropping the stream did not cancel the handler");
}

async fn check_deadline_and_panic(flame: &Flame) {
    let out: Vec<_> = flame
        .call_stream_with(SILENT, (), CallOptions::new().timeout(Duration::from_millis(200)))
        .collect()
        .await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::Timeout);
    let out: Vec<_> = flame.call_stream(BOOM, ()).collect().await;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1].as_ref().unwrap_err().code(), ErrorCode::Handler);
}

#[tokio::test]
async fn local_mode_streams() {
    let (flame, cancelled) = local().await;
    check_items(&flame).await;
    check_cancel_on_drop(&flame, &cancelled).await;
    check_deadline_and_panic(&flame).await;
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_through_the_runner_pipeline() {
    let (flame, cancelled) = remote(Codec::Binary);
    check_items(&flame).await;
    check_cancel_on_drop(&flame, &cancelled).await;
    check_deadline_and_panic(&flame).await;
    flame.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_over_the_json_wire_is_a_typed_error() {
    let (flame, _) = remote(Codec::Json);
    let out: Vec<_> = flame.call_stream(COUNT, 2).collect().await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::BadRequest);
}

#[tokio::test]
async fn bytes_and_nested_structs_round_trip_in_both_codecs() {
    for codec in [Codec::Binary, Codec::Json] {
        let (flame, _) = remote(codec);
        let big = Tile {
            pixels: vec![9; 600_000],
            ..tile()
        };
        for t in [tile(), big] {
            assert_eq!(flame.call(ECHO, t.clone()).await.unwrap(), t, "{codec:?}");
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_a_stream_in_flight() {
    let (flame, _) = local().await;
    let mut s = flame.call_stream(COUNT, 3);
    assert_eq!(s.next().await.unwrap().unwrap(), 0);
    let closing = tokio::spawn({
        let flame = flame.clone();
        async move { flame.shutdown().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!closing.is_finished(), "shutdown waits for the open stream");
    assert_eq!(s.next().await.unwrap().unwrap(), 1);
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
