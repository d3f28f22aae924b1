//! Response shapes of the Storm 2.x UI REST API, as far as the operator reads them.
//!
//! Field names are Storm's own (camelCase, from `UIHelpers.java`), which differ from Storm's
//! docs in places (`availCpu`, not `availCPU`). Unknown fields are ignored; fields the operator
//! reads but an older Storm may omit default to zero or `None`. Some values change type by
//! state: an `Offline` Nimbus seed reports `port` as a string and `nimbusUpTimeSeconds` as
//! `"Not applicable"`; [`NumberOrText`] takes either.

use serde::{Deserialize, Serialize};

/// A JSON value that is a number for live daemons and text (`"Not applicable"`, `"6627"`) otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NumberOrText {
    /// An integer.
    Number(i64),
    /// Text.
    Text(String),
}

impl NumberOrText {
    /// The value as an integer, when it is one (or text holding one).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            NumberOrText::Number(n) => Some(*n),
            NumberOrText::Text(t) => t.parse().ok(),
        }
    }
}

/// `GET /api/v1/cluster/summary`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterSummary {
    /// Storm version, e.g. `2.8.8`.
    pub storm_version: Option<String>,
    /// Supervisors known to Nimbus.
    pub supervisors: i64,
    /// Topologies known to Nimbus.
    pub topologies: i64,
    /// Worker slots in use.
    pub slots_used: i64,
    /// Worker slots in all.
    pub slots_total: i64,
    /// Worker slots free.
    pub slots_free: i64,
    /// Executors of all topologies.
    pub executors_total: i64,
    /// Tasks of all topologies.
    pub tasks_total: i64,
}

/// `status` of a Nimbus in `/nimbus/summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NimbusStatus {
    /// The leading Nimbus.
    Leader,
    /// A live Nimbus that is not the leader.
    #[serde(rename = "Not a Leader")]
    NotALeader,
    /// A seed with no live Nimbus behind it.
    Offline,
    /// Anything else a future Storm may send.
    #[serde(other)]
    Unknown,
}

/// One entry of `GET /api/v1/nimbus/summary` (`nimbuses[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NimbusSummary {
    /// Host name Nimbus advertises (or the seed, when Offline).
    pub host: String,
    /// Thrift port: a number, or a string for an Offline seed.
    pub port: NumberOrText,
    /// Leader, not a leader, or offline.
    pub status: NimbusStatus,
    /// Storm version, or `"Not applicable"`.
    #[serde(default)]
    pub version: Option<String>,
    /// Uptime in seconds, or `"Not applicable"` for an Offline seed.
    #[serde(default)]
    pub nimbus_up_time_seconds: Option<NumberOrText>,
}

impl NimbusSummary {
    /// `host:port`.
    pub fn address(&self) -> String {
        match &self.port {
            NumberOrText::Number(p) => format!("{}:{p}", self.host),
            NumberOrText::Text(p) => format!("{}:{p}", self.host),
        }
    }
}

/// One entry of `GET /api/v1/supervisor/summary` (`supervisors[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SupervisorSummary {
    /// Supervisor id.
    pub id: String,
    /// Host name (`storm.local.hostname`).
    pub host: String,
    /// Uptime in seconds.
    pub uptime_seconds: i64,
    /// Worker slots in all.
    pub slots_total: i64,
    /// Worker slots in use.
    pub slots_used: i64,
    /// Worker slots free.
    pub slots_free: i64,
    /// Whether the scheduler has blacklisted it.
    pub blacklisted: bool,
    /// Storm version.
    pub version: Option<String>,
}

/// Storm's status of a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TopologyStatus {
    /// Running and taking tuples from its spouts.
    Active,
    /// Deactivated: spouts paused.
    Inactive,
    /// Being rebalanced; refuses activate, deactivate and rebalance until done.
    Rebalancing,
    /// Being killed; drops out of the list after the kill's wait.
    Killed,
    /// Anything else a future Storm may send.
    #[serde(other)]
    Unknown,
}

