//! A fake Storm UI REST API over HTTP, served from Storm's real response shapes
//! ([`fixtures`], recorded from Storm 2.8.8's own code) on a free port of 127.0.0.1.
//!
//! It serves one leader Nimbus, two supervisors, and the topologies a test adds; it records
//! every request (the path as sent, still percent-encoded), answers an unknown id (or a name)
//! with Storm's HTTP 500 error, and follows Storm's state rules: activate/deactivate are refused
//! while REBALANCING or KILLED, operations change the status, and a killed topology drops out of
//! the list after the kill's wait (shortened, see [`Config::drop_killed_after`]). The UI may also
//! sit behind a path prefix (`/storm/api/v1/...`). [`Faults`] make it answer like a broken UI;
//! [`Config`] replaces the response shapes (e.g. a bench's smaller ones).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use workerpool_storm::RestClient;

/// The recorded Storm 2.8.8 responses of `crates/storm/tests/fixtures` (see its README).
pub mod fixtures {
    /// `GET /api/v1/cluster/summary`.
    pub const CLUSTER_SUMMARY: &str =
        include_str!("../../storm/tests/fixtures/cluster-summary.json");
    /// `GET /api/v1/nimbus/summary`: one leader.
    pub const NIMBUS_SUMMARY: &str = include_str!("../../storm/tests/fixtures/nimbus-summary.json");
    /// `GET /api/v1/nimbus/summary` with an offline seed (its port as text).
    pub const NIMBUS_SUMMARY_OFFLINE_SEED: &str =
        include_str!("../../storm/tests/fixtures/nimbus-summary-offline-seed.json");
    /// `GET /api/v1/supervisor/summary`: two supervisors.
    pub const SUPERVISOR_SUMMARY: &str =
        include_str!("../../storm/tests/fixtures/supervisor-summary.json");
    /// `GET /api/v1/topology/summary`: `wordcount`, ACTIVE.
    pub const TOPOLOGY_SUMMARY: &str =
        include_str!("../../storm/tests/fixtures/topology-summary.json");
    /// `GET /api/v1/topology/{id}` of `wordcount`.
    pub const TOPOLOGY_DETAIL: &str =
        include_str!("../../storm/tests/fixtures/topology-detail.json");
    /// An unknown topology id (Storm 2.8.6 and later).
    pub const ERROR: &str = include_str!("../../storm/tests/fixtures/error.json");
    /// An unknown topology id before Storm 2.8.6 (a stack trace).
    pub const ERROR_PRE_2_8_6: &str =
        include_str!("../../storm/tests/fixtures/error-pre-2.8.6.json");
    /// No Nimbus leader found.
    pub const ERROR_NO_NIMBUS: &str =
        include_str!("../../storm/tests/fixtures/error-no-nimbus.json");
}

/// The leader the fixtures name, as a StormCluster's status reports it.
pub const LEADER: &str = "storm-nimbus-0.storm-nimbus.storm.svc.cluster.local:6627";

/// The topology id the error fixtures name.
const FIXTURE_ERROR_ID: &str = "wordcount-9-1700000000";

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

/// How the UI answers: its response shapes and the rules it follows. The default is Storm's
/// recorded fixtures and rules.
#[derive(Clone, Debug)]
pub struct Config {
    /// `GET /cluster/summary`; `topologies` is set to the number of topologies.
    pub cluster_summary: Value,
    /// `GET /nimbus/summary`.
    pub nimbus_summary: Value,
    /// `GET /supervisor/summary`.
    pub supervisor_summary: Value,
    /// `GET /topology/summary`; its first topology is the template of every listed one.
    pub topology_summary: Value,
    /// `GET /topology/{id}`, the template of every topology's detail.
    pub topology_detail: Value,
    /// An unknown id's error names the id asked for, as Storm's does (`false`: the fixture's
    /// text, verbatim).
    pub name_unknown_ids: bool,
    /// A killed topology leaves the list after the kill's wait, shortened to at most this
    /// (`None`: it stays KILLED until [`StormUi::remove`]).
    pub drop_killed_after: Option<Duration>,
    /// Uptimes grow with the clock from the template's, as Storm's do (`false`: frozen).
    pub uptimes_grow: bool,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a fixture")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_summary: parse(fixtures::CLUSTER_SUMMARY),
            nimbus_summary: parse(fixtures::NIMBUS_SUMMARY),
            supervisor_summary: parse(fixtures::SUPERVISOR_SUMMARY),
            topology_summary: parse(fixtures::TOPOLOGY_SUMMARY),
            topology_detail: parse(fixtures::TOPOLOGY_DETAIL),
            name_unknown_ids: true,
            drop_killed_after: Some(Duration::from_secs(2)),
            uptimes_grow: false,
        }
    }
}

