//! The queue autoscaler: one lightweight poll per QWorker at its interval (on the leader
//! only, since it runs inside the controllers), writing `status.desiredReplicas`.
//!
//! A poll reads the queue depth (waiting plus in flight) through the ScalerConfig's pooled
//! connection, applies [`policy`], and writes the status with its own field manager when the
//! answer changes. When the broker cannot be read the last desired count is kept,
//! `BrokerReachable=False` is set with the reason, a Warning Event is published, and polls
//! back off; the autoscaler never scales down on an error.

pub mod brokers;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};
use workerpool_api::QWorker;
use workerpool_api::conditions::{self, BROKER_REACHABLE, NewCondition};

use crate::context::Shared;
use crate::metrics::{BrokerErrorLabels, QWorkerLabels};
use brokers::{BrokerUnavailable, Brokers};

/// Field manager of the autoscaler's status writes (`desiredReplicas`, `queueLength`,
/// `lastScaleTime`, the `BrokerReachable` condition).
pub const AUTOSCALER_MANAGER: &str = "workerpool-operator-autoscaler";
/// Longest wait between polls while the broker fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An unchanged desired count with a changed queue length is written at most this often.
pub const QUEUE_LENGTH_REFRESH: Duration = Duration::from_secs(15);

/// The live pods of a QWorker, by the controller ownerReference (terminal and terminating pods excluded).
pub fn live_worker_names(pods: &Store<Pod>, qw: &QWorker) -> Vec<String> {
    let uid = qw.metadata.uid.as_deref();
    pods.state()
        .iter()
        .filter(|p| p.namespace() == qw.namespace() && owned_by(p, uid))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| p.name_any())
        .collect()
}

/// Whether `pod` carries a controller ownerReference to the object with `uid`.
pub fn owned_by(pod: &Pod, uid: Option<&str>) -> bool {
    let Some(uid) = uid else { return false };
    pod.owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// A running poll task: the uid and generation it polls for, and how to wake it early.
struct Task {
    uid: String,
    generation: Option<i64>,
    wake: Arc<tokio::sync::Notify>,
    answered: Arc<std::sync::atomic::AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Poll tasks by QWorker key.
type Tasks = Arc<Mutex<HashMap<String, Task>>>;

/// Runs and tracks one poll task per QWorker.
#[derive(Clone)]
pub struct Autoscaler {
    shared: Shared,
    brokers: Brokers,
    qworkers: Store<QWorker>,
    pods: Store<Pod>,
    tasks: Tasks,
}

fn key(qw: &QWorker) -> String {
    format!("{}/{}", qw.namespace().unwrap_or_default(), qw.name_any())
}

impl Autoscaler {
    /// An autoscaler reading QWorkers and pods from the controllers' caches.
    pub fn new(
        shared: Shared,
        brokers: Brokers,
        qworkers: Store<QWorker>,
        pods: Store<Pod>,
    ) -> Self {
        Self {
            shared,
            brokers,
            qworkers,
            pods,
            tasks: Arc::default(),
        }
    }

    /// The broker connections.
    pub fn brokers(&self) -> &Brokers {
        &self.brokers
    }

    /// Starts the poll task of `qw` unless it is running; a running one whose QWorker's spec
    /// changed (new bounds, new queue) polls at once instead of finishing its wait or backoff.
    pub fn ensure(&self, qw: &QWorker) {
        let k = key(qw);
        let uid = qw.metadata.uid.clone().unwrap_or_default();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = tasks.get_mut(&k)
            && task.uid == uid
            && !task.handle.is_finished()
        {
            if task.generation != qw.metadata.generation {
                task.generation = qw.metadata.generation;
                task.wake.notify_one();
            }
            return;
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = Poller {
            scaler: self.clone(),
            object: ObjectRef::from_obj(qw),
            uid: uid.clone(),
            stabilizer: policy::Stabilizer::new(Duration::from_secs(u64::from(
                qw.spec.scale_config.scale_down_stabilization_seconds(),
            ))),
            origin: Instant::now(),
            failures: 0,
            last: None,
            vpa: VpaState::default(),
            wake: wake.clone(),
            answered: answered.clone(),
        };
        debug!(qworker = %k, "starting autoscaler poll");
        tasks.insert(
            k,
            Task {
                uid,
                generation: qw.metadata.generation,
                wake,
                answered,
                handle: tokio::spawn(poller.run()),
            },
        );
    }

    /// Whether the poll of `qw` has looked at the queue at least once since it started (a
    /// desired count written before may be stale after an operator restart).
    pub fn answered(&self, qw: &QWorker) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(&key(qw)).is_some_and(|t| {
            Some(t.uid.as_str()) == qw.metadata.uid.as_deref()
                && t.answered.load(std::sync::atomic::Ordering::SeqCst)
        })
    }

    /// Stops the poll of a deleted QWorker and forgets it (its activateVPA memory goes with it).
    pub fn forget(&self, qw: &QWorker) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = tasks.remove(&key(qw)) {
            task.handle.abort();
        }
    }

    /// Number of running poll tasks.
    pub fn running(&self) -> usize {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.values().filter(|t| !t.handle.is_finished()).count()
    }
}

/// What a poll last wrote, to write only changes.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    desired: i32,
    queue_length: Option<u64>,
    reachable: Option<&'static str>,
    at: Instant,
}

