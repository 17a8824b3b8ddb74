//! Runner Pods: their names, labels and spec (from the parent Pod's own spec or an image), and
//! what a Pod's status says about a booting runner.

use crate::config::{K8sConfig, PodSettings};
use crate::error::{K8sError, K8sErrorKind};
use flame_core::backend::labels;
use flame_core::{Error, Result, SpawnRequest};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, LocalObjectReference, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::{BTreeMap, BTreeSet};

/// The name of the runner container and of its port.
pub const RUNNER_CONTAINER: &str = "runner";
/// The name of the runner's container port.
pub const RUNNER_PORT_NAME: &str = "flame";

/// Where Kubernetes mounts a Pod's ServiceAccount token; its volume is never copied.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A Kubernetes label value from any text: at most 63 characters of `[A-Za-z0-9._-]`, starting
/// and ending with a letter or digit (other characters become `_`). The exact text is kept
/// in an annotation of the same key, so nothing is lost.
///
/// ```
/// use flame_backend_k8s::label_value;
/// assert_eq!(label_value("media app/v2"), "media_app_v2");
/// assert_eq!(label_value("-x-"), "x");
/// assert_eq!(label_value(&"a".repeat(80)).len(), 63);
/// ```
pub fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The Pod name of a runner: `flame-<runner id>`, lower-case DNS label (letters, digits, `-`),
/// at most 63 characters; a long id keeps its tail (the unique part of a pool's runner ids).
///
/// ```
/// use flame_backend_k8s::pod_name;
/// assert_eq!(pod_name("default-3f2a9c"), "flame-default-3f2a9c");
/// assert_eq!(pod_name("GPU_pool-1"), "flame-gpu-pool-1");
/// assert!(pod_name(&"x".repeat(100)).len() <= 63);
/// ```
pub fn pod_name(runner_id: &str) -> String {
    let mut id: String = runner_id
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while id.contains("--") {
        id = id.replace("--", "-");
    }
    let id = id.trim_matches('-');
    // "flame-" is 6 characters; keep the tail of a long id.
    let room = 63 - 6;
    let id = if id.len() > room {
        &id[id.len() - room..]
    } else {
        id
    };
    let id = id.trim_matches('-');
    if id.is_empty() {
        "flame-runner".to_owned()
    } else {
        format!("flame-{id}")
    }
}

/// What the parent Pod contributes to runner Pods.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParentTemplate {
    pub name: String,
    pub uid: String,
    pub container: Container,
    pub service_account_name: Option<String>,
    pub automount_service_account_token: Option<bool>,
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub security_context: Option<PodSecurityContext>,
    pub volumes: Vec<Volume>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl ParentTemplate {
    /// The template from the parent's Pod (its application container: `container`, else the
    /// first).
    pub fn from_pod(pod: &Pod, container: Option<&str>, copy_volumes: bool) -> Result<Self> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().ok_or_else(|| {
            Error::from(K8sError::new(
                K8sErrorKind::MalformedReply,
                format!("the parent Pod {name} has no metadata.uid"),
            ))
        })?;
        let spec = pod.spec.clone().unwrap_or_default();
        let chosen = match container {
            Some(want) => spec.containers.iter().find(|c| c.name == want).ok_or_else(|| {
                Error::from(K8sError::new(
                    K8sErrorKind::Config,
                    format!(
                        "the parent Pod {name} has no container {want:?} (it has: {})",
                        spec.containers
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            })?,
            None => spec.containers.first().ok_or_else(|| {
                Error::from(K8sError::new(
                    K8sErrorKind::MalformedReply,
                    format!("the parent Pod {name} has no containers"),
                ))
            })?,
        };
        let mut c = chosen.clone();
        // The ServiceAccount token is mounted by Kubernetes for the runner itself.
        let mounts: Vec<_> = c
            .volume_mounts
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| copy_volumes && m.mount_path != SERVICE_ACCOUNT_MOUNT && !is_token_volume(&m.name))
            .collect();
        let mounted: BTreeSet<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
        let volumes = spec
            .volumes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| mounted.contains(v.name.as_str()))
            .collect();
        c.volume_mounts = (!mounts.is_empty()).then_some(mounts);
        Ok(ParentTemplate {
            name,
            uid,
            container: c,
            service_account_name: spec.service_account_name.clone(),
            automount_service_account_token: spec.automount_service_account_token,
            image_pull_secrets: spec.image_pull_secrets.clone(),
            security_context: spec.security_context.clone(),
            volumes,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
        })
    }
}

