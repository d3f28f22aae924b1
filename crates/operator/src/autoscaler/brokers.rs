//! One pooled broker connection per ScalerConfig, shared by every QWorker that uses it.
//!
//! A connection is built when first needed and rebuilt only when the ScalerConfig's spec
//! changes or the broker rejects its credentials, so Secrets are read rarely, never per poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use workerpool_api::qworker::{BrokerConnection, BrokerType, ScalerConfig, SecretValue};
use workerpool_queue::{BrokerConfig, NatsConfig, QueueBroker, RabbitMqConfig, RedisConfig};

/// Why a broker cannot be used; `reason` is a bounded CamelCase condition reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerUnavailable {
    /// Bounded reason: `ScalerConfigNotFound`, `InvalidScalerConfig`, `SecretNotFound`,
    /// `BrokerConnectFailed`, `BrokerAuthFailed`, `BrokerTimeout`, `QueueNotFound`, `BrokerError`.
    pub reason: &'static str,
    /// Metric category (`config`, or the queue error's category).
    pub category: &'static str,
    /// What is wrong, without secrets.
    pub message: String,
}

impl BrokerUnavailable {
    fn config(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            category: "config",
            message,
        }
    }

    /// Maps a broker error to a reason and category.
    pub fn from_queue(err: &workerpool_queue::QueueError) -> Self {
        let category = err.category();
        let reason = match category {
            "connect" => "BrokerConnectFailed",
            "auth" => "BrokerAuthFailed",
            "timeout" => "BrokerTimeout",
            "not_found" => "QueueNotFound",
            _ => "BrokerError",
        };
        Self {
            reason,
            category,
            message: err.to_string(),
        }
    }
}

struct Entry {
    fingerprint: String,
    broker: Arc<dyn QueueBroker>,
}

/// One slot per ScalerConfig; its async lock serialises connecting to that broker only.
type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// The connection cache.
#[derive(Clone)]
pub struct Brokers {
    client: Client,
    configs: Store<ScalerConfig>,
    entries: Arc<Mutex<HashMap<String, Slot>>>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn fingerprint(sc: &ScalerConfig) -> String {
    format!(
        "{}/{}",
        sc.metadata.uid.as_deref().unwrap_or_default(),
        sc.metadata.generation.unwrap_or_default()
    )
}

impl Brokers {
    /// A cache that reads ScalerConfigs from `configs` and Secrets through `client`.
    pub fn new(client: Client, configs: Store<ScalerConfig>) -> Self {
        Self {
            client,
            configs,
            entries: Arc::default(),
        }
    }

    /// The ScalerConfig cache.
    pub fn configs(&self) -> &Store<ScalerConfig> {
        &self.configs
    }

    /// The connection for ScalerConfig `namespace/name`, connecting if needed.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<dyn QueueBroker>, BrokerUnavailable> {
        let Some(sc) = self
            .configs
            .get(&ObjectRef::<ScalerConfig>::new(name).within(namespace))
        else {
            return Err(BrokerUnavailable::config(
                "ScalerConfigNotFound",
                format!("ScalerConfig {namespace}/{name} does not exist"),
            ));
        };
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.entry(key(namespace, name)).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let fp = fingerprint(&sc);
        if let Some(entry) = slot.as_ref().filter(|e| e.fingerprint == fp) {
            return Ok(entry.broker.clone());
        }
        let cfg = resolve(&self.client, &sc).await?;
        let broker = workerpool_queue::connect(&cfg)
            .await
            .map_err(|e| BrokerUnavailable::from_queue(&e))?;
        *slot = Some(Entry {
            fingerprint: fp,
            broker: broker.clone(),
        });
        Ok(broker)
    }

