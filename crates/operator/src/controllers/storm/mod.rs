//! The StormWorkerPool controller: reads the pool's topology and cluster, applies the
//! children built by [`build`], and writes the status computed by [`status`].

pub mod build;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};
use workerpool_api::conditions::{self, READY};
use workerpool_api::storm::{StormCluster, StormTopology, StormWorkerPool, StormWorkerPoolStatus};

use crate::apply;
use crate::context::Shared;
use crate::controllers::{ChildTracker, MANAGED_SELECTOR, scoped};
use crate::error::{Error, Result};
use status::Blocked;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "stormworkerpool";
/// Field manager that keeps `spec.replicas` while ownership passes from the operator to the HPA.
pub const HANDOFF_MANAGER: &str = "workerpool-operator-handoff";
/// How often a healthy pool is reconciled again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// State of the StormWorkerPool controller.
pub struct Context {
    /// Client, recorder, metrics.
    pub shared: Shared,
    /// Last seen version of each child, to tell created from updated in Events.
    pub children: ChildTracker,
}

fn object_ref(pool: &StormWorkerPool) -> ObjectReference {
    pool.object_ref(&())
}

/// Reconciles one pool. Invalid specs and missing references are reported on the status and
/// return `Ok`; API failures return `Err` and are retried with backoff.
#[instrument(skip_all, fields(pool = %pool.name_any(), namespace = pool.namespace().unwrap_or_default()))]
pub async fn reconcile(pool: Arc<StormWorkerPool>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let key = format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    );
    match reconcile_inner(&pool, &ctx).await {
        Ok(action) => {
            ctx.shared.reset_backoff(&key);
            Ok(action)
        }
        Err(e) => {
            ctx.shared
                .event(
                    &object_ref(&pool),
                    true,
                    e.category(),
                    "Reconcile",
                    e.to_string(),
                )
                .await;
            if matches!(e.category(), "Rejected" | "Forbidden") {
                let failed = status::failed(&pool, "ApplyFailed", &e.to_string(), Timestamp::now());
                let _ = write_status(&pool, &ctx, failed).await;
            }
            Err(e)
        }
    }
}

async fn reconcile_inner(pool: &StormWorkerPool, ctx: &Context) -> Result<Action> {
    let client = ctx.shared.client.clone();
    let ns = pool.namespace().unwrap_or_default();
    let now = Timestamp::now();

    if let Err(e) = build::validate(pool) {
        return report_invalid(pool, ctx, &e, now).await;
    }
    let cluster = match resolve(pool, ctx).await? {
        Ok(cluster) => cluster,
        Err(blocked) => {
            let changed = reason_changed(pool, blocked.reason);
            write_status(pool, ctx, status::blocked(pool, &blocked, now)).await?;
            if changed {
                ctx.shared
                    .event(
                        &object_ref(pool),
                        true,
                        blocked.reason,
                        "Reconcile",
                        blocked.message,
                    )
                    .await;
            }
            return Ok(Action::requeue(RESYNC));
        }
    };
    let children = match build::children(pool, &cluster) {
        Ok(c) => c,
        Err(e) => return report_invalid(pool, ctx, &e, now).await,
    };

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);

    apply_child(ctx, pool, &config_maps, &children.config_map).await?;
    let had_hpa = pool
        .status
        .as_ref()
        .and_then(|s| s.hpa_name.as_ref())
        .is_some();
    if children.hpa.is_some() && !had_hpa {
        hand_off_replicas(&deployments, &children.deployment).await?;
    }
    let deployment = apply_child(ctx, pool, &deployments, &children.deployment).await?;
    apply_child(ctx, pool, &services, &children.service).await?;
    let hpa = match &children.hpa {
        Some(hpa) => Some(apply_child(ctx, pool, &hpas, hpa).await?),
        None => {
            let name = build::hpa_name(&pool.name_any());
            if had_hpa && apply::delete_if_exists(&hpas, &name).await? {
                ctx.children.forget::<HorizontalPodAutoscaler>(&ns, &name);
                ctx.shared
                    .event(
                        &object_ref(pool),
                        false,
                        "Deleted",
                        "DeleteHPA",
                        format!("Deleted HorizontalPodAutoscaler {name}: autoscaling is disabled, replicas set to {}", pool.spec.replicas.unwrap_or(1)),
                    )
                    .await;
            }
            None
        }
    };
    match &children.pdb {
        Some(pdb) => {
            apply_child(ctx, pool, &pdbs, pdb).await?;
        }
        None => {
            let name = build::pdb_name(&pool.name_any());
            if apply::delete_if_exists(&pdbs, &name).await? {
                ctx.children.forget::<PodDisruptionBudget>(&ns, &name);
                ctx.shared
                    .event(
                        &object_ref(pool),
                        false,
                        "Deleted",
                        "DeletePodDisruptionBudget",
                        format!("Deleted PodDisruptionBudget {name}: no longer configured"),
                    )
                    .await;
            }
        }
    }

    let new_status = status::running(pool, &deployment, hpa.as_ref(), now);
    write_status(pool, ctx, new_status).await?;
    Ok(Action::requeue(RESYNC))
}

