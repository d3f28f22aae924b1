//! Broker connection settings, URL helpers and credential redaction.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::error::{BrokerKind, QueueError};

/// Characters left as they are in a URL component: RFC 3986 "unreserved".
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Shown in place of a secret by every `Debug` impl of this crate.
const REDACTED: &str = "***";

/// Connection settings for one broker, already resolved (secrets inlined) by the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerConfig {
    /// A Redis server; queues are lists.
    Redis(RedisConfig),
    /// A RabbitMQ server over AMQP 0-9-1; queues are AMQP queues.
    RabbitMq(RabbitMqConfig),
    /// A NATS server with JetStream; queues are durable pull consumers of one stream.
    Nats(NatsConfig),
}

impl BrokerConfig {
    /// Every host this configuration connects to: the Redis host, the hosts of the AMQP URL
    /// and of the RabbitMQ management URL, the host of the NATS URL. A URL that does not parse
    /// gives a placeholder (never its text, which may hold a password) that no host matches.
    pub fn hosts(&self) -> Vec<String> {
        fn of(url: &str) -> String {
            url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
                .unwrap_or_else(|| "(a URL that does not parse)".to_string())
        }
        match self {
            Self::Redis(c) => vec![c.host.clone()],
            Self::RabbitMq(c) => std::iter::once(&c.url)
                .chain(c.management_url.as_ref())
                .map(|u| of(u))
                .collect(),
            Self::Nats(c) => vec![of(&c.url)],
        }
    }

    /// Which kind of broker this configuration reaches.
    pub fn kind(&self) -> BrokerKind {
        match self {
            Self::Redis(_) => BrokerKind::Redis,
            Self::RabbitMq(_) => BrokerKind::RabbitMq,
            Self::Nats(_) => BrokerKind::Nats,
        }
    }

    /// Replaces the secret: the Redis password, the password of the AMQP URL, or for NATS the
    /// password when a user is set and the token otherwise. Lets a secret come from its own
    /// environment variable rather than inside a URL.
    pub fn with_password(self, password: &str) -> Result<Self, QueueError> {
        Ok(match self {
            Self::Redis(mut c) => {
                c.password = Some(password.to_owned());
                Self::Redis(c)
            }
            Self::RabbitMq(mut c) => {
                let mut parsed = url::Url::parse(&c.url).map_err(|e| {
                    QueueError::config(BrokerKind::RabbitMq, format!("invalid AMQP URL: {e}"))
                })?;
                if parsed.username().is_empty() {
                    parsed.set_username("guest").map_err(|()| {
                        QueueError::config(BrokerKind::RabbitMq, "AMQP URL has no host")
                    })?;
                }
                parsed
                    .set_password(Some(&encode_component(password)))
                    .map_err(|()| {
                        QueueError::config(BrokerKind::RabbitMq, "AMQP URL has no host")
                    })?;
                c.url = parsed.to_string();
                Self::RabbitMq(c)
            }
            Self::Nats(mut c) => {
                if c.user.is_some() {
                    c.password = Some(password.to_owned());
                } else {
                    c.token = Some(password.to_owned());
                }
                Self::Nats(c)
            }
        })
    }

    /// Parses a broker URL; the scheme selects the broker.
    ///
    /// * `redis://[:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS (port 6379 by default;
    ///   a user name, if given, is ignored: the `default` user is used).
    /// * `amqp://USER:PASSWORD@HOST[:PORT]/VHOST`, or `amqps://` for TLS; kept as it is.
    /// * `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?stream=STREAM`, or `tls://` for TLS. The
    ///   `stream` query parameter is required: it names the JetStream stream whose durable
    ///   consumers are the queues.
    ///
    /// User names, passwords and tokens are percent-decoded.
    pub fn from_url(raw: &str) -> Result<Self, QueueError> {
        let parsed = url::Url::parse(raw).map_err(|e| {
            QueueError::config(
                BrokerKind::from_scheme(raw),
                format!("invalid broker URL: {e}"),
            )
        })?;
        match parsed.scheme() {
            "redis" | "rediss" => {
                let kind = BrokerKind::Redis;
                let host = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| QueueError::config(kind, "redis URL has no host"))?;
                let db = match parsed.path().trim_start_matches('/') {
                    "" => 0,
                    db => db.parse::<i64>().map_err(|_| {
                        QueueError::config(
                            kind,
                            format!("redis URL database {db:?} is not a number"),
                        )
                    })?,
                };
                Ok(Self::Redis(RedisConfig {
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port: parsed.port().unwrap_or(6379),
                    password: parsed.password().map(decode).transpose()?,
                    db,
                    tls: parsed.scheme() == "rediss",
                }))
            }
            "amqp" | "amqps" => Ok(Self::RabbitMq(RabbitMqConfig {
                url: raw.to_owned(),
                management_url: None,
            })),
            "nats" | "tls" => {
                let kind = BrokerKind::Nats;
                let host = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| QueueError::config(kind, "nats URL has no host"))?;
                let stream = parsed
                    .query_pairs()
                    .find(|(k, _)| k == "stream")
                    .map(|(_, v)| v.into_owned())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        QueueError::config(kind, "nats URL needs a ?stream=NAME query parameter")
                    })?;
                let username = (!parsed.username().is_empty())
                    .then(|| decode(parsed.username()))
                    .transpose()?;
                let password = parsed.password().map(decode).transpose()?;
                let (user, password, token) = match (username, password) {
                    (Some(user), Some(password)) => (Some(user), Some(password), None),
                    (Some(token), None) => (None, None, Some(token)),
                    (None, password) => (None, password, None),
                };
                let port = parsed.port().unwrap_or(4222);
                Ok(Self::Nats(NatsConfig {
                    url: format!("{}://{host}:{port}", parsed.scheme()),
                    stream,
                    user,
                    password,
                    token,
                    tls: parsed.scheme() == "tls",
                }))
            }
            other => Err(QueueError::config(
                BrokerKind::Redis,
                format!(
                    "unsupported broker URL scheme {other:?} (redis, rediss, amqp, amqps, nats, tls)"
                ),
            )),
        }
    }
}