/// The projected ServiceAccount token volume Kubernetes adds to every Pod.
fn is_token_volume(name: &str) -> bool {
    name.starts_with("kube-api-access-")
}

/// The runner variables the backend sets (any same-named variable of the parent is dropped).
pub(crate) fn runner_env(cfg: &K8sConfig, req: &SpawnRequest) -> Result<BTreeMap<String, String>> {
    let secret = req
        .secret
        .as_ref()
        .map(|s| s.expose().to_owned())
        .or_else(|| req.env.get("FLAME_SECRET").cloned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::from(K8sError::new(
                K8sErrorKind::Config,
                "the Kubernetes backend needs a secret (FLAME_SECRET or the pool's secret): runners \
                 listen on the Pod network and must verify who calls them",
            ))
        })?;
    let mut env = cfg.env.clone();
    env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("FLAME_MODE".into(), "runner".into());
    env.insert("FLAME_LISTEN".into(), format!("0.0.0.0:{}", cfg.runner_port));
    env.insert("FLAME_SECRET".into(), secret);
    env.entry("FLAME_PARENT_ID".into())
        .or_insert_with(|| req.parent_id.clone());
    env.entry("FLAME_RUNNER_ID".into())
        .or_insert_with(|| req.runner_id.clone());
    env.entry("FLAME_POOL".into()).or_insert_with(|| req.pool.clone());
    Ok(env)
}

/// The runner Pod for `req`.
pub(crate) fn build_pod(
    cfg: &K8sConfig,
    parent: Option<&ParentTemplate>,
    namespace: &str,
    req: &SpawnRequest,
) -> Result<Pod> {
    let settings: PodSettings = cfg.settings_for(&req.pool);
    let name = pod_name(&req.runner_id);
    let ours = runner_env(cfg, req)?;

    // Labels: user's, the request's (flame.* keys), then the flame labels (label-safe values).
    // Annotations: user's, then the exact flame values.
    let mut pod_labels = settings.labels.clone();
    let mut annotations = settings.annotations.clone();
    for (k, v) in &req.labels {
        pod_labels.insert(k.clone(), label_value(v));
    }
    for (key, value) in [
        (labels::APP, &req.app),
        (labels::POOL, &req.pool),
        (labels::PARENT, &req.parent_id),
        (labels::RUNNER, &req.runner_id),
    ] {
        pod_labels.insert(key.to_owned(), label_value(value));
        annotations.insert(key.to_owned(), value.clone());
    }

    let mut container = match parent {
        Some(p) => {
            let mut c = p.container.clone();
            c.name = RUNNER_CONTAINER.to_owned();
            // The runner serves flame only: no probes for the parent's own ports, no hooks.
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.lifecycle = None;
            c.ports = None;
            c.resize_policy = None;
            c.restart_policy = None;
            c.stdin = None;
            c.stdin_once = None;
            c.tty = None;
            c
        }
        None => Container {
            name: RUNNER_CONTAINER.to_owned(),
            ..Container::default()
        },
    };
    if let Some(image) = &cfg.image {
        container.image = Some(image.clone());
    }
    if container.image.as_deref().is_none_or(str::is_empty) {
        return Err(K8sError::new(K8sErrorKind::Config, "no image for runner Pods").into());
    }
    if let Some(command) = &cfg.command {
        container.command = Some(command.clone());
    }
    if let Some(args) = &cfg.args {
        container.args = Some(args.clone());
    }
    if let Some(policy) = &cfg.image_pull_policy {
        container.image_pull_policy = Some(policy.clone());
    }
    // The parent's env (minus what we set), then ours.
    let mut env: Vec<EnvVar> = container
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !ours.contains_key(&e.name))
        .collect();
    env.extend(ours.into_iter().map(|(name, value)| EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }));
    container.env = Some(env);
    container.ports = Some(vec![ContainerPort {
        name: Some(RUNNER_PORT_NAME.to_owned()),
        container_port: i32::from(cfg.runner_port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }]);
    if settings.has_resources() {
        let q = |m: &BTreeMap<String, String>| -> Option<BTreeMap<String, Quantity>> {
            (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
        };
        container.resources = Some(ResourceRequirements {
            requests: q(&settings.requests),
            limits: q(&settings.limits),
            ..ResourceRequirements::default()
        });
    }

    let mut node_selector = parent.map(|p| p.node_selector.clone()).unwrap_or_default();
    node_selector.extend(settings.node_selector.clone());
    let mut tolerations = parent.map(|p| p.tolerations.clone()).unwrap_or_default();
    tolerations.extend(settings.tolerations.iter().cloned());

    let spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".to_owned()),
        active_deadline_seconds: cfg
            .active_deadline
            .map(|d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)),
        termination_grace_period_seconds: Some(i64::try_from(cfg.delete_grace.as_secs()).unwrap_or(i64::MAX)),
        service_account_name: cfg
            .service_account
            .clone()
            .or_else(|| parent.and_then(|p| p.service_account_name.clone())),
        automount_service_account_token: parent.and_then(|p| p.automount_service_account_token),
        image_pull_secrets: parent.and_then(|p| p.image_pull_secrets.clone()),
        security_context: parent.and_then(|p| p.security_context.clone()),
        volumes: parent.map(|p| p.volumes.clone()).filter(|v| !v.is_empty()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        ..PodSpec::default()
    };
    let owner_references = parent.map(|p| {
        vec![OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name: p.name.clone(),
            uid: p.uid.clone(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }]
    });
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// A flame value of a Pod: the exact annotation, else the label.
pub(crate) fn flame_value<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| pod.metadata.labels.as_ref().and_then(|l| l.get(key)))
        .map(String::as_str)
}

