//! RabbitMQ management HTTP API: `GET /api/queues/{vhost}/{queue}` for one queue's exact
//! depth, and `GET /api/queues/{vhost}?page=…&page_size=500&columns=…` for the depths of all the
//! vhost's queues, [`LIST_PAGE_SIZE`] a page.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{decode_component, encode_component};
use crate::error::{BrokerKind, QueueError, timed};
use crate::{CALL_TIMEOUT, DEPTHS_CONCURRENCY};

const KIND: BrokerKind = BrokerKind::RabbitMq;

/// Queues per page of the list (the management API's largest page).
pub(crate) const LIST_PAGE_SIZE: usize = 500;

/// The queues of the vhost as far as [`Management::list_depths`] read them: each name with
/// what [`Management::depth`] would answer for it.
pub(crate) struct QueueList {
    /// Each listed queue's depth, `None` while the broker has not published its counts.
    pub(crate) depths: HashMap<String, Option<u64>>,
    /// Whether the list is one answer of the broker, so that a queue missing from it does not
    /// exist; a list read in several pages may miss one (queues declared or deleted between the
    /// pages shift them), and an unfinished one misses the rest.
    pub(crate) authoritative: bool,
}

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

    /// The URL of page `page` (from 1) of the vhost's queues, with the columns depth needs.
    fn list_url(&self, page: usize) -> String {
        format!(
            "{}/api/queues/{}?page={page}&page_size={LIST_PAGE_SIZE}\
             &columns=name,messages_ready,messages_unacknowledged",
            self.base,
            encode_component(&self.vhost),
        )
    }

    /// `GET url`: the body of a 200 answer; 404 is `not_found` of queue `queue`.
    async fn get(
        &self,
        url: String,
        operation: &'static str,
        queue: &str,
    ) -> Result<Bytes, QueueError> {
        let request = http::Request::get(url)
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| QueueError::config(KIND, e))?;
        timed(KIND, operation, CALL_TIMEOUT, async {
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
                http::StatusCode::OK => Ok(body),
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

    /// `messages_ready + messages_unacknowledged`, or `None` when the broker has not published
    /// the counts yet (a queue declared moments ago).
    pub(crate) async fn depth(&self, queue: &str) -> Result<Option<u64>, QueueError> {
        let body = self
            .get(self.queue_url(queue), "management GET queue", queue)
            .await?;
        parse_depth(&body)
    }

    /// One page of the vhost's queues: each queue's depth and the number of pages.
    async fn list_page(&self, page: usize) -> Result<ListPage, QueueError> {
        let body = self
            .get(self.list_url(page), "management GET queues", "")
            .await?;
        parse_list(&body)
    }

    /// The depths of the vhost's queues: the first page, then the others together, unless there
    /// are more of them than `wanted` (a request per wanted queue is then cheaper). A missing
    /// vhost is `not_found`.
    pub(crate) async fn list_depths(&self, wanted: usize) -> Result<QueueList, QueueError> {
        use futures::StreamExt as _;
        let (items, pages) = self.list_page(1).await?;
        let mut list = QueueList {
            depths: items.into_iter().collect(),
            authoritative: pages <= 1,
        };
        if pages <= 1 || pages - 1 > wanted {
            return Ok(list);
        }
        let mut requests = Vec::with_capacity(pages - 1);
        for page in 2..=pages {
            requests.push(self.list_page(page));
        }
        let mut answers = futures::stream::iter(requests).buffer_unordered(DEPTHS_CONCURRENCY);
        while let Some(answer) = answers.next().await {
            list.depths.extend(answer?.0);
        }
        Ok(list)
    }
}

fn invalid_json(e: serde_json::Error) -> QueueError {
    QueueError::protocol(KIND, format!("management API sent invalid JSON: {e}"))
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

/// One page of the queue list: each queue with its depth, and the number of pages.
type ListPage = (Vec<(String, Option<u64>)>, usize);

/// The queues of one list page, each with [`depth_of`], and the number of pages.
fn parse_list(body: &[u8]) -> Result<ListPage, QueueError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid_json)?;
    let (Some(items), Some(pages)) = (
        value.get("items").and_then(serde_json::Value::as_array),
        value.get("page_count").and_then(serde_json::Value::as_u64),
    ) else {
        return Err(QueueError::protocol(
            KIND,
            "management API sent a queue list without items or page_count",
        ));
    };
    let mut queues = Vec::with_capacity(items.len());
    for item in items {
        let Some(name) = item.get("name").and_then(serde_json::Value::as_str) else {
            return Err(QueueError::protocol(
                KIND,
                "management API listed a queue without a name",
            ));
        };
        queues.push((name.to_owned(), depth_of(item)));
    }
    Ok((queues, usize::try_from(pages).unwrap_or(usize::MAX)))
}

/// Reads `messages_ready + messages_unacknowledged` from a queue resource.
fn parse_depth(body: &[u8]) -> Result<Option<u64>, QueueError> {
    Ok(depth_of(
        &serde_json::from_slice(body).map_err(invalid_json)?,
    ))
}

/// `messages_ready + messages_unacknowledged` of a queue's JSON, `None` without them.
fn depth_of(value: &serde_json::Value) -> Option<u64> {
    let ready = value
        .get("messages_ready")
        .and_then(serde_json::Value::as_u64);
    let unacked = value
        .get("messages_unacknowledged")
        .and_then(serde_json::Value::as_u64);
    match (ready, unacked) {
        (Some(ready), Some(unacked)) => Some(ready + unacked),
        _ => None,
    }
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
    fn parses_list_pages() {
        let body = br#"{"filtered_count":3,"item_count":3,"page":1,"page_count":2,"page_size":500,
            "total_count":503,"items":[
            {"name":"a","messages_ready":5,"messages_unacknowledged":2},
            {"name":"b"},
            {"name":"c","messages_ready":0,"messages_unacknowledged":0}]}"#;
        let Ok((items, pages)) = parse_list(body) else {
            panic!("a valid page");
        };
        assert_eq!(pages, 2);
        assert_eq!(
            items,
            vec![
                ("a".into(), Some(7)),
                ("b".into(), None),
                ("c".into(), Some(0))
            ]
        );
        for bad in [&b"[]"[..], br#"{"items":[{}],"page_count":1}"#, b"<html>"] {
            assert_eq!(
                parse_list(bad).err().map(|e| e.category()),
                Some("protocol")
            );
        }
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
        assert_eq!(
            m.list_url(2),
            "https://rabbit/mgmt/api/queues/prod?page=2&page_size=500\
             &columns=name,messages_ready,messages_unacknowledged"
        );
        let expected = base64::engine::general_purpose::STANDARD.encode("u:p/q");
        assert_eq!(m.authorization, format!("Basic {expected}"));
        assert!(Management::new("ftp://x", "amqp://h").is_err());
    }
}
