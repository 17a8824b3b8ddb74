//! A fake Fly Machines API on wiremock (127.0.0.1 only), shaped like the documented API:
//! the paths, methods, query parameters and bodies of create / wait / get / stop / delete /
//! list, Bearer authentication, `{"error": …, "status": …}` error bodies, 408 from `/wait`,
//! machine states, and private 6PN addresses that are never dialled (the backend's address
//! resolver maps each machine to an in-process runner instead).
//!
//! Every request must match a documented shape: custom matchers parse the JSON body and the
//! query and check the fields; anything else lands in a catch-all that records it in
//! `unmatched` and answers 400, so a test can assert the backend only spoke the real API.

#![allow(clippy::unwrap_used, dead_code)]

use flame_backend_fly::{FlyBackend, FlyConfig, RetryPolicy};
use flame_core::testkit::InMemoryTransport;
use flame_core::{
    AddressResolver, Config, Context, Dispatcher, Error, Method, Registry, RunnerAddress, Secret,
    SpawnRequest,
};
use flame_http::{HttpServer, ServerOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Match, Mock, MockServer, Request, Respond, ResponseTemplate};

/// A token distinctive enough that any leak is found by `contains`.
pub const TOKEN: &str = "fm2_TEST_TOKEN_5b7e0c9d1f";
pub const APP: &str = "flame-test-app";
pub const IMAGE: &str = "registry.fly.io/flame-test-app:deployment-01JABCDEF";
pub const PORT: u16 = 8080;

pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");

pub fn registry() -> Registry {
    Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
}

/// How `GET …/wait?state=started` answers for new machines.
#[derive(Clone, Debug)]
pub enum Boot {
    /// 200 at once; the machine is `started`.
    Start,
    /// 408 this many times, then 200.
    TimeoutsThenStart(usize),
    /// The machine goes to this state (`failed`, `stopped`) and the wait answers 400.
    GoesTo(&'static str),
    /// The machine is destroyed during boot; the wait answers 404.
    Destroyed,
    /// 408 forever (the machine stays `starting`).
    Never,
}

pub struct State {
    pub machines: BTreeMap<String, Value>,
    pub next: u32,
    pub boot: Boot,
    pub waits_408: usize,
    /// Whether a created machine's runner answers ping.
    pub runner_answers: bool,
    pub unmatched: Vec<String>,
    pub runners: InMemoryTransport,
    pub dispatcher: Arc<Dispatcher>,
    /// Where each machine's runner answers (`mem://{id}`, or a flame-http server on
    /// 127.0.0.1 in HTTP mode).
    pub urls: HashMap<String, String>,
    /// HTTP mode: boots a real flame-http runner for each created machine.
    pub http: Option<UnboundedSender<(String, BTreeMap<String, String>)>>,
    /// HTTP mode: stops a machine's runner.
    pub cancels: HashMap<String, CancellationToken>,
}

impl State {
    /// The machine's runner goes away (stop, destroy, crash).
    fn kill_runner(&mut self, id: &str) {
        self.runners.remove(&format!("mem://{id}"));
        self.urls.remove(id);
        if let Some(token) = self.cancels.remove(id) {
            token.cancel();
        }
    }

