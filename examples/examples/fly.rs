//! The quickstart's order-pricing service on Fly Machines.
//!
//! One binary, parent or runner by `FLAME_MODE`. Deployed as a Fly app (see the README section
//! "Fly.io backend" for the `fly.toml` and the token), the parent prices orders through an
//! elastic pool whose runners are Fly Machines booted from the app's own image
//! (`FLY_IMAGE_REF`) with `FLAME_MODE=runner`; they are reached over the app's private 6PN
//! network and destroyed when idle, when the parent shuts down, or by their own failsafe when
//! the parent is gone.
//!
//! ```sh
//! fly secrets set FLY_API_TOKEN="$(fly tokens create deploy)"
//! fly deploy
//! fly logs        # one line per order: which runner machine priced it
//! ```
//!
//! Run locally without the Fly variables, it explains what it needs and exits with status 2.

use flame::fly::{FlyBackend, FlyConfig};
use flame::{Context, Error, Method, Mode, PoolConfig, Registry};
use serde::{Deserialize, Serialize};
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
    /// What the customer pays, in cents.
    pub total_cents: u64,
    /// The Fly machine (runner) that priced it.
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
            let tax_permille = if region == "EU" { 200 } else { 80 };
            Ok(Quote {
                total_cents: subtotal + subtotal * tax_permille / 1000,
                priced_by: std::env::var("FLY_MACHINE_ID").unwrap_or_else(|_| "local".into()),
            })
        },
    )
}

const HELP: &str = "\
The Fly example runs on Fly.io. It needs the variables every Fly machine has (FLY_APP_NAME,
FLY_IMAGE_REF, FLY_REGION) and the FLY_API_TOKEN secret:

    fly secrets set FLY_API_TOKEN=\"$(fly tokens create deploy)\"
    fly deploy

Optional: FLAME_FLY_CPU_KIND, FLAME_FLY_CPUS, FLAME_FLY_MEMORY_MB, FLAME_FLY_GPU_KIND,
FLAME_FLY_REGION, FLAME_FLY_PORT, FLAME_FLY_FORWARD_ENV (names to copy to runners).
Set FLAME_MODE=local to run the handlers in this process instead.";

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let builder = flame::builder(registry())
        .default_mode(Mode::Parent)
        .app(std::env::var("FLY_APP_NAME").unwrap_or_else(|_| "flame-fly-example".into()))
        .from_env()?;
    let builder = if builder.current_config().mode == Mode::Parent {
        // Only the parent talks to the Machines API: runners never see the token.
        let config = match FlyConfig::from_env() {
            Ok(config) => config,
            Err(e) => {
                eprintln!("{e}\n\n{HELP}");
                std::process::exit(2);
            }
        };
        let backend = FlyBackend::new(config.cpus("shared", 1).memory_mb(256))?;
        builder.backend(backend).pool(
            "default",
            PoolConfig::default()
                .max(3)
                .max_concurrency(4)
                .boot_timeout(Duration::from_secs(60))
                .idle_shutdown_after(Duration::from_secs(30)),
        )
    } else {
        builder
    };
    // Runner mode serves the registry here until the parent is done with it, then exits.
    let flame = builder.start().await?;

    let started = Instant::now();
    let calls: Vec<_> = (1..=8u32)
        .map(|i| {
            let flame = flame.clone();
            let lines = vec![Line {
                sku: format!("sku-{i}"),
                qty: i,
                unit_cents: 1250,
            }];
            let region = if i % 2 == 0 { "EU" } else { "US" }.to_string();
            tokio::spawn(async move { (i, flame.call(QUOTE, (lines, region)).await) })
        })
        .collect();
    for call in calls {
        match call.await {
            Ok((i, Ok(q))) => println!(
                "order {i}: {} cents, priced by machine {}",
                q.total_cents, q.priced_by
            ),
            Ok((i, Err(e))) => println!("order {i}: failed: {e}"),
            Err(e) => println!("a call task failed: {e}"),
        }
    }
    println!("8 orders in {:?}", started.elapsed());
    flame.shutdown().await
}
