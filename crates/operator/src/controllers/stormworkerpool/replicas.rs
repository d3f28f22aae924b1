//! Who owns an autoscaled pool's `Deployment.spec.replicas`, planned without I/O.
//!
//! While autoscaling is enabled the HPA owns the count, so the operator's own field manager
//! ([`crate::FIELD_MANAGER`]) must never own it: its apply leaves `replicas` out. A second field
//! manager, [`HANDOFF_MANAGER`], holds the count until the HPA writes it:
//! - when the Deployment does not exist yet, the hand-off manager creates it at the initial count
//!   ([`super::build::initial_replicas`]); the operator's apply then takes the other fields, and
//!   the hand-off manager gives them up by applying `replicas` alone. An initial count of 1 is
//!   the Deployment's default: the operator's apply alone creates it, and no one owns the count
//!   until the HPA writes it;
//! - when autoscaling is turned on for a Deployment whose count the operator's apply set, the
//!   hand-off manager takes the current count before the operator's apply drops it.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Resource;
use serde_json::Value;

use crate::FIELD_MANAGER;

pub use crate::HANDOFF_MANAGER;

/// The count a Deployment created without `spec.replicas` gets (the API server's default).
pub const DEFAULT_REPLICAS: i32 = 1;

/// `spec.replicas` as a managedFields (`FieldsV1`) path.
pub const REPLICAS_FIELD: [&str; 2] = ["f:spec", "f:replicas"];

/// What the hand-off manager does before the operator's apply of an autoscaled Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeApply {
    /// Nothing: the count is already the HPA's or the hand-off manager's.
    Nothing,
    /// The Deployment does not exist: create it with the full object at this count (the apply
    /// is not forced, so a Deployment created meanwhile by someone else is not overwritten).
    Create(i32),
    /// The operator's apply owns the count: take it over at this (the current) count, forced.
    HandOff(i32),
}

/// The hand-off manager's requests around the operator's apply of an autoscaled Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicasPlan {
    /// Before the operator's apply.
    pub before: BeforeApply,
    /// After the operator's apply: apply `spec.replicas` alone at this count (not forced), so
    /// that the hand-off manager gives up every other field it holds since it created the
    /// Deployment. Done after the operator's apply, which by then owns those fields too, so
    /// none of them is removed.
    pub release_at: Option<i32>,
}

/// Plans the hand-off for an autoscaled pool whose Deployment is `current` (`None`: it does not
/// exist) and whose initial count is `initial`.
pub fn plan(current: Option<&Deployment>, initial: i32) -> ReplicasPlan {
    let Some(current) = current else {
        if initial == DEFAULT_REPLICAS {
            return ReplicasPlan {
                before: BeforeApply::Nothing,
                release_at: None,
            };
        }
        return ReplicasPlan {
            before: BeforeApply::Create(initial),
            release_at: Some(initial),
        };
    };
    let replicas = current.spec.as_ref().and_then(|s| s.replicas);
    let before = match replicas {
        Some(r) if manager_owns(current, FIELD_MANAGER, &REPLICAS_FIELD) => BeforeApply::HandOff(r),
        _ => BeforeApply::Nothing,
    };
    // A hand-off applies `replicas` alone, which releases everything else already.
    let release_at = match before {
        BeforeApply::Nothing if manager_owns_beyond(current, HANDOFF_MANAGER, &REPLICAS_FIELD) => {
            replicas
        }
        _ => None,
    };
    ReplicasPlan { before, release_at }
}

fn applied_fields<'a, K: Resource>(
    object: &'a K,
    manager: &'a str,
) -> impl Iterator<Item = &'a Value> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(move |m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .map(|f| &f.0)
}

/// Whether `manager` owns the field at `path` (managedFields `FieldsV1` keys) by an apply.
pub fn manager_owns<K: Resource>(object: &K, manager: &str, path: &[&str]) -> bool {
    applied_fields(object, manager)
        .any(|f| path.iter().try_fold(f, |node, key| node.get(key)).is_some())
}

