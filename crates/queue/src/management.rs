//! RabbitMQ management HTTP API: `GET /api/queues/{vhost}/{queue}` for exact depth.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::CALL_TIMEOUT;
use crate::config::{decode_component, encode_component};
use crate::error::{BrokerKind, QueueError, timed};

const KIND: BrokerKind = BrokerKind::RabbitMq;

/// A pooled HTTP(S) client for one management API.
pub(crate) struct Management {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Scheme, host, port and path prefix, without credentials or trailing slash.
    base: String,
    /// Value of the `Authorization` header.
    authorization: String,
    vhost: String,
}

/// User, password and vhost from an AMQP URL (defaults as lapin's: guest, guest, `/`).
fn amqp_parts(amqp_url: &str) -> Result<(String, String, String), QueueError> {
    let parsed = url::Url::parse(amqp_url)
        .map_err(|e| QueueError::config(KIND, format!("invalid AMQP URL: {e}")))?;
    let user = match parsed.username() {
        "" => "guest".to_owned(),
        user => decode_component(user),
    };
    let password = parsed
        .password()
        .map_or_else(|| "guest".to_owned(), decode_component);
    let vhost = match parsed.path() {
        "" => "/".to_owned(),
        path => decode_component(path.strip_prefix('/').unwrap_or(path)),
    };
    Ok((user, password, vhost))
}

impl Management {
    pub(crate) fn new(management_url: &str, amqp_url: &str) -> Result<Self, QueueError> {
        let (mut user, mut password, vhost) = amqp_parts(amqp_url)?;
        let mut parsed = url::Url::parse(management_url)
            .map_err(|e| QueueError::config(KIND, format!("invalid management URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(QueueError::config(
                KIND,
                "management URL must be http:// or https://",
            ));
        }
        if !parsed.username().is_empty() {
            user = decode_component(parsed.username());
            password = parsed.password().map(decode_component).unwrap_or_default();
            // Cannot fail for http(s) URLs.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
        }
        parsed.set_query(None);
        parsed.set_fragment(None);
        let base = parsed.as_str().trim_end_matches('/').to_owned();
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let provider = rustls::crypto::ring::default_provider();
        let tls = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .map_err(|e| QueueError::config(KIND, e))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(native_roots(parsed.scheme() == "https"));
        let tls = tls.with_root_certificates(roots).with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            base,
            authorization,
            vhost,
        })
    }

    /// The URL of one queue's resource.
    fn queue_url(&self, queue: &str) -> String {
        format!(
            "{}/api/queues/{}/{}",
            self.base,
            encode_component(&self.vhost),
            encode_component(queue)
        )
    }

    /// `messages_ready + messages_unacknowledged`, or `None` when the broker has not published
    /// the counts yet (a queue declared moments ago).
    pub(crate) async fn depth(&self, queue: &str) -> Result<Option<u64>, QueueError> {
        let request = http::Request::get(self.queue_url(queue))
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| QueueError::config(KIND, e))?;
        timed(KIND, "management GET queue", CALL_TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| QueueError::connect(KIND, format!("management API: {e}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| QueueError::connect(KIND, format!("management API: {e}")))?
                .to_bytes();
            match status {
                http::StatusCode::OK => parse_depth(&body),
                http::StatusCode::NOT_FOUND => Err(QueueError::not_found(KIND, "queue", queue)),
                http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => Err(
                    QueueError::auth(KIND, format!("management API answered {status}")),
                ),
                _ => Err(QueueError::protocol(
                    KIND,
                    format!("management API answered {status}"),
                )),
            }
        })
        .await
    }
}

/// The system's root certificates, loaded only for `https` URLs; none (so HTTPS fails with a
/// certificate error, plain HTTP still works) when the system has none.
fn native_roots(https: bool) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    if !https {
        return Vec::new();
    }
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "could not load some system root certificates");
    }
    loaded.certs
}

/// Reads `messages_ready + messages_unacknowledged` from a queue resource.
fn parse_depth(body: &[u8]) -> Result<Option<u64>, QueueError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        QueueError::protocol(KIND, format!("management API sent invalid JSON: {e}"))
    })?;
    let ready = value
        .get("messages_ready")
        .and_then(serde_json::Value::as_u64);
    let unacked = value
        .get("messages_unacknowledged")
        .and_then(serde_json::Value::as_u64);
    Ok(match (ready, unacked) {
        (Some(ready), Some(unacked)) => Some(ready + unacked),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depth() {
        let body = br#"{"name":"q","messages":7,"messages_ready":5,"messages_unacknowledged":2}"#;
        assert_eq!(parse_depth(body).ok().flatten(), Some(7));
        assert_eq!(parse_depth(br#"{"name":"q"}"#).ok().flatten(), None);
        assert_eq!(
            parse_depth(b"<html>").err().map(|e| e.category()),
            Some("protocol")
        );
    }

    #[test]
    fn builds_queue_url_and_credentials() {
        let m = Management::new(
            "http://admin:s%40cret@rabbit:15672/",
            "amqp://guest:guest@rabbit:5672/%2F",
        );
        let Ok(m) = m else {
            panic!("management client should build");
        };
        assert_eq!(
            m.queue_url("jobs/high prio"),
            "http://rabbit:15672/api/queues/%2F/jobs%2Fhigh%20prio"
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("admin:s@cret");
        assert_eq!(m.authorization, format!("Basic {expected}"));

        let Ok(m) = Management::new("https://rabbit/mgmt", "amqp://u:p%2Fq@rabbit/prod") else {
            panic!("management client should build");
        };
        assert_eq!(m.queue_url("q"), "https://rabbit/mgmt/api/queues/prod/q");
        let expected = base64::engine::general_purpose::STANDARD.encode("u:p/q");
        assert_eq!(m.authorization, format!("Basic {expected}"));
        assert!(Management::new("ftp://x", "amqp://h").is_err());
    }
}
