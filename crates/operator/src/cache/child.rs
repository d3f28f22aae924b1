//! What the caches keep of the children the operator applies (Deployments, Services,
//! ConfigMaps, HPAs, PDBs and StatefulSets): a [`Child`] view, decoded straight from the watch,
//! with the identity, the controller ownerReference, the applied hash and the few `spec` and
//! `status` fields an owner's reconcile reads. The rest of the object (a Deployment's pod
//! template, a ConfigMap's data, labels, other annotations) is never allocated: a cached
//! Deployment took 4.3 KB as a slimmed `k8s-openapi` struct, most of it the inline empty pod
//! template, and takes 1.2 KB as a view (`cargo bench -p workerpool-operator --bench cache`).

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

use crate::apply::APPLIED_HASH_ANNOTATION;

/// A kind the operator applies as a child and caches as a [`Child`] view.
pub trait ChildKind:
    Resource<Scope = NamespaceResourceScope>
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// What the view keeps of `spec` ([`IgnoredAny`]: nothing).
    type Spec: DeserializeOwned + Clone + Debug + Send + Sync + 'static;
    /// What the view keeps of `status` ([`IgnoredAny`]: nothing).
    type Status: DeserializeOwned + Clone + Debug + Default + Send + Sync + 'static;

    /// Gives back the spare capacity of the status' lists (a decoded list may hold twice its
    /// length).
    fn compact(_status: &mut Self::Status) {}
}

/// The cached view of a child of kind `K`: its metadata holds only the name, namespace, uid,
/// resourceVersion, generation, deletion mark and controller ownerReference (which wakes the
/// owner on a change); the applied-hash annotation is kept aside, and `spec` and `status` keep
/// what [`ChildKind`] names.
#[derive(Debug)]
pub struct Child<K: ChildKind> {
    /// Identity and controller ownerReference.
    pub metadata: ObjectMeta,
    /// The [`APPLIED_HASH_ANNOTATION`] of the object.
    pub applied_hash: Option<String>,
    /// Which of the operator's field managers hold `spec.replicas` and more, read from
    /// managedFields while decoding (the entries themselves are not kept); `None` for an object
    /// without managedFields (built, not served).
    pub replicas_owners: Option<ReplicasOwners>,
    /// What the owner reads of `spec`.
    pub spec: Option<K::Spec>,
    /// What the owner reads of `status`.
    pub status: Option<K::Status>,
}

impl<K: ChildKind> Clone for Child<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            applied_hash: self.applied_hash.clone(),
            replicas_owners: self.replicas_owners,
            spec: self.spec.clone(),
            status: self.status.clone(),
        }
    }
}

impl<K: ChildKind> Child<K> {
    /// The view of a whole object (as an apply or a GET returns it).
    pub fn of(object: &K) -> Self {
        // Through JSON, as the watch decodes it: the same fields, the same way.
        serde_json::to_value(object)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_else(|| Self {
                metadata: kept_metadata(object.metadata().clone()),
                applied_hash: crate::apply::applied_hash_of(object).map(str::to_string),
                replicas_owners: None,
                spec: None,
                status: None,
            })
    }
}

/// The metadata a view keeps of `meta`.
fn kept_metadata(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp,
        owner_references: controller_only(meta.owner_references),
        ..ObjectMeta::default()
    }
}

/// The controller's ownerReference of `owners`, the only one a view keeps.
fn controller_only(owners: Option<Vec<OwnerReference>>) -> Option<Vec<OwnerReference>> {
    let mut kept: Vec<OwnerReference> = owners
        .into_iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .collect();
    kept.shrink_to_fit();
    (!kept.is_empty()).then_some(kept)
}

impl<K: ChildKind> Resource for Child<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = NamespaceResourceScope;
}

impl<K: ChildKind> Metadata for Child<K> {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K: ChildKind> crate::cache::Slim for Child<K> {
    /// Nothing to drop: the view was decoded with only what it keeps.
    fn slim(&mut self) {}
}

/// The metadata fields a view decodes; every other field is skipped unread.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    deletion_timestamp: Option<Time>,
    owner_references: Option<Vec<OwnerReference>>,
    annotations: Option<AppliedHash>,
    managed_fields: Option<ReplicasOwners>,
}

/// What an autoscaled Deployment's hand-off of `spec.replicas` to its HPA needs to know of its
/// managedFields: whether the operator's own apply ([`crate::FIELD_MANAGER`]) owns
/// `spec.replicas`, and whether the hand-off manager ([`crate::HANDOFF_MANAGER`]) owns, by an
/// apply, any field besides it. Both false: the hand-off has nothing to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicasOwners {
    /// The operator's apply owns `spec.replicas`.
    pub operator_owns_replicas: bool,
    /// The hand-off manager's apply owns fields other than `spec.replicas`.
    pub handoff_owns_more: bool,
}

