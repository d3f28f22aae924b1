//! The ScalerConfig controller: checks that the broker answers, through the same pooled
//! connection the autoscaler uses, and reports it in `status.healthy` and a `Ready` condition.
//!
//! It also reports whether the credentials are protected in transit: a `CredentialsProtected`
//! condition, `False` with reason `PlaintextCredentials` (and one Warning Event when it first
//! appears) when credentials would be sent without TLS to a host that is not loopback.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use tracing::instrument;
use workerpool_api::conditions::{self, NewCondition, READY};
use workerpool_api::qworker::{ScalerConfig, ScalerConfigStatus};

use crate::brokers::hosts::AllowedHosts;
use crate::brokers::{BrokerUnavailable, Brokers, CredentialsExposure, credentials_exposure};
use crate::context::Shared;
use crate::controllers::scoped;
use crate::error::Result;
use crate::runtime::Reason;
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

/// The `CredentialsProtected` condition of a ScalerConfig's spec (pure); `None` when the spec
/// is invalid (then nothing is sent). Never contains a credential.
pub fn credentials_condition(sc: &ScalerConfig) -> Option<NewCondition> {
    let broker = sc.spec.type_.as_str();
    let (status, reason, message) = match credentials_exposure(sc.spec.type_, &sc.spec.config)? {
        CredentialsExposure::NoCredentials => (
            true,
            "NoCredentials",
            "no username, password or token is configured".to_owned(),
        ),
        CredentialsExposure::Tls => (
            true,
            "TlsEnabled",
            format!(
                "{broker} credentials are sent only over TLS, with the server's certificate verified"
            ),
        ),
        CredentialsExposure::Loopback => (
            true,
            "LoopbackHost",
            format!("{broker} credentials are sent without TLS, but only to a loopback address"),
        ),
        CredentialsExposure::Plaintext { host, channel } => (
            false,
            PLAINTEXT_CREDENTIALS,
            format!(
                "{broker} credentials are sent without TLS to {host} ({channel}): set config.tls: true, \
                 or use an amqps://, tls:// or https:// URL"
            ),
        ),
    };
    Some(NewCondition::new(
        CREDENTIALS_PROTECTED,
        status,
        reason,
        message,
    ))
}

/// The status after a health check: `Ready` from the check, `CredentialsProtected` from the spec.
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
    match credentials_condition(sc) {
        Some(condition) => conditions::set_condition(
            &mut status.conditions,
            condition,
            sc.metadata.generation,
            now,
        ),
        None => status
            .conditions
            .retain(|c| c.type_ != CREDENTIALS_PROTECTED),
    }
    status.observed_generation = sc.metadata.generation;
    status
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler_config(config: serde_json::Value) -> ScalerConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1", "kind": "ScalerConfig",
            "metadata": {"name": "broker", "namespace": "team-a", "generation": 1},
            "spec": {"type": "redis", "config": config},
        }))
        .expect("ScalerConfig")
    }

    fn condition(status: &ScalerConfigStatus, type_: &str) -> Option<(String, String, String)> {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    #[test]
    fn credentials_protected_follows_tls_and_host() {
        let secret = serde_json::json!({"secret": {"name": "s", "key": "k"}});
        let cases = [
            (
                serde_json::json!({"host": "redis.prod", "password": {"value": "hunter2"}}),
                "False",
                PLAINTEXT_CREDENTIALS,
            ),
            (
                serde_json::json!({"host": "redis.prod", "password": secret}),
                "False",
                PLAINTEXT_CREDENTIALS,
            ),
            (
                serde_json::json!({"host": "redis.prod", "tls": true, "password": secret}),
                "True",
                "TlsEnabled",
            ),
            (
                serde_json::json!({"host": "127.0.0.1", "password": secret}),
                "True",
                "LoopbackHost",
            ),
            (
                serde_json::json!({"host": "redis.prod"}),
                "True",
                "NoCredentials",
            ),
        ];
        let now = Timestamp::now();
        for (config, want_status, want_reason) in cases {
            let sc = scaler_config(config.clone());
            let status = health_status(&sc, &Ok(()), now);
            let (status_, reason, message) =
                condition(&status, CREDENTIALS_PROTECTED).expect("condition");
            assert_eq!(
                (status_.as_str(), reason.as_str()),
                (want_status, want_reason),
                "{config}"
            );
            assert!(!message.contains("hunter2"), "{message}");
            if reason == PLAINTEXT_CREDENTIALS {
                assert!(
                    message.contains("redis credentials are sent without TLS to redis.prod"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn secret_not_permitted_is_ready_false() {
        let sc = scaler_config(serde_json::json!({"host": "127.0.0.1"}));
        let err = BrokerUnavailable {
            reason: "SecretNotPermitted",
            category: "config",
            message: "Secret team-a/s does not permit ...".into(),
        };
        let status = health_status(&sc, &Err(err), Timestamp::now());
        assert!(!status.healthy);
        let (s, reason, _) = condition(&status, READY).expect("Ready");
        assert_eq!(
            (s.as_str(), reason.as_str()),
            ("False", "SecretNotPermitted")
        );
    }

    #[test]
    fn an_invalid_spec_drops_the_credentials_condition() {
        let mut sc =
            scaler_config(serde_json::json!({"host": "redis.prod", "password": {"value": "x"}}));
        let status = health_status(&sc, &Ok(()), Timestamp::now());
        assert!(condition(&status, CREDENTIALS_PROTECTED).is_some());
        sc.status = Some(status);
        sc.spec.config.host = None;
        let status = health_status(&sc, &Ok(()), Timestamp::now());
        assert_eq!(condition(&status, CREDENTIALS_PROTECTED), None);
    }
}
