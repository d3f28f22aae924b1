//! Reconciling one StormWorkerPool: resolve its topology and cluster, apply its children, read
//! Storm's load where the pool scales on it, and write its status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, instrument, warn};
use workerpool_api::conditions::{self, READY};
use workerpool_api::storm::{
    AutoscalingSpec, StormAutoscalingStatus, StormCluster, StormTopology, StormWorkerPool,
    StormWorkerPoolStatus,
};
use workerpool_storm::Connector;

use super::{
    Context, HANDOFF_MANAGER, RESYNC, STORM_SCALE_MANAGER, StormScaling, UNOBSERVED_RETRY,
    autoscale, build, replicas, status,
};
use crate::cache::child::{Child, ChildKind};
use crate::controllers::cached;
use crate::error::{Category, Error, Result};
use crate::runtime;
use crate::runtime::Reason;
use replicas::BeforeApply;
use status::Blocked;

/// The object `name` of namespace `ns` from `cache`, or from the API server when the cache does
/// not hold it (yet).
async fn cached_or_get<K>(cache: &Store<K>, api: &Api<K>, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug + 'static,
{
    match cache.get(&ObjectRef::new(name).within(ns)) {
        Some(object) => Ok(Some((*object).clone())),
        None => Ok(api.get_opt(name).await?),
    }
}

fn object_ref(pool: &StormWorkerPool) -> ObjectReference {
    pool.object_ref(&())
}

/// Reconciles one pool. Invalid specs and missing references are reported on the status and
/// return `Ok`; API failures return `Err` and are retried with backoff.
#[instrument(skip_all, fields(pool = %pool.name_any(), namespace = pool.namespace().unwrap_or_default()))]
pub async fn reconcile(pool: Arc<StormWorkerPool>, ctx: Arc<Context>) -> Result<Action> {
    let body = async {
        let result = reconcile_inner(&pool, &ctx).await;
        ctx.children.publish(&ctx.shared, &*pool).await;
        result
    };
    runtime::reconcile(&*pool, &*ctx, body, async |e: &Error| {
        let failed = status::failed(&pool, "ApplyFailed", &e.scrubbed(), Timestamp::now());
        let _ = write_status(&pool, &ctx, failed).await;
    })
    .await
}

async fn reconcile_inner(pool: &StormWorkerPool, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    // Woken before the watch delivered this controller's last status write: decide from that
    // write, not from the older status the cache holds.
    let fresh;
    let pool = match ctx.status.latest(pool) {
        Some(status) => {
            fresh = StormWorkerPool {
                status: Some(status),
                ..pool.clone()
            };
            &fresh
        }
        None => pool,
    };
    if let Err(e) = build::validate(pool) {
        return report_invalid(pool, ctx, &e, now).await;
    }
    let (topology, cluster) = match resolve(pool, ctx).await? {
        Ok(found) => found,
        Err(blocked) => return report_blocked(pool, ctx, blocked, now).await,
    };
    let scaling = storm_scaling(pool, ctx, &topology, &cluster, now).await;
    let children = match build::children_with_floor(pool, &cluster, scaling.floor) {
        Ok(c) => c,
        Err(e) => return report_invalid(pool, ctx, &e, now).await,
    };
    let (deployment, hpa) = apply_children(pool, ctx, &children).await?;
    let deployment = match (scaling.floor, &hpa) {
        (Some(floor), Some(hpa)) => {
            let deployments: Api<Deployment> = Api::namespaced(
                ctx.shared.client.clone(),
                &pool.namespace().unwrap_or_default(),
            );
            let raised = raised_by_storm(pool.status.as_ref());
            scale_down_for_a_stuck_hpa(pool, &deployments, deployment, hpa, floor, raised).await?
        }
        _ => deployment,
    };
    let mut new_status = status::running(pool, &deployment, hpa.as_ref(), now);
    status::storm(&mut new_status, pool, &scaling, now);
    let misfit = status::new_misfit(pool.status.as_ref(), &new_status);
    let problem = status::new_storm_problem(pool.status.as_ref(), &new_status);
    write_status(pool, ctx, new_status).await?;
    announce(pool, ctx, &scaling, problem, misfit).await;
    Ok(Action::requeue(
        scaling.requeue.map_or(RESYNC, |r| r.min(RESYNC)),
    ))
}

/// A pool whose topology or cluster is missing or not ready: waits for a reference's first
/// status, or writes why it is blocked (with a Warning Event when the reason is new).
async fn report_blocked(
    pool: &StormWorkerPool,
    ctx: &Context,
    blocked: Blocked,
    now: Timestamp,
) -> Result<Action> {
    if blocked.unobserved {
        debug!(reason = blocked.reason, message = %blocked.message, "waiting for the reference's first status");
        return Ok(Action::requeue(UNOBSERVED_RETRY));
    }
    let changed = reason_changed(pool, blocked.reason);
    write_status(pool, ctx, status::blocked(pool, &blocked, now)).await?;
    if changed {
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::warning(blocked.reason),
                "Reconcile",
                blocked.message,
            )
            .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Applies the pool's children (ConfigMap, Deployment, Service, and the HPA and
/// PodDisruptionBudget when configured, deleting them when not); returns the Deployment and the
/// HPA as applied.
async fn apply_children(
    pool: &StormWorkerPool,
    ctx: &Context,
    children: &build::Children,
) -> Result<(Child<Deployment>, Option<Child<HorizontalPodAutoscaler>>)> {
    let client = ctx.shared.client.clone();
    let ns = pool.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let caches = &ctx.caches;
    let cm = &children.config_map;
    apply_child(ctx, pool, &config_maps, cm, cached(&caches.config_maps, cm)).await?;
    let deployment = apply_deployment(ctx, pool, &deployments, &children.deployment).await?;
    let svc = &children.service;
    apply_child(ctx, pool, &services, svc, cached(&caches.services, svc)).await?;
    let hpa = apply_hpa(pool, ctx, children.hpa.as_ref()).await?;
    apply_pdb(pool, ctx, children.pdb.as_ref()).await?;
    Ok((deployment, hpa))
}

/// Applies the pool's HPA, or deletes it (with an Event) when autoscaling is disabled.
async fn apply_hpa(
    pool: &StormWorkerPool,
    ctx: &Context,
    hpa: Option<&HorizontalPodAutoscaler>,
) -> Result<Option<Child<HorizontalPodAutoscaler>>> {
    let ns = pool.namespace().unwrap_or_default();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.shared.client.clone(), &ns);
    if let Some(hpa) = hpa {
        let current = cached(&ctx.caches.hpas, hpa);
        return Ok(Some(apply_child(ctx, pool, &hpas, hpa, current).await?));
    }
    let name = build::hpa_name(&pool.name_any());
    if delete_owned(pool, &hpas, &ctx.caches.hpas, &name).await? {
        ctx.children.forget::<HorizontalPodAutoscaler>(&ns, &name);
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::DELETED,
                "DeleteHPA",
                format!("Deleted HorizontalPodAutoscaler {name}: autoscaling is disabled, replicas set to {}", pool.spec.replicas.unwrap_or(1)),
            )
            .await;
    }
    Ok(None)
}

