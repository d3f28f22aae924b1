//! Checking one ScalerConfig: ping its broker, publish an Event when its health changes, and
//! write its status.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::instrument;
use workerpool_api::conditions::READY;
use workerpool_api::qworker::{ScalerConfig, ScalerConfigStatus};

use super::{
    CONTROLLER, CREDENTIALS_PROTECTED, Context, HEALTH_INTERVAL, PLAINTEXT_CREDENTIALS,
    status::health_status,
};
use crate::brokers::BrokerUnavailable;
use crate::error::Result;
use crate::runtime::Reason;

/// The reason of a status's condition `type_`.
fn reason_of<'a>(status: Option<&'a ScalerConfigStatus>, type_: &str) -> Option<&'a str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
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
        && e.is_auth_failure()
    {
        ctx.brokers.invalidate(&ns, &sc.name_any());
    }
    let status = health_status(&sc, &result, Timestamp::now());
    let was_healthy = sc.status.as_ref().map(|s| s.healthy);
    let ready_reason_changed =
        reason_of(sc.status.as_ref(), READY) != reason_of(Some(&status), READY);
    if was_healthy != Some(status.healthy) || ready_reason_changed {
        let reason = match &result {
            Ok(()) => Reason::BROKER_REACHABLE,
            Err(e) => Reason::warning(e.reason),
        };
        ctx.shared
            .event(
                &sc.object_ref(&()),
                reason,
                "HealthCheck",
                status.message.clone().unwrap_or_default(),
            )
            .await;
    }
    let plaintext = |s: Option<&ScalerConfigStatus>| {
        reason_of(s, CREDENTIALS_PROTECTED) == Some(PLAINTEXT_CREDENTIALS)
    };
    if plaintext(Some(&status)) && !plaintext(sc.status.as_ref()) {
        let note = status
            .conditions
            .iter()
            .find(|c| c.type_ == CREDENTIALS_PROTECTED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ctx.shared
            .event(
                &sc.object_ref(&()),
                Reason::PLAINTEXT_CREDENTIALS,
                "CredentialsCheck",
                note,
            )
            .await;
    }
    // `status.queues` belongs to the in-flight sweep (a field manager of its own).
    let fields = ScalerConfigStatus {
        queues: Vec::new(),
        ..status.clone()
    };
    ctx.status
        .write_fields(&ctx.shared.client, &sc, &status, &fields)
        .await?;
    Ok(Action::requeue(HEALTH_INTERVAL))
}
