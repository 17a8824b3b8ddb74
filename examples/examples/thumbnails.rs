//! Thumbnails: a real fan-out workload. The parent asks for 48 thumbnails with `flame.map`; a
//! pool of LocalProcess runners (this same binary, `FLAME_MODE=runner`) renders each source
//! image, downsamples it with a resampling kernel and returns the thumbnail's statistics. The
//! kernel is **runner state**: built once per runner process when it boots (never in the
//! parent), then shared by every call that runner serves. Progress prints as results stream in,
//! in input order.
//!
//! `cargo run --example thumbnails` (`THUMBNAILS_JOBS=n` for another count;
//! `THUMBNAILS_BREAK_STATE=1` makes the runner state fail, to see the boot error a parent gets).

use flame::{Context, Error, MapOptions, Method, Mode, PoolConfig, Registry};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// One source image to thumbnail: rendered on the runner from `seed` (so the request is small).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The image's number.
    pub id: u32,
    /// Source width in pixels.
    pub width: u32,
    /// Source height in pixels.
    pub height: u32,
    /// What the picture looks like.
    pub seed: u64,
}

/// A finished thumbnail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thumb {
    /// The job's number.
    pub id: u32,
    /// Thumbnail size.
    pub width: u32,
    /// Thumbnail size.
    pub height: u32,
    /// Mean brightness, 0–255.
    pub mean: f64,
    /// FNV-1a hash of the thumbnail's pixels.
    pub checksum: u64,
    /// The runner process that made it.
    pub runner_pid: u32,
    /// How many times that process built its runner state (always 1).
    pub state_builds: usize,
}

/// Makes a thumbnail of at most 64 × 64.
pub const THUMBNAIL: Method<Job, Thumb> = Method::new("images", "thumbnail");

/// How many times this process built the runner state.
static STATE_BUILDS: AtomicUsize = AtomicUsize::new(0);

/// The runner state: a separable resampling kernel (Lanczos-3 taps), built once per runner.
struct Resampler {
    /// Kernel taps for one output pixel, over 6 source pixels per axis, normalised.
    taps: Vec<f32>,
}

impl Resampler {
    fn build() -> Result<Resampler, Error> {
        if std::env::var("THUMBNAILS_BREAK_STATE").is_ok_and(|v| v == "1") {
            return Err(Error::config(
                "the resampler kernel cannot be built (THUMBNAILS_BREAK_STATE=1)",
            ));
        }
        STATE_BUILDS.fetch_add(1, Ordering::SeqCst);
        let sinc = |x: f32| {
            if x.abs() < 1e-6 {
                1.0
            } else {
                let px = std::f32::consts::PI * x;
                px.sin() / px
            }
        };
        let mut taps: Vec<f32> = (0..6)
            .map(|i| i as f32 - 2.5)
            .map(|x| sinc(x) * sinc(x / 3.0))
            .collect();
        let sum: f32 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= sum);
        Ok(Resampler { taps })
    }

    /// Renders the source picture of `job` and downsamples it to at most 64 × 64.
    fn thumbnail(&self, job: &Job) -> Thumb {
        let (w, h) = (job.width.max(1) as usize, job.height.max(1) as usize);
        let source: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                let s = job.seed as f32 * 0.001;
                128.0 + 60.0 * (x * 0.05 + s).sin() + 60.0 * (y * 0.07 - s).cos()
            })
            .collect();
        let scale = (w.max(h) as f32 / 64.0).max(1.0);
        let (tw, th) = (((w as f32) / scale) as usize, ((h as f32) / scale) as usize);
        let sample = |x: f32, y: f32| {
            let mut acc = 0.0;
            for (j, ty) in self.taps.iter().enumerate() {
                for (i, tx) in self.taps.iter().enumerate() {
                    let sx = ((x + i as f32 - 2.5) as isize).clamp(0, w as isize - 1) as usize;
                    let sy = ((y + j as f32 - 2.5) as isize).clamp(0, h as isize - 1) as usize;
                    acc += source[sy * w + sx] * tx * ty;
                }
            }
            acc.clamp(0.0, 255.0) as u8
        };
        let pixels: Vec<u8> = (0..tw * th)
            .map(|i| sample((i % tw) as f32 * scale, (i / tw) as f32 * scale))
            .collect();
        let checksum = pixels.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, p| {
            (h ^ u64::from(*p)).wrapping_mul(0x0100_0000_01b3)
        });
        Thumb {
            id: job.id,
            width: tw as u32,
            height: th as u32,
            mean: pixels.iter().map(|p| f64::from(*p)).sum::<f64>() / pixels.len().max(1) as f64,
            checksum,
            runner_pid: std::process::id(),
            state_builds: STATE_BUILDS.load(Ordering::SeqCst),
        }
    }
}

fn registry() -> Registry {
    Registry::new().handle(THUMBNAIL, |ctx: Context, job: Job| async move {
        let resampler = ctx.state::<Resampler>()?;
        // CPU work off the async threads.
        tokio::task::spawn_blocking(move || resampler.thumbnail(&job))
            .await
            .map_err(|e| Error::handler(format!("thumbnail task failed: {e}")))
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let jobs: u32 = std::env::var("THUMBNAILS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let flame = flame::builder(registry())
        .pool("default", PoolConfig::default().max(3).max_concurrency(4))
        .runner_state(|| async { Resampler::build() })
        .default_mode(Mode::Parent)
        .from_env()?
        .start()
        .await?;
    println!(
        "thumbnails: {jobs} images on at most 3 runners × 4 calls ({} mode); the parent built its runner state {} time(s)",
        flame.mode(),
        STATE_BUILDS.load(Ordering::SeqCst)
    );
    let started = Instant::now();
    let inputs = (0..jobs).map(|id| Job {
        id,
        width: 320 + (id % 5) * 64,
        height: 240 + (id % 3) * 48,
        seed: u64::from(id) * 7919,
    });
    let mut results = flame.map_with(THUMBNAIL, inputs, MapOptions::new());
    let (mut done, mut per_runner, mut builds) = (0u32, BTreeMap::<u32, u32>::new(), BTreeMap::new());
    let mut last_tenth = 0;
    while let Some(thumb) = results.next().await {
        let thumb = thumb?;
        done += 1;
        *per_runner.entry(thumb.runner_pid).or_default() += 1;
        builds.insert(thumb.runner_pid, thumb.state_builds);
        let tenth = done * 10 / jobs.max(1);
        if tenth > last_tenth || done == jobs {
            last_tenth = tenth;
            println!(
                "  [{:<10}] {done:>3}/{jobs}  last: #{} {}x{} mean {:.1} checksum {:016x}",
                "#".repeat(tenth as usize),
                thumb.id,
                thumb.width,
                thumb.height,
                thumb.mean,
                thumb.checksum
            );
        }
    }
    drop(results);
    println!("{done} thumbnails in {:.2} s", started.elapsed().as_secs_f64());
    for (pid, n) in &per_runner {
        println!(
            "  runner pid {pid}: {n} thumbnails, runner state built {} time(s)",
            builds[pid]
        );
    }
    flame.shutdown().await
}
