//! The quickstart's order-pricing service on Kubernetes.
//!
//! One binary, parent or runner by `FLAME_MODE`. Deployed as a Deployment whose Pods run it
//! (see the README section "Kubernetes backend" for the ServiceAccount, Role, RoleBinding and
//! Deployment), the parent prices orders through an elastic pool whose runners are Pods made
//! from the parent Pod's own spec — same image, same command — with `FLAME_MODE=runner`. They
//! are reached at their Pod IP, deleted when idle or when the parent shuts down, and deleted
//! by Kubernetes' garbage collector with the parent Pod (each runner Pod is owned by it).
//!
//! ```sh
//! kubectl apply -f flame-k8s.yaml      # the README's manifest
//! kubectl logs deploy/shop -f          # one line per order: which runner Pod priced it
//! ```
//!
//! Run outside a cluster, it explains what it needs and exits (status 0).

use flame::k8s::{K8sBackend, K8sConfig, PodSettings};
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
    /// The Pod (runner) that priced it.
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
                // A Pod's hostname is its name.
                priced_by: std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
            })
        },
    )
}

const HELP: &str = "\
The Kubernetes example runs in a Pod. Deploy it with the README's manifest (section
\"Kubernetes backend\"): a ServiceAccount, a Role with pods create/get/list/watch/delete, a
RoleBinding, and a Deployment whose container runs this binary with FLAME_MODE=parent. In
the Pod it finds everything itself: its own Pod (HOSTNAME, or POD_NAME from the downward API),
its namespace (the ServiceAccount mount) and the API server.

Optional: FLAME_K8S_CPU, FLAME_K8S_MEMORY, FLAME_K8S_GPUS, FLAME_K8S_NODE_SELECTOR (k=v,...),
FLAME_K8S_PORT, FLAME_K8S_CONTAINER, FLAME_K8S_FORWARD_ENV, FLAME_K8S_ACTIVE_DEADLINE_SECONDS.
Outside a cluster: FLAME_K8S_IMAGE and a kubeconfig (the parent must reach Pod IPs).
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
        .app("flame-k8s-example")
        .from_env()?;
    let builder = if builder.current_config().mode == Mode::Parent {
        // Only the parent talks to the API server: runners never need its permissions.
        let config = K8sConfig::from_env().map(|c| {
            c.pod_settings(PodSettings::new().cpu("250m").memory("256Mi"))
                .delete_grace(Duration::from_secs(10))
        });
        let backend = match config {
            Ok(config) => K8sBackend::connect(config).await,
            Err(e) => Err(e),
        };
        let backend = match backend {
            Ok(backend) => backend,
            Err(e) => {
                eprintln!("{e}\n\n{HELP}");
                return Ok(());
            }
        };
        println!(
            "parent in namespace {}: runners are Pods of {}",
            backend.namespace(),
            backend
                .config()
                .parent_pod
                .as_deref()
                .map(|p| format!("this Pod's spec ({p})"))
                .or_else(|| backend.config().image.clone())
                .unwrap_or_default()
        );
        builder.backend(backend).pool(
            "default",
            PoolConfig::default()
                .max(3)
                .max_concurrency(4)
                .boot_timeout(Duration::from_secs(120))
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
                "order {i}: {} cents, priced by Pod {}",
                q.total_cents, q.priced_by
            ),
            Ok((i, Err(e))) => println!("order {i}: failed: {e}"),
            Err(e) => println!("a call task failed: {e}"),
        }
    }
    println!("8 orders in {:?}", started.elapsed());
    flame.shutdown().await
}
