//! The QWorker's status. Two field managers write it, each only its own fields: the reconciler
//! ([`ReconcilerStatus`]: current workers, pod-spec hash, selector, `Ready` and `Scaling`) and
//! the autoscaler ([`AutoscalerStatus`]: desired workers, queue length, decisions,
//! `BrokerReachable`, VPA records), so that neither removes what the other wrote. What each
//! writes is computed here without I/O; [`write`] sends the reconciler's part.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde::Serialize;
use workerpool_api::QWorker;
use workerpool_api::conditions::{
    self, BROKER_REACHABLE, NewCondition, READY, RESOURCE_METRICS_AVAILABLE, SCALING,
};
use workerpool_api::qworker::{OomKill, QWorkerStatus};

use super::build;
use super::plan::{Plan, PodView};
use crate::apply;
use crate::error::Result;

/// The status fields the QWorker reconciler owns.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerStatus {
    /// Live worker pods.
    pub current_replicas: i32,
    /// The pod-spec hash of the current template.
    pub current_pod_spec_hash: String,
    /// The label selector of the worker pods (for `kubectl scale` and the VPA).
    pub selector: String,
    /// The generation this status describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Scaling`.
    pub conditions: Vec<Condition>,
}

impl ReconcilerStatus {
    /// Whether `status` already carries these fields (conditions by content).
    pub fn is_in(&self, status: &QWorkerStatus) -> bool {
        status.current_replicas == self.current_replicas
            && status.current_pod_spec_hash == self.current_pod_spec_hash
            && status.observed_generation == self.observed_generation
            && status.selector.as_deref() == Some(self.selector.as_str())
            && self
                .conditions
                .iter()
                .all(|c| status.conditions.contains(c))
    }
}

/// The status fields the autoscaler owns, as it applies them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus<'a> {
    /// The autoscaler's answer.
    pub desired_replicas: i32,
    /// `BrokerReachable`, and the VPA's condition when it has one.
    pub conditions: Vec<Condition>,
    /// When the desired count last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why the desired count is what it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scale_decision: Option<&'a serde_json::Value>,
    /// The queue length last read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_length: Option<u64>,
    /// The largest resource use seen per container (with `activateVPA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_container_resources_usage: Option<&'a BTreeMap<String, BTreeMap<String, Quantity>>>,
    /// The OOM kills already counted (with `activateVPA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills_seen: Option<&'a [OomKill]>,
    /// The last memory raise after OOM kills (with `activateVPA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_oom_raise_time: Option<Time>,
}

/// The conditions of `conds` that the reconciler owns.
fn own_conditions(conds: Vec<Condition>) -> Vec<Condition> {
    conds
        .into_iter()
        .filter(|c| c.type_ == READY || c.type_ == SCALING)
        .collect()
}

/// `Ready=False` with `reason` and `message`; the reconciler's other fields as they are.
pub fn refused(qw: &QWorker, reason: &str, message: &str, now: Timestamp) -> ReconcilerStatus {
    let status = qw.status.clone().unwrap_or_default();
    let mut conds = status.conditions;
    conditions::set_condition(
        &mut conds,
        NewCondition::new(READY, false, reason, message),
        qw.metadata.generation,
        now,
    );
    ReconcilerStatus {
        current_replicas: status.current_replicas,
        current_pod_spec_hash: status.current_pod_spec_hash,
        selector: build::selector(qw),
        observed_generation: qw.metadata.generation,
        conditions: own_conditions(conds),
    }
}

/// What a reconcile saw and did, for [`observed`].
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The plan it carried out.
    pub plan: &'a Plan,
    /// Live workers.
    pub current: i32,
    /// The autoscaler's desired count.
    pub desired: i32,
    /// The current pod-spec hash.
    pub hash: &'a str,
    /// The pods.
    pub views: &'a [PodView],
    /// Whether it created, drained or deleted a pod.
    pub acted: bool,
    /// `Scaling=False` when the autoscaler holds the count because more workers did not help.
    pub ineffective: Option<NewCondition>,
}

