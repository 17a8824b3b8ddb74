//! Shutting a pool down: drain leases, end every runner, wait for starts in progress.

use super::events::PoolEvent;
use super::state::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl Shared {
    pub(super) async fn shutdown(self: &Arc<Self>, grace: Duration) {
        let waiters = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.waiters)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(self.shut_down_error()));
        }
        // Drain: wait for leases out, up to the grace time.
        let until = Instant::now() + grace.min(self.config.shutdown_timeout);
        loop {
            let changed = self.changed.notified();
            if self.lock().in_flight == 0 {
                break;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                break;
            }
        }
        let runners: Vec<Runner> = {
            let mut st = self.lock();
            st.free.clear();
            st.runners.drain().map(|(_, r)| r).collect()
        };
        self.closed.cancel();
        let ends = runners.into_iter().map(|r| {
            r.lost.cancel();
            self.emit(PoolEvent::Shrink {
                pool: self.name.clone(),
                runner_id: r.handle.runner_id.clone(),
                reason: "shutdown",
            });
            let shared = self.clone();
            async move { shared.end_runner(r.handle, "shutdown").await }
        });
        futures::future::join_all(ends).await;
        // Starts in progress end their runner themselves once they see the pool closed; wait
        // for them (bounded by the boot timeout) so nothing is left behind.
        let until = Instant::now() + self.config.boot_timeout + BOOT_SLACK;
        loop {
            let changed = self.changed.notified();
            if self.lock().booting == 0 && self.terminating.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                tracing::warn!(target: "flame::pool", pool = %self.name, "runner starts still in progress after shutdown");
                break;
            }
        }
    }
}
