//! The Storm client of workerpool-operator.
//!
//! - [`StormApi`]: the small trait the controllers use; reads and operations of the Storm UI
//!   REST API (`/api/v1/...`). Every `/topology/{id}` call takes Storm's topology **id**
//!   (`<name>-<n>-<epoch>`), never the name: [`StormApi::find_topology`] looks the id up by name.
//! - [`model`]: the response shapes of Storm 2.x (camelCase, as the UI's code writes them).
//! - [`command`]: the `storm` command lines the operator runs in Jobs (submission, rebalance),
//!   because the REST API can neither submit a topology nor change its worker count.
//! - [`rest`]: [`RestClient`], the [`StormApi`] over HTTP, and [`RestConnector`], the
//!   operator's [`Connector`] (one pooled client per UI base URL).

pub mod command;
pub mod log4j2;
pub mod model;
pub mod rest;

use std::sync::Arc;

use async_trait::async_trait;

pub use model::{
    ClusterSummary, NimbusStatus, NimbusSummary, SupervisorSummary, TopologyDetail, TopologyStatus,
    TopologySummary,
};
pub use rest::{RestClient, RestConnector};

/// What can go wrong talking to Storm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UI could not be reached (connection refused, timeout, DNS).
    #[error("Storm UI at {url} is unreachable: {message}")]
    Unreachable {
        /// The URL that was called.
        url: String,
        /// What the HTTP client said.
        message: String,
    },
    /// The UI answered with an error (`{"error", "errorMessage"}`); an unknown topology id is
    /// HTTP 500, not 404.
    #[error("Storm UI answered {status} ({error}): {message}")]
    Storm {
        /// HTTP status code.
        status: u16,
        /// Storm's `error` field, e.g. `500 Server Error`.
        error: String,
        /// Storm's `errorMessage` (free text; a stack trace before 2.8.6).
        message: String,
    },
    /// The UI answered with something that is not the expected JSON.
    #[error("unexpected answer from the Storm UI at {url}: {message}")]
    Decode {
        /// The URL that was called.
        url: String,
        /// What did not parse.
        message: String,
    },
    /// A bad argument, e.g. a base URL that does not parse.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether Storm said that no Nimbus leader could be found (seeds down, election running).
    pub fn is_no_nimbus(&self) -> bool {
        matches!(self, Error::Storm { message, .. }
            if message.contains("Could not find leader nimbus")
                || message.contains("Could not find a nimbus leader"))
    }
}

/// Result of a Storm call.
pub type Result<T> = std::result::Result<T, Error>;

/// The Storm UI REST API, as the controllers use it.
#[async_trait]
pub trait StormApi: Send + Sync {
    /// `GET /api/v1/cluster/summary`.
    async fn cluster_summary(&self) -> Result<ClusterSummary>;
    /// `GET /api/v1/nimbus/summary`.
    async fn nimbus_summary(&self) -> Result<Vec<NimbusSummary>>;
    /// `GET /api/v1/supervisor/summary`.
    async fn supervisor_summary(&self) -> Result<Vec<SupervisorSummary>>;
    /// `GET /api/v1/topology/summary`: every topology, in any status.
    async fn topology_summary(&self) -> Result<Vec<TopologySummary>>;
    /// `GET /api/v1/topology/{id}`.
    async fn topology(&self, id: &str) -> Result<TopologyDetail>;
    /// `GET /api/v1/topology/{id}?window=<window>`: the spouts' and bolts' figures over the
    /// window (`"600"`, `"10800"`, `"86400"` or `":all-time"`). Without an override, the
    /// default window's detail.
    async fn topology_window(&self, id: &str, window: &str) -> Result<TopologyDetail> {
        let _ = window;
        self.topology(id).await
    }
    /// `POST /api/v1/topology/{id}/activate`.
    async fn activate(&self, id: &str) -> Result<()>;
    /// `POST /api/v1/topology/{id}/deactivate`.
    async fn deactivate(&self, id: &str) -> Result<()>;
    /// `POST /api/v1/topology/{id}/kill/{wait_secs}`.
    async fn kill(&self, id: &str, wait_secs: u32) -> Result<()>;

    /// The topology named `name` (Storm's name, not the id), if Nimbus knows it. A `KILLED`
    /// topology is still returned until it drops out of the list.
    async fn find_topology(&self, name: &str) -> Result<Option<TopologySummary>> {
        Ok(self
            .topology_summary()
            .await?
            .into_iter()
            .find(|t| t.name == name))
    }
}

/// Makes the [`StormApi`] of a cluster from its UI base URL. The operator's connects over HTTP;
/// controller tests hand out fakes.
pub trait Connector: Send + Sync {
    /// The API at `ui_url` (e.g. `http://storm-ui.storm.svc:8080`); an error when the URL is unusable.
    fn connect(&self, ui_url: &str) -> Result<Arc<dyn StormApi>>;
}
