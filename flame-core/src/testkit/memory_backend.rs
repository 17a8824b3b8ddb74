//! [`MemoryBackend`]: runners as in-process dispatchers on an [`InMemoryTransport`], for
//! benchmarks and tests of what sits above a backend (pools, the call lifecycle, `map`).

use super::InMemoryTransport;
use crate::backend::{Backend, ReapScope, RunnerHandle, RunnerState, SpawnRequest};
use crate::error::Result;
use crate::registry::Registry;
use crate::runner::Dispatcher;
use crate::transport::Endpoint;
use async_trait::async_trait;
use std::sync::Arc;

/// Starts each runner as a [`Dispatcher`] over `registry` at `mem://<runner id>` on its
/// transport (at once, no process); ends it by removing it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flame_core::pool::{ElasticPool, RunnerTemplate};
/// use flame_core::testkit::MemoryBackend;
/// use flame_core::{CheckoutOptions, Pool, PoolConfig, Registry, Secret};
/// use std::sync::Arc;
/// let backend = MemoryBackend::new(Registry::new());
/// let template = RunnerTemplate::new("app", "parent-1", Secret::generate(), Arc::new(backend.transport().clone()));
/// let pool = ElasticPool::builder("default", Arc::new(backend), template)
///     .config(PoolConfig::default().max(2))
///     .build()?;
/// let lease = pool.checkout(&CheckoutOptions::default()).await?;
/// assert!(lease.endpoint().url.starts_with("mem://"));
/// # Ok::<(), flame_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    transport: InMemoryTransport,
    registry: Arc<Registry>,
}

impl MemoryBackend {
    /// Runners serving `registry`, reached through a fresh [`InMemoryTransport`].
    pub fn new(registry: Registry) -> Self {
        MemoryBackend {
            transport: InMemoryTransport::new(),
            registry: Arc::new(registry),
        }
    }

    /// The transport that reaches this backend's runners.
    pub fn transport(&self) -> &InMemoryTransport {
        &self.transport
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<RunnerHandle> {
        let url = format!("mem://{}", request.runner_id);
        self.transport.add_shared(
            &url,
            Arc::new(Dispatcher::from_shared(
                self.registry.clone(),
                request.runner_id.clone(),
            )),
        );
        Ok(RunnerHandle {
            endpoint: Endpoint::new(url, request.runner_id.clone()).with_secret(request.secret),
            runner_id: request.runner_id,
            backend_id: "memory".into(),
        })
    }

    async fn terminate(&self, handle: &RunnerHandle) -> Result<()> {
        self.transport.remove(&handle.endpoint.url);
        Ok(())
    }

    async fn status(&self, handle: &RunnerHandle) -> Result<RunnerState> {
        Ok(if self.transport.serves(&handle.endpoint.url) {
            RunnerState::Running
        } else {
            RunnerState::Stopped
        })
    }

    async fn reap(&self, _scope: &ReapScope) -> Result<usize> {
        Ok(0)
    }
}
