//! `storm.apache.org/v1beta1`: StormWorkerPool, StormTopology and StormCluster.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscalerBehavior,
};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{optional_pod_spec, preserve_unknown_map};

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
    /// Storm configuration entries written to the pool's storm.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_map")]
    pub worker_config: Option<BTreeMap<String, serde_json::Value>>,
    /// JVM options of the worker processes (`worker.childopts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jvm_opts: Option<Vec<String>>,
    /// Worker slot ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortsSpec>,
    /// Pod template customisation, merged with the operator's worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PoolPodTemplate>,
    /// Horizontal pod autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Optional PodDisruptionBudget `<pool>-pdb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudgetSpec>,
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
}

/// A Storm topology; pools read its `clusterRef` and `status.phase`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
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
    doc = "An Apache Storm topology. Worker pools wait for it to be Running.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterRef"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
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
    /// Location of the topology jar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jar: Option<String>,
    /// Main class that submits the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_class: Option<String>,
    /// Topology configuration entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_map")]
    pub config: Option<BTreeMap<String, serde_json::Value>>,
}

/// Observed state of a StormTopology (written by whatever submits it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormTopologyStatus {
    /// Phase, e.g. `Pending`, `Running`, `Failed`. Pools need `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Human readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A Storm cluster: ZooKeeper, Nimbus and the default image and config of its workers.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
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
    doc = "An Apache Storm cluster. Worker pools take ZooKeeper servers, Nimbus seeds, image and config from it.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StormClusterSpec {
    /// Default worker image of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// ZooKeeper servers (`storm.zookeeper.servers`).
    #[schemars(length(min = 1))]
    pub zookeeper_servers: Vec<String>,
    /// Nimbus seeds (`nimbus.seeds`).
    #[schemars(length(min = 1))]
    pub nimbus_seeds: Vec<String>,
    /// Cluster-wide storm.yaml entries; a pool's `workerConfig` overrides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_map")]
    pub storm_config: Option<BTreeMap<String, serde_json::Value>>,
}

/// Observed state of a StormCluster (written by whatever runs it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StormClusterStatus {
    /// Phase, e.g. `Pending`, `Running`. Pools need `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Human readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StormWorkerPoolSpec {
    /// The autoscaling settings when autoscaling is enabled.
    pub fn enabled_autoscaling(&self) -> Option<&AutoscalingSpec> {
        self.autoscaling.as_ref().filter(|a| a.enabled)
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
