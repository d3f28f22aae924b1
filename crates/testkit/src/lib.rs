//! Test fakes of workerpool-operator, one copy each, for its unit, contract and end-to-end tests
//! and its benches:
//!
//! - [`api_server`]: the mocked Kubernetes API server ([`mock`], [`ApiServer`]) and the JSON
//!   it answers with ([`status_error`], [`namespace_terminating`], [`merge`], ...);
//! - [`objects`]: builders of the custom resources ([`Builder`], the [`examples`]) and the
//!   caches the controllers read ([`cache_of`]);
//! - [`fake_storm`]: an in-memory Storm for the controllers ([`FakeStorm`], [`FakeConnector`]);
//! - [`storm_ui`]: a fake Storm UI REST server over HTTP ([`storm_ui::StormUi`]);
//! - [`crds`]: [`install_crds`] on a real API server.

pub mod api_server;
pub mod crds;
pub mod fake_storm;
pub mod objects;
pub mod storm_ui;

pub use api_server::{
    ApiServer, OPERATOR_MANAGER, Seen, merge, mock, namespace_terminating, not_found, response,
    status_error,
};
pub use crds::install_crds;
pub use fake_storm::{FakeConnector, FakeStorm};
pub use objects::{
    Builder, cache_of, condition, example, examples, local_redis, object_path, qworker,
    running_external_cluster, scaler_config, stored, topology,
};
