//! [`StormApi`] over HTTP: the Storm UI REST API (`/api/v1/...`) with `reqwest` on rustls.
//!
//! - [`RestClient`] talks to one UI, e.g. `http://storm-ui.storm.svc:8080` (with or without a
//!   trailing slash, optionally under a path prefix such as `https://proxy/storm`).
//! - [`RestConnector`] is the operator's [`Connector`]: it checks the URL and keeps one
//!   [`RestClient`] per base URL, so connections to a cluster's UI are pooled.
//!
//! How Storm answers, and how that maps onto [`Error`]:
//! - Any non-2xx answer with a `{"error", "errorMessage"}` body is [`Error::Storm`]; an unknown
//!   topology id (or a topology *name* where an id is expected) is HTTP **500**, not 404. Before
//!   Storm 2.8.6 `errorMessage` is a whole Java stack trace: only its first line is kept.
//! - A non-2xx answer with any other body (a proxy's HTML page) is [`Error::Storm`] with the
//!   HTTP reason.
//! - No connection, or no answer within the timeouts, is [`Error::Unreachable`].
//! - A 2xx answer that is not the expected JSON is [`Error::Decode`].
//!
//! Operations (`activate`, `deactivate`, `kill`) are POSTs **without a body**; Storm has no CSRF
//! token and ignores bodies. Their answer `{"topologyOperation", "topologyId", "status"}` must say
//! `"status": "success"`.
//!
//! Credentials in a base URL (`http://user:password@host`) are sent as HTTP basic auth and never
//! appear in errors or logs: every URL put in an [`Error`] has its user info removed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::{
    ClusterSummary, Connector, Error, NimbusSummary, Result, StormApi, SupervisorSummary,
    TopologyDetail, TopologySummary,
};

/// How long establishing a connection (TCP, and TLS for `https`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a whole request may take, from sending it to the end of the answer's body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest Storm error message kept in [`Error::Storm`], in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// How much of an undecodable body is quoted in [`Error::Decode`], in characters.
const MAX_SNIPPET_CHARS: usize = 80;

const USER_AGENT: &str = concat!("workerpool-operator/", env!("CARGO_PKG_VERSION"));

/// A client of one Storm UI's REST API.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    /// Normalized base: http(s), a host, no query or fragment, no trailing slash in the path.
    base: Url,
}

impl fmt::Debug for RestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestClient")
            .field("base", &redact(&self.base))
            .finish_non_exhaustive()
    }
}

impl RestClient {
    /// A client of the UI at `ui_url` (e.g. `http://storm-ui.storm.svc:8080`), with its own
    /// connection pool, [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`].
    ///
    /// [`Error::Invalid`] when the URL is not an `http`/`https` URL with a host.
    pub fn new(ui_url: &str) -> Result<Self> {
        let base = parse_base_url(ui_url)?;
        Ok(Self {
            http: default_http_client()?,
            base,
        })
    }

    /// A client of the UI at `ui_url` that sends its requests with `http` (for other timeouts,
    /// or a proxy). `ui_url` is checked as in [`RestClient::new`].
    pub fn with_http_client(ui_url: &str, http: reqwest::Client) -> Result<Self> {
        Ok(Self {
            http,
            base: parse_base_url(ui_url)?,
        })
    }

    /// The base URL, normalized (no trailing slash) and without user info, for display.
    pub fn base_url(&self) -> String {
        redact(&self.base)
    }

