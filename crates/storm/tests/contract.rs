//! Contract tests of [`RestClient`] against an in-process HTTP server that answers like a
//! Storm 2.8.8 UI, from the fixtures in `tests/fixtures/` (see its README), and records every
//! request it gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use workerpool_storm::model::NumberOrText;
use workerpool_storm::{
    Connector, Error, NimbusStatus, RestClient, RestConnector, StormApi, TopologyDetail,
    TopologyStatus,
};

const ID: &str = "wordcount-1-1700000000";
/// A (made-up) id that needs percent-encoding; sent as `odd%20id%25x`.
const ODD_ID: &str = "odd id%x";

const CLUSTER: &str = include_str!("fixtures/cluster-summary.json");
const NIMBUS: &str = include_str!("fixtures/nimbus-summary.json");
const NIMBUS_OFFLINE: &str = include_str!("fixtures/nimbus-summary-offline-seed.json");
const SUPERVISORS: &str = include_str!("fixtures/supervisor-summary.json");
const TOPOLOGIES: &str = include_str!("fixtures/topology-summary.json");
const DETAIL: &str = include_str!("fixtures/topology-detail.json");
const ACTIVATE: &str = include_str!("fixtures/activate-response.json");
const DEACTIVATE: &str = include_str!("fixtures/deactivate-response.json");
const KILL: &str = include_str!("fixtures/kill-response.json");
const ERROR: &str = include_str!("fixtures/error.json");
const ERROR_PRE_286: &str = include_str!("fixtures/error-pre-2.8.6.json");
const ERROR_NO_NIMBUS: &str = include_str!("fixtures/error-no-nimbus.json");

/// One request as the server got it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    /// The path exactly as sent (still percent-encoded).
    path: String,
    query: Option<String>,
    body_len: usize,
    content_type: Option<String>,
    authorization: Option<String>,
}

/// How the fake UI behaves; tests change it while it runs.
#[derive(Debug, Default)]
struct Scenario {
    /// `/nimbus/summary` answers with the Offline-seed fixture.
    offline_seed: bool,
    /// Every endpoint answers `error-no-nimbus.json`.
    no_nimbus: bool,
    /// Unknown ids answer `error-pre-2.8.6.json` instead of `error.json`.
    pre_286: bool,
    /// Every request answers 502 with an HTML page, like a proxy with no upstream.
    proxy_502: bool,
    /// Every request answers 200 with a body that is not JSON.
    garbage: bool,
    /// Wait this long before answering.
    delay: Option<Duration>,
    /// The topology's status (default `ACTIVE`).
    status: Option<&'static str>,
    /// The topology is no longer listed (after a kill's wait).
    gone: bool,
    /// The `status` of POST answers (default `success`).
    operation_status: Option<&'static str>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    scenario: Mutex<Scenario>,
}

/// A running fake Storm UI.
struct FakeUi {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeUi {
    async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, shared }
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> RestClient {
        RestClient::new(&self.url()).expect("client")
    }

    fn set(&self, change: impl FnOnce(&mut Scenario)) {
        change(&mut self.shared.scenario.lock().expect("scenario"));
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests").clone()
    }

    fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn ok(body: impl Into<Body>) -> Response {
    json(StatusCode::OK, body)
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

/// `fixture` with the topology's `status` (and `id`) replaced.
fn patched(fixture: &str, id: &str, status: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
    let mut patch = |t: &mut serde_json::Value| {
        t["status"] = status.into();
        t["id"] = id.into();
    };
    match value.get_mut("topologies").and_then(|t| t.as_array_mut()) {
        Some(list) => list.iter_mut().for_each(&mut patch),
        None => patch(&mut value),
    }
    value.to_string()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
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
    shared.requests.lock().expect("requests").push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        body_len: body.len(),
        content_type: header_text(header::CONTENT_TYPE),
        authorization: header_text(header::AUTHORIZATION),
    });

