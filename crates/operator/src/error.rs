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

/// What kind of failure a reconcile met: the Event reason of its Warning and the `category`
/// label of `workerpool_reconcile_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// The spec is invalid in a way the schema cannot express.
    InvalidSpec,
    /// A write lost a race (HTTP 409): retried soon.
    Conflict,
    /// The API server refused a request for want of permission (HTTP 403).
    Forbidden,
    /// The API server refused an object as invalid (HTTP 400 or 422).
    Rejected,
    /// Any other answer of the API server.
    ApiError,
    /// The API server could not be reached.
    ApiUnreachable,
    /// A broker could not be read.
    BrokerError,
    /// An object could not be serialized.
    SerializationError,
    /// A referenced object is missing or unusable.
    ReferenceError,
}

impl Category {
    /// Every category, in the order the metrics list them.
    pub const ALL: [Category; 9] = [
        Category::InvalidSpec,
        Category::Conflict,
        Category::Forbidden,
        Category::Rejected,
        Category::ApiError,
        Category::ApiUnreachable,
        Category::BrokerError,
        Category::SerializationError,
        Category::ReferenceError,
    ];

    /// The CamelCase name (Event reason, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidSpec => "InvalidSpec",
            Category::Conflict => "Conflict",
            Category::Forbidden => "Forbidden",
            Category::Rejected => "Rejected",
            Category::ApiError => "ApiError",
            Category::ApiUnreachable => "ApiUnreachable",
            Category::BrokerError => "BrokerError",
            Category::SerializationError => "SerializationError",
            Category::ReferenceError => "ReferenceError",
        }
    }

    /// Whether the API server refused what the spec asks for (invalid, or not permitted):
    /// retrying without a change of the spec or of the operator's rights cannot help, so the
    /// object's status says so.
    pub fn refused(self) -> bool {
        matches!(self, Category::Rejected | Category::Forbidden)
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The error's [`Category`].
    pub fn category(&self) -> Category {
        match self {
            Error::InvalidSpec(_) => Category::InvalidSpec,
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => Category::Conflict,
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => Category::Forbidden,
            Error::Kube(kube::Error::Api(status)) if status.code == 400 || status.code == 422 => {
                Category::Rejected
            }
            Error::Kube(kube::Error::Api(_)) => Category::ApiError,
            Error::Kube(_) => Category::ApiUnreachable,
            Error::Queue(_) => Category::BrokerError,
            Error::Serialization(_) => Category::SerializationError,
            Error::Reference(_) => Category::ReferenceError,
        }
    }

    /// The error's text with the userinfo (`user:password@`) of every URL removed: what a log
    /// line, an Event or a status may show.
    pub fn scrubbed(&self) -> String {
        scrub_userinfo(&self.to_string())
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

/// Removes the userinfo (`user:password@`) of every URL in `text`, so that no credential of a
/// URL (a Storm `uiUrl`, a broker URL) reaches a status, an Event or a log line.
pub fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '>' | ')' | ',') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

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
    fn api_answers_map_to_their_category() {
        assert_eq!(api(400).category(), Category::Rejected);
        assert_eq!(api(422).category(), Category::Rejected);
        assert_eq!(api(403).category(), Category::Forbidden);
        assert_eq!(api(409).category(), Category::Conflict);
        assert_eq!(api(500).category(), Category::ApiError);
        assert!(api(422).category().refused() && api(403).category().refused());
        assert!(!api(409).category().refused() && !api(500).category().refused());
    }

    #[test]
    fn userinfo_is_scrubbed_from_messages() {
        let e = Error::Reference("GET http://admin:s3cret@ui:8080/api failed".into());
        assert_eq!(e.scrubbed(), "GET http://ui:8080/api failed");
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
            assert!(Category::ALL.contains(&e.category()), "{}", e.category());
        }
    }
}
