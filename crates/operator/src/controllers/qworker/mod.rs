//! The QWorker controller: owns bare worker pods. It creates pods up to the autoscaler's
//! `status.desiredReplicas`, asks chosen pods to drain (they finish their task and exit),
//! deletes finished pods, returns the in-flight tasks of pods that are gone to the queue, and
//! writes the rest of the status.

pub mod build;
pub mod vpa;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use workerpool_api::QWorker;
use workerpool_api::conditions::{self, NewCondition, READY, SCALING};

use crate::autoscaler::{Autoscaler, owned_by};
use crate::context::Shared;
use crate::controllers::scoped;
use crate::error::{Error, Result};
use build::{DrainReason, PodView};

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "qworker";
/// Label selector of the worker pods the operator manages.
pub const POD_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=qworker";
/// How long a create or drain is expected to show up in the cache before it is forgotten.
pub const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Pods created or annotated but not yet seen so in the cache.
#[derive(Default)]
struct Pending {
    creates: HashMap<String, Instant>,
    drains: HashMap<String, Instant>,
}

/// Per-QWorker memory of the controller: expectations, pods seen, tasks still to recover.
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
    seen: Mutex<HashMap<String, HashSet<String>>>,
    unrecovered: Mutex<HashMap<String, HashSet<String>>>,
}

impl Expectations {
    /// Forgets expectations that the cache now shows (or that timed out); returns the number
    /// of pending creates and the names of pending drains.
    fn settle(&self, key: &str, pods: &[PodView]) -> (usize, HashSet<String>) {
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let pending = all.entry(key.to_string()).or_default();
        let by_name: HashMap<&str, &PodView> = pods.iter().map(|p| (p.name.as_str(), p)).collect();
        pending.creates.retain(|name, at| {
            !by_name.contains_key(name.as_str()) && at.elapsed() < EXPECTATION_TIMEOUT
        });
        pending.drains.retain(|name, at| {
            by_name
                .get(name.as_str())
                .is_some_and(|p| !p.draining && !p.terminating)
                && at.elapsed() < EXPECTATION_TIMEOUT
        });
        (
            pending.creates.len(),
            pending.drains.keys().cloned().collect(),
        )
    }

    fn created(&self, key: &str, name: &str) {
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.to_string())
            .or_default()
            .creates
            .insert(name.to_string(), Instant::now());
    }

    fn drained(&self, key: &str, name: &str) {
        let mut all = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.to_string())
            .or_default()
            .drains
            .insert(name.to_string(), Instant::now());
    }

    /// Records the pods that exist now and returns the names of those that vanished since the
    /// last call, plus earlier ones whose tasks could not be recovered yet.
    fn vanished(&self, key: &str, now: HashSet<String>) -> HashSet<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen
            .insert(key.to_string(), now.clone())
            .unwrap_or_default();
        let mut gone: HashSet<String> = before.difference(&now).cloned().collect();
        let mut unrecovered = self.unrecovered.lock().unwrap_or_else(|p| p.into_inner());
        gone.extend(unrecovered.remove(key).unwrap_or_default());
        gone
    }

    fn unrecovered(&self, key: &str, names: HashSet<String>) {
        if names.is_empty() {
            return;
        }
        let mut unrecovered = self.unrecovered.lock().unwrap_or_else(|p| p.into_inner());
        unrecovered
            .entry(key.to_string())
            .or_default()
            .extend(names);
    }
}

/// State of the QWorker controller.
pub struct Context {
    /// Client, recorder, metrics.
    pub shared: Shared,
    /// Cache of the managed worker pods.
    pub pods: Store<Pod>,
    /// Broker connections, to recover the tasks of gone workers.
    pub brokers: crate::autoscaler::brokers::Brokers,
    /// The queue autoscaler; `None` in tests that drive `status.desiredReplicas` themselves.
    pub autoscaler: Option<Autoscaler>,
    /// Expectations and pod memory.
    pub expectations: Expectations,
}

fn key(qw: &QWorker) -> String {
    format!("{}/{}", qw.namespace().unwrap_or_default(), qw.name_any())
}

/// Reconciles one QWorker.
#[instrument(skip_all, fields(qworker = %qw.name_any(), namespace = qw.namespace().unwrap_or_default()))]
pub async fn reconcile(qw: Arc<QWorker>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let k = key(&qw);
    match reconcile_inner(&qw, &ctx).await {
        Ok(action) => {
            ctx.shared.reset_backoff(&k);
            Ok(action)
        }
        Err(e) => {
            ctx.shared
                .event(
                    &qw.object_ref(&()),
                    true,
                    e.category(),
                    "Reconcile",
                    e.to_string(),
                )
                .await;
            if e.is_permanent()
                && let Err(write) = report_invalid(&qw, &ctx, &e.to_string()).await
            {
                warn!(error = %write, "could not report the invalid spec");
            }
            Err(e)
        }
    }
}

