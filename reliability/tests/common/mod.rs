// Shared by the scenario tests (included with `mod common;`): starting `rel_runner`
// processes by hand or through an elastic pool, and direct calls to one runner.
#![allow(dead_code, clippy::unwrap_used)]

use flame_core::{
    codec, Endpoint, Flame, Invocation, LocalProcess, Method, Mode, PoolConfig, PoolEvent, Registry, Secret,
    Transport,
};
use flame_http::HttpTransport;
use flame_reliability::procfs::{start_and_wait_for_line, ChildGuard, TempDir};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET: &str = "rel-secret-0123456789";

pub fn rel_runner() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rel_runner"))
}

/// A `rel_runner` started by hand in runner mode on 127.0.0.1.
pub struct HandRunner {
    pub guard: ChildGuard,
    pub url: String,
    /// `127.0.0.1:port`
    pub addr: String,
    pub endpoint: Endpoint,
    pub transport: HttpTransport,
}

impl HandRunner {
    pub fn start(extra: &[(&str, &str)]) -> HandRunner {
        let mut env = vec![
            ("FLAME_MODE", "runner"),
            ("FLAME_SECRET", SECRET),
            ("FLAME_LISTEN", "127.0.0.1:0"),
            ("RUST_LOG", "off"),
        ];
        env.extend_from_slice(extra);
        let (guard, url) =
            start_and_wait_for_line(rel_runner(), &env, "FLAME_READY ", Duration::from_secs(30)).unwrap();
        let addr = url.trim_start_matches("http://").to_owned();
        let endpoint = Endpoint::new(url.clone(), "hand").with_secret(Some(Secret::new(SECRET)));
        HandRunner {
            guard,
            url,
            addr,
            endpoint,
            transport: HttpTransport::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub async fn call<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
        &self,
        method: Method<Req, Resp>,
        req: Req,
    ) -> flame_core::Result<Resp> {
        call_endpoint(&self.transport, &self.endpoint, method, req).await
    }
}

/// One signed call to one runner, 10 s deadline.
pub async fn call_endpoint<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
    transport: &dyn Transport,
    endpoint: &Endpoint,
    method: Method<Req, Resp>,
    req: Req,
) -> flame_core::Result<Resp> {
    let invocation = Invocation {
        service_id: method.service_id().to_owned(),
        method_id: method.method_id().to_owned(),
        args: codec::encode_args(&req)?.into(),
        deadline: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
        idempotency_key: None,
        trace: BTreeMap::new(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = transport.invoke(endpoint, &invocation).await?;
    text.decode().await
}

/// A parent whose default pool starts `rel_runner` processes through LocalProcess.
pub struct Parent {
    pub flame: Flame,
    pub state: TempDir,
    pub logs: TempDir,
    pub app: String,
    /// Pool events, as `name:runner_id`.
    pub events: Arc<Mutex<Vec<String>>>,
}

impl Parent {
    pub fn parent_id(&self) -> &str {
        self.flame.parent_id()
    }

    /// Live runner processes of this parent.
    pub fn runner_pids(&self) -> Vec<u32> {
        flame_reliability::procfs::pids_with_env("FLAME_PARENT_ID", self.flame.parent_id())
    }

    pub fn stats(&self) -> flame_core::PoolStats {
        self.flame.pool("default").unwrap().stats()
    }

    pub fn events_named(&self, name: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with(name))
            .count()
    }
}

pub async fn parent(pool: PoolConfig, runner_env: &[(&str, &str)]) -> Parent {
    let state = TempDir::new("rel-state").unwrap();
    let logs = TempDir::new("rel-logs").unwrap();
    let app = format!("rel-{}", uuid::Uuid::new_v4().simple());
    let backend = LocalProcess::command(rel_runner(), Vec::<String>::new())
        .state_dir(state.path())
        .grace(Duration::from_secs(10));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut builder = Flame::builder(Registry::new())
        .on_pool_event(move |e| {
            let id = match e {
                PoolEvent::GrowStart { runner_id, .. }
                | PoolEvent::GrowEnd { runner_id, .. }
                | PoolEvent::Shrink { runner_id, .. }
                | PoolEvent::RunnerDown { runner_id, .. } => runner_id.clone(),
                _ => String::new(),
            };
            sink.lock().unwrap().push(format!("{}:{id}", e.name()));
        })
        .app(app.clone())
        .transport(Arc::new(HttpTransport::new()))
        .mode(Mode::Parent)
        .backend(backend)
        .pool("default", pool)
        .handle_signals(false)
        .runner_env("REL_LOG_DIR", logs.path().to_string_lossy())
        .runner_env("RUST_LOG", "off");
    for (k, v) in runner_env {
        builder = builder.runner_env(*k, *v);
    }
    let flame = builder.start().await.unwrap();
    Parent {
        flame,
        state,
        logs,
        app,
        events,
    }
}
