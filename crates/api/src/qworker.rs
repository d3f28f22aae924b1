//! `quickube.com/v1alpha1`: QWorker and ScalerConfig.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::packed::Packed;
use crate::schema::pod_spec;
use crate::storm::TemplateMetadata;

/// Default broker poll interval of a QWorker, in seconds.
pub const DEFAULT_POLL_INTERVAL_SECONDS: u32 = 1;
/// Default scale-down stabilization window, in seconds (0: act at once, as the reference system).
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: u32 = 0;
/// Default `targetDrainSeconds` of the `Rate` scaling policy.
pub const DEFAULT_TARGET_DRAIN_SECONDS: u32 = 10;
/// Default `maxSurgePercent` of the `Rate` scaling policy.
pub const DEFAULT_MAX_SURGE_PERCENT: u32 = 10;
/// Default headroom added to the recorded maximum usage by activateVPA, in percent.
pub const DEFAULT_VPA_HEADROOM_PERCENT: u32 = 20;
/// Default largest memory activateVPA records or requests for a container without a memory limit.
pub const DEFAULT_VPA_MAX_MEMORY: &str = "8Gi";
/// How many OOM kills `status.oomKillsSeen` remembers (the newest).
pub const OOM_KILLS_SEEN_LIMIT: usize = 32;

/// Worker pods that consume a message queue, scaled on its length.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "quickube.com",
    version = "v1alpha1",
    kind = "QWorker",
    namespaced,
    status = "QWorkerStatus",
    shortname = "qw",
    category = "quickube",
    derive = "PartialEq",
    derive = "Default",
    doc = "Worker pods that consume a message queue, scaled on queue length.",
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters: it is the value of the workers' quickube.com/qworker label"),
    validation = Rule::new("!has(self.spec.podSpec.restartPolicy) || self.spec.podSpec.restartPolicy != 'Always'").message("podSpec.restartPolicy must be OnFailure (the default) or Never: a worker that exits after draining must not be restarted"),
    scale(
        spec_replicas_path = ".spec.scaleConfig.minReplicas",
        status_replicas_path = ".status.currentReplicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Queue",
        type_ = "string",
        json_path = ".spec.scaleConfig.queue"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.currentReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QWorkerSpec {
    /// The worker pod's spec.
    #[schemars(schema_with = "pod_spec")]
    pub pod_spec: Packed<PodSpec>,
    /// How to scale.
    pub scale_config: ScaleConfig,
    /// Extra labels and annotations of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMetadata>,
}

/// Scaling settings of a QWorker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be <= maxReplicas"))]
#[x_kube(validation = Rule::new("self.scalingFactor > 0.0").message("scalingFactor must be > 0"))]
#[serde(rename_all = "camelCase")]
pub struct ScaleConfig {
    /// Name of the ScalerConfig (same namespace) that says how to reach the broker.
    #[schemars(length(min = 1))]
    pub scaler_config_ref: String,
    /// Queue name (Redis list, RabbitMQ queue, or NATS durable consumer).
    #[schemars(length(min = 1))]
    pub queue: String,
    /// Minimum number of workers (default 0).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Maximum number of workers.
    #[schemars(range(min = 0))]
    pub max_replicas: i32,
    /// Workers per queued task: `desired = ceil(queueLength × scalingFactor)`. Integer or decimal.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Track the largest resource use per container and size new pods from it.
    #[serde(default, rename = "activateVPA")]
    pub activate_vpa: bool,
    /// `Rate`: size for the arrival rate (Little's law) plus the backlog that will still wait
    /// when a new worker is ready, counting starting workers, and hold the count when more
    /// workers do not raise the completion rate; `QueueLength` (default): the specification's
    /// `ceil(queueLength × scalingFactor)` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_policy: Option<ScalingPolicy>,
    /// `Rate`: the time in which `scalingFactor` clears the queue (default 10). A worker is
    /// assumed to complete `1 / (scalingFactor × targetDrainSeconds)` tasks per second, and a
    /// backlog is drained at that pace while `maxSurgePercent` allows, within ten times this
    /// time at the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub target_drain_seconds: Option<u32>,
    /// `Rate`: workers added for a backlog, at most this percent of the arrivals' need (default
    /// 10; the limit on overshoot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_surge_percent: Option<u32>,
    /// How often the broker is polled, in seconds (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: Option<u32>,
    /// A lower desired count is applied only after it held for this many seconds (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<u32>,
    /// Headroom above the recorded maximum usage for activateVPA requests, in percent (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub vpa_headroom_percent: Option<u32>,
    /// Largest memory activateVPA records or requests for a container that sets no memory
    /// limit (the limit caps it otherwise); default 8Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpa_max_memory: Option<Quantity>,
}

fn default_scaling_factor() -> f64 {
    1.0
}

impl ScaleConfig {
    /// The poll interval with its default.
    pub fn poll_interval_seconds(&self) -> u32 {
        self.poll_interval_seconds
            .unwrap_or(DEFAULT_POLL_INTERVAL_SECONDS)
            .max(1)
    }

    /// The scale-down stabilization window with its default.
    pub fn scale_down_stabilization_seconds(&self) -> u32 {
        self.scale_down_stabilization_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS)
    }

    /// The scaling policy with its default.
    pub fn scaling_policy(&self) -> ScalingPolicy {
        self.scaling_policy.unwrap_or_default()
    }

    /// `targetDrainSeconds` with its default.
    pub fn target_drain_seconds(&self) -> u32 {
        self.target_drain_seconds
            .unwrap_or(DEFAULT_TARGET_DRAIN_SECONDS)
            .max(1)
    }

    /// `maxSurgePercent` with its default.
    pub fn max_surge_percent(&self) -> u32 {
        self.max_surge_percent.unwrap_or(DEFAULT_MAX_SURGE_PERCENT)
    }

    /// The activateVPA headroom with its default.
    pub fn vpa_headroom_percent(&self) -> u32 {
        self.vpa_headroom_percent
            .unwrap_or(DEFAULT_VPA_HEADROOM_PERCENT)
    }

    /// The activateVPA memory maximum with its default.
    pub fn vpa_max_memory(&self) -> Quantity {
        self.vpa_max_memory
            .clone()
            .unwrap_or_else(|| Quantity(DEFAULT_VPA_MAX_MEMORY.into()))
    }
}

