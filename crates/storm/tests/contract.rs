//! Contract tests of [`RestClient`] against the testkit's fake Storm UI
//! ([`workerpool_testkit::storm_ui`]), an in-process HTTP server that answers like a Storm 2.8.8
//! UI from the fixtures in `tests/fixtures/` (see its README), and records every request it gets.

use std::sync::Arc;
use std::time::Duration;

use workerpool_storm::model::NumberOrText;
use workerpool_storm::{
    Connector, Error, NimbusStatus, RestClient, RestConnector, StormApi, TopologyDetail,
    TopologyStatus,
};
use workerpool_testkit::storm_ui::fixtures::{
    ERROR, ERROR_NO_NIMBUS, ERROR_PRE_2_8_6 as ERROR_PRE_286, TOPOLOGY_DETAIL as DETAIL,
};
use workerpool_testkit::storm_ui::{Config, StormUi};

const ID: &str = "wordcount-1-1700000000";
/// A (made-up) id that needs percent-encoding; sent as `odd%20id%25x`.
const ODD_ID: &str = "odd id%x";

/// The fake UI answering the fixtures as recorded (errors verbatim, a killed topology listed
/// until it is removed), listing `wordcount` ([`ID`], ACTIVE, 3 workers) as the fixtures do.
async fn start() -> StormUi {
    let ui = StormUi::start_with(Config::recorded()).await;
    ui.add("wordcount", "ACTIVE", 3);
    ui
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
    let ui = start().await;
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
    let requests = ui.recorded();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/v1/cluster/summary");
    assert_eq!(requests[0].query, None);
    assert_eq!(requests[0].body_len, 0);
    assert_eq!(requests[0].authorization, None);
}

#[tokio::test]
async fn nimbus_summary_finds_the_leader() {
    let ui = start().await;
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
    let ui = start().await;
    ui.faults(|f| f.offline_seed = true);
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
    let ui = start().await;
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
    let ui = start().await;
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
    let ui = start().await;
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
    let ui = start().await;
    let d = ui
        .client()
        .topology_window(ID, "600")
        .await
        .expect("topology");
    let requests = ui.recorded();
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
    let ui = start().await;
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
    let ui = start().await;
    let result = ui.client().topology("wordcount").await;
    let (status, error, message) = storm_error(result);
    assert_eq!(status, 500);
    assert_eq!(error, "500 Server Error");
    assert_eq!(message, fixture_message(ERROR));
    assert_eq!(ui.paths(), ["/api/v1/topology/wordcount"]);
}

#[tokio::test]
async fn no_nimbus_is_recognized() {
    let ui = start().await;
    ui.faults(|f| f.no_nimbus = true);
    let err = ui.client().cluster_summary().await.expect_err("no nimbus");
    assert!(err.is_no_nimbus(), "{err:?}");
    let (status, _, message) = storm_error(Err::<(), _>(err));
    assert_eq!(status, 500);
    assert_eq!(message, fixture_message(ERROR_NO_NIMBUS));
    // An ordinary unknown-id error is not "no nimbus".
    ui.faults(|f| f.no_nimbus = false);
    let err = ui
        .client()
        .topology("nope-1-1")
        .await
        .expect_err("unknown id");
    assert!(!err.is_no_nimbus(), "{err:?}");
}

#[tokio::test]
async fn a_pre_2_8_6_stack_trace_keeps_its_first_line() {
    let ui = start().await;
    ui.faults(|f| f.pre_2_8_6 = true);
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
    let ui = start().await;
    let client = ui.client();
    client.activate(ID).await.expect("activate");
    client.deactivate(ID).await.expect("deactivate");
    client.kill(ID, 30).await.expect("kill");
    let requests = ui.recorded();
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
    let ui = start().await;
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
    let ui = start().await;
    ui.faults(|f| f.operation_status = Some("failure".into()));
    let (status, _, message) = storm_error(ui.client().deactivate(ID).await);
    assert_eq!(status, 200);
    assert!(message.contains("failure"), "{message}");
}

#[tokio::test]
async fn ids_are_percent_encoded_in_the_path() {
    let ui = start().await;
    ui.add_with_id("odd", ODD_ID, "ACTIVE", 3);
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
    let ui = start().await;
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
    assert_eq!(ui.recorded(), []);
}

#[tokio::test]
async fn a_proxy_error_page_is_a_storm_error_with_the_http_reason() {
    let ui = start().await;
    ui.faults(|f| f.proxy_502 = true);
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
    let ui = start().await;
    ui.faults(|f| f.delay = Some(Duration::from_secs(3)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .no_proxy()
        .build()
        .expect("http client");
    let client = RestClient::with_http_client(&ui.url, http).expect("client");
    match client.cluster_summary().await {
        Err(Error::Unreachable { message, .. }) => {
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_200_with_garbage_is_a_decode_error() {
    let ui = start().await;
    ui.faults(|f| f.garbage = true);
    let client = ui.client();
    match client.topology_summary().await {
        Err(Error::Decode { url, message }) => {
            assert_eq!(url, format!("{}/api/v1/topology/summary", ui.url));
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
    let ui = start().await;
    let client = RestClient::new(&format!("{}/storm/", ui.url)).expect("client");
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
    let ui = start().await;
    let url = format!("http://admin:s3cret@{}", ui.addr);
    let client = RestClient::new(&url).expect("client");
    client.cluster_summary().await.expect("cluster summary");
    assert_eq!(
        ui.recorded()[0].authorization.as_deref(),
        Some("Basic YWRtaW46czNjcmV0")
    );
    ui.faults(|f| f.garbage = true);
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
    let ui = start().await;
    let a = connector.connect(&ui.url).expect("connect");
    let b = connector.connect(&ui.url).expect("connect");
    let c = connector.connect(&format!("{}/", ui.url)).expect("connect");
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
    let ui = start().await;
    let client = ui.client();
    let status = async || {
        client
            .find_topology("wordcount")
            .await
            .expect("summary")
            .map(|t| t.status)
    };

    ui.set_status("wordcount", "REBALANCING");
    assert_eq!(status().await, Some(TopologyStatus::Rebalancing));
    // Nimbus refuses activate/deactivate while rebalancing.
    let (code, _, _) = storm_error(client.activate(ID).await);
    assert_eq!(code, 500);

    ui.set_status("wordcount", "ACTIVE");
    assert_eq!(status().await, Some(TopologyStatus::Active));
    client.deactivate(ID).await.expect("deactivate");

    ui.set_status("wordcount", "INACTIVE");
    assert_eq!(status().await, Some(TopologyStatus::Inactive));

    client.kill(ID, 0).await.expect("kill");
    ui.set_status("wordcount", "KILLED");
    assert_eq!(status().await, Some(TopologyStatus::Killed));

    ui.remove("wordcount");
    assert_eq!(status().await, None);
}