    /// In HTTP mode a machine is `started` only once its runner process listens.
    fn runner_up(&self, id: &str) -> bool {
        self.http.is_none() || self.urls.contains_key(id) || !self.runner_answers
    }
}

pub struct FakeFly {
    pub server: MockServer,
    pub state: Arc<Mutex<State>>,
}

fn machines_path() -> String {
    format!("/v1/apps/{APP}/machines")
}

fn machine_id_of(req: &Request) -> String {
    let prefix = format!("{}/", machines_path());
    let rest = req.url.path().strip_prefix(&prefix).unwrap_or("");
    rest.split('/').next().unwrap_or("").to_owned()
}

fn query(req: &Request) -> BTreeMap<String, String> {
    req.url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn fly_error(status: u16, error: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({ "error": error }))
}

// ---- matchers ---------------------------------------------------------------------------

/// `Authorization: Bearer <TOKEN>`.
pub struct Authorized;
impl Match for Authorized {
    fn matches(&self, req: &Request) -> bool {
        req.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {TOKEN}"))
    }
}

/// The documented create body (`POST /v1/apps/{app}/machines`): only documented keys, with
/// the types the API takes, and what FLAME must send (auto_destroy, restart "no", metadata).
pub struct DocumentedCreateBody;
impl Match for DocumentedCreateBody {
    fn matches(&self, req: &Request) -> bool {
        create_body_problems(&req.body).is_empty()
    }
}

/// Everything wrong with a create body, as text (empty when it is fine).
pub fn create_body_problems(body: &[u8]) -> Vec<String> {
    let mut p = Vec::new();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return vec!["body is not JSON".into()];
    };
    let Some(top) = v.as_object() else {
        return vec!["body is not an object".into()];
    };
    let documented_top = [
        "name",
        "region",
        "config",
        "lease_ttl",
        "skip_launch",
        "skip_service_registration",
        "lsvd",
    ];
    for k in top.keys() {
        if !documented_top.contains(&k.as_str()) {
            p.push(format!("undocumented top-level key {k}"));
        }
    }
    if !v["name"].is_string() {
        p.push("name must be a string".into());
    }
    if !(v.get("region").is_none() || v["region"].is_string()) {
        p.push("region must be a string".into());
    }
    let c = &v["config"];
    let documented_config = [
        "image",
        "init",
        "guest",
        "env",
        "auto_destroy",
        "restart",
        "metadata",
        "services",
        "checks",
        "mounts",
        "processes",
        "schedule",
        "stop_config",
        "dns",
        "files",
        "statics",
        "standbys",
        "size",
    ];
    match c.as_object() {
        None => p.push("config must be an object".into()),
        Some(o) => {
            for k in o.keys() {
                if !documented_config.contains(&k.as_str()) {
                    p.push(format!("undocumented config key {k}"));
                }
            }
        }
    }
    if !c["image"].as_str().is_some_and(|s| !s.is_empty()) {
        p.push("config.image is required".into());
    }
    if c["auto_destroy"] != json!(true) {
        p.push("config.auto_destroy must be true".into());
    }
    if c["restart"]["policy"] != json!("no") {
        p.push("config.restart.policy must be \"no\"".into());
    }
    let g = &c["guest"];
    if !matches!(g["cpu_kind"].as_str(), Some("shared" | "performance")) {
        p.push("config.guest.cpu_kind must be shared|performance".into());
    }
    for k in ["cpus", "memory_mb"] {
        if !g[k].as_u64().is_some_and(|n| n > 0) {
            p.push(format!("config.guest.{k} must be a positive integer"));
        }
    }
    if !(g.get("gpu_kind").is_none() || g["gpu_kind"].is_string()) {
        p.push("config.guest.gpu_kind must be a string".into());
    }
    if !(g.get("gpus").is_none() || g["gpus"].is_u64()) {
        p.push("config.guest.gpus must be an integer".into());
    }
    if let Some(init) = c.get("init") {
        match init.as_object() {
            None => p.push("config.init must be an object".into()),
            Some(o) => {
                for (k, val) in o {
                    if !["cmd", "entrypoint", "exec", "kernel_args", "swap_size_mb", "tty"]
                        .contains(&k.as_str())
                    {
                        p.push(format!("undocumented init key {k}"));
                    }
                    if ["cmd", "entrypoint", "exec"].contains(&k.as_str())
                        && !val.as_array().is_some_and(|a| a.iter().all(Value::is_string))
                    {
                        p.push(format!("config.init.{k} must be an array of strings"));
                    }
                }
            }
        }
    }
    for obj in ["env", "metadata"] {
        match c[obj].as_object() {
            None => p.push(format!("config.{obj} must be an object")),
            Some(o) => {
                if !o.values().all(Value::is_string) {
                    p.push(format!("config.{obj} values must be strings"));
                }
            }
        }
    }
    for k in ["flame_app", "flame_pool", "flame_parent", "flame_runner"] {
        if !c["metadata"][k].is_string() {
            p.push(format!("config.metadata.{k} is missing"));
        }
    }
    p
}

/// Compares fields of a JSON body, addressed by JSON pointer, with expected values.
pub struct JsonFields(pub Vec<(&'static str, Value)>);
impl Match for JsonFields {
    fn matches(&self, req: &Request) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
            return false;
        };
        self.0.iter().all(|(ptr, want)| v.pointer(ptr) == Some(want))
    }
}

