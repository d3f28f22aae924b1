//! The ScalerConfig controller: checks that the broker answers, through the same pooled
//! connection the autoscaler uses, and reports it in `status.healthy` and a `Ready` condition.
//!
//! It also reports whether the credentials are protected in transit: a `CredentialsProtected`
//! condition, `False` with reason `PlaintextCredentials` (and one Warning Event when it first
//! appears) when credentials would be sent without TLS to a host that is not loopback.

mod reconcile;
pub mod status;

pub use reconcile::reconcile;
pub use status::{credentials_condition, health_status};

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::{Controller, watcher};
use workerpool_api::qworker::ScalerConfig;

use crate::brokers::Brokers;
use crate::brokers::hosts::AllowedHosts;
use crate::context::Shared;
use crate::controllers::scoped;
use crate::runtime::StatusWriter;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "scalerconfig";
/// How often a broker's health is checked again.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Condition type: the ScalerConfig's credentials travel over TLS, or only to loopback.
pub const CREDENTIALS_PROTECTED: &str = "CredentialsProtected";
/// Reason of `CredentialsProtected=False` (and of its Warning Event).
pub const PLAINTEXT_CREDENTIALS: &str = "PlaintextCredentials";

/// State of the ScalerConfig controller.
pub struct Context {
    /// Client, recorder, metrics.
    pub shared: Shared,
    /// The broker connections (shared with the autoscaler).
    pub brokers: Brokers,
    /// Writes the ScalerConfigs' status.
    pub status: StatusWriter<ScalerConfig>,
}

impl crate::runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// The ScalerConfig cache, the broker connections built on it, and the controller's future.
///
/// `credentials_namespace` (`--credentials-namespace`): read every `secret:` reference from
/// this namespace instead of the ScalerConfig's.
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    credentials_namespace: Option<&str>,
    allowed_hosts: AllowedHosts,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Brokers, impl std::future::Future<Output = ()> + Send) {
    let (store, events) = crate::cache::watch(
        scoped::<ScalerConfig>(&shared.client, namespace),
        watcher::Config::default(),
        shared.gate.readiness.track("scalerconfigs"),
    );
    let brokers = Brokers::new(shared.client.clone(), store.clone())
        .with_credentials_namespace(credentials_namespace.map(str::to_owned))
        .with_allowed_hosts(allowed_hosts);
    let on_delete = brokers.clone();
    let events = crate::cache::on_deleted(events, store.clone(), move |sc: &ScalerConfig| {
        on_delete.remove(&sc.namespace().unwrap_or_default(), &sc.name_any());
        tracing::debug!(scalerconfig = %sc.name_any(), "ScalerConfig deleted; its broker connection is closed");
    });
    let leadership = shared.gate.on_leadership();
    let config = shared.controller_config();
    let ctx = Arc::new(Context {
        shared,
        brokers: brokers.clone(),
        status: StatusWriter::default(),
    });
    let future = Controller::for_stream(events, store)
        .with_config(config)
        .reconcile_all_on(leadership)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, crate::runtime::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (brokers, future)
}
