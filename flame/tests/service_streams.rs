//! `#[flame::service]` with streamed results and payload limits: the generated const, handler
//! and client, in local mode and through the runner pipeline (in-memory transport).
#![allow(clippy::unwrap_used)]

use flame::raw::testkit::InMemoryTransport;
use flame::raw::{Dispatcher, Endpoint, StaticPool};
use flame::{Context, ErrorCode, Flame, ItemStream, Mode, Registry, Streamed};
use futures::StreamExt;

/// Frames of a video, as a service.
#[flame::service(id = "video")]
pub trait Video {
    /// `n` frames of `size` bytes, numbered from 0.
    #[flame(max_response_bytes = 1048576)]
    async fn frames(&self, ctx: Context, n: u32, size: usize) -> flame::Result<ItemStream<bytes::Bytes>>;
    /// A stream that fails before its first item.
    async fn refuse(&self) -> flame::Result<ItemStream<u8>>;
    /// The length of an upload of at most 4 KiB.
    #[flame(max_request_bytes = 4096)]
    async fn upload(&self, data: bytes::Bytes) -> flame::Result<usize>;
}

struct Player;

impl Video for Player {
    async fn frames(&self, ctx: Context, n: u32, size: usize) -> flame::Result<ItemStream<bytes::Bytes>> {
        assert!(!ctx.is_cancelled());
        Ok(Box::pin(
            futures::stream::iter(0..n).map(move |i| Ok(bytes::Bytes::from(vec![i as u8; size]))),
        ))
    }

    async fn refuse(&self) -> flame::Result<ItemStream<u8>> {
        Err(flame::Error::new(ErrorCode::BadRequest, "no stream today"))
    }

    async fn upload(&self, data: bytes::Bytes) -> flame::Result<usize> {
        Ok(data.len())
    }
}

async fn check(flame: &Flame) {
    let video = VideoClient::new(flame.clone());
    let frames: Vec<bytes::Bytes> = video.frames(3, 10).map(|f| f.unwrap()).collect().await;
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[2], vec![2u8; 10]);
    let out: Vec<_> = video.refuse().collect().await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::BadRequest);
    assert_eq!(video.upload(bytes::Bytes::from_static(b"abc")).await.unwrap(), 3);
}

#[test]
fn the_consts_carry_streams_and_limits() {
    let _: flame::Method<(u32, usize), Streamed<bytes::Bytes>> = VideoService::FRAMES;
    assert_eq!(VideoService::FRAMES.limits().response, Some(1 << 20));
    assert_eq!(VideoService::UPLOAD.limits().request, Some(4096));
    assert_eq!(VideoService::REFUSE.limits(), flame::PayloadLimits::default());
}

#[tokio::test]
async fn streaming_methods_work_locally() {
    let flame = Flame::builder(VideoService::registry(Player))
        .mode(Mode::Local)
        .build()
        .unwrap();
    check(&flame).await;
}

#[tokio::test]
async fn streaming_methods_work_through_the_runner_pipeline() {
    let transport = InMemoryTransport::new();
    transport.add("mem://v", Dispatcher::new(VideoService::registry(Player), "v"));
    let flame = Flame::builder(Registry::new())
        .mode(Mode::Parent)
        .transport(std::sync::Arc::new(transport))
        .with_pool(std::sync::Arc::new(StaticPool::new(
            "default",
            vec![Endpoint::new("mem://v", "v")],
            4,
        )))
        .build()
        .unwrap();
    check(&flame).await;
    // An item over the method's 1 MiB reply limit ends the stream with PAYLOAD_TOO_LARGE.
    let out: Vec<_> = VideoClient::new(flame.clone()).frames(2, 2 << 20).collect().await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap_err().code(), ErrorCode::PayloadTooLarge);
}