/// Applies the pool's PodDisruptionBudget, or deletes it (with an Event) when it is no longer
/// configured.
async fn apply_pdb(
    pool: &StormWorkerPool,
    ctx: &Context,
    pdb: Option<&PodDisruptionBudget>,
) -> Result<()> {
    let ns = pool.namespace().unwrap_or_default();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.shared.client.clone(), &ns);
    if let Some(pdb) = pdb {
        apply_child(ctx, pool, &pdbs, pdb, cached(&ctx.caches.pdbs, pdb)).await?;
        return Ok(());
    }
    let name = build::pdb_name(&pool.name_any());
    if delete_owned(pool, &pdbs, &ctx.caches.pdbs, &name).await? {
        ctx.children.forget::<PodDisruptionBudget>(&ns, &name);
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::DELETED,
                "DeletePodDisruptionBudget",
                format!("Deleted PodDisruptionBudget {name}: no longer configured"),
            )
            .await;
    }
    Ok(())
}

/// The Events of a written status: a change of the Storm-derived count, a new problem with
/// Storm's load, and slots that newly do not fit the worker container's memory.
async fn announce(
    pool: &StormWorkerPool,
    ctx: &Context,
    scaling: &StormScaling,
    problem: Option<(&'static str, String)>,
    misfit: Option<String>,
) {
    if let Some(d) = &scaling.decision {
        info!(from = d.from, to = d.to, term = %d.term, message = %d.message, "Storm-derived count changed");
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::STORM_SCALED,
                "Autoscale",
                format!(
                    "Storm-derived count {} -> {} ({}): {}",
                    d.from, d.to, d.term, d.message
                ),
            )
            .await;
    }
    if let Some((reason, message)) = problem {
        warn!(%reason, %message, "Storm's load is not evaluated");
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::warning(reason),
                "Autoscale",
                message,
            )
            .await;
    }
    if let Some(message) = misfit {
        warn!(%message, "the slots do not fit the worker container's memory");
        ctx.shared
            .event(
                &object_ref(pool),
                Reason::SLOTS_DO_NOT_FIT,
                "Sizing",
                message,
            )
            .await;
    }
}

