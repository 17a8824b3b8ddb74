//! # The backend conformance suite (DESIGN.md §6)
//!
//! **Every [`Backend`] runs these checks from its own tests** (LocalProcess, Docker, ECS, Fly):
//! build a [`Subject`] — your backend, a transport that reaches the runners it starts, a
//! factory of spawn requests for a runner that serves `math`/`add` (the `interop` example does),
//! and a way to count what is left behind — then call [`run_all`] (or each check on its own).
//! Every start goes through core's one readiness probe, [`start_runner`], as a pool's do.
//! The checks panic with a message that says what broke, like assertions.
//!
//! | check | what must hold |
//! |---|---|
//! | [`spawn_ping_invoke_terminate`] | a start returns a pingable endpoint with the request's secret; `math`/`add(2, 3)` is 5; after terminate the runner is `Stopped` and unreachable |
//! | [`boot_timeout_leaves_nothing`] | a runner that never passes its health check fails its start with `SPAWN_TIMEOUT` within about `boot_timeout`, and nothing is left |
//! | [`terminate_is_idempotent`] | terminating twice, or a runner that is already gone, is `Ok` |
//! | [`reap_spares_a_live_parents_runner`] | `reap` by another parent of the app never ends a runner whose parent is in touch: it still serves afterwards |
//! | [`reap_ends_leftovers`] | `reap` ends a runner whose parent has been silent past the failsafe window, and keeps the reaping parent's own |
//! | [`engine_errors_are_typed`] | a backend whose engine refuses fails with a typed error (`BACKEND`, `SPAWN_TIMEOUT` or `CONFIG`), never a panic, without leaking the secret |
//!
//! ```no_run
//! # async fn demo(my_backend: std::sync::Arc<dyn flame_core::Backend>, transport: std::sync::Arc<dyn flame_core::Transport>) {
//! use flame_core::testkit::conformance::{self, Subject};
//! let subject = Subject::new(my_backend, transport, |parent_id: &str| {
//!     // A request for a runner of app "conformance" that serves math/add.
//!     conformance::default_request("conformance", parent_id)
//! })
//! .leftovers(|req| {
//!     let runner_id = req.runner_id.clone();
//!     Box::pin(async move { /* count engine objects labelled flame.runner = runner_id */ 0 })
//! });
//! conformance::run_all(&subject).await;
//! # }
//! ```

use crate::backend::readiness::start_runner;
use crate::backend::{Backend, ReapScope, RunnerHandle, RunnerState, SpawnRequest};
use crate::config::Secret;
use crate::error::{Error, ErrorCode, Result};
use crate::pool::RunnerTemplate;
use crate::transport::{Endpoint, Invocation, RunnerStatus, Transport};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Makes a spawn request for parent `parent_id`.
pub type RequestFactory = Arc<dyn Fn(&str) -> SpawnRequest + Send + Sync>;

/// Counts what the engine still holds for a request's runner (processes, containers, tasks,
/// machines): 0 means nothing was left.
pub type LeftoverCheck = Arc<dyn Fn(&SpawnRequest) -> BoxFuture<'static, usize> + Send + Sync>;

/// What the suite tests: a backend, how to reach its runners, how to ask it for one.
#[derive(Clone)]
pub struct Subject {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// Reaches the runners the backend starts (e.g. `flame_http::HttpTransport`).
    pub transport: Arc<dyn Transport>,
    /// Makes spawn requests (see [`default_request`]).
    pub request: RequestFactory,
    /// Counts leftovers of a request; default: trusts [`Backend::status`] (never 0 is checked).
    pub leftovers: Option<LeftoverCheck>,
    /// The boot timeout used for normal spawns (default 30 s).
    pub boot_timeout: Duration,
}