/// Sets `Ready=False` with reason `InvalidSpec` and the message.
async fn report_invalid(qw: &QWorker, ctx: &Context, message: &str) -> Result<()> {
    let status = qw.status.clone().unwrap_or_default();
    let mut conds = status.conditions.clone();
    conditions::set_condition(
        &mut conds,
        NewCondition::new(READY, false, "InvalidSpec", message),
        qw.metadata.generation,
        Timestamp::now(),
    );
    // Fields this manager owns are repeated as they are, so that the apply does not drop them.
    let mine: Vec<_> = conds
        .into_iter()
        .filter(|c| c.type_ == READY || c.type_ == SCALING)
        .collect();
    let status = serde_json::json!({
        "currentReplicas": status.current_replicas,
        "currentPodSpecHash": status.current_pod_spec_hash,
        "selector": build::selector(qw),
        "observedGeneration": qw.metadata.generation,
        "conditions": mine,
    });
    own_status(qw, ctx, &status).await
}

/// Applies the reconciler's own status fields (the autoscaler applies the others).
async fn own_status(qw: &QWorker, ctx: &Context, status: &serde_json::Value) -> Result<()> {
    let api: Api<QWorker> = Api::namespaced(
        ctx.shared.client.clone(),
        &qw.namespace().unwrap_or_default(),
    );
    crate::apply::apply_status(&api, &qw.name_any(), status).await
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
    let ns = qw.namespace().unwrap_or_default();
    let name = qw.name_any();
    let k = key(qw);
    let sc = &qw.spec.scale_config;
    if sc.min_replicas > sc.max_replicas {
        return Err(Error::InvalidSpec(format!(
            "scaleConfig.minReplicas ({}) must be <= scaleConfig.maxReplicas ({})",
            sc.min_replicas, sc.max_replicas
        )));
    }
    if qw.spec.pod_spec.containers.is_empty() {
        return Err(Error::InvalidSpec(
            "podSpec.containers must name at least one container".into(),
        ));
    }
    if let Some(autoscaler) = &ctx.autoscaler {
        autoscaler.ensure(qw);
    }

    let spec = build::template_spec(qw, &vpa_requests(qw));
    let hash = build::pod_spec_hash(qw, &spec);
    let uid = qw.metadata.uid.as_deref();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && owned_by(p, uid))
        .collect();
    let views: Vec<PodView> = owned.iter().map(|p| PodView::of(p)).collect();
    let (pending_creates, pending_drains) = ctx.expectations.settle(&k, &views);
    let desired = qw
        .status
        .as_ref()
        .map_or(0, |s| s.desired_replicas)
        .clamp(sc.min_replicas.max(0), sc.max_replicas.max(0));
    let plan = build::plan(&views, &hash, desired, pending_creates, &pending_drains);

    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let labels = crate::metrics::QWorkerLabels {
        namespace: ns.clone(),
        qworker: name.clone(),
    };

    // Return the tasks of pods that are gone, and of finished pods before deleting them.
    let existing: HashSet<String> = views
        .iter()
        .filter(|v| !v.terminal())
        .map(|v| v.name.clone())
        .collect();
    let mut to_recover = ctx.expectations.vanished(&k, existing);
    to_recover.extend(plan.delete.iter().cloned());
    let unrecovered = recover(ctx, qw, to_recover).await;
    for dead in &plan.delete {
        if unrecovered.contains(dead) {
            continue;
        }
        match pods.delete(dead, &DeleteParams::background()).await {
            Ok(_) => info!(pod = %dead, "deleted finished worker pod"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.expectations.unrecovered(&k, unrecovered);

    // Ask the chosen pods to finish their task and exit.
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
                ctx.expectations.drained(&k, pod);
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
        let scale_down = plan.drain.iter().any(|(_, r)| *r == DrainReason::ScaleDown);
        ctx.shared
            .event(
                &qw.object_ref(&()),
                false,
                if scale_down {
                    "DrainRequested"
                } else {
                    "RollingOut"
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

    // Create the missing workers.
    let mut created = Vec::new();
    for _ in 0..plan.create {
        let pod_name = build::pod_name(&name);
        let pod = build::pod(qw, &spec, &hash, &pod_name);
        let params = PostParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match pods.create(&params, &pod).await {
            Ok(_) => {
                ctx.expectations.created(&k, &pod_name);
                ctx.shared.metrics.pods_created.get_or_create(&labels).inc();
                created.push(pod_name);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                if !created.is_empty() {
                    report_created(ctx, qw, &created).await;
                }
                return Err(e.into());
            }
        }
    }
    if !created.is_empty() {
        report_created(ctx, qw, &created).await;
    }

    let current = plan.current + created.len() as i32;
    write_status(
        qw,
        ctx,
        &plan,
        current,
        desired,
        &hash,
        &views,
        !created.is_empty() || !drained.is_empty(),
    )
    .await?;
    let waiting = pending_creates > 0
        || !pending_drains.is_empty()
        || plan.create > 0
        || !plan.drain.is_empty();
    Ok(Action::requeue(if waiting {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(300)
    }))
}

async fn report_created(ctx: &Context, qw: &QWorker, created: &[String]) {
    ctx.shared
        .event(
            &qw.object_ref(&()),
            false,
            "Created",
            "CreatePod",
            format!(
                "Created {} worker pod(s): {}",
                created.len(),
                created.join(", ")
            ),
        )
        .await;
}

/// Moves the in-flight tasks of `names` back to the queue; returns the names that could not
/// be recovered now (the broker is unreachable), to be tried again.
async fn recover(ctx: &Context, qw: &QWorker, names: HashSet<String>) -> HashSet<String> {
    if names.is_empty() {
        return names;
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
            return names;
        }
    };
    let mut failed = HashSet::new();
    for pod in names {
        match broker.recover(&sc.queue, &pod).await {
            Ok(0) => {}
            Ok(n) => {
                info!(%pod, tasks = n, "returned the tasks of a gone worker to the queue");
                ctx.shared
                    .event(
                        &qw.object_ref(&()),
                        false,
                        "TasksRecovered",
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
                failed.insert(pod);
            }
        }
    }
    failed
}

#[allow(clippy::too_many_arguments)]
async fn write_status(
    qw: &QWorker,
    ctx: &Context,
    plan: &build::Plan,
    current: i32,
    desired: i32,
    hash: &str,
    views: &[PodView],
    acted: bool,
) -> Result<()> {
    let now = Timestamp::now();
    let status = qw.status.clone().unwrap_or_default();
    let generation = qw.metadata.generation;
    let ready = views
        .iter()
        .filter(|v| {
            v.ready
                && !v.terminal()
                && !v.terminating
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
    let scaling = if acted || current != desired || leaving > 0 {
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
    let mine: Vec<_> = conds
        .iter()
        .filter(|c| c.type_ == READY || c.type_ == SCALING)
        .cloned()
        .collect();
    let unchanged = status.current_replicas == current
        && status.current_pod_spec_hash == hash
        && status.observed_generation == generation
        && status.selector.as_deref() == Some(build::selector(qw).as_str())
        && mine.iter().all(|c| status.conditions.contains(c));
    if unchanged {
        return Ok(());
    }
    let status = serde_json::json!({
        "currentReplicas": current,
        "currentPodSpecHash": hash,
        "selector": build::selector(qw),
        "observedGeneration": generation,
        "conditions": mine,
    });
    own_status(qw, ctx, &status).await
}

/// Requeues a failed reconcile: an invalid spec waits for a change, the rest backs off.
pub fn error_policy(qw: Arc<QWorker>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared
        .metrics
        .reconcile_failed(CONTROLLER, err.category());
    let k = key(&qw);
    if err.is_permanent() {
        warn!(qworker = %k, error = %err, "invalid spec");
        return Action::await_change();
    }
    let delay = ctx.shared.backoff(&k);
    warn!(qworker = %k, category = err.category(), error = %err, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The controller's caches and the future that runs it (and the pod watch) until `shutdown`.
pub fn controller(
    shared: Shared,
    brokers: crate::autoscaler::brokers::Brokers,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    Store<QWorker>,
    Autoscaler,
    impl std::future::Future<Output = ()> + Send,
) {
    let client = shared.client.clone();
    let (pod_reader, pod_writer) = reflector::store_shared::<Pod>(1024);
    let pod_events = pod_writer.subscribe();
    let pod_watch = watcher(
        scoped::<Pod>(&client, namespace),
        watcher::Config::default().labels(POD_SELECTOR),
    )
    .default_backoff()
    .modify(|p| p.managed_fields_mut().clear())
    .reflect_shared(pod_writer)
    .for_each(|_| futures::future::ready(()));
    let mut controller = Controller::new(
        scoped::<QWorker>(&client, namespace),
        watcher::Config::default(),
    );
    if let Some(events) = pod_events {
        controller = controller.owns_shared_stream(events);
    }
    let store = controller.store();
    let autoscaler = Autoscaler::new(
        shared.clone(),
        brokers.clone(),
        store.clone(),
        pod_reader.clone(),
    );
    let ctx = Arc::new(Context {
        shared,
        pods: pod_reader,
        brokers,
        autoscaler: Some(autoscaler.clone()),
        expectations: Expectations::default(),
    });
    let run = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    let future = async move {
        tokio::select! {
            _ = run => {},
            _ = pod_watch => {},
        }
    };
    (store, autoscaler, future)
}