    let delay = shared.scenario.lock().expect("scenario").delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let scenario = shared.scenario.lock().expect("scenario");
    if scenario.proxy_502 {
        return (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        )
            .into_response();
    }
    if scenario.garbage {
        return ok("<html>this is not JSON</html>");
    }
    if scenario.no_nimbus {
        return json(StatusCode::INTERNAL_SERVER_ERROR, ERROR_NO_NIMBUS);
    }
    let unknown_id = || {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            if scenario.pre_286 {
                ERROR_PRE_286
            } else {
                ERROR
            },
        )
    };

    // Like the UI behind an optional path prefix.
    let path = parts.uri.path();
    let Some(rest) = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/storm/api/v1/"))
    else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let known = |raw: &str| {
        let id = percent_decode(raw);
        (id == ID || id == ODD_ID).then_some(id)
    };
    let status = scenario.status.unwrap_or("ACTIVE");
    let operation = |fixture: &str, id: &str| {
        let mut v: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        v["topologyId"] = id.into();
        v["status"] = scenario.operation_status.unwrap_or("success").into();
        ok(v.to_string())
    };
    let refused = |op: &str| {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({
                "error": "500 Server Error",
                "errorMessage": format!("Topology wordcount is not in a state to {op}: {status}"),
            })
            .to_string(),
        )
    };
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["cluster", "summary"]) => ok(CLUSTER),
        (&Method::GET, ["nimbus", "summary"]) => ok(if scenario.offline_seed {
            NIMBUS_OFFLINE
        } else {
            NIMBUS
        }),
        (&Method::GET, ["supervisor", "summary"]) => ok(SUPERVISORS),
        (&Method::GET, ["topology", "summary"]) => {
            if scenario.gone {
                ok(r#"{"topologies":[],"schedulerDisplayResource":false}"#)
            } else {
                ok(patched(TOPOLOGIES, ID, status))
            }
        }
        (&Method::GET, ["topology", raw]) => match known(raw) {
            Some(id) if !scenario.gone => ok(patched(DETAIL, &id, status)),
            _ => unknown_id(),
        },
        (&Method::POST, ["topology", raw, op @ ("activate" | "deactivate")]) => match known(raw) {
            Some(_) if matches!(status, "REBALANCING" | "KILLED") => refused(op),
            Some(id) if !scenario.gone => operation(
                if *op == "activate" {
                    ACTIVATE
                } else {
                    DEACTIVATE
                },
                &id,
            ),
            _ => unknown_id(),
        },
        (&Method::POST, ["topology", raw, "kill", wait]) if wait.parse::<u32>().is_ok() => {
            match known(raw) {
                Some(id) if !scenario.gone => operation(KILL, &id),
                _ => unknown_id(),
            }
        }
        (_, ["topology", raw, ..]) if known(raw).is_none() => unknown_id(),
        _ => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

fn storm_error(result: Result<impl std::fmt::Debug, Error>) -> (u16, String, String) {
    match result {
        Err(Error::Storm {
            status,
            error,
            message,
        }) => (status, error, message),
        other => panic!("expected Error::Storm, got {other:?}"),
    }
}

fn fixture_message(fixture: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
    v["errorMessage"]
        .as_str()
        .expect("errorMessage")
        .to_string()
}

#[tokio::test]
async fn cluster_summary_parses_the_fixture() {
    let ui = FakeUi::start().await;
    let c = ui
        .client()
        .cluster_summary()
        .await
        .expect("cluster summary");
    assert_eq!(c.storm_version.as_deref(), Some("2.8.8"));
    assert_eq!(c.supervisors, 2);
    assert_eq!(c.topologies, 1);
    assert_eq!((c.slots_total, c.slots_used, c.slots_free), (8, 3, 5));
    assert_eq!((c.executors_total, c.tasks_total), (28, 28));
    let requests = ui.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/v1/cluster/summary");
    assert_eq!(requests[0].query, None);
    assert_eq!(requests[0].body_len, 0);
    assert_eq!(requests[0].authorization, None);
}

#[tokio::test]
async fn nimbus_summary_finds_the_leader() {
    let ui = FakeUi::start().await;
    let nimbuses = ui.client().nimbus_summary().await.expect("nimbus summary");
    assert_eq!(nimbuses.len(), 1);
    let leader = &nimbuses[0];
    assert_eq!(leader.status, NimbusStatus::Leader);
    assert_eq!(
        leader.host,
        "storm-nimbus-0.storm-nimbus.storm.svc.cluster.local"
    );
    assert_eq!(leader.port, NumberOrText::Number(6627));
    assert_eq!(leader.version.as_deref(), Some("2.8.8"));
    assert_eq!(
        leader
            .nimbus_up_time_seconds
            .as_ref()
            .and_then(NumberOrText::as_i64),
        Some(4452)
    );
    assert_eq!(
        leader.address(),
        "storm-nimbus-0.storm-nimbus.storm.svc.cluster.local:6627"
    );
    assert_eq!(ui.paths(), ["/api/v1/nimbus/summary"]);
}

#[tokio::test]
async fn nimbus_summary_takes_an_offline_seed_with_a_string_port() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.offline_seed = true);
    let nimbuses = ui.client().nimbus_summary().await.expect("nimbus summary");
    assert_eq!(nimbuses.len(), 2);
    let offline = nimbuses
        .iter()
        .find(|n| n.status == NimbusStatus::Offline)
        .expect("offline seed");
    assert_eq!(offline.host, "storm-nimbus");
    assert_eq!(offline.port, NumberOrText::Text("6627".into()));
    assert_eq!(offline.port.as_i64(), Some(6627));
    assert_eq!(
        offline.nimbus_up_time_seconds,
        Some(NumberOrText::Text("Not applicable".into()))
    );
    assert_eq!(
        offline
            .nimbus_up_time_seconds
            .as_ref()
            .and_then(NumberOrText::as_i64),
        None
    );
    assert_eq!(offline.address(), "storm-nimbus:6627");
    let leaders: Vec<_> = nimbuses
        .iter()
        .filter(|n| n.status == NimbusStatus::Leader)
        .map(|n| n.address())
        .collect();
    assert_eq!(
        leaders,
        ["storm-nimbus-0.storm-nimbus.storm.svc.cluster.local:6627"]
    );
}

