//! Quickstart: a small "order pricing" service, run on runner processes that flame starts
//! from this very executable.
//!
//! Run it with `cargo run --example quickstart`. By default it is the **parent**: it prices six
//! orders at once through a pool of at most 3 runners (2 calls each at a time); the pool starts
//! runner processes — this same binary, with `FLAME_MODE=runner` — as the calls need them, each
//! call prints which runner (pid) priced it, and at the end flame drains the calls and stops
//! every runner. `FLAME_MODE=local cargo run --example quickstart` runs the same handlers inside
//! this process instead. `RUST_LOG=info` shows the pool growing and shrinking.

use flame::{CallOptions, Context, Error, Method, Mode, PoolConfig, Registry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
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
    /// The process that priced it: a runner's pid in parent mode (shows where calls run).
    pub priced_by_pid: u32,
}

/// Why an order cannot be priced: a typed application error that travels back to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub enum QuoteError {
    /// The order has no lines.
    Empty,
    /// A line has a zero quantity.
    ZeroQuantity {
        /// The offending SKU.
        sku: String,
    },
}

impl std::fmt::Display for QuoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuoteError::Empty => write!(f, "the order is empty"),
            QuoteError::ZeroQuantity { sku } => write!(f, "line {sku} has quantity 0"),
        }
    }
}

/// Prices an order: the method's explicit ids are `orders`/`quote`.
pub const QUOTE: Method<(Vec<Line>, String), Quote> = Method::new("orders", "quote");

fn registry() -> Registry {
    Registry::new().handle(
        QUOTE,
        |ctx: Context, (lines, region): (Vec<Line>, String)| async move {
            if lines.is_empty() {
                return Err(Error::app(QuoteError::Empty));
            }
            if let Some(l) = lines.iter().find(|l| l.qty == 0) {
                return Err(Error::app(QuoteError::ZeroQuantity { sku: l.sku.clone() }));
            }
            let subtotal: u64 = lines.iter().map(|l| l.unit_cents * u64::from(l.qty)).sum();
            let units: u32 = lines.iter().map(|l| l.qty).sum();
            let discount = if units >= 10 { subtotal / 10 } else { 0 };
            let tax_rate_permille = match region.as_str() {
                "EU" => 200,
                "US" => 80,
                _ => 0,
            };
            let tax = (subtotal - discount) * tax_rate_permille / 1000;
            // Pricing takes a moment (think: a slow tax service), so calls overlap and the
            // pool grows. The context carries the call's deadline and cancellation, locally
            // and remotely: stop if the caller gave up.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = ctx.cancelled() => return Err(Error::handler("cancelled")),
            }
            Ok(Quote {
                subtotal_cents: subtotal,
                discount_cents: discount,
                tax_cents: tax,
                total_cents: subtotal - discount + tax,
                priced_by_pid: std::process::id(),
            })
        },
    )
}

fn cents(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Logs go to stderr; `RUST_LOG=info` shows pool events and the runners' own logs.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // One builder for both sides: as a parent it starts runners (this same executable, with
    // FLAME_MODE=runner) in the pool "default"; as a runner, `start` serves the handlers and
    // never returns.
    let flame = flame::builder(registry())
        .pool("default", PoolConfig::default().max(3).max_concurrency(2))
        .default_mode(Mode::Parent)
        .from_env()?
        .start()
        .await?;
    let me = std::process::id();
    match flame.mode() {
        Mode::Parent => println!(
            "flame quickstart: parent mode. This process (pid {me}) sends each call to a runner \
             process that flame starts from this same executable: at most 3 runners, 2 calls \
             each at a time."
        ),
        mode => println!("flame quickstart: {mode} mode. Calls run inside this process (pid {me})."),
    }

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
    let regions = ["EU", "US", "elsewhere", "EU", "US", "elsewhere"];
    println!(
        "pricing {} orders at once (each takes about 0.3 s)...",
        regions.len()
    );
    let started = Instant::now();
    // Six calls at once: the pool starts runners as the calls need them.
    let calls = regions.iter().enumerate().map(|(i, region)| {
        let flame = flame.clone();
        let order = order.clone();
        let region = region.to_string();
        tokio::spawn(async move {
            let q = flame.call(QUOTE, (order, region.clone())).await;
            (i + 1, region, q)
        })
    });
    let mut pids = BTreeSet::new();
    for call in calls.collect::<Vec<_>>() {
        let (n, region, q) = call
            .await
            .map_err(|e| Error::handler(format!("task failed: {e}")))?;
        let q = q?;
        pids.insert(q.priced_by_pid);
        let by = if q.priced_by_pid == me {
            "this process".to_owned()
        } else {
            format!("runner pid {}", q.priced_by_pid)
        };
        println!(
            "  order {n} for {region:>9}: subtotal {} - discount {} + tax {} = total {}  (priced by {by})",
            cents(q.subtotal_cents),
            cents(q.discount_cents),
            cents(q.tax_cents),
            cents(q.total_cents)
        );
    }
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    if flame.mode() == Mode::Parent {
        println!(
            "{} calls in {:.1} s, served by {} runner process(es) the pool started on demand: pids {}",
            regions.len(),
            started.elapsed().as_secs_f64(),
            pids.len(),
            list.join(", ")
        );
    } else {
        println!(
            "{} calls in {:.1} s, all in this process",
            regions.len(),
            started.elapsed().as_secs_f64()
        );
    }

    // Errors are values: a typed application error comes back typed, from a runner too.
    let err = flame
        .call_with(
            QUOTE,
            (vec![], "EU".into()),
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .expect_err("an empty order cannot be priced");
    println!(
        "an empty order is refused: code {} ({:?})",
        err.code(),
        err.app_error::<QuoteError>()
    );

    flame.shutdown().await?;
    if flame.mode() == Mode::Parent {
        println!(
            "done: every call finished, then flame stopped all {} runner(s); none is left running",
            pids.len()
        );
    } else {
        println!("done: every call finished and flame shut down cleanly");
    }
    Ok(())
}