    /// Drops the connection of `namespace/name` (e.g. after an authentication failure, so that
    /// a changed Secret is read again).
    pub fn invalidate(&self, namespace: &str, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&key(namespace, name));
    }

    /// Closes and forgets the connection of the ScalerConfig `namespace/name` (it was deleted);
    /// a ScalerConfig created again under that name starts clean.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.invalidate(namespace, name);
    }

    /// Number of ScalerConfigs with a connection slot.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no ScalerConfig has a connection slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn secret_value(
    client: &Client,
    namespace: &str,
    field: &str,
    value: Option<&SecretValue>,
) -> Result<Option<String>, BrokerUnavailable> {
    let Some(v) = value else { return Ok(None) };
    if let Some(plain) = &v.value {
        return Ok(Some(plain.clone()));
    }
    let Some(r) = &v.secret else {
        return Err(BrokerUnavailable::config(
            "InvalidScalerConfig",
            format!("config.{field} needs value or secret"),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get_opt(&r.name).await.map_err(|e| {
        BrokerUnavailable::config(
            "SecretNotFound",
            format!("cannot read Secret {namespace}/{}: {e}", r.name),
        )
    })?;
    let Some(secret) = secret else {
        return Err(BrokerUnavailable::config(
            "SecretNotFound",
            format!(
                "Secret {namespace}/{} (config.{field}) does not exist",
                r.name
            ),
        ));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Err(BrokerUnavailable::config(
            "SecretNotFound",
            format!(
                "Secret {namespace}/{} has no key {:?} (config.{field})",
                r.name, r.key
            ),
        ));
    };
    String::from_utf8(bytes).map(Some).map_err(|_| {
        BrokerUnavailable::config(
            "InvalidScalerConfig",
            format!("Secret {namespace}/{} key {:?} is not UTF-8", r.name, r.key),
        )
    })
}

/// Credentials of a ScalerConfig, read from values or Secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token (NATS).
    pub token: Option<String>,
}

/// Resolves a ScalerConfig's credentials and builds its connection settings.
pub async fn resolve(
    client: &Client,
    sc: &ScalerConfig,
) -> Result<BrokerConfig, BrokerUnavailable> {
    let ns = sc.namespace().unwrap_or_default();
    let c = &sc.spec.config;
    let creds = Credentials {
        username: secret_value(client, &ns, "username", c.username.as_ref()).await?,
        password: secret_value(client, &ns, "password", c.password.as_ref()).await?,
        token: secret_value(client, &ns, "token", c.token.as_ref()).await?,
    };
    broker_config(sc.spec.type_, c, &creds)
}

fn port(c: &BrokerConnection, default: u16) -> Result<u16, BrokerUnavailable> {
    match c.port.as_deref() {
        None | Some("") => Ok(default),
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            BrokerUnavailable::config(
                "InvalidScalerConfig",
                format!("config.port {p:?} is not a port number (1-65535)"),
            )
        }),
    }
}

fn host(c: &BrokerConnection, broker: &str) -> Result<String, BrokerUnavailable> {
    c.host.clone().filter(|h| !h.is_empty()).ok_or_else(|| {
        BrokerUnavailable::config(
            "InvalidScalerConfig",
            format!("a {broker} ScalerConfig needs config.host or config.url"),
        )
    })
}