/// Observed state of a QWorker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QWorkerStatus {
    /// Live worker pods (not terminal, not terminating, not asked to drain).
    #[serde(default)]
    pub current_replicas: i32,
    /// The autoscaler's answer.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Hash of the pod template workers must run; stale workers end themselves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_pod_spec_hash: String,
    /// Largest observed usage per container name (activateVPA).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_container_resources_usage: BTreeMap<String, BTreeMap<String, Quantity>>,
    /// OOM kills activateVPA has taken into account (the newest, at most 32), so that an
    /// operator restart does not count them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oom_kills_seen: Vec<OomKill>,
    /// When activateVPA last raised a memory record after an OOM kill (at most one raise per
    /// window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_oom_raise_time: Option<Time>,
    /// The autoscaler's last change of the desired count and the numbers behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_decision: Option<ScaleDecision>,
    /// Last observed queue length (waiting plus in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_length: Option<i64>,
    /// When the desired count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Label selector of the worker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Ready`, `BrokerReachable`, `Scaling` and `ResourceMetricsAvailable` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One OOM kill of a worker container, as activateVPA saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OomKill {
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Container name.
    pub container: String,
    /// When the container was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// How a QWorker's desired count is decided (`scaleConfig.scalingPolicy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ScalingPolicy {
    /// Arrival and completion rates, start-up times and the backlog.
    Rate,
    /// `ceil(queueLength × scalingFactor)` (the default: an absent extension keeps the
    /// specification's behaviour).
    #[default]
    QueueLength,
}