/// `…/wait` query: `state` one of started|stopped|destroyed, `timeout` whole seconds 1–60,
/// `instance_id` (when given) the machine's own.
pub struct DocumentedWaitQuery(pub Arc<Mutex<State>>);
impl Match for DocumentedWaitQuery {
    fn matches(&self, req: &Request) -> bool {
        let q = query(req);
        let state_ok = matches!(
            q.get("state").map(String::as_str),
            Some("started" | "stopped" | "destroyed")
        );
        let timeout_ok = q
            .get("timeout")
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| (1..=60).contains(&t));
        let known = ["state", "timeout", "instance_id", "from_event_id", "version"];
        let only_known = q.keys().all(|k| known.contains(&k.as_str()));
        let instance_ok = match q.get("instance_id") {
            None => q.get("state").map(String::as_str) != Some("stopped"),
            Some(i) => {
                let st = self.0.lock().unwrap();
                st.machines
                    .get(&machine_id_of(req))
                    .map_or(true, |m| m["instance_id"] == json!(i))
            }
        };
        state_ok && timeout_ok && only_known && instance_ok
    }
}

/// Stop body: an object with an optional string `signal` and optional `timeout`.
pub struct DocumentedStopBody;
impl Match for DocumentedStopBody {
    fn matches(&self, req: &Request) -> bool {
        if req.body.is_empty() {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&req.body) else {
            return false;
        };
        let Some(o) = v.as_object() else { return false };
        o.keys().all(|k| k == "signal" || k == "timeout")
            && (v.get("signal").is_none() || v["signal"].is_string())
    }
}

/// Destroy takes `force=true` (docs) — the Go client sends `kill=true`: accept either.
pub struct ForceQuery;
impl Match for ForceQuery {
    fn matches(&self, req: &Request) -> bool {
        let q = query(req);
        q.get("force").map(String::as_str) == Some("true")
            || q.get("kill").map(String::as_str) == Some("true")
    }
}

/// List query: only `include_deleted`, `region`, `summary` and `metadata.*` filters.
pub struct DocumentedListQuery;
impl Match for DocumentedListQuery {
    fn matches(&self, req: &Request) -> bool {
        query(req).keys().all(|k| {
            k.starts_with("metadata.") || ["include_deleted", "region", "summary"].contains(&k.as_str())
        })
    }
}

// ---- responders ------------------------------------------------------------------------

struct Create(Arc<Mutex<State>>);
impl Respond for Create {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let mut st = self.0.lock().unwrap();
        st.next += 1;
        let n = st.next;
        let id = format!("e2865{n:09x}");
        let machine = json!({
            "id": id,
            "name": body["name"],
            "state": "created",
            "region": body.get("region").cloned().unwrap_or(json!("ord")),
            "instance_id": format!("01HEPA330HZ37A78TK080N{n:04}"),
            "private_ip": format!("fdaa:0:3b99:a7b:{n:x}:e229:8038:2"),
            "config": body["config"],
            "image_ref": { "registry": "registry.fly.io", "repository": APP, "tag": "deployment-01JABCDEF" },
            "created_at": "2026-11-27T10:00:00Z",
            "updated_at": "2026-11-27T10:00:00Z",
            "events": [{ "type": "launch", "status": "created", "source": "user", "timestamp": 1_700_000_000_000u64 }],
        });
        st.machines.insert(id.clone(), machine.clone());
        if st.runner_answers {
            match &st.http {
                Some(boot) => {
                    // The "image" boots with exactly the env the create body carried.
                    let env: BTreeMap<String, String> = body["config"]["env"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let _ = boot.send((id.clone(), env));
                }
                None => {
                    let d = st.dispatcher.clone();
                    st.runners.add_shared(&format!("mem://{id}"), d);
                    st.urls.insert(id.clone(), format!("mem://{id}"));
                }
            }
        }
        ResponseTemplate::new(200).set_body_json(machine)
    }
}

