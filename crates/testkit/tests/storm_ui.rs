//! The fake Storm UI follows Storm's rules (the contract tests use it with the recorded
//! answers, [`Config::recorded`]; these check the default, Storm-like ones).

use std::time::Duration;

use workerpool_storm::{Error, StormApi, TopologyStatus};
use workerpool_testkit::storm_ui::{Config, LEADER, StormUi};

fn storm_message<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Storm {
            status: 500,
            message,
            ..
        }) => message,
        other => panic!("expected a Storm 500, got {other:?}"),
    }
}

#[tokio::test]
async fn operations_change_the_status_and_a_killed_topology_leaves_after_its_wait() {
    let ui = StormUi::start().await;
    let id = ui.add("wordcount", "ACTIVE", 3);
    let client = ui.client();
    let nimbus = client.nimbus_summary().await.expect("nimbus");
    assert_eq!(nimbus[0].address(), LEADER);
    let found = client.find_topology("wordcount").await.expect("summary");
    assert_eq!(found.map(|t| t.id), Some(id.clone()));
    assert_eq!(
        storm_message(client.topology("wordcount").await),
        "Unable to fetch topo conf for topo id wordcount",
        "a name is not an id"
    );

    client.deactivate(&id).await.expect("deactivate");
    assert_eq!(ui.status("wordcount").as_deref(), Some("INACTIVE"));
    ui.set_status("wordcount", "REBALANCING");
    assert!(storm_message(client.activate(&id).await).contains("NotAliveException"));

    client.kill(&id, 1).await.expect("kill");
    let detail = client.topology(&id).await.expect("still listed");
    assert_eq!(detail.status, TopologyStatus::Killed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ui.status("wordcount"), None, "gone after the kill's wait");
    assert!(
        ui.requests()
            .contains(&format!("POST /api/v1/topology/{id}/kill/1"))
    );
}

#[tokio::test]
async fn uptimes_grow_when_configured() {
    let ui = StormUi::start_with(Config {
        uptimes_grow: true,
        ..Config::default()
    })
    .await;
    let id = ui.add("wordcount", "ACTIVE", 3);
    ui.set_executors("wordcount", 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let detail = ui.client().topology(&id).await.expect("detail");
    assert!(detail.uptime_seconds > 3723, "{}", detail.uptime_seconds);
    assert_eq!((detail.workers_total, detail.executors_total), (3, 2));
}
