//! `storm.apache.org/v1beta1`: StormWorkerPool, StormTopology and StormCluster.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscalerBehavior,
};
use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{
    cluster_storm_config, optional_pod_spec, pool_worker_config, preserve_unknown_map,
    zookeeper_servers,
};

/// Default first worker slot port (`ports.start`).
pub const DEFAULT_PORT_START: i32 = 6700;
/// Default number of worker slots per pod (`ports.count`).
pub const DEFAULT_PORT_COUNT: i32 = 4;
/// Default worker image when neither the pool nor its cluster names one.
pub const DEFAULT_STORM_IMAGE: &str = "storm";
/// Default worker image tag.
pub const DEFAULT_STORM_TAG: &str = "2.6.4";
/// Longest StormWorkerPool name: the headless Service `<pool>-headless` must be a DNS-1035
/// label of at most 63 characters, and `-headless` is the longest suffix the operator appends
/// to a name that must be such a label. The CRD's CEL rule on `metadata.name` says the same.
pub const MAX_POOL_NAME_LENGTH: usize = 54;

// Custom metrics of a StormWorkerPool's `autoscaling` that the operator evaluates itself from
// the Storm UI (the HPA never gets them; see docs/storm.md).

/// Tuple trees in flight per pod.
pub const PENDING_MESSAGES: &str = "storm_pending_messages";
/// Capacity of the busiest bolt executor.
pub const BOLT_CAPACITY: &str = "storm_bolt_capacity";
/// The custom metrics the operator evaluates itself.
pub const RECOGNISED: [&str; 2] = [PENDING_MESSAGES, BOLT_CAPACITY];

/// A pool of Storm worker pods serving one topology.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "storm.apache.org",
    version = "v1beta1",
    kind = "StormWorkerPool",
    namespaced,
    status = "StormWorkerPoolStatus",
    shortname = "swp",
    category = "storm",
    derive = "PartialEq",
    derive = "Default",
    doc = "A pool of Apache Storm worker pods for one topology: a Deployment, an optional HPA, a headless Service and the pool's storm.yaml.",
    validation = Rule::new("self.metadata.name.size() <= 54").message("metadata.name must be at most 54 characters: the pool's headless Service <name>-headless must be a DNS label of at most 63 characters"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]')").message("metadata.name must start with a lowercase letter: the pool's headless Service <name>-headless must be a DNS-1035 label"),
    printcolumn(name = "Topology", type_ = "string", json_path = ".spec.topologyRef"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StormWorkerPoolSpec {
    /// Name of the StormTopology this pool serves (same namespace).
    #[schemars(length(min = 1))]
    pub topology_ref: String,
    /// StormCluster to use instead of the topology's own `clusterRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<String>,
    /// Number of workers; ignored while autoscaling is enabled. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Worker image; defaults to the cluster's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Storm configuration entries written to the pool's storm.yaml (keys the operator wires are
    /// refused; see docs/storm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pool_worker_config")]
    pub worker_config: Option<BTreeMap<String, serde_json::Value>>,
    /// JVM options of the worker processes (`worker.childopts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jvm_opts: Option<Vec<String>>,
    /// Worker slot ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortsSpec>,
    /// Pod template customisation, merged with the operator's worker container.
    // Boxed: a pod template is 1.5 KB inline, which every cached pool would carry, mostly empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<PoolPodTemplate>>,
    /// Horizontal pod autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Box<AutoscalingSpec>>,
    /// Optional PodDisruptionBudget `<pool>-pdb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
    /// Volume of the supervisors' `storm.local.dir` (`/data`): an emptyDir when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<PoolStorageSpec>,
}

/// A per-pod volume claim for `storm.local.dir`: a generic ephemeral volume, created with each
/// pod and deleted with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStorageSpec {
    /// Size of each pod's claim, e.g. `10Gi`.
    #[schemars(length(min = 1))]
    pub size: String,
    /// StorageClass of the claims (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Container image settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, e.g. `apache/storm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub pull_policy: Option<String>,
    /// Names of image pull secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secrets: Option<Vec<String>>,
}

/// Worker slot ports: `supervisor.slots.ports` is `start .. start+count-1`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.start + self.count - 1 <= 65535").message("ports.start + ports.count - 1 must not exceed 65535"))]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    /// First slot port (default 6700).
    #[serde(default = "default_port_start")]
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    /// Number of slots per worker (default 4).
    #[serde(default = "default_port_count")]
    #[schemars(range(min = 1, max = 1024))]
    pub count: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        Self {
            start: DEFAULT_PORT_START,
            count: DEFAULT_PORT_COUNT,
        }
    }
}

