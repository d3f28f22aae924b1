//! The StormTopology controller: submits a topology with a Job running `storm jar` (when the
//! topology has a `jar`), reads its state from the Storm UI REST API of its cluster, deactivates
//! and activates it for `suspend`, kills and resubmits it when the submitted spec changes,
//! kills it on delete (behind the [`FINALIZER`]), and rebalances it with a Job running
//! `storm rebalance -n` when the ready slots of the pools that serve it change.
//!
//! Each reconcile observes (the cluster and Jobs from watch caches, the topology from Storm),
//! decides with pure functions ([`build`], [`status`], [`rebalance`]) and acts. Everything that
//! must survive a restart of the operator is in the status (`submittedHash`, `lastRebalance`)
//! or in the Jobs themselves, never in memory. Status is written only when it changed, and
//! holds nothing that changes with every poll (the uptime is a metric; the launch time is
//! truncated to the minute).

pub mod build;
pub mod metrics;
pub mod rebalance;
mod reconcile;
pub mod status;

pub use reconcile::reconcile;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use workerpool_api::storm::{StormCluster, StormTopology, StormWorkerPool};
use workerpool_storm::Connector;

use crate::context::Shared;
use crate::controllers::{Wakes, scoped};
use crate::runtime::{self, Pace, StatusWriter};
pub use metrics::TopologyMetrics;
use rebalance::PoolView;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "stormtopology";
/// Finalizer of topologies the operator submitted: removed once the topology has left Storm.
pub const FINALIZER: &str = "storm.apache.org/topology-kill";
/// How soon a topology whose cluster is missing or not running is looked at again.
pub const CLUSTER_RETRY: Duration = Duration::from_secs(30);
/// How soon a topology is looked at again while a Job runs or a kill takes effect.
pub const SETTLING: Duration = Duration::from_secs(5);
/// How soon a deleted topology is looked at again while its kill takes effect.
pub const KILL_POLL: Duration = Duration::from_secs(10);
/// How long after the deletion a topology whose kill cannot be confirmed (Storm unreachable)
/// is released anyway.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait between two looks while Storm is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A topology's full reconcile (a scan of its pools and two reads of Storm's UI) runs at most
/// once per this interval when its pools' changes wake it faster ([`Pace`]); a spec change
/// and a deletion are not held back.
pub const PACE: Duration = Duration::from_secs(1);
/// A failed topology is looked at again after this long (a spec change triggers at once).
pub const RESYNC: Duration = Duration::from_secs(300);
/// A submission Job that succeeded this many seconds ago while Storm never listed the
/// topology makes the phase `Failed` (reason `NotListed`) instead of waiting on.
pub const NOT_LISTED_AFTER_SECS: i64 = 120;
/// A rebalance recorded as `Running` whose Job the cache has not shown for this many seconds is
/// created (again): the operator stopped between the status write and the create.
pub const REBALANCE_JOB_GRACE_SECS: i64 = 30;
/// `lastRebalance.result` of a Job that has not finished.
pub const RESULT_RUNNING: &str = "Running";
/// `lastRebalance.result` of a Job that completed.
pub const RESULT_SUCCEEDED: &str = "Succeeded";
/// `lastRebalance.result` of a Job that failed.
pub const RESULT_FAILED: &str = "Failed";

/// State of the StormTopology controller.
pub struct Context {
    /// Client, recorder, shared metrics, gate.
    pub shared: Shared,
    /// Makes the Storm UI REST client of a cluster.
    pub connector: Arc<dyn Connector>,
    /// The controller's own metrics.
    pub metrics: Arc<TopologyMetrics>,
    /// Cache of StormClusters.
    pub clusters: Store<StormCluster>,
    /// Cache of StormWorkerPools, shared with the pool controller (the pools serving a
    /// topology give its ready slots).
    pub pools: Store<StormWorkerPool>,
    /// Cache of the Jobs this controller makes ([`build::JOB_SELECTOR`]).
    pub jobs: Store<Job>,
    /// Writes the topologies' status.
    pub status: StatusWriter<StormTopology>,
    /// At most one full reconcile per topology every [`PACE`] when its pools' changes wake it.
    pub pace: Pace,
}

impl runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The controller's cache of topologies and the future that runs it until `shutdown`.
///
/// Its watches: StormTopologies; the Jobs it makes ([`build::JOB_SELECTOR`], each change
/// reconciles the owner); StormClusters (each change reconciles the topologies on it). All fill
/// the caches the reconciler reads and register with the gate's readiness; StormWorkerPools
/// (a change of what the topology reads of a pool, its [`PoolView`] or `topologyRef`,
/// reconciles the topology in its `topologyRef`; see [`Wakes`]).
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    watches: &crate::controllers::StormWatches,
    connector: Arc<dyn Connector>,
    metrics: Arc<TopologyMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    Store<StormTopology>,
    impl std::future::Future<Output = ()> + Send,
) {
    let client = shared.client.clone();
    let readiness = shared.gate.readiness.clone();
    let (store, topology_events) = (watches.topologies.store(), watches.topologies.subscribe());
    let (clusters, cluster_events) = (watches.clusters.store(), watches.clusters.subscribe());
    let (pools, pool_events) = (watches.pools.store(), watches.pools.subscribe());
    let (jobs, job_events) = crate::cache::watch(
        scoped::<Job>(&client, namespace),
        watcher::Config::default().labels(build::JOB_SELECTOR),
        readiness.track("stormtopology-jobs"),
    );
    let forget_metrics = metrics.clone();
    let topology_events = crate::cache::on_deleted(topology_events, store.clone(), move |t| {
        forget_metrics.forget(&t.namespace().unwrap_or_default(), &t.name_any());
    });
    let by_cluster = store.clone();
    let (pool_store, pool_wakes) = (pools.clone(), Wakes::default());
    let leadership = shared.gate.on_leadership();
    let config = shared.controller_config();
    let ctx = Arc::new(Context {
        shared,
        connector,
        metrics,
        clusters,
        pools,
        jobs,
        status: StatusWriter::default(),
        pace: Pace::every(PACE),
    });
    let future = Controller::for_stream(topology_events, store.clone())
        .with_config(config)
        .reconcile_all_on(leadership)
        .owns_stream(job_events)
        .watches_stream(cluster_events, move |cluster: StormCluster| {
            let ns = cluster.namespace();
            let name = cluster.name_any();
            by_cluster
                .state()
                .into_iter()
                .filter(|t| t.namespace() == ns && t.spec.cluster_ref == name)
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .watches_stream(pool_events, move |pool: StormWorkerPool| {
            // A pool wakes its topology only when what the topology reads of it changed: not on
            // each of its status writes, which would read Storm's UI again each time.
            let view = (&pool.spec.topology_ref, PoolView::of(&pool));
            if !pool_wakes.changed(&pool_store, &pool, view) {
                return None;
            }
            let topology = ObjectRef::new(&pool.spec.topology_ref);
            Some(match pool.namespace() {
                Some(ns) => topology.within(&ns),
                None => topology,
            })
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, runtime::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (store, future)
}