    /// `<base>/api/v1/<segments...>`, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                Error::Invalid(format!(
                    "Storm UI URL {} cannot take a path",
                    redact(&self.base)
                ))
            })?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    /// Sends a request without a body; the answer's status and body.
    async fn call(&self, method: Method, url: Url) -> Result<(StatusCode, Vec<u8>)> {
        let shown = redact(&url);
        tracing::debug!(%method, url = %shown, "calling the Storm UI");
        let unreachable = |e: reqwest::Error| Error::Unreachable {
            url: shown.clone(),
            message: describe(&e),
        };
        let response = self
            .http
            .request(method, url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        tracing::debug!(url = %shown, status = status.as_u16(), bytes = body.len(), "Storm UI answered");
        if !status.is_success() {
            return Err(storm_error(status, &body));
        }
        Ok((status, body.to_vec()))
    }

    /// `GET <base>/api/v1/<segments>`, decoded as `T`.
    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T> {
        let url = self.endpoint(segments)?;
        let (_, body) = self.call(Method::GET, url.clone()).await?;
        decode(&url, &body)
    }

    /// `POST <base>/api/v1/topology/<id>/<operation...>` without a body; checks that Storm
    /// answered `"status": "success"`.
    async fn operate(&self, id: &str, operation: &[&str]) -> Result<()> {
        check_id(id)?;
        let mut segments = vec!["topology", id];
        segments.extend_from_slice(operation);
        let url = self.endpoint(&segments)?;
        let (status, body) = self.call(Method::POST, url.clone()).await?;
        let answer: OperationAnswer = decode(&url, &body)?;
        if answer.status.as_deref() == Some("success") {
            return Ok(());
        }
        Err(Error::Storm {
            status: status.as_u16(),
            error: reason(status),
            message: format!(
                "{} of topology {id} was not successful: status {}",
                answer.topology_operation.as_deref().unwrap_or(operation[0]),
                answer.status.as_deref().unwrap_or("missing"),
            ),
        })
    }
}

#[async_trait]
impl StormApi for RestClient {
    async fn cluster_summary(&self) -> Result<ClusterSummary> {
        self.get(&["cluster", "summary"]).await
    }

    async fn nimbus_summary(&self) -> Result<Vec<NimbusSummary>> {
        Ok(self.get::<Nimbuses>(&["nimbus", "summary"]).await?.nimbuses)
    }

    async fn supervisor_summary(&self) -> Result<Vec<SupervisorSummary>> {
        Ok(self
            .get::<Supervisors>(&["supervisor", "summary"])
            .await?
            .supervisors)
    }

    async fn topology_summary(&self) -> Result<Vec<TopologySummary>> {
        Ok(self
            .get::<Topologies>(&["topology", "summary"])
            .await?
            .topologies)
    }

    async fn topology(&self, id: &str) -> Result<TopologyDetail> {
        check_id(id)?;
        self.get(&["topology", id]).await
    }

    async fn topology_window(&self, id: &str, window: &str) -> Result<TopologyDetail> {
        check_id(id)?;
        let mut url = self.endpoint(&["topology", id])?;
        url.query_pairs_mut().append_pair("window", window);
        let (_, body) = self.call(Method::GET, url.clone()).await?;
        decode(&url, &body)
    }

    async fn activate(&self, id: &str) -> Result<()> {
        self.operate(id, &["activate"]).await
    }

    async fn deactivate(&self, id: &str) -> Result<()> {
        self.operate(id, &["deactivate"]).await
    }

    async fn kill(&self, id: &str, wait_secs: u32) -> Result<()> {
        let wait = wait_secs.to_string();
        self.operate(id, &["kill", &wait]).await
    }
}

/// The operator's [`Connector`]: one [`RestClient`] per base URL, made on first use and kept,
/// so that every reconcile of a cluster reuses the same connection pool.
///
/// Base URLs that differ only by a trailing slash share a client.
#[derive(Default)]
pub struct RestConnector {
    inner: Mutex<ConnectorState>,
}

#[derive(Default)]
struct ConnectorState {
    /// One HTTP client for all UIs (its pool is per host), built on first use.
    http: Option<reqwest::Client>,
    /// Clients by normalized base URL.
    clients: HashMap<String, Arc<RestClient>>,
}

