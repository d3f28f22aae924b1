//! Prometheus metrics. Per-resource gauges are read from the controllers' caches at scrape
//! time, so a deleted resource's series disappear with it; counters and histograms are
//! updated by the controllers with bounded labels (never an error's text).

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use workerpool_api::{QWorker, StormWorkerPool};

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
    /// The deciding term ([`crate::autoscaler::policy::Term::as_str`]).
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
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
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
        for term in crate::autoscaler::policy::Term::ALL {
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
struct QueueLabels {
    namespace: String,
    qworker: String,
    queue: String,
}

/// Gauges read from the StormWorkerPool and QWorker caches at scrape time:
/// `storm_worker_pool_replicas`, `storm_worker_pool_info`, `qworker_queue_length`,
/// `qworker_desired_replicas` and `qworker_current_replicas`.
#[derive(Debug)]
pub struct ResourceCollector {
    /// Cached pools.
    pub pools: Option<Store<StormWorkerPool>>,
    /// Cached QWorkers.
    pub qworkers: Option<Store<QWorker>>,
}

fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for ResourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(pools) = &self.pools {
            let mut replicas = Vec::new();
            let mut info = Vec::new();
            for pool in pools.state() {
                let status = pool.status.clone().unwrap_or_default();
                let base = |state| PoolReplicaLabels {
                    pool: pool.name_any(),
                    namespace: pool.namespace().unwrap_or_default(),
                    topology: pool.spec.topology_ref.clone(),
                    state,
                };
                replicas.push((base("desired"), i64::from(status.replicas)));
                replicas.push((base("ready"), i64::from(status.ready_replicas)));
                replicas.push((base("available"), i64::from(status.available_replicas)));
                info.push((
                    PoolInfoLabels {
                        pool: pool.name_any(),
                        namespace: pool.namespace().unwrap_or_default(),
                        topology: pool.spec.topology_ref.clone(),
                        phase: status.phase.unwrap_or_default().as_str(),
                    },
                    1,
                ));
            }
            gauge_family(
                &mut encoder,
                "storm_worker_pool_replicas",
                "Number of replicas by state (desired, ready, available)",
                &replicas,
            )?;
            gauge_family(
                &mut encoder,
                "storm_worker_pool_info",
                "Worker pool information",
                &info,
            )?;
        }
        if let Some(qworkers) = &self.qworkers {
            let mut length = Vec::new();
            let mut desired = Vec::new();
            let mut current = Vec::new();
            for qw in qworkers.state() {
                let status = qw.status.clone().unwrap_or_default();
                let labels = QueueLabels {
                    namespace: qw.namespace().unwrap_or_default(),
                    qworker: qw.name_any(),
                    queue: qw.spec.scale_config.queue.clone(),
                };
                if let Some(l) = status.queue_length {
                    length.push((labels.clone(), l));
                }
                desired.push((labels.clone(), i64::from(status.desired_replicas)));
                current.push((labels, i64::from(status.current_replicas)));
            }
            gauge_family(
                &mut encoder,
                "qworker_queue_length",
                "Tasks waiting plus in flight, as last read from the broker",
                &length,
            )?;
            gauge_family(
                &mut encoder,
                "qworker_desired_replicas",
                "Workers the autoscaler asks for",
                &desired,
            )?;
            gauge_family(
                &mut encoder,
                "qworker_current_replicas",
                "Live workers (not terminating, not draining)",
                &current,
            )?;
        }
        Ok(())
    }
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