#[tokio::test]
async fn supervisor_summary_parses_the_fixture() {
    let ui = FakeUi::start().await;
    let sups = ui.client().supervisor_summary().await.expect("supervisors");
    assert_eq!(sups.len(), 2);
    assert_eq!(
        sups[0].id,
        "5c0f8a3e-2b7d-4e1a-9c64-7d2e91b0a4f3-10.244.1.17"
    );
    assert_eq!(
        sups[0].host,
        "storm-supervisor-0.storm-supervisor.storm.svc.cluster.local"
    );
    assert_eq!(sups[0].uptime_seconds, 4380);
    assert_eq!(
        (sups[0].slots_total, sups[0].slots_used, sups[0].slots_free),
        (4, 2, 2)
    );
    assert_eq!(
        (sups[1].slots_total, sups[1].slots_used, sups[1].slots_free),
        (4, 1, 3)
    );
    assert!(sups.iter().all(|s| !s.blacklisted));
    assert!(sups.iter().all(|s| s.version.as_deref() == Some("2.8.8")));
    assert_eq!(sups.iter().map(|s| s.slots_free).sum::<i64>(), 5);
    assert_eq!(ui.paths(), ["/api/v1/supervisor/summary"]);
}

#[tokio::test]
async fn topology_summary_parses_the_fixture() {
    let ui = FakeUi::start().await;
    let tops = ui.client().topology_summary().await.expect("topologies");
    assert_eq!(tops.len(), 1);
    let t = &tops[0];
    assert_eq!(t.id, ID);
    assert_eq!(t.name, "wordcount");
    assert_eq!(t.status, TopologyStatus::Active);
    assert_eq!(t.uptime_seconds, 3723);
    assert_eq!(
        (t.workers_total, t.executors_total, t.tasks_total),
        (3, 28, 28)
    );
    assert_eq!(ui.paths(), ["/api/v1/topology/summary"]);
}

#[tokio::test]
async fn topology_detail_parses_the_fixture_and_its_last_error() {
    let ui = FakeUi::start().await;
    let d = ui.client().topology(ID).await.expect("topology");
    assert_eq!(d.id, ID);
    assert_eq!(d.name, "wordcount");
    assert_eq!(d.status, TopologyStatus::Active);
    assert_eq!(
        (d.workers_total, d.executors_total, d.tasks_total),
        (3, 28, 28)
    );
    assert_eq!(d.uptime_seconds, 3723);
    let spouts: Vec<_> = d.spouts.iter().map(|c| c.component_id.as_str()).collect();
    let bolts: Vec<_> = d.bolts.iter().map(|c| c.component_id.as_str()).collect();
    assert_eq!(spouts, ["spout"]);
    assert_eq!(bolts, ["split", "count"]);
    assert_eq!(d.bolts[0].error_time, Some(1_700_003_101));
    assert_eq!(d.spouts[0].error_time, None);
    assert_eq!(
        d.last_error().as_deref(),
        Some(
            "split: java.lang.Exception: Shell Process Exception: Traceback (most recent call last):"
        )
    );
    assert_eq!(ui.paths(), [format!("/api/v1/topology/{ID}")]);
}