impl fmt::Debug for RestConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bases: Vec<&RestClient> = inner.clients.values().map(AsRef::as_ref).collect();
        bases.sort_by_key(|c| c.base.as_str());
        f.debug_struct("RestConnector")
            .field(
                "clients",
                &bases.iter().map(|c| c.base_url()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RestConnector {
    /// A connector with no clients yet (same as [`RestConnector::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The client of `ui_url`, made on first use.
    pub fn client(&self, ui_url: &str) -> Result<Arc<RestClient>> {
        let base = parse_base_url(ui_url)?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = inner.clients.get(base.as_str()) {
            return Ok(Arc::clone(client));
        }
        let http = match &inner.http {
            Some(http) => http.clone(),
            None => {
                let http = default_http_client()?;
                inner.http = Some(http.clone());
                http
            }
        };
        let client = Arc::new(RestClient {
            http,
            base: base.clone(),
        });
        inner.clients.insert(base.into(), Arc::clone(&client));
        Ok(client)
    }
}

impl Connector for RestConnector {
    fn connect(&self, ui_url: &str) -> Result<Arc<dyn StormApi>> {
        let client: Arc<dyn StormApi> = self.client(ui_url)?;
        Ok(client)
    }
}

/// `{"nimbuses": [...]}`.
#[derive(Deserialize)]
struct Nimbuses {
    nimbuses: Vec<NimbusSummary>,
}

/// `{"supervisors": [...]}`.
#[derive(Deserialize)]
struct Supervisors {
    supervisors: Vec<SupervisorSummary>,
}

/// `{"topologies": [...]}`.
#[derive(Deserialize)]
struct Topologies {
    topologies: Vec<TopologySummary>,
}

/// The answer of every POST: `{"topologyOperation", "topologyId", "status": "success"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationAnswer {
    topology_operation: Option<String>,
    status: Option<String>,
}

/// Storm's error body: `{"error": "500 Server Error", "errorMessage": "..."}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error: Option<String>,
    error_message: Option<String>,
}

/// The reqwest client of [`RestClient::new`] and [`RestConnector`].
fn default_http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(USER_AGENT)
        // The UI is an in-cluster Service: no HTTP(S)_PROXY from the operator's environment.
        .no_proxy()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {}", describe(&e))))
}

