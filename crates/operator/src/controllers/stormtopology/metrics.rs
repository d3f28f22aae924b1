//! Metrics of the StormTopology controller.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use workerpool_storm::{TopologyStatus, TopologySummary};

/// Storm statuses reported by `storm_topology_status`.
pub const STORM_STATUSES: [TopologyStatus; 4] = [
    TopologyStatus::Active,
    TopologyStatus::Inactive,
    TopologyStatus::Rebalancing,
    TopologyStatus::Killed,
];
/// Values of the `result` label of `storm_topology_submissions_total`.
pub const SUBMISSION_RESULTS: [&str; 3] = ["created", "succeeded", "failed"];
/// Values of the `result` label of `storm_topology_rebalances_total`.
pub const REBALANCE_RESULTS: [&str; 3] = ["started", "succeeded", "failed"];

/// Labels naming one StormTopology.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopologyLabels {
    /// `metadata.name` of the StormTopology.
    pub topology: String,
    /// Its namespace.
    pub namespace: String,
}

/// Labels of `storm_topology_status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `metadata.name` of the StormTopology.
    pub topology: String,
    /// Its namespace.
    pub namespace: String,
    /// Storm's status (`ACTIVE`, `INACTIVE`, `REBALANCING`, `KILLED`).
    pub status: &'static str,
}

/// Labels of the submission and rebalance counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `metadata.name` of the StormTopology.
    pub topology: String,
    /// Its namespace.
    pub namespace: String,
    /// What happened (see [`SUBMISSION_RESULTS`], [`REBALANCE_RESULTS`]).
    pub result: &'static str,
}

/// The StormTopology controller's metrics.
#[derive(Debug, Clone, Default)]
pub struct TopologyMetrics {
    /// `storm_topology_status`: 1 for Storm's current status of the topology, 0 for the others.
    pub status: Family<StatusLabels, Gauge>,
    /// `storm_topology_workers`.
    pub workers: Family<TopologyLabels, Gauge>,
    /// `storm_topology_executors`.
    pub executors: Family<TopologyLabels, Gauge>,
    /// `storm_topology_uptime_seconds`.
    pub uptime: Family<TopologyLabels, Gauge>,
    /// `storm_topology_submissions_total`.
    pub submissions: Family<ResultLabels, Counter>,
    /// `storm_topology_rebalances_total`.
    pub rebalances: Family<ResultLabels, Counter>,
}

fn labels(namespace: &str, name: &str) -> TopologyLabels {
    TopologyLabels {
        topology: name.to_string(),
        namespace: namespace.to_string(),
    }
}

