//! Pure computation of a StormWorkerPool's status from what the cluster reports.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use workerpool_api::conditions::{self, AUTOSCALING, NewCondition, READY};
use workerpool_api::storm::{PoolPhase, StormWorkerPool, StormWorkerPoolStatus};

use super::build;
use super::sizing::Sizing;
use crate::cache::child::Child;

/// Condition type: whether the pool's slots, at the worker heap, fit the worker container's
/// memory (absent while the container sets no memory).
pub const MEMORY_FIT: &str = "MemoryFit";
/// Reason of `MemoryFit=False` and of its Warning Event.
pub const SLOTS_DO_NOT_FIT: &str = "SlotsDoNotFit";

/// Sets the `MemoryFit` condition from `sizing`: `False` with [`SLOTS_DO_NOT_FIT`] and the
/// misfit's message, `True` with `SlotsFit`, removed when the container sets no memory.
pub fn memory_fit(
    status: &mut StormWorkerPoolStatus,
    sizing: &Sizing,
    generation: Option<i64>,
    now: Timestamp,
) {
    let Some((memory, field)) = sizing.memory else {
        conditions::remove_condition(&mut status.conditions, MEMORY_FIT);
        return;
    };
    let condition = match sizing.misfit() {
        Some(message) => NewCondition::new(MEMORY_FIT, false, SLOTS_DO_NOT_FIT, message),
        None => NewCondition::new(
            MEMORY_FIT,
            true,
            "SlotsFit",
            format!(
                "{} slot(s) fit the worker container's memory {field} of {memory} MiB",
                sizing.slots
            ),
        ),
    };
    conditions::set_condition(&mut status.conditions, condition, generation, now);
}

/// The message of a `MemoryFit=False` that `new` reports and `old` did not (the same message),
/// for a Warning Event once per misfit.
pub fn new_misfit(
    old: Option<&StormWorkerPoolStatus>,
    new: &StormWorkerPoolStatus,
) -> Option<String> {
    let now = conditions::find(&new.conditions, MEMORY_FIT).filter(|c| c.status == "False")?;
    let before = old.and_then(|o| conditions::find(&o.conditions, MEMORY_FIT));
    (!before.is_some_and(|b| b.status == "False" && b.message == now.message))
        .then(|| now.message.clone())
}

/// Why a pool cannot run yet: the topology or cluster is missing or not Running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Bounded CamelCase reason (`TopologyNotFound`, `TopologyNotRunning`, `ClusterNotFound`, `ClusterNotRunning`).
    pub reason: &'static str,
    /// Which object and why.
    pub message: String,
    /// The topology or cluster has no status yet: its own controller has not looked at it
    /// (right after it was created, or after the operator started with everything new). The
    /// pool then waits quietly: no status write, no Warning, since that status write wakes it.
    pub unobserved: bool,
}

/// Status of a pool whose children exist: counts from the Deployment, the `Autoscaling`
/// condition from the HPA.
pub fn running(
    pool: &StormWorkerPool,
    deployment: &Child<Deployment>,
    hpa: Option<&Child<HorizontalPodAutoscaler>>,
    now: Timestamp,
) -> StormWorkerPoolStatus {
    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let ds = deployment.status.clone().unwrap_or_default();
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(ds.replicas.unwrap_or(0));
    let ready = ds.ready_replicas.unwrap_or(0);
    let available = ds.available_replicas.unwrap_or(0);
    let updated = ds.updated_replicas.unwrap_or(0);
    let unavailable = ds
        .unavailable_replicas
        .unwrap_or((desired - available).max(0));
    let stalled = rollout_problem(deployment);
    let (phase, message) = if desired == 0 {
        (
            PoolPhase::Running,
            "Pool is scaled to 0 workers".to_string(),
        )
    } else if ready >= desired && updated >= desired {
        (
            PoolPhase::Running,
            format!("All {desired} worker(s) are ready"),
        )
    } else if let Some(problem) = stalled {
        (
            PoolPhase::Degraded,
            format!(
                "{ready}/{desired} worker(s) are ready; the rollout is not progressing: {problem}"
            ),
        )
    } else if ready == 0 {
        (
            PoolPhase::Pending,
            format!("0/{desired} worker(s) are ready"),
        )
    } else if updated < desired {
        (
            PoolPhase::Updating,
            format!("{ready}/{desired} worker(s) are ready, {updated} updated"),
        )
    } else {
        (
            PoolPhase::Degraded,
            format!("{ready}/{desired} worker(s) are ready"),
        )
    };
    status.phase = Some(phase);
    status.replicas = desired;
    status.ready_replicas = ready;
    status.available_replicas = available;
    status.unavailable_replicas = unavailable;
    status.updated_replicas = updated;
    status.deployment_name = Some(build::deployment_name(&pool.name_any()));
    status.hpa_name = hpa.map(|_| build::hpa_name(&pool.name_any()));
    let ready_cond = if phase == PoolPhase::Running {
        NewCondition::new(READY, true, "WorkersReady", &message)
    } else {
        NewCondition::new(READY, false, "WorkersNotReady", &message)
    };
    status.message = Some(message);
    conditions::set_condition(&mut status.conditions, ready_cond, generation, now);
    conditions::set_condition(
        &mut status.conditions,
        autoscaling(pool, hpa),
        generation,
        now,
    );
    memory_fit(&mut status, &super::sizing::sizing(pool), generation, now);
    status.observed_generation = generation;
    status
}

