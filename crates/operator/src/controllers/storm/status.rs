//! Pure computation of a StormWorkerPool's status from what the cluster reports.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use workerpool_api::conditions::{self, AUTOSCALING, NewCondition, READY};
use workerpool_api::storm::{PoolPhase, StormWorkerPool, StormWorkerPoolStatus};

use super::build;

/// Why a pool cannot run yet: the topology or cluster is missing or not Running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// Bounded CamelCase reason (`TopologyNotFound`, `TopologyNotRunning`, `ClusterNotFound`, `ClusterNotRunning`).
    pub reason: &'static str,
    /// Which object and why.
    pub message: String,
}

/// Status of a pool whose children exist: counts from the Deployment, the `Autoscaling`
/// condition from the HPA.
pub fn running(
    pool: &StormWorkerPool,
    deployment: &Deployment,
    hpa: Option<&HorizontalPodAutoscaler>,
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
    let progress_failed = ds.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False"
            || c.type_ == "ReplicaFailure" && c.status == "True"
    });
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
    } else if progress_failed {
        (
            PoolPhase::Degraded,
            format!("{ready}/{desired} worker(s) are ready; the rollout is not progressing"),
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
    status.observed_generation = generation;
    status
}

fn autoscaling(pool: &StormWorkerPool, hpa: Option<&HorizontalPodAutoscaler>) -> NewCondition {
    let (Some(auto), Some(hpa)) = (pool.spec.enabled_autoscaling(), hpa) else {
        let replicas = pool.spec.replicas.unwrap_or(1);
        return NewCondition::new(
            AUTOSCALING,
            false,
            "Disabled",
            format!("Autoscaling is disabled; replicas fixed at {replicas}"),
        );
    };
    let min = auto.min_replicas.unwrap_or(1);
    let max = auto.max_replicas.unwrap_or(min);
    let hs = hpa.status.clone().unwrap_or_default();
    let current = hs.current_replicas.unwrap_or(0);
    let inactive =
        hs.conditions.iter().flatten().find(|c| {
            c.status == "False" && (c.type_ == "AbleToScale" || c.type_ == "ScalingActive")
        });
    match inactive {
        Some(c) => NewCondition::new(
            AUTOSCALING,
            false,
            "HPAInactive",
            format!(
                "HPA cannot scale ({}: {}) (current: {current}, min: {min}, max: {max})",
                c.reason.as_deref().unwrap_or(&c.type_),
                c.message.as_deref().unwrap_or("no message")
            ),
        ),
        None => NewCondition::new(
            AUTOSCALING,
            true,
            "HPAActive",
            format!("HPA is active (current: {current}, min: {min}, max: {max})"),
        ),
    }
}

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
