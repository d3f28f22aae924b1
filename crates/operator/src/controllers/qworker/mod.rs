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
pub mod release;
pub mod status;
pub mod sweep;
pub mod vpa;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};
use workerpool_api::QWorker;

use crate::cache;
use crate::context::Shared;
use crate::controllers::qworker::autoscaler::{Autoscaler, owned_by};
use crate::controllers::scoped;
use crate::error::{Error, Result};
use crate::runtime;
use crate::runtime::Reason;
use plan::{DrainReason, Observed, PodView};

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "qworker";
/// Label selector of the worker pods the operator manages.
pub const POD_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=qworker";
/// How long a create or drain is expected to show up in the cache before it is forgotten.
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Every QWorker is reconciled at least this often, so that no missed event leaves it behind.
pub const RESYNC: Duration = Duration::from_secs(30);
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
/// poll task and its memory, the backoff counter and the per-QWorker metric series.
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

/// Reconciles one QWorker.
#[instrument(skip_all, fields(qworker = %qw.name_any(), namespace = qw.namespace().unwrap_or_default()))]
pub async fn reconcile(qw: Arc<QWorker>, ctx: Arc<Context>) -> Result<Action> {
    let body = reconcile_inner(&qw, &ctx);
    runtime::reconcile(&*qw, &*ctx, body, async |e: &Error| {
        // `InvalidSpec`, or the API server's refusal of what the spec asks for (`Rejected`,
        // `Forbidden`: a pod refused by admission).
        let reason = e.category().as_str();
        if let Err(write) = report_refused(&qw, &ctx, reason, &e.scrubbed()).await {
            warn!(error = %write, "could not report the refused spec");
        }
    })
    .await
}

impl runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Sets `Ready=False` with `reason` and the message.
async fn report_refused(qw: &QWorker, ctx: &Context, reason: &str, message: &str) -> Result<()> {
    let fields = status::refused(qw, reason, message, Timestamp::now());
    status::write(qw, &ctx.shared.client, &fields).await
}

/// The requests activateVPA gives new pods, from `status.maxContainerResourcesUsage`.
pub fn vpa_requests(qw: &QWorker) -> BTreeMap<String, BTreeMap<String, String>> {
    let record = qw
        .status
        .as_ref()
        .map(|s| s.max_container_resources_usage.clone())
        .unwrap_or_default();
    vpa::requests(qw, &record)
}

async fn reconcile_inner(qw: &QWorker, ctx: &Context) -> Result<Action> {
    build::validate(qw).map_err(Error::InvalidSpec)?;
    if let Some(autoscaler) = &ctx.autoscaler {
        autoscaler.ensure(qw);
        if !autoscaler.answered(qw) {
            // After a start, decide nothing from a desired count older than the autoscaler's
            // first look at the queue (it comes within one poll).
            return Ok(Action::requeue(cache::NOT_READY_RETRY));
        }
    }
    let sc = &qw.spec.scale_config;
    let ns = qw.namespace().unwrap_or_default();
    let uid = qw.metadata.uid.clone().unwrap_or_default();

    // Observe.
    let spec = build::template_spec(qw, &vpa_requests(qw));
    let hash = build::pod_spec_hash(qw, &spec);
    let views: Vec<PodView> = ctx
        .pods
        .owned_by(&uid)
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str()) && owned_by(p, Some(uid.as_str()))
        })
        .map(|p| PodView::of(p))
        .collect();
    let (pending_creates, pending_drains) = ctx.expectations.settle(&uid, &views);
    let desired = qw
        .status
        .as_ref()
        .map_or(0, |s| s.desired_replicas)
        .clamp(sc.min_replicas.max(0), sc.max_replicas.max(0));
    // Decide.
    let plan = plan::plan(&Observed {
        qworker: &qw.name_any(),
        pods: &views,
        hash: &hash,
        desired,
        pending_creates: &pending_creates,
        pending_drains: &pending_drains,
        now: Timestamp::now(),
    });

    // Act.
    let acted = act(qw, ctx, &plan, &spec, &hash).await?;
    let current = plan.current + acted.created as i32;
    let fields = status::observed(
        qw,
        &status::Observed {
            plan: &plan,
            current,
            desired,
            hash: &hash,
            views: &views,
            acted: acted.any(),
            ineffective: qw
                .status
                .as_ref()
                .and_then(autoscaler::ineffective_condition),
        },
        Timestamp::now(),
    );
    status::write(qw, &ctx.shared.client, &fields).await?;
    let waiting = !pending_creates.is_empty()
        || !pending_drains.is_empty()
        || acted.any()
        || views.iter().any(|v| v.draining || v.terminating());
    let next = if waiting { SETTLING } else { RESYNC };
    Ok(Action::requeue(match &plan.crash_loop {
        // Look again when the crash backoff ends.
        Some(l) => next.min(l.retry_in.max(Duration::from_secs(1))),
        None => next,
    }))
}

