//! A mocked Kubernetes API server for reconcile tests (kube-rs's `tower-test` pattern): each
//! test scripts the exact requests the reconciler must make and the responses it gets.

#![allow(dead_code, missing_docs)]

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the reconciler made.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// The scripted server side of a mocked client.
pub struct ApiServer {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    /// Events the reconciler published, as (type, reason, note).
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

fn response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// A Kubernetes `Status` for an error response.
pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
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

impl ApiServer {
    /// Waits for the next request that is not an Event (Events are recorded and answered).
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
            if path.contains("/apis/events.k8s.io/") {
                self.events.push((
                    body["type"].as_str().unwrap_or_default().to_string(),
                    body["reason"].as_str().unwrap_or_default().to_string(),
                    body["note"].as_str().unwrap_or_default().to_string(),
                ));
                send.send_response(response(StatusCode::CREATED, &body));
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
        send.send_response(response(
            StatusCode::from_u16(status).expect("status"),
            &body,
        ));
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
        send.send_response(response(StatusCode::OK, &stored));
        seen
    }

    /// Serves Event requests until `task` ends and returns its output; any other request fails the test.
    pub async fn finish<T>(&mut self, mut task: tokio::task::JoinHandle<T>) -> T {
        loop {
            tokio::select! {
                out = &mut task => return out.expect("reconcile task panicked"),
                req = self.handle.next_request() => {
                    let Some((req, send)) = req else {
                        return task.await.expect("reconcile task panicked");
                    };
                    let path = req.uri().path().to_string();
                    assert!(
                        path.contains("/apis/events.k8s.io/"),
                        "unexpected request {} {}", req.method(), req.uri()
                    );
                    let bytes = req.into_body().collect_bytes().await.expect("body");
                    let body: Value = serde_json::from_slice(&bytes).expect("json body");
                    self.events.push((
                        body["type"].as_str().unwrap_or_default().to_string(),
                        body["reason"].as_str().unwrap_or_default().to_string(),
                        body["note"].as_str().unwrap_or_default().to_string(),
                    ));
                    send.send_response(response(StatusCode::CREATED, &body));
                }
            }
        }
    }

    /// Asserts that no request arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.handle.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
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

/// Merges `extra` into `target` (objects key by key).
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

/// A ScalerConfig `namespace/name` (uid `uid`) for the machine's local Redis on 127.0.0.1:6379.
pub fn local_redis(namespace: &str, name: &str, uid: &str) -> workerpool_api::ScalerConfig {
    serde_json::from_value(json!({
        "apiVersion": "quickube.com/v1alpha1", "kind": "ScalerConfig",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 1},
        "spec": {"type": "redis", "config": {"host": "127.0.0.1", "port": "6379"}}
    }))
    .expect("a ScalerConfig")
}