struct Poller {
    scaler: Autoscaler,
    object: ObjectRef<QWorker>,
    uid: String,
    stabilizer: policy::Stabilizer,
    origin: Instant,
    failures: u32,
    last: Option<Written>,
    vpa: VpaState,
    wake: Arc<tokio::sync::Notify>,
    answered: Arc<std::sync::atomic::AtomicBool>,
}

/// activateVPA state of one poller: the usage record and when it was last sampled.
#[derive(Default)]
struct VpaState {
    /// Loaded from the status on the first sample, then kept here.
    record: Option<crate::controllers::qworker::vpa::Usage>,
    condition: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    last_sample: Option<Instant>,
    ooms_seen: std::collections::HashSet<String>,
    dirty: bool,
}

/// How often activateVPA reads pod metrics (one list call per QWorker).
pub const VPA_INTERVAL: Duration = Duration::from_secs(15);

fn pod_metrics_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

impl Poller {
    async fn run(mut self) {
        loop {
            let Some(qw) = self.scaler.qworkers.get(&self.object) else {
                debug!(qworker = %self.object, "QWorker gone; autoscaler poll stops");
                return;
            };
            if qw.metadata.uid.as_deref() != Some(self.uid.as_str()) {
                return;
            }
            if self.scaler.shared.gate.closed().is_some() {
                // Not the leader (any more), or the pod cache is not synced: decide nothing.
                tokio::time::sleep(crate::cache::NOT_READY_RETRY).await;
                continue;
            }
            let interval =
                Duration::from_secs(u64::from(qw.spec.scale_config.poll_interval_seconds()));
            let outcome = self.poll(&qw).await;
            self.answered
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let delay = match outcome {
                Ok(()) => {
                    self.failures = 0;
                    interval
                }
                Err(()) => {
                    self.failures = self.failures.saturating_add(1);
                    (interval * 2u32.saturating_pow(self.failures.min(6))).min(MAX_BACKOFF)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {},
                _ = self.wake.notified() => {},
            }
        }
    }

    fn labels(qw: &QWorker) -> QWorkerLabels {
        QWorkerLabels {
            namespace: qw.namespace().unwrap_or_default(),
            qworker: qw.name_any(),
        }
    }

    /// One poll. `Err` when the broker could not be read.
    async fn poll(&mut self, qw: &QWorker) -> Result<(), ()> {
        let sc = &qw.spec.scale_config;
        let ns = qw.namespace().unwrap_or_default();
        self.stabilizer.set_window(Duration::from_secs(u64::from(
            sc.scale_down_stabilization_seconds(),
        )));
        let started = Instant::now();
        let depth = match self.scaler.brokers.get(&ns, &sc.scaler_config_ref).await {
            Ok(broker) => {
                let workers = live_worker_names(&self.scaler.pods, qw);
                broker
                    .depth(&sc.queue, &workers)
                    .await
                    .map_err(|e| BrokerUnavailable::from_queue(&e))
            }
            Err(e) => Err(e),
        };
        self.scaler
            .shared
            .metrics
            .poll_duration
            .get_or_create(&Self::labels(qw))
            .observe(started.elapsed().as_secs_f64());
        if sc.activate_vpa
            && self
                .vpa
                .last_sample
                .is_none_or(|t| t.elapsed() >= VPA_INTERVAL)
        {
            self.sample_usage(qw).await;
        }
        match depth {
            Ok(length) => {
                let recommendation =
                    policy::recommend(length, sc.scaling_factor, sc.min_replicas, sc.max_replicas);
                let desired = self.stabilizer.next(self.origin.elapsed(), recommendation);
                self.write(qw, desired, Some(length), None).await;
                Ok(())
            }
            Err(e) => {
                self.scaler
                    .shared
                    .metrics
                    .broker_errors
                    .get_or_create(&BrokerErrorLabels {
                        namespace: ns.clone(),
                        qworker: qw.name_any(),
                        category: e.category,
                    })
                    .inc();
                if e.reason == "BrokerAuthFailed" {
                    self.scaler.brokers.invalidate(&ns, &sc.scaler_config_ref);
                }
                let desired = qw
                    .status
                    .as_ref()
                    .map_or(sc.min_replicas, |s| s.desired_replicas)
                    // Keep the last answer, within bounds that may have changed since.
                    .clamp(sc.min_replicas.max(0), sc.max_replicas.max(0));
                self.write(qw, desired, None, Some(&e)).await;
                Err(())
            }
        }
    }

    /// activateVPA: reads the PodMetrics of the QWorker's pods (one list call by label
    /// selector), records the largest use per container, raises memory after an OOM kill, and
    /// marks the status for writing when the record or the `ResourceMetricsAvailable`
    /// condition changed. Missing metrics never stop scaling.
    async fn sample_usage(&mut self, qw: &QWorker) {
        use crate::controllers::qworker::{build, vpa};
        use workerpool_api::conditions::RESOURCE_METRICS_AVAILABLE;
        self.vpa.last_sample = Some(Instant::now());
        let status = qw.status.clone().unwrap_or_default();
        let record = self
            .vpa
            .record
            .get_or_insert_with(|| status.max_container_resources_usage.clone());
        let mut changed = false;
        let ns = qw.namespace().unwrap_or_default();
        let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
            self.scaler.shared.client.clone(),
            &ns,
            &pod_metrics_resource(),
        );
        let listed = api
            .list(&kube::api::ListParams::default().labels(&build::selector(qw)))
            .await;
        let live = live_worker_names(&self.scaler.pods, qw).len();
        let condition = match listed {
            Ok(list) => {
                for item in &list.items {
                    for c in item.data["containers"].as_array().into_iter().flatten() {
                        let Some(name) = c["name"].as_str() else {
                            continue;
                        };
                        let Ok(usage) = serde_json::from_value(c["usage"].clone()) else {
                            continue;
                        };
                        // One container of one pod at a time: the record keeps the largest.
                        let sample = vpa::Usage::from([(name.to_string(), usage)]);
                        changed |= vpa::record(record, &sample);
                    }
                }
                if list.items.len() < live {
                    NewCondition::new(
                        RESOURCE_METRICS_AVAILABLE,
                        false,
                        "MetricsPending",
                        format!(
                            "{} of {live} worker pod(s) have metrics yet; scaling goes on",
                            list.items.len()
                        ),
                    )
                } else {
                    NewCondition::new(
                        RESOURCE_METRICS_AVAILABLE,
                        true,
                        "MetricsRead",
                        format!("usage read for {} pod(s)", list.items.len()),
                    )
                }
            }
            Err(e) => NewCondition::new(
                RESOURCE_METRICS_AVAILABLE,
                false,
                "MetricsUnavailable",
                format!(
                    "cannot read metrics.k8s.io PodMetrics ({e}); is metrics-server installed? Scaling goes on"
                ),
            ),
        };
        let uid = qw.metadata.uid.as_deref();
        for pod in self.scaler.pods.state() {
            if pod.namespace() != qw.namespace() || !owned_by(&pod, uid) {
                continue;
            }
            for cs in pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
            {
                let Some(t) = cs.last_state.as_ref().and_then(|l| l.terminated.as_ref()) else {
                    continue;
                };
                if t.reason.as_deref() != Some("OOMKilled") {
                    continue;
                }
                let key = format!("{}/{}/{}", pod.name_any(), cs.name, cs.restart_count);
                if self.vpa.ooms_seen.insert(key) && vpa::oom_killed(record, qw, &cs.name) {
                    changed = true;
                    self.scaler
                        .shared
                        .event(
                            &qw.object_ref(&()),
                            true,
                            "OOMKilled",
                            "ActivateVPA",
                            format!(
                                "Container {} of pod {} was OOM-killed; raising its memory record",
                                cs.name,
                                pod.name_any()
                            ),
                        )
                        .await;
                }
            }
        }
        let mut conds = status.conditions.clone();
        conditions::set_condition(
            &mut conds,
            condition,
            qw.metadata.generation,
            Timestamp::now(),
        );
        let new_condition = conditions::find(&conds, RESOURCE_METRICS_AVAILABLE).cloned();
        let condition_changed = self.vpa.condition.as_ref().map(|c| (&c.status, &c.reason))
            != new_condition.as_ref().map(|c| (&c.status, &c.reason));
        self.vpa.condition = new_condition;
        self.vpa.dirty |= changed || condition_changed;
    }