impl Subject {
    /// A subject over `backend`, `transport` and a request factory.
    pub fn new(
        backend: Arc<dyn Backend>,
        transport: Arc<dyn Transport>,
        request: impl Fn(&str) -> SpawnRequest + Send + Sync + 'static,
    ) -> Self {
        Subject {
            backend,
            transport,
            request: Arc::new(request),
            leftovers: None,
            boot_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the leftover counter (strongly advised: it is what proves "leaves nothing").
    pub fn leftovers(
        mut self,
        check: impl Fn(&SpawnRequest) -> BoxFuture<'static, usize> + Send + Sync + 'static,
    ) -> Self {
        self.leftovers = Some(Arc::new(check));
        self
    }

    /// Sets the boot timeout of normal spawns.
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    fn request(&self, parent_id: &str) -> SpawnRequest {
        let mut req = (self.request)(parent_id);
        req.boot_timeout = self.boot_timeout;
        req
    }

    async fn leftover_count(&self, req: &SpawnRequest) -> Option<usize> {
        match &self.leftovers {
            Some(check) => Some(check(req).await),
            None => None,
        }
    }

    async fn spawn(&self, req: SpawnRequest) -> RunnerHandle {
        let id = req.runner_id.clone();
        match start_runner(&*self.backend, req, &*self.transport).await {
            Ok(h) => h,
            Err(e) => panic!("[{}] spawn of {id} failed: {e}", self.backend.name()),
        }
    }
}

/// A request as an [`ElasticPool`](crate::pool::ElasticPool) makes it: app `app`, pool
/// `conformance`, parent `parent_id`, a fresh secret, the `FLAME_*` environment, 60 s parent
/// timeout.
pub fn default_request(app: &str, parent_id: &str) -> SpawnRequest {
    RunnerTemplate::new(app, parent_id, Secret::generate(), Arc::new(NeverHealthy))
        .parent_timeout(Duration::from_secs(60))
        .request("conformance", Duration::from_secs(30))
}

/// Runs every check but [`engine_errors_are_typed`] (which needs a broken backend).
pub async fn run_all(subject: &Subject) {
    spawn_ping_invoke_terminate(subject).await;
    terminate_is_idempotent(subject).await;
    boot_timeout_leaves_nothing(subject).await;
    reap_spares_a_live_parents_runner(subject).await;
    reap_ends_leftovers(subject).await;
}

/// The failsafe window the reap checks judge with: short, so an orphan is found quickly.
const REAP_WINDOW: Duration = Duration::from_secs(2);

fn reap_scope(subject: &Subject, app: &str, live_parent: &str) -> ReapScope {
    ReapScope::new(app, live_parent, subject.transport.clone())
        .windows(REAP_WINDOW, REAP_WINDOW + Duration::from_secs(20))
}

/// Keeps a runner's parent "in touch": authenticated pings every 200 ms, as a live parent's
/// pool does (more often than needed), until dropped.
struct KeepInTouch(tokio::task::JoinHandle<()>);

impl KeepInTouch {
    fn start(transport: Arc<dyn Transport>, endpoint: Endpoint) -> Self {
        KeepInTouch(tokio::spawn(async move {
            loop {
                let _ = transport.ping(&endpoint).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for KeepInTouch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Parent B reaping never ends parent A's runner while A is in touch with it (replicas, a
/// rolling deploy): after B's reap, A's runner still serves.
pub async fn reap_spares_a_live_parents_runner(subject: &Subject) {
    let name = subject.backend.name().to_owned();
    let parent_a = format!("live-a-{}", uuid::Uuid::new_v4().simple());
    let parent_b = format!("live-b-{}", uuid::Uuid::new_v4().simple());
    let req = subject.request(&parent_a);
    let runner = subject.spawn(req.clone()).await;
    let touch = KeepInTouch::start(subject.transport.clone(), runner.endpoint.clone());
    // Longer than the window: were A's pings not counted, B would find the runner orphaned.
    tokio::time::sleep(REAP_WINDOW + Duration::from_millis(500)).await;
    let ended = subject
        .backend
        .reap(&reap_scope(subject, &req.app, &parent_b))
        .await
        .unwrap_or_else(|e| panic!("[{name}] reap failed: {e}"));
    let sum = subject
        .transport
        .invoke(&runner.endpoint, &add_invocation())
        .await;
    drop(touch);
    assert!(
        matches!(sum.as_ref().map(|r| r.json_text()), Ok(Some(r#"{"json":5}"#))),
        "[{name}] reap by parent B ({ended} ended) broke live parent A's runner: {sum:?}"
    );
    assert_eq!(
        subject.backend.status(&runner).await.ok(),
        Some(RunnerState::Running),
        "[{name}] the live parent's runner still runs after another parent's reap"
    );
    if let Err(e) = subject.backend.terminate(&runner).await {
        panic!("[{name}] terminate failed: {e}");
    }
    assert_nothing_left(subject, &req, Duration::from_secs(30), "after terminate").await;
}

fn add_invocation() -> Invocation {
    Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: r#"{"json":[2,3]}"#.into(),
        deadline: Some(Instant::now() + Duration::from_secs(30)),
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    }
}

async fn eventually_stopped(subject: &Subject, handle: &RunnerHandle, within: Duration) -> RunnerState {
    let until = Instant::now() + within;
    loop {
        let state = subject.backend.status(handle).await;
        match state {
            Ok(RunnerState::Stopped) => return RunnerState::Stopped,
            Ok(s) if Instant::now() >= until => return s,
            Err(e) if Instant::now() >= until => {
                panic!("[{}] status failed: {e}", subject.backend.name())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn assert_nothing_left(subject: &Subject, req: &SpawnRequest, within: Duration, what: &str) {
    let until = Instant::now() + within;
    loop {
        match subject.leftover_count(req).await {
            None | Some(0) => return,
            Some(n) if Instant::now() >= until => panic!(
                "[{}] {what}: {n} engine object(s) of runner {} left behind",
                subject.backend.name(),
                req.runner_id
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// spawn → ping → invoke `math`/`add(2, 3)` → terminate → `Stopped`, unreachable, nothing left.
pub async fn spawn_ping_invoke_terminate(subject: &Subject) {
    let name = subject.backend.name().to_owned();
    let req = subject.request("conformance-parent");
    let secret = req.secret.clone();
    let handle = subject.spawn(req.clone()).await;
    assert_eq!(
        handle.runner_id, req.runner_id,
        "[{name}] handle keeps the runner id"
    );
    assert!(
        !handle.backend_id.is_empty(),
        "[{name}] handle has the engine's id"
    );
    assert_eq!(
        handle.endpoint.secret, secret,
        "[{name}] the endpoint carries the request's secret"
    );
    let status = subject
        .transport
        .ping(&handle.endpoint)
        .await
        .unwrap_or_else(|e| panic!("[{name}] ping after spawn failed: {e}"));
    assert!(status.ok, "[{name}] runner says it is not ok");
    let sum = subject
        .transport
        .invoke(&handle.endpoint, &add_invocation())
        .await
        .unwrap_or_else(|e| panic!("[{name}] math/add failed: {e}"));
    assert_eq!(sum.json_text(), Some(r#"{"json":5}"#), "[{name}] math/add(2, 3)");
    assert_eq!(
        subject.backend.status(&handle).await.ok(),
        Some(RunnerState::Running),
        "[{name}] a serving runner is Running"
    );
    subject
        .backend
        .terminate(&handle)
        .await
        .unwrap_or_else(|e| panic!("[{name}] terminate failed: {e}"));
    assert_eq!(
        eventually_stopped(subject, &handle, Duration::from_secs(30)).await,
        RunnerState::Stopped,
        "[{name}] after terminate the runner is Stopped"
    );
    assert!(
        subject.transport.ping(&handle.endpoint).await.is_err(),
        "[{name}] a terminated runner still answers"
    );
    assert_nothing_left(subject, &req, Duration::from_secs(30), "after terminate").await;
}

/// Terminating twice (and a runner that is already gone) is `Ok`.
pub async fn terminate_is_idempotent(subject: &Subject) {
    let name = subject.backend.name().to_owned();
    let req = subject.request("conformance-parent");
    let handle = subject.spawn(req.clone()).await;
    for round in 1..=2 {
        if let Err(e) = subject.backend.terminate(&handle).await {
            panic!("[{name}] terminate #{round} failed: {e}");
        }
    }
    let mut gone = handle.clone();
    gone.backend_id = format!("{}-never-existed", handle.backend_id);
    gone.runner_id = format!("{}-never-existed", handle.runner_id);
    if let Err(e) = subject.backend.terminate(&gone).await {
        panic!("[{name}] terminating an unknown runner failed: {e}");
    }
    assert_eq!(
        eventually_stopped(subject, &handle, Duration::from_secs(30)).await,
        RunnerState::Stopped
    );
    assert_nothing_left(subject, &req, Duration::from_secs(30), "after terminate twice").await;
}

/// A prober that never reports healthy.
struct NeverHealthy;

#[async_trait]
impl Transport for NeverHealthy {
    async fn invoke(&self, _e: &Endpoint, _i: &Invocation) -> Result<crate::transport::Reply> {
        Err(Error::not_delivered("never healthy"))
    }
    async fn ping(&self, _e: &Endpoint) -> Result<RunnerStatus> {
        Err(Error::not_delivered("never healthy (conformance suite)"))
    }
}

/// A runner that never passes its health check: spawn fails with `SPAWN_TIMEOUT` within about
/// its boot timeout (a short one: 3 s) and leaves nothing.
pub async fn boot_timeout_leaves_nothing(subject: &Subject) {
    let name = subject.backend.name().to_owned();
    let mut req = subject.request("conformance-parent");
    let boot = Duration::from_secs(3);
    req.boot_timeout = boot;
    let started = Instant::now();
    let result = tokio::time::timeout(
        boot * 4 + Duration::from_secs(10),
        start_runner(&*subject.backend, req.clone(), &NeverHealthy),
    )
    .await;
    let err = match result {
        Err(_) => panic!("[{name}] spawn ignored its boot timeout of {boot:?}"),
        Ok(Ok(h)) => {
            let _ = subject.backend.terminate(&h).await;
            panic!("[{name}] spawn succeeded although the runner never passed a health check")
        }
        Ok(Err(e)) => e,
    };
    assert_eq!(err.code(), ErrorCode::SpawnTimeout, "[{name}] {err}");
    assert!(err.is_retryable(), "[{name}] SPAWN_TIMEOUT is retryable");
    assert!(
        started.elapsed() < boot * 3 + Duration::from_secs(5),
        "[{name}] spawn took {:?} with a boot timeout of {boot:?}",
        started.elapsed()
    );
    if let Some(secret) = &req.secret {
        assert!(
            !err.to_string().contains(secret.expose()),
            "[{name}] the secret leaked into an error"
        );
    }
    assert_nothing_left(subject, &req, Duration::from_secs(30), "after a boot timeout").await;
}

/// `reap` ends a runner whose parent has gone silent past the failsafe window (a crashed
/// parent; its runner's own failsafe has a longer window here, so it is still there to be
/// found) and keeps the reaping parent's own runner.
pub async fn reap_ends_leftovers(subject: &Subject) {
    let name = subject.backend.name().to_owned();
    let crashed = format!("crashed-{}", uuid::Uuid::new_v4().simple());
    let live = format!("live-{}", uuid::Uuid::new_v4().simple());
    let old_req = subject.request(&crashed);
    let live_req = subject.request(&live);
    let old = subject.spawn(old_req.clone()).await;
    let kept = subject.spawn(live_req.clone()).await;
    // The crashed parent says nothing more; let its silence pass the window.
    tokio::time::sleep(REAP_WINDOW + Duration::from_millis(500)).await;
    let ended = subject
        .backend
        .reap(&reap_scope(subject, &old_req.app, &live))
        .await
        .unwrap_or_else(|e| panic!("[{name}] reap failed: {e}"));
    assert!(
        ended >= 1,
        "[{name}] reap ended {ended} runners, expected the crashed parent's"
    );
    assert_eq!(
        eventually_stopped(subject, &old, Duration::from_secs(30)).await,
        RunnerState::Stopped,
        "[{name}] the crashed parent's runner is stopped after reap"
    );
    assert!(
        subject.transport.ping(&kept.endpoint).await.is_ok(),
        "[{name}] reap ended the live parent's runner"
    );
    assert_nothing_left(subject, &old_req, Duration::from_secs(30), "after reap").await;
    let _ = subject.backend.terminate(&old).await;
    if let Err(e) = subject.backend.terminate(&kept).await {
        panic!("[{name}] terminate failed: {e}");
    }
    assert_nothing_left(subject, &live_req, Duration::from_secs(30), "after terminate").await;
}

/// `failing` is the backend under test pointed at an engine that refuses (wrong endpoint,
/// missing image, bad credentials…): a start must fail with a typed error — `BACKEND`,
/// `SPAWN_TIMEOUT` or `CONFIG` — that names the problem and does not leak the secret.
pub async fn engine_errors_are_typed(failing: &dyn Backend, request: SpawnRequest, prober: &dyn Transport) {
    let name = failing.name().to_owned();
    let secret = request.secret.clone();
    let boot = request.boot_timeout;
    let outcome = tokio::time::timeout(
        boot * 2 + Duration::from_secs(30),
        start_runner(failing, request, prober),
    )
    .await;
    let err = match outcome {
        Err(_) => panic!("[{name}] spawn against a refusing engine hung"),
        Ok(Ok(h)) => {
            let _ = failing.terminate(&h).await;
            panic!("[{name}] spawn against a refusing engine succeeded")
        }
        Ok(Err(e)) => e,
    };
    assert!(
        matches!(
            err.code(),
            ErrorCode::Backend | ErrorCode::SpawnTimeout | ErrorCode::Config
        ),
        "[{name}] engine error has code {}: {err}",
        err.code()
    );
    assert!(!err.message().trim().is_empty(), "[{name}] empty error message");
    if let Some(secret) = secret {
        assert!(
            !format!("{err} {err:?}").contains(secret.expose()),
            "[{name}] the secret leaked into an error"
        );
    }
}