impl ReplicasOwners {
    /// Whether the hand-off has nothing to do.
    pub fn settled(self) -> bool {
        self == Self::default()
    }

    /// Read from the managedFields of a whole object (a GET's or an apply's response).
    pub fn of(meta: &ObjectMeta) -> Self {
        let mut owners = Self::default();
        for entry in meta.managed_fields.iter().flatten() {
            let fields = entry
                .fields_v1
                .as_ref()
                .and_then(|f| ReplicasFields::deserialize(&f.0).ok())
                .unwrap_or_default();
            owners.add(
                entry.manager.as_deref(),
                entry.operation.as_deref(),
                &fields,
            );
        }
        owners
    }

    /// Takes in one managedFields entry: `manager`'s `operation` on `fields`.
    fn add(&mut self, manager: Option<&str>, operation: Option<&str>, fields: &ReplicasFields) {
        if operation != Some("Apply") {
            return;
        }
        match manager {
            Some(crate::FIELD_MANAGER) => self.operator_owns_replicas |= fields.replicas,
            Some(crate::HANDOFF_MANAGER) => self.handoff_owns_more |= fields.more,
            _ => {}
        }
    }
}

/// Decodes a managedFields list into [`ReplicasOwners`], entry by entry, without keeping any.
impl<'de> Deserialize<'de> for ReplicasOwners {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ReplicasOwners;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of managedFields entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ReplicasOwners, A::Error> {
                let mut owners = ReplicasOwners::default();
                while let Some(entry) = seq.next_element::<ManagedEntry<'de>>()? {
                    owners.add(
                        entry.manager.as_deref(),
                        entry.operation.as_deref(),
                        &entry.fields_v1.unwrap_or_default(),
                    );
                }
                Ok(owners)
            }
        }
        deserializer.deserialize_seq(Visit)
    }
}

/// The parts of a managedFields entry [`ReplicasOwners`] reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedEntry<'a> {
    #[serde(borrow)]
    manager: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    operation: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "fieldsV1")]
    fields_v1: Option<ReplicasFields>,
}

/// Of a `FieldsV1` tree: whether it names `spec.replicas`, and whether it names any field
/// besides it (`"."` keys, the node itself, do not count).
#[derive(Default)]
struct ReplicasFields {
    replicas: bool,
    more: bool,
}

impl<'de> Deserialize<'de> for ReplicasFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Visits the root (`spec: false`) or the `f:spec` node (`spec: true`).
        struct Visit {
            spec: bool,
        }
        impl<'de> serde::de::DeserializeSeed<'de> for Visit {
            type Value = ReplicasFields;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ReplicasFields, D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ReplicasFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a FieldsV1 tree")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ReplicasFields, A::Error> {
                let mut found = ReplicasFields::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match (self.spec, key.as_ref()) {
                        (_, ".") => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        (false, "f:spec") => {
                            let spec = map.next_value_seed(Visit { spec: true })?;
                            found.replicas |= spec.replicas;
                            found.more |= spec.more;
                        }
                        (true, "f:replicas") => {
                            map.next_value::<IgnoredAny>()?;
                            found.replicas = true;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            found.more = true;
                        }
                    }
                }
                Ok(found)
            }
        }
        deserializer.deserialize_map(Visit { spec: false })
    }
}

/// The value of the [`APPLIED_HASH_ANNOTATION`] in an annotations map; the other entries are
/// skipped unread.
struct AppliedHash(Option<String>);

impl<'de> Deserialize<'de> for AppliedHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = AppliedHash;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AppliedHash, A::Error> {
                let mut hash = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == APPLIED_HASH_ANNOTATION {
                        hash = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(AppliedHash(hash))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A child object as decoded.
#[derive(Deserialize)]
#[serde(bound = "")]
struct Raw<K: ChildKind> {
    #[serde(default)]
    metadata: RawMeta,
    spec: Option<K::Spec>,
    status: Option<K::Status>,
}

impl<'de, K: ChildKind> Deserialize<'de> for Child<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Raw::<K>::deserialize(deserializer)?;
        let m = raw.metadata;
        let mut status = raw.status;
        if let Some(status) = status.as_mut() {
            K::compact(status);
        }
        Ok(Self {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                generation: m.generation,
                deletion_timestamp: m.deletion_timestamp,
                owner_references: controller_only(m.owner_references),
                ..ObjectMeta::default()
            },
            applied_hash: m.annotations.and_then(|a| a.0),
            replicas_owners: m.managed_fields,
            spec: raw.spec,
            status,
        })
    }
}

