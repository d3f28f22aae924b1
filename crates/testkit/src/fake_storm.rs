//! A fake Storm for controller tests, without HTTP: [`FakeStorm`], a [`StormApi`] whose answers
//! the test sets and which records the topology calls, and [`FakeConnector`], the
//! [`Connector`] that hands it out and records the UI URLs it is asked for.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use workerpool_storm::model::NumberOrText;
use workerpool_storm::{
    ClusterSummary, Connector, Error, NimbusStatus, NimbusSummary, Result, StormApi,
    SupervisorSummary, TopologyDetail, TopologyStatus, TopologySummary,
};

/// An in-memory Storm: a cluster summary, the Nimbus list, and a list of topologies that the
/// operations change (by id, as Storm's REST API does). The topology calls are recorded as
/// `summary`, `topology:<id>`, `activate:<id>`, `deactivate:<id>` and `kill:<id>:<wait>`.
#[derive(Debug, Default)]
pub struct FakeStorm {
    unreachable: bool,
    summary: ClusterSummary,
    nimbuses: Vec<NimbusSummary>,
    topologies: Mutex<Vec<TopologySummary>>,
    calls: Mutex<Vec<String>>,
    url: Mutex<String>,
}

impl FakeStorm {
    /// A Storm listing `topologies`, with an empty cluster summary and no Nimbus.
    pub fn with(topologies: Vec<TopologySummary>) -> Arc<Self> {
        Arc::new(Self {
            topologies: Mutex::new(topologies),
            ..Self::default()
        })
    }

    /// A Storm 2.8.8 cluster shaped like the recorded fixtures (2 supervisors, 3 of 8 slots
    /// used, 1 topology, 28 executors and tasks) whose one Nimbus, the leader, is `host:6627`.
    pub fn leader(host: &str) -> Arc<Self> {
        Arc::new(Self {
            summary: ClusterSummary {
                storm_version: Some("2.8.8".into()),
                supervisors: 2,
                topologies: 1,
                slots_used: 3,
                slots_total: 8,
                slots_free: 5,
                executors_total: 28,
                tasks_total: 28,
            },
            nimbuses: vec![NimbusSummary {
                host: host.into(),
                port: NumberOrText::Number(6627),
                status: NimbusStatus::Leader,
                version: Some("2.8.8".into()),
                nimbus_up_time_seconds: Some(NumberOrText::Number(4452)),
            }],
            ..Self::default()
        })
    }

    /// A Storm whose UI does not answer: every call fails with [`Error::Unreachable`]
    /// ("connection refused") naming the URL it was connected at.
    pub fn unreachable() -> Arc<Self> {
        Arc::new(Self {
            unreachable: true,
            ..Self::default()
        })
    }

    /// The topology calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Replaces the listed topologies.
    pub fn set(&self, topologies: Vec<TopologySummary>) {
        *self.topologies.lock().expect("topologies") = topologies;
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    fn check(&self) -> Result<()> {
        if self.unreachable {
            return Err(Error::Unreachable {
                url: self.url.lock().expect("url").clone(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }

    fn not_alive(id: &str) -> Error {
        Error::Storm {
            status: 500,
            error: "500 Server Error".into(),
            message: format!("{id} is not alive"),
        }
    }

    fn by_id(&self, id: &str) -> Result<TopologySummary> {
        self.topologies
            .lock()
            .expect("topologies")
            .iter()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| Self::not_alive(id))
    }

    fn set_status(&self, id: &str, status: TopologyStatus) -> Result<()> {
        let mut all = self.topologies.lock().expect("topologies");
        let t = all
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| Self::not_alive(id))?;
        t.status = status;
        Ok(())
    }
}

#[async_trait]
impl StormApi for FakeStorm {
    async fn cluster_summary(&self) -> Result<ClusterSummary> {
        self.check()?;
        Ok(self.summary.clone())
    }

    async fn nimbus_summary(&self) -> Result<Vec<NimbusSummary>> {
        self.check()?;
        Ok(self.nimbuses.clone())
    }

    async fn supervisor_summary(&self) -> Result<Vec<SupervisorSummary>> {
        self.check()?;
        Ok(Vec::new())
    }

    async fn topology_summary(&self) -> Result<Vec<TopologySummary>> {
        self.record("summary".into());
        self.check()?;
        Ok(self.topologies.lock().expect("topologies").clone())
    }

    async fn topology(&self, id: &str) -> Result<TopologyDetail> {
        self.record(format!("topology:{id}"));
        self.check()?;
        let t = self.by_id(id)?;
        Ok(TopologyDetail {
            id: t.id,
            name: t.name,
            status: t.status,
            uptime_seconds: t.uptime_seconds,
            tasks_total: t.tasks_total,
            workers_total: t.workers_total,
            executors_total: t.executors_total,
            spouts: Vec::new(),
            bolts: Vec::new(),
        })
    }

    async fn activate(&self, id: &str) -> Result<()> {
        self.record(format!("activate:{id}"));
        self.check()?;
        self.set_status(id, TopologyStatus::Active)
    }

    async fn deactivate(&self, id: &str) -> Result<()> {
        self.record(format!("deactivate:{id}"));
        self.check()?;
        self.set_status(id, TopologyStatus::Inactive)
    }

    async fn kill(&self, id: &str, wait_secs: u32) -> Result<()> {
        self.record(format!("kill:{id}:{wait_secs}"));
        self.check()?;
        self.set_status(id, TopologyStatus::Killed)
    }
}

/// A [`Connector`] that hands out one [`FakeStorm`] for every URL and records the URLs.
#[derive(Debug)]
pub struct FakeConnector {
    storm: Arc<FakeStorm>,
    urls: Mutex<Vec<String>>,
}

impl FakeConnector {
    /// A connector to `storm`.
    pub fn new(storm: Arc<FakeStorm>) -> Arc<Self> {
        Arc::new(Self {
            storm,
            urls: Mutex::default(),
        })
    }

    /// The Storm it hands out.
    pub fn storm(&self) -> &Arc<FakeStorm> {
        &self.storm
    }

    /// The UI URLs it was asked for, in order.
    pub fn urls(&self) -> Vec<String> {
        self.urls.lock().expect("urls").clone()
    }
}

impl Connector for FakeConnector {
    fn connect(&self, ui_url: &str) -> Result<Arc<dyn StormApi>> {
        self.urls.lock().expect("urls").push(ui_url.to_string());
        *self.storm.url.lock().expect("url") = ui_url.to_string();
        Ok(self.storm.clone())
    }
}