struct Wait(Arc<Mutex<State>>);
impl Respond for Wait {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let id = machine_id_of(req);
        let q = query(req);
        let mut st = self.0.lock().unwrap();
        if !st.machines.contains_key(&id) {
            return fly_error(404, "machine not found");
        }
        let want = q.get("state").cloned().unwrap_or_default();
        let timeout = ResponseTemplate::new(408)
            .set_body_json(json!({ "error": format!("deadline_exceeded: machine did not reach {want} within the timeout") }))
            .set_delay(Duration::from_millis(20));
        if want == "started" {
            let boot = st.boot.clone();
            let set = |st: &mut State, s: &str| {
                if let Some(m) = st.machines.get_mut(&id) {
                    m["state"] = json!(s);
                }
            };
            match boot {
                Boot::Start if !st.runner_up(&id) => return timeout,
                Boot::Start => set(&mut st, "started"),
                Boot::TimeoutsThenStart(n) => {
                    if st.waits_408 < n || !st.runner_up(&id) {
                        st.waits_408 += 1;
                        set(&mut st, "starting");
                        return timeout;
                    }
                    set(&mut st, "started");
                }
                Boot::GoesTo(s) => {
                    set(&mut st, s);
                    st.kill_runner(&id);
                    return fly_error(
                        400,
                        "machine failed to reach desired state, and restart policy was set to no restart",
                    );
                }
                Boot::Destroyed => {
                    st.machines.remove(&id);
                    st.kill_runner(&id);
                    return fly_error(404, "machine not found");
                }
                Boot::Never => {
                    set(&mut st, "starting");
                    return timeout;
                }
            }
            return ResponseTemplate::new(200).set_body_json(json!({ "ok": true }));
        }
        let state = st.machines[&id]["state"].as_str().unwrap_or("").to_owned();
        if state == want {
            ResponseTemplate::new(200).set_body_json(json!({ "ok": true }))
        } else {
            timeout
        }
    }
}

struct Get(Arc<Mutex<State>>);
impl Respond for Get {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let st = self.0.lock().unwrap();
        match st.machines.get(&machine_id_of(req)) {
            Some(m) => ResponseTemplate::new(200).set_body_json(m),
            None => fly_error(404, "machine not found"),
        }
    }
}

struct Stop(Arc<Mutex<State>>);
impl Respond for Stop {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let id = machine_id_of(req);
        let mut st = self.0.lock().unwrap();
        match st.machines.get_mut(&id) {
            Some(m) => {
                m["state"] = json!("stopped");
                st.kill_runner(&id);
                ResponseTemplate::new(200).set_body_json(json!({ "ok": true }))
            }
            None => fly_error(404, "machine not found"),
        }
    }
}

struct Delete(Arc<Mutex<State>>);
impl Respond for Delete {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let id = machine_id_of(req);
        let mut st = self.0.lock().unwrap();
        st.kill_runner(&id);
        match st.machines.remove(&id) {
            Some(_) => ResponseTemplate::new(200).set_body_json(json!({ "ok": true })),
            None => fly_error(404, "machine not found"),
        }
    }
}

struct List(Arc<Mutex<State>>);
impl Respond for List {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let q = query(req);
        let st = self.0.lock().unwrap();
        let out: Vec<&Value> = st
            .machines
            .values()
            .filter(|m| {
                q.iter().all(|(k, v)| match k.strip_prefix("metadata.") {
                    Some(key) => m["config"]["metadata"][key] == json!(v),
                    None => true,
                })
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(out)
    }
}

struct Unmatched(Arc<Mutex<State>>);
impl Respond for Unmatched {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let line = format!(
            "{} {} {}",
            req.method,
            req.url,
            String::from_utf8_lossy(&req.body)
        );
        self.0.lock().unwrap().unmatched.push(line);
        fly_error(400, "request does not match the documented Machines API")
    }
}

