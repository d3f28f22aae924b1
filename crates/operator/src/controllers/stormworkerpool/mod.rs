//! The StormWorkerPool controller: reads the pool's topology and cluster, applies the
//! children built by [`build`], and writes the status computed by [`status`].

pub mod autoscale;
pub mod build;
mod reconcile;
pub mod replicas;
pub mod sizing;
pub mod status;

pub use reconcile::{raised_by_storm, reconcile};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use workerpool_api::storm::{
    StormAutoscalingStatus, StormCluster, StormScaleDecision, StormTopology, StormWorkerPool,
};
use workerpool_storm::Connector;

use crate::cache::child::{Child, ChildKind};
use crate::context::Shared;
use crate::controllers::{ChildTracker, POOL_CHILDREN_SELECTOR, Wakes, scoped};
use crate::runtime::{self, StatusWriter};
pub use replicas::HANDOFF_MANAGER;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "stormworkerpool";
/// How often a healthy pool is reconciled again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);
/// When a pool's topology or cluster has no status yet, the pool looks again this soon (their
/// first status write wakes it sooner).
pub const UNOBSERVED_RETRY: Duration = Duration::from_secs(10);

/// State of the StormWorkerPool controller.
pub struct Context {
    /// Client, recorder, metrics.
    pub shared: Shared,
    /// Last seen version of each child, to tell created from updated in Events.
    pub children: ChildTracker,
    /// The watch caches of the pools' children, read before each apply.
    pub caches: ChildCaches,
    /// Writes the pools' status.
    pub status: StatusWriter<StormWorkerPool>,
    /// Reads of Storm's load for the pools that scale on it.
    pub storm: StormReader,
}

/// Reads Storm's load for the pools with recognised `storm_*` metrics
/// ([`autoscale::recognised`]): through `connector` (none: nothing is read, the pool's recorded
/// Storm-derived count stays), at most once per cluster poll interval per pool. The last
/// outcome per pool is kept in memory only to answer the reconciles in between (a child's or
/// the pool's own status write wakes it); everything the policy needs is in the pool's status.
#[derive(Default)]
pub struct StormReader {
    /// Makes a cluster's Storm UI client.
    pub connector: Option<Arc<dyn Connector>>,
    last: Mutex<HashMap<String, LastRead>>,
}

impl StormReader {
    /// A reader through `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        Self {
            connector: Some(connector),
            last: Mutex::default(),
        }
    }

    fn recent(&self, pool: &StormWorkerPool, within: Duration) -> Option<StormScaling> {
        let uid = pool.metadata.uid.as_deref()?;
        let all = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (at, generation, outcome) = all.get(uid)?;
        (at.elapsed() < within && *generation == pool.metadata.generation).then(|| StormScaling {
            decision: None,
            ..outcome.clone()
        })
    }

    fn remember(&self, pool: &StormWorkerPool, outcome: &StormScaling) {
        let Some(uid) = pool.metadata.uid.clone() else {
            return;
        };
        let mut all = self.last.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(
            uid,
            (Instant::now(), pool.metadata.generation, outcome.clone()),
        );
    }

    fn forget(&self, pool: &StormWorkerPool) {
        if let Some(uid) = pool.metadata.uid.as_deref() {
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
    }
}

/// When a pool's Storm load was last read, at which generation, and what came of it.
type LastRead = (Instant, Option<i64>, StormScaling);

/// What the Storm-driven autoscaling decided in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StormScaling {
    /// The HPA's `minReplicas` floor (`None`: the spec's).
    pub floor: Option<i32>,
    /// `status.stormAutoscaling` to write (`None`: the pool has no recognised metric).
    pub status: Option<StormAutoscalingStatus>,
    /// A change of the count, for `status.lastScaleDecision` and an Event.
    pub decision: Option<StormScaleDecision>,
    /// Why Storm's load could not be evaluated: reason and message.
    pub problem: Option<(&'static str, String)>,
    /// When to look again (`None`: no Storm metric to follow).
    pub requeue: Option<Duration>,
}

