//! Credentials by consent, through the real code paths: `Brokers::get` and the ScalerConfig
//! reconciler against a mocked API server (the Secrets), and the real local RabbitMQ
//! (127.0.0.1:5672, guest/guest) when the Secret permits the ScalerConfig.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use workerpool_api::ScalerConfig;
use workerpool_operator::brokers::hosts::AllowedHosts;
use workerpool_operator::brokers::{Brokers, SECRET_CONSENT_ANNOTATION};
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::scalerconfig::{self, Context};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

/// A value that must never leave the Secret except towards a permitted broker.
const CANARY: &str = "canary-5f0c9e";

/// `s` as a Secret's data carries it (base64).
fn b64(s: &str) -> String {
    let encoded = serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()));
    encoded
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("base64")
}

/// A Secret `namespace/name` with `data`, and the consent annotation when given.
fn secret(namespace: &str, name: &str, consent: Option<&str>, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(b64(v))))
        .collect();
    let mut metadata = json!({"name": name, "namespace": namespace, "uid": format!("{name}-uid")});
    if let Some(consent) = consent {
        metadata["annotations"] = json!({ SECRET_CONSENT_ANNOTATION: consent });
    }
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "data": data})
}

/// The metadata-only form of the same Secret (`PartialObjectMetadata`).
fn secret_metadata(namespace: &str, name: &str, consent: Option<&str>) -> Value {
    let mut full = secret(namespace, name, consent, &[]);
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": full["metadata"].take()})
}

fn scaler_config(namespace: &str, name: &str, type_: &str, config: Value) -> ScalerConfig {
    testkit::scaler_config(namespace, name, type_, config).build()
}

/// A RabbitMQ ScalerConfig for the local broker whose user and password come from Secret `creds`.
fn local_rabbit(namespace: &str, name: &str) -> ScalerConfig {
    scaler_config(
        namespace,
        name,
        "rabbitmq",
        json!({
            "host": "127.0.0.1", "port": "5672",
            "username": {"secret": {"name": "creds", "key": "username"}},
            "password": {"secret": {"name": "creds", "key": "password"}},
        }),
    )
}