    /// Writes the autoscaler's part of the status if it changed.
    async fn write(
        &mut self,
        qw: &QWorker,
        desired: i32,
        length: Option<u64>,
        error: Option<&BrokerUnavailable>,
    ) {
        let reachable = error.map(|e| e.reason);
        let status = qw.status.clone().unwrap_or_default();
        let previous = self.last.clone().unwrap_or(Written {
            desired: status.desired_replicas,
            queue_length: status.queue_length.and_then(|l| u64::try_from(l).ok()),
            reachable: conditions::find(&status.conditions, BROKER_REACHABLE)
                .map(|c| if c.status == "True" { "" } else { "unknown" }),
            at: Instant::now() - QUEUE_LENGTH_REFRESH,
        });
        let reachable_key = reachable.or(Some(""));
        let changed_desired = previous.desired != desired;
        let changed_reachability = previous.reachable != reachable_key;
        let stale_length = length.is_some()
            && previous.queue_length != length
            && previous.at.elapsed() >= QUEUE_LENGTH_REFRESH;
        if !(changed_desired || changed_reachability || stale_length || self.vpa.dirty) {
            return;
        }
        let now = Timestamp::now();
        let mut conds = status.conditions.clone();
        let condition = match error {
            None => NewCondition::new(
                BROKER_REACHABLE,
                true,
                "QueueRead",
                format!("queue length {}", length.unwrap_or(0)),
            ),
            Some(e) => NewCondition::new(BROKER_REACHABLE, false, e.reason, &e.message),
        };
        conditions::set_condition(&mut conds, condition, qw.metadata.generation, now);
        let broker_condition = conditions::find(&conds, BROKER_REACHABLE).cloned();
        let last_scale_time = if changed_desired {
            Some(Time(now))
        } else {
            status.last_scale_time.clone()
        };
        let mut patch = serde_json::json!({
            "apiVersion": QWorker::api_version(&()),
            "kind": QWorker::kind(&()),
            "metadata": { "name": qw.name_any() },
            "status": {
                "desiredReplicas": desired,
                "conditions": broker_condition.into_iter().collect::<Vec<_>>(),
            }
        });
        if let Some(t) = last_scale_time {
            patch["status"]["lastScaleTime"] = serde_json::json!(t);
        }
        if let Some(record) = &self.vpa.record {
            patch["status"]["maxContainerResourcesUsage"] = serde_json::json!(record);
        }
        if let Some(c) = &self.vpa.condition
            && let Some(list) = patch["status"]["conditions"].as_array_mut()
        {
            list.push(serde_json::json!(c));
        }
        let written_length = length.or(previous.queue_length);
        if let Some(l) = written_length {
            patch["status"]["queueLength"] = serde_json::json!(l);
        }
        let api: Api<QWorker> = Api::namespaced(
            self.scaler.shared.client.clone(),
            &qw.namespace().unwrap_or_default(),
        );
        match api
            .patch_status(
                &qw.name_any(),
                &PatchParams::apply(AUTOSCALER_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                self.vpa.dirty = false;
                self.last = Some(Written {
                    desired,
                    queue_length: written_length,
                    reachable: reachable_key,
                    at: Instant::now(),
                });
            }
            Err(e) => {
                warn!(qworker = %self.object, error = %e, "could not write the desired count");
                return;
            }
        }
        let object = qw.object_ref(&());
        if changed_desired {
            let direction = if desired > previous.desired {
                "ScaledUp"
            } else {
                "ScaledDown"
            };
            info!(qworker = %self.object, from = previous.desired, to = desired, queue_length = ?length, "desired workers changed");
            self.scaler
                .shared
                .event(
                    &object,
                    false,
                    direction,
                    "Autoscale",
                    format!(
                        "Desired workers {} -> {desired} (queue length {}, scalingFactor {})",
                        previous.desired,
                        length.map_or_else(|| "unknown".to_string(), |l| l.to_string()),
                        qw.spec.scale_config.scaling_factor
                    ),
                )
                .await;
        }
        if changed_reachability {
            match error {
                Some(e) => {
                    warn!(qworker = %self.object, reason = e.reason, "broker unreachable; keeping {desired} desired workers");
                    self.scaler
                        .shared
                        .event(
                            &object,
                            true,
                            e.reason,
                            "ReadQueue",
                            format!("{}; keeping {desired} desired worker(s)", e.message),
                        )
                        .await;
                }
                None if previous.reachable.is_some_and(|r| !r.is_empty()) => {
                    self.scaler
                        .shared
                        .event(
                            &object,
                            false,
                            "BrokerReachable",
                            "ReadQueue",
                            "The queue can be read again".into(),
                        )
                        .await;
                }
                None => {}
            }
        }
    }
}