#[tokio::test]
async fn topology_window_asks_for_the_window_and_reads_the_load() {
    let ui = FakeUi::start().await;
    let d = ui
        .client()
        .topology_window(ID, "600")
        .await
        .expect("topology");
    let requests = ui.requests();
    assert_eq!(requests[0].path, format!("/api/v1/topology/{ID}"));
    assert_eq!(requests[0].query.as_deref(), Some("window=600"));
    // `capacity`, `executeLatency` and `completeLatency` are `%.3f` text in Storm's JSON.
    let split = &d.bolts[0];
    assert_eq!(
        (
            split.executors,
            split.executed,
            split.capacity,
            split.execute_latency
        ),
        (8, 372_300, 0.005, 0.412)
    );
    assert_eq!(
        (d.bolts[1].capacity, d.bolts[1].execute_latency),
        (0.002, 0.031)
    );
    let spout = &d.spouts[0];
    assert_eq!(
        (spout.executors, spout.acked, spout.complete_latency),
        (5, 372_280, 14.237)
    );
    assert_eq!(spout.capacity, 0.0, "a spout has no capacity");
}

#[test]
fn load_figures_take_text_numbers_and_unset_values() {
    let mut v: serde_json::Value = serde_json::from_str(DETAIL).expect("fixture");
    v["bolts"][0]["capacity"] = 0.95.into();
    v["bolts"][1]["capacity"] = "0".into();
    v["bolts"][1]["executeLatency"] = serde_json::Value::Null;
    v["spouts"][0]["completeLatency"] = "not a number".into();
    let d: TopologyDetail = serde_json::from_value(v).expect("detail");
    assert_eq!(d.bolts[0].capacity, 0.95);
    assert_eq!(
        (d.bolts[1].capacity, d.bolts[1].execute_latency),
        (0.0, 0.0)
    );
    assert_eq!(d.spouts[0].complete_latency, 0.0);
}

#[test]
fn last_error_picks_the_most_recent_error() {
    let mut v: serde_json::Value = serde_json::from_str(DETAIL).expect("fixture");
    v["spouts"][0]["lastError"] = "java.lang.RuntimeException: newer\n\tat Spout.next".into();
    v["spouts"][0]["errorTime"] = 1_700_003_500.into();
    let d: TopologyDetail = serde_json::from_value(v.clone()).expect("detail");
    assert_eq!(
        d.last_error().as_deref(),
        Some("spout: java.lang.RuntimeException: newer")
    );
    v["spouts"][0]["errorTime"] = 1_700_000_001.into();
    let d: TopologyDetail = serde_json::from_value(v.clone()).expect("detail");
    assert!(d.last_error().expect("error").starts_with("split: "));
    v["bolts"][0]["lastError"] = "".into();
    v["spouts"][0]["lastError"] = "".into();
    let d: TopologyDetail = serde_json::from_value(v).expect("detail");
    assert_eq!(d.last_error(), None);
}

#[tokio::test]
async fn find_topology_by_name_then_call_by_id() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    let found = client
        .find_topology("wordcount")
        .await
        .expect("summary")
        .expect("wordcount is listed");
    assert_eq!(found.id, ID);
    let detail = client.topology(&found.id).await.expect("detail");
    assert_eq!(detail.name, "wordcount");
    assert_eq!(
        ui.paths(),
        [
            "/api/v1/topology/summary".to_string(),
            "/api/v1/topology/wordcount-1-1700000000".to_string(),
        ]
    );
    assert_eq!(client.find_topology("nope").await.expect("summary"), None);
}

#[tokio::test]
async fn a_name_where_an_id_belongs_is_a_storm_500() {
    let ui = FakeUi::start().await;
    let result = ui.client().topology("wordcount").await;
    let (status, error, message) = storm_error(result);
    assert_eq!(status, 500);
    assert_eq!(error, "500 Server Error");
    assert_eq!(message, fixture_message(ERROR));
    assert_eq!(ui.paths(), ["/api/v1/topology/wordcount"]);
}

