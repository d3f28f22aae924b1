//! Typed errors with bounded categories for Event reasons and metric labels.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource's spec is invalid in a way the schema cannot express. Permanent until the spec changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A broker could not be read.
    #[error("broker error: {0}")]
    Queue(#[from] workerpool_queue::QueueError),
    /// An object could not be serialized.
    #[error("serialization error: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A referenced object (Secret, ScalerConfig, ...) is missing or unusable.
    #[error("{0}")]
    Reference(String),
}

/// Every value of [`Error::category`].
pub const CATEGORIES: [&str; 9] = [
    "InvalidSpec",
    "Conflict",
    "Forbidden",
    "Rejected",
    "ApiError",
    "ApiUnreachable",
    "BrokerError",
    "SerializationError",
    "ReferenceError",
];

impl Error {
    /// A bounded, CamelCase category used as Event reason and metric label (one of
    /// [`CATEGORIES`]).
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "Forbidden",
            Error::Kube(kube::Error::Api(status)) if status.code == 422 => "Rejected",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::Queue(_) => "BrokerError",
            Error::Serialization(_) => "SerializationError",
            Error::Reference(_) => "ReferenceError",
        }
    }

    /// Whether the API server refused to create something because the namespace is being
    /// deleted: nothing can be created there any more, and the object goes with its namespace,
    /// so there is nothing to report or retry.
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status))
        if status.code == 403
            && status.details.as_ref().is_some_and(|d| {
                d.causes.iter().any(|c| c.reason == NAMESPACE_TERMINATING)
            }))
    }

    /// Whether retrying without a spec change cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_))
    }
}

/// The cause the API server gives for a create refused in a namespace being deleted.
pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("m", "r")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn every_category_is_listed() {
        let serialization = serde_json::from_str::<u8>("x").expect_err("not a number");
        let errors = [
            Error::InvalidSpec("x".into()),
            api(409),
            api(403),
            api(422),
            api(500),
            Error::Serialization(serialization),
            Error::Reference("x".into()),
        ];
        for e in &errors {
            assert!(CATEGORIES.contains(&e.category()), "{}", e.category());
        }
    }
}
