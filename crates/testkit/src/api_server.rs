//! A mocked Kubernetes API server for reconcile tests (kube-rs's `tower-test` pattern): each
//! test scripts the exact requests the code under test must make and the responses it gets.
//! Events (`events.k8s.io`) are answered and recorded on the side, in [`ApiServer::events`].

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// The operator's field manager, which every [`ApiServer::expect_operator_apply`] must carry.
pub const OPERATOR_MANAGER: &str = "workerpool-operator";

/// One request the code under test made.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The URL path, e.g. `/api/v1/namespaces/team-a/configmaps/x`.
    pub path: String,
    /// The query string without `?` (empty when there is none).
    pub query: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

impl Seen {
    /// The `fieldManager` of the request (empty when none) and whether it forces (`force=true`).
    pub fn field_manager(&self) -> (String, bool) {
        let params: Vec<&str> = self.query.split('&').collect();
        let manager = params
            .iter()
            .find_map(|p| p.strip_prefix("fieldManager="))
            .unwrap_or_default()
            .to_string();
        (manager, params.contains(&"force=true"))
    }
}

/// The scripted server side of a mocked client.
pub struct ApiServer {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    /// Events published so far, as (type, reason, note).
    pub events: Vec<(String, String, String)>,
}

/// A client whose every request goes to the returned [`ApiServer`].
pub fn mock() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Client::new(service, "default"),
        ApiServer {
            handle,
            events: Vec::new(),
        },
    )
}

/// A JSON response with `status` and `body`.
pub fn response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// A Kubernetes `Status` for an error response.
pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
}

/// The API server's 404 (`NotFound`, "not found").
pub fn not_found() -> Value {
    status_error(404, "NotFound", "not found")
}

/// The API server's refusal to create `kind` (plural) `name` in `namespace` while that
/// namespace is being deleted (403 with the cause `NamespaceTerminating`).
pub fn namespace_terminating(namespace: &str, kind: &str, name: &str) -> Value {
    let mut refused = status_error(
        403,
        "Forbidden",
        &format!(
            "{kind} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
        ),
    );
    refused["details"] = json!({"name": name, "kind": kind,
        "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]});
    refused
}

/// Merges `extra` into `target` (objects key by key; anything else, arrays included, replaced).
pub fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(t), Value::Object(e)) => {
            for (k, v) in e {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, e) => *t = e,
    }
}

fn is_event(path: &str) -> bool {
    path.contains("/apis/events.k8s.io/")
}

impl ApiServer {
    /// Records the Event `body` and answers it.
    fn answer_event(&mut self, body: Value, send: tower_test::mock::SendResponse<Response<Body>>) {
        self.events.push((
            body["type"].as_str().unwrap_or_default().to_string(),
            body["reason"].as_str().unwrap_or_default().to_string(),
            body["note"].as_str().unwrap_or_default().to_string(),
        ));
        send.send_response(response(201, &body));
    }

