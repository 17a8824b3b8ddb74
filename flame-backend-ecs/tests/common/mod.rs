//! Shared helpers of the ECS backend tests: moto_server access, in-process runners the
//! address resolver maps tasks to, spawn requests, and wiremock replies shaped like ECS.
#![allow(dead_code, clippy::unwrap_used)]

use flame_backend_ecs::aws::Credentials;
use flame_backend_ecs::{EcsBackendBuilder, PollSettings, RetrySettings};
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    codec, Context, Dispatcher, Endpoint, Invocation, Method, Registry, RunnerAddress, Secret, SpawnRequest,
    Transport,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");
pub const REGION: &str = "us-east-1";
pub const ECS_TARGET: &str = "AmazonEC2ContainerServiceV20141113";

/// Where moto_server answers.
pub fn moto_url() -> String {
    std::env::var("FLAME_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

/// Whether moto_server answers; gate for engine tests.
pub async fn moto_available() -> bool {
    let url = moto_url();
    let probe = http()
        .get(format!("{url}/moto-api/config"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| format!("no moto_server at {url}: {e}"))
        .and_then(|r| {
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("{url} answered {}", r.status()))
            }
        });
    flame_core::testkit::engine_available("moto", probe)
}

/// Sets moto's ECS task progression to manual (tasks stay RUNNING until stopped). Global and
/// idempotent: every test sets the same value.
pub async fn moto_manual_progression() {
    let r = http()
        .post(format!("{}/moto-api/state-manager/set-transition", moto_url()))
        .json(&serde_json::json!({
            "model_name": "ecs::task",
            "transition": { "progression": "manual", "times": 1_000_000 }
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "set-transition: {}", r.status());
}

/// A default-VPC subnet of moto's EC2 (the ENI of an awsvpc task needs a real subnet).
pub async fn moto_subnet() -> String {
    let body = http()
        .post(moto_url())
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/ec2/aws4_request, \
                 SignedHeaders=host, Signature=0"
            ),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=DescribeSubnets&Version=2016-11-15")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = body.find("<subnetId>").expect("a subnet in DescribeSubnets") + "<subnetId>".len();
    let end = start + body[start..].find("</subnetId>").unwrap();
    body[start..end].to_owned()
}

/// An ECS client on moto.
pub async fn moto_client() -> aws_sdk_ecs::Client {
    let backend = moto_builder()
        .cluster("unused")
        .task_definition("unused")
        .container_name("unused")
        .build()
        .await
        .unwrap();
    backend.client().clone()
}

/// A builder pointed at moto, with short timings.
pub fn moto_builder() -> EcsBackendBuilder {
    flame_backend_ecs::EcsBackend::builder()
        .endpoint_url(moto_url())
        .region(REGION)
        .credentials(Credentials::new("test", "test", None, None, "flame-tests"))
        .task_metadata_uri(None)
        .poll(fast_poll())
        .retry(fast_retry())
}

pub fn fast_poll() -> PollSettings {
    PollSettings {
        describe_min: Duration::from_millis(20),
        describe_max: Duration::from_millis(100),
    }
}

pub fn fast_retry() -> RetrySettings {
    RetrySettings {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        attempt_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
    }
}

/// A fresh cluster and an awsvpc task definition on moto, named uniquely for one test.
pub struct MotoWorld {
    pub client: aws_sdk_ecs::Client,
    pub cluster: String,
    pub task_definition: String,
    pub subnet: String,
}

impl MotoWorld {
    pub async fn new(test: &str) -> MotoWorld {
        Self::with_containers(test, &["app"]).await
    }

    pub async fn with_containers(test: &str, containers: &[&str]) -> MotoWorld {
        moto_manual_progression().await;
        let client = moto_client().await;
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let cluster = format!("flame-{test}-{suffix}");
        client
            .create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .unwrap();
        let family = format!("flame-{test}-{suffix}");
        let mut register = client
            .register_task_definition()
            .family(&family)
            .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
            .requires_compatibilities(aws_sdk_ecs::types::Compatibility::Fargate)
            .cpu("256")
            .memory("512");
        for name in containers {
            register = register.container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name(*name)
                    .image("example.invalid/app:1")
                    .essential(*name == containers[0])
                    .memory(512)
                    .build(),
            );
        }
        let out = register.send().await.unwrap();
        let td = out.task_definition().unwrap();
        let task_definition = format!("{}:{}", td.family().unwrap(), td.revision());
        MotoWorld {
            client,
            cluster,
            task_definition,
            subnet: moto_subnet().await,
        }
    }

    /// A builder for this world's cluster and task definition (Fargate, awsvpc).
    pub fn builder(&self) -> EcsBackendBuilder {
        moto_builder()
            .cluster(&self.cluster)
            .task_definition(&self.task_definition)
            .fargate()
            .subnets([self.subnet.clone()])
            .security_groups(["sg-flame-test"])
    }

    /// Task ARNs of the cluster whose desired status is RUNNING.
    pub async fn running_tasks(&self) -> Vec<String> {
        self.client
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
            .send()
            .await
            .unwrap()
            .task_arns()
            .to_vec()
    }

    pub async fn describe(&self, arn: &str) -> aws_sdk_ecs::types::Task {
        self.client
            .describe_tasks()
            .cluster(&self.cluster)
            .tasks(arn)
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await
            .unwrap()
            .tasks()
            .first()
            .cloned()
            .expect("task described")
    }
}

/// In-process runners: the address resolver maps every task to one of these, served by an
/// in-memory transport (no packet leaves the process; moto's 10.x addresses are never
/// contacted). `seen` records what the resolver was asked.
#[derive(Clone, Default)]
pub struct Runners {
    pub transport: InMemoryTransport,
    pub seen: Arc<Mutex<Vec<RunnerAddress>>>,
    /// Task id → its runner (a task has one runner however often it is resolved).
    pub dispatchers: Arc<Mutex<std::collections::HashMap<String, Arc<Dispatcher>>>>,
}

impl Runners {
    pub fn new() -> Self {
        Runners::default()
    }

    /// A resolver that starts a runner for each task (`mem://<task id>`) the first time the
    /// task is resolved; later resolutions (reap's) find the same runner. The runner reports
    /// how long its parent has been silent, as a runner a parent started does.
    pub fn resolver(&self) -> impl Fn(&RunnerAddress) -> Option<String> + Send + Sync + 'static {
        let me = self.clone();
        move |address: &RunnerAddress| {
            me.seen.lock().unwrap().push(address.clone());
            let id = address.backend_id.rsplit('/').next().unwrap_or_default();
            let url = format!("mem://{id}");
            let mut dispatchers = me.dispatchers.lock().unwrap();
            if !dispatchers.contains_key(id) {
                let registry =
                    Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
                let dispatcher = me.transport.add(
                    &url,
                    Dispatcher::new(registry, address.runner_id.clone()).with_parent(true),
                );
                dispatchers.insert(id.to_owned(), dispatcher);
            }
            Some(url)
        }
    }

    /// The runner of task `arn` (once resolved).
    pub fn dispatcher(&self, arn: &str) -> Option<Arc<Dispatcher>> {
        let id = arn.rsplit('/').next().unwrap_or_default();
        self.dispatchers.lock().unwrap().get(id).cloned()
    }

    /// A resolver that maps every task to a URL nobody serves (the runner never answers).
    pub fn silent_resolver(&self) -> impl Fn(&RunnerAddress) -> Option<String> + Send + Sync + 'static {
        let me = self.clone();
        move |address: &RunnerAddress| {
            me.seen.lock().unwrap().push(address.clone());
            Some("mem://nobody-home".to_owned())
        }
    }

    pub fn prober(&self) -> Arc<dyn Transport> {
        Arc::new(self.transport.clone())
    }
}

