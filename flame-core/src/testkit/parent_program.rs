//! [`serve_parent`]: the parent side of [`ParentProcess`](super::parent_process)'s line
//! protocol, for the test parent programs (the Docker and ECS backends' examples): waits for the
//! pools' runners, prints `PARENT` and `READY`, keeps calls in flight, and answers `reap` /
//! `exit` on stdin.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flame::Flame;
use crate::method::Method;
use std::sync::Arc;
use std::time::Duration;

/// Callers that keep calls in flight while the parent runs: `callers` loops, each calling
/// `method(ms)` again as soon as the last call ended (200 ms after a failure).
#[derive(Debug, Clone, Copy)]
pub struct Callers {
    /// The method called, e.g. a `sleep(ms)`.
    pub method: Method<u64, u64>,
    /// Its argument.
    pub ms: u64,
    /// How many loops.
    pub callers: usize,
}

/// Runs the protocol for `flame` until `exit` or the end of stdin, then shuts `flame` down:
/// prints `PARENT <id>`, waits (up to 120 s) until each of `pools` has its number of runners,
/// prints `READY`, starts `callers`, and on `reap` asks every backend of `reapers` to reap
/// (`REAPED <ended in all> <start-ms> <end-ms>`, or `REAP_ERR <error>`).
pub async fn serve_parent(
    flame: Flame,
    pools: &[(&str, usize)],
    callers: Option<Callers>,
    reapers: Vec<Arc<dyn Backend>>,
) -> Result<()> {
    println!("PARENT {}", flame.parent_id());
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    for &(name, want) in pools.iter().filter(|(_, n)| *n > 0) {
        let pool = flame
            .pool(name)
            .cloned()
            .ok_or_else(|| Error::config(format!("no pool `{name}`")))?;
        while pool.stats().runners < want {
            if tokio::time::Instant::now() > until {
                return Err(Error::config(format!(
                    "only {} of {want} runners of pool `{name}` came up within 120 s",
                    pool.stats().runners
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("READY");
    if let Some(c) = callers.filter(|c| c.ms > 0) {
        for caller in 0..c.callers {
            let flame = flame.clone();
            tokio::spawn(async move {
                for n in 1u64.. {
                    println!("CALL_START {caller} {n} {}", unix_ms());
                    match flame.call(c.method, c.ms).await {
                        Ok(_) => println!("CALL_OK {caller} {n} {}", unix_ms()),
                        Err(e) => {
                            println!("CALL_ERR {caller} {n} {} {}", unix_ms(), one_line(&e));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        }
    }
    // Stdin on a thread of its own (blocking reads); its end closes the channel.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        match line.trim() {
            "reap" => {
                let Some(scope) = flame.reap_scope() else {
                    println!("REAP_ERR no reap scope");
                    continue;
                };
                let start = unix_ms();
                let reaps = reapers.iter().map(|b| b.reap(&scope));
                match futures::future::try_join_all(reaps).await {
                    Ok(ended) => println!("REAPED {} {start} {}", ended.iter().sum::<usize>(), unix_ms()),
                    Err(e) => println!("REAP_ERR {}", one_line(&e)),
                }
            }
            "exit" => break,
            _ => {}
        }
    }
    let shut = flame.shutdown().await;
    if let Err(e) = &shut {
        println!("SHUTDOWN_ERR {}", one_line(e));
    }
    shut
}

fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
