//! Benchmarks of flame-http: a signed round trip over a keep-alive connection on 127.0.0.1,
//! signing and verifying, and the replay and idempotency caches at size.
//!
//! `cargo bench -p flame-http`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use flame_core::codec;
use flame_core::runner::idempotency::{Begin, IdempotencyCache};
use flame_core::runner::replay::ReplayCache;
use flame_core::{Config, Context, Dispatcher, Endpoint, Invocation, Method, Registry, Secret, Transport};
use flame_http::{HttpServer, HttpTransport, ServerOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ADD: Method<(i64, i64), i64> = Method::new("math", "add");

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret = Secret::new("bench-secret");
    let (url, shutdown) = rt.block_on(async {
        let registry =
            Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
        let dispatcher = Arc::new(Dispatcher::new(registry, "bench"));
        let mut cfg = Config::default();
        cfg.secret = Some(secret.clone());
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        let opts = ServerOptions::default().announce(false).handle_signals(false);
        let bound = HttpServer::with_options(opts)
            .bind(dispatcher, &cfg)
            .await
            .unwrap();
        let url = bound.url();
        let shutdown = CancellationToken::new();
        tokio::spawn(bound.run(shutdown.clone()));
        (url, shutdown)
    });
    let transport = HttpTransport::new();
    let endpoint = Endpoint::new(url, "bench").with_secret(Some(secret));
    let args = codec::encode_args(&(2i64, 3i64)).unwrap();
    c.bench_function("signed round trip math/add (keep-alive, 127.0.0.1)", |b| {
        b.to_async(&rt).iter(|| async {
            let inv = Invocation {
                service_id: "math".into(),
                method_id: "add".into(),
                args: args.clone().into(),
                deadline: Some(tokio::time::Instant::now() + Duration::from_secs(5)),
                idempotency_key: None,
                trace: Default::default(),
                attempt: 1,
                cast: false,
                stream: false,
                limits: Default::default(),
            };
            transport.invoke(&endpoint, &inv).await.unwrap()
        })
    });
    shutdown.cancel();
}

fn signing(c: &mut Criterion) {
    let secret = Secret::new("bench-secret");
    let body = vec![b'x'; 1024];
    let sig = flame_http::sign::sign(&secret, &body);
    c.bench_function("sign 1 KiB", |b| {
        b.iter(|| flame_http::sign::sign(&secret, &body))
    });
    c.bench_function("verify 1 KiB (constant time)", |b| {
        b.iter(|| flame_http::sign::verify(&secret, &body, &sig))
    });
}

fn caches(c: &mut Criterion) {
    let replay = ReplayCache::new(2_000_000);
    let now = 1_000_000u64;
    for i in 0..1_000_000u64 {
        replay.check_and_insert(
            &uuid::Uuid::from_u128(i as u128).to_string(),
            now + 120_000 + i,
            now,
        );
    }
    let mut n = 0u128;
    c.bench_function("replay check_and_insert with 1M ids remembered", |b| {
        b.iter(|| {
            n += 1;
            let id = uuid::Uuid::from_u128((1u128 << 100) + n).to_string();
            replay.check_and_insert(&id, now + 120_000, now)
        })
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = IdempotencyCache::new(10_000, Duration::from_secs(600));
    rt.block_on(async {
        for i in 0..10_000 {
            if let Begin::Run(r) = cache.begin("s", "m", &i.to_string()) {
                r.finish(bytes::Bytes::from_static(b"{\"ok\":true}"), true);
            }
        }
    });
    c.bench_function("idempotency hit with 10k keys remembered", |b| {
        let _guard = rt.enter();
        b.iter(|| matches!(cache.begin("s", "m", "5000"), Begin::Done(_)))
    });
}

criterion_group!(benches, round_trip, signing, caches);
criterion_main!(benches);