/// The reconciler's fields after a reconcile.
pub fn observed(qw: &QWorker, observed: &Observed<'_>, now: Timestamp) -> ReconcilerStatus {
    let Observed {
        plan,
        current,
        desired,
        hash,
        views,
        acted,
        ref ineffective,
    } = *observed;
    let status = qw.status.clone().unwrap_or_default();
    let generation = qw.metadata.generation;
    let ready = views
        .iter()
        .filter(|v| {
            v.ready
                && !v.terminal()
                && !v.terminating()
                && !v.draining
                && v.hash.as_deref() == Some(hash)
        })
        .count() as i32;
    let mut conds = status.conditions.clone();
    let ready_cond = if ready >= desired {
        NewCondition::new(
            READY,
            true,
            "WorkersReady",
            format!("All {desired} worker(s) are ready"),
        )
    } else {
        NewCondition::new(
            READY,
            false,
            "WorkersNotReady",
            format!("{ready}/{desired} worker(s) are ready"),
        )
    };
    conditions::set_condition(&mut conds, ready_cond, generation, now);
    let leaving = views.iter().filter(|v| v.draining && !v.terminal()).count() + plan.drain.len();
    let scaling = if let Some(crash_loop) = &plan.crash_loop {
        NewCondition::new(SCALING, false, "CrashLooping", crash_loop.message())
    } else if let Some(ineffective) = ineffective {
        // The autoscaler holds the count: more workers did not raise the completion rate.
        ineffective.clone()
    } else if acted || current != desired || leaving > 0 {
        NewCondition::new(
            SCALING,
            true,
            "Scaling",
            format!("{current} of {desired} worker(s) running, {leaving} finishing their task"),
        )
    } else {
        NewCondition::new(
            SCALING,
            false,
            "Stable",
            format!("{desired} worker(s) running"),
        )
    };
    conditions::set_condition(&mut conds, scaling, generation, now);
    ReconcilerStatus {
        current_replicas: current,
        current_pod_spec_hash: hash.to_string(),
        selector: build::selector(qw),
        observed_generation: generation,
        conditions: own_conditions(conds),
    }
}

/// Applies the reconciler's `fields` unless `qw` already carries them, with the autoscaler's
/// fields it owns ([`carried`]) or is handed (`handed`: the autoscaler's first look); returns
/// whether the `handed` fields were written.
pub async fn write(
    qw: &QWorker,
    client: &Client,
    fields: &ReconcilerStatus,
    handed: Option<serde_json::Value>,
) -> Result<bool> {
    let handing = handed.is_some();
    let carried = match handed {
        Some(h) => Some(h),
        None if qw.status.as_ref().is_some_and(|s| fields.is_in(s)) => return Ok(false),
        None => carried(qw),
    };
    let api: Api<QWorker> = Api::namespaced(client.clone(), &qw.namespace().unwrap_or_default());
    let name = qw.name_any();
    let Some(carried) = carried else {
        return apply::apply_status(&api, &name, fields)
            .await
            .map(|()| false);
    };
    let written = write_carrying(&api, &name, fields, carried).await?;
    Ok(handing && written)
}

/// Applies `fields` with the autoscaler's `carried` fields, not forcing: a conflict means that
/// some other manager changed one of them since the cache saw the object. If that manager is
/// the autoscaler, it has applied its fields and owns them: the reconciler's own fields are
/// applied alone (`Ok(false)`: the carried ones were not written). Any other conflict is
/// forced, as every apply of the operator is.
async fn write_carrying(
    api: &Api<QWorker>,
    name: &str,
    fields: &ReconcilerStatus,
    carried: serde_json::Value,
) -> Result<bool> {
    let body = combined(fields, carried);
    match apply::apply_status_by(api, name, crate::FIELD_MANAGER, &body, false).await {
        Err(crate::error::Error::Kube(kube::Error::Api(s)))
            if s.code == 409 && s.message.contains(crate::AUTOSCALER_MANAGER) =>
        {
            apply::apply_status(api, name, fields).await.map(|()| false)
        }
        Err(crate::error::Error::Kube(kube::Error::Api(s))) if s.code == 409 => {
            apply::apply_status(api, name, &body).await.map(|()| true)
        }
        other => other.map(|()| true),
    }
}

/// The autoscaler's fields the reconciler wrote for it at the start (a hand-over) and owns
/// until the autoscaler applies them itself: every apply of the reconciler must repeat them
/// meanwhile, or the API server would remove them. `None` once the autoscaler has applied
/// (or when nobody wrote them).
pub fn carried(qw: &QWorker) -> Option<serde_json::Value> {
    if crate::cache::autoscaler_applied(qw) {
        return None;
    }
    let status = qw.status.as_ref()?;
    let broker = conditions::find(&status.conditions, BROKER_REACHABLE)?;
    let metrics = conditions::find(&status.conditions, RESOURCE_METRICS_AVAILABLE);
    let decision = status
        .last_scale_decision
        .as_ref()
        .and_then(|d| serde_json::to_value(d).ok());
    let vpa = qw.spec.scale_config.activate_vpa;
    // The fields as the autoscaler applies them (the same shape, so the same field paths).
    let fields = AutoscalerStatus {
        desired_replicas: status.desired_replicas,
        conditions: std::iter::once(broker).chain(metrics).cloned().collect(),
        last_scale_time: status.last_scale_time.clone(),
        last_scale_decision: decision.as_ref(),
        queue_length: status.queue_length.and_then(|l| u64::try_from(l).ok()),
        max_container_resources_usage: vpa.then_some(&status.max_container_resources_usage),
        oom_kills_seen: vpa.then_some(status.oom_kills_seen.as_slice()),
        last_oom_raise_time: status.last_oom_raise_time.clone(),
    };
    serde_json::to_value(&fields).ok()
}