/// `spec.replicas`, all a Deployment's or StatefulSet's view keeps of its spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Replicas {
    /// The desired count.
    pub replicas: Option<i32>,
}

/// What an HPA's view keeps of its status: the current count and the conditions (its current
/// metrics are skipped).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HpaStatus {
    /// The count the HPA last saw.
    pub current_replicas: Option<i32>,
    /// `AbleToScale`, `ScalingActive`, `ScalingLimited`.
    pub conditions: Option<Vec<HorizontalPodAutoscalerCondition>>,
}

/// A kind whose view keeps nothing of `spec` and `status`.
macro_rules! identity_only {
    ($($kind:ty),* $(,)?) => {$(
        impl ChildKind for $kind {
            type Spec = IgnoredAny;
            type Status = IgnoredAny;
        }
    )*};
}

identity_only!(ConfigMap, Service, PodDisruptionBudget);

impl ChildKind for Deployment {
    type Spec = Replicas;
    type Status = DeploymentStatus;
    fn compact(status: &mut DeploymentStatus) {
        status.conditions.iter_mut().for_each(Vec::shrink_to_fit);
    }
}

impl ChildKind for StatefulSet {
    type Spec = Replicas;
    type Status = StatefulSetStatus;
    fn compact(status: &mut StatefulSetStatus) {
        status.conditions.iter_mut().for_each(Vec::shrink_to_fit);
    }
}

