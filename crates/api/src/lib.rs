//! Custom resource types of workerpool-operator.
//!
//! This crate holds the API only: the Rust types behind every CRD, their defaults, CEL
//! validation rules and helpers for `metav1.Condition`-style status conditions. It does no I/O.
//!
//! - [`storm`]: `storm.apache.org/v1beta1` — [`StormWorkerPool`], [`StormTopology`], [`StormCluster`].
//! - [`qworker`]: `quickube.com/v1alpha1` — [`QWorker`], [`ScalerConfig`].

// kube-derive's `printcolumn(...)` arguments repeat keys such as `type_`, which clippy mistakes
// for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod packed;
pub mod qworker;
pub mod schema;
pub mod storm;

pub use qworker::{
    BrokerConnection, BrokerType, OomKill, QWorker, QWorkerSpec, QWorkerStatus, ScaleConfig,
    ScalerConfig, ScalerConfigSpec, ScalerConfigStatus, SecretKeyRef, SecretValue,
};
pub use storm::{
    AutoscalingSpec, ClusterMode, ClusterPhase, CustomMetric, ImageSpec, JarSource,
    MetricSourceType, NimbusSpec, PodDisruptionBudgetSpec, PoolPhase, PoolPodTemplate,
    PoolStorageSpec, PortsSpec, RebalanceRecord, RebalanceSpec, StormCluster, StormClusterSpec,
    StormClusterStatus, StormTopology, StormTopologySpec, StormTopologyStatus, StormWorkerPool,
    StormWorkerPoolSpec, StormWorkerPoolStatus, TemplateMetadata, TopologyPhase, UiSpec,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CustomResourceDefinition the operator serves, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        StormWorkerPool::crd(),
        StormTopology::crd(),
        StormCluster::crd(),
        QWorker::crd(),
        ScalerConfig::crd(),
    ]
}
