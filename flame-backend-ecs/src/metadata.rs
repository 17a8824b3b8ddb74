//! The parent's own task, read from the ECS task metadata endpoint (v4), for defaults.
//!
//! `GET ${ECS_CONTAINER_METADATA_URI_V4}` describes the calling container (`Name`),
//! `GET ${ECS_CONTAINER_METADATA_URI_V4}/task` the task (`Cluster`, `TaskARN`, `Family`,
//! `Revision`, `LaunchType`). The subnets come from DescribeTasks on the parent's own task
//! (the ENI attachment's `subnetId`).

use crate::error::{classify, EcsError, EcsErrorKind};
use bytes::Bytes;
use flame_core::Result;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::time::Duration;

/// The variable ECS sets in every container (agent 1.39+, Fargate 1.4+).
pub const ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// How long one metadata request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the parent's own task tells about defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTask {
    /// Cluster ARN.
    pub cluster: String,
    /// The parent's task ARN.
    pub task_arn: String,
    /// `family:revision`.
    pub task_definition: String,
    /// The parent's container name.
    pub container_name: Option<String>,
    /// `FARGATE` / `EC2` / `EXTERNAL`, when the endpoint says.
    pub launch_type: Option<String>,
}

#[derive(Deserialize)]
struct ContainerDoc {
    #[serde(rename = "Name")]
    name: Option<String>,
}

#[derive(Deserialize)]
struct TaskDoc {
    #[serde(rename = "Cluster")]
    cluster: String,
    #[serde(rename = "TaskARN")]
    task_arn: String,
    #[serde(rename = "Family")]
    family: String,
    #[serde(rename = "Revision")]
    revision: String,
    #[serde(rename = "LaunchType")]
    launch_type: Option<String>,
}

/// Reads the parent's own task from the metadata endpoint at `uri`.
pub async fn read_own_task(uri: &str) -> Result<OwnTask> {
    let base = uri.trim_end_matches('/');
    let container: ContainerDoc = get_json(base).await?;
    let task: TaskDoc = get_json(&format!("{base}/task")).await?;
    Ok(OwnTask {
        cluster: task.cluster,
        task_arn: task.task_arn,
        task_definition: format!("{}:{}", task.family, task.revision),
        container_name: container.name,
        launch_type: task.launch_type.filter(|l| !l.is_empty()),
    })
}

/// The subnets of the parent's own task (from its ENI attachment).
pub async fn own_subnets(client: &aws_sdk_ecs::Client, own: &OwnTask) -> Result<Vec<String>> {
    let out = client
        .describe_tasks()
        .cluster(&own.cluster)
        .tasks(&own.task_arn)
        .send()
        .await
        .map_err(|e| flame_core::Error::from(classify("DescribeTasks (own task)", &e)))?;
    let subnets: Vec<String> = out
        .tasks()
        .iter()
        .flat_map(|t| t.attachments())
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(|a| a.details())
        .filter(|d| d.name() == Some("subnetId"))
        .filter_map(|d| d.value().map(str::to_owned))
        .collect();
    Ok(subnets)
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T> {
    let fail = |what: String| -> flame_core::Error {
        EcsError::new(EcsErrorKind::Config, format!("task metadata {url}: {what}")).into()
    };
    let uri: hyper::Uri = url.parse().map_err(|e| fail(format!("bad URI: {e}")))?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let reply = tokio::time::timeout(TIMEOUT, async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| fail(format!("no reply within {TIMEOUT:?}")))?
    .map_err(fail)?;
    let (status, body) = reply;
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    serde_json::from_slice(&body)
        .map_err(|e| EcsError::new(EcsErrorKind::MalformedReply, format!("task metadata {url}: {e}")).into())
}