/// The runner port of a Pod (its container port named `flame`).
pub(crate) fn runner_port(pod: &Pod) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(RUNNER_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// What a Pod's status says about a booting runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Boot {
    /// Not yet running: the reason and message of the wait, if Kubernetes gave one.
    Waiting { reason: String, message: String },
    /// Running with this Pod IP.
    Running(String),
    /// It will not become a runner.
    Failed(K8sErrorKind, String, String),
}

/// Container waiting reasons that never resolve by waiting.
const IMAGE_REASONS: [&str; 3] = ["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];
const CONFIG_REASONS: [&str; 3] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Reads a Pod's status.
pub(crate) fn assess(pod: &Pod) -> Boot {
    if pod.metadata.deletion_timestamp.is_some() {
        return Boot::Failed(
            K8sErrorKind::PodFailed,
            "Terminating".into(),
            "the Pod is being deleted".into(),
        );
    }
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let containers = status.container_statuses.clone().unwrap_or_default();
    // A container that ended, whatever the phase says yet.
    for c in &containers {
        if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            let reason = t.reason.clone().unwrap_or_else(|| "Terminated".into());
            let mut message = format!("container {} exited with code {}", c.name, t.exit_code);
            if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
                message.push_str(": ");
                message.push_str(m);
            }
            return Boot::Failed(K8sErrorKind::PodFailed, reason, message);
        }
    }
    if matches!(phase, "Failed" | "Succeeded") {
        let reason = status.reason.clone().unwrap_or_else(|| phase.to_owned());
        let message = status
            .message
            .clone()
            .unwrap_or_else(|| format!("the Pod's phase is {phase}"));
        return Boot::Failed(K8sErrorKind::PodFailed, reason, message);
    }
    for c in &containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            if IMAGE_REASONS.contains(&reason.as_str()) {
                return Boot::Failed(K8sErrorKind::ImagePull, reason, message);
            }
            if CONFIG_REASONS.contains(&reason.as_str()) {
                return Boot::Failed(K8sErrorKind::ContainerConfig, reason, message);
            }
        }
    }
    if phase == "Running" {
        if let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) {
            return Boot::Running(ip);
        }
        return Boot::Waiting {
            reason: "Running".into(),
            message: "running without a Pod IP yet".into(),
        };
    }
    // Pending: why.
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Boot::Waiting {
            reason: "Unschedulable".into(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    for c in &containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            return Boot::Waiting {
                reason: w.reason.clone().unwrap_or_else(|| "Waiting".into()),
                message: w.message.clone().unwrap_or_default(),
            };
        }
    }
    Boot::Waiting {
        reason: phase.to_owned(),
        message: String::new(),
    }
}

/// Whether a container of the Pod has ended (with `restartPolicy: Never` it stays ended):
/// its runner is gone even while the phase still says `Running`.
pub(crate) fn container_ended(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .any(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some())
}