/// The pool's cluster, or why the pool must wait.
async fn resolve(
    pool: &StormWorkerPool,
    ctx: &Context,
) -> Result<std::result::Result<StormCluster, Blocked>> {
    let ns = pool.namespace().unwrap_or_default();
    let topologies: Api<StormTopology> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let clusters: Api<StormCluster> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let topology_name = &pool.spec.topology_ref;
    let Some(topology) = topologies.get_opt(topology_name).await? else {
        return Ok(Err(Blocked {
            reason: "TopologyNotFound",
            message: format!("StormTopology {ns}/{topology_name} does not exist"),
        }));
    };
    let phase = topology.status.as_ref().and_then(|s| s.phase.clone());
    if phase.as_deref() != Some("Running") {
        return Ok(Err(Blocked {
            reason: "TopologyNotRunning",
            message: format!(
                "StormTopology {ns}/{topology_name} is {}, waiting for Running",
                phase.as_deref().unwrap_or("without a phase")
            ),
        }));
    }
    let cluster_name = pool
        .spec
        .cluster_ref
        .clone()
        .unwrap_or_else(|| topology.spec.cluster_ref.clone());
    let Some(cluster) = clusters.get_opt(&cluster_name).await? else {
        return Ok(Err(Blocked {
            reason: "ClusterNotFound",
            message: format!("StormCluster {ns}/{cluster_name} does not exist"),
        }));
    };
    let phase = cluster.status.as_ref().and_then(|s| s.phase.clone());
    if phase.as_deref() != Some("Running") {
        return Ok(Err(Blocked {
            reason: "ClusterNotRunning",
            message: format!(
                "StormCluster {ns}/{cluster_name} is {}, waiting for Running",
                phase.as_deref().unwrap_or("without a phase")
            ),
        }));
    }
    Ok(Ok(cluster))
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
        .is_some_and(|c| c.reason == "InvalidSpec" && c.message == message);
    write_status(
        pool,
        ctx,
        status::failed(pool, "InvalidSpec", &message, now),
    )
    .await?;
    if !unchanged {
        warn!(%message, "invalid spec");
        ctx.shared
            .event(&object_ref(pool), true, "InvalidSpec", "Validate", message)
            .await;
    }
    Ok(Action::await_change())
}

/// When autoscaling is turned on, gives `spec.replicas` to a second field manager before the
/// operator's own apply stops setting it, so that the field is not reset to 1 while the HPA
/// takes it over. Costs one GET, only on that transition.
async fn hand_off_replicas(api: &Api<Deployment>, desired: &Deployment) -> Result<()> {
    let Some(current) = api.get_opt(&desired.name_any()).await? else {
        return Ok(());
    };
    if !manager_owns(&current, crate::FIELD_MANAGER, &["f:spec", "f:replicas"]) {
        return Ok(());
    }
    let Some(replicas) = current.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(());
    };
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": desired.name_any() },
        "spec": { "replicas": replicas },
    });
    api.patch(
        &desired.name_any(),
        &PatchParams::apply(HANDOFF_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(replicas, "handed spec.replicas over for the HPA");
    Ok(())
}

/// Whether `manager` owns the field at `path` (managedFields `FieldsV1` keys) by an apply.
pub fn manager_owns<K: Resource>(object: &K, manager: &str, path: &[&str]) -> bool {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            path.iter()
                .try_fold(&f.0, |node, key| node.get(key))
                .is_some()
        })
}

async fn apply_child<K>(
    ctx: &Context,
    pool: &StormWorkerPool,
    api: &Api<K>,
    object: &K,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let applied = apply::apply(api, object).await?;
    if let Some(change) = ctx.children.observe(&applied) {
        ctx.shared
            .event(
                &object_ref(pool),
                false,
                change.reason(),
                &format!("Apply{}", K::kind(&())),
                format!("{} {} {}", change.verb(), K::kind(&()), applied.name_any()),
            )
            .await;
    }
    Ok(applied)
}

async fn write_status(
    pool: &StormWorkerPool,
    ctx: &Context,
    status: StormWorkerPoolStatus,
) -> Result<()> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<StormWorkerPool> = Api::namespaced(
        ctx.shared.client.clone(),
        &pool.namespace().unwrap_or_default(),
    );
    apply::apply_status(&api, &pool.name_any(), &status).await
}

/// Requeues a failed reconcile with per-object exponential backoff.
pub fn error_policy(pool: Arc<StormWorkerPool>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared
        .metrics
        .reconcile_failed(CONTROLLER, err.category());
    let key = format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    );
    let delay = ctx.shared.backoff(&key);
    warn!(pool = %key, category = err.category(), error = %err, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The controller's cache of pools and the future that runs it until `shutdown` resolves.
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    Store<StormWorkerPool>,
    impl std::future::Future<Output = ()> + Send,
) {
    let client = shared.client.clone();
    let ns = namespace;
    let labelled = watcher::Config::default().labels(MANAGED_SELECTOR);
    let controller = Controller::new(
        scoped::<StormWorkerPool>(&client, ns),
        watcher::Config::default(),
    );
    let store = controller.store();
    let by_topology = store.clone();
    let by_cluster = store.clone();
    let ctx = Arc::new(Context {
        shared,
        children: ChildTracker::default(),
    });
    let future = controller
        .owns(scoped::<Deployment>(&client, ns), labelled.clone())
        .owns(scoped::<ConfigMap>(&client, ns), labelled.clone())
        .owns(scoped::<Service>(&client, ns), labelled.clone())
        .owns(
            scoped::<HorizontalPodAutoscaler>(&client, ns),
            labelled.clone(),
        )
        .owns(scoped::<PodDisruptionBudget>(&client, ns), labelled)
        .watches(
            scoped::<StormTopology>(&client, ns),
            watcher::Config::default(),
            move |topology: StormTopology| {
                let ns = topology.namespace();
                let name = topology.name_any();
                by_topology
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == ns && p.spec.topology_ref == name)
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            scoped::<StormCluster>(&client, ns),
            watcher::Config::default(),
            move |cluster: StormCluster| {
                let ns = cluster.namespace();
                by_cluster
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == ns)
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (store, future)
}
