//! Prometheus metrics. Per-resource gauges are read from the controllers' caches at scrape
//! time, so a deleted resource's series disappear with it; counters and histograms are
//! updated by the controllers with bounded labels (never an error's text).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use workerpool_api::storm::StormTopology;
use workerpool_api::{QWorker, StormWorkerPool};

use crate::cache::Readiness;
use workerpool_api::storm::{BOLT_CAPACITY, PENDING_MESSAGES};
use workerpool_queue::protocol::{QWORKER_LABEL, RECOVERY_FINALIZER};

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `stormworkerpool`, `qworker`, `scalerconfig` or `autoscaler`.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: &'static str,
    /// The error category ([`crate::error::Error::category`]).
    pub category: &'static str,
}

/// Labels naming one QWorker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QWorkerLabels {
    /// Namespace of the QWorker.
    pub namespace: String,
    /// Name of the QWorker.
    pub qworker: String,
}

/// Labels of a broker error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerErrorLabels {
    /// Namespace of the QWorker.
    pub namespace: String,
    /// Name of the QWorker.
    pub qworker: String,
    /// Bounded category: connect, auth, not_found, timeout, protocol, config.
    pub category: &'static str,
}

/// Every value of [`BrokerErrorLabels::category`].
pub const BROKER_ERROR_CATEGORIES: [&str; 6] = [
    "connect",
    "auth",
    "not_found",
    "timeout",
    "protocol",
    "config",
];

/// Every metric the operator updates.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Failed reconciles by category.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Worker pods created by the QWorker controller.
    pub pods_created: Family<QWorkerLabels, Counter>,
    /// Worker pods asked to drain.
    pub drains_requested: Family<QWorkerLabels, Counter>,
    /// Broker read errors by category.
    pub broker_errors: Family<BrokerErrorLabels, Counter>,
    /// Duration of one queue-depth poll.
    pub poll_duration: Family<QWorkerLabels, Histogram>,
    /// The autoscaler's estimates at its last poll, by quantity (see [`ScalingLabels`]).
    pub scaling: Family<ScalingLabels, Gauge<f64, AtomicU64>>,
    /// Changes of the desired count, by the term that decided.
    pub scale_decisions: Family<DecisionLabels, Counter>,
    /// 1 while this replica acts (it holds the Lease, or leader election is off), else 0.
    pub leader: Gauge,
    /// Times this replica became the leader.
    pub leader_transitions: Counter,
    /// Events dropped because the publisher's queue was full.
    pub events_dropped: Counter,
}

/// Labels of the autoscaler's estimates.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabels {
    /// Namespace of the QWorker.
    pub namespace: String,
    /// Name of the QWorker.
    pub qworker: String,
    /// One of [`SCALING_QUANTITIES`].
    pub quantity: &'static str,
}

/// Every value of [`ScalingLabels::quantity`]: arrivals and completions (tasks/s), the
/// throughput assumed per worker (tasks/s), the arrivals' need (workers), the projected backlog
/// (tasks), ready and starting workers, the typical start-up (s), and 1 while scaling is held as
/// ineffective.
pub const SCALING_QUANTITIES: [&str; 9] = [
    "arrival_rate",
    "completion_rate",
    "worker_throughput",
    "arrival_need",
    "projected_backlog",
    "ready_workers",
    "starting_workers",
    "startup_seconds",
    "ineffective",
];