/// The caches of the children (labelled [`POOL_CHILDREN_SELECTOR`], kept as [`Child`] views) that
/// the controller's own watches of its children fill. A child whose cached copy is controlled by its
/// pool and carries the hash of the body the reconciler would apply
/// ([`build::APPLIED_HASH_ANNOTATION`]) is not applied again, so that the periodic reconcile of a
/// pool where nothing changed sends no write. A cache may lag: a child it shows as missing or
/// older is simply applied (an apply is idempotent), and a change of a child that it has not
/// seen yet triggers another reconcile when the watch delivers it. The pools' topologies and
/// clusters are cached too (a handful of objects), so that a reconcile reads nothing from the
/// API server.
#[derive(Clone)]
pub struct ChildCaches {
    /// ConfigMaps.
    pub config_maps: Store<Child<ConfigMap>>,
    /// Deployments.
    pub deployments: Store<Child<Deployment>>,
    /// Services.
    pub services: Store<Child<Service>>,
    /// HorizontalPodAutoscalers.
    pub hpas: Store<Child<HorizontalPodAutoscaler>>,
    /// PodDisruptionBudgets.
    pub pdbs: Store<Child<PodDisruptionBudget>>,
    /// The StormTopologies the pools name: read here first, fetched when missing (the cache
    /// may not have seen a new one yet), so that a reconcile sends no read for them.
    pub topologies: Store<StormTopology>,
    /// The StormClusters, read the same way.
    pub clusters: Store<StormCluster>,
}

impl Default for ChildCaches {
    /// Empty caches that nothing fills (every child is applied): tests and tools that drive the
    /// reconciler directly.
    fn default() -> Self {
        Self {
            config_maps: reflector::store().0,
            deployments: reflector::store().0,
            services: reflector::store().0,
            hpas: reflector::store().0,
            pdbs: reflector::store().0,
            topologies: reflector::store().0,
            clusters: reflector::store().0,
        }
    }
}

impl runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Field manager of the scale-down [`scale_down_for_a_stuck_hpa`] makes.
pub const STORM_SCALE_MANAGER: &str = "workerpool-operator-storm-autoscaler";

/// The watch of one kind of the pools' children (labelled [`POOL_CHILDREN_SELECTOR`]): its
/// cache, and its changed objects (each triggers a reconcile of the owner).
fn child_watch<K: ChildKind>(
    shared: &Shared,
    namespace: Option<&str>,
    name: &'static str,
) -> (
    Store<Child<K>>,
    impl futures::Stream<Item = Result<Child<K>, watcher::Error>> + Send + 'static,
) {
    crate::cache::watch(
        scoped::<Child<K>>(&shared.client, namespace),
        watcher::Config::default().labels(POOL_CHILDREN_SELECTOR),
        shared.gate.readiness.track(name),
    )
}

/// A filter of a child watch's events that drops the event of the operator's own last write of
/// a child ([`ChildTracker::is_echo`]).
fn not_echo<K: ChildKind>(
    ctx: &Arc<Context>,
) -> impl FnMut(&Result<Child<K>, watcher::Error>) -> futures::future::Ready<bool> + Send + 'static
{
    let ctx = ctx.clone();
    move |event| futures::future::ready(!matches!(event, Ok(child) if ctx.children.is_echo(child)))
}

/// What a pool reads of its topology: the spec (its generation), the phase and the Storm id.
fn topology_view(t: &StormTopology) -> (Option<i64>, Option<&'static str>, Option<&str>) {
    let status = t.status.as_ref();
    (
        t.metadata.generation,
        status.and_then(|s| s.phase).map(|p| p.as_str()),
        status.and_then(|s| s.topology_id.as_deref()),
    )
}