impl FakeFly {
    pub async fn start() -> FakeFly {
        let server = MockServer::start().await;
        let runners = InMemoryTransport::new();
        let dispatcher = Arc::new(Dispatcher::new(registry(), "fly-runner"));
        let state = Arc::new(Mutex::new(State {
            machines: BTreeMap::new(),
            next: 0,
            boot: Boot::Start,
            waits_408: 0,
            runner_answers: true,
            unmatched: Vec::new(),
            runners,
            dispatcher,
            urls: HashMap::new(),
            http: None,
            cancels: HashMap::new(),
        }));
        let m = machines_path();
        let one = format!("^{m}/[^/]+$");
        Mock::given(method("POST"))
            .and(path(m.clone()))
            .and(Authorized)
            .and(DocumentedCreateBody)
            .respond_with(Create(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path_regex(format!("^{m}/[^/]+/wait$")))
            .and(Authorized)
            .and(DocumentedWaitQuery(state.clone()))
            .respond_with(Wait(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path_regex(one.clone()))
            .and(Authorized)
            .respond_with(Get(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path_regex(format!("^{m}/[^/]+/stop$")))
            .and(Authorized)
            .and(DocumentedStopBody)
            .respond_with(Stop(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path_regex(one))
            .and(Authorized)
            .and(ForceQuery)
            .respond_with(Delete(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(m))
            .and(Authorized)
            .and(DocumentedListQuery)
            .respond_with(List(state.clone()))
            .mount(&server)
            .await;
        Mock::given(wiremock::matchers::any())
            .respond_with(Unmatched(state.clone()))
            .with_priority(u8::MAX)
            .mount(&server)
            .await;
        FakeFly { server, state }
    }

    /// A fake whose machines boot real flame-http runners on 127.0.0.1:0, each configured
    /// from the env of its create body (secret, parent id, runner id) as the image would be.
    pub async fn start_http() -> FakeFly {
        let fake = FakeFly::start().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, BTreeMap<String, String>)>();
        let state = fake.state.clone();
        tokio::spawn(async move {
            while let Some((id, env)) = rx.recv().await {
                let mut config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
                // The machine would listen on [::]:8080 of its own network; here 127.0.0.1.
                config.listen = Some("127.0.0.1:0".parse().unwrap());
                let runner_id = env.get("FLAME_RUNNER_ID").cloned().unwrap_or_else(|| id.clone());
                // As a flame runner: it reports how long its parent has been silent, and its
                // failsafe ends it once the parent has been silent for FLAME_PARENT_TIMEOUT.
                let dispatcher =
                    Arc::new(Dispatcher::new(registry(), runner_id).with_parent(config.parent_id.is_some()));
                let options = ServerOptions::default()
                    .announce(false)
                    .handle_signals(false)
                    .drain_grace(Duration::from_secs(1));
                let bound = HttpServer::with_options(options)
                    .bind(dispatcher.clone(), &config)
                    .await
                    .unwrap();
                let token = CancellationToken::new();
                {
                    let mut st = state.lock().unwrap();
                    if !st.machines.contains_key(&id) {
                        continue;
                    }
                    st.urls.insert(id.clone(), bound.url());
                    st.cancels.insert(id, token.clone());
                }
                if let Some(failsafe) = flame_core::runner::failsafe::Failsafe::from_config(&config) {
                    tokio::spawn(failsafe.watch(dispatcher, token.clone()));
                }
                tokio::spawn(bound.run(token));
            }
        });
        fake.state.lock().unwrap().http = Some(tx);
        fake
    }

    /// Expects exactly one create whose body has these fields (JSON pointer → value), on top
    /// of the documented shape; checked by `server.verify()`.
    pub async fn expect_create(&self, fields: Vec<(&'static str, Value)>) {
        Mock::given(method("POST"))
            .and(path(machines_path()))
            .and(Authorized)
            .and(DocumentedCreateBody)
            .and(JsonFields(fields))
            .respond_with(Create(self.state.clone()))
            .with_priority(1)
            .expect(1)
            .named("create with the expected fields")
            .mount(&self.server)
            .await;
    }

    pub fn set_boot(&self, boot: Boot) {
        self.state.lock().unwrap().boot = boot;
    }

    pub fn set_runner_answers(&self, answers: bool) {
        self.state.lock().unwrap().runner_answers = answers;
    }

    pub fn runners(&self) -> InMemoryTransport {
        self.state.lock().unwrap().runners.clone()
    }

    pub fn machine_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().machines.keys().cloned().collect()
    }

    pub fn machine(&self, id: &str) -> Option<Value> {
        self.state.lock().unwrap().machines.get(id).cloned()
    }

    /// Puts a machine in the fake as if an earlier parent had created it.
    pub fn insert_machine(&self, id: &str, state: &str, metadata: Value) {
        self.state.lock().unwrap().machines.insert(
            id.to_owned(),
            json!({
                "id": id, "name": format!("flame-{id}"), "state": state, "region": "ord",
                "instance_id": format!("01OLD{id}"), "private_ip": "fdaa:0:3b99:a7b:ff:e229:8038:2",
                "config": { "image": IMAGE, "metadata": metadata },
            }),
        );
    }

    /// Waits (bounded) until the fake holds no machine; whether that happened. A spawn cut
    /// off at its deadline destroys its machine from its drop guard, in the background.
    pub async fn wait_no_machines(&self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while !self.machine_ids().is_empty() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn unmatched(&self) -> Vec<String> {
        self.state.lock().unwrap().unmatched.clone()
    }

    /// Received requests as `METHOD path?query`.
    pub async fn requests(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| match r.url.query() {
                Some(q) => format!("{} {}?{}", r.method, r.url.path(), q),
                None => format!("{} {}", r.method, r.url.path()),
            })
            .collect()
    }

    pub async fn requests_matching(&self, verb: &str, suffix: &str) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.method.as_str() == verb && r.url.path().ends_with(suffix))
            .collect()
    }

    pub fn config(&self) -> FlyConfig {
        FlyConfig::new(APP, IMAGE, TOKEN)
            .api_url(self.server.uri())
            .region("ams")
            .cpus("performance", 2)
            .memory_mb(4096)
            .runner_port(PORT)
            .stop_timeout(Duration::from_secs(2))
            .retry(fast_retry())
    }

    /// The backend under test: every machine resolves to its runner (`mem://{id}` or the
    /// flame-http server on 127.0.0.1 booted for it).
    pub fn backend(&self, config: FlyConfig) -> FlyBackend {
        FlyBackend::new(config).unwrap().with_resolver(self.resolver())
    }

    /// Maps each machine to its runner; checks the backend hands over the machine's private
    /// IPv6 and the runner port, and never lets the private address be dialled.
    pub fn resolver(&self) -> AddressResolver {
        let state = self.state.clone();
        Arc::new(move |a: &RunnerAddress| {
            let host = a.host.as_deref().unwrap_or("");
            assert!(
                host.starts_with("fdaa:"),
                "expected the machine's 6PN address, got {host:?}"
            );
            assert_eq!(a.port, PORT);
            let st = state.lock().unwrap();
            Some(match st.urls.get(&a.backend_id) {
                Some(url) => url.clone(),
                None if st.http.is_some() => "http://127.0.0.1:1".to_owned(),
                None => format!("mem://{}", a.backend_id),
            })
        })
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

pub fn spawn_request(runner_id: &str, parent: &str, boot: Duration) -> SpawnRequest {
    let mut env = BTreeMap::new();
    env.insert("FLAME_MODE".to_string(), "runner".to_string());
    env.insert("FLAME_LISTEN".to_string(), "127.0.0.1:0".to_string());
    env.insert("FLAME_PARENT_ID".to_string(), parent.to_string());
    env.insert("FLAME_PARENT_TIMEOUT".to_string(), "20000".to_string());
    env.insert("FLAME_SECRET".to_string(), "runner-secret-1".to_string());
    let mut labels = BTreeMap::new();
    labels.insert("flame.app".to_string(), APP.to_string());
    labels.insert("flame.pool".to_string(), "default".to_string());
    labels.insert("flame.parent".to_string(), parent.to_string());
    labels.insert("flame.runner".to_string(), runner_id.to_string());
    SpawnRequest {
        runner_id: runner_id.into(),
        app: APP.into(),
        pool: "default".into(),
        parent_id: parent.into(),
        env,
        labels,
        boot_timeout: boot,
        secret: Some(Secret::new("runner-secret-1")),
    }
}

/// Starts a runner as a pool does: `spawn` places the machine, core's readiness probe pings
/// its runner through `prober` until healthy (or ends it).
pub async fn start(
    backend: &FlyBackend,
    request: SpawnRequest,
    prober: &dyn flame_core::Transport,
) -> flame_core::Result<flame_core::RunnerHandle> {
    flame_core::backend::readiness::start_runner(backend, request, prober).await
}

/// The error's every rendering (Display, Debug, details) must not hold the token.
pub fn assert_no_token(err: &Error) {
    let texts = [
        err.to_string(),
        format!("{err:?}"),
        err.details().map(|d| d.to_string()).unwrap_or_default(),
        std::error::Error::source(err)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    ];
    for t in texts {
        assert!(!t.contains(TOKEN), "token leaked into error text: {t}");
        assert!(!t.contains("5b7e0c9d1f"), "token fragment leaked: {t}");
    }
}

/// The Fly status and code carried by a backend error.
pub fn fly_details(err: &Error) -> (u64, Option<String>, String) {
    let d = err.details().cloned().unwrap_or(Value::Null);
    (
        d["http_status"].as_u64().unwrap_or(0),
        d["fly_status"].as_str().map(str::to_owned),
        d["fly_error"].as_str().unwrap_or("").to_owned(),
    )
}
