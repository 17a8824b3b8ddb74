//! The choice of the binary codec (`BENCHMARKS.md`, "Codec choice"): postcard, rmp-serde and
//! bincode (serde APIs) on what flame sends — a small call, a struct of strings and floats, a
//! 64 MiB frame of `serde_bytes` — by size, encode and decode time (from a slice and from a
//! stream of 64 KiB chunks, as a body arrives), and the extra memory a streamed decode of the
//! 64 MiB frame needs beyond its output (peak RSS, reset through `/proc/self/clear_refs`).
//!
//! ```sh
//! cargo bench -p flame-bench --bench codecs
//! ```
#![allow(missing_docs, clippy::unwrap_used, dropping_copy_types)]

use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Instant;

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
    region: Option<String>,
    discount: f64,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Item {
    sku: String,
    qty: u32,
    price: f64,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Frame {
    seq: u64,
    width: u32,
    height: u32,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
}

fn order() -> Order {
    Order {
        id: "ord-42".into(),
        customer: "Ada Lovelace".into(),
        items: (0..5)
            .map(|i| Item {
                sku: format!("sku-{i}"),
                qty: i + 1,
                price: 9.99 + f64::from(i),
            })
            .collect(),
        region: Some("EU".into()),
        discount: 0.1,
    }
}

/// A reader handing out at most 64 KiB per read, like chunks of a request body.
struct Chunky<'a>(&'a [u8]);

impl std::io::Read for Chunky<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = b.len().min(self.0.len()).min(65536);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn per_op(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..(iters / 10).max(1) {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

macro_rules! case {
    ($label:expr, $value:expr, $ty:ty, $iters:expr) => {{
        let v: $ty = $value;
        let json = serde_json::to_vec(&v).unwrap();
        let post = postcard::to_stdvec(&v).unwrap();
        let rmp = rmp_serde::to_vec(&v).unwrap();
        let bin = bincode::serde::encode_to_vec(&v, cfg()).unwrap();
        let it = $iters;
        let enc = [
            per_op(it, || drop(black_box(serde_json::to_vec(&v).unwrap()))),
            per_op(it, || drop(black_box(postcard::to_stdvec(&v).unwrap()))),
            per_op(it, || drop(black_box(rmp_serde::to_vec(&v).unwrap()))),
            per_op(it, || {
                drop(black_box(bincode::serde::encode_to_vec(&v, cfg()).unwrap()))
            }),
        ];
        let dec = [
            per_op(it, || {
                drop(black_box(serde_json::from_slice::<$ty>(&json).unwrap()))
            }),
            per_op(it, || {
                drop(black_box(postcard::from_bytes::<$ty>(&post).unwrap()))
            }),
            per_op(it, || {
                drop(black_box(rmp_serde::from_slice::<$ty>(&rmp).unwrap()))
            }),
            per_op(it, || {
                drop(black_box(
                    bincode::serde::decode_from_slice::<$ty, _>(&bin, cfg())
                        .unwrap()
                        .0,
                ))
            }),
        ];
        let mut scratch = vec![0u8; post.len() + 64];
        let stream = [
            f64::NAN,
            per_op(it, || {
                drop(black_box(
                    postcard::from_io::<$ty, _>((Chunky(&post), &mut scratch[..]))
                        .unwrap()
                        .0,
                ))
            }),
            per_op(it, || {
                drop(black_box(rmp_serde::from_read::<_, $ty>(Chunky(&rmp)).unwrap()))
            }),
            per_op(it, || {
                drop(black_box(
                    bincode::serde::decode_from_std_read::<$ty, _, _>(&mut Chunky(&bin), cfg()).unwrap(),
                ))
            }),
        ];
        let sizes = [json.len(), post.len(), rmp.len(), bin.len()];
        for (i, name) in ["JSON (serde_json)", "postcard", "rmp-serde", "bincode"]
            .iter()
            .enumerate()
        {
            let s = if stream[i].is_nan() {
                "–".to_owned()
            } else {
                human(stream[i])
            };
            println!(
                "| {} | {name} | {} | {} | {} | {} |",
                $label,
                sizes[i],
                human(enc[i]),
                human(dec[i]),
                s
            );
        }
    }};
}

fn vm(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Extra peak memory (KiB, beyond the memory held before and the output) of `decode`.
fn extra_peak(output_kib: u64, decode: impl FnOnce() -> Frame) -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = vm("VmRSS:");
    let out = decode();
    let peak = vm("VmHWM:");
    drop(black_box(out));
    Some(peak.saturating_sub(before).saturating_sub(output_kib))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list
    }
    println!("| payload | codec | bytes | encode | decode (slice) | decode (64 KiB-chunk stream) |");
    println!("|---|---|---:|---:|---:|---:|");
    case!("math/add args `(i64, i64)`", (2i64, 3i64), (i64, i64), 1_000_000);
    case!("an order (5 items: strings, f64)", order(), Order, 200_000);
    let n = 64 << 20;
    let frame = Frame {
        seq: 7,
        width: 4096,
        height: 4096,
        pixels: vec![7u8; n],
    };
    case!("a 64 MiB frame (`serde_bytes`)", frame.clone(), Frame, 5);
    println!();
    let post = postcard::to_stdvec(&frame).unwrap();
    let rmp = rmp_serde::to_vec(&frame).unwrap();
    let bin = bincode::serde::encode_to_vec(&frame, cfg()).unwrap();
    drop(frame);
    let out_kib = (n / 1024) as u64;
    println!("| streamed decode of the 64 MiB frame | extra peak memory beyond the 64 MiB output |");
    println!("|---|---:|");
    let show = |name: &str, kib: Option<u64>| {
        println!(
            "| {name} | {} |",
            kib.map_or("n/a (no /proc/self/clear_refs)".into(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            ))
        )
    };
    show(
        "postcard (`from_io`: a scratch buffer as large as the bytes)",
        extra_peak(out_kib, || {
            let mut scratch = vec![0u8; post.len() + 64];
            postcard::from_io((Chunky(&post), &mut scratch[..])).unwrap().0
        }),
    );
    show(
        "rmp-serde (`from_read`)",
        extra_peak(out_kib, || rmp_serde::from_read(Chunky(&rmp)).unwrap()),
    );
    show(
        "bincode (`decode_from_std_read`)",
        extra_peak(out_kib, || {
            bincode::serde::decode_from_std_read(&mut Chunky(&bin), cfg()).unwrap()
        }),
    );
}