impl TopologyMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "storm_topology_status",
            "1 for Storm's current status of the topology (ACTIVE, INACTIVE, REBALANCING, KILLED)",
            self.status.clone(),
        );
        registry.register(
            "storm_topology_workers",
            "Workers Storm assigned to the topology",
            self.workers.clone(),
        );
        registry.register(
            "storm_topology_executors",
            "Executors of the topology in Storm",
            self.executors.clone(),
        );
        registry.register(
            "storm_topology_uptime_seconds",
            "Seconds since the topology was submitted, as Storm reports",
            self.uptime.clone(),
        );
        registry.register(
            "storm_topology_submissions",
            "Submission Jobs, by result (created, succeeded, failed)",
            self.submissions.clone(),
        );
        registry.register(
            "storm_topology_rebalances",
            "Rebalance Jobs, by result (started, succeeded, failed)",
            self.rebalances.clone(),
        );
    }

    /// Records what Storm reports of the topology `namespace/name`.
    pub fn observe(&self, namespace: &str, name: &str, found: &TopologySummary) {
        for status in STORM_STATUSES {
            self.status
                .get_or_create(&StatusLabels {
                    topology: name.to_string(),
                    namespace: namespace.to_string(),
                    status: status.as_str(),
                })
                .set(i64::from(status == found.status));
        }
        let l = labels(namespace, name);
        self.workers.get_or_create(&l).set(found.workers_total);
        self.executors.get_or_create(&l).set(found.executors_total);
        self.uptime.get_or_create(&l).set(found.uptime_seconds);
        self.counters_exist(namespace, name);
    }

    /// Creates every result series of the submission and rebalance counters of `namespace/name`
    /// (at 0 where new): an `increase()` then sees the first failure, which it would miss on a
    /// series born at 1.
    fn counters_exist(&self, namespace: &str, name: &str) {
        for (family, results) in [
            (&self.submissions, SUBMISSION_RESULTS),
            (&self.rebalances, REBALANCE_RESULTS),
        ] {
            for result in results {
                family.get_or_create_owned(&ResultLabels {
                    topology: name.to_string(),
                    namespace: namespace.to_string(),
                    result,
                });
            }
        }
    }

    /// Drops the Storm gauges of a topology that is not in Storm (the counters stay).
    pub fn absent(&self, namespace: &str, name: &str) {
        for status in STORM_STATUSES {
            self.status.remove(&StatusLabels {
                topology: name.to_string(),
                namespace: namespace.to_string(),
                status: status.as_str(),
            });
        }
        let l = labels(namespace, name);
        self.workers.remove(&l);
        self.executors.remove(&l);
        self.uptime.remove(&l);
    }

    /// Counts a submission Job event (`created`, `succeeded`, `failed`).
    pub fn submission(&self, namespace: &str, name: &str, result: &'static str) {
        self.counters_exist(namespace, name);
        self.submissions
            .get_or_create(&ResultLabels {
                topology: name.to_string(),
                namespace: namespace.to_string(),
                result,
            })
            .inc();
    }

    /// Counts a rebalance Job event (`started`, `succeeded`, `failed`).
    pub fn rebalance(&self, namespace: &str, name: &str, result: &'static str) {
        self.counters_exist(namespace, name);
        self.rebalances
            .get_or_create(&ResultLabels {
                topology: name.to_string(),
                namespace: namespace.to_string(),
                result,
            })
            .inc();
    }

    /// Drops every series of the topology `namespace/name` (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.absent(namespace, name);
        for result in SUBMISSION_RESULTS {
            self.submissions.remove(&ResultLabels {
                topology: name.to_string(),
                namespace: namespace.to_string(),
                result,
            });
        }
        for result in REBALANCE_RESULTS {
            self.rebalances.remove(&ResultLabels {
                topology: name.to_string(),
                namespace: namespace.to_string(),
                result,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_as_documented_and_forgotten() {
        let m = TopologyMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let found = TopologySummary {
            id: "wc-1-1".into(),
            name: "wc".into(),
            status: TopologyStatus::Active,
            uptime_seconds: 42,
            tasks_total: 28,
            workers_total: 3,
            executors_total: 28,
        };
        m.observe("ns", "wc", &found);
        m.submission("ns", "wc", "created");
        m.rebalance("ns", "wc", "started");
        let text = crate::metrics::encode(&registry).expect("encode");
        for line in [
            r#"storm_topology_status{topology="wc",namespace="ns",status="ACTIVE"} 1"#,
            r#"storm_topology_status{topology="wc",namespace="ns",status="KILLED"} 0"#,
            r#"storm_topology_workers{topology="wc",namespace="ns"} 3"#,
            r#"storm_topology_executors{topology="wc",namespace="ns"} 28"#,
            r#"storm_topology_uptime_seconds{topology="wc",namespace="ns"} 42"#,
            r#"storm_topology_submissions_total{topology="wc",namespace="ns",result="created"} 1"#,
            r#"storm_topology_rebalances_total{topology="wc",namespace="ns",result="started"} 1"#,
            // The other results exist from the first observation, at 0.
            r#"storm_topology_rebalances_total{topology="wc",namespace="ns",result="failed"} 0"#,
            r#"storm_topology_submissions_total{topology="wc",namespace="ns",result="failed"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        m.forget("ns", "wc");
        let text = crate::metrics::encode(&registry).expect("encode");
        assert!(!text.contains("topology=\"wc\""), "{text}");
    }
}
