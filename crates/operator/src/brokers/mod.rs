//! One pooled broker connection per ScalerConfig, shared by every QWorker that uses it.
//!
//! A connection is built when first needed and rebuilt only when the ScalerConfig's spec
//! changes or the broker rejects its credentials, so Secrets are read rarely, never per poll.
//!
//! Credentials by consent: a Secret is read into a broker configuration only when its
//! annotation [`SECRET_CONSENT_ANNOTATION`] names the ScalerConfig (see [`secret_permits`]);
//! otherwise the broker is unavailable with reason `SecretNotPermitted` and nothing is sent.
//! A pooled connection checks its Secrets' consent again (metadata only) every
//! [`CONSENT_RECHECK`], so withdrawn consent closes it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use workerpool_api::qworker::{BrokerConnection, BrokerType, ScalerConfig, SecretValue};
use workerpool_queue::{BrokerConfig, NatsConfig, QueueBroker, RabbitMqConfig, RedisConfig};

pub mod hosts;

use hosts::AllowedHosts;

/// The reason of a [`BrokerUnavailable`] whose broker refused the credentials.
pub const AUTH_FAILED: &str = "BrokerAuthFailed";

/// Why a broker cannot be used; `reason` is a bounded CamelCase condition reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BrokerUnavailable {
    /// Bounded reason: `ScalerConfigNotFound`, `InvalidScalerConfig`, `SecretNotFound`,
    /// `SecretNotPermitted`, `BrokerHostNotAllowed`, `BrokerConnectFailed`, `BrokerAuthFailed`,
    /// `BrokerTimeout`, `QueueNotFound`, `BrokerError`.
    pub reason: &'static str,
    /// Metric category (`config`, or the queue error's category).
    pub category: &'static str,
    /// What is wrong, without secrets.
    pub message: String,
}

impl BrokerUnavailable {
    /// Whether the broker refused the credentials (the connection is then rebuilt, so that a
    /// rotated Secret is read again).
    pub fn is_auth_failure(&self) -> bool {
        self.reason == AUTH_FAILED
    }

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
            "auth" => AUTH_FAILED,
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
    fingerprint: Fingerprint,
    broker: Arc<dyn QueueBroker>,
    /// The Secrets the connection's credentials came from, checked again every
    /// [`CONSENT_RECHECK`].
    secrets: Vec<SecretUse>,
    /// When their consent was last checked.
    checked: Instant,
}

/// One slot per ScalerConfig; its async lock serialises connecting to that broker only.
type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// The connection cache.
#[derive(Clone)]
pub struct Brokers {
    client: Client,
    configs: Store<ScalerConfig>,
    entries: Arc<Mutex<HashMap<ObjectRef<ScalerConfig>, Slot>>>,
    /// Where `secret:` references are read (`--credentials-namespace`); `None`: the
    /// ScalerConfig's own namespace.
    credentials_namespace: Option<String>,
    /// How often a pooled connection's Secrets are checked again ([`CONSENT_RECHECK`]).
    consent_recheck: Duration,
    /// The hosts a ScalerConfig may point at (`--allowed-broker-hosts`; empty: any).
    allowed_hosts: AllowedHosts,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The ScalerConfig a connection was made for: a new uid or generation makes a new one.
#[derive(Clone, Debug, PartialEq)]
struct Fingerprint {
    uid: Option<String>,
    generation: Option<i64>,
}

impl Fingerprint {
    fn of(sc: &ScalerConfig) -> Self {
        Fingerprint {
            uid: sc.metadata.uid.clone(),
            generation: sc.metadata.generation,
        }
    }

    /// Whether `sc` is the ScalerConfig this was taken of (compared in place: this runs at
    /// every poll of every QWorker).
    fn matches(&self, sc: &ScalerConfig) -> bool {
        self.uid == sc.metadata.uid && self.generation == sc.metadata.generation
    }
}

impl Brokers {
    /// A cache that reads ScalerConfigs from `configs` and Secrets through `client`.
    pub fn new(client: Client, configs: Store<ScalerConfig>) -> Self {
        Self {
            client,
            configs,
            entries: Arc::default(),
            credentials_namespace: None,
            consent_recheck: CONSENT_RECHECK,
            allowed_hosts: AllowedHosts::default(),
        }
    }