/// One change of `desiredReplicas` and why (`status.lastScaleDecision`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    /// When.
    pub time: Time,
    /// Desired workers before.
    pub from: i32,
    /// Desired workers after.
    pub to: i32,
    /// The term that decided: `QueueLength`, `Arrivals`, `Backlog`, `Tolerance`, `Starting`,
    /// `Stabilization`, `Ineffective`, `Probe`, `MinReplicas`, `MaxReplicas`.
    pub term: String,
    /// Queue length read (waiting plus in flight).
    pub queue_length: i64,
    /// Ready workers that are not draining (`Rate` only: the pods are read for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_workers: Option<i32>,
    /// Workers created but not ready yet (`Rate` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_workers: Option<i32>,
    /// Estimated arrivals, tasks per second (absent before the rates are known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Estimated completions, tasks per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_rate: Option<f64>,
    /// Tasks per second assumed for one worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_throughput: Option<f64>,
    /// Typical seconds from a worker's creation to its readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_seconds: Option<f64>,
    /// The decision in words, with the evidence when scaling is ineffective.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// How to reach a message broker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "quickube.com",
    version = "v1alpha1",
    kind = "ScalerConfig",
    namespaced,
    status = "ScalerConfigStatus",
    shortname = "qsc",
    category = "quickube",
    derive = "PartialEq",
    derive = "Default",
    doc = "Connection settings of a message broker used by QWorkers.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Healthy", type_ = "boolean", json_path = ".status.healthy"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type != 'nats' || has(self.config.stream)").message("a nats ScalerConfig needs config.stream"))]
#[x_kube(validation = Rule::new("has(self.config.url) || has(self.config.host)").message("config needs url or host"))]
#[serde(rename_all = "camelCase")]
pub struct ScalerConfigSpec {
    /// Broker type: `redis`, `rabbitmq` or `nats` (JetStream).
    #[serde(rename = "type")]
    pub type_: BrokerType,
    /// Connection settings.
    pub config: BrokerConnection,
}

/// Supported brokers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BrokerType {
    /// Redis lists.
    #[default]
    Redis,
    /// RabbitMQ queues (AMQP 0-9-1).
    Rabbitmq,
    /// NATS JetStream durable consumers.
    Nats,
}

impl BrokerType {
    /// Whether the broker keeps a worker's in-flight tasks in a list of its own that must be
    /// returned to the queue when the worker is gone (Redis). RabbitMQ and NATS JetStream
    /// redeliver unacknowledged messages themselves.
    pub fn keeps_processing_lists(self) -> bool {
        matches!(self, BrokerType::Redis)
    }

    /// The type as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerType::Redis => "redis",
            BrokerType::Rabbitmq => "rabbitmq",
            BrokerType::Nats => "nats",
        }
    }
}

/// Connection settings; which fields apply depends on the broker type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerConnection {
    /// Host name (all types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port, as a string as in the reference system (default: the broker's standard port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,5}$"))]
    pub port: Option<String>,
    /// Full URL instead of host and port (`amqp://host:5672/vhost`, `nats://host:4222`); no credentials in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Password (Redis, RabbitMQ, NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretValue>,
    /// User name (RabbitMQ, NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<SecretValue>,
    /// Token (NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretValue>,
    /// Redis database number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub db: Option<i64>,
    /// RabbitMQ virtual host (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// RabbitMQ management API URL, to count unacknowledged messages exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
    /// NATS JetStream stream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Use TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// A credential: a plain value or a reference to a Secret key in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.secret)").message("set exactly one of value and secret"))]
pub struct SecretValue {
    /// The value itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A key of a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretKeyRef>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("secret", &self.secret)
            .finish()
    }
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Observed state of a ScalerConfig.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalerConfigStatus {
    /// Whether the broker answered the last check.
    #[serde(default)]
    pub healthy: bool,
    /// Human readable detail of the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The queues whose in-flight lists the operator sweeps on this broker (Redis only): the
    /// queues of the QWorkers and worker pods that use it, each kept after they are gone until
    /// a sweep finds no list of it, so that tasks of workers that are gone return to their queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub queues: Vec<String>,
}