/// A spawn request as a pool would make it.
pub fn request(app: &str, parent: &str, boot: Duration) -> SpawnRequest {
    let runner_id = format!("r-{}", uuid::Uuid::new_v4().simple());
    let secret = Secret::new("s3cret-for-tests");
    let env: BTreeMap<String, String> = [
        ("FLAME_MODE", "runner".to_owned()),
        ("FLAME_SECRET", secret.expose().to_owned()),
        ("FLAME_LISTEN", "127.0.0.1:0".to_owned()),
        ("FLAME_PARENT_ID", parent.to_owned()),
        ("FLAME_PARENT_TIMEOUT", "20000".to_owned()),
        ("FLAME_RUNNER_ID", runner_id.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let labels: BTreeMap<String, String> = [
        ("flame.app", app),
        ("flame.pool", "default"),
        ("flame.parent", parent),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    SpawnRequest {
        runner_id,
        app: app.to_owned(),
        pool: "default".to_owned(),
        parent_id: parent.to_owned(),
        env,
        labels,
        boot_timeout: boot,
        secret: Some(secret),
    }
}

/// Starts a runner as a pool does: `spawn` places the task, core's readiness probe pings its
/// runner through `prober` until healthy (or ends it).
pub async fn start(
    backend: &dyn flame_core::Backend,
    request: SpawnRequest,
    prober: &dyn Transport,
) -> flame_core::Result<flame_core::RunnerHandle> {
    flame_core::backend::readiness::start_runner(backend, request, prober).await
}

/// Calls math.add through `transport` at `endpoint`.
pub async fn add(transport: &dyn Transport, endpoint: &Endpoint, a: i64, b: i64) -> i64 {
    let inv = Invocation {
        service_id: "math".into(),
        method_id: "add".into(),
        args: codec::encode_args(&(a, b)).unwrap().into(),
        deadline: None,
        idempotency_key: None,
        trace: Default::default(),
        attempt: 1,
        cast: false,
        stream: false,
        limits: Default::default(),
    };
    let text = transport.invoke(endpoint, &inv).await.unwrap();
    text.decode().await.unwrap()
}

// ---- wiremock: ECS JSON 1.1 shaped replies ----

pub mod mock {
    use super::*;
    use wiremock::matchers::{header, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    pub const TASK_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/flame-mock/0123456789abcdef";

    /// Matches one ECS operation (`RunTask`, `DescribeTasks`, ...).
    pub fn op(name: &str) -> wiremock::MockBuilder {
        Mock::given(method("POST")).and(header("x-amz-target", format!("{ECS_TARGET}.{name}").as_str()))
    }

    pub fn json(status: u16, body: serde_json::Value) -> ResponseTemplate {
        ResponseTemplate::new(status)
            .insert_header("content-type", "application/x-amz-json-1.1")
            .set_body_string(body.to_string())
    }

    pub fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
        json(status, serde_json::json!({ "__type": code, "message": message }))
    }

    pub fn task(last: &str, desired: &str, ip: Option<&str>) -> serde_json::Value {
        let mut details = vec![serde_json::json!({"name": "subnetId", "value": "subnet-1"})];
        if let Some(ip) = ip {
            details.push(serde_json::json!({"name": "privateIPv4Address", "value": ip}));
        }
        serde_json::json!({
            "taskArn": TASK_ARN,
            "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/flame-mock",
            "lastStatus": last,
            "desiredStatus": desired,
            "attachments": [{ "type": "ElasticNetworkInterface", "status": "ATTACHED", "details": details }],
            "containers": [],
        })
    }

    pub fn run_task_ok() -> ResponseTemplate {
        json(
            200,
            serde_json::json!({ "tasks": [task("PROVISIONING", "RUNNING", None)], "failures": [] }),
        )
    }

    pub fn described(task: serde_json::Value) -> ResponseTemplate {
        json(200, serde_json::json!({ "tasks": [task], "failures": [] }))
    }

    pub fn stop_ok() -> ResponseTemplate {
        json(
            200,
            serde_json::json!({ "task": task("RUNNING", "STOPPED", Some("10.0.0.5")) }),
        )
    }

    /// A backend on `server`, mapping every task to in-memory runners.
    pub async fn backend(server: &MockServer, runners: &Runners) -> flame_backend_ecs::EcsBackend {
        builder(server)
            .resolver(runners.resolver())
            .build()
            .await
            .unwrap()
    }

    pub fn builder(server: &MockServer) -> EcsBackendBuilder {
        flame_backend_ecs::EcsBackend::builder()
            .endpoint_url(server.uri())
            .region(REGION)
            .credentials(Credentials::new("test", "test", None, None, "flame-tests"))
            .task_metadata_uri(None)
            .cluster("flame-mock")
            .task_definition("flame-mock:1")
            .container_name("app")
            .fargate()
            .subnets(["subnet-1"])
            .poll(fast_poll())
            .retry(fast_retry())
    }

    /// How many requests of operation `name` the server got.
    pub async fn count(server: &MockServer, name: &str) -> usize {
        let target = format!("{ECS_TARGET}.{name}");
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) == Some(target.as_str()))
            .count()
    }

    /// The bodies of the requests of operation `name`.
    pub async fn bodies(server: &MockServer, name: &str) -> Vec<serde_json::Value> {
        let target = format!("{ECS_TARGET}.{name}");
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) == Some(target.as_str()))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

// ---- real HTTP runners that live and die with their moto task ----

pub mod tasks {
    //! Emulates what ECS does with a task: for each task the backend resolves, a flame-http
    //! runner starts on 127.0.0.1 (on a port the resolver reserved), configured from the
    //! task's own container-override environment as moto stored it (FLAME_SECRET,
    //! FLAME_RUNNER_ID, ...). It is shut down once moto says the task stopped, and the
    //! transport refuses a stopped task's runner at once (a stopped task's process is gone).
    use super::*;
    use async_trait::async_trait;
    use flame_core::{Config, Error, Result, RunnerStatus};
    use flame_http::{BoundServer, HttpTransport, ServerOptions};
    use std::collections::HashMap;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    #[derive(Clone)]
    pub struct TaskRunners {
        client: aws_sdk_ecs::Client,
        cluster: String,
        tx: mpsc::UnboundedSender<(RunnerAddress, u16)>,
        /// Runner URL → task ARN.
        urls: Arc<Mutex<HashMap<String, String>>>,
        /// Task ARN → runner URL (a task has one runner however often it is resolved).
        by_task: Arc<Mutex<HashMap<String, String>>>,
        http: HttpTransport,
        /// What the task definition's `secrets` inject as FLAME_SECRET, if anything.
        injected_secret: Option<flame_core::Secret>,
        pub started: Arc<Mutex<Vec<String>>>,
    }

    impl TaskRunners {
        /// Starts the agent for `world`'s cluster (it ends with the test's runtime).
        pub fn start(world: &MotoWorld) -> TaskRunners {
            Self::start_with(world, None)
        }

        /// Like [`TaskRunners::start`], for a task definition whose `secrets` inject
        /// `FLAME_SECRET` (the ECS agent sets it in the container, overriding nothing else).
        pub fn start_with(world: &MotoWorld, injected_secret: Option<flame_core::Secret>) -> TaskRunners {
            let (tx, mut rx) = mpsc::unbounded_channel::<(RunnerAddress, u16)>();
            let me = TaskRunners {
                client: world.client.clone(),
                cluster: world.cluster.clone(),
                tx,
                urls: Default::default(),
                by_task: Default::default(),
                http: HttpTransport::new(),
                injected_secret,
                started: Default::default(),
            };
            let agent = me.clone();
            tokio::spawn(async move {
                while let Some((address, port)) = rx.recv().await {
                    tokio::spawn(agent.clone().run_task(address, port));
                }
            });
            me
        }

        /// Maps a task to `http://127.0.0.1:<reserved port>` and has its runner started, the
        /// first time the task is resolved; later resolutions (reap's) get the same URL, as
        /// a task's ENI address stays the same.
        pub fn resolver(&self) -> impl Fn(&RunnerAddress) -> Option<String> + Send + Sync + 'static {
            let me = self.clone();
            move |address: &RunnerAddress| {
                let mut by_task = me.by_task.lock().unwrap();
                if let Some(url) = by_task.get(&address.backend_id) {
                    return Some(url.clone());
                }
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .ok()?;
                let url = format!("http://127.0.0.1:{port}");
                me.urls
                    .lock()
                    .unwrap()
                    .insert(url.clone(), address.backend_id.clone());
                me.tx.send((address.clone(), port)).ok()?;
                by_task.insert(address.backend_id.clone(), url.clone());
                Some(url)
            }
        }

        /// The transport for these runners (also the readiness probe's).
        pub fn transport(&self) -> Arc<dyn Transport> {
            Arc::new(self.clone())
        }

        async fn task_env(&self, arn: &str) -> Option<(bool, BTreeMap<String, String>)> {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .tasks(arn)
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .ok()?;
            let task = out.tasks().iter().find(|t| t.task_arn() == Some(arn))?;
            let alive = task.desired_status() == Some("RUNNING") && task.last_status() == Some("RUNNING");
            let env = task
                .overrides()
                .and_then(|o| o.container_overrides().first())
                .map(|c| {
                    c.environment()
                        .iter()
                        .filter_map(|kv| Some((kv.name()?.to_owned(), kv.value()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            Some((alive, env))
        }

        async fn run_task(self, address: RunnerAddress, port: u16) {
            let Some((true, mut env)) = self.task_env(&address.backend_id).await else {
                return;
            };
            env.insert("FLAME_LISTEN".into(), format!("127.0.0.1:{port}"));
            if let Some(secret) = &self.injected_secret {
                env.insert("FLAME_SECRET".into(), secret.expose().to_owned());
            }
            let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
            let runner_id = env
                .get("FLAME_RUNNER_ID")
                .cloned()
                .unwrap_or(address.runner_id.clone());
            let registry =
                Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) });
            // As a flame runner: it reports how long its parent has been silent, and its
            // failsafe ends it once the parent has been silent for FLAME_PARENT_TIMEOUT.
            let dispatcher =
                Arc::new(Dispatcher::new(registry, runner_id).with_parent(config.parent_id.is_some()));
            let options = ServerOptions::default()
                .announce(false)
                .handle_signals(false)
                .drain_grace(Duration::from_secs(1));
            let bound = BoundServer::bind(dispatcher.clone(), &config, options)
                .await
                .unwrap();
            self.started.lock().unwrap().push(address.backend_id.clone());
            let stop = CancellationToken::new();
            let failsafe = flame_core::runner::failsafe::Failsafe::from_config(&config)
                .map(|f| tokio::spawn(f.watch(dispatcher, stop.clone())));
            let server = tokio::spawn(bound.run(stop.clone()));
            // The process lives as long as its task (or until its failsafe ends it; moto then
            // still says RUNNING, as no ECS agent reports the exit).
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                match self.task_env(&address.backend_id).await {
                    Some((true, _)) => continue,
                    _ => break,
                }
            }
            stop.cancel();
            let _ = server.await;
            if let Some(f) = failsafe {
                f.abort();
            }
        }

        /// Whether the task behind `endpoint` still runs (its runner process exists).
        async fn alive(&self, endpoint: &Endpoint) -> Result<()> {
            let arn = self.urls.lock().unwrap().get(&endpoint.url).cloned();
            let Some(arn) = arn else {
                return Err(Error::not_delivered(format!(
                    "no task runner at {}",
                    endpoint.url
                )));
            };
            match self.task_env(&arn).await {
                Some((true, _)) => Ok(()),
                _ => Err(Error::not_delivered(format!(
                    "task {arn} is stopped: its runner is gone"
                ))),
            }
        }
    }

    #[async_trait]
    impl Transport for TaskRunners {
        async fn invoke(&self, endpoint: &Endpoint, invocation: &Invocation) -> Result<flame_core::Reply> {
            self.alive(endpoint).await?;
            self.http.invoke(endpoint, invocation).await
        }

        async fn ping(&self, endpoint: &Endpoint) -> Result<RunnerStatus> {
            self.alive(endpoint).await?;
            self.http.ping(endpoint).await
        }
    }
}