/// Evaluates Storm's load for a pool with recognised `storm_*` metrics (see [`autoscale`]):
/// reads `/topology/{id}?window=600` at most once per cluster poll interval and plans the
/// count from the pool's status. A problem (an invalid Storm metric, a topology without a
/// Storm id, an unreachable UI) is reported, and the count recorded in status stays in force.
async fn storm_scaling(
    pool: &StormWorkerPool,
    ctx: &Context,
    topology: &StormTopology,
    cluster: &StormCluster,
    now: Timestamp,
) -> StormScaling {
    let Some(auto) = pool.spec.enabled_autoscaling() else {
        ctx.storm.forget(pool);
        return StormScaling::default();
    };
    let targets = match autoscale::targets(auto) {
        Ok(t) if t.is_empty() => {
            ctx.storm.forget(pool);
            return StormScaling::default();
        }
        Ok(t) => t,
        Err(message) => {
            return StormScaling {
                problem: Some(("InvalidStormMetric", message)),
                ..StormScaling::default()
            };
        }
    };
    let Some(connector) = ctx.storm.connector.clone() else {
        let previous = recorded_scaling(pool);
        return StormScaling {
            floor: previous.as_ref().map(|p| p.replicas),
            status: previous,
            ..StormScaling::default()
        };
    };
    let poll =
        Duration::from_secs(u64::try_from(cluster.poll_interval_seconds().max(5)).unwrap_or(15));
    if let Some(recent) = ctx.storm.recent(pool, poll) {
        return recent;
    }
    let load = StormLoad {
        pool,
        ctx,
        auto,
        targets: &targets,
        previous: recorded_scaling(pool),
        poll,
        now,
    };
    let outcome = load.evaluate(connector.as_ref(), topology, cluster).await;
    ctx.storm.remember(pool, &outcome);
    outcome
}

/// `status.stormAutoscaling` as recorded.
fn recorded_scaling(pool: &StormWorkerPool) -> Option<StormAutoscalingStatus> {
    pool.status
        .as_ref()
        .and_then(|s| s.storm_autoscaling.as_deref().cloned())
}

/// What reading Storm's load and planning the count of a pool need.
struct StormLoad<'a> {
    pool: &'a StormWorkerPool,
    ctx: &'a Context,
    auto: &'a AutoscalingSpec,
    /// The pool's recognised Storm metrics.
    targets: &'a [autoscale::Target],
    /// `status.stormAutoscaling` as recorded.
    previous: Option<StormAutoscalingStatus>,
    /// The cluster's poll interval.
    poll: Duration,
    now: Timestamp,
}

