//! A fake Kubernetes API server on 127.0.0.1 (a small hyper server: the watch endpoint needs a
//! streaming body), faithful to what the backend uses of the real one:
//!
//! - `POST /api/v1/namespaces/{ns}/pods`: the body is checked field by field against the Pod
//!   API (known keys only at every level, names, label keys and values, ownerReferences,
//!   container env/ports/resources, restartPolicy, tolerations, volume mounts that name
//!   volumes...). A Pod the real API would refuse gets its `422 Invalid` Status with `causes`
//!   (and is recorded in `invalid`); a taken name gets `409 AlreadyExists`. Created Pods get a
//!   `uid`, a `resourceVersion`, `creationTimestamp` and `status.phase: Pending`.
//! - `GET …/pods/{name}`, `DELETE …/pods/{name}` (DeleteOptions body: grace period,
//!   propagation policy, uid preconditions → `409 Conflict`), `GET …/pods` with label and
//!   field selectors, `limit` and `continue`.
//! - `GET …/pods?watch=true&resourceVersion=N`: newline-delimited JSON events
//!   (`ADDED`/`MODIFIED`/`DELETED` with the object and its `resourceVersion`), `BOOKMARK`s when
//!   `allowWatchBookmarks=true`, `timeoutSeconds`, and injected faults: a stream cut short, an
//!   `ERROR` event with a 410 `Expired` Status.
//! - Error replies are `Status` objects shaped like the API's (`kind`, `status: Failure`,
//!   `message`, `reason`, `details`, `code`); 429s carry `Retry-After` and
//!   `details.retryAfterSeconds`.
//! - A "kubelet" moves each Pod through its life per a [`Plan`]: scheduled, container
//!   creating, then Running with a `podIP` in 10.244.0.0/16 — **only once the stand-in runner
//!   listens**: a real flame-http server on 127.0.0.1:0, configured from the Pod's env (secret,
//!   parent id, runner id). The backend's address resolver maps each Pod to it; the Pod IP is
//!   never dialled (the resolver asserts it is handed the 10.x address and returns the
//!   127.0.0.1 URL). Deleting a running Pod with a grace period sets `deletionTimestamp`,
//!   drains the runner (SIGTERM), then removes the Pod. A runner whose parent is silent past
//!   `FLAME_PARENT_TIMEOUT` exits (its failsafe) and its Pod turns `Succeeded`.
//!
//! Everything ends when the [`FakeK8s`] is dropped.

#![allow(clippy::unwrap_used, dead_code)]

use bytes::Bytes;
use flame_backend_k8s::{K8sBackend, K8sConfig, RetryPolicy};
use flame_core::{
    AddressResolver, Config, Context, Dispatcher, Error, Method, Registry, RunnerAddress, Secret,
    SpawnRequest,
};
use flame_http::{HttpServer, ServerOptions};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const NS: &str = "flame-test";
pub const APP: &str = "shop";
pub const IMAGE: &str = "registry.example/shop:1.4.2";
pub const PORT: u16 = 8080;
pub const PARENT_POD: &str = "shop-7d9c5b-x2k4p";
pub const PARENT_UID: &str = "6f1c2d3e-0000-4a5b-8c9d-000000000001";

pub const ADD: Method<(i64, i64), i64> = Method::new("math", "add");

pub fn registry() -> Registry {
    Registry::new().handle(ADD, |_c: Context, (a, b): (i64, i64)| async move { Ok(a + b) })
}

type Body = BoxBody<Bytes, Infallible>;

/// What the fake kubelet does with a new Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Scheduled, ContainerCreating, then Running with a Pod IP once its runner listens.
    Run,
    /// ErrImagePull, then ImagePullBackOff (the image does not exist).
    ImagePull,
    /// Stays Pending: `PodScheduled=False`, `Unschedulable`, with this scheduler message.
    Unschedulable(&'static str),
    /// Runs (IP, no runner yet); once the parent asks for the Pod (`GET`: core's readiness
    /// probe, after a ping that failed) the container is OOMKilled (exit 137): phase Failed.
    OomKilled,
    /// Waits with `CreateContainerConfigError` (a missing Secret).
    ConfigError,
    /// Scheduled, ContainerCreating forever.
    Stuck,
    /// Runs with a Pod IP, but no runner ever listens.
    RunsWithoutRunner,
}

/// A scripted failure for the next matching request(s).
#[derive(Clone, Debug)]
pub struct Fault {
    /// `create`, `get`, `delete`, `list`, `watch`.
    pub verb: &'static str,
    pub times: usize,
    pub kind: FaultKind,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with this Status code (and the API's reason and message for it).
    Status(u16),
    /// Answer with this Status code, reason and message.
    StatusWith(u16, &'static str, &'static str),
    /// Do the operation, then lose the reply: answer with this code.
    AfterApply(u16),
    /// Wait this long before handling (longer than the client's timeout: a timeout).
    Delay(Duration),
}

pub struct Event {
    pub rv: u64,
    pub kind: &'static str,
    pub object: Value,
}

struct RunnerSlot {
    url: String,
    token: CancellationToken,
}

pub struct State {
    pub rv: u64,
    pub pods: BTreeMap<String, Value>,
    pub events: Vec<Event>,
    pub plan: Plan,
    pub faults: Vec<Fault>,
    /// Every request as `METHOD path?query`.
    pub requests: Vec<String>,
    /// Bodies of create requests, in order.
    pub creates: Vec<Value>,
    /// Bodies of delete requests (DeleteOptions), with the Pod name.
    pub deletes: Vec<(String, Value)>,
    /// Requests the real API would have refused as malformed or that match no route.
    pub invalid: Vec<String>,
    /// The next N watch requests are cut after their first event.
    pub watch_cuts: usize,
    /// The kubelet waits for a watch on a new Pod before it schedules it (makes the order of
    /// list, watch and events deterministic).
    pub hold_until_watched: bool,
    /// The next N watch requests get an ERROR 410 Expired event.
    pub watch_expired: usize,
    /// Query strings of watch requests.
    pub watches: Vec<BTreeMap<String, String>>,
    /// Largest page a list returns.
    pub max_page: usize,
    /// How often a watch sends a bookmark.
    pub bookmark_every: Duration,
    /// Bookmarks sent, and the resourceVersion of the last one.
    pub bookmarks_sent: usize,
    pub last_bookmark_rv: u64,
    /// Bumped to cut every open watch (a dropped connection).
    pub cut_generation: u64,
    next_uid: u64,
    next_ip: u32,
    runners: HashMap<String, RunnerSlot>,
    notify: tokio::sync::watch::Sender<u64>,
    root: CancellationToken,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn push(&mut self, kind: &'static str, object: Value) {
        let rv = self.rv;
        self.events.push(Event { rv, kind, object });
        let _ = self.notify.send(rv);
    }