/// Reasons of `Autoscaling=False` when Storm's load cannot be evaluated.
pub const STORM_PROBLEMS: [&str; 3] = [
    "InvalidStormMetric",
    "StormTopologyUnknown",
    "StormUnreachable",
];

/// Adds the Storm-driven autoscaling to a status computed by [`running`]:
/// `stormAutoscaling`, `lastScaleDecision` on a change, and the `Autoscaling` condition, which
/// names the Storm-derived count and its inputs, or turns `False` with the problem's reason
/// (the HPA's own state follows in the message).
pub fn storm(
    status: &mut StormWorkerPoolStatus,
    pool: &StormWorkerPool,
    scaling: &super::StormScaling,
    now: Timestamp,
) {
    status.storm_autoscaling = scaling.status.clone().map(Box::new);
    if let Some(d) = &scaling.decision {
        status.last_scale_decision = Some(Box::new(d.clone()));
    }
    let Some(current) = conditions::find(&status.conditions, AUTOSCALING).cloned() else {
        return;
    };
    let condition = match (&scaling.problem, &scaling.status) {
        (Some((reason, problem)), _) => {
            let kept = scaling.status.as_ref().map_or(String::new(), |s| {
                format!("; Storm-derived count {} kept", s.replicas)
            });
            NewCondition::new(
                AUTOSCALING,
                false,
                *reason,
                format!("{}{kept}; {}", quoted(problem), current.message),
            )
        }
        (None, Some(storm)) => NewCondition::new(
            AUTOSCALING,
            current.status == "True",
            current.reason.clone(),
            format!("{}; {}", current.message, super::autoscale::describe(storm)),
        ),
        (None, None) => return,
    };
    conditions::set_condition(
        &mut status.conditions,
        condition,
        pool.metadata.generation,
        now,
    );
}

/// The reason and message of an `Autoscaling=False` for a Storm problem that `new` reports and
/// `old` did not (by reason), for a Warning Event once per problem.
pub fn new_storm_problem(
    old: Option<&StormWorkerPoolStatus>,
    new: &StormWorkerPoolStatus,
) -> Option<(&'static str, String)> {
    let now = conditions::find(&new.conditions, AUTOSCALING).filter(|c| c.status == "False")?;
    let reason = STORM_PROBLEMS.iter().find(|r| **r == now.reason)?;
    let before = old.and_then(|o| conditions::find(&o.conditions, AUTOSCALING));
    before
        .is_none_or(|b| b.reason != now.reason)
        .then(|| (*reason, now.message.clone()))
}

/// Longest text taken from another object's condition into a message.
const MAX_QUOTED: usize = 1024;

fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// Why the Deployment's rollout is stuck, from its own conditions: `ReplicaFailure=True` (e.g.
/// pods refused because their service account does not exist) and `Progressing=False` (e.g.
/// `ProgressDeadlineExceeded`), each as `Type reason: message`. `None` when neither holds.
pub fn rollout_problem(deployment: &Child<Deployment>) -> Option<String> {
    let conditions = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())?;
    let problems: Vec<String> = [("ReplicaFailure", "True"), ("Progressing", "False")]
        .into_iter()
        .filter_map(|(type_, status)| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        })
        .map(|c| {
            format!(
                "{} {}: {}",
                c.type_,
                c.reason.as_deref().unwrap_or("(no reason)"),
                quoted(c.message.as_deref().unwrap_or("(no message)"))
            )
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Whether `reason` can be a `metav1.Condition` reason (CamelCase, `[A-Za-z0-9_,:]`).
fn valid_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':'))
        && bytes.len() <= 1024
}

