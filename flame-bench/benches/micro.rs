//! Criterion micro-benchmarks of flame's hot paths (issue 8; results in `BENCHMARKS.md`):
//!
//! - `local call`: `Flame::call` in local mode vs awaiting the same handler directly — the
//!   overhead local mode adds (goal: < 1 µs);
//! - `codec`: a request's encode (arguments + envelope, as a parent sends it) and decode
//!   (envelope + arguments, as a runner reads it), small (`math/add(2, 3)`) and 64 KiB, on the
//!   JSON wire and in the binary codec (envelope headers + bincode);
//! - `pool checkout+release`: one lease taken and given back on an `ElasticPool` (fake
//!   in-memory backend) and a `StaticPool` of 10, 100 and 1000 runners (goal: < 2 µs, flat);
//! - `hmac`: signing and verifying a request body, small and 64 KiB — keyed from the secret per
//!   message, and from the cached keyed state (`Signer`) as flame-http does now.
//!
//! ```sh
//! cargo bench -p flame-bench --bench micro            # all
//! cargo bench -p flame-bench --bench micro -- pool    # one group
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use flame_core::codec::{self, InvocationRequest};
use flame_core::pool::RunnerTemplate;
use flame_core::testkit::MemoryBackend;
use flame_core::{
    CheckoutOptions, Context, ElasticPool, Endpoint, Flame, Invocation, Method, Mode, Pool, PoolConfig,
    Registry, Secret, StaticPool,
};
use std::sync::Arc;
use std::time::Duration;

const ADD: Method<(i64, i64), i64> = Method::new("math", "add");