    /// The same cache connecting only to the hosts `allowed` lets through
    /// (`--allowed-broker-hosts`); any other host gives `BrokerHostNotAllowed` before a
    /// connection is tried.
    pub fn with_allowed_hosts(mut self, allowed: AllowedHosts) -> Self {
        self.allowed_hosts = allowed;
        self
    }

    /// The same cache reading every `secret:` reference from `namespace` (KEDA-style central
    /// credentials, `--credentials-namespace`) instead of the ScalerConfig's namespace. `None`
    /// or an empty name keeps the ScalerConfig's namespace. Consent still applies there.
    pub fn with_credentials_namespace(mut self, namespace: Option<String>) -> Self {
        self.credentials_namespace = namespace.filter(|n| !n.is_empty());
        self
    }

    /// The same cache checking the consent of a pooled connection's Secrets again every `every`
    /// instead of [`CONSENT_RECHECK`] (tests use zero: at every call).
    pub fn with_consent_recheck(mut self, every: Duration) -> Self {
        self.consent_recheck = every;
        self
    }

    /// The namespace `secret:` references are read from, when it is not the ScalerConfig's.
    pub fn credentials_namespace(&self) -> Option<&str> {
        self.credentials_namespace.as_deref()
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
        self.get_ref(&ObjectRef::new(name).within(namespace)).await
    }

    /// [`Brokers::get`] for a ScalerConfig reference the caller keeps (a poll, at every
    /// interval, builds none).
    pub async fn get_ref(
        &self,
        object: &ObjectRef<ScalerConfig>,
    ) -> Result<Arc<dyn QueueBroker>, BrokerUnavailable> {
        let (namespace, name) = (
            object.namespace.as_deref().unwrap_or_default(),
            object.name.as_str(),
        );
        let Some(sc) = self.configs.get(object) else {
            return Err(BrokerUnavailable::config(
                "ScalerConfigNotFound",
                format!("ScalerConfig {namespace}/{name} does not exist"),
            ));
        };
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(object) {
                Some(slot) => slot.clone(),
                None => entries.entry(object.clone()).or_default().clone(),
            }
        };
        // Fast path, taken by nearly every poll: a pooled connection whose consent is fresh,
        // without waiting on the slot (it is held only while connecting or checking consent).
        if let Ok(slot) = slot.try_lock()
            && let Some(entry) = slot.as_ref().filter(|e| e.fingerprint.matches(&sc))
            && (entry.secrets.is_empty() || entry.checked.elapsed() < self.consent_recheck)
        {
            return Ok(entry.broker.clone());
        }
        // Connecting and checking consent are rare and their futures large: boxed while they run,
        // so that no poll reserves room for them while it runs.
        Box::pin(self.get_slow(&sc, &slot, namespace, name)).await
    }