impl StormLoad<'_> {
    /// Reads the topology's load from Storm and plans the count, or keeps the recorded count
    /// with the problem when the topology has no Storm id yet or Storm does not answer.
    async fn evaluate(
        &self,
        connector: &dyn Connector,
        topology: &StormTopology,
        cluster: &StormCluster,
    ) -> StormScaling {
        let ns = self.pool.namespace().unwrap_or_default();
        match topology.status.as_ref().and_then(|s| s.topology_id.clone()) {
            None => self.keep(
                "StormTopologyUnknown",
                format!(
                    "StormTopology {ns}/{} has no Storm id yet: Storm's load is not read",
                    topology.name_any()
                ),
            ),
            Some(id) => match read_topology(connector, cluster, &id).await {
                Err(message) => self.keep("StormUnreachable", message),
                Ok(detail) => self.plan(&detail),
            },
        }
    }

    /// The recorded count stays in force, with the problem `reason` and `message`.
    fn keep(&self, reason: &'static str, message: String) -> StormScaling {
        StormScaling {
            floor: self.previous.as_ref().map(|p| p.replicas),
            status: self.previous.clone(),
            decision: None,
            problem: Some((reason, message)),
            requeue: Some(self.poll),
        }
    }

    /// The count that Storm's load `detail` asks for.
    fn plan(&self, detail: &workerpool_storm::TopologyDetail) -> StormScaling {
        let auto = self.auto;
        let min = auto.min_replicas.unwrap_or(1);
        let inputs = autoscale::inputs(detail, self.pods(min), self.pool.spec.ports().count);
        let plan = autoscale::plan(&autoscale::PlanInput {
            targets: self.targets,
            inputs: &inputs,
            min,
            max: auto.max_replicas.unwrap_or(min),
            previous: self.previous.as_ref(),
            stabilization: stabilization(auto),
            now: self.now,
        });
        debug!(replicas = plan.status.replicas, term = %plan.status.term, message = %plan.message, "Storm-derived count");
        StormScaling {
            floor: Some(plan.status.replicas),
            status: Some(plan.status),
            decision: plan.decision,
            problem: None,
            requeue: Some(self.poll),
        }
    }

    /// The pool's pods: the cached Deployment's count, else the recorded one, else `min`.
    fn pods(&self, min: i32) -> i32 {
        let name = build::deployment_name(&self.pool.name_any());
        let ns = self.pool.namespace().unwrap_or_default();
        self.ctx
            .caches
            .deployments
            .get(&ObjectRef::new(&name).within(&ns))
            .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
            .or(self.previous.as_ref().map(|p| p.replicas))
            .unwrap_or(min)
    }
}

/// The scale-down stabilization window of `auto` (its `behavior.scaleDown`), or the default.
fn stabilization(auto: &AutoscalingSpec) -> Duration {
    auto.behavior
        .as_ref()
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|s| s.stabilization_window_seconds)
        .map_or(autoscale::DEFAULT_STABILIZATION, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        })
}

/// `/topology/{id}?window=600` from the cluster's Storm UI, or why not.
async fn read_topology(
    connector: &dyn Connector,
    cluster: &StormCluster,
    id: &str,
) -> std::result::Result<workerpool_storm::TopologyDetail, String> {
    let url = cluster
        .ui_url()
        .ok_or_else(|| format!("StormCluster {} has no Storm UI URL", cluster.name_any()))?;
    let api = connector.connect(&url).map_err(|e| e.to_string())?;
    api.topology_window(id, autoscale::WINDOW)
        .await
        .map_err(|e| format!("Storm's load of topology {id} not read: {e}"))
}

/// The highest count the Storm-derived floor recorded in `status` raised the pool to: the
/// floor in force, or the count the last decision lowered it from. Only that much is taken
/// back by [`scale_down_for_a_stuck_hpa`].
pub fn raised_by_storm(status: Option<&StormWorkerPoolStatus>) -> i32 {
    let floor = status
        .and_then(|s| s.storm_autoscaling.as_ref())
        .map_or(0, |a| a.replicas);
    let lowered_from = status
        .and_then(|s| s.last_scale_decision.as_ref())
        .filter(|d| d.to < d.from)
        .map_or(0, |d| d.from);
    floor.max(lowered_from)
}

/// Lowers the Deployment to `floor` when the HPA cannot compute any count (`ScalingActive=False`,
/// e.g. no metrics-server for its CPU and memory metrics): the HPA then only enforces its bounds
/// and would never take a pool raised by the Storm-derived floor back down. Only a count the
/// floor raised (at most `raised`, see [`raised_by_storm`]) is taken back; a higher one (the HPA
/// scaled on its own metrics before they failed) is left alone, and while the HPA can compute,
/// scaling down is left to it. Returns the Deployment as it is now.
async fn scale_down_for_a_stuck_hpa(
    pool: &StormWorkerPool,
    api: &Api<Deployment>,
    deployment: Child<Deployment>,
    hpa: &Child<HorizontalPodAutoscaler>,
    floor: i32,
    raised: i32,
) -> Result<Child<Deployment>> {
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
    let stuck = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "ScalingActive" && c.status == "False")
        });
    let floor = floor.max(
        pool.spec
            .enabled_autoscaling()
            .and_then(|a| a.min_replicas)
            .unwrap_or(1),
    );
    let Some(replicas) = replicas.filter(|r| stuck && *r > floor && *r <= raised) else {
        return Ok(deployment);
    };
    info!(
        from = replicas,
        to = floor,
        "the HPA cannot compute a count: the Deployment goes down to the Storm-derived count"
    );
    let patch = serde_json::json!({"spec": {"replicas": floor}});
    let params = kube::api::PatchParams {
        field_manager: Some(STORM_SCALE_MANAGER.into()),
        ..kube::api::PatchParams::default()
    };
    let patched = api
        .patch(&deployment.name_any(), &params, &Patch::Merge(&patch))
        .await?;
    Ok(Child::of(&patched))
}