/// What a Pod's status says about how it ended (or where it stands), for people: `Pod x:
/// phase Failed, reason Evicted: The node was low on resource: memory; container runner
/// terminated: OOMKilled, exit code 137`.
pub(crate) fn describe(name: &str, pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut text = format!(
        "Pod {name}: phase {}",
        status.phase.as_deref().unwrap_or("Pending")
    );
    if pod.metadata.deletion_timestamp.is_some() {
        text.push_str(" (being deleted)");
    }
    match (status.reason.as_deref(), status.message.as_deref()) {
        (Some(reason), Some(message)) if !message.is_empty() => {
            text.push_str(&format!(", reason {reason}: {message}"))
        }
        (Some(reason), _) => text.push_str(&format!(", reason {reason}")),
        (None, Some(message)) if !message.is_empty() => text.push_str(&format!(": {message}")),
        _ => {}
    }
    for c in status.container_statuses.iter().flatten() {
        let Some(state) = c.state.as_ref() else {
            continue;
        };
        if let Some(t) = &state.terminated {
            text.push_str(&format!(
                "; container {} terminated: {}, exit code {}",
                c.name,
                t.reason.as_deref().unwrap_or("Terminated"),
                t.exit_code
            ));
            if let Some(signal) = t.signal.filter(|s| *s != 0) {
                text.push_str(&format!(", signal {signal}"));
            }
            if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
                text.push_str(&format!(" ({m})"));
            }
        } else if let Some(w) = &state.waiting {
            text.push_str(&format!(
                "; container {} waiting: {}",
                c.name,
                w.reason.as_deref().unwrap_or("Waiting")
            ));
            if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
                text.push_str(&format!(" ({m})"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use flame_core::Secret;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition,
        PodStatus, VolumeMount,
    };
    use std::time::Duration;

    fn request(pool: &str) -> SpawnRequest {
        SpawnRequest {
            runner_id: format!("{pool}-0123abcd"),
            app: "shop app".into(),
            pool: pool.into(),
            parent_id: "parent-1".into(),
            env: BTreeMap::from([
                ("FLAME_MODE".to_owned(), "runner".to_owned()),
                ("FLAME_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
                ("FLAME_PARENT_TIMEOUT".to_owned(), "20000".to_owned()),
            ]),
            labels: BTreeMap::new(),
            boot_timeout: Duration::from_secs(1),
            secret: Some(Secret::new("s3cret")),
        }
    }

    fn parent_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "shop-7d9c5-abcde", "namespace": "shop", "uid": "0b5e-uid",
                          "labels": { "app": "shop", "pod-template-hash": "7d9c5" } },
            "spec": {
                "serviceAccountName": "shop",
                "containers": [{
                    "name": "app", "image": "registry/shop:1.2", "command": ["/shop"], "args": ["serve"],
                    "env": [ { "name": "FLAME_MODE", "value": "parent" },
                             { "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "db", "key": "url" } } } ],
                    "envFrom": [ { "configMapRef": { "name": "shop-config" } } ],
                    "ports": [ { "containerPort": 3000 } ],
                    "readinessProbe": { "httpGet": { "path": "/healthz", "port": 3000 } },
                    "volumeMounts": [ { "name": "data", "mountPath": "/data" },
                                      { "name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" } ]
                }, { "name": "sidecar", "image": "proxy:1" }],
                "volumes": [ { "name": "data", "emptyDir": {} }, { "name": "kube-api-access-x1", "projected": { "sources": [] } },
                             { "name": "unused", "emptyDir": {} } ],
                "nodeSelector": { "pool": "apps" }
            }
        }))
        .unwrap()
    }

    #[test]
    fn pods_from_the_parent_keep_its_container_and_add_the_runner_variables() {
        let cfg = K8sConfig::from_parent_pod("shop-7d9c5-abcde").pool(
            "gpu",
            PodSettings::new()
                .gpus(1)
                .tolerate_gpus()
                .node_selector("pool", "gpu"),
        );
        let parent = ParentTemplate::from_pod(&parent_pod(), None, true).unwrap();
        let pod = build_pod(&cfg, Some(&parent), "shop", &request("gpu")).unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(v["metadata"]["name"], "flame-gpu-0123abcd");
        assert_eq!(v["metadata"]["labels"]["flame.app"], "shop_app");
        assert_eq!(v["metadata"]["annotations"]["flame.app"], "shop app");
        assert!(v["metadata"]["labels"].get("pod-template-hash").is_none());
        assert_eq!(
            v["metadata"]["ownerReferences"][0],
            serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "name": "shop-7d9c5-abcde",
                                "uid": "0b5e-uid", "controller": false, "blockOwnerDeletion": false })
        );
        let spec = &v["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["serviceAccountName"], "shop");
        assert_eq!(spec["nodeSelector"]["pool"], "gpu");
        assert_eq!(spec["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(spec["volumes"].as_array().unwrap().len(), 1, "{spec}");
        let c = &spec["containers"][0];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        assert_eq!(c["name"], "runner");
        assert_eq!(c["image"], "registry/shop:1.2");
        assert_eq!(c["command"][0], "/shop");
        assert!(c.get("readinessProbe").is_none());
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "shop-config");
        assert_eq!(c["volumeMounts"].as_array().unwrap().len(), 1);
        let env: BTreeMap<String, serde_json::Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect();
        assert_eq!(env["FLAME_MODE"]["value"], "runner");
        assert_eq!(env["FLAME_LISTEN"]["value"], "0.0.0.0:8080");
        assert_eq!(env["FLAME_SECRET"]["value"], "s3cret");
        assert_eq!(env["FLAME_PARENT_ID"]["value"], "parent-1");
        assert!(env["DATABASE_URL"].get("valueFrom").is_some());
        assert_eq!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "FLAME_MODE")
                .count(),
            1
        );
    }

    #[test]
    fn a_named_container_that_does_not_exist_is_a_config_error() {
        let err = ParentTemplate::from_pod(&parent_pod(), Some("web"), true).unwrap_err();
        assert_eq!(err.code(), flame_core::ErrorCode::Config);
        assert!(err.message().contains("app, sidecar"), "{err}");
        let side = ParentTemplate::from_pod(&parent_pod(), Some("sidecar"), true).unwrap();
        assert_eq!(side.container.image.as_deref(), Some("proxy:1"));
        let no_volumes = ParentTemplate::from_pod(&parent_pod(), None, false).unwrap();
        assert!(no_volumes.volumes.is_empty() && no_volumes.container.volume_mounts.is_none());
        let _ = VolumeMount::default();
    }

    #[test]
    fn without_a_parent_the_image_is_required() {
        let cfg = K8sConfig::default();
        assert!(build_pod(&cfg, None, "ns", &request("default")).is_err());
        let pod = build_pod(&K8sConfig::from_image("app:1"), None, "ns", &request("default")).unwrap();
        assert!(pod.metadata.owner_references.is_none());
        let mut no_secret = request("default");
        no_secret.secret = None;
        assert!(build_pod(&K8sConfig::from_image("app:1"), None, "ns", &no_secret).is_err());
    }

    fn with_status(status: serde_json::Value) -> Pod {
        Pod {
            status: Some(serde_json::from_value::<PodStatus>(status).unwrap()),
            ..Pod::default()
        }
    }

    #[test]
    fn statuses_are_assessed() {
        assert_eq!(
            assess(&with_status(
                serde_json::json!({ "phase": "Running", "podIP": "10.1.2.3" })
            )),
            Boot::Running("10.1.2.3".into())
        );
        let unsched = with_status(serde_json::json!({ "phase": "Pending", "conditions": [
            { "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." }] }));
        assert!(
            matches!(assess(&unsched), Boot::Waiting { reason, message } if reason == "Unschedulable" && message.contains("nvidia"))
        );
        let pull = Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "runner".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("ImagePullBackOff".into()),
                            message: Some("Back-off pulling image".into()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert!(
            matches!(assess(&pull), Boot::Failed(K8sErrorKind::ImagePull, r, _) if r == "ImagePullBackOff")
        );
        let oom = Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.0.0.1".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "runner".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            reason: Some("OOMKilled".into()),
                            exit_code: 137,
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert!(
            matches!(assess(&oom), Boot::Failed(K8sErrorKind::PodFailed, r, m) if r == "OOMKilled" && m.contains("137"))
        );
        let evicted = with_status(
            serde_json::json!({ "phase": "Failed", "reason": "Evicted", "message": "low on memory" }),
        );
        assert!(matches!(assess(&evicted), Boot::Failed(K8sErrorKind::PodFailed, r, _) if r == "Evicted"));
        let _ = PodCondition::default();
    }

    #[test]
    fn ended_pods_are_described() {
        let oom = with_status(serde_json::json!({ "phase": "Running", "podIP": "10.0.0.1",
            "containerStatuses": [{ "name": "runner", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": { "terminated": { "reason": "OOMKilled", "exitCode": 137, "message": "out of memory" } } }] }));
        assert!(container_ended(&oom));
        assert_eq!(
            describe("p1", &oom),
            "Pod p1: phase Running; container runner terminated: OOMKilled, exit code 137 (out of memory)"
        );
        let evicted = with_status(
            serde_json::json!({ "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory." }),
        );
        assert!(!container_ended(&evicted));
        assert_eq!(
            describe("p2", &evicted),
            "Pod p2: phase Failed, reason Evicted: The node was low on resource: memory."
        );
        let pulling = with_status(serde_json::json!({ "phase": "Pending",
            "containerStatuses": [{ "name": "runner", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image" } } }] }));
        assert_eq!(
            describe("p3", &pulling),
            "Pod p3: phase Pending; container runner waiting: ImagePullBackOff (Back-off pulling image)"
        );
    }
}