fn default_port_start() -> i32 {
    DEFAULT_PORT_START
}
fn default_port_count() -> i32 {
    DEFAULT_PORT_COUNT
}

/// Pod template of the pool's workers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolPodTemplate {
    /// Labels and annotations added to every worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// A full PodSpec; containers are merged with the operator's worker container by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_pod_spec")]
    pub spec: Option<PodSpec>,
}

/// Extra labels and annotations of worker pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    /// Labels added to every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Horizontal pod autoscaling of a pool, rendered as `<pool>-hpa` (autoscaling/v2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must be <= autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("!self.enabled || has(self.maxReplicas)").message("autoscaling.maxReplicas is required when autoscaling is enabled"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Whether the HPA exists and owns the Deployment's replica count.
    #[serde(default)]
    pub enabled: bool,
    /// Lower bound (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// Upper bound (required when enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// Target average CPU utilization in percent of requests.
    #[serde(
        default,
        rename = "targetCPUUtilizationPercentage",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Target average memory utilization in percent of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_memory_utilization_percentage: Option<i32>,
    /// Custom metrics (e.g. Storm's pending messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_metrics: Vec<CustomMetric>,
    /// Scale-up and scale-down behaviour, in the HPA's own shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// Kind of a custom metric source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricSourceType {
    /// A metric averaged over the pool's pods (HPA `Pods`).
    #[default]
    Pods,
    /// A metric describing one Kubernetes object (HPA `Object`).
    Object,
    /// A metric from outside the cluster (HPA `External`).
    External,
}

/// A custom metric target of the HPA.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.targetAverageValue) || has(self.targetValue)").message("a custom metric needs targetAverageValue or targetValue"))]
#[x_kube(validation = Rule::new("self.type != 'object' || has(self.describedObject)").message("an object metric needs describedObject"))]
#[serde(rename_all = "camelCase")]
pub struct CustomMetric {
    /// Metric name, e.g. `storm_pending_messages`.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `pods` (default), `object` or `external`.
    #[serde(default, rename = "type")]
    pub type_: MetricSourceType,
    /// Target per-pod average value (a quantity, e.g. "1000").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_average_value: Option<String>,
    /// Target total value (a quantity) for object or external metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_value: Option<String>,
    /// Label selector of the metric series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The object an `object` metric describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub described_object: Option<CrossVersionObjectReference>,
}

/// PodDisruptionBudget settings: exactly one of the two fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("set exactly one of minAvailable and maxUnavailable"))]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Minimum available workers (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Maximum unavailable workers (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Lifecycle phase of a StormWorkerPool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolPhase {
    /// Waiting for its topology or cluster, or for the first worker.
    #[default]
    Pending,
    /// Workers are starting or a rollout is in progress.
    Updating,
    /// All workers are ready.
    Running,
    /// Some workers are unavailable.
    Degraded,
    /// The spec is invalid or the children cannot be applied.
    Failed,
}

impl PoolPhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolPhase::Pending => "Pending",
            PoolPhase::Updating => "Updating",
            PoolPhase::Running => "Running",
            PoolPhase::Degraded => "Degraded",
            PoolPhase::Failed => "Failed",
        }
    }
}

/// Observed state of a StormWorkerPool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormWorkerPoolStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PoolPhase>,
    /// Desired workers (the Deployment's replica count).
    #[serde(default)]
    pub replicas: i32,
    /// Ready workers.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Available workers.
    #[serde(default)]
    pub available_replicas: i32,
    /// Unavailable workers.
    #[serde(default)]
    pub unavailable_replicas: i32,
    /// Workers running the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Name of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_name: Option<String>,
    /// Name of the HPA, when autoscaling is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa_name: Option<String>,
    /// Human readable summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` and `Autoscaling` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The count derived from Storm's own load (recognised `storm_*` custom metrics), enforced
    /// as the HPA's `minReplicas`; absent when the pool has no recognised Storm metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_autoscaling: Option<Box<StormAutoscalingStatus>>,
    /// The last change of the Storm-derived count and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_decision: Option<Box<StormScaleDecision>>,
}