impl Config {
    /// The fixtures answered as recorded: errors verbatim, killed topologies kept listed.
    pub fn recorded() -> Self {
        Self {
            name_unknown_ids: false,
            drop_killed_after: None,
            ..Self::default()
        }
    }
}

/// Ways the UI answers like a broken one; a test changes them while it runs
/// ([`StormUi::faults`]).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// `/nimbus/summary` answers with the offline-seed fixture.
    pub offline_seed: bool,
    /// Every request answers `error-no-nimbus.json`.
    pub no_nimbus: bool,
    /// Unknown ids answer `error-pre-2.8.6.json` instead of `error.json`.
    pub pre_2_8_6: bool,
    /// Every request answers 502 with an HTML page, like a proxy with no upstream.
    pub proxy_502: bool,
    /// Every request answers 200 with a body that is not JSON.
    pub garbage: bool,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// The `status` of the operations' answers (default `success`; any other changes nothing).
    pub operation_status: Option<String>,
}

/// One request as the UI got it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// `GET` or `POST`.
    pub method: String,
    /// The path exactly as sent (still percent-encoded).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The body's length.
    pub body_len: usize,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl Recorded {
    /// `path?query`, or the path alone.
    pub fn target(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Topology {
    id: String,
    status: String,
    workers: i64,
    executors: Option<i64>,
    load: Option<Load>,
    added: Instant,
}

struct UiState {
    config: Config,
    faults: Faults,
    /// By name.
    topologies: BTreeMap<String, Topology>,
    requests: Vec<Recorded>,
}

/// The served UI.
#[derive(Clone)]
pub struct StormUi {
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<Mutex<UiState>>,
}

impl StormUi {
    /// Starts the UI with Storm's recorded shapes and rules ([`Config::default`]), no topology.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// Starts the UI answering as `config` says, with no topology.
    pub async fn start_with(config: Config) -> Self {
        let state = Arc::new(Mutex::new(UiState {
            config,
            faults: Faults::default(),
            topologies: BTreeMap::new(),
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Storm UI");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            addr,
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UiState> {
        self.state.lock().expect("lock")
    }

    /// A REST client of this UI.
    pub fn client(&self) -> RestClient {
        RestClient::new(&self.url).expect("client")
    }

    /// Adds (or replaces) topology `name` as Nimbus would after a submission; returns its id,
    /// `<name>-1-1700000000`.
    pub fn add(&self, name: &str, status: &str, workers: i64) -> String {
        let id = format!("{name}-1-1700000000");
        self.add_with_id(name, &id, status, workers);
        id
    }

    /// Adds (or replaces) topology `name` under the id `id`.
    pub fn add_with_id(&self, name: &str, id: &str, status: &str, workers: i64) {
        self.lock().topologies.insert(
            name.into(),
            Topology {
                id: id.into(),
                status: status.into(),
                workers,
                executors: None,
                load: None,
                added: Instant::now(),
            },
        );
    }

    /// Sets Storm's status of topology `name` (e.g. `REBALANCING`).
    pub fn set_status(&self, name: &str, status: &str) {
        if let Some(t) = self.lock().topologies.get_mut(name) {
            t.status = status.into();
        }
    }

    /// Takes topology `name` out of the list, as Nimbus does some time after a kill.
    pub fn remove(&self, name: &str) {
        self.lock().topologies.remove(name);
    }

    /// Reports `workers` as the workers Storm placed for topology `name`.
    pub fn set_workers(&self, name: &str, workers: i64) {
        if let Some(t) = self.lock().topologies.get_mut(name) {
            t.workers = workers;
        }
    }

    /// Reports `executors` as the `executorsTotal` of topology `name`.
    pub fn set_executors(&self, name: &str, executors: i64) {
        if let Some(t) = self.lock().topologies.get_mut(name) {
            t.executors = Some(executors);
        }
    }

    /// Reports `load` for topology `name` from now on.
    pub fn set_load(&self, name: &str, load: Load) {
        if let Some(t) = self.lock().topologies.get_mut(name) {
            t.load = Some(load);
        }
    }

    /// Changes the [`Faults`].
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.lock().faults);
    }

    /// Storm's status of `name`, if listed.
    pub fn status(&self, name: &str) -> Option<String> {
        self.lock().topologies.get(name).map(|t| t.status.clone())
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Every request so far, in full.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The paths of every request so far.
    pub fn paths(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body.to_string())
}

fn error(body: &Value) -> Response {
    json_response(StatusCode::INTERNAL_SERVER_ERROR, body.to_string())
}

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

impl UiState {
    fn find(&self, id: &str) -> Option<(String, Topology)> {
        self.topologies
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(name, t)| (name.clone(), t.clone()))
    }

    /// `template` as topology `name`'s entry (summary or detail).
    fn fill(&self, template: &Value, name: &str, t: &Topology) -> Value {
        let mut v = template.clone();
        v["id"] = Value::from(t.id.as_str());
        v["encodedId"] = Value::from(t.id.as_str());
        v["name"] = Value::from(name);
        v["status"] = Value::from(t.status.as_str());
        v["workersTotal"] = Value::from(t.workers);
        if let Some(executors) = t.executors {
            v["executorsTotal"] = Value::from(executors);
        }
        if self.config.uptimes_grow {
            let base = v["uptimeSeconds"].as_u64().unwrap_or_default();
            v["uptimeSeconds"] = Value::from(base + t.added.elapsed().as_secs());
        }
        v
    }

    fn cluster_summary(&self) -> Value {
        let mut body = self.config.cluster_summary.clone();
        body["topologies"] = Value::from(self.topologies.len());
        body
    }

    fn topology_summary(&self) -> Value {
        let mut body = self.config.topology_summary.clone();
        let template = body["topologies"][0].clone();
        let list: Vec<Value> = self
            .topologies
            .iter()
            .map(|(name, t)| self.fill(&template, name, t))
            .collect();
        body["topologies"] = Value::Array(list);
        body
    }

    fn topology_detail(&self, name: &str, t: &Topology) -> Value {
        let mut body = self.fill(&self.config.topology_detail, name, t);
        if let Some(load) = t.load {
            // Storm writes these as `%.3f` text; the counts over the 600 s window.
            let count = &mut body["bolts"][1];
            count["capacity"] = Value::from(format!("{:.3}", load.capacity));
            count["executeLatency"] = Value::from(format!("{:.3}", load.execute_latency_ms));
            let spout = &mut body["spouts"][0];
            spout["completeLatency"] = Value::from(format!("{:.3}", load.complete_latency_ms));
            spout["acked"] = Value::from((load.acked_per_second * 600.0).round() as i64);
        }
        body
    }

    fn unknown_id(&self, id: &str) -> Response {
        let fixture = if self.faults.pre_2_8_6 {
            fixtures::ERROR_PRE_2_8_6
        } else {
            fixtures::ERROR
        };
        if !self.config.name_unknown_ids {
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, fixture);
        }
        let mut body = parse(fixture);
        let message = body["errorMessage"].as_str().unwrap_or_default();
        body["errorMessage"] = Value::from(message.replace(FIXTURE_ERROR_ID, id));
        error(&body)
    }
}

async fn handle(State(state): State<Arc<Mutex<UiState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let delay = {
        let mut s = state.lock().expect("lock");
        s.requests.push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            body_len: body.len(),
            content_type: header_text(header::CONTENT_TYPE),
            authorization: header_text(header::AUTHORIZATION),
        });
        s.faults.delay
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    answer(&state, &parts.method, parts.uri.path())
}

fn answer(state: &Arc<Mutex<UiState>>, method: &Method, path: &str) -> Response {
    let mut s = state.lock().expect("lock");
    if s.faults.proxy_502 {
        return (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        )
            .into_response();
    }
    if s.faults.garbage {
        return json_response(StatusCode::OK, "<html>this is not JSON</html>");
    }
    if s.faults.no_nimbus {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, fixtures::ERROR_NO_NIMBUS);
    }
    // Like the UI behind an optional path prefix.
    let Some(rest) = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/storm/api/v1/"))
    else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["cluster", "summary"]) => ok(&s.cluster_summary()),
        (&Method::GET, ["nimbus", "summary"]) => {
            if s.faults.offline_seed {
                ok(&parse(fixtures::NIMBUS_SUMMARY_OFFLINE_SEED))
            } else {
                ok(&s.config.nimbus_summary)
            }
        }
        (&Method::GET, ["supervisor", "summary"]) => ok(&s.config.supervisor_summary),
        (&Method::GET, ["topology", "summary"]) => ok(&s.topology_summary()),
        (&Method::GET, ["topology", raw]) => {
            let id = percent_decode(raw);
            match s.find(&id) {
                Some((name, t)) => ok(&s.topology_detail(&name, &t)),
                None => s.unknown_id(&id),
            }
        }
        (&Method::POST, ["topology", raw, op]) => operate(&mut s, state, raw, op, None),
        (&Method::POST, ["topology", raw, op, wait]) if wait.parse::<u64>().is_ok() => {
            operate(&mut s, state, raw, op, wait.parse().ok())
        }
        (_, ["topology", raw, ..]) if s.find(&percent_decode(raw)).is_none() => {
            s.unknown_id(&percent_decode(raw))
        }
        _ => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

/// `POST /topology/{id}/{op}[/{wait}]`.
fn operate(
    s: &mut UiState,
    state: &Arc<Mutex<UiState>>,
    raw: &str,
    op: &str,
    wait: Option<u64>,
) -> Response {
    let id = percent_decode(raw);
    let Some((name, t)) = s.find(&id) else {
        return s.unknown_id(&id);
    };
    if matches!(t.status.as_str(), "REBALANCING" | "KILLED") && op != "kill" {
        return error(&json!({"error": "500 Server Error",
            "errorMessage": format!("org.apache.storm.generated.NotAliveException: {name} is {}", t.status)}));
    }
    let next = match op {
        "activate" => "ACTIVE",
        "deactivate" => "INACTIVE",
        "kill" => "KILLED",
        "rebalance" => "REBALANCING",
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"error": "404 Not Found", "errorMessage": op}).to_string(),
            );
        }
    };
    let status = s
        .faults
        .operation_status
        .clone()
        .unwrap_or_else(|| "success".into());
    if status == "success" {
        if let Some(entry) = s.topologies.get_mut(&name) {
            entry.status = next.into();
        }
        if let (Some(cap), "kill") = (s.config.drop_killed_after, op) {
            let (state, id) = (state.clone(), id.clone());
            let after = Duration::from_secs(wait.unwrap_or(0)).min(cap);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut s = state.lock().expect("lock");
                if s.topologies.get(&name).is_some_and(|t| t.id == id) {
                    s.topologies.remove(&name);
                }
            });
        }
    }
    ok(&json!({"topologyOperation": op, "topologyId": id, "status": status}))
}
