//! A Storm UI REST API for the end-to-end suite, served from Storm's real response shapes
//! (`crates/storm/tests/fixtures`, copied from Storm 2.8.8's own code): one leader Nimbus, two
//! supervisors, and the topologies a scenario adds. It records every request, answers an
//! unknown id (or a name) with Storm's HTTP 500 error, and follows Storm's state rules:
//! activate/deactivate are refused while REBALANCING or KILLED, and a killed topology drops
//! out of the list after the kill's wait (shortened to at most 2 s here).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

const CLUSTER_SUMMARY: &str = include_str!("../../../storm/tests/fixtures/cluster-summary.json");
const NIMBUS_SUMMARY: &str = include_str!("../../../storm/tests/fixtures/nimbus-summary.json");
const SUPERVISOR_SUMMARY: &str =
    include_str!("../../../storm/tests/fixtures/supervisor-summary.json");
const TOPOLOGY_SUMMARY: &str = include_str!("../../../storm/tests/fixtures/topology-summary.json");
const TOPOLOGY_DETAIL: &str = include_str!("../../../storm/tests/fixtures/topology-detail.json");
const ERROR: &str = include_str!("../../../storm/tests/fixtures/error.json");

/// The leader the fixtures name, as the cluster's status should report it.
pub const LEADER: &str = "storm-nimbus-0.storm-nimbus.storm.svc.cluster.local:6627";

#[derive(Default)]
struct UiState {
    /// name → (id, status, workers)
    topologies: BTreeMap<String, (String, String, i64)>,
    /// name → executorsTotal, where a test set it (else the recorded response's).
    executors: BTreeMap<String, i64>,
    /// name → the load `/topology/{id}` reports, where a test set it.
    load: BTreeMap<String, Load>,
    requests: Vec<String>,
}

/// The load a topology reports in `/topology/{id}` (any `window`): its busiest bolt's
/// capacity and execute latency, and its spout's complete latency and ack rate (acked over
/// the 600 s window).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Capacity of the bolt `count` (the other bolt stays at the recorded 0.005).
    pub capacity: f64,
    /// Execute latency of `count`, ms.
    pub execute_latency_ms: f64,
    /// Complete latency of the spout, ms.
    pub complete_latency_ms: f64,
    /// Tuple trees acked per second.
    pub acked_per_second: f64,
}

/// The served UI.
#[derive(Clone)]
pub struct StormUi {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    state: Arc<Mutex<UiState>>,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a fixture")
}

fn json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn not_found(id: &str) -> Response {
    let mut body = parse(ERROR);
    body["errorMessage"] = Value::String(format!("Unable to fetch topo conf for topo id {id}"));
    json(StatusCode::INTERNAL_SERVER_ERROR, &body)
}

impl StormUi {
    /// Starts the UI on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let state: Arc<Mutex<UiState>> = Arc::default();
        let app = Router::new()
            .route("/api/v1/cluster/summary", get(cluster_summary))
            .route(
                "/api/v1/nimbus/summary",
                get(|State(s): State<Arc<Mutex<UiState>>>| async move {
                    record(&s, "GET /api/v1/nimbus/summary");
                    json(StatusCode::OK, &parse(NIMBUS_SUMMARY))
                }),
            )
            .route(
                "/api/v1/supervisor/summary",
                get(|State(s): State<Arc<Mutex<UiState>>>| async move {
                    record(&s, "GET /api/v1/supervisor/summary");
                    json(StatusCode::OK, &parse(SUPERVISOR_SUMMARY))
                }),
            )
            .route("/api/v1/topology/summary", get(topology_summary))
            .route("/api/v1/topology/{id}", get(topology_detail))
            .route("/api/v1/topology/{id}/{op}", post(operation))
            .route("/api/v1/topology/{id}/{op}/{wait}", post(operation_wait))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Storm UI");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// Adds a topology as Nimbus would after a submission; returns its id.
    pub fn add(&self, name: &str, status: &str, workers: i64) -> String {
        let id = format!("{name}-1-1700000000");
        let mut state = self.state.lock().expect("lock");
        state
            .topologies
            .insert(name.into(), (id.clone(), status.into(), workers));
        id
    }

    /// Reports `executors` as the `executorsTotal` of topology `name`.
    pub fn set_executors(&self, name: &str, executors: i64) {
        let mut state = self.state.lock().expect("lock");
        state.executors.insert(name.into(), executors);
    }

    /// Reports `load` for topology `name` from now on.
    pub fn set_load(&self, name: &str, load: Load) {
        let mut state = self.state.lock().expect("lock");
        state.load.insert(name.into(), load);
    }

    /// Storm's status of `name`, if listed.
    pub fn status(&self, name: &str) -> Option<String> {
        let state = self.state.lock().expect("lock");
        state.topologies.get(name).map(|(_, s, _)| s.clone())
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("lock").requests.clone()
    }
}