    /// [`Brokers::get`] when the pooled connection is missing, stale or due a consent check.
    async fn get_slow(
        &self,
        sc: &ScalerConfig,
        slot: &Slot,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<dyn QueueBroker>, BrokerUnavailable> {
        let mut slot = slot.lock().await;
        if let Some(entry) = slot.as_ref().filter(|e| e.fingerprint.matches(sc)) {
            if entry.secrets.is_empty() || entry.checked.elapsed() < self.consent_recheck {
                return Ok(entry.broker.clone());
            }
            let (broker, secrets) = (entry.broker.clone(), entry.secrets.clone());
            if let Err(e) = self.recheck(&secrets, namespace, name).await {
                tracing::info!(
                    scalerconfig = %key(namespace, name),
                    reason = e.reason,
                    "a Secret of the broker connection is no longer usable; connection closed"
                );
                *slot = None;
                return Err(e);
            }
            if let Some(entry) = slot.as_mut() {
                entry.checked = Instant::now();
            }
            return Ok(broker);
        }
        let credentials_namespace = self.credentials_namespace.as_deref();
        let cfg = resolve(&self.client, sc, credentials_namespace).await?;
        if let Some(host) = cfg
            .hosts()
            .into_iter()
            .find(|h| !self.allowed_hosts.allows(h))
        {
            return Err(BrokerUnavailable::config(
                "BrokerHostNotAllowed",
                format!(
                    "ScalerConfig {namespace}/{name} points at broker host {host}, which the operator's --allowed-broker-hosts does not allow"
                ),
            ));
        }
        // Batched: the QWorkers of one ScalerConfig polled on the same tick share one read.
        let broker = workerpool_queue::batched(
            workerpool_queue::connect(&cfg)
                .await
                .map_err(|e| BrokerUnavailable::from_queue(&e))?,
            cfg.kind(),
        );
        // One consent check per Secret, however many of its keys are used.
        let mut secrets = secret_uses(sc, credentials_namespace);
        let mut seen = HashSet::new();
        secrets.retain(|s| seen.insert((s.namespace.clone(), s.name.clone())));
        *slot = Some(Entry {
            fingerprint: Fingerprint::of(sc),
            broker: broker.clone(),
            secrets,
            checked: Instant::now(),
        });
        Ok(broker)
    }

    /// Checks again, reading metadata only, that every Secret of a pooled connection still
    /// exists and permits ScalerConfig `namespace/name` (a deleted Secret or a withdrawn
    /// consent closes the connection). An API error keeps the connection until the next check.
    async fn recheck(
        &self,
        secrets: &[SecretUse],
        namespace: &str,
        name: &str,
    ) -> Result<(), BrokerUnavailable> {
        for secret in secrets {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace);
            match api.get_metadata_opt(&secret.name).await {
                Ok(Some(meta)) => {
                    consent(consent_annotation(&meta.metadata), secret, namespace, name)?;
                }
                Ok(None) => return Err(secret_missing(secret)),
                Err(e) => {
                    tracing::debug!(
                        secret = %format!("{}/{}", secret.namespace, secret.name),
                        error = %e,
                        "cannot check the consent of a Secret again; keeping the connection"
                    );
                }
            }
        }
        Ok(())
    }

    /// Drops the connection of `namespace/name` (e.g. after an authentication failure, so that
    /// a changed Secret is read again).
    pub fn invalidate(&self, namespace: &str, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&ObjectRef::<ScalerConfig>::new(name).within(namespace));
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

/// Annotation on a Secret that permits ScalerConfigs to use it as broker credentials: a
/// comma-separated list of entries, each `NAME` or `*` (ScalerConfigs in the Secret's own
/// namespace), `NAMESPACE/NAME` or `NAMESPACE/*` (ScalerConfigs of another namespace, for
/// `--credentials-namespace`), or `*/*` (every ScalerConfig of the cluster).
pub const SECRET_CONSENT_ANNOTATION: &str = "quickube.com/scaler-configs";

/// How often a pooled connection checks again that its Secrets still permit its ScalerConfig.
pub const CONSENT_RECHECK: Duration = Duration::from_secs(60);

/// Whether a Secret in `secret_namespace` whose [`SECRET_CONSENT_ANNOTATION`] is `annotation`
/// permits ScalerConfig `sc_namespace/sc_name` to use it (pure). No annotation permits nothing;
/// `*/NAME` is not accepted (a name alone identifies nothing across namespaces).
pub fn secret_permits(
    annotation: Option<&str>,
    secret_namespace: &str,
    sc_namespace: &str,
    sc_name: &str,
) -> bool {
    let Some(list) = annotation else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            let (namespace, name) = match entry.split_once('/') {
                Some((namespace, name)) => (namespace.trim(), name.trim()),
                None => (secret_namespace, entry),
            };
            let namespace_ok = namespace == sc_namespace || (namespace == "*" && name == "*");
            namespace_ok && (name == "*" || name == sc_name)
        })
}

