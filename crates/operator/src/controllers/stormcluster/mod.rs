//! The StormCluster controller. A Managed cluster gets the objects built by [`build`] (storm.yaml
//! ConfigMap, Nimbus headless Service and StatefulSet, UI Deployment and Service); an External
//! one gets nothing. Either way the Storm UI REST API is polled every `pollIntervalSeconds` and
//! the status computed by [`status`] is written when it changes.

pub mod build;
pub mod metrics;
mod reconcile;
pub mod status;

pub use reconcile::reconcile;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, watcher};
use workerpool_api::storm::StormCluster;
use workerpool_storm::Connector;

use crate::cache::child::Child;
use crate::context::Shared;
use crate::controllers::{CLUSTER_CHILDREN_SELECTOR, ChildTracker, scoped};
use crate::runtime::{self, StatusWriter};
pub use metrics::ClusterMetrics;
use status::Outcome;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "stormcluster";
/// Longest time between two polls of a UI that keeps not answering.
pub const MAX_POLL_BACKOFF: Duration = Duration::from_secs(300);

/// The caches of a Managed cluster's objects (labelled [`CLUSTER_CHILDREN_SELECTOR`], kept as
/// [`Child`] views), filled by the controller's own watches. An object whose cached copy is controlled
/// by its cluster and carries the hash of the body the reconciler would apply is not applied
/// again, so a poll of a cluster where nothing changed sends no write.
#[derive(Clone)]
pub struct ChildCaches {
    /// ConfigMaps.
    pub config_maps: Store<Child<ConfigMap>>,
    /// Services.
    pub services: Store<Child<Service>>,
    /// StatefulSets.
    pub statefulsets: Store<Child<StatefulSet>>,
    /// Deployments.
    pub deployments: Store<Child<Deployment>>,
}

impl Default for ChildCaches {
    /// Empty caches that nothing fills (every object is applied): tests and tools.
    fn default() -> Self {
        Self {
            config_maps: reflector::store().0,
            services: reflector::store().0,
            statefulsets: reflector::store().0,
            deployments: reflector::store().0,
        }
    }
}

/// State of the StormCluster controller.
pub struct Context {
    /// Client, recorder, operator metrics, gate, reconcile backoff.
    pub shared: Shared,
    /// Makes the Storm UI REST client of a cluster.
    pub connector: Arc<dyn Connector>,
    /// The StormCluster gauges.
    pub metrics: Arc<ClusterMetrics>,
    /// The watch caches of the clusters' objects.
    pub caches: ChildCaches,
    /// Last seen version of each applied object, to tell created from updated in Events.
    pub children: ChildTracker,
    /// Writes the clusters' status.
    pub status: StatusWriter<StormCluster>,
    /// Consecutive polls per cluster (`namespace/name`) whose UI did not answer.
    unreachable_polls: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context with the given parts.
    pub fn new(
        shared: Shared,
        connector: Arc<dyn Connector>,
        metrics: Arc<ClusterMetrics>,
        caches: ChildCaches,
    ) -> Self {
        Self {
            shared,
            connector,
            metrics,
            caches,
            children: ChildTracker::default(),
            status: StatusWriter::default(),
            unreachable_polls: Mutex::default(),
        }
    }

    /// When to poll again after a poll with `outcome`: the cluster's interval, doubled for each
    /// consecutive poll whose UI did not answer, up to [`MAX_POLL_BACKOFF`] (or the interval,
    /// if longer).
    pub fn next_poll(&self, key: &str, interval_secs: i32, outcome: Outcome) -> Duration {
        let base = Duration::from_secs(u64::try_from(interval_secs.max(1)).unwrap_or(1));
        let mut polls = self
            .unreachable_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if outcome != Outcome::Unreachable {
            polls.remove(key);
            return base;
        }
        let n = polls.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32 << (*n - 1).min(10);
        base.saturating_mul(factor).min(MAX_POLL_BACKOFF.max(base))
    }

    /// Forgets what is kept for the deleted cluster `namespace/name`: its gauges and poll backoff.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.metrics.forget(namespace, name);
        self.unreachable_polls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("{namespace}/{name}"));
    }
}

