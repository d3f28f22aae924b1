//! The QWorker controller: owns bare worker pods. It creates pods up to the autoscaler's
//! `status.desiredReplicas`, asks chosen pods to drain (they finish their task and exit),
//! deletes pods whose work is over, returns the in-flight tasks of workers that are gone to the
//! queue, and writes the rest of the status.
//!
//! Each reconcile observes (pods from the synced cache and expectations), lets [`plan::plan`]
//! decide, and carries the plan out. Worker pods carry the [`plan::RECOVERY_FINALIZER`];
//! [`release`] removes it once a deleted pod's worker has stopped and its tasks are back on the
//! queue, so nothing depends on this process's memory. What a release missed is found by the
//! per-ScalerConfig [`sweep`], which runs beside the reconciles and never inside one.

pub mod autoscaler;
pub mod build;
pub mod plan;
mod reconcile;
pub mod release;
pub mod status;
pub mod sweep;
pub mod vpa;

pub use reconcile::{reconcile, vpa_requests};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::Controller;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use tracing::debug;
use workerpool_api::QWorker;

use crate::cache;
use crate::context::Shared;
use crate::controllers::qworker::autoscaler::Autoscaler;
use crate::controllers::scoped;
use crate::runtime;
use plan::PodView;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "qworker";
/// Label selector of the worker pods the operator manages.
pub const POD_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=qworker";
/// How long a create or drain is expected to show up in the cache before it is forgotten.
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Every QWorker is reconciled at least this often, so that no missed event leaves it behind
/// (what is due at a time no event marks, a crash backoff's end or a kept crashed pod's
/// retention, is requeued for then). As the other kinds': at 30 s, a thousand unchanged
/// QWorkers made 33 reconciles a second at rest.
pub const RESYNC: Duration = Duration::from_secs(300);
/// While creates or drains are on their way, the QWorker is looked at again after this long.
pub const SETTLING: Duration = Duration::from_secs(5);

/// Expectations of one QWorker: pods created or annotated but not yet seen so in the cache.
#[derive(Default)]
struct Pending {
    creates: HashMap<String, Instant>,
    drains: HashMap<String, Instant>,
}