/// What Storm's UI REST API reported for an autoscaled pool's topology, and the figures the
/// operator derived from it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormScaleInputs {
    /// Seconds of the Storm window the rates come from (600, or the uptime when shorter).
    pub window_seconds: i64,
    /// Worker pods the per-pod values are divided by (the Deployment's count).
    pub pods: i32,
    /// Tuple trees in flight in the topology: Σ over spouts of acked / window ×
    /// completeLatency (Little's law).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_messages: Option<f64>,
    /// `pendingMessages` per pod (`storm_pending_messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_messages_per_pod: Option<f64>,
    /// The spouts' largest complete latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_latency_ms: Option<f64>,
    /// The bolt with the busiest executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busiest_bolt: Option<String>,
    /// Its capacity (`storm_bolt_capacity`): share of the last 10 minutes its busiest executor
    /// spent executing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bolt_capacity: Option<f64>,
    /// Its execute latency, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execute_latency_ms: Option<f64>,
    /// The topology's executors (`executorsTotal`).
    pub executors: i64,
    /// Pods the executors can occupy: ⌈executors / slots per pod⌉; more cannot help.
    pub useful_pods: i32,
}

/// The Storm-derived count in force and the scale-down stabilisation's memory
/// (`status.stormAutoscaling`), kept in status so that an operator restart keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormAutoscalingStatus {
    /// The count enforced as the HPA's `minReplicas`.
    pub replicas: i32,
    /// The latest recommendation, before stabilisation.
    pub recommendation: i32,
    /// The term that decided the recommendation (see [`StormScaleDecision::term`]).
    pub term: String,
    /// Since when every recommendation was below `replicas` (absent: it was not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_since: Option<Time>,
    /// The largest recommendation since `belowSince`: the count a scale-down goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_max: Option<i32>,
    /// The figures of the latest read of Storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<StormScaleInputs>,
}

/// One change of the Storm-derived count (`status.lastScaleDecision`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormScaleDecision {
    /// When.
    pub time: Time,
    /// The count before.
    pub from: i32,
    /// The count after.
    pub to: i32,
    /// What decided: `PendingMessages`, `BoltCapacity`, `Tolerance` (within 10 % of the
    /// target), `ExecutorsExhausted`, `MinReplicas`, `MaxReplicas`, `NoData`.
    pub term: String,
    /// The decision in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The figures it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<StormScaleInputs>,
}

/// Longest Storm topology name the operator submits: Job names `<topology>-submit-<hash8>`
/// must stay DNS labels of at most 63 characters.
pub const MAX_TOPOLOGY_NAME_LENGTH: usize = 45;
/// Longest StormCluster name: `<cluster>-nimbus-<n>` pod names and `<cluster>-nimbus` Service
/// names must stay DNS labels.
pub const MAX_CLUSTER_NAME_LENGTH: usize = 40;
/// Default seconds between two looks at a cluster's or topology's Storm UI REST API.
pub const DEFAULT_POLL_INTERVAL_SECONDS: i32 = 15;
/// Default seconds Storm waits between deactivating and killing a topology.
pub const DEFAULT_KILL_WAIT_SECONDS: i32 = 30;
/// Default shortest time between two rebalances of one topology, in seconds.
pub const DEFAULT_REBALANCE_INTERVAL_SECONDS: i32 = 300;
/// Default seconds Storm waits before redistributing workers in a rebalance.
pub const DEFAULT_REBALANCE_WAIT_SECONDS: i32 = 30;
/// Nimbus Thrift port (`nimbus.thrift.port`).
pub const NIMBUS_THRIFT_PORT: i32 = 6627;
/// Storm UI port (`ui.port`).
pub const UI_PORT: i32 = 8080;