async fn add(_ctx: Context, (a, b): (i64, i64)) -> flame_core::Result<i64> {
    Ok(a + b)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn local_call(c: &mut Criterion) {
    let rt = current_thread();
    let flame = rt.block_on(async {
        Flame::builder(Registry::new().handle(ADD, add))
            .mode(Mode::Local)
            .start()
            .await
            .unwrap()
    });
    let ctx = Context::new("bench");
    let mut g = c.benchmark_group("local call");
    g.bench_function("handler awaited directly", |b| {
        b.to_async(&rt)
            .iter(|| async { add(ctx.clone(), black_box((2, 3))).await.unwrap() })
    });
    g.bench_function("Flame::call (local mode)", |b| {
        b.to_async(&rt)
            .iter(|| async { flame.call(ADD, black_box((2, 3))).await.unwrap() })
    });
    g.finish();
}

/// 64 KiB of text with characters JSON escapes (quotes, newlines), as a document would have.
fn big_text() -> String {
    let line = "The quick brown fox \"jumps\" over the lazy dog; 0123456789.\n";
    line.repeat(64 * 1024 / line.len() + 1)[..64 * 1024].to_owned()
}

fn invocation(args: String) -> Invocation {
    Invocation {
        service_id: "text".into(),
        method_id: "len".into(),
        args: args.into(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(30)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    }
}

fn codec_bench(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter(); // `Invocation` deadlines are tokio instants
    let mut g = c.benchmark_group("codec");
    let big = (big_text(),);
    let small_wire = serde_json::to_vec(
        &invocation(codec::encode_args(&(2i64, 3i64)).unwrap())
            .to_request()
            .unwrap(),
    )
    .unwrap();
    let big_wire = serde_json::to_vec(
        &invocation(codec::encode_args(&big).unwrap())
            .to_request()
            .unwrap(),
    )
    .unwrap();
    g.bench_function("encode request, small (math/add)", |b| {
        b.iter(|| {
            let inv = invocation(codec::encode_args(black_box(&(2i64, 3i64))).unwrap());
            serde_json::to_vec(&inv.to_request().unwrap()).unwrap()
        })
    });
    g.bench_function("decode request, small (math/add)", |b| {
        b.iter(|| {
            let req: InvocationRequest = serde_json::from_slice(black_box(&small_wire)).unwrap();
            codec::decode_args::<(i64, i64)>(&req.args).unwrap()
        })
    });
    g.bench_function("encode request, 64 KiB string", |b| {
        b.iter(|| {
            let inv = invocation(codec::encode_args(black_box(&big)).unwrap());
            serde_json::to_vec(&inv.to_request().unwrap()).unwrap()
        })
    });
    g.bench_function("decode request, 64 KiB string", |b| {
        b.iter(|| {
            let req: InvocationRequest = serde_json::from_slice(black_box(&big_wire)).unwrap();
            codec::decode_args::<(String,)>(&req.args).unwrap()
        })
    });
    // The binary codec: the envelope as headers, the arguments in bincode.
    let binary_request = |args: &dyn Fn() -> Vec<u8>| {
        let inv = invocation(String::new());
        let payload = args();
        let mut envelope = inv.envelope(String::new());
        envelope.seq = Some(flame_core::runner::replay::format_seq(0xfeed, 1));
        let headers = flame_http::wire::headers(&envelope, "", payload.len() as u64).unwrap();
        (headers, payload)
    };
    let small_bin = binary_request(&|| codec::binary::encode(&(2i64, 3i64)).unwrap());
    let big_bin = binary_request(&|| codec::binary::encode(&big).unwrap());
    g.bench_function("encode request, small (math/add), binary", |b| {
        b.iter(|| binary_request(&|| codec::binary::encode(black_box(&(2i64, 3i64))).unwrap()))
    });
    g.bench_function("decode request, small (math/add), binary", |b| {
        b.iter(|| {
            let env = flame_http::wire::read_envelope(black_box(&small_bin.0)).unwrap();
            (
                env.request.service_id,
                codec::binary::decode::<(i64, i64)>(&small_bin.1).unwrap(),
            )
        })
    });
    g.bench_function("encode request, 64 KiB string, binary", |b| {
        b.iter(|| binary_request(&|| codec::binary::encode(black_box(&big)).unwrap()))
    });
    g.bench_function("decode request, 64 KiB string, binary", |b| {
        b.iter(|| {
            let env = flame_http::wire::read_envelope(black_box(&big_bin.0)).unwrap();
            (
                env.request.service_id,
                codec::binary::decode::<(String,)>(&big_bin.1).unwrap(),
            )
        })
    });
    g.finish();
}

/// An elastic pool of `n` runners over `MemoryBackend` (dispatchers in an in-memory
/// transport: spawning is instant).
async fn elastic_pool(n: usize) -> ElasticPool {
    let backend = MemoryBackend::new(Registry::new());
    let transport = backend.transport().clone();
    let template = RunnerTemplate::new("bench", "parent", Secret::generate(), Arc::new(transport.clone()))
        .parent_timeout(Duration::from_secs(3600));
    let pool = ElasticPool::builder("bench", Arc::new(backend), template)
        .config(
            PoolConfig::default()
                .min(n)
                .max(n)
                .max_concurrency(4)
                .health_interval(Duration::from_secs(600))
                .idle_shutdown_after(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while pool.stats().runners < n {
        assert!(
            tokio::time::Instant::now() < until,
            "{n} fake runners did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool
}

fn pool_bench(c: &mut Criterion) {
    let rt = current_thread();
    let opts = CheckoutOptions::default();
    let mut g = c.benchmark_group("pool checkout+release");
    for n in [10usize, 100, 1000] {
        let elastic = rt.block_on(elastic_pool(n));
        g.bench_with_input(BenchmarkId::new("ElasticPool", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { drop(elastic.checkout(&opts).await.unwrap()) })
        });
        rt.block_on(elastic.shutdown(Duration::ZERO)).unwrap();
        let endpoints = (0..n)
            .map(|i| Endpoint::new(format!("http://10.0.0.1:{}", 1000 + i), format!("r{i}")))
            .collect();
        let fixed = StaticPool::new("bench", endpoints, 4);
        g.bench_with_input(BenchmarkId::new("StaticPool", n), &n, |b, _| {
            b.to_async(&rt)
                .iter(|| async { drop(fixed.checkout(&opts).await.unwrap()) })
        });
    }
    g.finish();
}

fn hmac_bench(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let secret = Secret::generate();
    let small = serde_json::to_vec(
        &invocation(codec::encode_args(&(2i64, 3i64)).unwrap())
            .to_request()
            .unwrap(),
    )
    .unwrap();
    let big = serde_json::to_vec(
        &invocation(codec::encode_args(&(big_text(),)).unwrap())
            .to_request()
            .unwrap(),
    )
    .unwrap();
    let mut g = c.benchmark_group("hmac");
    for (name, body) in [
        (format!("{} B request", small.len()), &small),
        ("64 KiB request".to_owned(), &big),
    ] {
        let sig = flame_http::sign::sign(&secret, body);
        g.bench_function(format!("sign {name}"), |b| {
            b.iter(|| flame_http::sign::sign(&secret, black_box(body)))
        });
        g.bench_function(format!("verify {name}"), |b| {
            b.iter(|| flame_http::sign::verify(&secret, black_box(body), &sig))
        });
        let signer = flame_http::sign::Signer::new(&secret);
        g.bench_function(format!("sign {name}, cached key"), |b| {
            b.iter(|| signer.sign(black_box(body)))
        });
        g.bench_function(format!("verify {name}, cached key"), |b| {
            b.iter(|| signer.verify(black_box(body), &sig))
        });
    }
    g.finish();
}

criterion_group!(benches, local_call, codec_bench, pool_bench, hmac_bench);
criterion_main!(benches);
