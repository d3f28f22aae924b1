//! The ScalerConfig's status, without I/O: the health check's outcome as `healthy` and `Ready`,
//! and whether the credentials are protected in transit (`CredentialsProtected`).

use k8s_openapi::jiff::Timestamp;
use workerpool_api::conditions::{self, NewCondition, READY};
use workerpool_api::qworker::{ScalerConfig, ScalerConfigStatus};

use super::{CREDENTIALS_PROTECTED, PLAINTEXT_CREDENTIALS};
use crate::brokers::{BrokerUnavailable, CredentialsExposure, credentials_exposure};
use crate::error::Result;

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