#[tokio::test]
async fn no_nimbus_is_recognized() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.no_nimbus = true);
    let err = ui.client().cluster_summary().await.expect_err("no nimbus");
    assert!(err.is_no_nimbus(), "{err:?}");
    let (status, _, message) = storm_error(Err::<(), _>(err));
    assert_eq!(status, 500);
    assert_eq!(message, fixture_message(ERROR_NO_NIMBUS));
    // An ordinary unknown-id error is not "no nimbus".
    ui.set(|s| s.no_nimbus = false);
    let err = ui
        .client()
        .topology("nope-1-1")
        .await
        .expect_err("unknown id");
    assert!(!err.is_no_nimbus(), "{err:?}");
}

#[tokio::test]
async fn a_pre_2_8_6_stack_trace_keeps_its_first_line() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.pre_286 = true);
    let (status, error, message) =
        storm_error(ui.client().topology("wordcount-9-1700000000").await);
    assert_eq!(status, 500);
    assert_eq!(error, "500 Server Error");
    assert_eq!(
        message,
        "java.io.IOException: Unable to fetch topo conf for topo id wordcount-9-1700000000"
    );
    assert!(fixture_message(ERROR_PRE_286).contains("\n\tat "));
}

#[tokio::test]
async fn operations_post_to_the_exact_paths_without_a_body() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    client.activate(ID).await.expect("activate");
    client.deactivate(ID).await.expect("deactivate");
    client.kill(ID, 30).await.expect("kill");
    let requests = ui.requests();
    let sent: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            ("POST", "/api/v1/topology/wordcount-1-1700000000/activate"),
            ("POST", "/api/v1/topology/wordcount-1-1700000000/deactivate"),
            ("POST", "/api/v1/topology/wordcount-1-1700000000/kill/30"),
        ]
    );
    for r in &requests {
        assert_eq!(r.body_len, 0, "{r:?}");
        assert_eq!(r.content_type, None, "{r:?}");
        assert_eq!(r.query, None, "{r:?}");
    }
}

#[tokio::test]
async fn operations_on_unknown_ids_are_storm_errors() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    let (status, _, message) = storm_error(client.activate("wordcount").await);
    assert_eq!(status, 500);
    assert_eq!(message, fixture_message(ERROR));
    let (status, _, _) = storm_error(client.kill("wordcount", 0).await);
    assert_eq!(status, 500);
    assert_eq!(
        ui.paths(),
        [
            "/api/v1/topology/wordcount/activate",
            "/api/v1/topology/wordcount/kill/0"
        ]
    );
}

#[tokio::test]
async fn an_operation_that_is_not_a_success_is_an_error() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.operation_status = Some("failure"));
    let (status, _, message) = storm_error(ui.client().deactivate(ID).await);
    assert_eq!(status, 200);
    assert!(message.contains("failure"), "{message}");
}

#[tokio::test]
async fn ids_are_percent_encoded_in_the_path() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    let d = client.topology(ODD_ID).await.expect("detail");
    assert_eq!(d.id, ODD_ID);
    client.activate(ODD_ID).await.expect("activate");
    client.kill(ODD_ID, 5).await.expect("kill");
    assert_eq!(
        ui.paths(),
        [
            "/api/v1/topology/odd%20id%25x",
            "/api/v1/topology/odd%20id%25x/activate",
            "/api/v1/topology/odd%20id%25x/kill/5",
        ]
    );
}