/// The `Autoscaling` condition, taken from the HPA's own conditions: `False` with the HPA's reason
/// and message when `AbleToScale` or `ScalingActive` is `False` (e.g. `FailedGetResourceMetric`
/// while no metric can be read), `False` with `HPANotReported` until the HPA reports
/// `ScalingActive`, and `True` (`HPAActive`) otherwise, naming `ScalingLimited` when it holds.
fn autoscaling(
    pool: &StormWorkerPool,
    hpa: Option<&Child<HorizontalPodAutoscaler>>,
) -> NewCondition {
    let (Some(auto), Some(hpa)) = (pool.spec.enabled_autoscaling(), hpa) else {
        let replicas = pool.spec.replicas.unwrap_or(1);
        return NewCondition::new(
            AUTOSCALING,
            false,
            "Disabled",
            format!("Autoscaling is disabled; replicas fixed at {replicas}"),
        );
    };
    let name = hpa.name_any();
    let min = auto.min_replicas.unwrap_or(1);
    let max = auto.max_replicas.unwrap_or(min);
    let hs = hpa.status.clone().unwrap_or_default();
    let current = hs.current_replicas.unwrap_or(0);
    let conditions = hs.conditions.unwrap_or_default();
    let find = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    let failing = ["AbleToScale", "ScalingActive"]
        .into_iter()
        .filter_map(find)
        .find(|c| c.status == "False");
    if let Some(c) = failing {
        let reason = c
            .reason
            .clone()
            .filter(|r| valid_reason(r))
            .unwrap_or_else(|| format!("HPA{}False", c.type_));
        return NewCondition::new(
            AUTOSCALING,
            false,
            reason,
            format!(
                "HPA {name} cannot scale ({}=False): {} (current: {current}, min: {min}, max: {max})",
                c.type_,
                quoted(c.message.as_deref().unwrap_or("no message"))
            ),
        );
    }
    if find("ScalingActive").is_none_or(|c| c.status != "True") {
        return NewCondition::new(
            AUTOSCALING,
            false,
            "HPANotReported",
            format!(
                "HPA {name} has not reported whether it can scale yet (min: {min}, max: {max})"
            ),
        );
    }
    let mut message = format!("HPA is active (current: {current}, min: {min}, max: {max})");
    if let Some(c) = find("ScalingLimited").filter(|c| c.status == "True") {
        message.push_str(&format!(
            "; scaling is limited ({}): {}",
            c.reason.as_deref().unwrap_or("ScalingLimited"),
            quoted(c.message.as_deref().unwrap_or("no message"))
        ));
    }
    NewCondition::new(AUTOSCALING, true, "HPAActive", message)
}

pub use crate::runtime::status::unchanged;

