//! Prometheus gauges of the StormClusters, set from each poll's status and removed when a
//! cluster is deleted.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use workerpool_api::storm::{ClusterMode, StormClusterStatus};

/// Labels naming one StormCluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// Name of the StormCluster.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
}

/// Labels of the slot gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// Name of the StormCluster.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
    /// `total`, `used` or `free`.
    pub state: &'static str,
}

/// Labels of the info gauge (always 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// Name of the StormCluster.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
    /// The status phase.
    pub phase: &'static str,
    /// Storm's version (empty while unknown).
    pub version: String,
    /// `Managed` or `External`.
    pub mode: &'static str,
}

/// Every value of [`SlotLabels::state`].
pub const SLOT_STATES: [&str; 3] = ["total", "used", "free"];

/// The StormCluster gauges.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// `storm_cluster_supervisors`: supervisors known to Nimbus.
    pub supervisors: Family<ClusterLabels, Gauge>,
    /// `storm_cluster_slots`: worker slots by state.
    pub slots: Family<SlotLabels, Gauge>,
    /// `storm_cluster_topologies`: topologies known to Nimbus.
    pub topologies: Family<ClusterLabels, Gauge>,
    /// `storm_cluster_info`: 1, labelled with phase, version and mode.
    pub info: Family<InfoLabels, Gauge>,
    /// `storm_cluster_reachable`: 1 while the UI answers with a Nimbus leader.
    pub reachable: Family<ClusterLabels, Gauge>,
    /// The info labels last set per (namespace, name), to drop the old series on a change.
    info_of: Mutex<HashMap<(String, String), InfoLabels>>,
}

fn mode_str(mode: ClusterMode) -> &'static str {
    match mode {
        ClusterMode::Managed => "Managed",
        ClusterMode::External => "External",
    }
}

impl ClusterMetrics {
    /// Registers the gauges in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "storm_cluster_supervisors",
            "Supervisors known to the StormCluster's Nimbus",
            self.supervisors.clone(),
        );
        registry.register(
            "storm_cluster_slots",
            "Worker slots of the StormCluster, by state (total, used, free)",
            self.slots.clone(),
        );
        registry.register(
            "storm_cluster_topologies",
            "Topologies known to the StormCluster's Nimbus",
            self.topologies.clone(),
        );
        registry.register(
            "storm_cluster_info",
            "1 per StormCluster, labelled with its phase, Storm version and mode",
            self.info.clone(),
        );
        registry.register(
            "storm_cluster_reachable",
            "1 while the StormCluster's UI REST API answers with a Nimbus leader, else 0",
            self.reachable.clone(),
        );
    }

    /// Sets the gauges of `namespace/name` from its new `status`.
    pub fn observe(
        &self,
        namespace: &str,
        name: &str,
        mode: ClusterMode,
        status: &StormClusterStatus,
        reachable: bool,
    ) {
        let labels = ClusterLabels {
            cluster: name.into(),
            namespace: namespace.into(),
        };
        self.reachable
            .get_or_create(&labels)
            .set(i64::from(reachable));
        set_or_remove(&self.supervisors, &labels, status.supervisors);
        set_or_remove(&self.topologies, &labels, status.topologies);
        for (state, value) in
            SLOT_STATES
                .into_iter()
                .zip([status.slots_total, status.slots_used, status.slots_free])
        {
            let slot = SlotLabels {
                cluster: name.into(),
                namespace: namespace.into(),
                state,
            };
            set_or_remove(&self.slots, &slot, value);
        }
        let info = InfoLabels {
            cluster: name.into(),
            namespace: namespace.into(),
            phase: status.phase.unwrap_or_default().as_str(),
            version: status.storm_version.clone().unwrap_or_default(),
            mode: mode_str(mode),
        };
        let mut last = self.info_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = last.insert((namespace.into(), name.into()), info.clone())
            && old != info
        {
            self.info.remove(&old);
        }
        self.info.get_or_create(&info).set(1);
    }

    /// Removes every series of `namespace/name` (the cluster was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ClusterLabels {
            cluster: name.into(),
            namespace: namespace.into(),
        };
        self.reachable.remove(&labels);
        self.supervisors.remove(&labels);
        self.topologies.remove(&labels);
        for state in SLOT_STATES {
            self.slots.remove(&SlotLabels {
                cluster: name.into(),
                namespace: namespace.into(),
                state,
            });
        }
        let mut last = self.info_of.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = last.remove(&(namespace.to_string(), name.to_string())) {
            self.info.remove(&old);
        }
    }
}

fn set_or_remove<L>(family: &Family<L, Gauge>, labels: &L, value: Option<i32>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    match value {
        Some(v) => {
            family.get_or_create(labels).set(i64::from(v));
        }
        None => {
            family.remove(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use workerpool_api::storm::ClusterPhase;

    fn scrape(m: &ClusterMetrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn series_follow_the_status_and_go_on_forget() {
        let m = ClusterMetrics::default();
        let mut s = StormClusterStatus {
            phase: Some(ClusterPhase::Running),
            storm_version: Some("2.8.8".into()),
            supervisors: Some(2),
            slots_total: Some(8),
            slots_used: Some(3),
            slots_free: Some(5),
            topologies: Some(1),
            ..StormClusterStatus::default()
        };
        m.observe("team-a", "storm", ClusterMode::Managed, &s, true);
        let text = scrape(&m);
        assert!(
            text.contains(r#"storm_cluster_supervisors{cluster="storm",namespace="team-a"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"storm_cluster_slots{cluster="storm",namespace="team-a",state="free"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"storm_cluster_topologies{cluster="storm",namespace="team-a"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"storm_cluster_info{cluster="storm",namespace="team-a",phase="Running",version="2.8.8",mode="Managed"} 1"#), "{text}");
        assert!(
            text.contains(r#"storm_cluster_reachable{cluster="storm",namespace="team-a"} 1"#),
            "{text}"
        );
        s.phase = Some(ClusterPhase::Degraded);
        m.observe("team-a", "storm", ClusterMode::Managed, &s, false);
        let text = scrape(&m);
        assert!(
            !text.contains(r#"phase="Running""#),
            "old info series removed: {text}"
        );
        assert!(text.contains(r#"phase="Degraded""#), "{text}");
        assert!(
            text.contains(r#"storm_cluster_reachable{cluster="storm",namespace="team-a"} 0"#),
            "{text}"
        );
        m.forget("team-a", "storm");
        let text = scrape(&m);
        assert!(!text.contains(r#"cluster="storm""#), "{text}");
    }
}