/// Whether `manager` owns, by an apply, any field outside `path`.
pub fn manager_owns_beyond<K: Resource>(object: &K, manager: &str, path: &[&str]) -> bool {
    applied_fields(object, manager).any(|f| has_fields_outside(f, path))
}

/// Whether the `FieldsV1` tree `node` names a field that is not `path` or under it. `"."` keys
/// (the node itself, for list items) do not count.
fn has_fields_outside(node: &Value, path: &[&str]) -> bool {
    let Some(map) = node.as_object() else {
        return false;
    };
    map.iter().any(|(key, child)| match path.split_first() {
        _ if key == "." => false,
        Some((first, rest)) if key.as_str() == *first => {
            !rest.is_empty() && has_fields_outside(child, rest)
        }
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn deployment(replicas: i32, managers: Vec<ManagedFieldsEntry>) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        };
        d.metadata.managed_fields = Some(managers);
        d
    }

    fn everything() -> Value {
        json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}})
    }
    fn all_but_replicas() -> Value {
        json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:template": {"f:spec": {}}}})
    }
    fn only_replicas() -> Value {
        json!({"f:spec": {"f:replicas": {}}})
    }

    #[test]
    fn the_hand_off_manager_creates_takes_over_or_releases() {
        let hpa_owns = entry(
            "kube-controller-manager",
            "Update",
            json!({"f:spec": {"f:replicas": {}}}),
        );
        let cases = [
            (
                "no Deployment: created at the initial count, then released",
                None,
                BeforeApply::Create(2),
                Some(2),
            ),
            (
                "autoscaling turned on: the operator's count is handed over",
                Some(deployment(
                    7,
                    vec![entry(FIELD_MANAGER, "Apply", everything())],
                )),
                BeforeApply::HandOff(7),
                None,
            ),
            (
                "hand-off done, the HPA scaled: nothing to do",
                Some(deployment(
                    9,
                    vec![
                        entry(FIELD_MANAGER, "Apply", all_but_replicas()),
                        hpa_owns.clone(),
                    ],
                )),
                BeforeApply::Nothing,
                None,
            ),
            (
                "hand-off manager holds replicas only: nothing to do",
                Some(deployment(
                    2,
                    vec![
                        entry(FIELD_MANAGER, "Apply", all_but_replicas()),
                        entry(HANDOFF_MANAGER, "Apply", only_replicas()),
                    ],
                )),
                BeforeApply::Nothing,
                None,
            ),
            (
                "a create whose release failed: released at the current count",
                Some(deployment(
                    4,
                    vec![
                        entry(HANDOFF_MANAGER, "Apply", everything()),
                        hpa_owns.clone(),
                    ],
                )),
                BeforeApply::Nothing,
                Some(4),
            ),
            (
                "the operator's count owned by an update, not an apply: left alone",
                Some(deployment(
                    3,
                    vec![entry(FIELD_MANAGER, "Update", everything())],
                )),
                BeforeApply::Nothing,
                None,
            ),
        ];
        for (what, current, before, release_at) in cases {
            assert_eq!(
                plan(current.as_ref(), 2),
                ReplicasPlan { before, release_at },
                "{what}"
            );
        }
        assert_eq!(
            plan(None, DEFAULT_REPLICAS),
            ReplicasPlan {
                before: BeforeApply::Nothing,
                release_at: None
            },
            "no Deployment and an initial count of 1: the operator's apply creates it at the \
             default count and owns no count"
        );
    }

    #[test]
    fn fields_outside_a_path() {
        let cases = [
            (json!({}), false),
            (only_replicas(), false),
            (json!({"f:spec": {"f:replicas": {}, ".": {}}}), false),
            (json!({"f:spec": {}}), false),
            (json!({"f:spec": {"f:replicas": {}, "f:paused": {}}}), true),
            (json!({"f:metadata": {"f:labels": {}}}), true),
            (everything(), true),
        ];
        for (fields, want) in cases {
            assert_eq!(
                has_fields_outside(&fields, &REPLICAS_FIELD),
                want,
                "{fields}"
            );
        }
    }
}