/// What [`act`] did.
#[derive(Default)]
struct Acted {
    created: usize,
    drained: usize,
    deleted: usize,
}

impl Acted {
    fn any(&self) -> bool {
        self.created + self.drained + self.deleted > 0
    }
}

/// Carries out `plan`: recoveries first, then deletions (of pods whose tasks are safe), drains
/// and creations, with an Event for each kind of change.
async fn act(
    qw: &QWorker,
    ctx: &Context,
    plan: &plan::Plan,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    hash: &str,
) -> Result<Acted> {
    let ns = qw.namespace().unwrap_or_default();
    let name = qw.name_any();
    let uid = qw.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let labels = crate::metrics::QWorkerLabels {
        namespace: ns.clone(),
        qworker: name.clone(),
    };
    let mut acted = Acted::default();

    let unrecovered = recover(ctx, qw, &plan.recover).await;
    mark_crashed(ctx, qw, &pods, &plan.mark_crashed).await?;
    let mut deleted = Vec::new();
    for pod in plan.delete.iter().filter(|p| !unrecovered.contains(*p)) {
        match pods.delete(pod, &DeleteParams::background()).await {
            Ok(_) => deleted.push(pod.clone()),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !deleted.is_empty() {
        info!(pods = ?deleted, "deleted worker pods whose work is over");
        acted.deleted = deleted.len();
        ctx.shared
            .event(
                &qw.object_ref(&()),
                Reason::DELETED,
                "DeletePod",
                format!(
                    "Deleted {} worker pod(s) that finished, drained or never started: {}",
                    deleted.len(),
                    deleted.join(", ")
                ),
            )
            .await;
    }

    let mut drained: Vec<String> = Vec::new();
    for (pod, reason) in &plan.drain {
        let patch = serde_json::json!({
            "metadata": { "annotations": {
                build::DRAIN_ANNOTATION: reason.as_str(),
                build::CURRENT_HASH_ANNOTATION: hash,
            }}
        });
        let params = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match pods.patch(pod, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                ctx.expectations.drained(&uid, pod);
                ctx.shared
                    .metrics
                    .drains_requested
                    .get_or_create(&labels)
                    .inc();
                drained.push(format!("{pod} ({})", reason.as_str()));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !drained.is_empty() {
        acted.drained = drained.len();
        let scale_down = plan.drain.iter().any(|(_, r)| *r == DrainReason::ScaleDown);
        ctx.shared
            .event(
                &qw.object_ref(&()),
                if scale_down {
                    Reason::DRAIN_REQUESTED
                } else {
                    Reason::ROLLING_OUT
                },
                "Drain",
                format!(
                    "Asked {} worker(s) to finish their task and exit: {}",
                    drained.len(),
                    drained.join(", ")
                ),
            )
            .await;
    }

    let mut created = Vec::new();
    let mut failure = None;
    for _ in 0..plan.create {
        let pod_name = build::pod_name(&name);
        let pod = build::pod(qw, spec, hash, &pod_name);
        let params = PostParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match pods.create(&params, &pod).await {
            Ok(_) => {
                ctx.expectations.created(&uid, &pod_name);
                ctx.shared.metrics.pods_created.get_or_create(&labels).inc();
                created.push(pod_name);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if !created.is_empty() {
        acted.created = created.len();
        ctx.shared
            .event(
                &qw.object_ref(&()),
                Reason::CREATED,
                "CreatePod",
                format!(
                    "Created {} worker pod(s): {}",
                    created.len(),
                    created.join(", ")
                ),
            )
            .await;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(acted),
    }
}

/// Crashed pods kept for inspection, seen for the first time: their in-flight tasks go back to
/// the queue, then the pod is annotated with its place in the crash streak (which also says its
/// tasks were returned). A pod whose tasks cannot be returned now is tried again next time.
async fn mark_crashed(
    ctx: &Context,
    qw: &QWorker,
    pods: &Api<Pod>,
    marks: &[(String, u32)],
) -> Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = marks.iter().map(|(n, _)| n.clone()).collect();
    let unrecovered = recover(ctx, qw, &names).await;
    let params = PatchParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for (pod, streak) in marks.iter().filter(|(n, _)| !unrecovered.contains(n)) {
        let patch = serde_json::json!({
            "metadata": { "annotations": { plan::CRASH_STREAK_ANNOTATION: streak.to_string() } }
        });
        match pods.patch(pod, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(%pod, streak, "crashed worker pod kept for inspection");
                ctx.shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::CRASH_LOOPING,
                        "KeepFailedPod",
                        format!(
                            "Worker pod {pod} failed ({streak} crash(es) in a row); its tasks are back on the queue and the pod is kept for inspection"
                        ),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Moves the in-flight tasks of the workers `names` (which no longer run) back to the queue;
/// returns the names whose tasks could not be returned now (the broker is unreachable).
async fn recover(ctx: &Context, qw: &QWorker, names: &[String]) -> HashSet<String> {
    if names.is_empty() {
        return HashSet::new();
    }
    let sc = &qw.spec.scale_config;
    let ns = qw.namespace().unwrap_or_default();
    let broker = match ctx.brokers.get(&ns, &sc.scaler_config_ref).await {
        Ok(b) => b,
        Err(e) => {
            warn!(
                reason = e.reason,
                "cannot recover tasks of gone workers yet"
            );
            return names.iter().cloned().collect();
        }
    };
    let mut failed = HashSet::new();
    for pod in names {
        match broker.recover(&sc.queue, pod).await {
            Ok(0) => {}
            Ok(n) => {
                info!(%pod, tasks = n, "returned the tasks of a gone worker to the queue");
                ctx.shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::TASKS_RECOVERED,
                        "Recover",
                        format!(
                            "Returned {n} in-flight task(s) of worker {pod} to queue {}",
                            sc.queue
                        ),
                    )
                    .await;
            }
            Err(e) => {
                warn!(%pod, error = %e, "could not recover tasks");
                failed.insert(pod.clone());
            }
        }
    }
    failed
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
    let client = shared.client.clone();
    let readiness = shared.gate.readiness.clone();
    let (pods, pod_events) = cache::watch_owned(
        scoped::<Pod>(&client, namespace),
        watcher::Config::default().labels(POD_SELECTOR),
        readiness.track("pods"),
    );
    let (qworkers, qworker_events) = cache::watch(
        scoped::<QWorker>(&client, namespace),
        watcher::Config::default(),
        readiness.track("qworkers"),
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
    let autoscaler = Autoscaler::new(
        shared.clone(),
        brokers.clone(),
        qworkers.clone(),
        pods.clone(),
    )
    .with_early_polls(early_polls);
    let release_ctx = Arc::new(release::Context {
        shared: shared.clone(),
        qworkers: qworkers.clone(),
        brokers: brokers.clone(),
    });
    let brokers_for_sweep = brokers.clone();
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        pods: pods.clone(),
        brokers,
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
        brokers_for_sweep,
        qworkers.clone(),
        pods.store().clone(),
        namespace,
    );
    let sweep_run = sweeper.run(shutdown.clone());
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