fn decode(s: &str) -> Result<String, QueueError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| QueueError::config(BrokerKind::Redis, "URL credentials are not UTF-8"))
}

/// Redis connection settings.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, usually 6379.
    pub port: u16,
    /// Password for `AUTH` (the `default` user), if the server requires one.
    pub password: Option<String>,
    /// Database number, usually 0.
    pub db: i64,
    /// Connect with TLS (the server certificate is checked against the system roots).
    pub tls: bool,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// RabbitMQ connection settings.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitMqConfig {
    /// AMQP URL: `amqp://user:pass@host:port/vhost` (`amqps://` for TLS), with the user,
    /// password and vhost percent-encoded; [`amqp_url`] builds one.
    pub url: String,
    /// Base URL of the management HTTP API (e.g. `http://rabbitmq:15672`), if enabled. When set,
    /// queue depth is read from it exactly (ready + unacknowledged). Credentials are taken from
    /// this URL's user info if present, otherwise from [`RabbitMqConfig::url`].
    pub management_url: Option<String>,
}

impl fmt::Debug for RabbitMqConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConfig")
            .field("url", &redact_url(&self.url, false))
            .field(
                "management_url",
                &self.management_url.as_deref().map(|u| redact_url(u, false)),
            )
            .finish()
    }
}

/// NATS JetStream connection settings.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://nats:4222` (`tls://` for TLS). Should not carry credentials;
    /// use the fields below. `ws://` and `wss://` are refused: the client would not put TLS
    /// on them.
    pub url: String,
    /// The JetStream stream; each queue is a durable pull consumer of it.
    pub stream: String,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<String>,
    /// Token for token authentication.
    pub token: Option<String>,
    /// Require TLS (the server certificate is checked against the system roots).
    pub tls: bool,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url, true))
            .field("stream", &self.stream)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Builds an AMQP URL for [`RabbitMqConfig::url`], percent-encoding the user, the password and
/// the virtual host (so the default vhost `/` becomes `%2F`). An empty `vhost` means `/`.
/// IPv6 addresses are bracketed.
pub fn amqp_url(
    host: &str,
    port: u16,
    vhost: &str,
    user: &str,
    password: &str,
    tls: bool,
) -> String {
    let scheme = if tls { "amqps" } else { "amqp" };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let vhost = if vhost.is_empty() { "/" } else { vhost };
    format!(
        "{scheme}://{}:{}@{host}:{port}/{}",
        utf8_percent_encode(user, COMPONENT),
        utf8_percent_encode(password, COMPONENT),
        utf8_percent_encode(vhost, COMPONENT),
    )
}