/// A Storm topology: submitted with `storm jar` from a Job, observed through the Storm UI REST
/// API, killed on delete when the operator submitted it, and rebalanced when its pools' slots change.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "storm.apache.org",
    version = "v1beta1",
    kind = "StormTopology",
    namespaced,
    status = "StormTopologyStatus",
    shortname = "st",
    category = "storm",
    derive = "PartialEq",
    derive = "Default",
    doc = "An Apache Storm topology: submitted by a Job running `storm jar`, status read from the Storm UI REST API, killed on delete, rebalanced when its pools' slots change.",
    validation = Rule::new("self.metadata.name.size() <= 45").message("metadata.name must be at most 45 characters: Jobs named <topology>-submit-<hash> must be DNS labels of at most 63 characters"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Storm-Id", type_ = "string", json_path = ".status.topologyId"),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".status.workers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StormTopologySpec {
    /// The StormCluster this topology runs on (same namespace).
    #[schemars(length(min = 1))]
    pub cluster_ref: String,
    /// The name in Storm; defaults to `metadata.name`. A topology without `jar` is only
    /// observed: the operator finds it by this name and never submits nor kills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('/') && !self.contains('.') && !self.contains(':') && !self.contains('\\\\')").message("topologyName may not contain '/', '.', ':' or a backslash (Storm rejects such names)"))]
    pub topology_name: Option<String>,
    /// Where the topology jar comes from. Without it the topology is submitted by someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jar: Option<JarSource>,
    /// Main class that builds and submits the topology (`storm jar <jar> <mainClass> <name> [args]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_class: Option<String>,
    /// Arguments after the topology name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Topology configuration entries, passed to `storm jar` as `-c key=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_map")]
    pub config: Option<BTreeMap<String, serde_json::Value>>,
    /// `true` deactivates the topology in Storm, `false` activates it again.
    #[serde(default)]
    pub suspend: bool,
    /// Seconds Storm waits between deactivating and killing the topology (delete, redeploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub kill_wait_seconds: Option<i32>,
    /// Rebalancing when the slots of the pools that serve this topology change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceSpec>,
}

/// Where a topology's jar comes from: a URL, or a path inside an image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.image)").message("jar needs exactly one of url or image"),
    validation = Rule::new("has(self.image) == has(self.path)").message("jar.image and jar.path go together: the path of the jar inside the image")
)]
pub struct JarSource {
    /// An http(s) URL, fetched by an init container of the submission Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("jar.url must be an http:// or https:// URL"))]
    pub url: Option<String>,
    /// An image that holds the jar; copied out by an init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Absolute path of the jar inside `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("jar.path must be an absolute path"))]
    pub path: Option<String>,
    /// Expected SHA-256 of the jar (64 hex digits); the submission fails when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// How a topology follows the slots of its pools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Rebalance when the pools' ready slots change (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Shortest time between two rebalances, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_interval_seconds: Option<i32>,
    /// Seconds Storm waits before redistributing (`storm rebalance -w`, default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub wait_seconds: Option<i32>,
    /// Upper bound of the worker count a rebalance asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_workers: Option<i32>,
}

fn default_true() -> bool {
    true
}

impl Default for RebalanceSpec {
    fn default() -> Self {
        RebalanceSpec {
            enabled: true,
            min_interval_seconds: None,
            wait_seconds: None,
            max_workers: None,
        }
    }
}

/// Lifecycle phase of a StormTopology.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TopologyPhase {
    /// Waiting for its cluster, or for someone else to submit it.
    #[default]
    Pending,
    /// A submission Job is running.
    Submitting,
    /// Storm reports the topology `ACTIVE`.
    Running,
    /// Storm reports the topology `INACTIVE` (`suspend: true`, or deactivated in Storm).
    Suspended,
    /// Storm reports the topology `REBALANCING`.
    Rebalancing,
    /// The topology is being killed (delete or redeploy).
    Killing,
    /// The submission failed or the spec is invalid.
    Failed,
}

impl TopologyPhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyPhase::Pending => "Pending",
            TopologyPhase::Submitting => "Submitting",
            TopologyPhase::Running => "Running",
            TopologyPhase::Suspended => "Suspended",
            TopologyPhase::Rebalancing => "Rebalancing",
            TopologyPhase::Killing => "Killing",
            TopologyPhase::Failed => "Failed",
        }
    }

    /// Whether pools of this topology should run their workers: the topology exists in Storm
    /// and is not being killed.
    pub fn serves_pools(self) -> bool {
        matches!(
            self,
            TopologyPhase::Running | TopologyPhase::Rebalancing | TopologyPhase::Suspended
        )
    }
}