impl ChildKind for HorizontalPodAutoscaler {
    type Spec = IgnoredAny;
    type Status = HpaStatus;
    fn compact(status: &mut HpaStatus) {
        status.conditions.iter_mut().for_each(Vec::shrink_to_fit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "p-workers", "namespace": "ns", "uid": "d1",
                "resourceVersion": "7", "generation": 3,
                "labels": {"app.kubernetes.io/name": "storm-worker"},
                "annotations": {(APPLIED_HASH_ANNOTATION): "abc", "deployment.kubernetes.io/revision": "2"},
                "ownerReferences": [
                    {"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool", "name": "p",
                     "uid": "pool-uid", "controller": true, "blockOwnerDeletion": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "cm"}],
                "managedFields": [{"manager": "x", "operation": "Apply"}],
                "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app.kubernetes.io/instance": "p"}},
                "template": {"metadata": {"labels": {"app.kubernetes.io/instance": "p"}},
                    "spec": {"containers": [{"name": "worker", "image": "storm:2"}]}}},
            "status": {"replicas": 4, "readyReplicas": 3,
                "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
        }))
        .expect("a deployment")
    }

    #[test]
    fn a_view_keeps_identity_owner_hash_replicas_and_status_only() {
        let full = deployment();
        let view = Child::of(&full);
        let m = &view.metadata;
        assert_eq!(m.name.as_deref(), Some("p-workers"));
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        assert_eq!(m.uid.as_deref(), Some("d1"));
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(m.generation, Some(3));
        assert!(m.labels.is_none() && m.annotations.is_none() && m.managed_fields.is_none());
        assert!(m.creation_timestamp.is_none());
        let owners = m
            .owner_references
            .as_ref()
            .expect("the controller reference");
        assert_eq!(owners.len(), 1, "only the controller's reference");
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("StormWorkerPool", "p")
        );
        assert_eq!(owners[0].api_version, "storm.apache.org/v1beta1");
        assert_eq!(view.applied_hash.as_deref(), Some("abc"));
        assert_eq!(view.spec, Some(Replicas { replicas: Some(4) }));
        assert_eq!(view.status, full.status);
        assert_eq!(
            crate::cache::controller_owner::<workerpool_api::StormWorkerPool, _>(&view)
                .map(|o| o.name),
            Some("p".to_string()),
            "a change of the child still wakes its pool"
        );
    }

    #[test]
    fn a_view_is_up_to_date_with_the_body_of_the_same_hash_from_its_owner() {
        let full = deployment();
        let view = Child::of(&full);
        let mut owner = workerpool_api::StormWorkerPool::new("p", Default::default());
        owner.metadata.uid = Some("pool-uid".into());
        let mut desired = full.clone();
        desired.metadata.uid = None;
        assert!(crate::controllers::up_to_date(&view, &desired, &owner));
        desired.metadata.annotations =
            Some([(APPLIED_HASH_ANNOTATION.to_string(), "new".to_string())].into());
        assert!(!crate::controllers::up_to_date(&view, &desired, &owner));
        owner.metadata.uid = Some("another-pool".into());
        desired = full;
        assert!(!crate::controllers::up_to_date(&view, &desired, &owner));
    }

    /// The [`ReplicasOwners`] of a Deployment served with `managed` as its managedFields.
    fn owners(managed: serde_json::Value) -> Option<ReplicasOwners> {
        let mut object = serde_json::to_value(deployment()).expect("json");
        object["metadata"]["managedFields"] = managed;
        serde_json::from_value::<Child<Deployment>>(object)
            .expect("a view")
            .replicas_owners
    }

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> serde_json::Value {
        json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
               "time": "2026-12-07T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields})
    }

    #[test]
    fn a_view_reads_who_holds_the_replicas_from_managed_fields() {
        use crate::{FIELD_MANAGER, HANDOFF_MANAGER};
        let replicas_alone = json!({".": {}, "f:spec": {".": {}, "f:replicas": {}}});
        let template =
            json!({"f:metadata": {"f:labels": {}}, "f:spec": {"f:template": {"f:spec": {}}}});
        let settled = ReplicasOwners::default();
        assert_eq!(
            owners(json!([
                entry(FIELD_MANAGER, "Apply", template.clone()),
                entry(HANDOFF_MANAGER, "Apply", replicas_alone.clone()),
                entry(
                    "kube-controller-manager",
                    "Update",
                    json!({"f:spec": {"f:replicas": {}}, "f:status": {}})
                ),
            ])),
            Some(settled),
            "the hand-off is over: the operator's apply leaves replicas alone, the hand-off \
             manager holds nothing else, and another manager's fields do not count"
        );
        assert_eq!(
            owners(json!([entry(
                FIELD_MANAGER,
                "Apply",
                json!({"f:spec": {"f:replicas": {}, "f:template": {}}})
            )])),
            Some(ReplicasOwners {
                operator_owns_replicas: true,
                handoff_owns_more: false
            })
        );
        assert_eq!(
            owners(json!([
                entry(FIELD_MANAGER, "Apply", template.clone()),
                entry(
                    HANDOFF_MANAGER,
                    "Apply",
                    json!({"f:spec": {"f:replicas": {}, "f:template": {}}})
                ),
            ])),
            Some(ReplicasOwners {
                operator_owns_replicas: false,
                handoff_owns_more: true
            })
        );
        assert_eq!(
            owners(json!([entry(
                FIELD_MANAGER,
                "Update",
                json!({"f:spec": {"f:replicas": {}}})
            )])),
            Some(settled),
            "only applies count"
        );
        assert_eq!(owners(json!([])), Some(settled), "no apply holds anything");
        let view = Child::of(&deployment());
        assert_eq!(
            view.replicas_owners,
            Some(settled),
            "the test object's one entry is another manager's"
        );
        let mut built = deployment();
        built.metadata.managed_fields = None;
        assert_eq!(
            Child::of(&built).replicas_owners,
            None,
            "an object without managedFields tells nothing"
        );
    }

    #[test]
    fn fields_outside_a_path() {
        let cases = [
            (json!({}), false),
            (json!({"f:spec": {"f:replicas": {}}}), false),
            (json!({"f:spec": {"f:replicas": {}, ".": {}}}), false),
            (json!({"f:spec": {}}), false),
            (json!({"f:spec": {"f:replicas": {}, "f:paused": {}}}), true),
            (json!({"f:metadata": {"f:labels": {}}}), true),
            (
                json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}),
                true,
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(
                ReplicasFields::deserialize(&fields).expect("fields").more,
                want,
                "{fields}"
            );
        }
    }

    #[test]
    fn a_view_decodes_from_a_watch_event_without_annotations_or_owners() {
        let view: Child<Service> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "ns", "annotations": null, "ownerReferences": null},
            "spec": {"clusterIP": "None", "ports": [{"port": 6700}]}
        }))
        .expect("a service view");
        assert_eq!(view.metadata.name.as_deref(), Some("s"));
        assert!(view.applied_hash.is_none() && view.metadata.owner_references.is_none());
    }

    #[test]
    fn an_hpa_view_keeps_the_count_and_conditions() {
        let view: Child<HorizontalPodAutoscaler> = serde_json::from_value(json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "d"}},
            "status": {"currentReplicas": 2, "desiredReplicas": 2,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 10}}}],
                "conditions": [{"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric"}]}
        }))
        .expect("an hpa view");
        let status = view.status.expect("status");
        assert_eq!(status.current_replicas, Some(2));
        assert_eq!(
            status.conditions.expect("conditions")[0].type_,
            "ScalingActive"
        );
    }
}
