//! The quickstart's order-pricing service on Docker runners.
//!
//! ```sh
//! cargo run --example docker
//! ```
//!
//! One binary, parent or runner by `FLAME_MODE`. As a parent (the default here) it packs its own
//! executable into a local image with `docker import` (the binary, the shared libraries `ldd`
//! lists, the dynamic loader; no registry involved) unless `FLAME_DOCKER_IMAGE` names one, then
//! prices orders through an elastic pool whose runners are containers of that image, started
//! with `FLAME_MODE=runner` on the host network. It needs a running dockerd (`DOCKER_HOST` or
//! `/var/run/docker.sock`). In a container, the parent would use its own image instead.

use flame::docker::{DockerBackend, PullPolicy};
use flame::{CallOptions, Context, Error, Method, Mode, PoolConfig, Registry};
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// Stock-keeping unit.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// Unit price in cents.
    pub unit_cents: u64,
}

/// A priced order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quote {
    /// Sum of the lines, in cents.
    pub subtotal_cents: u64,
    /// Volume discount, in cents.
    pub discount_cents: u64,
    /// Tax, in cents.
    pub tax_cents: u64,
    /// What the customer pays, in cents.
    pub total_cents: u64,
    /// The host (container) that priced it.
    pub priced_by: String,
}

/// Prices an order: `orders`/`quote`, as in the quickstart.
pub const QUOTE: Method<(Vec<Line>, String), Quote> = Method::new("orders", "quote");

fn registry() -> Registry {
    Registry::new().handle(
        QUOTE,
        |_ctx: Context, (lines, region): (Vec<Line>, String)| async move {
            if lines.is_empty() {
                return Err(Error::handler("the order is empty"));
            }
            let subtotal: u64 = lines.iter().map(|l| l.unit_cents * u64::from(l.qty)).sum();
            let units: u32 = lines.iter().map(|l| l.qty).sum();
            let discount = if units >= 10 { subtotal / 10 } else { 0 };
            let tax_permille = match region.as_str() {
                "EU" => 200,
                "US" => 80,
                _ => 0,
            };
            let tax = (subtotal - discount) * tax_permille / 1000;
            Ok(Quote {
                subtotal_cents: subtotal,
                discount_cents: discount,
                tax_cents: tax,
                total_cents: subtotal - discount + tax,
                priced_by: container_of_this_process(),
            })
        },
    )
}

/// The container this process runs in (from its cgroup), or `host`.
fn container_of_this_process() -> String {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup
        .lines()
        .find_map(|l| l.split("/docker/").nth(1))
        .map(|id| format!("container {}", id.get(..12).unwrap_or(id)))
        .unwrap_or_else(|| "this host".to_owned())
}

/// Packs this executable into a local image (once per build) and returns its tag.
fn image_of_this_binary() -> Result<String, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::config(format!("{what}: {e}"));
    let exe = std::env::current_exe().map_err(|e| fail("cannot find this executable", &e))?;
    let meta = std::fs::metadata(&exe).map_err(|e| fail("cannot stat this executable", &e))?;
    let stamp = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let tag = format!("flame-example-docker:{}-{stamp}", meta.len());
    let present = Command::new("docker")
        .args(["image", "inspect", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(tag);
    }
    let root = std::env::temp_dir().join(format!("flame-example-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut files = vec![exe.display().to_string()];
    let ldd = Command::new("ldd")
        .arg(&exe)
        .output()
        .map_err(|e| fail("cannot run ldd", &e))?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        files.extend(path.filter(|p| p.starts_with('/')).map(str::to_owned));
    }
    for (i, file) in files.iter().enumerate() {
        let dest = if i == 0 {
            root.join("app")
        } else {
            root.join(file.trim_start_matches('/'))
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot stage the image", &e))?;
        }
        std::fs::copy(file, &dest).map_err(|e| fail(&format!("cannot copy {file}"), &e))?;
    }
    let pack = format!(
        "tar -C '{}' -c . | docker import --change 'CMD [\"/app\"]' - '{tag}' >/dev/null",
        root.display()
    );
    let status = Command::new("sh").args(["-c", &pack]).status();
    let _ = std::fs::remove_dir_all(&root);
    match status {
        Ok(s) if s.success() => Ok(tag),
        Ok(s) => Err(Error::config(format!("docker import failed ({s})"))),
        Err(e) => Err(fail("cannot run docker import", &e)),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let runner = std::env::var("FLAME_MODE").is_ok_and(|m| m == "runner");
    if runner {
        // Started by the Docker backend inside a container: serve until told to stop.
        flame::builder(registry()).from_env()?.start().await?;
        return Ok(());
    }

    let image = match std::env::var("FLAME_DOCKER_IMAGE") {
        Ok(image) => image,
        Err(_) => image_of_this_binary()?,
    };
    let backend = DockerBackend::builder()
        .image(image.clone())
        .pull_policy(PullPolicy::IfMissing)
        .forward_env(["RUST_LOG"])
        .memory_bytes(256 << 20)
        .build()?;
    let flame = flame::builder(registry())
        .default_mode(Mode::Parent)
        .app("flame-docker-example")
        .pool(
            "default",
            PoolConfig::default()
                .max(2)
                .max_concurrency(8)
                .boot_timeout(Duration::from_secs(30))
                .idle_shutdown_after(Duration::from_secs(10)),
        )
        .backend(backend)
        .from_env()?
        .start()
        .await?;
    println!(
        "flame docker example: mode = {}, runner image {image}",
        flame.mode()
    );

    let order = vec![
        Line {
            sku: "mug".into(),
            qty: 6,
            unit_cents: 1250,
        },
        Line {
            sku: "tea".into(),
            qty: 5,
            unit_cents: 799,
        },
    ];
    let started = Instant::now();
    let first = flame.call(QUOTE, (order.clone(), "EU".into())).await?;
    println!(
        "first quote (a runner container booted for it) after {} ms: total {} cents, priced by {}",
        started.elapsed().as_millis(),
        first.total_cents,
        first.priced_by
    );
    for region in ["US", "elsewhere"] {
        let started = Instant::now();
        let q = flame.call(QUOTE, (order.clone(), region.to_string())).await?;
        println!(
            "quote for {region:>9}: total {} cents, priced by {} in {} ms",
            q.total_cents,
            q.priced_by,
            started.elapsed().as_millis()
        );
    }
    let err = flame
        .call_with(
            QUOTE,
            (vec![], "EU".into()),
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .expect_err("an empty order cannot be priced");
    println!("an empty order is refused: {}", err.code());

    // Ends every runner container (stop with grace, then remove).
    flame.shutdown().await?;
    println!("done: runners ended, `docker ps -a --filter label=flame.app=flame-docker-example` is empty");
    Ok(())
}