    /// Changes a Pod (a new resourceVersion, a MODIFIED event); false when it is gone.
    fn update(&mut self, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let rv = self.bump();
        let Some(pod) = self.pods.get_mut(name) else {
            return false;
        };
        f(pod);
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let snapshot = pod.clone();
        self.push("MODIFIED", snapshot);
        true
    }

    /// Removes a Pod (a DELETED event with its last state), and the Pods it owns.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let rv = self.bump();
        let mut pod = self.pods.remove(name)?;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.push("DELETED", pod.clone());
        if let Some(slot) = self.runners.remove(name) {
            slot.token.cancel();
        }
        // The garbage collector: Pods whose ownerReferences name this one go too.
        let uid = pod["metadata"]["uid"].clone();
        let dependents: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for dependent in dependents {
            self.remove(&dependent);
        }
        Some(pod)
    }

    fn take_fault(&mut self, verb: &str) -> Option<FaultKind> {
        let f = self.faults.iter_mut().find(|f| f.verb == verb && f.times > 0)?;
        f.times -= 1;
        Some(f.kind.clone())
    }
}

pub struct FakeK8s {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    root: CancellationToken,
}

impl Drop for FakeK8s {
    fn drop(&mut self) {
        // Stops the server, every watch and every stand-in runner.
        self.root.cancel();
    }
}

// ---- API objects -------------------------------------------------------------------------

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A `Status` failure object as the API sends it.
pub fn status_body(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if !details.is_null() {
        v["details"] = details;
    }
    v
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed())
        .unwrap()
}