/// The reconciler's `fields` and the `carried` ones in one status body (their conditions in
/// one list).
pub fn combined(fields: &ReconcilerStatus, carried: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::to_value(fields).unwrap_or_default();
    let serde_json::Value::Object(carried) = carried else {
        return body;
    };
    for (key, value) in carried {
        match (body.get_mut(&key), value) {
            (Some(serde_json::Value::Array(own)), serde_json::Value::Array(theirs)) => {
                own.extend(theirs);
            }
            (_, value) => body[key.as_str()] = value,
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qworker(
        vpa: bool,
        status: serde_json::Value,
        managed: Option<serde_json::Value>,
    ) -> QWorker {
        let mut q = serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
            "metadata": {"name": "q", "namespace": "ns"},
            "spec": {"podSpec": {"containers": [{"name": "worker", "image": "w"}]},
                "scaleConfig": {"scalerConfigRef": "r", "queue": "q", "minReplicas": 1,
                    "maxReplicas": 4, "scalingFactor": 1, "activateVPA": vpa}},
            "status": status,
        });
        if let Some(m) = managed {
            q["metadata"]["managedFields"] = m;
        }
        serde_json::from_value(q).expect("a QWorker")
    }

    fn condition(type_: &str) -> serde_json::Value {
        serde_json::json!({"type": type_, "status": "True", "reason": "R", "message": "m",
            "lastTransitionTime": "2026-12-07T10:00:00Z"})
    }

    #[test]
    fn the_reconciler_carries_every_autoscaler_field_it_wrote_until_the_autoscaler_applies() {
        let status = serde_json::json!({
            "desiredReplicas": 2, "queueLength": 5, "currentReplicas": 2,
            "lastScaleTime": "2026-12-07T10:00:00Z",
            "maxContainerResourcesUsage": {"worker": {"memory": "96Mi"}},
            "conditions": [condition("Ready"), condition("BrokerReachable"),
                condition("ResourceMetricsAvailable"), condition("Scaling")]
        });
        let carried = super::carried(&qworker(true, status.clone(), None)).expect("carried");
        assert_eq!(carried["desiredReplicas"], 2);
        assert_eq!(carried["queueLength"], 5);
        assert_eq!(carried["lastScaleTime"], "2026-12-07T10:00:00Z");
        assert_eq!(
            carried["maxContainerResourcesUsage"]["worker"]["memory"],
            "96Mi"
        );
        assert_eq!(carried["oomKillsSeen"], serde_json::json!([]));
        let types: Vec<&str> = carried["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(
            types,
            ["BrokerReachable", "ResourceMetricsAvailable"],
            "only its own"
        );
        assert!(carried.get("currentReplicas").is_none());

        let without_vpa = super::carried(&qworker(false, status.clone(), None)).expect("carried");
        assert!(without_vpa.get("maxContainerResourcesUsage").is_none());

        let applied = serde_json::json!([{"manager": crate::AUTOSCALER_MANAGER,
            "operation": "Apply", "subresource": "status"}]);
        assert_eq!(super::carried(&qworker(true, status, Some(applied))), None);
        let never_written = serde_json::json!({"currentReplicas": 0,
            "conditions": [condition("Ready")]});
        assert_eq!(super::carried(&qworker(true, never_written, None)), None);
    }

    #[test]
    fn carried_conditions_join_the_reconcilers_in_one_list() {
        let own = ReconcilerStatus {
            current_replicas: 1,
            current_pod_spec_hash: "h".into(),
            selector: "s".into(),
            observed_generation: Some(3),
            conditions: vec![serde_json::from_value(condition("Ready")).expect("condition")],
        };
        let body = combined(
            &own,
            serde_json::json!({"desiredReplicas": 1, "conditions": [condition("BrokerReachable")]}),
        );
        assert_eq!(body["currentReplicas"], 1);
        assert_eq!(body["desiredReplicas"], 1);
        assert_eq!(body["conditions"].as_array().map(Vec::len), Some(2));
    }
}
