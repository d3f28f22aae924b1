//! The ScalerConfig controller: checks that the broker answers, through the same pooled
//! connection the autoscaler uses, and reports it in `status.healthy` and a `Ready` condition.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use tracing::{instrument, warn};
use workerpool_api::conditions::{self, NewCondition, READY};
use workerpool_api::qworker::{ScalerConfig, ScalerConfigStatus};

use crate::apply;
use crate::autoscaler::brokers::{BrokerUnavailable, Brokers};
use crate::context::Shared;
use crate::controllers::scoped;
use crate::error::{Error, Result};

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "scalerconfig";
/// How often a broker's health is checked again.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// State of the ScalerConfig controller.
pub struct Context {
    /// Client, recorder, metrics.
    pub shared: Shared,
    /// The broker connections (shared with the autoscaler).
    pub brokers: Brokers,
}

/// The status after a health check.
pub fn health_status(
    sc: &ScalerConfig,
    result: &Result<(), BrokerUnavailable>,
    now: Timestamp,
) -> ScalerConfigStatus {
    let mut status = sc.status.clone().unwrap_or_default();
    let (healthy, condition) = match result {
        Ok(()) => (
            true,
            NewCondition::new(
                READY,
                true,
                "BrokerReachable",
                format!("{} broker answers", sc.spec.type_.as_str()),
            ),
        ),
        Err(e) => (false, NewCondition::new(READY, false, e.reason, &e.message)),
    };
    status.healthy = healthy;
    status.message = Some(condition.message.clone());
    conditions::set_condition(
        &mut status.conditions,
        condition,
        sc.metadata.generation,
        now,
    );
    status.observed_generation = sc.metadata.generation;
    status
}

/// Checks one ScalerConfig's broker.
#[instrument(skip_all, fields(scalerconfig = %sc.name_any(), namespace = sc.namespace().unwrap_or_default()))]
pub async fn reconcile(sc: Arc<ScalerConfig>, ctx: Arc<Context>) -> Result<Action> {
    if let Some(action) = ctx.shared.gate.closed() {
        return Ok(action);
    }
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let ns = sc.namespace().unwrap_or_default();
    let result = match ctx.brokers.get(&ns, &sc.name_any()).await {
        Ok(broker) => broker
            .ping()
            .await
            .map_err(|e| BrokerUnavailable::from_queue(&e)),
        Err(e) => Err(e),
    };
    if let Err(e) = &result
        && e.reason == "BrokerAuthFailed"
    {
        ctx.brokers.invalidate(&ns, &sc.name_any());
    }
    let status = health_status(&sc, &result, Timestamp::now());
    let was_healthy = sc.status.as_ref().map(|s| s.healthy);
    if was_healthy != Some(status.healthy) || (status.healthy && was_healthy.is_none()) {
        let (warning, reason) = match &result {
            Ok(()) => (false, "BrokerReachable"),
            Err(e) => (true, e.reason),
        };
        ctx.shared
            .event(
                &sc.object_ref(&()),
                warning,
                reason,
                "HealthCheck",
                status.message.clone().unwrap_or_default(),
            )
            .await;
    }
    if sc.status.as_ref() != Some(&status) {
        let api: Api<ScalerConfig> = Api::namespaced(ctx.shared.client.clone(), &ns);
        apply::apply_status(&api, &sc.name_any(), &status).await?;
    }
    Ok(Action::requeue(HEALTH_INTERVAL))
}

/// Requeues a failed check with backoff.
pub fn error_policy(sc: Arc<ScalerConfig>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared
        .metrics
        .reconcile_failed(CONTROLLER, err.category());
    let key = format!(
        "scalerconfig/{}/{}",
        sc.namespace().unwrap_or_default(),
        sc.name_any()
    );
    let delay = ctx.shared.backoff(&key);
    warn!(scalerconfig = %key, error = %err, ?delay, "health check failed");
    Action::requeue(delay)
}

/// The ScalerConfig cache, the broker connections built on it, and the controller's future.
pub fn controller(
    shared: Shared,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Brokers, impl std::future::Future<Output = ()> + Send) {
    let (store, events) = crate::cache::watch(
        scoped::<ScalerConfig>(&shared.client, namespace),
        watcher::Config::default(),
        shared.gate.readiness.track("scalerconfigs"),
    );
    let brokers = Brokers::new(shared.client.clone(), store.clone());
    let on_delete = brokers.clone();
    let events = crate::cache::on_deleted(events, store.clone(), move |sc: &ScalerConfig| {
        on_delete.remove(&sc.namespace().unwrap_or_default(), &sc.name_any());
        tracing::debug!(scalerconfig = %sc.name_any(), "ScalerConfig deleted; its broker connection is closed");
    });
    let leadership = shared.gate.on_leadership();
    let ctx = Arc::new(Context {
        shared,
        brokers: brokers.clone(),
    });
    let future = Controller::for_stream(events, store)
        .reconcile_all_on(leadership)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    (brokers, future)
}
