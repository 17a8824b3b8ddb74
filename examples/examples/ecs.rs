//! Checksums of generated "uploads" on AWS ECS runners.
//!
//! One binary, parent or runner by `FLAME_MODE`. Deployed as an ECS task (see the README
//! section "ECS backend" for the task definition, IAM policy and security group), the parent
//! computes checksums through an elastic pool whose runners are ECS tasks of the parent's own
//! task definition with `FLAME_MODE=runner`: same image, same secret (from the task
//! definition's `secrets`), reached at their ENI address on port 8080, stopped when idle, when
//! the parent shuts down, or by their own failsafe when the parent is gone.
//!
//! ```sh
//! aws ecs run-task --cluster jobs --task-definition flame-ecs-example \
//!   --launch-type FARGATE --network-configuration 'awsvpcConfiguration={subnets=[subnet-0abc],securityGroups=[sg-0flame]}'
//! aws logs tail /ecs/flame-ecs-example --follow   # one line per upload: which runner task did it
//! ```
//!
//! Off ECS it needs `FLAME_ECS_CLUSTER`, `FLAME_ECS_TASK_DEFINITION`, `FLAME_ECS_SUBNETS`
//! (and AWS credentials); without them it explains what it needs and exits with status 2.
//! `FLAME_MODE=local` runs the handlers in this process instead.

use flame::ecs::{EcsBackend, EcsBackendBuilder};
use flame::{Context, Error, Method, Mode, PoolConfig, Registry};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What a runner reports for one upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest {
    /// FNV-1a 64 of the bytes, hex.
    pub fnv1a: String,
    /// How many bytes.
    pub bytes: usize,
    /// The runner that computed it (`FLAME_RUNNER_ID`, "local" in-process).
    pub runner: String,
}

/// Checksums `size` pseudo-random bytes of upload `id`: `uploads`/`digest`.
pub const DIGEST: Method<(u64, usize), Digest> = Method::new("uploads", "digest");

fn registry() -> Registry {
    Registry::new().handle(DIGEST, |_ctx: Context, (id, size): (u64, usize)| async move {
        if size > 64 * 1024 * 1024 {
            return Err(Error::handler("uploads are at most 64 MiB"));
        }
        let (mut hash, mut x) = (
            0xcbf2_9ce4_8422_2325_u64,
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        );
        for _ in 0..size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            hash = (hash ^ (x & 0xff)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(Digest {
            fnv1a: format!("{hash:016x}"),
            bytes: size,
            runner: std::env::var("FLAME_RUNNER_ID").unwrap_or_else(|_| "local".into()),
        })
    })
}

const HELP: &str = "\
The ECS example runs on AWS ECS (its runners are tasks of its own task definition). Run there,
it reads cluster, task definition, container, launch type and subnets from the task metadata
endpoint. Elsewhere, set at least:

    FLAME_ECS_CLUSTER=jobs
    FLAME_ECS_TASK_DEFINITION=flame-ecs-example
    FLAME_ECS_SUBNETS=subnet-0abc
    FLAME_ECS_SECURITY_GROUPS=sg-0flame      (must allow TCP 8080 from the parent)
    FLAME_ECS_LAUNCH_TYPE=FARGATE

plus AWS credentials and region the standard way (AWS_PROFILE, AWS_REGION, ...).
FLAME_ECS_SECRET_FROM_TASK_DEFINITION=true keeps FLAME_SECRET out of RunTask overrides (the
production setup; see the README). Set FLAME_MODE=local to run the handlers in this process.";

async fn backend() -> Result<EcsBackend, Error> {
    EcsBackendBuilder::from_env()?.build().await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let builder = flame::builder(registry())
        .default_mode(Mode::Parent)
        .app("flame-ecs-example")
        .from_env()?;
    let builder = if builder.current_config().mode == Mode::Parent {
        // Only the parent talks to the ECS API: runners need no ECS permissions.
        let backend = match backend().await {
            Ok(backend) => backend,
            Err(e) => {
                eprintln!("{e}\n\n{HELP}");
                std::process::exit(2);
            }
        };
        builder.backend(backend).pool(
            "default",
            PoolConfig::default()
                .max(3)
                .max_concurrency(4)
                // Fargate pulls the image and attaches an ENI: allow for it.
                .boot_timeout(Duration::from_secs(180))
                .idle_shutdown_after(Duration::from_secs(60)),
        )
    } else {
        builder
    };
    // Runner mode serves the registry here until the parent is done with it, then exits.
    let flame = builder.start().await?;

    let started = Instant::now();
    let calls: Vec<_> = (1..=8u64)
        .map(|id| {
            let flame = flame.clone();
            tokio::spawn(async move { (id, flame.call(DIGEST, (id, 4 * 1024 * 1024)).await) })
        })
        .collect();
    for call in calls {
        match call.await {
            Ok((id, Ok(d))) => println!(
                "upload {id}: fnv1a {} over {} bytes, by runner {}",
                d.fnv1a, d.bytes, d.runner
            ),
            Ok((id, Err(e))) => println!("upload {id}: failed: {e}"),
            Err(e) => println!("a call task failed: {e}"),
        }
    }
    println!("8 uploads in {:?}", started.elapsed());
    flame.shutdown().await
}