    /// Waits (5 s at most) for the next request that is not an Event (Events are recorded and
    /// answered); the caller answers it through the returned handle.
    pub async fn next(&mut self) -> (Seen, tower_test::mock::SendResponse<Response<Body>>) {
        loop {
            let (req, send) =
                tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                    .await
                    .expect("the reconciler made no further request within 5 s")
                    .expect("the client was dropped");
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("json body")
            };
            if is_event(&path) {
                self.answer_event(body, send);
                continue;
            }
            return (
                Seen {
                    method,
                    path,
                    query,
                    body,
                },
                send,
            );
        }
    }

    /// Expects `method path` and answers `status` with `body`; returns what was sent.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, body: Value) -> Seen {
        let (seen, send) = self.next().await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, path),
            "unexpected request (query {:?}, body {})",
            seen.query,
            seen.body
        );
        send.send_response(response(status, &body));
        seen
    }

    /// Expects a server-side apply (`PATCH` with the operator's field manager) to `path` and
    /// answers with the applied object plus `extra` merged in (e.g. a status).
    pub async fn expect_apply(&mut self, path: &str, extra: Value) -> Seen {
        let (seen, send) = self.next().await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("PATCH", path),
            "unexpected request (body {})",
            seen.body
        );
        assert!(
            seen.query.contains("fieldManager=workerpool-operator"),
            "apply without the operator's field manager: {}",
            seen.query
        );
        assert!(
            seen.query.contains("force=true"),
            "apply must force: {}",
            seen.query
        );
        assert!(
            seen.query.contains("fieldValidation=Ignore"),
            "apply must spare the server its strict second parse: {}",
            seen.query
        );
        let mut stored = seen.body.clone();
        let meta = stored["metadata"].as_object_mut().expect("metadata");
        meta.insert(
            "creationTimestamp".into(),
            json!(k8s_openapi::jiff::Timestamp::now().to_string()),
        );
        meta.insert("resourceVersion".into(), json!("1"));
        meta.insert("generation".into(), json!(1));
        merge(&mut stored, extra);
        send.send_response(response(200, &stored));
        seen
    }

    /// [`expect_apply`](Self::expect_apply) whose field manager is exactly the operator's own
    /// ([`OPERATOR_MANAGER`]), forced.
    pub async fn expect_operator_apply(&mut self, path: &str, extra: Value) -> Seen {
        let seen = self.expect_apply(path, extra).await;
        assert_eq!(
            seen.field_manager(),
            (OPERATOR_MANAGER.to_string(), true),
            "{path}: {}",
            seen.query
        );
        seen
    }

    /// Serves Event requests until `task` ends and returns its output; any other request fails the test.
    pub async fn finish<T>(&mut self, mut task: tokio::task::JoinHandle<T>) -> T {
        loop {
            tokio::select! {
                out = &mut task => {
                    let out = out.expect("reconcile task panicked");
                    // Events leave in the background: answer those still on their way.
                    self.answer_late_events(Duration::from_millis(50)).await;
                    return out;
                }
                req = self.handle.next_request() => {
                    let Some((req, send)) = req else {
                        return task.await.expect("reconcile task panicked");
                    };
                    self.answer_if_event(req, send).await;
                }
            }
        }
    }

    /// Asserts that no request but Events (recorded and answered) arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some((req, send))) =
            tokio::time::timeout_at(until, self.handle.next_request()).await
        {
            self.answer_if_event(req, send).await;
        }
    }

    /// Answers the Events still on their way (they leave in the background), until none has
    /// come for 50 ms; any other request panics. Call it before reading [`ApiServer::events`].
    pub async fn settle_events(&mut self) -> &[(String, String, String)] {
        self.answer_late_events(Duration::from_millis(50)).await;
        &self.events
    }

    /// Answers the Events that arrive until none has come for `quiet`.
    async fn answer_late_events(&mut self, quiet: Duration) {
        while let Ok(Some((req, send))) =
            tokio::time::timeout(quiet, self.handle.next_request()).await
        {
            self.answer_if_event(req, send).await;
        }
    }

    /// Records and answers the Event `req`; panics on any other request.
    async fn answer_if_event(
        &mut self,
        req: Request<Body>,
        send: tower_test::mock::SendResponse<Response<Body>>,
    ) {
        assert!(
            is_event(req.uri().path()),
            "unexpected request {} {}",
            req.method(),
            req.uri()
        );
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body: Value = serde_json::from_slice(&bytes).expect("json body");
        self.answer_event(body, send);
    }

    /// Finishes `task` and checks that the reconcile ended quietly: `Ok(await_change)` (nothing
    /// to retry), no Warning Event, and no request after it.
    pub async fn expect_quiet_end<E: std::fmt::Debug>(
        &mut self,
        task: tokio::task::JoinHandle<Result<kube::runtime::controller::Action, E>>,
    ) {
        let action = self
            .finish(task)
            .await
            .expect("not an error: nothing to retry");
        assert_eq!(action, kube::runtime::controller::Action::await_change());
        assert!(
            self.events.iter().all(|e| e.0 != "Warning"),
            "no Warning: {:?}",
            self.events
        );
        self.expect_silence(Duration::from_millis(100)).await;
    }
}
