//! The error type of every broker call, with a bounded category.

use std::fmt;
use std::time::Duration;

/// The kind of broker an error or a configuration belongs to. Bounded, so usable as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// Redis.
    Redis,
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
    /// NATS JetStream.
    Nats,
}

impl BrokerKind {
    /// Lower-case name: `redis`, `rabbitmq` or `nats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::RabbitMq => "rabbitmq",
            Self::Nats => "nats",
        }
    }

    /// Best guess from a URL's scheme, for errors about URLs that do not parse.
    pub(crate) fn from_scheme(raw: &str) -> Self {
        if raw.starts_with("amqp") {
            Self::RabbitMq
        } else if raw.starts_with("nats") || raw.starts_with("tls") {
            Self::Nats
        } else {
            Self::Redis
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a broker call. Messages never contain passwords or tokens.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The broker could not be reached, the connection broke, or the settings are invalid.
    #[error("{broker}: cannot connect: {message}")]
    Connect {
        /// Which broker.
        broker: BrokerKind,
        /// What went wrong.
        message: String,
    },
    /// The broker refused the credentials or the permissions.
    #[error("{broker}: authentication failed: {message}")]
    Auth {
        /// Which broker.
        broker: BrokerKind,
        /// What went wrong.
        message: String,
    },
    /// The queue, stream or consumer does not exist.
    #[error("{broker}: {what} {name:?} not found")]
    NotFound {
        /// Which broker.
        broker: BrokerKind,
        /// `queue`, `stream` or `consumer`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The broker did not answer in time.
    #[error("{broker}: {operation} timed out after {after:?}")]
    Timeout {
        /// Which broker.
        broker: BrokerKind,
        /// The operation that timed out.
        operation: &'static str,
        /// The time limit.
        after: Duration,
    },
    /// The broker answered with an error, or with something unexpected.
    #[error("{broker}: {message}")]
    Protocol {
        /// Which broker.
        broker: BrokerKind,
        /// What went wrong.
        message: String,
    },
}

impl QueueError {
    /// Bounded category for metric labels and Event reasons: one of `connect`, `auth`,
    /// `not_found`, `timeout`, `protocol`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Auth { .. } => "auth",
            Self::NotFound { .. } => "not_found",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
        }
    }

    /// The broker the error came from.
    pub fn broker(&self) -> BrokerKind {
        match self {
            Self::Connect { broker, .. }
            | Self::Auth { broker, .. }
            | Self::NotFound { broker, .. }
            | Self::Timeout { broker, .. }
            | Self::Protocol { broker, .. } => *broker,
        }
    }

    pub(crate) fn connect(broker: BrokerKind, message: impl fmt::Display) -> Self {
        Self::Connect {
            broker,
            message: message.to_string(),
        }
    }

    /// Invalid settings are reported as `connect` errors: the broker cannot be reached with them.
    pub(crate) fn config(broker: BrokerKind, message: impl fmt::Display) -> Self {
        Self::Connect {
            broker,
            message: format!("invalid configuration: {message}"),
        }
    }

    pub(crate) fn auth(broker: BrokerKind, message: impl fmt::Display) -> Self {
        Self::Auth {
            broker,
            message: message.to_string(),
        }
    }

    pub(crate) fn not_found(broker: BrokerKind, what: &'static str, name: &str) -> Self {
        Self::NotFound {
            broker,
            what,
            name: name.to_owned(),
        }
    }

    pub(crate) fn protocol(broker: BrokerKind, message: impl fmt::Display) -> Self {
        Self::Protocol {
            broker,
            message: message.to_string(),
        }
    }
}

/// Runs `fut` with a time limit; on expiry returns [`QueueError::Timeout`].
pub(crate) async fn timed<T>(
    broker: BrokerKind,
    operation: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(QueueError::Timeout {
            broker,
            operation,
            after,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_bounded() {
        let all = [
            QueueError::connect(BrokerKind::Redis, "x"),
            QueueError::config(BrokerKind::Redis, "x"),
            QueueError::auth(BrokerKind::Nats, "x"),
            QueueError::not_found(BrokerKind::RabbitMq, "queue", "q"),
            QueueError::Timeout {
                broker: BrokerKind::Redis,
                operation: "ping",
                after: Duration::from_secs(2),
            },
            QueueError::protocol(BrokerKind::Nats, "x"),
        ];
        let cats: Vec<_> = all.iter().map(QueueError::category).collect();
        assert_eq!(
            cats,
            [
                "connect",
                "connect",
                "auth",
                "not_found",
                "timeout",
                "protocol"
            ]
        );
        assert_eq!(all[3].to_string(), "rabbitmq: queue \"q\" not found");
        assert_eq!(all[3].broker(), BrokerKind::RabbitMq);
    }
}
