//! The runner side: the [`Dispatcher`] that takes an authenticated envelope through the one
//! runner pipeline every transport shares (window, replay, idempotency: see [`Dispatcher::handle`]
//! and [`Dispatcher::handle_binary`]),
//! runs its handler with its deadline and encodes the reply; and the [`RunnerServer`] trait a
//! transport implements to serve it.

mod dispatch;
pub mod failsafe;
pub mod idempotency;
mod pipeline;
pub mod replay;

pub use dispatch::{DispatchReply, Dispatcher, ReplyKind};
pub use pipeline::{window_ok, RunnerLimits};

use crate::config::Config;
use crate::error::Result;
use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves a [`Dispatcher`] to parents (e.g. `flame-http`'s hyper server). `serve` returns
/// once `shutdown` fires (or the server stops on its own, e.g. on SIGTERM or when the parent
/// is gone) and the calls in flight have drained.
#[async_trait]
pub trait RunnerServer: Send + Sync + 'static {
    /// Serves until shut down.
    async fn serve(
        &self,
        dispatcher: Arc<Dispatcher>,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<()>;
}
