//! Quickstart: a small "order pricing" service, called through flame.
//!
//! Run it with `cargo run --example quickstart`. With no `FLAME_MODE` set it runs in local
//! mode: the handlers run in this process, with the same deadlines, cancellation and error
//! values a remote call has.

use flame::{CallOptions, Context, Error, Flame, Method, Registry};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
            // The context carries the call's deadline and cancellation, locally and remotely.
            if ctx.is_cancelled() {
                return Err(Error::handler("cancelled"));
            }
            Ok(Quote {
                subtotal_cents: subtotal,
                discount_cents: discount,
                tax_cents: tax,
                total_cents: subtotal - discount + tax,
            })
        },
    )
}

fn cents(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let flame = Flame::builder(registry()).from_env()?.start().await?;
    println!("flame quickstart: mode = {}", flame.mode());

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
    for region in ["EU", "US", "elsewhere"] {
        let q = flame.call(QUOTE, (order.clone(), region.to_string())).await?;
        println!(
            "quote for {region:>9}: subtotal {} - discount {} + tax {} = total {}",
            cents(q.subtotal_cents),
            cents(q.discount_cents),
            cents(q.tax_cents),
            cents(q.total_cents)
        );
    }

    // Errors are values: a typed application error comes back typed.
    let err = flame
        .call_with(
            QUOTE,
            (vec![], "EU".into()),
            CallOptions::new().timeout(Duration::from_secs(2)),
        )
        .await
        .expect_err("an empty order cannot be priced");
    println!(
        "an empty order is refused: code {} ({:?})",
        err.code(),
        err.app_error::<QuoteError>()
    );

    flame.shutdown().await?;
    println!("done: every call finished and flame shut down cleanly");
    Ok(())
}