/// Checks and normalizes a UI base URL: `http`/`https`, a host, no query or fragment, and no
/// trailing slash in the path.
fn parse_base_url(ui_url: &str) -> Result<Url> {
    let trimmed = ui_url.trim();
    let mut url = Url::parse(trimmed).map_err(|e| {
        Error::Invalid(format!(
            "Storm UI URL {:?} is not a valid URL ({e}); expected e.g. http://storm-ui.storm.svc:8080",
            redact_raw(trimmed)
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Invalid(format!(
            "Storm UI URL {:?} must use http or https, not {:?}; expected e.g. http://storm-ui.storm.svc:8080",
            redact(&url),
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!(
            "Storm UI URL {:?} has no host",
            redact(&url)
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Invalid(format!(
            "Storm UI URL {:?} must not have a query or fragment",
            redact(&url)
        )));
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// A topology id must be usable as one path segment.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') {
        return Err(Error::Invalid(format!(
            "{id:?} is not a Storm topology id (<name>-<n>-<epoch>)"
        )));
    }
    Ok(())
}

/// `url` without user name and password, for errors and logs.
fn redact(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have credentials, which then have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A string that did not parse as a URL, with anything that looks like user info removed.
fn redact_raw(raw: &str) -> String {
    let Some(start) = raw.find("://").map(|i| i + 3) else {
        return raw.to_string();
    };
    let rest = &raw[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &raw[..start], &rest[at + 1..]),
        None => raw.to_string(),
    }
}

/// What a reqwest error says, without the URL (which may hold credentials).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "error reading the answer"
    } else {
        "request failed"
    };
    let mut parts = vec![kind.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `"<code> <reason>"`, as Jetty writes it in `error`.
fn reason(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The [`Error::Storm`] of a non-2xx answer.
fn storm_error(status: StatusCode, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            error_message,
        }) if error.is_some() || error_message.is_some() => Error::Storm {
            status: status.as_u16(),
            error: error.unwrap_or_else(|| reason(status)),
            message: first_line(error_message.as_deref().unwrap_or_default()),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            // A proxy's HTML error page says nothing the status does not.
            let message = if text.is_empty() || text.starts_with('<') {
                format!(
                    "{} (not an answer of the Storm UI)",
                    status.canonical_reason().unwrap_or("HTTP error")
                )
            } else {
                first_line(text)
            };
            Error::Storm {
                status: status.as_u16(),
                error: reason(status),
                message,
            }
        }
    }
}

/// The first non-empty line of `text`, trimmed, at most [`MAX_MESSAGE_CHARS`] characters.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    truncate(line, MAX_MESSAGE_CHARS)
}

/// `text` cut to `max` characters, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Decodes a 2xx body, or [`Error::Decode`].
fn decode<T: DeserializeOwned>(url: &Url, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(body);
        Error::Decode {
            url: redact(url),
            message: format!(
                "{e}; the body starts with {:?}",
                truncate(text.trim(), MAX_SNIPPET_CHARS)
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        for (input, want) in [
            (
                "http://storm-ui.storm.svc:8080",
                "http://storm-ui.storm.svc:8080/",
            ),
            (
                "http://storm-ui.storm.svc:8080/",
                "http://storm-ui.storm.svc:8080/",
            ),
            (
                " https://proxy.example/storm/ ",
                "https://proxy.example/storm",
            ),
            ("HTTP://Storm-UI:80", "http://storm-ui/"),
        ] {
            assert_eq!(
                parse_base_url(input).map(String::from).ok().as_deref(),
                Some(want)
            );
        }
    }

    #[test]
    fn endpoints_encode_ids_as_one_segment() {
        let client = RestClient::new("http://ui:8080/prefix/").expect("client");
        let url = client
            .endpoint(&["topology", "a b%c?#", "kill", "30"])
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://ui:8080/prefix/api/v1/topology/a%20b%25c%3F%23/kill/30"
        );
        let root = RestClient::new("http://ui:8080").expect("client");
        assert_eq!(
            root.endpoint(&["cluster", "summary"])
                .expect("url")
                .as_str(),
            "http://ui:8080/api/v1/cluster/summary"
        );
    }

    #[test]
    fn bad_urls_are_invalid() {
        for bad in [
            "ftp://x",
            "not a url",
            "storm-ui:8080",
            "http://ui:8080/?a=b",
            "file:///tmp",
            "",
        ] {
            assert!(
                matches!(parse_base_url(bad), Err(Error::Invalid(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn credentials_never_show() {
        let url = parse_base_url("http://admin:s3cret@ui:8080").expect("url");
        assert_eq!(redact(&url), "http://ui:8080/");
        let client = RestClient::new("http://admin:s3cret@ui:8080").expect("client");
        assert!(!format!("{client:?}").contains("s3cret"));
        assert_eq!(client.base_url(), "http://ui:8080/");
        assert_eq!(
            redact_raw("http://admin:s3cret@ui :8080"),
            "http://ui :8080"
        );
        assert_eq!(redact_raw("no credentials"), "no credentials");
        match parse_base_url("http://admin:s3cret@ui :8080") {
            Err(Error::Invalid(m)) => assert!(!m.contains("s3cret"), "{m}"),
            other => panic!("{other:?}"),
        }
        match parse_base_url("ftp://admin:s3cret@ui") {
            Err(Error::Invalid(m)) => assert!(!m.contains("s3cret"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_line_trims_and_truncates() {
        assert_eq!(
            first_line("\n  java.io.IOException: x \n\tat y"),
            "java.io.IOException: x"
        );
        let long = "é".repeat(400);
        let cut = first_line(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn ids_that_are_not_one_segment_are_invalid() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(check_id(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(check_id("wordcount-1-1700000000").is_ok());
    }

    #[test]
    fn error_bodies_map_to_storm_errors() {
        let e = storm_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":"500 Server Error","errorMessage":"boom\n\tat x"}"#,
        );
        match e {
            Error::Storm {
                status,
                error,
                message,
            } => {
                assert_eq!(
                    (status, error.as_str(), message.as_str()),
                    (500, "500 Server Error", "boom")
                );
            }
            other => panic!("{other:?}"),
        }
        match storm_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>") {
            Error::Storm { status, error, .. } => {
                assert_eq!((status, error.as_str()), (502, "502 Bad Gateway"));
            }
            other => panic!("{other:?}"),
        }
        match storm_error(StatusCode::SERVICE_UNAVAILABLE, b"no healthy upstream") {
            Error::Storm { message, .. } => assert_eq!(message, "no healthy upstream"),
            other => panic!("{other:?}"),
        }
    }
}