fn status_response(code: u16, reason: &str, message: &str, details: Value) -> Response<Body> {
    let mut resp = json_response(code, &status_body(code, reason, message, details));
    if code == 429 {
        resp.headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    resp
}

/// The API's reply for a fault code.
fn fault_response(code: u16, name: &str) -> Response<Body> {
    match code {
        409 => status_response(
            409,
            "AlreadyExists",
            &format!("pods \"{name}\" already exists"),
            json!({ "name": name, "kind": "pods" }),
        ),
        422 => status_response(
            422,
            "Invalid",
            &format!("Pod \"{name}\" is invalid: spec.containers[0].resources.requests: Invalid value: \"64\": must be less than or equal to memory limit of 1Gi"),
            json!({ "name": name, "kind": "Pod", "causes": [
                { "reason": "FieldValueInvalid", "message": "Invalid value: \"64\": must be less than or equal to memory limit of 1Gi",
                  "field": "spec.containers[0].resources.requests" } ] }),
        ),
        403 => status_response(
            403,
            "Forbidden",
            &format!("pods is forbidden: User \"system:serviceaccount:{NS}:shop\" cannot create resource \"pods\" in API group \"\" in the namespace \"{NS}\""),
            json!({ "kind": "pods" }),
        ),
        429 => status_response(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            json!({ "retryAfterSeconds": 1 }),
        ),
        500 => status_response(500, "InternalError", "Internal error occurred: etcdserver: request timed out", json!({ "causes": [{ "message": "etcdserver: request timed out" }] })),
        503 => status_response(503, "ServiceUnavailable", "the server is currently unable to handle the request", Value::Null),
        404 => status_response(404, "NotFound", &format!("pods \"{name}\" not found"), json!({ "name": name, "kind": "pods" })),
        other => status_response(other, "Unknown", "injected failure", Value::Null),
    }
}

// ---- validation: the Pod API, field by field --------------------------------------------

const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
    "selfLink",
];
const POD_SPEC: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
];
const CONTAINER: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value: empty, or ≤ 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A qualified name (label and annotation keys): `[prefix/]name`.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn is_quantity(s: &str) -> bool {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

fn keys_known(v: &Value, known: &[&str], field: &str, p: &mut Vec<(String, String)>) {
    if let Some(o) = v.as_object() {
        for k in o.keys() {
            if !known.contains(&k.as_str()) {
                p.push((format!("{field}.{k}"), "unknown field".into()));
            }
        }
    }
}

/// Every reason the API would refuse this Pod, as (field, message).
pub fn pod_problems(pod: &Value, namespace: &str) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = Vec::new();
    keys_known(
        pod,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        "",
        &mut p,
    );
    if pod["apiVersion"] != "v1" || pod["kind"] != "Pod" {
        p.push(("apiVersion/kind".into(), "must be v1 Pod".into()));
    }
    let m = &pod["metadata"];
    keys_known(m, OBJECT_META, "metadata", &mut p);
    match m["name"].as_str() {
        Some(n) if is_dns_label(n) => {}
        other => p.push((
            "metadata.name".into(),
            format!("Invalid value: {other:?}: must be a DNS-1123 label"),
        )),
    }
    if let Some(ns) = m.get("namespace") {
        if ns != namespace {
            p.push(("metadata.namespace".into(), "does not match the request".into()));
        }
    }
    for (what, check_values) in [("labels", true), ("annotations", false)] {
        if let Some(map) = m.get(what) {
            match map.as_object() {
                None => p.push((format!("metadata.{what}"), "must be an object".into())),
                Some(o) => {
                    for (k, v) in o {
                        if !is_qualified_name(k) {
                            p.push((
                                format!("metadata.{what}"),
                                format!("Invalid value: {k:?}: bad key"),
                            ));
                        }
                        match v.as_str() {
                            None => p.push((format!("metadata.{what}.{k}"), "must be a string".into())),
                            Some(s) if check_values && !is_label_value(s) => p.push((
                                format!("metadata.labels.{k}"),
                                format!("Invalid value: {s:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"),
                            )),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    if let Some(refs) = m.get("ownerReferences") {
        match refs.as_array() {
            None => p.push(("metadata.ownerReferences".into(), "must be an array".into())),
            Some(a) => {
                let mut controllers = 0;
                for (i, r) in a.iter().enumerate() {
                    let f = format!("metadata.ownerReferences[{i}]");
                    keys_known(
                        r,
                        &[
                            "apiVersion",
                            "kind",
                            "name",
                            "uid",
                            "controller",
                            "blockOwnerDeletion",
                        ],
                        &f,
                        &mut p,
                    );
                    for k in ["apiVersion", "kind", "name", "uid"] {
                        if r[k].as_str().is_none_or(|s| s.is_empty()) {
                            p.push((format!("{f}.{k}"), "Required value".into()));
                        }
                    }
                    for k in ["controller", "blockOwnerDeletion"] {
                        if r.get(k).is_some_and(|v| !v.is_boolean()) {
                            p.push((format!("{f}.{k}"), "must be a boolean".into()));
                        }
                    }
                    if r["controller"] == true {
                        controllers += 1;
                    }
                }
                if controllers > 1 {
                    p.push((
                        "metadata.ownerReferences".into(),
                        "Only one reference can have Controller set to true".into(),
                    ));
                }
            }
        }
    }
    let s = &pod["spec"];
    keys_known(s, POD_SPEC, "spec", &mut p);
    let volumes: Vec<&str> = s["volumes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["name"].as_str()).collect())
        .unwrap_or_default();
    match s["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {
            for (i, c) in cs.iter().enumerate() {
                let f = format!("spec.containers[{i}]");
                keys_known(c, CONTAINER, &f, &mut p);
                if !c["name"].as_str().is_some_and(is_dns_label) {
                    p.push((format!("{f}.name"), "must be a DNS-1123 label".into()));
                }
                if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                    p.push((format!("{f}.image"), "Required value".into()));
                }
                for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                    let ef = format!("{f}.env[{j}]");
                    keys_known(e, &["name", "value", "valueFrom"], &ef, &mut p);
                    let name_ok = e["name"].as_str().is_some_and(|n| {
                        !n.is_empty()
                            && n.chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                            && !n.starts_with(|c: char| c.is_ascii_digit())
                    });
                    if !name_ok {
                        p.push((format!("{ef}.name"), "must be a C identifier".into()));
                    }
                    if e.get("value").is_some() && e.get("valueFrom").is_some() {
                        p.push((
                            format!("{ef}.valueFrom"),
                            "may not be specified when `value` is not empty".into(),
                        ));
                    }
                    if e.get("value").is_some_and(|v| !v.is_string()) {
                        p.push((format!("{ef}.value"), "must be a string".into()));
                    }
                }
                for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
                    let pf = format!("{f}.ports[{j}]");
                    keys_known(
                        port,
                        &["containerPort", "hostIP", "hostPort", "name", "protocol"],
                        &pf,
                        &mut p,
                    );
                    if !port["containerPort"]
                        .as_u64()
                        .is_some_and(|n| (1..=65535).contains(&n))
                    {
                        p.push((
                            format!("{pf}.containerPort"),
                            "must be between 1 and 65535".into(),
                        ));
                    }
                    if port
                        .get("protocol")
                        .is_some_and(|v| !matches!(v.as_str(), Some("TCP" | "UDP" | "SCTP")))
                    {
                        p.push((format!("{pf}.protocol"), "Unsupported value".into()));
                    }
                    if port
                        .get("name")
                        .is_some_and(|n| !n.as_str().is_some_and(|n| n.len() <= 15 && is_dns_label(n)))
                    {
                        p.push((format!("{pf}.name"), "must be an IANA_SVC_NAME".into()));
                    }
                }
                if let Some(r) = c.get("resources") {
                    keys_known(
                        r,
                        &["claims", "limits", "requests"],
                        &format!("{f}.resources"),
                        &mut p,
                    );
                    for part in ["limits", "requests"] {
                        for (k, q) in r[part].as_object().into_iter().flatten() {
                            if !q.as_str().is_some_and(is_quantity) {
                                p.push((format!("{f}.resources.{part}[{k}]"), "must be a quantity".into()));
                            }
                            if part == "requests" && k.contains('/') && r["limits"].get(k).is_none() {
                                p.push((
                                    format!("{f}.resources.limits[{k}]"),
                                    "Required value: Limit must be set for non overcommitable resources"
                                        .into(),
                                ));
                            }
                        }
                    }
                }
                for (j, vm) in c["volumeMounts"].as_array().into_iter().flatten().enumerate() {
                    if !vm["name"].as_str().is_some_and(|n| volumes.contains(&n)) {
                        p.push((format!("{f}.volumeMounts[{j}].name"), "Not found".into()));
                    }
                    if !vm["mountPath"].as_str().is_some_and(|m| m.starts_with('/')) {
                        p.push((
                            format!("{f}.volumeMounts[{j}].mountPath"),
                            "Required value".into(),
                        ));
                    }
                }
            }
        }
        _ => p.push(("spec.containers".into(), "Required value".into())),
    }
    if let Some(rp) = s.get("restartPolicy") {
        if !matches!(rp.as_str(), Some("Always" | "OnFailure" | "Never")) {
            p.push(("spec.restartPolicy".into(), "Unsupported value".into()));
        }
    }
    if s.get("activeDeadlineSeconds")
        .is_some_and(|v| v.as_i64().is_none_or(|n| n < 1))
    {
        p.push((
            "spec.activeDeadlineSeconds".into(),
            "must be greater than or equal to 1".into(),
        ));
    }
    if s.get("terminationGracePeriodSeconds")
        .is_some_and(|v| v.as_i64().is_none_or(|n| n < 0))
    {
        p.push((
            "spec.terminationGracePeriodSeconds".into(),
            "must be non-negative".into(),
        ));
    }
    if let Some(sa) = s.get("serviceAccountName") {
        if !sa.as_str().is_some_and(is_dns_subdomain) {
            p.push(("spec.serviceAccountName".into(), "must be a DNS subdomain".into()));
        }
    }
    if let Some(ns) = s.get("nodeSelector") {
        if !ns.as_object().is_some_and(|o| {
            o.iter()
                .all(|(k, v)| is_qualified_name(k) && v.as_str().is_some_and(is_label_value))
        }) {
            p.push((
                "spec.nodeSelector".into(),
                "must map label keys to label values".into(),
            ));
        }
    }
    for (i, t) in s["tolerations"].as_array().into_iter().flatten().enumerate() {
        let f = format!("spec.tolerations[{i}]");
        keys_known(
            t,
            &["key", "operator", "value", "effect", "tolerationSeconds"],
            &f,
            &mut p,
        );
        let op = t["operator"].as_str().unwrap_or("Equal");
        if !matches!(op, "Exists" | "Equal") {
            p.push((format!("{f}.operator"), "Unsupported value".into()));
        }
        if op == "Exists" && t["value"].as_str().is_some_and(|v| !v.is_empty()) {
            p.push((
                format!("{f}.operator"),
                "value must be empty when `operator` is 'Exists'".into(),
            ));
        }
        if !matches!(
            t["effect"].as_str(),
            None | Some("" | "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        ) {
            p.push((format!("{f}.effect"), "Unsupported value".into()));
        }
    }
    p
}

fn delete_options_problems(body: &Value) -> Vec<String> {
    let mut p = Vec::new();
    if body.is_null() {
        return p;
    }
    let Some(o) = body.as_object() else {
        return vec!["DeleteOptions must be an object".into()];
    };
    for k in o.keys() {
        if ![
            "kind",
            "apiVersion",
            "gracePeriodSeconds",
            "preconditions",
            "propagationPolicy",
            "orphanDependents",
            "dryRun",
        ]
        .contains(&k.as_str())
        {
            p.push(format!("unknown DeleteOptions field {k}"));
        }
    }
    if body.get("gracePeriodSeconds").is_some_and(|g| !g.is_u64()) {
        p.push("gracePeriodSeconds must be a non-negative integer".into());
    }
    if body
        .get("propagationPolicy")
        .is_some_and(|v| !matches!(v.as_str(), Some("Orphan" | "Background" | "Foreground")))
    {
        p.push("propagationPolicy must be Orphan, Background or Foreground".into());
    }
    p
}

// ---- selectors ---------------------------------------------------------------------------

fn label_selector_matches(selector: &str, pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|req| {
            if let Some((k, v)) = req.split_once("!=") {
                labels[k.trim()] != json!(v.trim())
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                labels[k.trim()] == json!(v.trim())
            } else if let Some(k) = req.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(req).is_some()
            }
        })
}

fn field_selector_matches(selector: &str, pod: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|req| {
            let (k, v, eq) = match req.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => match req.split_once("==").or_else(|| req.split_once('=')) {
                    Some((k, v)) => (k, v, true),
                    None => return false,
                },
            };
            let actual = match k.trim() {
                "metadata.name" => pod["metadata"]["name"].clone(),
                "metadata.namespace" => pod["metadata"]["namespace"].clone(),
                "status.phase" => pod["status"]["phase"].clone(),
                _ => return false,
            };
            (actual == json!(v.trim())) == eq
        })
}