/// What a pool reads of its cluster: the spec (its generation) and the phase.
fn cluster_view(c: &StormCluster) -> (Option<i64>, Option<&'static str>) {
    (
        c.metadata.generation,
        c.status.as_ref().and_then(|s| s.phase).map(|p| p.as_str()),
    )
}

/// The pools a changed topology wakes: those of its namespace that name it, when what they read
/// of it changed ([`topology_view`]).
fn pools_of_topology(
    pools: Store<StormWorkerPool>,
    topologies: Store<StormTopology>,
) -> impl Fn(StormTopology) -> Vec<ObjectRef<StormWorkerPool>> + Send + Sync + 'static {
    let wakes = Wakes::default();
    move |topology: StormTopology| {
        if !wakes.changed(&topologies, &topology, topology_view(&topology)) {
            return Vec::new();
        }
        let ns = topology.namespace();
        let name = topology.name_any();
        pools
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && p.spec.topology_ref == name)
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    }
}

/// The pools a changed cluster wakes: every pool of its namespace, when what they read of it
/// changed ([`cluster_view`]).
fn pools_of_cluster(
    pools: Store<StormWorkerPool>,
    clusters: Store<StormCluster>,
) -> impl Fn(StormCluster) -> Vec<ObjectRef<StormWorkerPool>> + Send + Sync + 'static {
    let wakes = Wakes::default();
    move |cluster: StormCluster| {
        if !wakes.changed(&clusters, &cluster, cluster_view(&cluster)) {
            return Vec::new();
        }
        let ns = cluster.namespace();
        pools
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns)
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    }
}

/// The controller's cache of pools and the future that runs it until `shutdown` resolves.
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    watches: &crate::controllers::StormWatches,
    connector: Arc<dyn Connector>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    Store<StormWorkerPool>,
    impl std::future::Future<Output = ()> + Send,
) {
    let (store, pools) = (watches.pools.store(), watches.pools.subscribe());
    let leadership = shared.gate.on_leadership();
    let config = shared.controller_config();
    let (deployments, deployment_events) =
        child_watch::<Deployment>(&shared, namespace, "storm-deployments");
    let (config_maps, config_map_events) =
        child_watch::<ConfigMap>(&shared, namespace, "storm-configmaps");
    let (services, service_events) = child_watch::<Service>(&shared, namespace, "storm-services");
    let (hpas, hpa_events) =
        child_watch::<HorizontalPodAutoscaler>(&shared, namespace, "storm-hpas");
    let (pdbs, pdb_events) = child_watch::<PodDisruptionBudget>(&shared, namespace, "storm-pdbs");
    let (topologies, topology_events) =
        (watches.topologies.store(), watches.topologies.subscribe());
    let (clusters, cluster_events) = (watches.clusters.store(), watches.clusters.subscribe());
    let ctx = Arc::new(Context {
        shared,
        children: ChildTracker::default(),
        status: StatusWriter::default(),
        storm: StormReader::new(connector),
        caches: ChildCaches {
            config_maps,
            deployments,
            services,
            hpas,
            pdbs,
            topologies,
            clusters,
        },
    });
    // The same watches that fill the caches trigger the owner's reconcile on a child's change,
    // but not on the event of the operator's own last write of it.
    let future = Controller::for_stream(pools, store.clone())
        .with_config(config)
        .reconcile_all_on(leadership)
        .owns_stream(deployment_events.filter(not_echo(&ctx)))
        .owns_stream(config_map_events.filter(not_echo(&ctx)))
        .owns_stream(service_events.filter(not_echo(&ctx)))
        .owns_stream(hpa_events.filter(not_echo(&ctx)))
        .owns_stream(pdb_events.filter(not_echo(&ctx)))
        .watches_stream(
            topology_events,
            pools_of_topology(store.clone(), ctx.caches.topologies.clone()),
        )
        .watches_stream(
            cluster_events,
            pools_of_cluster(store.clone(), ctx.caches.clusters.clone()),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, runtime::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (store, future)
}