/// Labels of a change of the desired count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Namespace of the QWorker.
    pub namespace: String,
    /// Name of the QWorker.
    pub qworker: String,
    /// The deciding term ([`workerpool_scaling::Term::as_str`]).
    pub term: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency_histogram),
            pods_created: Family::default(),
            drains_requested: Family::default(),
            broker_errors: Family::default(),
            poll_duration: Family::new_with_constructor(latency_histogram),
            scaling: Family::default(),
            scale_decisions: Family::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            events_dropped: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`, and the build's `workerpool_operator_build_info`.
    pub fn register(&self, registry: &mut Registry) {
        crate::build_info::register(registry);
        registry.register(
            "workerpool_reconciles",
            "Reconciles started, by controller",
            self.reconciles.clone(),
        );
        registry.register(
            "workerpool_reconcile_errors",
            "Failed reconciles, by controller and error category",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "workerpool_reconcile_duration_seconds",
            "Reconcile duration, by controller",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "qworker_pods_created",
            "Worker pods created",
            self.pods_created.clone(),
        );
        registry.register(
            "qworker_drains_requested",
            "Worker pods asked to drain (finish their task and exit)",
            self.drains_requested.clone(),
        );
        registry.register(
            "qworker_broker_errors",
            "Queue-depth reads that failed, by category",
            self.broker_errors.clone(),
        );
        registry.register(
            "qworker_poll_duration_seconds",
            "Duration of one queue-depth poll",
            self.poll_duration.clone(),
        );
        registry.register(
            "qworker_scaling",
            "The autoscaler's estimates at its last poll, by quantity",
            self.scaling.clone(),
        );
        registry.register(
            "qworker_scale_decisions",
            "Changes of the desired worker count, by the term that decided",
            self.scale_decisions.clone(),
        );
        registry.register(
            "workerpool_operator_leader",
            "1 while this replica acts: it holds the leader-election Lease, or election is off",
            self.leader.clone(),
        );
        registry.register(
            "workerpool_operator_leader_transitions",
            "Times this replica became the leader",
            self.leader_transitions.clone(),
        );
        registry.register(
            "workerpool_operator_events_dropped",
            "Events dropped because the publisher's queue was full",
            self.events_dropped.clone(),
        );
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped. The
    /// controller's first reconcile creates its error series of every category at 0, so that
    /// a rate or `increase()` sees the first failure.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        let reconciles = self
            .reconciles
            .get_or_create(&ControllerLabels { controller });
        if reconciles.get() == 0 {
            for category in crate::error::Category::ALL {
                self.reconcile_errors.get_or_create_owned(&ErrorLabels {
                    controller,
                    category: category.as_str(),
                });
            }
        }
        reconciles.inc();
        drop(reconciles);
        ReconcileTimer {
            histogram: self
                .reconcile_duration
                .get_or_create(&ControllerLabels { controller })
                .clone(),
            start: std::time::Instant::now(),
        }
    }

    /// Drops every series of the QWorker `namespace/qworker` (it was deleted).
    pub fn forget_qworker(&self, namespace: &str, qworker: &str) {
        let labels = QWorkerLabels {
            namespace: namespace.to_string(),
            qworker: qworker.to_string(),
        };
        self.pods_created.remove(&labels);
        self.drains_requested.remove(&labels);
        self.poll_duration.remove(&labels);
        for quantity in SCALING_QUANTITIES {
            self.scaling.remove(&ScalingLabels {
                namespace: namespace.to_string(),
                qworker: qworker.to_string(),
                quantity,
            });
        }
        for term in workerpool_scaling::Term::ALL {
            self.scale_decisions.remove(&DecisionLabels {
                namespace: namespace.to_string(),
                qworker: qworker.to_string(),
                term: term.as_str(),
            });
        }
        for category in BROKER_ERROR_CATEGORIES {
            self.broker_errors.remove(&BrokerErrorLabels {
                namespace: namespace.to_string(),
                qworker: qworker.to_string(),
                category,
            });
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &'static str, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Observes `d` in a latency histogram.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolReplicaLabels {
    pool: String,
    namespace: String,
    topology: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolInfoLabels {
    pool: String,
    namespace: String,
    topology: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolBoundLabels {
    pool: String,
    namespace: String,
    topology: String,
    bound: &'static str,
}

/// Labels of `storm_worker_pool_storm_metric`: the pool and one of the recognised metric names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStormLabels {
    namespace: String,
    pool: String,
    metric: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    namespace: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    namespace: String,
    qworker: String,
    queue: String,
}

/// Labels of `qworker_condition`: the QWorker, and a condition's type, status and reason, all
/// from bounded sets (the types of [`QWORKER_CONDITION_TYPES`], `True`/`False`/`Unknown`, and
/// the CamelCase reasons the operator writes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    qworker: String,
    r#type: String,
    status: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopologyInfoLabels {
    topology: String,
    namespace: String,
    cluster: String,
    phase: &'static str,
}

/// The condition types of a QWorker that `qworker_condition` reports (others are ignored, so
/// that the label stays bounded).
pub const QWORKER_CONDITION_TYPES: [&str; 4] = [
    workerpool_api::conditions::READY,
    workerpool_api::conditions::BROKER_REACHABLE,
    workerpool_api::conditions::SCALING,
    workerpool_api::conditions::RESOURCE_METRICS_AVAILABLE,
];

/// Gauges read from the controllers' caches at scrape time: `storm_worker_pool_replicas`,
/// `storm_worker_pool_info`, `storm_worker_pool_autoscaling_replicas`,
/// `storm_worker_pool_storm_metric`, `storm_worker_pool_storm_replicas`, `storm_topology_info`,
/// `qworker_queue_length`, `qworker_desired_replicas`, `qworker_current_replicas`,
/// `qworker_min_replicas`, `qworker_max_replicas`, `qworker_condition`,
/// `qworker_pods_finalizer_held` and `qworker_pods_finalizer_held_max_seconds`.
#[derive(Debug, Default)]
pub struct ResourceCollector {
    /// Cached pools.
    pub pools: Option<Store<StormWorkerPool>>,
    /// Cached QWorkers.
    pub qworkers: Option<Store<QWorker>>,
    /// Cached worker pods of the QWorkers.
    pub pods: Option<Store<Pod>>,
    /// Cached StormTopologies.
    pub topologies: Option<Store<StormTopology>>,
}

fn gauge_family<L: EncodeLabelSet, V: EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, V)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Worker pods that are being deleted but still carry the task-recovery finalizer, per
/// (namespace, QWorker label): their count and the longest time, in seconds, since the
/// `deletionTimestamp` of one of them (the end of its grace period) at `now`.
pub fn finalizer_held(
    pods: &[std::sync::Arc<Pod>],
    now: Timestamp,
) -> BTreeMap<(String, String), (i64, f64)> {
    let mut held: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    for pod in pods {
        let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
            continue;
        };
        if !pod.finalizers().iter().any(|f| f == RECOVERY_FINALIZER) {
            continue;
        }
        let qworker = pod.labels().get(QWORKER_LABEL).cloned().unwrap_or_default();
        let seconds = now.duration_since(deleted.0).as_secs_f64().max(0.0);
        let entry = held
            .entry((pod.namespace().unwrap_or_default(), qworker))
            .or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(seconds);
    }
    held
}

impl Collector for ResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(pools) = &self.pools {
            PoolSeries::of(&pools.state()).encode(&mut encoder)?;
        }
        if let Some(topologies) = &self.topologies {
            encode_topologies(&topologies.state(), &mut encoder)?;
        }
        if let Some(qworkers) = &self.qworkers {
            let held = match &self.pods {
                Some(pods) => finalizer_held(&pods.state(), Timestamp::now()),
                None => BTreeMap::new(),
            };
            QWorkerSeries::of(&qworkers.state(), held).encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The scrape-time series of the StormWorkerPools.
#[derive(Default)]
struct PoolSeries {
    replicas: Vec<(PoolReplicaLabels, i64)>,
    info: Vec<(PoolInfoLabels, i64)>,
    bounds: Vec<(PoolBoundLabels, i64)>,
    storm_metrics: Vec<(PoolStormLabels, f64)>,
    storm_replicas: Vec<(PoolLabels, i64)>,
}

impl PoolSeries {
    /// The series of every pool in `pools`.
    fn of(pools: &[std::sync::Arc<StormWorkerPool>]) -> Self {
        let mut series = Self::default();
        for pool in pools {
            series.add_storm_autoscaling(pool);
            series.add_bounds(pool);
            series.add_replicas(pool);
        }
        series
    }

    /// The count derived from Storm's load and the Storm metrics it came from.
    fn add_storm_autoscaling(&mut self, pool: &StormWorkerPool) {
        let Some(storm) = pool
            .status
            .as_ref()
            .and_then(|s| s.storm_autoscaling.as_ref())
        else {
            return;
        };
        let labels = |metric| PoolStormLabels {
            namespace: pool.namespace().unwrap_or_default(),
            pool: pool.name_any(),
            metric,
        };
        self.storm_replicas.push((
            PoolLabels {
                namespace: pool.namespace().unwrap_or_default(),
                pool: pool.name_any(),
            },
            i64::from(storm.replicas),
        ));
        let inputs = storm.inputs.clone().unwrap_or_default();
        if let Some(v) = inputs.pending_messages_per_pod {
            self.storm_metrics.push((labels(PENDING_MESSAGES), v));
        }
        if let Some(v) = inputs.bolt_capacity {
            self.storm_metrics.push((labels(BOLT_CAPACITY), v));
        }
    }

    /// The HPA's bounds of an autoscaled pool.
    fn add_bounds(&mut self, pool: &StormWorkerPool) {
        let Some(auto) = pool.spec.autoscaling.as_ref().filter(|a| a.enabled) else {
            return;
        };
        let bound = |bound| PoolBoundLabels {
            pool: pool.name_any(),
            namespace: pool.namespace().unwrap_or_default(),
            topology: pool.spec.topology_ref.clone(),
            bound,
        };
        self.bounds
            .push((bound("min"), i64::from(auto.min_replicas.unwrap_or(1))));
        if let Some(max) = auto.max_replicas {
            self.bounds.push((bound("max"), i64::from(max)));
        }
    }

    /// The replicas by state and the info series.
    fn add_replicas(&mut self, pool: &StormWorkerPool) {
        let status = pool.status.clone().unwrap_or_default();
        let base = |state| PoolReplicaLabels {
            pool: pool.name_any(),
            namespace: pool.namespace().unwrap_or_default(),
            topology: pool.spec.topology_ref.clone(),
            state,
        };
        self.replicas
            .push((base("desired"), i64::from(status.replicas)));
        self.replicas
            .push((base("ready"), i64::from(status.ready_replicas)));
        self.replicas
            .push((base("available"), i64::from(status.available_replicas)));
        self.info.push((
            PoolInfoLabels {
                pool: pool.name_any(),
                namespace: pool.namespace().unwrap_or_default(),
                topology: pool.spec.topology_ref.clone(),
                phase: status.phase.unwrap_or_default().as_str(),
            },
            1,
        ));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge_family(
            encoder,
            "storm_worker_pool_replicas",
            "Number of replicas by state (desired, ready, available)",
            &self.replicas,
        )?;
        gauge_family(
            encoder,
            "storm_worker_pool_info",
            "Worker pool information",
            &self.info,
        )?;
        gauge_family(
            encoder,
            "storm_worker_pool_autoscaling_replicas",
            "Bounds (min, max) of the HPA of a pool with autoscaling enabled",
            &self.bounds,
        )?;
        gauge_family(
            encoder,
            "storm_worker_pool_storm_metric",
            "Per-pod value of a Storm metric the operator evaluates (storm_pending_messages: tuple trees in flight per pod; storm_bolt_capacity: the busiest bolt's capacity), from the pool's last read of the Storm UI",
            &self.storm_metrics,
        )?;
        gauge_family(
            encoder,
            "storm_worker_pool_storm_replicas",
            "The count derived from Storm's load, enforced as the HPA's minReplicas",
            &self.storm_replicas,
        )
    }
}

/// `storm_topology_info` of every topology in `topologies`.
fn encode_topologies(
    topologies: &[std::sync::Arc<StormTopology>],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let info: Vec<_> = topologies
        .iter()
        .map(|t| {
            let phase = t
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or_default()
                .as_str();
            let labels = TopologyInfoLabels {
                topology: t.name_any(),
                namespace: t.namespace().unwrap_or_default(),
                cluster: t.spec.cluster_ref.clone(),
                phase,
            };
            (labels, 1_i64)
        })
        .collect();
    gauge_family(
        encoder,
        "storm_topology_info",
        "1 per StormTopology, labelled with its cluster and status phase",
        &info,
    )
}

/// The scrape-time series of the QWorkers.
#[derive(Default)]
struct QWorkerSeries {
    length: Vec<(QueueLabels, i64)>,
    desired: Vec<(QueueLabels, i64)>,
    current: Vec<(QueueLabels, i64)>,
    min: Vec<(QueueLabels, i64)>,
    max: Vec<(QueueLabels, i64)>,
    conditions: Vec<(ConditionLabels, i64)>,
    /// Pods held by the task-recovery finalizer, per (namespace, QWorker): count and seconds.
    held: BTreeMap<(String, String), (i64, f64)>,
}

impl QWorkerSeries {
    /// The series of every QWorker in `qworkers`, with the finalizer-held pods `held`.
    fn of(
        qworkers: &[std::sync::Arc<QWorker>],
        held: BTreeMap<(String, String), (i64, f64)>,
    ) -> Self {
        let mut series = Self {
            held,
            ..Self::default()
        };
        for qw in qworkers {
            series.add(qw);
        }
        series
    }

    /// The series of one QWorker.
    fn add(&mut self, qw: &QWorker) {
        let status = qw.status.clone().unwrap_or_default();
        let labels = QueueLabels {
            namespace: qw.namespace().unwrap_or_default(),
            qworker: qw.name_any(),
            queue: qw.spec.scale_config.queue.clone(),
        };
        if let Some(l) = status.queue_length {
            self.length.push((labels.clone(), l));
        }
        self.desired
            .push((labels.clone(), i64::from(status.desired_replicas)));
        self.min
            .push((labels.clone(), i64::from(qw.spec.scale_config.min_replicas)));
        self.max
            .push((labels.clone(), i64::from(qw.spec.scale_config.max_replicas)));
        self.current
            .push((labels.clone(), i64::from(status.current_replicas)));
        for c in status
            .conditions
            .iter()
            .filter(|c| QWORKER_CONDITION_TYPES.contains(&c.type_.as_str()))
        {
            self.conditions.push((
                ConditionLabels {
                    namespace: labels.namespace.clone(),
                    qworker: labels.qworker.clone(),
                    r#type: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                },
                1_i64,
            ));
        }
        // Every QWorker has the held-pods series, 0 while no pod is held.
        self.held
            .entry((labels.namespace, labels.qworker))
            .or_default();
    }

    fn encode(self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge_family(
            encoder,
            "qworker_queue_length",
            "Tasks waiting plus in flight, as last read from the broker",
            &self.length,
        )?;
        gauge_family(
            encoder,
            "qworker_desired_replicas",
            "Workers the autoscaler asks for",
            &self.desired,
        )?;
        gauge_family(
            encoder,
            "qworker_current_replicas",
            "Live workers (not terminating, not draining)",
            &self.current,
        )?;
        gauge_family(
            encoder,
            "qworker_min_replicas",
            "spec.scaleConfig.minReplicas",
            &self.min,
        )?;
        gauge_family(
            encoder,
            "qworker_max_replicas",
            "spec.scaleConfig.maxReplicas",
            &self.max,
        )?;
        gauge_family(
            encoder,
            "qworker_condition",
            "1 per status condition of a QWorker, labelled with its type, status and reason",
            &self.conditions,
        )?;
        encode_held(self.held, encoder)
    }
}

/// `qworker_pods_finalizer_held` and `qworker_pods_finalizer_held_max_seconds`.
fn encode_held(
    held: BTreeMap<(String, String), (i64, f64)>,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let held_count: Vec<_> = held
        .iter()
        .map(|((namespace, qworker), (n, _))| {
            (
                QWorkerLabels {
                    namespace: namespace.clone(),
                    qworker: qworker.clone(),
                },
                *n,
            )
        })
        .collect();
    let held_seconds: Vec<_> = held
        .into_iter()
        .map(|((namespace, qworker), (_, s))| (QWorkerLabels { namespace, qworker }, s))
        .collect();
    gauge_family(
        encoder,
        "qworker_pods_finalizer_held",
        "Worker pods being deleted that the task-recovery finalizer still holds",
        &held_count,
    )?;
    gauge_family(
        encoder,
        "qworker_pods_finalizer_held_max_seconds",
        "Longest time since the deletionTimestamp of a pod the task-recovery finalizer holds",
        &held_seconds,
    )
}

/// Gauges and counters of the operator process itself, read at scrape time: readiness
/// (`workerpool_operator_ready`), the bounded API client's counts ([`crate::limit::ApiStats`]:
/// `workerpool_api_requests_total`, `workerpool_api_requests_in_flight`,
/// `workerpool_api_requests_limit`, `workerpool_api_throttled_total`) and, on Linux, the
/// standard `process_*` metrics from `/proc/self`.
pub struct OperatorCollector {
    /// The caches' synced flags (`/readyz`).
    pub readiness: Readiness,
    /// The API client's counts.
    pub api: std::sync::Arc<crate::limit::ApiStats>,
}

impl std::fmt::Debug for OperatorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorCollector")
            .field("ready", &self.readiness.is_ready())
            .field("api", &self.api)
            .finish()
    }
}

fn single<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter<V: prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

impl Collector for OperatorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        single(
            &mut encoder,
            "workerpool_operator_ready",
            "1 once every watch cache has synced (/readyz answers 200), else 0",
            i64::from(self.readiness.is_ready()),
        )?;
        counter(
            &mut encoder,
            "workerpool_api_requests",
            "Kubernetes API requests sent (watches included)",
            self.api.requests(),
        )?;
        single(
            &mut encoder,
            "workerpool_api_requests_in_flight",
            "Kubernetes API requests sent and not answered yet (watches excepted)",
            self.api.in_flight(),
        )?;
        single(
            &mut encoder,
            "workerpool_api_requests_limit",
            "The bound on API requests in flight (--max-api-requests)",
            self.api.limit(),
        )?;
        counter(
            &mut encoder,
            "workerpool_api_throttled",
            "API answers with HTTP 429 (the API server shedding load)",
            self.api.throttled(),
        )?;
        if let Some(p) = ProcessStats::read() {
            counter(
                &mut encoder,
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                p.cpu_seconds,
            )?;
            single(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            )?;
            single(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            )?;
            single(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            )?;
            single(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            )?;
            if let Some(max) = p.max_fds {
                single(
                    &mut encoder,
                    "process_max_fds",
                    "Maximum number of open file descriptors",
                    max,
                )?;
            }
            single(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                p.threads,
            )?;
        }
        Ok(())
    }
}

/// Clock ticks per second of the times in `/proc` (`USER_HZ`, fixed by the kernel's ABI).
pub const USER_HZ: f64 = 100.0;
/// Bytes per page of `rss` in `/proc/self/stat` (4 KiB on x86-64 and the usual arm64 kernels).
pub const PAGE_SIZE: u64 = 4096;

/// The process figures of the Prometheus client conventions, from `/proc/self`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Start time since the epoch, in seconds.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of open file descriptors (`None` when unlimited).
    pub max_fds: Option<u64>,
    /// OS threads.
    pub threads: u64,
}

impl ProcessStats {
    /// Reads the figures of this process (`None` where `/proc` is not available).
    pub fn read() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            let boot = std::fs::read_to_string("/proc/stat").ok()?;
            let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
            let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
            Self::parse(&stat, &boot, &limits, open_fds)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// The figures from the text of `/proc/self/stat`, `/proc/stat` and `/proc/self/limits`.
    /// Times in `/proc` are in clock ticks of [`USER_HZ`]; `rss` is in pages of
    /// [`PAGE_SIZE`] (what Prometheus' own Go client assumes too).
    pub fn parse(stat: &str, boot: &str, limits: &str, open_fds: u64) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        // Field n of proc(5) is fields[n - 3] here.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) as f64 / USER_HZ,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / USER_HZ,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * PAGE_SIZE,
            open_fds,
            max_fds,
        })
    }
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use std::sync::Arc;

    fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store::<K>();
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        reader
    }

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).expect("object")
    }

    fn worker_pod(name: &str, deleted: Option<&str>, finalizer: bool) -> Pod {
        object(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "ns",
                "labels": {QWORKER_LABEL: "qw"},
                "deletionTimestamp": deleted,
                "finalizers": if finalizer { vec![RECOVERY_FINALIZER] } else { vec![] },
            }
        }))
    }

    #[test]
    fn finalizer_held_counts_deleted_pods_with_the_finalizer_only() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let pods = vec![
            Arc::new(worker_pod("a", Some("2026-01-01T00:00:00Z"), true)),
            Arc::new(worker_pod("b", Some("2026-01-01T00:09:00Z"), true)),
            // Its grace period has not ended yet: held, for 0 s.
            Arc::new(worker_pod("c", Some("2026-01-01T00:11:00Z"), true)),
            Arc::new(worker_pod("d", Some("2026-01-01T00:00:00Z"), false)),
            Arc::new(worker_pod("e", None, true)),
        ];
        let held = finalizer_held(&pods, now);
        assert_eq!(
            held.get(&("ns".to_string(), "qw".to_string())),
            Some(&(3, 600.0))
        );
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn resource_collector_reports_bounds_conditions_held_pods_and_topologies() {
        let qw: QWorker = object(serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1",
            "kind": "QWorker",
            "metadata": {"name": "qw", "namespace": "ns"},
            "spec": {
                "podSpec": {"containers": [{"name": "worker", "image": "w"}]},
                "scaleConfig": {
                    "scalerConfigRef": "sc", "queue": "jobs",
                    "minReplicas": 1, "maxReplicas": 7, "scalingFactor": 1.0
                }
            },
            "status": {
                "desiredReplicas": 7, "currentReplicas": 7,
                "conditions": [
                    {"type": "Scaling", "status": "False", "reason": "CrashLooping",
                     "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Custom", "status": "True", "reason": "X",
                     "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ]
            }
        }));
        let idle: QWorker = object(serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1",
            "kind": "QWorker",
            "metadata": {"name": "idle", "namespace": "ns"},
            "spec": {
                "podSpec": {"containers": [{"name": "worker", "image": "w"}]},
                "scaleConfig": {
                    "scalerConfigRef": "sc", "queue": "other",
                    "minReplicas": 0, "maxReplicas": 3, "scalingFactor": 1.0
                }
            }
        }));
        let pool: StormWorkerPool = object(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1",
            "kind": "StormWorkerPool",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"topologyRef": "t",
                     "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 9}}
        }));
        let topology: StormTopology = object(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1",
            "kind": "StormTopology",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"clusterRef": "c"},
            "status": {"phase": "Suspended"}
        }));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ResourceCollector {
            pools: Some(store(vec![pool])),
            qworkers: Some(store(vec![qw, idle])),
            pods: Some(store(vec![worker_pod(
                "qw-1",
                Some("2000-01-01T00:00:00Z"),
                true,
            )])),
            topologies: Some(store(vec![topology])),
        }));
        let text = encode(&registry).expect("encode");
        for line in [
            r#"qworker_max_replicas{namespace="ns",qworker="qw",queue="jobs"} 7"#,
            r#"qworker_min_replicas{namespace="ns",qworker="idle",queue="other"} 0"#,
            r#"qworker_condition{namespace="ns",qworker="qw",type="Scaling",status="False",reason="CrashLooping"} 1"#,
            r#"qworker_pods_finalizer_held{namespace="ns",qworker="qw"} 1"#,
            r#"qworker_pods_finalizer_held{namespace="ns",qworker="idle"} 0"#,
            r#"qworker_pods_finalizer_held_max_seconds{namespace="ns",qworker="idle"} 0.0"#,
            r#"storm_worker_pool_autoscaling_replicas{pool="p",namespace="ns",topology="t",bound="min"} 2"#,
            r#"storm_worker_pool_autoscaling_replicas{pool="p",namespace="ns",topology="t",bound="max"} 9"#,
            r#"storm_topology_info{topology="t",namespace="ns",cluster="c",phase="Suspended"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains("Custom"),
            "unknown condition types are left out: {text}"
        );
        let held = text
            .lines()
            .find(|l| {
                l.starts_with(
                    r#"qworker_pods_finalizer_held_max_seconds{namespace="ns",qworker="qw"}"#,
                )
            })
            .expect("held seconds of qw");
        let seconds: f64 = held
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert!(seconds > 8e8, "{held}");
    }

    #[test]
    fn operator_collector_reports_readiness_and_api_counts() {
        let readiness = Readiness::default();
        let synced = readiness.track("pods");
        let api = Arc::new(crate::limit::ApiStats::default());
        let _layer = crate::limit::LimitLayer::with_stats(5, api.clone());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OperatorCollector {
            readiness: readiness.clone(),
            api,
        }));
        let text = encode(&registry).expect("encode");
        for line in [
            "workerpool_operator_ready 0",
            "workerpool_api_requests_total 0",
            "workerpool_api_requests_in_flight 0",
            "workerpool_api_requests_limit 5",
            "workerpool_api_throttled_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes "), "{text}");
            assert!(text.contains("process_cpu_seconds_total "), "{text}");
        }
        synced.mark();
        let text = encode(&registry).expect("encode");
        assert!(
            text.lines().any(|l| l == "workerpool_operator_ready 1"),
            "{text}"
        );
    }

    #[test]
    fn a_controllers_error_series_exist_from_its_first_reconcile() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        drop(m.reconcile_started("qworker"));
        m.reconcile_failed("qworker", "Conflict");
        drop(m.reconcile_started("qworker"));
        let text = encode(&registry).expect("encode");
        for line in [
            r#"workerpool_reconciles_total{controller="qworker"} 2"#,
            r#"workerpool_reconcile_errors_total{controller="qworker",category="Conflict"} 1"#,
            r#"workerpool_reconcile_errors_total{controller="qworker",category="InvalidSpec"} 0"#,
            r#"workerpool_reconcile_errors_total{controller="qworker",category="ReferenceError"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        let errors = text
            .lines()
            .filter(|l| l.starts_with("workerpool_reconcile_errors_total{"))
            .count();
        assert_eq!(errors, crate::error::Category::ALL.len(), "{text}");
    }

    #[test]
    fn process_stats_are_parsed_from_proc() {
        // proc(5): pid (comm) state ppid ... utime(14) stime(15) ... num_threads(20) ...
        // starttime(22) vsize(23) rss(24); the command name may hold spaces and parentheses.
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    1000 104857600 2560 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = ProcessStats::parse(stat, boot, limits, 12).expect("parsed");
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2560 * 4096,
                virtual_bytes: 104_857_600,
                start_time_seconds: 1_700_000_010.0,
                open_fds: 12,
                max_fds: Some(1024),
                threads: 3,
            }
        );
        assert_eq!(ProcessStats::parse("garbage", boot, limits, 0), None);
    }
}