#[tokio::test]
async fn ids_that_are_not_one_path_segment_are_refused_before_sending() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    for bad in ["", "a/b", ".."] {
        assert!(
            matches!(client.topology(bad).await, Err(Error::Invalid(_))),
            "{bad:?}"
        );
        assert!(
            matches!(client.kill(bad, 1).await, Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(ui.requests(), []);
}

#[tokio::test]
async fn a_proxy_error_page_is_a_storm_error_with_the_http_reason() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.proxy_502 = true);
    let (status, error, message) = storm_error(ui.client().cluster_summary().await);
    assert_eq!(status, 502);
    assert_eq!(error, "502 Bad Gateway");
    assert!(message.contains("Bad Gateway"), "{message}");
    assert!(!message.contains('<'), "{message}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = RestClient::new(&format!("http://{addr}/")).expect("client");
    match client.cluster_summary().await {
        Err(Error::Unreachable { url, message }) => {
            assert_eq!(url, format!("http://{addr}/api/v1/cluster/summary"));
            assert!(!message.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_ui_times_out_as_unreachable() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.delay = Some(Duration::from_secs(3)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .no_proxy()
        .build()
        .expect("http client");
    let client = RestClient::with_http_client(&ui.url(), http).expect("client");
    match client.cluster_summary().await {
        Err(Error::Unreachable { message, .. }) => {
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_200_with_garbage_is_a_decode_error() {
    let ui = FakeUi::start().await;
    ui.set(|s| s.garbage = true);
    let client = ui.client();
    match client.topology_summary().await {
        Err(Error::Decode { url, message }) => {
            assert_eq!(url, format!("{}/api/v1/topology/summary", ui.url()));
            assert!(message.contains("this is not JSON"), "{message}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    assert!(matches!(
        client.activate(ID).await,
        Err(Error::Decode { .. })
    ));
}

#[tokio::test]
async fn a_base_url_with_a_prefix_and_a_trailing_slash() {
    let ui = FakeUi::start().await;
    let client = RestClient::new(&format!("{}/storm/", ui.url())).expect("client");
    client.cluster_summary().await.expect("cluster summary");
    client.kill(ID, 0).await.expect("kill");
    assert_eq!(
        ui.paths(),
        [
            "/storm/api/v1/cluster/summary".to_string(),
            format!("/storm/api/v1/topology/{ID}/kill/0"),
        ]
    );
}

#[tokio::test]
async fn credentials_are_sent_as_basic_auth_and_never_shown() {
    let ui = FakeUi::start().await;
    let url = format!("http://admin:s3cret@{}", ui.addr);
    let client = RestClient::new(&url).expect("client");
    client.cluster_summary().await.expect("cluster summary");
    assert_eq!(
        ui.requests()[0].authorization.as_deref(),
        Some("Basic YWRtaW46czNjcmV0")
    );
    ui.set(|s| s.garbage = true);
    let err = client.cluster_summary().await.expect_err("garbage");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let client = RestClient::new(&format!("http://admin:s3cret@{closed}")).expect("client");
    let err = client.cluster_summary().await.expect_err("closed");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn the_connector_checks_urls_and_reuses_clients() {
    let connector = RestConnector::default();
    for bad in ["ftp://x", "not a url"] {
        match connector.connect(bad) {
            Err(Error::Invalid(message)) => assert!(message.contains("http"), "{message}"),
            Err(other) => panic!("{bad}: expected Invalid, got {other:?}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
    let ui = FakeUi::start().await;
    let a = connector.connect(&ui.url()).expect("connect");
    let b = connector.connect(&ui.url()).expect("connect");
    let c = connector
        .connect(&format!("{}/", ui.url()))
        .expect("connect");
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(&a, &c));
    let other = connector
        .connect("http://storm-ui.other.svc:8080")
        .expect("connect");
    assert!(!Arc::ptr_eq(&a, &other));
    let summary = a.cluster_summary().await.expect("cluster summary");
    assert_eq!(summary.slots_free, 5);
}

#[tokio::test]
async fn find_topology_follows_the_status() {
    let ui = FakeUi::start().await;
    let client = ui.client();
    let status = async || {
        client
            .find_topology("wordcount")
            .await
            .expect("summary")
            .map(|t| t.status)
    };

    ui.set(|s| s.status = Some("REBALANCING"));
    assert_eq!(status().await, Some(TopologyStatus::Rebalancing));
    // Nimbus refuses activate/deactivate while rebalancing.
    let (code, _, _) = storm_error(client.activate(ID).await);
    assert_eq!(code, 500);

    ui.set(|s| s.status = Some("ACTIVE"));
    assert_eq!(status().await, Some(TopologyStatus::Active));
    client.deactivate(ID).await.expect("deactivate");

    ui.set(|s| s.status = Some("INACTIVE"));
    assert_eq!(status().await, Some(TopologyStatus::Inactive));

    client.kill(ID, 0).await.expect("kill");
    ui.set(|s| s.status = Some("KILLED"));
    assert_eq!(status().await, Some(TopologyStatus::Killed));

    ui.set(|s| s.gone = true);
    assert_eq!(status().await, None);
}
