// A fake backend over the in-memory transport, shared by the pool tests (included with `mod`).
#![allow(dead_code)]
use async_trait::async_trait;
use flame_core::pool::{ElasticPool, PoolEvent, RunnerTemplate};
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    Backend, Dispatcher, Endpoint, Error, ErrorCode, PoolConfig, ReapScope, Registry, RunnerHandle,
    RunnerState, RunnerStatus, Secret, SpawnRequest, Transport,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Spawns in-memory runners (a dispatcher at `mem://<runner id>`), after `boot_delay`.
pub struct Fake {
    pub transport: InMemoryTransport,
    pub registry: Arc<Registry>,
    pub boot_delay: Mutex<Duration>,
    pub fail_next: AtomicUsize,
    pub hang: AtomicBool,
    pub spawned: AtomicUsize,
    pub terminated: AtomicUsize,
    pub alive: Mutex<HashSet<String>>,
    pub max_alive: AtomicUsize,
    pub requests: Mutex<Vec<SpawnRequest>>,
}

impl Fake {
    pub fn new(registry: Registry) -> Arc<Fake> {
        Arc::new(Fake {
            transport: InMemoryTransport::new(),
            registry: Arc::new(registry),
            boot_delay: Mutex::new(Duration::from_millis(100)),
            fail_next: AtomicUsize::new(0),
            hang: AtomicBool::new(false),
            spawned: AtomicUsize::new(0),
            terminated: AtomicUsize::new(0),
            alive: Mutex::new(HashSet::new()),
            max_alive: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        })
    }

    pub fn alive(&self) -> usize {
        self.alive.lock().unwrap().len()
    }

    /// Simulates a crash: the runner stops answering and the engine reports it stopped.
    pub fn kill(&self, runner_id: &str) {
        self.transport.remove(&format!("mem://{runner_id}"));
        self.alive.lock().unwrap().remove(runner_id);
    }
}

#[async_trait]
impl Backend for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    async fn spawn(&self, request: SpawnRequest) -> flame_core::Result<RunnerHandle> {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(request.clone());
        let delay = *self.boot_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::backend("the engine refused to start it", false));
        }
        if self.hang.load(Ordering::SeqCst) {
            // Never healthy: honour the boot timeout and leave nothing.
            tokio::time::sleep(request.boot_timeout).await;
            return Err(Error::new(ErrorCode::SpawnTimeout, "never became healthy"));
        }
        let url = format!("mem://{}", request.runner_id);
        self.transport.add_shared(
            &url,
            Arc::new(Dispatcher::from_shared(
                self.registry.clone(),
                request.runner_id.clone(),
            )),
        );
        let n = {
            let mut alive = self.alive.lock().unwrap();
            alive.insert(request.runner_id.clone());
            alive.len()
        };
        self.max_alive.fetch_max(n, Ordering::SeqCst);
        Ok(RunnerHandle {
            endpoint: Endpoint::new(url, request.runner_id.clone()).with_secret(request.secret.clone()),
            runner_id: request.runner_id,
            backend_id: format!("fake-{}", self.spawned.load(Ordering::SeqCst)),
        })
    }

    async fn terminate(&self, handle: &RunnerHandle) -> flame_core::Result<()> {
        self.transport.remove(&handle.endpoint.url);
        if self.alive.lock().unwrap().remove(&handle.runner_id) {
            self.terminated.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn status(&self, handle: &RunnerHandle) -> flame_core::Result<RunnerState> {
        Ok(if self.alive.lock().unwrap().contains(&handle.runner_id) {
            RunnerState::Running
        } else {
            RunnerState::Stopped
        })
    }

    async fn reap(&self, _scope: &ReapScope) -> flame_core::Result<usize> {
        Ok(0)
    }
}

/// Counts pings on the way to the in-memory transport.
pub struct CountingTransport {
    pub inner: InMemoryTransport,
    pub pings: AtomicUsize,
}

#[async_trait]
impl Transport for CountingTransport {
    async fn invoke(
        &self,
        endpoint: &Endpoint,
        invocation: &flame_core::Invocation,
    ) -> flame_core::Result<flame_core::Reply> {
        self.inner.invoke(endpoint, invocation).await
    }
    async fn ping(&self, endpoint: &Endpoint) -> flame_core::Result<RunnerStatus> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.inner.ping(endpoint).await
    }
}

pub type Events = Arc<Mutex<Vec<PoolEvent>>>;

pub fn pool_with(
    fake: &Arc<Fake>,
    transport: Arc<dyn Transport>,
    config: PoolConfig,
) -> (ElasticPool, Events) {
    let events: Events = Arc::default();
    let ev = events.clone();
    let template = RunnerTemplate::new("test-app", "parent-1", Secret::generate(), transport);
    let pool = ElasticPool::builder("default", fake.clone(), template)
        .config(config)
        .on_event(move |e| ev.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    (pool, events)
}

pub fn pool(fake: &Arc<Fake>, config: PoolConfig) -> (ElasticPool, Events) {
    pool_with(fake, Arc::new(fake.transport.clone()), config)
}

pub fn names(events: &Events) -> Vec<&'static str> {
    events.lock().unwrap().iter().map(|e| e.name()).collect()
}

/// Lets spawned tasks run (paused clock: also lets timers fire that are due).
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