/// Status of a pool that waits for its topology or cluster (phase `Pending`).
pub fn blocked(pool: &StormWorkerPool, why: &Blocked, now: Timestamp) -> StormWorkerPoolStatus {
    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    status.phase = Some(PoolPhase::Pending);
    status.message = Some(why.message.clone());
    conditions::set_condition(
        &mut status.conditions,
        NewCondition::new(READY, false, why.reason, &why.message),
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

/// Status of a pool whose spec is invalid or whose children could not be applied (phase `Failed`).
pub fn failed(
    pool: &StormWorkerPool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> StormWorkerPoolStatus {
    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    status.phase = Some(PoolPhase::Failed);
    status.message = Some(message.to_string());
    conditions::set_condition(
        &mut status.conditions,
        NewCondition::new(READY, false, reason, message),
        generation,
        now,
    );
    status.observed_generation = generation;
    status
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use serde_json::json;

    use super::*;

    fn pool(yaml: &str) -> StormWorkerPool {
        let mut pool: StormWorkerPool = serde_yaml::from_str(yaml).expect("example parses");
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.generation = Some(2);
        pool
    }
    fn basic() -> StormWorkerPool {
        pool(include_str!(
            "../../../../../examples/storm-basic-worker-pool.yaml"
        ))
    }
    fn autoscale() -> StormWorkerPool {
        pool(include_str!(
            "../../../../../examples/storm-autoscale-worker-pool.yaml"
        ))
    }

    fn deployment(replicas: i32, status: serde_json::Value) -> Child<Deployment> {
        let mut d = Deployment::default();
        d.spec.get_or_insert_default().replicas = Some(replicas);
        d.status = Some(serde_json::from_value::<DeploymentStatus>(status).expect("status"));
        Child::of(&d)
    }

    fn hpa(status: serde_json::Value) -> Child<HorizontalPodAutoscaler> {
        let full: HorizontalPodAutoscaler = serde_json::from_value(json!({
            "metadata": {"name": "autoscale-workers-hpa", "namespace": "ns"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "autoscale-workers-deployment"}, "maxReplicas": 20},
            "status": status,
        }))
        .expect("hpa");
        Child::of(&full)
    }

    fn condition(status: &StormWorkerPoolStatus, type_: &str) -> (String, String, String) {
        let c = conditions::find(&status.conditions, type_).expect("condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    const NO_SA: &str = "pods \"my-workers-deployment-5d9f-\" is forbidden: error looking up service account ns/storm-worker: serviceaccount \"storm-worker\" not found";

    #[test]
    fn phase_and_ready_condition_follow_the_deployment() {
        let cases = [
            (
                "all ready",
                deployment(
                    3,
                    json!({"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 3}),
                ),
                PoolPhase::Running,
                "True",
                "WorkersReady",
                "All 3 worker(s) are ready".to_string(),
            ),
            (
                "pods refused: the ReplicaFailure message is named",
                deployment(
                    3,
                    json!({"replicas": 0, "updatedReplicas": 0, "conditions": [
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated", "message": "Created new replica set"},
                        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": NO_SA}]}),
                ),
                PoolPhase::Degraded,
                "False",
                "WorkersNotReady",
                format!(
                    "0/3 worker(s) are ready; the rollout is not progressing: ReplicaFailure FailedCreate: {NO_SA}"
                ),
            ),
            (
                "deadline exceeded: Progressing=False's reason and message are named",
                deployment(
                    3,
                    json!({"replicas": 3, "readyReplicas": 1, "updatedReplicas": 3, "conditions": [
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                         "message": "ReplicaSet \"my-workers-deployment-5d9f\" has timed out progressing."}]}),
                ),
                PoolPhase::Degraded,
                "False",
                "WorkersNotReady",
                "1/3 worker(s) are ready; the rollout is not progressing: Progressing ProgressDeadlineExceeded: ReplicaSet \"my-workers-deployment-5d9f\" has timed out progressing.".to_string(),
            ),
            (
                "both",
                deployment(
                    2,
                    json!({"replicas": 0, "conditions": [
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"},
                        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "quota exceeded"}]}),
                ),
                PoolPhase::Degraded,
                "False",
                "WorkersNotReady",
                "0/2 worker(s) are ready; the rollout is not progressing: ReplicaFailure FailedCreate: quota exceeded; Progressing ProgressDeadlineExceeded: timed out".to_string(),
            ),
            (
                "starting",
                deployment(3, json!({"replicas": 3, "updatedReplicas": 3})),
                PoolPhase::Pending,
                "False",
                "WorkersNotReady",
                "0/3 worker(s) are ready".to_string(),
            ),
            (
                "rolling",
                deployment(
                    3,
                    json!({"replicas": 4, "readyReplicas": 2, "updatedReplicas": 1}),
                ),
                PoolPhase::Updating,
                "False",
                "WorkersNotReady",
                "2/3 worker(s) are ready, 1 updated".to_string(),
            ),
        ];
        for (what, d, phase, status, reason, message) in cases {
            let s = running(&basic(), &d, None, Timestamp::UNIX_EPOCH);
            assert_eq!(s.phase, Some(phase), "{what}");
            assert_eq!(s.message.as_deref(), Some(message.as_str()), "{what}");
            assert_eq!(
                condition(&s, READY),
                (status.into(), reason.into(), message.clone()),
                "{what}"
            );
            assert_eq!(s.observed_generation, Some(2), "{what}");
        }
    }

    #[test]
    fn autoscaling_condition_comes_from_the_hpa_conditions() {
        let able = json!({"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "recommended size matches current size"});
        let no_metrics = "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API";
        let cases = [
            (
                "no conditions yet",
                json!({"currentReplicas": 0, "desiredReplicas": 0}),
                "False",
                "HPANotReported",
                "HPA autoscale-workers-hpa has not reported whether it can scale yet (min: 2, max: 20)".to_string(),
            ),
            (
                "only AbleToScale so far",
                json!({"currentReplicas": 2, "desiredReplicas": 2, "conditions": [able.clone()]}),
                "False",
                "HPANotReported",
                "HPA autoscale-workers-hpa has not reported whether it can scale yet (min: 2, max: 20)".to_string(),
            ),
            (
                "no metric can be read",
                json!({"currentReplicas": 2, "desiredReplicas": 0, "conditions": [able.clone(),
                    {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "message": no_metrics}]}),
                "False",
                "FailedGetResourceMetric",
                format!(
                    "HPA autoscale-workers-hpa cannot scale (ScalingActive=False): {no_metrics} (current: 2, min: 2, max: 20)"
                ),
            ),
            (
                "the scale subresource cannot be read",
                json!({"currentReplicas": 0, "conditions": [
                    {"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": "deployments/scale.apps \"x\" not found"},
                    {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "message": "stale"}]}),
                "False",
                "FailedGetScale",
                "HPA autoscale-workers-hpa cannot scale (AbleToScale=False): deployments/scale.apps \"x\" not found (current: 0, min: 2, max: 20)".to_string(),
            ),
            (
                "a reason that is not a condition reason",
                json!({"currentReplicas": 2, "conditions": [
                    {"type": "ScalingActive", "status": "False", "reason": "not valid!", "message": "m"}]}),
                "False",
                "HPAScalingActiveFalse",
                "HPA autoscale-workers-hpa cannot scale (ScalingActive=False): m (current: 2, min: 2, max: 20)".to_string(),
            ),
            (
                "active",
                json!({"currentReplicas": 5, "desiredReplicas": 5, "conditions": [able.clone(),
                    {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"},
                    {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "message": "within range"}]}),
                "True",
                "HPAActive",
                "HPA is active (current: 5, min: 2, max: 20)".to_string(),
            ),
            (
                "active but limited",
                json!({"currentReplicas": 2, "desiredReplicas": 2, "conditions": [able,
                    {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"},
                    {"type": "ScalingLimited", "status": "True", "reason": "TooFewReplicas", "message": "the desired replica count is less than the minimum replica count"}]}),
                "True",
                "HPAActive",
                "HPA is active (current: 2, min: 2, max: 20); scaling is limited (TooFewReplicas): the desired replica count is less than the minimum replica count".to_string(),
            ),
        ];
        let ready = deployment(
            2,
            json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}),
        );
        for (what, hpa_status, status, reason, message) in cases {
            let h = hpa(hpa_status);
            let s = running(&autoscale(), &ready, Some(&h), Timestamp::UNIX_EPOCH);
            assert_eq!(
                condition(&s, AUTOSCALING),
                (status.into(), reason.into(), message),
                "{what}"
            );
            assert_eq!(s.hpa_name.as_deref(), Some("autoscale-workers-hpa"));
        }
        let s = running(&basic(), &ready, None, Timestamp::UNIX_EPOCH);
        assert_eq!(
            condition(&s, AUTOSCALING),
            (
                "False".into(),
                "Disabled".into(),
                "Autoscaling is disabled; replicas fixed at 3".into()
            )
        );
        assert_eq!(s.hpa_name, None);
    }

    #[test]
    fn an_unchanged_status_is_recognised_whatever_the_transition_times() {
        let d = deployment(
            3,
            json!({"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 3}),
        );
        let mut p = basic();
        assert!(!unchanged(
            None,
            &running(&p, &d, None, Timestamp::UNIX_EPOCH)
        ));
        p.status = Some(running(&p, &d, None, Timestamp::UNIX_EPOCH));
        let later = Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(600);
        let again = running(&p, &d, None, later);
        assert!(unchanged(p.status.as_ref(), &again));
        let mut moved = again.clone();
        moved.conditions[0].last_transition_time.0 = later;
        assert!(
            unchanged(p.status.as_ref(), &moved),
            "same status, other time"
        );
        let scaled = deployment(
            3,
            json!({"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}),
        );
        assert!(!unchanged(
            p.status.as_ref(),
            &running(&p, &scaled, None, later)
        ));
    }

    #[test]
    fn long_messages_from_other_objects_are_cut() {
        let long = "x".repeat(5000);
        let d = deployment(
            1,
            json!({"replicas": 0, "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": long}]}),
        );
        let problem = rollout_problem(&d).expect("problem");
        assert!(problem.len() < 1100, "{}", problem.len());
        assert!(problem.ends_with("..."));
    }
}