fn key(cluster: &StormCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

impl runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The controller's cache of StormClusters and the future that runs it until `shutdown`
/// resolves. `connector` makes each cluster's Storm UI client; `metrics` holds the gauges
/// (register them once with [`ClusterMetrics::register`]).
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    watches: &crate::controllers::StormWatches,
    connector: Arc<dyn Connector>,
    metrics: Arc<ClusterMetrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (Store<StormCluster>, impl Future<Output = ()> + Send) {
    let client = shared.client.clone();
    let ns = namespace;
    let labelled = watcher::Config::default().labels(CLUSTER_CHILDREN_SELECTOR);
    let readiness = shared.gate.readiness.clone();
    let (store, clusters) = (watches.clusters.store(), watches.clusters.subscribe());
    let (config_maps, config_map_events) = crate::cache::watch(
        scoped::<Child<ConfigMap>>(&client, ns),
        labelled.clone(),
        readiness.track("stormcluster-configmaps"),
    );
    let (services, service_events) = crate::cache::watch(
        scoped::<Child<Service>>(&client, ns),
        labelled.clone(),
        readiness.track("stormcluster-services"),
    );
    let (statefulsets, statefulset_events) = crate::cache::watch(
        scoped::<Child<StatefulSet>>(&client, ns),
        labelled.clone(),
        readiness.track("stormcluster-statefulsets"),
    );
    let (deployments, deployment_events) = crate::cache::watch(
        scoped::<Child<Deployment>>(&client, ns),
        labelled,
        readiness.track("stormcluster-deployments"),
    );
    let leadership = shared.gate.on_leadership();
    let config = shared.controller_config();
    let ctx = Arc::new(Context::new(
        shared,
        connector,
        metrics,
        ChildCaches {
            config_maps,
            services,
            statefulsets,
            deployments,
        },
    ));
    let forget_ctx = ctx.clone();
    let clusters = crate::cache::on_deleted(clusters, store.clone(), move |c: &StormCluster| {
        forget_ctx.forget(&c.namespace().unwrap_or_default(), &c.name_any());
    });
    // The same watches that fill the caches trigger the owner's reconcile on a change.
    let future = Controller::for_stream(clusters, store.clone())
        .with_config(config)
        .reconcile_all_on(leadership)
        .owns_stream(config_map_events)
        .owns_stream(service_events)
        .owns_stream(statefulset_events)
        .owns_stream(deployment_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, runtime::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (store, future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_backoff_doubles_up_to_five_minutes_and_resets() {
        let (client, _) = {
            let (svc, handle) = tower_test::mock::pair::<
                http::Request<kube::client::Body>,
                http::Response<kube::client::Body>,
            >();
            (kube::Client::new(svc, "default"), handle)
        };
        let ctx = Context::new(
            Shared::new(client, Arc::default(), None),
            Arc::new(NoConnector),
            Arc::default(),
            ChildCaches::default(),
        );
        let s = Duration::from_secs;
        let got: Vec<Duration> = (0..7)
            .map(|_| ctx.next_poll("ns/a", 15, Outcome::Unreachable))
            .collect();
        assert_eq!(
            got,
            vec![s(15), s(30), s(60), s(120), s(240), s(300), s(300)]
        );
        assert_eq!(ctx.next_poll("ns/a", 15, Outcome::NoLeader), s(15));
        assert_eq!(
            ctx.next_poll("ns/a", 15, Outcome::Unreachable),
            s(15),
            "reset"
        );
        assert_eq!(ctx.next_poll("ns/b", 600, Outcome::Unreachable), s(600));
        assert_eq!(ctx.next_poll("ns/b", 600, Outcome::Unreachable), s(600));
        assert_eq!(ctx.next_poll("ns/c", 15, Outcome::Leader), s(15));
    }

    struct NoConnector;
    impl Connector for NoConnector {
        fn connect(
            &self,
            ui_url: &str,
        ) -> workerpool_storm::Result<Arc<dyn workerpool_storm::StormApi>> {
            Err(workerpool_storm::Error::Invalid(ui_url.into()))
        }
    }
}