fn brokers_with(client: kube::Client, configs: &[ScalerConfig]) -> (Brokers, Writer<ScalerConfig>) {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for sc in configs {
        writer.apply_watcher_event(&watcher::Event::InitApply(sc.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    (Brokers::new(client, reader), writer)
}

#[tokio::test]
async fn a_secret_without_consent_is_never_sent() {
    // A "broker" that records whether anybody connected to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let sc = scaler_config(
        "team-a",
        "redis",
        "redis",
        json!({"host": "127.0.0.1", "port": port,
               "password": {"secret": {"name": "creds", "key": "password"}}}),
    );
    let (client, mut server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client, &[sc]);
    for consent in [None, Some("other-scaler-config, team-b/redis")] {
        let brokers = brokers.clone();
        let task = tokio::spawn(async move { brokers.get("team-a", "redis").await.map(|_| ()) });
        server
            .expect(
                "GET",
                "/api/v1/namespaces/team-a/secrets/creds",
                200,
                secret("team-a", "creds", consent, &[("password", CANARY)]),
            )
            .await;
        let Err(err) = server.finish(task).await else {
            panic!("a Secret without consent ({consent:?}) must not be used");
        };
        assert_eq!(err.reason, "SecretNotPermitted", "{}", err.message);
        assert!(
            err.message.contains(&format!(
                "add \"redis\" to the Secret's annotation {SECRET_CONSENT_ANNOTATION}"
            )),
            "{}",
            err.message
        );
        assert!(!err.message.contains(CANARY), "{}", err.message);
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the operator connected to the broker with a Secret that did not consent"
    );
}

#[tokio::test]
async fn a_consenting_secret_reaches_the_real_broker() {
    let sc = local_rabbit("team-a", "rabbit");
    let (client, mut server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client, &[sc]);
    let task = {
        let brokers = brokers.clone();
        tokio::spawn(async move {
            let broker = brokers.get("team-a", "rabbit").await?;
            broker
                .ping()
                .await
                .map_err(|e| workerpool_operator::brokers::BrokerUnavailable::from_queue(&e))
        })
    };
    let creds = secret(
        "team-a",
        "creds",
        Some("rabbit"),
        &[("username", "guest"), ("password", "guest")],
    );
    for _field in ["username", "password"] {
        server
            .expect(
                "GET",
                "/api/v1/namespaces/team-a/secrets/creds",
                200,
                creds.clone(),
            )
            .await;
    }
    let result = server.finish(task).await;
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn withdrawn_consent_closes_the_pooled_connection() {
    let sc = local_rabbit("team-a", "rabbit");
    let (client, mut server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client, &[sc]);
    let brokers = brokers.with_consent_recheck(Duration::ZERO);
    let path = "/api/v1/namespaces/team-a/secrets/creds";
    let creds = |consent| {
        secret(
            "team-a",
            "creds",
            consent,
            &[("username", "guest"), ("password", "guest")],
        )
    };
    let get = |brokers: &Brokers| {
        let brokers = brokers.clone();
        tokio::spawn(async move { brokers.get("team-a", "rabbit").await.map(|_| ()) })
    };

    // Permitted ("*": every ScalerConfig of the namespace): connects.
    let task = get(&brokers);
    for _field in ["username", "password"] {
        server.expect("GET", path, 200, creds(Some("*"))).await;
    }
    assert_eq!(server.finish(task).await, Ok(()));

    // Still permitted: the pooled connection is reused after one metadata-only check (a
    // `PartialObjectMetadata` answer; the Secret's data is not read again).
    let task = get(&brokers);
    server
        .expect(
            "GET",
            path,
            200,
            secret_metadata("team-a", "creds", Some("*")),
        )
        .await;
    assert_eq!(server.finish(task).await, Ok(()));

    // Consent withdrawn: the connection is closed and the ScalerConfig is refused.
    let task = get(&brokers);
    server
        .expect("GET", path, 200, secret_metadata("team-a", "creds", None))
        .await;
    let err = server
        .finish(task)
        .await
        .expect_err("consent was withdrawn");
    assert_eq!(err.reason, "SecretNotPermitted");

    // The next call reads the Secret again (no pooled connection left) and is refused again.
    let task = get(&brokers);
    server.expect("GET", path, 200, creds(None)).await;
    let err = server.finish(task).await.expect_err("still not permitted");
    assert_eq!(err.reason, "SecretNotPermitted");
}

#[tokio::test]
async fn the_credentials_namespace_holds_the_secrets_and_their_consent() {
    let sc = local_rabbit("team-a", "rabbit");
    let (client, mut server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client, &[sc]);
    let brokers = brokers.with_credentials_namespace(Some("workerpool-system".into()));
    let path = "/api/v1/namespaces/workerpool-system/secrets/creds";
    let data = [("username", "guest"), ("password", "guest")];

    // A bare name means a ScalerConfig of the Secret's own namespace, not team-a's.
    for consent in [Some("rabbit"), Some("*"), Some("team-b/rabbit"), None] {
        let task = {
            let brokers = brokers.clone();
            tokio::spawn(async move { brokers.get("team-a", "rabbit").await.map(|_| ()) })
        };
        server
            .expect(
                "GET",
                path,
                200,
                secret("workerpool-system", "creds", consent, &data),
            )
            .await;
        let err = server.finish(task).await.expect_err("not permitted");
        assert_eq!(err.reason, "SecretNotPermitted", "{consent:?}");
        assert!(
            err.message.contains("add \"team-a/rabbit\""),
            "{}",
            err.message
        );
    }

    for consent in ["team-a/rabbit", "team-b/x, team-a/*", "*/*"] {
        brokers.invalidate("team-a", "rabbit");
        let task = {
            let brokers = brokers.clone();
            tokio::spawn(async move { brokers.get("team-a", "rabbit").await.map(|_| ()) })
        };
        for _field in ["username", "password"] {
            server
                .expect(
                    "GET",
                    path,
                    200,
                    secret("workerpool-system", "creds", Some(consent), &data),
                )
                .await;
        }
        assert_eq!(server.finish(task).await, Ok(()), "{consent}");
    }
}

#[tokio::test]
async fn the_scaler_config_reports_refused_consent_and_plaintext_credentials() {
    let mut sc = scaler_config(
        "team-a",
        "redis",
        "redis",
        json!({"host": "redis.example.invalid",
               "password": {"secret": {"name": "creds", "key": "password"}}}),
    );
    let (client, mut server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client.clone(), std::slice::from_ref(&sc));
    let ctx = Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        brokers,
        status: Default::default(),
    });
    let secret_path = "/api/v1/namespaces/team-a/secrets/creds";
    let status_path = "/apis/quickube.com/v1alpha1/namespaces/team-a/scalerconfigs/redis/status";

    let task = tokio::spawn(scalerconfig::reconcile(Arc::new(sc.clone()), ctx.clone()));
    server
        .expect(
            "GET",
            secret_path,
            200,
            secret("team-a", "creds", None, &[("password", CANARY)]),
        )
        .await;
    let spec = serde_json::to_value(&sc.spec).expect("spec");
    let applied = server
        .expect_apply(status_path, json!({ "spec": spec }))
        .await;
    assert!(server.finish(task).await.is_ok());

    let status = &applied.body["status"];
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .cloned()
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
    };
    assert_eq!(status["healthy"], false);
    let ready = condition("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("SecretNotPermitted"))
    );
    let protected = condition("CredentialsProtected");
    assert_eq!(
        (protected["status"].as_str(), protected["reason"].as_str()),
        (Some("False"), Some("PlaintextCredentials"))
    );
    let message = protected["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("redis credentials are sent without TLS to redis.example.invalid"),
        "{message}"
    );
    let warnings: Vec<&str> = server
        .events
        .iter()
        .filter(|(type_, _, _)| type_ == "Warning")
        .map(|(_, reason, _)| reason.as_str())
        .collect();
    assert_eq!(warnings, ["SecretNotPermitted", "PlaintextCredentials"]);
    let everything = format!(
        "{applied_body} {events:?}",
        applied_body = applied.body,
        events = server.events
    );
    assert!(!everything.contains(CANARY) && !everything.contains(&b64(CANARY)));

    // The same state again: no second Event, no status write.
    sc.status = Some(serde_json::from_value(status.clone()).expect("status"));
    server.events.clear();
    let task = tokio::spawn(scalerconfig::reconcile(Arc::new(sc), ctx));
    server
        .expect(
            "GET",
            secret_path,
            200,
            secret("team-a", "creds", None, &[("password", CANARY)]),
        )
        .await;
    assert!(server.finish(task).await.is_ok());
    assert!(server.events.is_empty(), "{:?}", server.events);
}