impl TopologyStatus {
    /// The status as Storm writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyStatus::Active => "ACTIVE",
            TopologyStatus::Inactive => "INACTIVE",
            TopologyStatus::Rebalancing => "REBALANCING",
            TopologyStatus::Killed => "KILLED",
            TopologyStatus::Unknown => "UNKNOWN",
        }
    }
}

/// One entry of `GET /api/v1/topology/summary` (`topologies[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologySummary {
    /// Storm's id, `<name>-<n>-<epoch>`: the key of every `/topology/{id}` path.
    pub id: String,
    /// The topology's name.
    pub name: String,
    /// ACTIVE, INACTIVE, REBALANCING or KILLED.
    pub status: TopologyStatus,
    /// Seconds since submission.
    #[serde(default)]
    pub uptime_seconds: i64,
    /// Tasks.
    #[serde(default)]
    pub tasks_total: i64,
    /// Workers.
    #[serde(default)]
    pub workers_total: i64,
    /// Executors.
    #[serde(default)]
    pub executors_total: i64,
}

/// Storm writes some figures as `%.3f` text (`"0.950"`), others as numbers; `"0"` or an empty
/// string means unset. Either becomes a number here; anything else is 0.
fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
        Null(()),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Number(n) if n.is_finite() => n,
        Raw::Text(t) => t
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .unwrap_or(0.0),
        _ => 0.0,
    })
}

/// A spout or bolt in `/topology/{id}`: its last error and, for the chosen `window`, its load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ComponentErrorSummary {
    /// `spoutId` or `boltId`.
    #[serde(alias = "spoutId", alias = "boltId")]
    pub component_id: String,
    /// The last error's text; empty when there was none.
    pub last_error: String,
    /// When it happened, in epoch seconds.
    pub error_time: Option<i64>,
    /// Executors of the component.
    pub executors: i64,
    /// Tuples acked in the window (a spout's: tuple trees completed).
    pub acked: i64,
    /// Bolts: tuples executed in the window.
    pub executed: i64,
    /// Bolts: the busiest executor's share of the last 10 minutes spent executing (near 1.0:
    /// saturated). Storm computes it over the 600 s window whatever `window` asks.
    #[serde(deserialize_with = "decimal")]
    pub capacity: f64,
    /// Bolts: mean milliseconds to execute a tuple.
    #[serde(deserialize_with = "decimal")]
    pub execute_latency: f64,
    /// Spouts: mean milliseconds from emit to the tuple tree's ack.
    #[serde(deserialize_with = "decimal")]
    pub complete_latency: f64,
}

/// `GET /api/v1/topology/{id}` (the parts the operator reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyDetail {
    /// Storm's id.
    pub id: String,
    /// The topology's name.
    pub name: String,
    /// ACTIVE, INACTIVE, REBALANCING or KILLED.
    pub status: TopologyStatus,
    /// Seconds since submission.
    #[serde(default)]
    pub uptime_seconds: i64,
    /// Tasks.
    #[serde(default)]
    pub tasks_total: i64,
    /// Workers.
    #[serde(default)]
    pub workers_total: i64,
    /// Executors.
    #[serde(default)]
    pub executors_total: i64,
    /// Spouts, with their last errors.
    #[serde(default)]
    pub spouts: Vec<ComponentErrorSummary>,
    /// Bolts, with their last errors.
    #[serde(default)]
    pub bolts: Vec<ComponentErrorSummary>,
}

impl TopologyDetail {
    /// The most recent component error, as `<component>: <first line>`.
    pub fn last_error(&self) -> Option<String> {
        self.spouts
            .iter()
            .chain(&self.bolts)
            .filter(|c| !c.last_error.is_empty())
            .max_by_key(|c| c.error_time.unwrap_or(0))
            .map(|c| {
                let first = c.last_error.lines().next().unwrap_or_default();
                format!("{}: {first}", c.component_id)
            })
    }
}