/// One rebalance the operator decided, as recorded in status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceRecord {
    /// When the rebalance was started (RFC 3339).
    pub time: String,
    /// Worker count before.
    pub from_workers: i32,
    /// Worker count asked for.
    pub to_workers: i32,
    /// Why, e.g. `ready slots of pools 4 -> 8`.
    pub reason: String,
    /// The rebalance Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Observed state of a StormTopology.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormTopologyStatus {
    /// Lifecycle phase. Pools run their workers while it is `Running`, `Rebalancing` or `Suspended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TopologyPhase>,
    /// Human readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Storm's id of the running topology (`<name>-<n>-<epoch>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_id: Option<String>,
    /// Storm's status: `ACTIVE`, `INACTIVE`, `REBALANCING` or `KILLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_status: Option<String>,
    /// Workers assigned in Storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i32>,
    /// Executors in Storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executors: Option<i32>,
    /// Tasks in Storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<i32>,
    /// When the running topology was launched (RFC 3339, from Storm's uptime; the uptime itself
    /// is the metric `storm_topology_uptime_seconds`, so that status does not change every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<String>,
    /// The last error Storm reports for any component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Hash of the jar, main class, arguments and config of the last submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_hash: Option<String>,
    /// The submission Job of the current spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_job: Option<String>,
    /// The last rebalance the operator started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebalance: Option<RebalanceRecord>,
    /// Conditions: `Ready`, `ClusterReady`, `Submitted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How the operator relates to a Storm cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClusterMode {
    /// The operator runs Nimbus (a StatefulSet) and the UI (a Deployment) from `image`.
    #[default]
    Managed,
    /// The cluster runs elsewhere; the operator only reads its UI REST API at `uiUrl`.
    External,
}

/// A Storm cluster: ZooKeeper, Nimbus and the default image and config of its workers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "storm.apache.org",
    version = "v1beta1",
    kind = "StormCluster",
    namespaced,
    status = "StormClusterStatus",
    shortname = "stc",
    category = "storm",
    derive = "PartialEq",
    derive = "Default",
    doc = "An Apache Storm cluster, managed (Nimbus StatefulSet, UI Deployment, storm.yaml) or external (observed through its UI REST API). Pools and topologies take ZooKeeper servers, Nimbus seeds, image and config from it.",
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters: <cluster>-nimbus-<n> must be a DNS label"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]')").message("metadata.name must start with a lowercase letter: <cluster>-nimbus and <cluster>-ui are Service names"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.nimbusLeader"),
    printcolumn(name = "Supervisors", type_ = "integer", json_path = ".status.supervisors"),
    printcolumn(name = "Free-Slots", type_ = "integer", json_path = ".status.slotsFree"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.stormVersion", priority = 1),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.mode != 'External' || (has(self.uiUrl) && has(self.nimbusSeeds) && size(self.nimbusSeeds) > 0)").message("an External cluster needs uiUrl and nimbusSeeds"),
    validation = Rule::new("self.mode != 'Managed' || !has(self.nimbusSeeds) || size(self.nimbusSeeds) == 0").message("a Managed cluster's nimbusSeeds are its Nimbus pods; leave nimbusSeeds empty (or set mode: External)"),
    validation = Rule::new("self.mode != 'Managed' || !has(self.stormConfig) || !has(self.stormConfig.nimbus__dot__thrift__dot__port)").message(MANAGED_THRIFT_PORT_MESSAGE)
)]
#[serde(rename_all = "camelCase")]
pub struct StormClusterSpec {
    /// `Managed` (default): the operator runs Nimbus and the UI. `External`: observed only.
    #[serde(default)]
    pub mode: ClusterMode,
    /// Image of the cluster's daemons and default worker image (default `storm:2.6.4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// ZooKeeper servers (`storm.zookeeper.servers`): host names without a port; the port is
    /// `storm.zookeeper.port` in `stormConfig` (default 2181).
    #[schemars(schema_with = "zookeeper_servers")]
    pub zookeeper_servers: Vec<String>,
    /// Nimbus seeds (`nimbus.seeds`) of an External cluster; a Managed cluster's are its Nimbus pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nimbus_seeds: Vec<String>,
    /// Base URL of the Storm UI (e.g. `http://storm-ui.storm:8080`); required when External,
    /// the `<cluster>-ui` Service when Managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("uiUrl must be an http:// or https:// URL"))]
    pub ui_url: Option<String>,
    /// Cluster-wide storm.yaml entries; a pool's `workerConfig` overrides them. Keys the
    /// operator wires are refused (see docs/storm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cluster_storm_config")]
    pub storm_config: Option<BTreeMap<String, serde_json::Value>>,
    /// Nimbus of a Managed cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nimbus: Option<NimbusSpec>,
    /// UI of a Managed cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<UiSpec>,
    /// Seconds between two looks at the UI REST API (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: Option<i32>,
}