/// A Secret key that a ScalerConfig's credential comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// Namespace the Secret is read from.
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
    /// The ScalerConfig field: `username`, `password` or `token`.
    pub field: &'static str,
}

/// The Secret keys that `sc` references, in the namespace they are read from:
/// `credentials_namespace` when set, else the ScalerConfig's own (pure).
pub fn secret_uses(sc: &ScalerConfig, credentials_namespace: Option<&str>) -> Vec<SecretUse> {
    let own = sc.namespace().unwrap_or_default();
    let namespace = credentials_namespace.unwrap_or(&own);
    let c = &sc.spec.config;
    [
        ("username", c.username.as_ref()),
        ("password", c.password.as_ref()),
        ("token", c.token.as_ref()),
    ]
    .into_iter()
    .filter_map(|(field, value)| {
        let value = value?;
        if value.value.is_some() {
            return None;
        }
        let r = value.secret.as_ref()?;
        Some(SecretUse {
            namespace: namespace.to_owned(),
            name: r.name.clone(),
            key: r.key.clone(),
            field,
        })
    })
    .collect()
}

/// The consent annotation of a Secret, if any.
fn consent_annotation(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(SECRET_CONSENT_ANNOTATION))
        .map(String::as_str)
}

/// `Ok` when `annotation` (the Secret's [`SECRET_CONSENT_ANNOTATION`]) permits ScalerConfig
/// `sc_namespace/sc_name` to use `secret`; otherwise `SecretNotPermitted` with a message that
/// names the annotation to add (never the Secret's data).
pub fn consent(
    annotation: Option<&str>,
    secret: &SecretUse,
    sc_namespace: &str,
    sc_name: &str,
) -> Result<(), BrokerUnavailable> {
    if secret_permits(annotation, &secret.namespace, sc_namespace, sc_name) {
        return Ok(());
    }
    let entry = if secret.namespace == sc_namespace {
        sc_name.to_owned()
    } else {
        format!("{sc_namespace}/{sc_name}")
    };
    let now = if annotation.is_some() {
        "its annotation does not name it"
    } else {
        "it has no such annotation"
    };
    Err(BrokerUnavailable::config(
        "SecretNotPermitted",
        format!(
            "Secret {}/{} (config.{}) does not permit ScalerConfig {sc_namespace}/{sc_name} to use it ({now}): \
             add {entry:?} to the Secret's annotation {SECRET_CONSENT_ANNOTATION} \
             (a comma-separated list of ScalerConfig names, or \"*\" for all in namespace {})",
            secret.namespace, secret.name, secret.field, secret.namespace
        ),
    ))
}

fn secret_missing(secret: &SecretUse) -> BrokerUnavailable {
    BrokerUnavailable::config(
        "SecretNotFound",
        format!(
            "Secret {}/{} (config.{}) does not exist",
            secret.namespace, secret.name, secret.field
        ),
    )
}

