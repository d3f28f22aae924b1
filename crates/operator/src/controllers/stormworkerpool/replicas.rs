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

use crate::cache::child::ReplicasOwners;

pub use crate::HANDOFF_MANAGER;

/// The count a Deployment created without `spec.replicas` gets (the API server's default).
pub const DEFAULT_REPLICAS: i32 = 1;

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
    let owners = ReplicasOwners::of(&current.metadata);
    let before = match replicas {
        Some(r) if owners.operator_owns_replicas => BeforeApply::HandOff(r),
        _ => BeforeApply::Nothing,
    };
    // A hand-off applies `replicas` alone, which releases everything else already.
    let release_at = match before {
        BeforeApply::Nothing if owners.handoff_owns_more => replicas,
        _ => None,
    };
    ReplicasPlan { before, release_at }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::{Value, json};

    use super::*;
    use crate::FIELD_MANAGER;

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
}