/// Percent-encodes one URL path segment or user-info component.
pub(crate) fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Percent-decodes a URL component, keeping invalid UTF-8 lossy.
pub(crate) fn decode_component(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Hides the password of a URL (and its user name too when `hide_user`, for token-in-user URLs).
/// A URL that does not parse is hidden whole, as it might hold a secret.
pub(crate) fn redact_url(raw: &str, hide_user: bool) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return "<unparsable URL>".to_owned();
    };
    if parsed.password().is_some() {
        // Cannot fail: the URL already has a host, since it has a password.
        let _ = parsed.set_password(Some(REDACTED));
    } else if hide_user && !parsed.username().is_empty() {
        let _ = parsed.set_username(REDACTED);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_encodes_parts() {
        assert_eq!(
            amqp_url("rabbit", 5672, "/", "guest", "guest", false),
            "amqp://guest:guest@rabbit:5672/%2F"
        );
        assert_eq!(
            amqp_url("::1", 5671, "prod/eu", "u@x", "p:/#?%", true),
            "amqps://u%40x:p%3A%2F%23%3F%25@[::1]:5671/prod%2Feu"
        );
        assert_eq!(amqp_url("h", 1, "", "a", "b", false), "amqp://a:b@h:1/%2F");
    }

    #[test]
    fn debug_redacts_secrets() {
        let redis = RedisConfig {
            host: "r".into(),
            port: 6379,
            password: Some("hunter2".into()),
            db: 0,
            tls: false,
        };
        let rabbit = RabbitMqConfig {
            url: amqp_url("h", 5672, "/", "guest", "hunter2", false),
            management_url: Some("http://admin:hunter2@h:15672".into()),
        };
        let nats = NatsConfig {
            url: "nats://hunter2@h:4222".into(),
            stream: "s".into(),
            user: Some("u".into()),
            password: Some("hunter2".into()),
            token: Some("hunter2".into()),
            tls: false,
        };
        for text in [
            format!("{redis:?}"),
            format!("{rabbit:?}"),
            format!("{nats:?}"),
            format!("{:?}", BrokerConfig::Nats(nats.clone())),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains(REDACTED), "{text}");
        }
        assert!(format!("{rabbit:?}").contains("guest"));
        assert_eq!(redact_url("not a url", false), "<unparsable URL>");
    }

    #[test]
    fn from_url_parses_each_scheme() {
        let redis = BrokerConfig::from_url("rediss://:p%40ss@cache:6380/2").ok();
        assert_eq!(
            redis,
            Some(BrokerConfig::Redis(RedisConfig {
                host: "cache".into(),
                port: 6380,
                password: Some("p@ss".into()),
                db: 2,
                tls: true,
            }))
        );
        let redis = BrokerConfig::from_url("redis://127.0.0.1").ok();
        assert_eq!(
            redis,
            Some(BrokerConfig::Redis(RedisConfig {
                host: "127.0.0.1".into(),
                port: 6379,
                password: None,
                db: 0,
                tls: false,
            }))
        );
        let amqp = "amqp://guest:guest@127.0.0.1:5672/%2F";
        assert_eq!(
            BrokerConfig::from_url(amqp).ok(),
            Some(BrokerConfig::RabbitMq(RabbitMqConfig {
                url: amqp.into(),
                management_url: None
            }))
        );
        assert_eq!(
            BrokerConfig::from_url("nats://u:p@n?stream=TASKS").ok(),
            Some(BrokerConfig::Nats(NatsConfig {
                url: "nats://n:4222".into(),
                stream: "TASKS".into(),
                user: Some("u".into()),
                password: Some("p".into()),
                token: None,
                tls: false,
            }))
        );
        assert_eq!(
            BrokerConfig::from_url("tls://tok@n:4333?stream=S").ok(),
            Some(BrokerConfig::Nats(NatsConfig {
                url: "tls://n:4333".into(),
                stream: "S".into(),
                user: None,
                password: None,
                token: Some("tok".into()),
                tls: true,
            }))
        );
    }

    #[test]
    fn with_password_replaces_the_secret() {
        let amqp = BrokerConfig::from_url("amqp://app@rabbit:5672/%2F")
            .and_then(|c| c.with_password("p%@:/ss"))
            .ok();
        assert_eq!(
            amqp,
            Some(BrokerConfig::RabbitMq(RabbitMqConfig {
                url: "amqp://app:p%25%40%3A%2Fss@rabbit:5672/%2F".into(),
                management_url: None
            }))
        );
        let redis = BrokerConfig::from_url("redis://cache").and_then(|c| c.with_password("s"));
        assert!(
            matches!(redis, Ok(BrokerConfig::Redis(RedisConfig { password: Some(p), .. })) if p == "s")
        );
        let nats = BrokerConfig::from_url("nats://n?stream=S").and_then(|c| c.with_password("t"));
        assert!(
            matches!(nats, Ok(BrokerConfig::Nats(NatsConfig { token: Some(t), password: None, .. })) if t == "t")
        );
        let nats =
            BrokerConfig::from_url("nats://u:old@n?stream=S").and_then(|c| c.with_password("new"));
        assert!(
            matches!(nats, Ok(BrokerConfig::Nats(NatsConfig { password: Some(p), token: None, .. })) if p == "new")
        );
    }

    #[test]
    fn from_url_rejects_bad_input() {
        for bad in ["nats://n:4222", "http://x", "redis://h/notanumber", "::::"] {
            let err = BrokerConfig::from_url(bad).err();
            assert!(err.is_some(), "{bad} should fail");
            assert_eq!(err.map(|e| e.category()), Some("connect"), "{bad}");
        }
    }
}