/// The pool's cluster, or why the pool must wait.
async fn resolve(
    pool: &StormWorkerPool,
    ctx: &Context,
) -> Result<std::result::Result<(StormTopology, StormCluster), Blocked>> {
    let ns = pool.namespace().unwrap_or_default();
    let topologies: Api<StormTopology> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let clusters: Api<StormCluster> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let topology_name = &pool.spec.topology_ref;
    let Some(topology) =
        cached_or_get(&ctx.caches.topologies, &topologies, &ns, topology_name).await?
    else {
        return Ok(Err(Blocked {
            reason: "TopologyNotFound",
            message: format!("StormTopology {ns}/{topology_name} does not exist"),
            unobserved: false,
        }));
    };
    if !topology.serves_pools() {
        let phase = topology.status.as_ref().and_then(|s| s.phase);
        return Ok(Err(Blocked {
            reason: "TopologyNotRunning",
            message: format!(
                "StormTopology {ns}/{topology_name} is {}, waiting for Running",
                phase.map_or("without a phase", |p| p.as_str())
            ),
            unobserved: phase.is_none(),
        }));
    }
    let cluster_name = pool
        .spec
        .cluster_ref
        .clone()
        .unwrap_or_else(|| topology.spec.cluster_ref.clone());
    let Some(cluster) = cached_or_get(&ctx.caches.clusters, &clusters, &ns, &cluster_name).await?
    else {
        return Ok(Err(Blocked {
            reason: "ClusterNotFound",
            message: format!("StormCluster {ns}/{cluster_name} does not exist"),
            unobserved: false,
        }));
    };
    if !cluster.is_running() {
        let phase = cluster.status.as_ref().and_then(|s| s.phase);
        return Ok(Err(Blocked {
            reason: "ClusterNotRunning",
            message: format!(
                "StormCluster {ns}/{cluster_name} is {}, waiting for Running",
                phase.map_or("without a phase", |p| p.as_str())
            ),
            unobserved: phase.is_none(),
        }));
    }
    Ok(Ok((topology, cluster)))
}

fn reason_changed(pool: &StormWorkerPool, reason: &str) -> bool {
    let conds = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    conditions::find(conds, READY).is_none_or(|c| c.reason != reason)
}

async fn report_invalid(
    pool: &StormWorkerPool,
    ctx: &Context,
    err: &Error,
    now: Timestamp,
) -> Result<Action> {
    let message = err.to_string();
    let unchanged = pool
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .is_some_and(|c| c.reason == Category::InvalidSpec.as_str() && c.message == message);
    write_status(
        pool,
        ctx,
        status::failed(pool, "InvalidSpec", &message, now),
    )
    .await?;
    if !unchanged {
        warn!(%message, "invalid spec");
        ctx.shared
            .event(&object_ref(pool), Reason::INVALID_SPEC, "Validate", message)
            .await;
    }
    Ok(Action::await_change())
}

