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
use workerpool_api::conditions::{self, NewCondition, READY, SCALING};
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

/// Applies the reconciler's `fields` unless `qw` already carries them.
pub async fn write(qw: &QWorker, client: &Client, fields: &ReconcilerStatus) -> Result<()> {
    if qw.status.as_ref().is_some_and(|s| fields.is_in(s)) {
        return Ok(());
    }
    let api: Api<QWorker> = Api::namespaced(client.clone(), &qw.namespace().unwrap_or_default());
    apply::apply_status(&api, &qw.name_any(), fields).await
}