fn record(state: &Arc<Mutex<UiState>>, request: &str) {
    state.lock().expect("lock").requests.push(request.into());
}

async fn cluster_summary(State(s): State<Arc<Mutex<UiState>>>) -> Response {
    record(&s, "GET /api/v1/cluster/summary");
    let mut body = parse(CLUSTER_SUMMARY);
    body["topologies"] = Value::from(s.lock().expect("lock").topologies.len());
    json(StatusCode::OK, &body)
}

async fn topology_summary(State(s): State<Arc<Mutex<UiState>>>) -> Response {
    record(&s, "GET /api/v1/topology/summary");
    let mut body = parse(TOPOLOGY_SUMMARY);
    let template = body["topologies"][0].clone();
    let state = s.lock().expect("lock");
    let list: Vec<Value> = state
        .topologies
        .iter()
        .map(|(name, (id, status, workers))| {
            let mut t = template.clone();
            t["id"] = Value::from(id.as_str());
            t["encodedId"] = Value::from(id.as_str());
            t["name"] = Value::from(name.as_str());
            t["status"] = Value::from(status.as_str());
            t["workersTotal"] = Value::from(*workers);
            if let Some(executors) = state.executors.get(name) {
                t["executorsTotal"] = Value::from(*executors);
            }
            t
        })
        .collect();
    body["topologies"] = Value::Array(list);
    json(StatusCode::OK, &body)
}

fn find(state: &UiState, id: &str) -> Option<(String, String, i64)> {
    state
        .topologies
        .iter()
        .find(|(_, (i, _, _))| i == id)
        .map(|(name, (_, status, workers))| (name.clone(), status.clone(), *workers))
}

async fn topology_detail(State(s): State<Arc<Mutex<UiState>>>, Path(id): Path<String>) -> Response {
    record(&s, &format!("GET /api/v1/topology/{id}"));
    let state = s.lock().expect("lock");
    let Some((name, status, workers)) = find(&state, &id) else {
        return not_found(&id);
    };
    let mut body = parse(TOPOLOGY_DETAIL);
    body["id"] = Value::from(id.as_str());
    body["encodedId"] = Value::from(id.as_str());
    body["name"] = Value::from(name.as_str());
    body["status"] = Value::from(status);
    body["workersTotal"] = Value::from(workers);
    if let Some(executors) = state.executors.get(&name) {
        body["executorsTotal"] = Value::from(*executors);
    }
    if let Some(load) = state.load.get(&name) {
        // Storm writes these as `%.3f` text; the counts over the 600 s window.
        let count = &mut body["bolts"][1];
        count["capacity"] = Value::from(format!("{:.3}", load.capacity));
        count["executeLatency"] = Value::from(format!("{:.3}", load.execute_latency_ms));
        let spout = &mut body["spouts"][0];
        spout["completeLatency"] = Value::from(format!("{:.3}", load.complete_latency_ms));
        spout["acked"] = Value::from((load.acked_per_second * 600.0).round() as i64);
    }
    json(StatusCode::OK, &body)
}

async fn operation(
    State(s): State<Arc<Mutex<UiState>>>,
    Path((id, op)): Path<(String, String)>,
) -> Response {
    act(s, id, op, None).await
}

async fn operation_wait(
    State(s): State<Arc<Mutex<UiState>>>,
    Path((id, op, wait)): Path<(String, String, u64)>,
) -> Response {
    act(s, id, op, Some(wait)).await
}

async fn act(s: Arc<Mutex<UiState>>, id: String, op: String, wait: Option<u64>) -> Response {
    let path = match wait {
        Some(w) => format!("POST /api/v1/topology/{id}/{op}/{w}"),
        None => format!("POST /api/v1/topology/{id}/{op}"),
    };
    record(&s, &path);
    let mut state = s.lock().expect("lock");
    let Some((name, status, _)) = find(&state, &id) else {
        return not_found(&id);
    };
    let refused = matches!(status.as_str(), "REBALANCING" | "KILLED") && op != "kill";
    if refused {
        let body = serde_json::json!({"error": "500 Server Error",
            "errorMessage": format!("org.apache.storm.generated.NotAliveException: {name} is {status}")});
        return json(StatusCode::INTERNAL_SERVER_ERROR, &body);
    }
    let next = match op.as_str() {
        "activate" => "ACTIVE",
        "deactivate" => "INACTIVE",
        "kill" => "KILLED",
        "rebalance" => "REBALANCING",
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "404 Not Found", "errorMessage": op}),
            );
        }
    };
    if let Some(entry) = state.topologies.get_mut(&name) {
        entry.1 = next.into();
    }
    drop(state);
    if op == "kill" {
        let s = s.clone();
        let wait = Duration::from_secs(wait.unwrap_or(0).min(2));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            s.lock().expect("lock").topologies.remove(&name);
        });
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"topologyOperation": op, "topologyId": id, "status": "success"}),
    )
}