/// Nimbus daemons of a Managed cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NimbusSpec {
    /// Nimbus pods (default 1; more give leader fail-over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: Option<i32>,
    /// Size of each Nimbus pod's volume for its local state and blob store (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
    /// StorageClass of that volume (the cluster's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Resources of the Nimbus container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// UI daemon of a Managed cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UiSpec {
    /// UI pods (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3))]
    pub replicas: Option<i32>,
    /// Resources of the UI container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Lifecycle phase of a StormCluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    /// Daemons starting, or the UI REST API not answering yet.
    #[default]
    Pending,
    /// A Nimbus leader answers through the UI REST API: pools and topologies may use the cluster.
    Running,
    /// Storm answers but no Nimbus leads, or a cluster that was up stopped answering. (An offline
    /// seed or a daemon that is not ready is reported in the message and conditions, not here.)
    Degraded,
    /// The spec is invalid or the cluster's objects cannot be applied.
    Failed,
}

impl ClusterPhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Pending => "Pending",
            ClusterPhase::Running => "Running",
            ClusterPhase::Degraded => "Degraded",
            ClusterPhase::Failed => "Failed",
        }
    }
}

/// Observed state of a StormCluster, read from the Storm UI REST API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormClusterStatus {
    /// Lifecycle phase. Pools and topologies need `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// Human readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The UI REST API the operator reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui_url: Option<String>,
    /// The Nimbus seeds pools and topologies use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nimbus_seeds: Vec<String>,
    /// `host:port` of the leading Nimbus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nimbus_leader: Option<String>,
    /// Storm's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_version: Option<String>,
    /// Supervisors known to Nimbus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisors: Option<i32>,
    /// Worker slots in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_total: Option<i32>,
    /// Worker slots in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_used: Option<i32>,
    /// Worker slots free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_free: Option<i32>,
    /// Topologies known to Nimbus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topologies: Option<i32>,
    /// Conditions: `Ready`, `Reachable`, `DaemonsReady` (Managed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl StormCluster {
    /// Name of a Managed cluster's Nimbus StatefulSet and its headless Service.
    pub fn nimbus_name(&self) -> String {
        format!(
            "{}-nimbus",
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Name of a Managed cluster's UI Deployment and Service.
    pub fn ui_name(&self) -> String {
        format!("{}-ui", self.metadata.name.as_deref().unwrap_or_default())
    }

    /// Name of a Managed cluster's storm.yaml ConfigMap.
    pub fn config_name(&self) -> String {
        format!(
            "{}-config",
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// Nimbus replicas of a Managed cluster (default 1).
    pub fn nimbus_replicas(&self) -> i32 {
        self.spec
            .nimbus
            .as_ref()
            .and_then(|n| n.replicas)
            .unwrap_or(1)
    }

    /// The Nimbus seeds pools, topologies and the UI use: the spec's when External, the stable
    /// DNS names of the Nimbus pods (`<cluster>-nimbus-<i>.<cluster>-nimbus.<ns>.svc`) when Managed.
    pub fn nimbus_seeds(&self) -> Vec<String> {
        match self.spec.mode {
            ClusterMode::External => self.spec.nimbus_seeds.clone(),
            ClusterMode::Managed => {
                let ns = self.metadata.namespace.as_deref().unwrap_or("default");
                let svc = self.nimbus_name();
                (0..self.nimbus_replicas())
                    .map(|i| format!("{svc}-{i}.{svc}.{ns}.svc"))
                    .collect()
            }
        }
    }

    /// `storm.zookeeper.root`: `stormConfig`'s when set; `/storm/<namespace>/<name>` for a Managed
    /// cluster, so that clusters sharing a ZooKeeper do not share Storm's state; `None` (Storm's
    /// default `/storm`) for an External cluster that does not set it.
    pub fn zookeeper_root(&self) -> Option<serde_json::Value> {
        if let Some(root) = self
            .spec
            .storm_config
            .as_ref()
            .and_then(|c| c.get("storm.zookeeper.root"))
        {
            return Some(root.clone());
        }
        match self.spec.mode {
            ClusterMode::External => None,
            ClusterMode::Managed => Some(serde_json::json!(format!(
                "/storm/{}/{}",
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default()
            ))),
        }
    }

    /// The entries of `stormConfig` for which `keep` holds (e.g. the settings a client needs to
    /// reach Nimbus), for the submission and rebalance Jobs.
    pub fn storm_config_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, serde_json::Value> {
        self.spec
            .storm_config
            .iter()
            .flatten()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The Storm UI base URL: the spec's when External, the `<cluster>-ui` Service when Managed.
    pub fn ui_url(&self) -> Option<String> {
        match self.spec.mode {
            ClusterMode::External => self.spec.ui_url.clone(),
            ClusterMode::Managed => Some(self.spec.ui_url.clone().unwrap_or_else(|| {
                let ns = self.metadata.namespace.as_deref().unwrap_or("default");
                format!("http://{}.{ns}.svc:{UI_PORT}", self.ui_name())
            })),
        }
    }

    /// Seconds between two looks at the UI REST API.
    pub fn poll_interval_seconds(&self) -> i32 {
        self.spec
            .poll_interval_seconds
            .unwrap_or(DEFAULT_POLL_INTERVAL_SECONDS)
    }

    /// Whether pools and topologies may use the cluster.
    pub fn is_running(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase) == Some(ClusterPhase::Running)
    }
}

/// A storm.yaml key the operator sets itself, refused in `stormConfig` or `workerConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedKey {
    /// The storm.yaml key.
    pub key: &'static str,
    /// What sets it, or what to use instead.
    pub instead: &'static str,
}

impl ReservedKey {
    /// The message of the CEL rule (and of the operator's own check) refusing the key in `field`.
    pub fn message(&self, field: &str) -> String {
        format!("{field} must not set {}: {}", self.key, self.instead)
    }
}

const fn reserved(key: &'static str, instead: &'static str) -> ReservedKey {
    ReservedKey { key, instead }
}

/// Keys of a StormCluster's `stormConfig` the operator wires (in every mode; `nimbus.thrift.port`
/// is refused only for a Managed cluster, see [`MANAGED_THRIFT_PORT_MESSAGE`]).
pub const CLUSTER_RESERVED_KEYS: &[ReservedKey] = &[
    reserved("storm.zookeeper.servers", "use spec.zookeeperServers"),
    reserved(
        "nimbus.seeds",
        "use spec.nimbusSeeds of an External cluster (a Managed cluster's seeds are its Nimbus pods)",
    ),
    reserved(
        "storm.local.hostname",
        "the operator gives every pod its own address",
    ),
    reserved(
        "storm.local.dir",
        "the operator mounts a volume at /data (a pool's spec.storage chooses it)",
    ),
    reserved("storm.log.dir", "the operator mounts a volume at /logs"),
    reserved(
        "storm.log4j2.conf.dir",
        "the operator's log4j2 configuration writes the logs to the console as well",
    ),
    reserved(
        "supervisor.slots.ports",
        "use a StormWorkerPool's spec.ports",
    ),
    reserved(
        "ui.port",
        "a Managed cluster's UI listens on 8080 behind Service <cluster>-ui; an External cluster's UI is read at spec.uiUrl",
    ),
];

/// Keys of a StormWorkerPool's `workerConfig` the operator wires or takes from the cluster.
pub const POOL_RESERVED_KEYS: &[ReservedKey] = &[
    reserved(
        "storm.zookeeper.servers",
        "the pool takes its cluster's spec.zookeeperServers",
    ),
    reserved("nimbus.seeds", "the pool takes its cluster's Nimbus seeds"),
    reserved(
        "nimbus.thrift.port",
        "the pool takes it from its cluster (stormConfig of an External cluster)",
    ),
    reserved(
        "storm.zookeeper.root",
        "the pool takes it from its cluster (its stormConfig, or the Managed default)",
    ),
    reserved(
        "storm.local.hostname",
        "the operator gives every pod its own address",
    ),
    reserved(
        "storm.local.dir",
        "the operator mounts a volume at /data (use spec.storage)",
    ),
    reserved("storm.log.dir", "the operator mounts a volume at /logs"),
    reserved(
        "storm.log4j2.conf.dir",
        "the operator's log4j2 configuration writes the logs to the console as well",
    ),
    reserved("supervisor.slots.ports", "use spec.ports"),
];

/// Why a Managed cluster's `stormConfig` may not set `nimbus.thrift.port`.
pub const MANAGED_THRIFT_PORT_MESSAGE: &str = "stormConfig must not set nimbus.thrift.port on a Managed cluster: its Nimbus listens on 6627 behind Service <cluster>-nimbus (set it only for an External cluster)";

/// Why a `zookeeperServers` entry may not carry a port.
pub const ZOOKEEPER_PORT_MESSAGE: &str = "zookeeperServers entries are host names without a port: Storm appends storm.zookeeper.port to each (set that in stormConfig; default 2181), so host:2181 would become host:2181:2181";

/// The first reserved key `config` sets, as the message refusing it (the operator's own check,
/// for API servers that skip the CRD's CEL rules).
pub fn reserved_key_in(
    config: Option<&BTreeMap<String, serde_json::Value>>,
    reserved: &[ReservedKey],
    field: &str,
) -> Option<String> {
    let config = config?;
    reserved
        .iter()
        .find(|r| config.contains_key(r.key))
        .map(|r| r.message(field))
}

/// The image reference of `repository` and `tag`: `repository@sha256:<hex>` when the tag is a
/// digest (`sha256:<hex>`), `repository:tag` otherwise. The one place every Storm image the
/// operator runs (daemons, supervisors, Jobs) is written.
pub fn image_reference(repository: &str, tag: &str) -> String {
    if tag.starts_with("sha256:") {
        format!("{repository}@{tag}")
    } else {
        format!("{repository}:{tag}")
    }
}

impl StormCluster {
    /// The cluster's image: its daemons', and the default of its pools and Jobs
    /// (`storm:2.6.4` when unset), through [`image_reference`].
    pub fn image_reference(&self) -> String {
        let image = self.spec.image.as_ref();
        image_reference(
            image
                .and_then(|i| i.repository.as_deref())
                .unwrap_or(DEFAULT_STORM_IMAGE),
            image
                .and_then(|i| i.tag.as_deref())
                .unwrap_or(DEFAULT_STORM_TAG),
        )
    }
}

impl StormTopology {
    /// The topology's name in Storm: `spec.topologyName`, else `metadata.name`.
    pub fn storm_name(&self) -> String {
        self.spec
            .topology_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// Whether the operator submits (and kills) this topology: it has a jar.
    pub fn is_submitted_by_operator(&self) -> bool {
        self.spec.jar.is_some()
    }

    /// Whether pools of this topology should run their workers.
    pub fn serves_pools(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(TopologyPhase::serves_pools)
    }
}

impl StormWorkerPoolSpec {
    /// The autoscaling settings when autoscaling is enabled.
    pub fn enabled_autoscaling(&self) -> Option<&AutoscalingSpec> {
        self.autoscaling.as_deref().filter(|a| a.enabled)
    }

    /// The slot ports, with defaults applied.
    pub fn ports(&self) -> PortsSpec {
        self.ports.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    /// The CEL rules on the root of the StormWorkerPool schema, as (rule, message).
    fn root_rules() -> Vec<(String, String)> {
        let crd = StormWorkerPool::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        schema
            .x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| (r.rule.clone(), r.message.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn image_references_use_at_for_digests() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("storm", "2.6.4", "storm:2.6.4".to_string()),
            (
                "registry.local:5000/storm",
                digest.as_str(),
                format!("registry.local:5000/storm@{digest}"),
            ),
            ("apache/storm", "latest", "apache/storm:latest".to_string()),
        ];
        for (repository, tag, want) in cases {
            assert_eq!(image_reference(repository, tag), want);
        }
        let mut cluster = StormCluster::new("s", StormClusterSpec::default());
        assert_eq!(cluster.image_reference(), "storm:2.6.4");
        cluster.spec.image = Some(ImageSpec {
            tag: Some(digest.clone()),
            ..ImageSpec::default()
        });
        assert_eq!(cluster.image_reference(), format!("storm@{digest}"));
    }

    #[test]
    fn crd_limits_the_pool_name_to_what_the_headless_service_allows() {
        let rules = root_rules();
        let rule = format!("self.metadata.name.size() <= {MAX_POOL_NAME_LENGTH}");
        let (_, message) = rules
            .iter()
            .find(|(r, _)| *r == rule)
            .unwrap_or_else(|| panic!("no rule {rule:?} in {rules:?}"));
        assert!(message.contains("at most 54 characters"), "{message}");
        assert!(message.contains("-headless"), "{message}");
        assert_eq!(MAX_POOL_NAME_LENGTH + "-headless".len(), 63);
        assert!(
            rules
                .iter()
                .any(|(r, _)| r == "self.metadata.name.matches('^[a-z]')"),
            "{rules:?}"
        );
    }
}