/// One credential: its plain value, or the key of a Secret that permits the ScalerConfig
/// `sc_namespace/sc_name`, read from `secret_namespace`.
async fn credential(
    client: &Client,
    secret_namespace: &str,
    sc_namespace: &str,
    sc_name: &str,
    field: &'static str,
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
    let secret_use = SecretUse {
        namespace: secret_namespace.to_owned(),
        name: r.name.clone(),
        key: r.key.clone(),
        field,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), secret_namespace);
    let secret = secrets.get_opt(&r.name).await.map_err(|e| {
        BrokerUnavailable::config(
            "SecretNotFound",
            format!("cannot read Secret {secret_namespace}/{}: {e}", r.name),
        )
    })?;
    let Some(secret) = secret else {
        return Err(secret_missing(&secret_use));
    };
    // Consent first: nothing of a Secret that does not permit this ScalerConfig (not even
    // which keys it has) is used or reported.
    consent(
        consent_annotation(&secret.metadata),
        &secret_use,
        sc_namespace,
        sc_name,
    )?;
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
                "Secret {secret_namespace}/{} has no key {:?} (config.{field})",
                r.name, r.key
            ),
        ));
    };
    String::from_utf8(bytes).map(Some).map_err(|_| {
        BrokerUnavailable::config(
            "InvalidScalerConfig",
            format!(
                "Secret {secret_namespace}/{} key {:?} is not UTF-8",
                r.name, r.key
            ),
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
///
/// `secret:` references are read from `credentials_namespace` when set, else from the
/// ScalerConfig's namespace, and only from Secrets that permit the ScalerConfig
/// ([`SECRET_CONSENT_ANNOTATION`]); otherwise the error's reason is `SecretNotPermitted`.
pub async fn resolve(
    client: &Client,
    sc: &ScalerConfig,
    credentials_namespace: Option<&str>,
) -> Result<BrokerConfig, BrokerUnavailable> {
    let ns = sc.namespace().unwrap_or_default();
    let name = sc.name_any();
    let secret_ns = credentials_namespace.unwrap_or(&ns);
    let c = &sc.spec.config;
    let creds = Credentials {
        username: credential(
            client,
            secret_ns,
            &ns,
            &name,
            "username",
            c.username.as_ref(),
        )
        .await?,
        password: credential(
            client,
            secret_ns,
            &ns,
            &name,
            "password",
            c.password.as_ref(),
        )
        .await?,
        token: credential(client, secret_ns, &ns, &name, "token", c.token.as_ref()).await?,
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
        BrokerType::Rabbitmq => rabbitmq_config(c, creds, tls),
        BrokerType::Nats => nats_config(c, creds, tls),
    }
}

/// A configuration error of the ScalerConfig.
fn invalid(message: String) -> BrokerUnavailable {
    BrokerUnavailable::config("InvalidScalerConfig", message)
}

/// RabbitMQ's settings: `config.url` with the credentials set in it, else a URL from the host,
/// port and vhost.
fn rabbitmq_config(
    c: &BrokerConnection,
    creds: &Credentials,
    tls: bool,
) -> Result<BrokerConfig, BrokerUnavailable> {
    let user = creds.username.clone().unwrap_or_else(|| "guest".into());
    let password = creds.password.clone().unwrap_or_else(|| "guest".into());
    let url = match &c.url {
        Some(raw) => amqp_url_with_credentials(raw, tls, &user, &password)?,
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

/// `raw` (an `amqp://` or `amqps://` URL) with `user` and `password` set in it, percent-encoded.
fn amqp_url_with_credentials(
    raw: &str,
    tls: bool,
    user: &str,
    password: &str,
) -> Result<String, BrokerUnavailable> {
    let mut u =
        url::Url::parse(raw).map_err(|e| invalid(format!("config.url is not a URL: {e}")))?;
    if !matches!(u.scheme(), "amqp" | "amqps") {
        return Err(invalid(format!(
            "config.url must be amqp:// or amqps://, not {}://",
            u.scheme()
        )));
    }
    if tls && u.scheme() == "amqp" {
        return Err(invalid(
            "config.tls is true but config.url is amqp:// (no TLS): use amqps://".into(),
        ));
    }
    let encoded = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    if u.set_username(&encoded(user)).is_err() || u.set_password(Some(&encoded(password))).is_err()
    {
        return Err(invalid("config.url has no host".into()));
    }
    Ok(u.to_string())
}

/// NATS's settings: `config.url` (`nats://` or `tls://`) else one from the host and port, and
/// the JetStream stream.
fn nats_config(
    c: &BrokerConnection,
    creds: &Credentials,
    tls: bool,
) -> Result<BrokerConfig, BrokerUnavailable> {
    let url = match &c.url {
        Some(u) => {
            let scheme = scheme(u, "nats");
            if !matches!(scheme.as_str(), "nats" | "tls") {
                return Err(invalid(format!(
                    "config.url must be nats:// or tls://, not {scheme}://"
                )));
            }
            u.clone()
        }
        None => format!(
            "{}://{}:{}",
            if tls { "tls" } else { "nats" },
            host(c, "nats")?,
            port(c, 4222)?
        ),
    };
    let stream = c
        .stream
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("a nats ScalerConfig needs config.stream".into()))?;
    Ok(BrokerConfig::Nats(NatsConfig {
        url,
        stream,
        user: creds.username.clone(),
        password: creds.password.clone(),
        token: creds.token.clone(),
        tls,
    }))
}

/// How a ScalerConfig's credentials travel to its broker: the decision behind the
/// ScalerConfig's `CredentialsProtected` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsExposure {
    /// No username, password or token is configured (RabbitMQ's default guest account aside).
    NoCredentials,
    /// Every connection that carries them uses TLS, with the server's certificate verified.
    Tls,
    /// Some go without TLS, but only to loopback addresses (`localhost`, 127.0.0.0/8, `::1`).
    Loopback,
    /// They go without TLS to a host that is not loopback.
    Plaintext {
        /// The host they are sent to.
        host: String,
        /// The connection: `redis`, `amqp`, `nats` or `management API`.
        channel: &'static str,
    },
}

/// Whether `host` (a name, an IP address, or a bracketed IPv6 address) is a loopback address:
/// `localhost`, 127.0.0.0/8, `::1` or `::ffff:127.0.0.0/104` (pure; names are not resolved).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// The lower-case scheme of a URL, `default` when it has none.
fn scheme(raw: &str, default: &str) -> String {
    raw.split_once("://")
        .map_or(default, |(scheme, _)| scheme)
        .to_ascii_lowercase()
}

/// The host of a URL, or `""` when it has none or does not parse.
fn url_host(raw: &str, default_scheme: &str) -> String {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("{default_scheme}://{raw}")
    };
    url::Url::parse(&with_scheme)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default()
}

/// How the credentials of a ScalerConfig with this spec travel (pure): `None` when the spec
/// is invalid (nothing is sent then). Every connection that carries credentials counts,
/// including RabbitMQ's management API (HTTP basic authentication with the same account).
pub fn credentials_exposure(
    type_: BrokerType,
    c: &BrokerConnection,
) -> Option<CredentialsExposure> {
    let configured = [&c.username, &c.password, &c.token]
        .iter()
        .any(|v| v.is_some());
    let placeholder = Credentials {
        username: c.username.as_ref().map(|_| "user".to_owned()),
        password: c.password.as_ref().map(|_| "password".to_owned()),
        token: c.token.as_ref().map(|_| "token".to_owned()),
    };
    // (host, TLS, channel) of every connection that carries the credentials.
    let channels: Vec<(String, bool, &'static str)> =
        match broker_config(type_, c, &placeholder).ok()? {
            BrokerConfig::Redis(r) => vec![(r.host, r.tls, "redis")],
            BrokerConfig::RabbitMq(r) => {
                let mut channels = vec![(
                    url_host(&r.url, "amqp"),
                    scheme(&r.url, "amqp") == "amqps",
                    "amqp",
                )];
                if let Some(m) = &r.management_url {
                    channels.push((
                        url_host(m, "http"),
                        scheme(m, "http") == "https",
                        "management API",
                    ));
                }
                channels
            }
            BrokerConfig::Nats(n) => vec![(
                url_host(&n.url, "nats"),
                n.tls || scheme(&n.url, "nats") == "tls",
                "nats",
            )],
        };
    if !configured {
        return Some(CredentialsExposure::NoCredentials);
    }
    if let Some((host, _, channel)) = channels
        .iter()
        .find(|(host, tls, _)| !tls && !is_loopback_host(host))
    {
        return Some(CredentialsExposure::Plaintext {
            host: host.clone(),
            channel,
        });
    }
    Some(if channels.iter().all(|(_, tls, _)| *tls) {
        CredentialsExposure::Tls
    } else {
        CredentialsExposure::Loopback
    })
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

    fn use_in(namespace: &str) -> SecretUse {
        SecretUse {
            namespace: namespace.into(),
            name: "redis-credentials".into(),
            key: "password".into(),
            field: "password",
        }
    }

    #[test]
    fn consent_needs_the_secret_to_name_the_scaler_config() {
        // (annotation, Secret's namespace, ScalerConfig's namespace, name, permitted)
        let cases = [
            (None, "team-a", "team-a", "redis", false),
            (Some(""), "team-a", "team-a", "redis", false),
            (Some("other"), "team-a", "team-a", "redis", false),
            (Some("redis"), "team-a", "team-a", "redis", true),
            (Some(" other , redis "), "team-a", "team-a", "redis", true),
            (Some("redis-2"), "team-a", "team-a", "redis", false),
            (Some("*"), "team-a", "team-a", "redis", true),
            (Some("team-a/redis"), "team-a", "team-a", "redis", true),
            (Some("team-a/*"), "team-a", "team-a", "anything", true),
            // --credentials-namespace: the Secret is in `ops`, the ScalerConfig elsewhere.
            (Some("redis"), "ops", "team-a", "redis", false),
            (Some("*"), "ops", "team-a", "redis", false),
            (Some("team-a/redis"), "ops", "team-a", "redis", true),
            (Some("team-b/redis"), "ops", "team-a", "redis", false),
            (Some("team-a/*"), "ops", "team-a", "redis", true),
            (Some("*/*"), "ops", "team-a", "redis", true),
            (Some("*/redis"), "ops", "team-a", "redis", false),
            (
                Some("team-b/redis, team-a/redis"),
                "ops",
                "team-a",
                "redis",
                true,
            ),
        ];
        for (annotation, secret_ns, sc_ns, name, want) in cases {
            assert_eq!(
                secret_permits(annotation, secret_ns, sc_ns, name),
                want,
                "{annotation:?} on a Secret in {secret_ns} for {sc_ns}/{name}"
            );
        }
    }

    #[test]
    fn refused_consent_names_the_annotation_to_add() {
        let Err(err) = consent(None, &use_in("team-a"), "team-a", "redis") else {
            panic!("no annotation must refuse");
        };
        assert_eq!((err.reason, err.category), ("SecretNotPermitted", "config"));
        assert!(
            err.message
                .contains("add \"redis\" to the Secret's annotation quickube.com/scaler-configs"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("Secret team-a/redis-credentials (config.password)")
        );
        let Err(err) = consent(Some("other"), &use_in("ops"), "team-a", "redis") else {
            panic!("a Secret naming another ScalerConfig must refuse");
        };
        assert!(
            err.message.contains("add \"team-a/redis\""),
            "{}",
            err.message
        );
        assert!(err.message.contains("its annotation does not name it"));
        assert!(consent(Some("team-a/redis"), &use_in("ops"), "team-a", "redis").is_ok());
    }

    #[test]
    fn secret_uses_follow_the_credentials_namespace() {
        let sc: ScalerConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1", "kind": "ScalerConfig",
            "metadata": {"name": "rabbit", "namespace": "team-a"},
            "spec": {"type": "rabbitmq", "config": {
                "host": "rabbit",
                "username": {"value": "app"},
                "password": {"secret": {"name": "rabbit-credentials", "key": "password"}},
            }},
        }))
        .expect("ScalerConfig");
        let uses = secret_uses(&sc, None);
        assert_eq!(
            uses,
            vec![SecretUse {
                namespace: "team-a".into(),
                name: "rabbit-credentials".into(),
                key: "password".into(),
                field: "password",
            }]
        );
        assert_eq!(secret_uses(&sc, Some("ops"))[0].namespace, "ops");
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "redis.default.svc",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "localhost.example.com",
            "128.0.0.1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn plaintext_credentials_to_a_remote_host_are_exposed() {
        use CredentialsExposure::*;
        let plaintext = |host: &str, channel| Plaintext {
            host: host.into(),
            channel,
        };
        let cases = [
            (BrokerType::Redis, "host: redis.prod\n", NoCredentials),
            (
                BrokerType::Redis,
                "host: redis.prod\npassword: {value: x}\n",
                plaintext("redis.prod", "redis"),
            ),
            (
                BrokerType::Redis,
                "host: redis.prod\ntls: false\npassword: {secret: {name: s, key: k}}\n",
                plaintext("redis.prod", "redis"),
            ),
            (
                BrokerType::Redis,
                "host: redis.prod\ntls: true\npassword: {value: x}\n",
                Tls,
            ),
            (
                BrokerType::Redis,
                "host: 127.0.0.1\npassword: {value: x}\n",
                Loopback,
            ),
            (
                BrokerType::Redis,
                "host: localhost\npassword: {value: x}\n",
                Loopback,
            ),
            (BrokerType::Rabbitmq, "host: rabbit\n", NoCredentials),
            (
                BrokerType::Rabbitmq,
                "host: rabbit\npassword: {value: x}\n",
                plaintext("rabbit", "amqp"),
            ),
            (
                BrokerType::Rabbitmq,
                "url: amqps://rabbit/%2F\npassword: {value: x}\n",
                Tls,
            ),
            (
                BrokerType::Rabbitmq,
                "host: rabbit\ntls: true\npassword: {value: x}\nmanagementUrl: http://rabbit:15672\n",
                plaintext("rabbit", "management API"),
            ),
            (
                BrokerType::Rabbitmq,
                "host: rabbit\ntls: true\npassword: {value: x}\nmanagementUrl: https://rabbit\n",
                Tls,
            ),
            (
                BrokerType::Rabbitmq,
                "host: \"::1\"\npassword: {value: x}\nmanagementUrl: http://[::1]:15672\n",
                Loopback,
            ),
            (
                BrokerType::Nats,
                "url: nats://nats:4222\nstream: S\ntoken: {value: t}\n",
                plaintext("nats", "nats"),
            ),
            (
                BrokerType::Nats,
                "url: nats://nats:4222\nstream: S\ntls: true\ntoken: {value: t}\n",
                Tls,
            ),
            (
                BrokerType::Nats,
                "url: tls://nats:4222\nstream: S\ntoken: {value: t}\n",
                Tls,
            ),
            (
                BrokerType::Nats,
                "host: nats\nstream: S\ntls: true\nusername: {value: u}\npassword: {value: p}\n",
                Tls,
            ),
            (
                BrokerType::Nats,
                "url: 127.0.0.1:4222\nstream: S\ntoken: {value: t}\n",
                Loopback,
            ),
        ];
        for (type_, yaml, want) in cases {
            assert_eq!(
                credentials_exposure(type_, &conn(yaml)),
                Some(want),
                "{yaml}"
            );
        }
        // An invalid spec sends nothing.
        assert_eq!(
            credentials_exposure(BrokerType::Nats, &conn("host: nats\ntoken: {value: t}\n")),
            None
        );
    }

    #[test]
    fn tls_cannot_be_asked_for_and_skipped() {
        let cases = [
            (
                BrokerType::Rabbitmq,
                "url: amqp://rabbit/%2F\ntls: true\n",
                "config.tls is true but config.url is amqp://",
            ),
            (
                BrokerType::Nats,
                "url: ws://nats:80\nstream: S\ntls: true\n",
                "config.url must be nats:// or tls://, not ws://",
            ),
            (
                BrokerType::Nats,
                "url: wss://nats\nstream: S\n",
                "must be nats:// or tls://",
            ),
        ];
        for (type_, yaml, want) in cases {
            let err = broker_config(type_, &conn(yaml), &Credentials::default()).expect_err(yaml);
            assert_eq!(err.reason, "InvalidScalerConfig", "{yaml}");
            assert!(err.message.contains(want), "{}", err.message);
        }
        let amqps = broker_config(
            BrokerType::Rabbitmq,
            &conn("url: amqps://rabbit/%2F\ntls: true\n"),
            &Credentials::default(),
        );
        assert!(matches!(amqps, Ok(BrokerConfig::RabbitMq(r)) if r.url.starts_with("amqps://")));
    }
}
