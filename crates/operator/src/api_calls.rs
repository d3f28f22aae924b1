//! Records the Kubernetes API calls of `run` (`--record-api-calls FILE`), so that the chart's
//! RBAC can be checked against what the operator really asks for (the end-to-end suite's
//! `zz_rbac_matches_recorded_calls`).
//!
//! Every request the clients send — the controllers', the watches', the Event recorder's and
//! the leader election's, since they share one [`RecordLayer`] — is mapped to the verb and
//! resource an RBAC rule names ([`classify`]) and written to FILE as one line, each distinct
//! line once, at once (the process may be killed at any moment):
//!
//! ```text
//! VERB GROUP RESOURCE[/SUBRESOURCE] SCOPE     e.g.  patch storm.apache.org stormworkerpools/status namespace
//! VERB nonresource PATH -                     e.g.  get nonresource /version -
//! ```
//!
//! `GROUP` is `""` for the core group; `SCOPE` is `namespace` for a request inside one
//! namespace and `cluster` otherwise (a cluster-scoped resource, or a list or watch across all
//! namespaces: both need a ClusterRole). A server-side apply that creates its object (answered
//! `201 Created`) is recorded as `patch` and `create`: the API server authorizes both then.
//! Without the flag the client is built exactly as before, with no recording layer.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::ClientBuilder;

/// The content type of a server-side apply patch.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// One API call as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiCall {
    /// A call on a resource (or one of its subresources).
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
        verb: String,
        /// API group; empty for the core group.
        group: String,
        /// Resource, with `/subresource` when there is one.
        resource: String,
        /// Whether the call is inside one namespace (a Role can grant it).
        namespaced: bool,
    },
    /// A call on a non-resource URL (`/version`, discovery, ...).
    NonResource {
        /// The HTTP method in lower case.
        verb: String,
        /// The path.
        path: String,
    },
}

impl ApiCall {
    /// A resource call (for tables of cases).
    pub fn resource(verb: &str, group: &str, resource: &str, namespaced: bool) -> Self {
        Self::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespaced,
        }
    }

    /// The same call with another verb.
    fn with_verb(&self, verb: &str) -> Self {
        let mut call = self.clone();
        match &mut call {
            Self::Resource { verb: v, .. } | Self::NonResource { verb: v, .. } => {
                *v = verb.into();
            }
        }
        call
    }

    /// Parses a line written by the recorder (the inverse of `Display`).
    pub fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [verb, group, resource, scope] = fields.as_slice() else {
            return None;
        };
        if *group == "nonresource" {
            return Some(Self::NonResource {
                verb: (*verb).into(),
                path: (*resource).into(),
            });
        }
        let group = if *group == "\"\"" { "" } else { group };
        let namespaced = match *scope {
            "namespace" => true,
            "cluster" => false,
            _ => return None,
        };
        Some(Self::resource(verb, group, resource, namespaced))
    }
}

impl fmt::Display for ApiCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Resource {
                verb,
                group,
                resource,
                namespaced,
            } => {
                let group = if group.is_empty() { "\"\"" } else { group };
                let scope = if *namespaced { "namespace" } else { "cluster" };
                write!(f, "{verb} {group} {resource} {scope}")
            }
            Self::NonResource { verb, path } => write!(f, "{verb} nonresource {path} -"),
        }
    }
}

/// Maps an HTTP request to the RBAC verb and resource the API server authorizes it as, the
/// way the API server's `RequestInfoFactory` does: `/api/v1/...` is the core group,
/// `/apis/GROUP/VERSION/...` a named one; `namespaces/NS/` scopes the rest (except the
/// namespace's own `status` and `finalize`); `RESOURCE/NAME/SUBRESOURCE`. GET is `get` with a
/// name, else `watch` with `watch=true` (or `1`), else `list`; POST `create`; PUT `update`;
/// PATCH `patch`; DELETE `delete` with a name, else `deletecollection`. Anything else under
/// `/api` or `/apis` without a resource (discovery), and every other path, is a non-resource
/// call.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> ApiCall {
    let non_resource = || ApiCall::NonResource {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
    };
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, mut rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return non_resource(),
    };
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest = &rest[1..];
    }
    let mut namespaced = false;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespaced = true;
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        } else {
            // The namespace object itself (cluster-scoped), or its status/finalize.
            namespaced = false;
        }
    }
    let (resource, name, subresource) = match rest {
        [] => return non_resource(),
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, subresource, ..] => (*resource, Some(*name), Some(*subresource)),
    };
    let watch_param = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    let verb = match *method {
        Method::GET | Method::HEAD if legacy_watch || watch_param => "watch",
        Method::GET | Method::HEAD if name.is_some() => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => return non_resource(),
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    ApiCall::resource(verb, group, &resource, namespaced)
}

/// Appends each distinct call to a file, once, as soon as it is seen.
struct Sink {
    path: PathBuf,
    state: Mutex<(File, HashSet<String>)>,
}

impl Sink {
    fn record(&self, call: &ApiCall) {
        let line = call.to_string();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (file, seen) = &mut *state;
        if seen.contains(&line) {
            return;
        }
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record an API call");
            return;
        }
        seen.insert(line);
    }
}

/// The tower layer that records every request of a [`Client`] (see the module documentation).
#[derive(Clone)]
pub struct RecordLayer {
    sink: Arc<Sink>,
}

impl RecordLayer {
    /// Records into `path`, appending (a restarted operator adds to the same file).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            sink: Arc::new(Sink {
                path: path.to_path_buf(),
                state: Mutex::new((file, HashSet::new())),
            }),
        })
    }
}

impl<S> tower::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            sink: self.sink.clone(),
        }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    sink: Arc<Sink>,
}

impl<S, B, RB> tower::Service<Request<B>> for Record<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let uri = request.uri();
        let call = classify(request.method(), uri.path(), uri.query());
        self.sink.record(&call);
        let apply = request.method() == Method::PATCH
            && request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(APPLY_PATCH.as_bytes()));
        let response = self.inner.call(request);
        if !apply {
            return response.boxed();
        }
        let sink = self.sink.clone();
        async move {
            let response = response.await?;
            if response.status() == StatusCode::CREATED {
                sink.record(&call.with_verb("create"));
            }
            Ok(response)
        }
        .boxed()
    }
}

/// The operator's clients, from `KUBECONFIG` or the in-cluster config as
/// [`Client::try_default`] builds it, both recording to `record` when given ([`RecordLayer`]):
/// the first, for the controllers, with at most `max_requests` requests in flight (watches
/// excepted, see [`crate::limit`]); the second, for the leader-election Lease, without that
/// bound, so that a renewal never waits behind a burst of reconciles.
pub async fn clients(
    record: Option<&Path>,
    max_requests: usize,
) -> anyhow::Result<(Client, Client)> {
    use anyhow::Context as _;
    let config = kube::Config::infer().await?;
    let limit = crate::limit::LimitLayer::new(max_requests);
    let Some(path) = record else {
        let lease = ClientBuilder::try_from(config.clone())?.build();
        return Ok((
            ClientBuilder::try_from(config)?.with_layer(&limit).build(),
            lease,
        ));
    };
    let layer = RecordLayer::open(path)
        .with_context(|| format!("cannot open {} to record API calls", path.display()))?;
    tracing::info!(file = %path.display(), "recording the API calls");
    let lease = ClientBuilder::try_from(config.clone())?
        .with_layer(&layer)
        .build();
    Ok((
        ClientBuilder::try_from(config)?
            .with_layer(&limit)
            .with_layer(&layer)
            .build(),
        lease,
    ))
}