/// Builds connection settings from a ScalerConfig's spec and resolved credentials (pure).
pub fn broker_config(
    type_: BrokerType,
    c: &BrokerConnection,
    creds: &Credentials,
) -> Result<BrokerConfig, BrokerUnavailable> {
    let tls = c.tls.unwrap_or(false);
    match type_ {
        BrokerType::Redis => Ok(BrokerConfig::Redis(RedisConfig {
            host: host(c, "redis")?,
            port: port(c, 6379)?,
            password: creds.password.clone(),
            db: c.db.unwrap_or(0),
            tls,
        })),
        BrokerType::Rabbitmq => {
            let user = creds.username.clone().unwrap_or_else(|| "guest".into());
            let password = creds.password.clone().unwrap_or_else(|| "guest".into());
            let url = match &c.url {
                Some(raw) => {
                    let mut u = url::Url::parse(raw).map_err(|e| {
                        BrokerUnavailable::config(
                            "InvalidScalerConfig",
                            format!("config.url is not a URL: {e}"),
                        )
                    })?;
                    if !matches!(u.scheme(), "amqp" | "amqps") {
                        return Err(BrokerUnavailable::config(
                            "InvalidScalerConfig",
                            format!(
                                "config.url must be amqp:// or amqps://, not {}://",
                                u.scheme()
                            ),
                        ));
                    }
                    let encoded = |s: &str| {
                        url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                    };
                    if u.set_username(&encoded(&user)).is_err()
                        || u.set_password(Some(&encoded(&password))).is_err()
                    {
                        return Err(BrokerUnavailable::config(
                            "InvalidScalerConfig",
                            "config.url has no host".into(),
                        ));
                    }
                    u.to_string()
                }
                None => workerpool_queue::amqp_url(
                    &host(c, "rabbitmq")?,
                    port(c, if tls { 5671 } else { 5672 })?,
                    c.vhost.as_deref().unwrap_or("/"),
                    &user,
                    &password,
                    tls,
                ),
            };
            Ok(BrokerConfig::RabbitMq(RabbitMqConfig {
                url,
                management_url: c.management_url.clone(),
            }))
        }
        BrokerType::Nats => {
            let url = match &c.url {
                Some(u) => u.clone(),
                None => format!(
                    "{}://{}:{}",
                    if tls { "tls" } else { "nats" },
                    host(c, "nats")?,
                    port(c, 4222)?
                ),
            };
            let stream = c.stream.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                BrokerUnavailable::config(
                    "InvalidScalerConfig",
                    "a nats ScalerConfig needs config.stream".into(),
                )
            })?;
            Ok(BrokerConfig::Nats(NatsConfig {
                url,
                stream,
                user: creds.username.clone(),
                password: creds.password.clone(),
                token: creds.token.clone(),
                tls,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(yaml: &str) -> BrokerConnection {
        serde_yaml::from_str(yaml).expect("connection")
    }

    #[test]
    fn redis_keeps_the_reference_shape() {
        let c = conn("host: redis.default.svc\nport: \"6380\"\npassword: {value: s3cret}");
        let creds = Credentials {
            password: Some("s3cret".into()),
            ..Credentials::default()
        };
        match broker_config(BrokerType::Redis, &c, &creds).expect("valid") {
            BrokerConfig::Redis(r) => {
                assert_eq!(
                    (r.host.as_str(), r.port, r.db),
                    ("redis.default.svc", 6380, 0)
                );
                assert_eq!(r.password.as_deref(), Some("s3cret"));
            }
            other => panic!("not redis: {other:?}"),
        }
    }

    #[test]
    fn rabbitmq_builds_an_encoded_url() {
        let c = conn("host: rabbit\nvhost: /\n");
        let creds = Credentials {
            username: Some("app".into()),
            password: Some("p@ss/word".into()),
            ..Credentials::default()
        };
        match broker_config(BrokerType::Rabbitmq, &c, &creds).expect("valid") {
            BrokerConfig::RabbitMq(r) => {
                assert_eq!(r.url, "amqp://app:p%40ss%2Fword@rabbit:5672/%2F");
            }
            other => panic!("not rabbitmq: {other:?}"),
        }
        let with_url = conn("url: amqp://rabbit:5672/%2F\n");
        match broker_config(BrokerType::Rabbitmq, &with_url, &Credentials::default())
            .expect("valid")
        {
            BrokerConfig::RabbitMq(r) => assert_eq!(r.url, "amqp://guest:guest@rabbit:5672/%2F"),
            other => panic!("not rabbitmq: {other:?}"),
        }
    }

    #[test]
    fn nats_needs_a_stream() {
        let c = conn("host: nats\n");
        let err =
            broker_config(BrokerType::Nats, &c, &Credentials::default()).expect_err("no stream");
        assert_eq!(err.reason, "InvalidScalerConfig");
        let c = conn("host: nats\nstream: TASKS\ntls: true\n");
        match broker_config(BrokerType::Nats, &c, &Credentials::default()).expect("valid") {
            BrokerConfig::Nats(n) => assert_eq!(
                (n.url.as_str(), n.stream.as_str()),
                ("tls://nats:4222", "TASKS")
            ),
            other => panic!("not nats: {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (BrokerType::Redis, "port: \"6379\"\n", "needs config.host"),
            (
                BrokerType::Redis,
                "host: r\nport: \"99999\"\n",
                "is not a port number",
            ),
            (
                BrokerType::Rabbitmq,
                "url: http://rabbit\n",
                "must be amqp:// or amqps://",
            ),
        ];
        for (t, yaml, want) in cases {
            let err = broker_config(t, &conn(yaml), &Credentials::default()).expect_err(yaml);
            assert!(
                err.message.contains(want),
                "{} should contain {want}",
                err.message
            );
            assert_eq!(err.reason, "InvalidScalerConfig");
        }
    }
}