/// `--allowed-broker-hosts`: a ScalerConfig pointing at a host the list does not allow is
/// refused before any connection is tried; an allowed one connects.
#[tokio::test]
async fn a_broker_host_outside_the_allow_list_is_never_connected_to() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let sc = scaler_config(
        "team-a",
        "redis",
        "redis",
        json!({"host": "127.0.0.1", "port": port}),
    );
    let (client, _server) = testkit::mock();
    let (brokers, _writer) = brokers_with(client, &[sc]);
    let only_10 = AllowedHosts::parse("10.0.0.0/8,*.brokers.svc").expect("list");
    let refused = brokers
        .clone()
        .with_allowed_hosts(only_10)
        .get("team-a", "redis")
        .await
        .map(|_| ())
        .expect_err("127.0.0.1 is not allowed");
    assert_eq!(
        refused.reason, "BrokerHostNotAllowed",
        "{}",
        refused.message
    );
    assert!(refused.message.contains("127.0.0.1"), "{}", refused.message);
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the operator connected to a host the list refuses"
    );
    // The same ScalerConfig under a list that allows loopback is connected to.
    let allowed = brokers.with_allowed_hosts(AllowedHosts::parse("127.0.0.0/8").expect("list"));
    let attempt = tokio::spawn(async move { allowed.get("team-a", "redis").await.map(|_| ()) });
    let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
    attempt.abort();
    assert!(
        matches!(accepted, Ok(Ok(_))),
        "an allowed host was not connected to"
    );
}
