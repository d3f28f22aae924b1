//! What the topology controller keeps of each StormWorkerPool: the few fields its rebalance
//! decision reads ([`PoolSummary`]), deserialized from the same watch events the pool controller
//! gets. The rest of a pool (its pod template, autoscaling, conditions) is never parsed or kept,
//! so the second cache of every pool costs about a sixth of the first.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use workerpool_api::storm::{PoolPhase, PortsSpec, StormWorkerPool};

/// A StormWorkerPool as the topology controller reads it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PoolSummary {
    /// Name, namespace, uid, resourceVersion.
    pub metadata: ObjectMeta,
    /// `spec.topologyRef` and `spec.ports`.
    pub spec: SummarySpec,
    /// The replica counts of the status.
    #[serde(default)]
    pub status: Option<SummaryStatus>,
}

/// The part of the pool's spec the topology controller reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SummarySpec {
    /// The topology the pool serves.
    pub topology_ref: String,
    /// Worker slots (`ports.count` per pod).
    #[serde(default)]
    pub ports: Option<PortsSpec>,
}

/// The part of the pool's status the topology controller reads.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SummaryStatus {
    /// `status.replicas`.
    #[serde(default)]
    pub replicas: i32,
    /// `status.readyReplicas`.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `status.updatedReplicas`.
    #[serde(default)]
    pub updated_replicas: i32,
    /// `status.phase`.
    #[serde(default)]
    pub phase: Option<PoolPhase>,
}

impl PoolSummary {
    /// The summary of `pool` (as its watch event would give it).
    pub fn of(pool: &StormWorkerPool) -> Self {
        Self {
            metadata: pool.metadata.clone(),
            spec: SummarySpec {
                topology_ref: pool.spec.topology_ref.clone(),
                ports: pool.spec.ports.clone(),
            },
            status: pool.status.as_ref().map(|s| SummaryStatus {
                replicas: s.replicas,
                ready_replicas: s.ready_replicas,
                updated_replicas: s.updated_replicas,
                phase: s.phase,
            }),
        }
    }

    /// Worker slots per pod (`ports.count`, default as the pool's).
    pub fn slots_per_pod(&self) -> i32 {
        self.spec.ports.clone().unwrap_or_default().count
    }
}

impl Resource for PoolSummary {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        StormWorkerPool::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        StormWorkerPool::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        StormWorkerPool::version(&())
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        StormWorkerPool::api_version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        StormWorkerPool::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl crate::cache::Slim for PoolSummary {
    /// Keeps name, namespace, uid, resourceVersion and generation: labels, annotations and
    /// owners decide nothing here.
    fn slim(&mut self) {
        crate::cache::slim_metadata(self);
        self.metadata.labels = None;
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_read_as_a_summary_keeps_what_the_rebalance_reads() {
        let pool: StormWorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "b"}},
            "spec": {"topologyRef": "t", "replicas": 3, "ports": {"start": 6700, "count": 2},
                     "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 5}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True", "reason": "x",
                                       "message": "m", "lastTransitionTime": "2026-11-26T10:00:00Z"}]}
        }))
        .expect("pool");
        // What the watch gives: the same JSON read as a summary.
        let mut watched: PoolSummary =
            serde_json::from_value(serde_json::to_value(&pool).expect("json")).expect("summary");
        assert_eq!(watched, PoolSummary::of(&pool));
        crate::cache::Slim::slim(&mut watched);
        assert_eq!(watched.spec.topology_ref, "t");
        assert_eq!(watched.slots_per_pod(), 2);
        assert_eq!(
            watched.status,
            Some(SummaryStatus {
                replicas: 3,
                ready_replicas: 2,
                updated_replicas: 3,
                phase: Some(PoolPhase::Running),
            })
        );
        assert!(watched.metadata.labels.is_none());
        assert_eq!(watched.metadata.uid.as_deref(), Some("u"));
        let default_ports = PoolSummary {
            spec: SummarySpec {
                topology_ref: "t".into(),
                ports: None,
            },
            ..PoolSummary::default()
        };
        assert_eq!(default_ports.slots_per_pod(), PortsSpec::default().count);
        assert!(
            std::mem::size_of::<PoolSummary>() * 4 < std::mem::size_of::<StormWorkerPool>(),
            "a summary is a fraction of a pool"
        );
    }
}