/// Applies the Deployment. Without autoscaling this is the operator's apply, `spec.replicas`
/// included, skipped when the cached Deployment carries the body's hash and the desired count
/// (a count changed by someone else is set back). With autoscaling the operator's apply leaves
/// `spec.replicas` to the HPA, and the hand-off manager creates the Deployment at its initial
/// count or keeps the count the operator set before, as [`replicas::plan`] decides from the live
/// Deployment (one GET: the plan reads managedFields, which the cache strips); everything is
/// skipped when the plan has nothing to do and the live Deployment carries the body's hash.
/// The GET is skipped too when the cached view already shows both (its
/// [`ReplicasOwners`](crate::cache::child::ReplicasOwners),
/// read from managedFields as the watch decodes it, settled): a pool's reconciles after the
/// first, and its resyncs, send nothing.
async fn apply_deployment(
    ctx: &Context,
    pool: &StormWorkerPool,
    api: &Api<Deployment>,
    desired: &Deployment,
) -> Result<Child<Deployment>> {
    let Some(initial) = build::initial_replicas(pool) else {
        let desired_replicas = desired.spec.as_ref().and_then(|s| s.replicas);
        let current = cached(&ctx.caches.deployments, desired)
            .filter(|c| c.spec.as_ref().and_then(|s| s.replicas) == desired_replicas);
        return apply_child(ctx, pool, api, desired, current).await;
    };
    if let Some(view) = cached(&ctx.caches.deployments, desired)
        && view
            .replicas_owners
            .is_some_and(crate::cache::child::ReplicasOwners::settled)
        && build::up_to_date(&view, desired, pool)
    {
        debug!(
            name = view.name_any(),
            "Deployment is up to date in the cache, not applied"
        );
        return Ok(view);
    }
    let name = desired.name_any();
    let current = api.get_opt(&name).await?;
    let plan = replicas::plan(current.as_ref(), initial);
    if plan.before == BeforeApply::Nothing
        && plan.release_at.is_none()
        && let Some(current) = current
            .map(|c| Child::of(&c))
            .filter(|c| build::up_to_date(c, desired, pool))
    {
        debug!(name, "Deployment is up to date, not applied");
        return Ok(current);
    }
    match plan.before {
        BeforeApply::Nothing => {}
        BeforeApply::Create(replicas) => {
            api.patch(
                &name,
                &crate::apply::params_of(HANDOFF_MANAGER),
                &Patch::Apply(&build::with_replicas(desired, replicas)),
            )
            .await?;
            info!(
                replicas,
                "created the Deployment at its initial replica count for the HPA"
            );
        }
        BeforeApply::HandOff(replicas) => {
            api.patch(
                &name,
                &crate::apply::params_of(HANDOFF_MANAGER).force(),
                &Patch::Apply(&build::replicas_patch(&name, replicas)),
            )
            .await?;
            info!(replicas, "handed spec.replicas over for the HPA");
        }
    }
    let applied = apply_child(ctx, pool, api, desired, None).await?;
    if let Some(replicas) = plan.release_at {
        let released = api
            .patch(
                &name,
                &crate::apply::params_of(HANDOFF_MANAGER),
                &Patch::Apply(&build::replicas_patch(&name, replicas)),
            )
            .await?;
        ctx.children.written(&released);
    }
    Ok(applied)
}

/// Deletes the child `name` if it exists and this pool controls it (its uid as a precondition,
/// so an object recreated meanwhile is kept); returns whether it was deleted. Decided from the
/// child itself, not from the pool's status, so a child left behind by a failed status write is
/// still removed and nothing is sent for a child that does not exist: nothing at all when the
/// cache shows no child of this pool by that name (a child the cache has not seen yet triggers
/// another reconcile when the watch delivers it), otherwise a GET of the live child first.
async fn delete_owned<K>(
    pool: &StormWorkerPool,
    api: &Api<K>,
    cache: &Store<Child<K>>,
    name: &str,
) -> Result<bool>
where
    K: ChildKind,
{
    let key = ObjectRef::new(name).within(&pool.namespace().unwrap_or_default());
    if cache
        .get(&key)
        .is_none_or(|c| !build::controlled_by(&*c, pool))
    {
        return Ok(false);
    }
    let Some(current) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !build::controlled_by(&current, pool) {
        debug!(
            kind = K::KIND,
            name, "not deleting a child this pool does not control"
        );
        return Ok(false);
    }
    let params = DeleteParams {
        preconditions: current.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        // Gone, or replaced by another object of the same name (uid precondition failed).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Applies the child `object` unless the cached `current` is up to date (see
/// [`crate::controllers::apply_child`]).
async fn apply_child<K>(
    ctx: &Context,
    pool: &StormWorkerPool,
    api: &Api<K>,
    object: &K,
    current: Option<Child<K>>,
) -> Result<Child<K>>
where
    K: ChildKind,
{
    crate::controllers::apply_child(&ctx.children, pool, api, object, current).await
}

async fn write_status(
    pool: &StormWorkerPool,
    ctx: &Context,
    status: StormWorkerPoolStatus,
) -> Result<()> {
    ctx.status
        .write(&ctx.shared.client, pool, &status)
        .await
        .map(drop)
}