/// Per-QWorker short-term memory, keyed by uid. Losing it (a restart) is safe: the cache, once
/// synced, shows every pod, and the sweeper ([`sweep`]) returns the lists of workers that are gone.
#[derive(Default)]
pub struct Expectations {
    by_uid: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut all = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(uid.to_string()).or_default())
    }

    /// Forgets expectations that the cache now shows (or that timed out); returns the names of
    /// pending creates and of pending drains.
    fn settle(&self, uid: &str, pods: &[PodView]) -> (HashSet<String>, HashSet<String>) {
        let by_name: HashMap<&str, &PodView> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
        self.with(uid, |pending| {
            pending.creates.retain(|name, at| {
                !by_name.contains_key(name.as_str()) && at.elapsed() < EXPECTATION_TIMEOUT
            });
            pending.drains.retain(|name, at| {
                by_name
                    .get(name.as_str())
                    .is_some_and(|p| !p.draining && !p.terminating())
                    && at.elapsed() < EXPECTATION_TIMEOUT
            });
            (
                pending.creates.keys().cloned().collect(),
                pending.drains.keys().cloned().collect(),
            )
        })
    }

    fn created(&self, uid: &str, name: &str) {
        self.with(uid, |p| p.creates.insert(name.to_string(), Instant::now()));
    }

    fn drained(&self, uid: &str, name: &str) {
        self.with(uid, |p| p.drains.insert(name.to_string(), Instant::now()));
    }

    /// Forgets everything about the QWorker `uid` (it was deleted).
    pub fn forget(&self, uid: &str) {
        self.by_uid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Number of QWorkers with expectations.
    pub fn len(&self) -> usize {
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no QWorker has expectations.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// State of the QWorker controller.
pub struct Context {
    /// Client, recorder, metrics, gate.
    pub shared: Shared,
    /// Cache of the managed worker pods, indexed by owner.
    pub pods: cache::Owned<Pod>,
    /// Broker connections, to recover the tasks of gone workers.
    pub brokers: crate::brokers::Brokers,
    /// The queue autoscaler; `None` in tests that drive `status.desiredReplicas` themselves.
    pub autoscaler: Option<Autoscaler>,
    /// Expectations, by QWorker uid.
    pub expectations: Expectations,
}

fn key(qw: &QWorker) -> String {
    format!(
        "qworker/{}/{}",
        qw.namespace().unwrap_or_default(),
        qw.name_any()
    )
}

/// Frees what the controller keeps about a deleted QWorker: expectations, the autoscaler's
/// poll and its memory, the backoff counter and the per-QWorker metric series.
pub fn forget(ctx: &Context, qw: &QWorker) {
    let uid = qw.metadata.uid.clone().unwrap_or_default();
    ctx.expectations.forget(&uid);
    if let Some(autoscaler) = &ctx.autoscaler {
        autoscaler.forget(qw);
    }
    ctx.shared.backoff.forget_object(&uid);
    ctx.shared
        .metrics
        .forget_qworker(&qw.namespace().unwrap_or_default(), &qw.name_any());
    debug!(qworker = %key(qw), "QWorker deleted; its state is freed");
}

impl runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The watch of the worker pods: its cache (indexed by owner), its changed pods, and the
/// QWorkers those pods belong to (each pod event triggers a reconcile of its QWorker).
fn pod_watch(
    shared: &Shared,
    namespace: Option<&str>,
) -> (
    cache::Owned<Pod>,
    impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    futures::channel::mpsc::UnboundedReceiver<kube::runtime::reflector::ObjectRef<QWorker>>,
) {
    let (pods, pod_events) = cache::watch_owned(
        scoped::<Pod>(&shared.client, namespace),
        watcher::Config::default().labels(POD_SELECTOR),
        shared.gate.readiness.track("pods"),
    );
    let (owners_tx, owners_rx) = futures::channel::mpsc::unbounded();
    let pod_events = pod_events.inspect(move |event| {
        if let Ok(pod) = event
            && let Some(owner) = cache::controller_owner::<QWorker, _>(pod)
        {
            // The receiver lives as long as the controller; a send error means shutdown.
            let _ = owners_tx.unbounded_send(owner);
        }
    });
    (pods, pod_events, owners_rx)
}

/// The QWorker cache, the autoscaler, and the future that runs the QWorker controller and the
/// pod [`release`] controller (and their watches) until `shutdown`.
///
/// One pod watch feeds both: its cache is what the reconciler and the autoscaler read, and each
/// pod event triggers the pod's own release check and a reconcile of its QWorker. The watches
/// run on a standby too (its caches stay warm and `/readyz` answers); its reconciles wait at
/// the gate, and every object is reconciled when it becomes the leader.
pub fn controller(
    shared: Shared,
    brokers: crate::brokers::Brokers,
    namespace: Option<&str>,
    early_polls: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    Store<QWorker>,
    Autoscaler,
    impl std::future::Future<Output = ()> + Send,
) {
    let (pods, pod_events, owners_rx) = pod_watch(&shared, namespace);
    let (qworkers, qworker_events) = cache::watch(
        scoped::<QWorker>(&shared.client, namespace),
        watcher::Config::default(),
        shared.gate.readiness.track("qworkers"),
    );
    let autoscaler = Autoscaler::new(
        shared.clone(),
        brokers.clone(),
        qworkers.clone(),
        pods.clone(),
    )
    .with_early_polls(early_polls);
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        pods: pods.clone(),
        brokers: brokers.clone(),
        autoscaler: Some(autoscaler.clone()),
        expectations: Expectations::default(),
    });
    let forget_ctx = ctx.clone();
    let qworker_events = cache::on_deleted(qworker_events, qworkers.clone(), move |qw| {
        forget(&forget_ctx, qw);
    });
    let shutdown = shutdown.shared();
    let run = Controller::for_stream(qworker_events, qworkers.clone())
        .with_config(shared.controller_config())
        .reconcile_on(owners_rx)
        .reconcile_all_on(shared.gate.on_leadership())
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, runtime::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    let sweeper = sweep::Sweeper::new(
        shared.clone(),
        brokers.clone(),
        qworkers.clone(),
        pods.store().clone(),
        namespace,
    );
    let sweep_run = sweeper.run(shutdown.clone());
    let release_ctx = Arc::new(release::Context {
        shared: shared.clone(),
        qworkers: qworkers.clone(),
        brokers,
    });
    let release_run = Controller::for_stream(pod_events, pods.store().clone())
        .with_config(shared.controller_config())
        .reconcile_all_on(shared.gate.on_leadership())
        .graceful_shutdown_on(shutdown)
        .run(release::reconcile, runtime::error_policy, release_ctx)
        .for_each(|_| futures::future::ready(()));
    let future = async move {
        futures::future::join3(run, release_run, sweep_run).await;
    };
    (qworkers, autoscaler, future)
}