struct Filter {
    labels: Option<String>,
    fields: Option<String>,
}

impl Filter {
    fn matches(&self, pod: &Value) -> bool {
        self.labels
            .as_deref()
            .is_none_or(|s| label_selector_matches(s, pod))
            && self
                .fields
                .as_deref()
                .is_none_or(|s| field_selector_matches(s, pod))
    }
}

// ---- the server ----------------------------------------------------------------------------

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            url_decode_pairs(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn check_query(q: &BTreeMap<String, String>, known: &[&str], what: &str, st: &mut State) {
    for k in q.keys() {
        if !known.contains(&k.as_str()) {
            st.invalid.push(format!("{what}: unknown query parameter {k}"));
        }
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let q = query(&req);
    let line = match req.uri().query() {
        Some(qs) => format!("{method} {path}?{qs}"),
        None => format!("{method} {path}"),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    state.lock().unwrap().requests.push(line.clone());
    let prefix = format!("/api/v1/namespaces/{NS}/pods");
    let rest = path.strip_prefix(&prefix);
    let (verb, name) = match (method.as_str(), rest) {
        ("POST", Some("")) => ("create", String::new()),
        ("GET", Some("")) if q.get("watch").map(String::as_str) == Some("true") => ("watch", String::new()),
        ("GET", Some("")) => ("list", String::new()),
        ("GET", Some(r)) if r.starts_with('/') && !r[1..].contains('/') => ("get", r[1..].to_owned()),
        ("DELETE", Some(r)) if r.starts_with('/') && !r[1..].contains('/') => ("delete", r[1..].to_owned()),
        _ => {
            state
                .lock()
                .unwrap()
                .invalid
                .push(format!("no such route: {line}"));
            return status_response(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Value::Null,
            );
        }
    };
    let fault = state.lock().unwrap().take_fault(verb);
    let mut after_apply = None;
    match fault {
        Some(FaultKind::Status(code)) => {
            let target = if verb == "create" {
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            } else {
                name.clone()
            };
            return fault_response(code, &target);
        }
        Some(FaultKind::StatusWith(code, reason, message)) => {
            return status_response(code, reason, message, Value::Null);
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::AfterApply(code)) => after_apply = Some(code),
        None => {}
    }
    let resp = match verb {
        "create" => create(&state, &body),
        "get" => get(&state, &name),
        "delete" => delete(&state, &name, &body),
        "list" => list(&state, &q),
        _ => watch(&state, &q),
    };
    match after_apply {
        Some(code) => fault_response(code, &name),
        None => resp,
    }
}

fn create(state: &Arc<Mutex<State>>, body: &[u8]) -> Response<Body> {
    let Ok(pod) = serde_json::from_slice::<Value>(body) else {
        state
            .lock()
            .unwrap()
            .invalid
            .push("create: body is not JSON".into());
        return status_response(
            400,
            "BadRequest",
            "the body of the request was in an unknown format",
            Value::Null,
        );
    };
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let problems = pod_problems(&pod, NS);
    let mut st = state.lock().unwrap();
    st.creates.push(pod.clone());
    if !problems.is_empty() {
        st.invalid.push(format!("create {name}: {problems:?}"));
        let causes: Vec<Value> = problems
            .iter()
            .map(|(f, m)| json!({ "reason": "FieldValueInvalid", "message": m, "field": f }))
            .collect();
        let text = problems
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        return status_response(
            422,
            "Invalid",
            &format!("Pod \"{name}\" is invalid: {text}"),
            json!({ "name": name, "kind": "Pod", "causes": causes }),
        );
    }
    if st.pods.contains_key(&name) {
        return fault_response(409, &name);
    }
    let rv = st.bump();
    st.next_uid += 1;
    let mut stored = pod;
    let m = &mut stored["metadata"];
    m["namespace"] = json!(NS);
    m["uid"] = json!(format!(
        "0b1d{:04x}-5c1e-4e7a-9d2b-{:012x}",
        st.next_uid, st.next_uid
    ));
    m["resourceVersion"] = json!(rv.to_string());
    m["creationTimestamp"] = json!(now_rfc3339());
    let spec = &mut stored["spec"];
    for (k, v) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec["terminationGracePeriodSeconds"] = json!(30);
    }
    if spec.get("serviceAccountName").is_none() {
        spec["serviceAccountName"] = json!("default");
    }
    stored["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
    st.pods.insert(name.clone(), stored.clone());
    st.push("ADDED", stored.clone());
    let plan = st.plan.clone();
    drop(st);
    tokio::spawn(kubelet(state.clone(), name, plan));
    json_response(201, &stored)
}

fn get(state: &Arc<Mutex<State>>, name: &str) -> Response<Body> {
    let st = state.lock().unwrap();
    match st.pods.get(name) {
        Some(pod) => json_response(200, pod),
        None => fault_response(404, name),
    }
}

fn delete(state: &Arc<Mutex<State>>, name: &str, body: &[u8]) -> Response<Body> {
    let opts: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                state
                    .lock()
                    .unwrap()
                    .invalid
                    .push(format!("delete {name}: body is not JSON"));
                return status_response(400, "BadRequest", "invalid DeleteOptions", Value::Null);
            }
        }
    };
    let problems = delete_options_problems(&opts);
    let mut st = state.lock().unwrap();
    st.deletes.push((name.to_owned(), opts.clone()));
    if !problems.is_empty() {
        st.invalid.push(format!("delete {name}: {problems:?}"));
        return status_response(400, "BadRequest", &problems.join(", "), Value::Null);
    }
    let Some(pod) = st.pods.get(name).cloned() else {
        return fault_response(404, name);
    };
    if let Some(uid) = opts["preconditions"]["uid"].as_str() {
        let actual = pod["metadata"]["uid"].as_str().unwrap_or("");
        if uid != actual {
            return status_response(
                409,
                "Conflict",
                &format!("Operation cannot be fulfilled on Pod \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                json!({ "name": name, "kind": "Pod" }),
            );
        }
    }
    if pod["metadata"].get("deletionTimestamp").is_some() {
        // Already terminating: the API answers with the object as it is.
        return json_response(200, &pod);
    }
    let grace = opts["gracePeriodSeconds"].as_u64().unwrap_or_else(|| {
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30)
    });
    let running = st.runners.contains_key(name);
    if grace == 0 || !running {
        let gone = st.remove(name).unwrap_or(pod);
        return json_response(200, &gone);
    }
    // Graceful: mark, signal the runner (SIGTERM: it drains), remove when it exits or at the
    // end of the grace period (SIGKILL).
    st.update(name, |p| {
        p["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    });
    if let Some(slot) = st.runners.get(name) {
        slot.token.cancel();
    }
    let updated = st.pods.get(name).cloned().unwrap_or(Value::Null);
    drop(st);
    let state = state.clone();
    let name = name.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(grace)).await;
        let mut st = state.lock().unwrap();
        if st
            .pods
            .get(&name)
            .is_some_and(|p| p["metadata"].get("deletionTimestamp").is_some())
        {
            st.remove(&name);
        }
    });
    json_response(200, &updated)
}

fn list(state: &Arc<Mutex<State>>, q: &BTreeMap<String, String>) -> Response<Body> {
    let mut st = state.lock().unwrap();
    check_query(
        q,
        &[
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "timeoutSeconds",
        ],
        "list",
        &mut st,
    );
    let filter = Filter {
        labels: q.get("labelSelector").cloned(),
        fields: q.get("fieldSelector").cloned(),
    };
    let all: Vec<Value> = st
        .pods
        .values()
        .filter(|p| filter.matches(p))
        .map(|p| {
            // List items carry no kind/apiVersion.
            let mut p = p.clone();
            if let Some(o) = p.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            p
        })
        .collect();
    let offset: usize = q
        .get("continue")
        .and_then(|c| c.strip_prefix("offset-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX)
        .min(st.max_page);
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let mut metadata = json!({ "resourceVersion": st.rv.to_string() });
    if offset + page.len() < all.len() {
        metadata["continue"] = json!(format!("offset-{}", offset + page.len()));
        metadata["remainingItemCount"] = json!(all.len() - offset - page.len());
    }
    json_response(
        200,
        &json!({ "kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": page }),
    )
}

fn line(event: &Value) -> Bytes {
    let mut v = serde_json::to_vec(event).unwrap();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch(state: &Arc<Mutex<State>>, q: &BTreeMap<String, String>) -> Response<Body> {
    let mut st = state.lock().unwrap();
    check_query(
        q,
        &[
            "watch",
            "resourceVersion",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "labelSelector",
            "fieldSelector",
            "sendInitialEvents",
            "resourceVersionMatch",
        ],
        "watch",
        &mut st,
    );
    st.watches.push(q.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let filter = Filter {
        labels: q.get("labelSelector").cloned(),
        fields: q.get("fieldSelector").cloned(),
    };
    let start = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let expired = if st.watch_expired > 0 {
        st.watch_expired -= 1;
        true
    } else {
        false
    };
    let cut = if st.watch_cuts > 0 {
        st.watch_cuts -= 1;
        true
    } else {
        false
    };
    let mut notified = st.notify.subscribe();
    let generation = st.cut_generation;
    let root = st.root.clone();
    let every = st.bookmark_every;
    drop(st);
    let state = state.clone();
    tokio::spawn(async move {
        if expired {
            let current = state.lock().unwrap().rv;
            let _ = tx
                .send(line(
                    &json!({ "type": "ERROR", "object": status_body(410, "Expired",
                    &format!("too old resource version: {start} ({current})"), Value::Null) }),
                ))
                .await;
            return;
        }
        let mut from: u64 = start.parse().unwrap_or(0);
        let mut initial = Vec::new();
        if start.is_empty() || start == "0" {
            // "Any" version: the current state first, as ADDED events.
            let st = state.lock().unwrap();
            initial = st.pods.values().filter(|p| filter.matches(p)).cloned().collect();
            from = st.rv;
        }
        for obj in initial {
            if tx
                .send(line(&json!({ "type": "ADDED", "object": obj })))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = Instant::now() + timeout;
        let mut next_bookmark = Instant::now() + every;
        loop {
            let batch: Vec<Value> = {
                let st = state.lock().unwrap();
                if st.cut_generation > generation {
                    return;
                }
                let batch = st
                    .events
                    .iter()
                    .filter(|e| e.rv > from && filter.matches(&e.object))
                    .map(|e| json!({ "type": e.kind, "object": e.object }))
                    .collect();
                from = st.rv;
                batch
            };
            for ev in batch {
                if tx.send(line(&ev)).await.is_err() {
                    return;
                }
                if cut {
                    // The connection drops mid-watch.
                    return;
                }
            }
            tokio::select! {
                changed = notified.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {
                    let rv = {
                        let mut st = state.lock().unwrap();
                        st.bookmarks_sent += 1;
                        st.last_bookmark_rv = st.rv;
                        st.rv
                    };
                    let bm = json!({ "type": "BOOKMARK", "object": { "kind": "Pod", "apiVersion": "v1",
                        "metadata": { "resourceVersion": rv.to_string(), "creationTimestamp": null } } });
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                    next_bookmark = Instant::now() + every;
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = root.cancelled() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

// ---- the kubelet -------------------------------------------------------------------------

fn container_status(name: &str, state: Value, ready: bool) -> Value {
    json!({ "name": name, "state": state, "ready": ready, "restartCount": 0, "image": IMAGE, "imageID": "", "started": ready })
}

fn container_name(pod: &Value) -> String {
    pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or("runner")
        .to_owned()
}

fn pod_env(pod: &Value) -> BTreeMap<String, String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect()
}

async fn step() {
    tokio::time::sleep(Duration::from_millis(15)).await;
}

/// Scheduled on node-1: `PodScheduled=True`, the container waiting `ContainerCreating`.
fn schedule(st: &mut State, name: &str) -> bool {
    st.update(name, |p| {
        let c = container_name(p);
        p["spec"]["nodeName"] = json!("node-1");
        p["status"]["conditions"] =
            json!([{ "type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339() }]);
        p["status"]["hostIP"] = json!("192.168.49.2");
        p["status"]["containerStatuses"] = json!([container_status(
            &c,
            json!({ "waiting": { "reason": "ContainerCreating" } }),
            false
        )]);
    })
}

fn set_running(st: &mut State, name: &str) -> bool {
    st.next_ip += 1;
    let ip = format!("10.244.{}.{}", st.next_ip / 250, st.next_ip % 250 + 2);
    st.update(name, |p| {
        let c = container_name(p);
        let now = now_rfc3339();
        p["status"]["phase"] = json!("Running");
        p["status"]["podIP"] = json!(ip);
        p["status"]["podIPs"] = json!([{ "ip": ip }]);
        p["status"]["startTime"] = json!(now);
        p["status"]["conditions"] = json!([
            { "type": "PodScheduled", "status": "True" }, { "type": "Initialized", "status": "True" },
            { "type": "ContainersReady", "status": "True" }, { "type": "Ready", "status": "True" }]);
        p["status"]["containerStatuses"] = json!([container_status(
            &c,
            json!({ "running": { "startedAt": now } }),
            true
        )]);
    })
}

fn set_terminated(st: &mut State, name: &str, phase: &str, reason: &str, exit_code: i64) -> bool {
    st.update(name, |p| {
        let c = container_name(p);
        p["status"]["phase"] = json!(phase);
        p["status"]["containerStatuses"] = json!([container_status(&c, json!({ "terminated": {
            "exitCode": exit_code, "reason": reason, "startedAt": now_rfc3339(), "finishedAt": now_rfc3339() } }), false)]);
    })
}

fn set_waiting(st: &mut State, name: &str, reason: &str, message: &str) -> bool {
    st.update(name, |p| {
        let c = container_name(p);
        p["status"]["containerStatuses"] = json!([container_status(
            &c,
            json!({ "waiting": { "reason": reason, "message": message } }),
            false
        )]);
    })
}

async fn kubelet(state: Arc<Mutex<State>>, name: String, plan: Plan) {
    step().await;
    let selector = format!("metadata.name={name}");
    let until = Instant::now() + Duration::from_secs(5);
    while state.lock().unwrap().hold_until_watched
        && !state
            .lock()
            .unwrap()
            .watches
            .iter()
            .any(|w| w.get("fieldSelector") == Some(&selector))
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (pod, root) = {
        let st = state.lock().unwrap();
        (st.pods.get(&name).cloned(), st.root.clone())
    };
    let Some(pod) = pod else { return };
    let image = pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    match plan {
        Plan::Unschedulable(message) => {
            state.lock().unwrap().update(&name, |p| {
                p["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": now_rfc3339() }]);
            });
        }
        Plan::ImagePull => {
            if !schedule(&mut state.lock().unwrap(), &name) {
                return;
            }
            step().await;
            set_waiting(&mut state.lock().unwrap(), &name, "ErrImagePull",
                &format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"));
            step().await;
            set_waiting(
                &mut state.lock().unwrap(),
                &name,
                "ImagePullBackOff",
                &format!("Back-off pulling image \"{image}\""),
            );
        }
        Plan::ConfigError => {
            if !schedule(&mut state.lock().unwrap(), &name) {
                return;
            }
            step().await;
            set_waiting(
                &mut state.lock().unwrap(),
                &name,
                "CreateContainerConfigError",
                "secret \"shop-db\" not found",
            );
        }
        Plan::Stuck => {
            schedule(&mut state.lock().unwrap(), &name);
        }
        Plan::OomKilled => {
            if !schedule(&mut state.lock().unwrap(), &name) {
                return;
            }
            step().await;
            if !set_running(&mut state.lock().unwrap(), &name) {
                return;
            }
            // Dies after the spawn has placed it: once the readiness probe asks about it.
            let asked = format!("GET /api/v1/namespaces/{NS}/pods/{name}");
            let until = Instant::now() + Duration::from_secs(20);
            while !state.lock().unwrap().requests.contains(&asked) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            set_terminated(&mut state.lock().unwrap(), &name, "Failed", "OOMKilled", 137);
        }
        Plan::RunsWithoutRunner => {
            if !schedule(&mut state.lock().unwrap(), &name) {
                return;
            }
            step().await;
            set_running(&mut state.lock().unwrap(), &name);
        }
        Plan::Run => {
            if !schedule(&mut state.lock().unwrap(), &name) {
                return;
            }
            // The "image" starts: a real flame-http runner configured from the Pod's env.
            let env = pod_env(&pod);
            let mut config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
            // The Pod would listen on 0.0.0.0:<port> of its own network; here 127.0.0.1.
            config.listen = Some("127.0.0.1:0".parse().unwrap());
            let runner_id = env
                .get("FLAME_RUNNER_ID")
                .cloned()
                .unwrap_or_else(|| name.clone());
            let parent_timeout = env
                .get("FLAME_PARENT_TIMEOUT")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(20));
            let dispatcher = Arc::new(
                Dispatcher::new(registry(), runner_id).with_parent(env.contains_key("FLAME_PARENT_ID")),
            );
            let options = ServerOptions::default()
                .announce(false)
                .handle_signals(false)
                .drain_grace(Duration::from_secs(1));
            let bound = HttpServer::with_options(options)
                .bind(dispatcher.clone(), &config)
                .await
                .unwrap();
            let token = root.child_token();
            {
                let mut st = state.lock().unwrap();
                if !st.pods.contains_key(&name) {
                    return;
                }
                st.runners.insert(
                    name.clone(),
                    RunnerSlot {
                        url: bound.url(),
                        token: token.clone(),
                    },
                );
                set_running(&mut st, &name);
            }
            // The runner's failsafe: it exits when its parent is silent too long.
            let failsafe = {
                let token = token.clone();
                let dispatcher = dispatcher.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                        if dispatcher
                            .liveness()
                            .parent_silent_ms
                            .is_some_and(|ms| Duration::from_millis(ms) >= parent_timeout)
                        {
                            token.cancel();
                            return;
                        }
                    }
                })
            };
            let _ = bound.run(token).await;
            failsafe.abort();
            // The container exited: a Pod being deleted goes; another one is Succeeded.
            let mut st = state.lock().unwrap();
            st.runners.remove(&name);
            let terminating = st
                .pods
                .get(&name)
                .is_some_and(|p| p["metadata"].get("deletionTimestamp").is_some());
            if terminating {
                st.remove(&name);
            } else if st.pods.contains_key(&name) && !root.is_cancelled() {
                set_terminated(&mut st, &name, "Succeeded", "Completed", 0);
            }
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, root: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = root.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let st = state.clone();
        let root = root.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(handle(st, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = root.cancelled() => {}
            }
        });
    }
}

impl FakeK8s {
    pub async fn start() -> FakeK8s {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let root = CancellationToken::new();
        let (notify, _) = tokio::sync::watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            rv: 1000,
            pods: BTreeMap::new(),
            events: Vec::new(),
            plan: Plan::Run,
            faults: Vec::new(),
            requests: Vec::new(),
            creates: Vec::new(),
            deletes: Vec::new(),
            invalid: Vec::new(),
            watch_cuts: 0,
            hold_until_watched: false,
            watch_expired: 0,
            watches: Vec::new(),
            max_page: usize::MAX,
            bookmark_every: Duration::from_millis(500),
            bookmarks_sent: 0,
            last_bookmark_rv: 0,
            cut_generation: 0,
            next_uid: 0,
            next_ip: 0,
            runners: HashMap::new(),
            notify,
            root: root.clone(),
        }));
        tokio::spawn(serve(listener, state.clone(), root.clone()));
        FakeK8s { addr, state, root }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this API server (default namespace [`NS`]).
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().unwrap());
        config.default_namespace = NS.to_owned();
        // The backend retries itself (as K8sBackend::connect sets it up).
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    }

    /// Settings for runners from [`IMAGE`] (no parent Pod), with quick retries.
    pub fn config(&self) -> K8sConfig {
        K8sConfig::from_image(IMAGE)
            .namespace(NS)
            .runner_port(PORT)
            .delete_grace(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(5))
            .retry(fast_retry())
    }

    /// The backend under test: every Pod resolves to its stand-in runner on 127.0.0.1.
    pub fn backend(&self, config: K8sConfig) -> K8sBackend {
        K8sBackend::new(self.client(), config)
            .unwrap()
            .with_resolver(self.resolver())
    }

    /// Maps each Pod to its stand-in runner; checks the backend hands over the Pod's 10.x IP
    /// and the runner port, and never lets the Pod IP be dialled.
    pub fn resolver(&self) -> AddressResolver {
        let state = self.state.clone();
        Arc::new(move |a: &RunnerAddress| {
            let host = a.host.as_deref().unwrap_or("");
            assert!(host.starts_with("10.244."), "expected the Pod IP, got {host:?}");
            assert_eq!(a.port, PORT, "the runner port");
            let st = state.lock().unwrap();
            assert_eq!(
                st.pods
                    .get(&a.backend_id)
                    .and_then(|p| p["status"]["podIP"].as_str()),
                Some(host),
                "the address is the Pod's own IP"
            );
            Some(match st.runners.get(&a.backend_id) {
                Some(slot) => slot.url.clone(),
                // Nothing listens there: the runner is not up.
                None => "http://127.0.0.1:1".to_owned(),
            })
        })
    }

    /// Cuts every open watch stream (the connection drops).
    pub fn cut_watches_now(&self) {
        let mut st = self.state.lock().unwrap();
        st.cut_generation += 1;
        let rv = st.rv;
        let _ = st.notify.send(rv);
    }

    pub fn set_plan(&self, plan: Plan) {
        self.state.lock().unwrap().plan = plan;
    }

    pub fn fault(&self, verb: &'static str, times: usize, kind: FaultKind) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push(Fault { verb, times, kind });
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().pods.get(name).cloned()
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.state.lock().unwrap().pods.keys().cloned().collect()
    }

    /// Pods labelled with this runner id (what a spawn may leave behind).
    pub fn pods_of_runner(&self, runner_id: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .pods
            .values()
            .filter(|p| p["metadata"]["annotations"]["flame.runner"] == json!(runner_id))
            .count()
    }

    pub fn creates(&self) -> Vec<Value> {
        self.state.lock().unwrap().creates.clone()
    }

    pub fn deletes(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().deletes.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn invalid(&self) -> Vec<String> {
        self.state.lock().unwrap().invalid.clone()
    }

    pub fn watches(&self) -> Vec<BTreeMap<String, String>> {
        self.state.lock().unwrap().watches.clone()
    }

    pub fn events_of(&self, name: &str) -> Vec<(u64, &'static str)> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.object["metadata"]["name"] == json!(name))
            .map(|e| (e.rv, e.kind))
            .collect()
    }

    /// Puts a Pod in the API as if someone else had created it (the parent, a leftover).
    pub fn insert_pod(&self, mut pod: Value) {
        let mut st = self.state.lock().unwrap();
        let rv = st.bump();
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        pod["metadata"]["namespace"] = json!(NS);
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        if pod["metadata"].get("uid").is_none() {
            st.next_uid += 1;
            pod["metadata"]["uid"] = json!(format!(
                "1eff{:04x}-0000-4000-8000-{:012x}",
                st.next_uid, st.next_uid
            ));
        }
        st.pods.insert(name, pod.clone());
        st.push("ADDED", pod);
    }

    /// The parent's own Pod, as a Deployment would make it.
    pub fn insert_parent_pod(&self) {
        self.insert_pod(json!({
            "metadata": {
                "name": PARENT_POD, "uid": PARENT_UID,
                "labels": { "app": APP, "pod-template-hash": "7d9c5b" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7d9c5b",
                                      "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true }]
            },
            "spec": {
                "serviceAccountName": "shop",
                "imagePullSecrets": [{ "name": "registry-creds" }],
                "securityContext": { "runAsNonRoot": true, "runAsUser": 10001 },
                "nodeSelector": { "kubernetes.io/os": "linux" },
                "containers": [{
                    "name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                    "command": ["/app/shop"], "args": ["--serve"],
                    "env": [
                        { "name": "FLAME_MODE", "value": "parent" },
                        { "name": "RUST_LOG", "value": "info" },
                        { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        { "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "shop-db", "key": "url" } } }
                    ],
                    "envFrom": [{ "configMapRef": { "name": "shop-config" } }],
                    "ports": [{ "name": "http", "containerPort": 3000, "protocol": "TCP" }],
                    "readinessProbe": { "httpGet": { "path": "/healthz", "port": 3000 } },
                    "resources": { "requests": { "cpu": "250m", "memory": "256Mi" } },
                    "volumeMounts": [
                        { "name": "cache", "mountPath": "/cache" },
                        { "name": "kube-api-access-7xk2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }
                    ]
                }, {
                    "name": "log-shipper", "image": "fluent/fluent-bit:3", "ports": [{ "containerPort": 2020 }]
                }],
                "volumes": [
                    { "name": "cache", "emptyDir": { "sizeLimit": "1Gi" } },
                    { "name": "kube-api-access-7xk2p", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }
                ]
            },
            "status": { "phase": "Running", "podIP": "10.244.9.9", "hostIP": "192.168.49.2" }
        }));
    }

    /// Waits (event-driven, bounded) until `f` holds for the state.
    pub async fn wait_for(&self, what: &str, within: Duration, f: impl Fn(&State) -> bool) {
        let mut rx = self.state.lock().unwrap().notify.subscribe();
        let until = Instant::now() + within;
        loop {
            if f(&self.state.lock().unwrap()) {
                return;
            }
            tokio::select! {
                _ = rx.changed() => {}
                // Some changes (a runner starting) come without an event.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(until) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(50))
        .max_retry_after(Duration::from_secs(2))
}

/// A spawn request as a pool makes it (app [`APP`], pool `default`).
pub fn spawn_request(runner_id: &str, parent: &str, boot: Duration) -> SpawnRequest {
    let mut env = BTreeMap::new();
    env.insert("FLAME_MODE".to_string(), "runner".to_string());
    env.insert("FLAME_LISTEN".to_string(), "127.0.0.1:0".to_string());
    env.insert("FLAME_PARENT_ID".to_string(), parent.to_string());
    env.insert("FLAME_PARENT_TIMEOUT".to_string(), "20000".to_string());
    env.insert("FLAME_RUNNER_ID".to_string(), runner_id.to_string());
    env.insert("FLAME_SECRET".to_string(), "runner-secret-1".to_string());
    let labels = BTreeMap::from([
        ("flame.app".to_string(), APP.to_string()),
        ("flame.pool".to_string(), "default".to_string()),
        ("flame.parent".to_string(), parent.to_string()),
        ("flame.runner".to_string(), runner_id.to_string()),
    ]);
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

/// Starts a runner as a pool does: `spawn` places the Pod, core's readiness probe pings its
/// runner over HTTP until healthy (or deletes it).
pub async fn start(
    backend: &K8sBackend,
    request: SpawnRequest,
) -> flame_core::Result<flame_core::RunnerHandle> {
    flame_core::backend::readiness::start_runner(backend, request, &flame_http::HttpTransport::new()).await
}

/// The Kubernetes error behind a backend error.
pub fn k8s(err: &Error) -> &flame_backend_k8s::K8sError {
    flame_backend_k8s::K8sError::of(err).unwrap_or_else(|| panic!("not a K8sError: {err:?}"))
}
