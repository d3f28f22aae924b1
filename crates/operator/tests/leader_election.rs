//! Leader election against a mocked API: every write of the Lease carries the resourceVersion
//! it was decided on, a write that lost the race (409) is not leadership, a live Lease of
//! another replica is left alone, and a release is conditional too.

use std::time::Duration;

use serde_json::{Value, json};
use workerpool_operator::leader::{Elector, Outcome, Timing};
use workerpool_testkit as testkit;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/wp";

fn lease(rv: &str, holder: Option<&str>) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "wp", "namespace": "ops", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 3}
    })
}

fn elector(client: kube::Client, identity: &str) -> Elector {
    Elector::new(
        client,
        "ops",
        "wp",
        identity,
        Timing::from_lease_seconds(15),
    )
}

#[tokio::test]
async fn a_free_lease_is_taken_by_a_replace_on_the_version_read() {
    let (client, mut server) = testkit::mock();
    let mut me = elector(client, "a");
    let task = tokio::spawn(async move { (me.try_acquire_or_renew().await, me) });
    server.expect("GET", PATH, 200, lease("7", None)).await;
    let (put, send) = server.next().await;
    assert_eq!((put.method.as_str(), put.path.as_str()), ("PUT", PATH));
    assert_eq!(put.body["metadata"]["resourceVersion"], "7", "{}", put.body);
    assert_eq!(put.body["spec"]["holderIdentity"], "a");
    assert_eq!(
        put.body["spec"]["leaseTransitions"], 4,
        "a take is a transition"
    );
    assert!(
        put.query
            .contains("fieldManager=workerpool-operator-lease-a"),
        "one field manager per identity: {}",
        put.query
    );
    let mut written = put.body.clone();
    written["metadata"]["resourceVersion"] = json!("8");
    send.send_response(
        http::Response::builder()
            .status(200)
            .body(kube::client::Body::from(
                serde_json::to_vec(&written).expect("json"),
            ))
            .expect("response"),
    );
    let (outcome, mut me) = task.await.expect("task");
    assert_eq!(outcome.expect("no error"), Outcome::Leading);

    // Released on the version it last wrote, and only that version.
    let task = tokio::spawn(async move { me.release().await });
    let put = server
        .expect(
            "PUT",
            PATH,
            409,
            testkit::status_error(409, "Conflict", "changed"),
        )
        .await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "8");
    assert_eq!(put.body["spec"]["holderIdentity"], Value::Null);
    assert!(
        !task.await.expect("task").expect("no error"),
        "a refused release"
    );
}

#[tokio::test]
async fn a_write_that_lost_the_race_is_not_leadership() {
    let (client, mut server) = testkit::mock();
    let mut me = elector(client, "b");
    let task = tokio::spawn(async move { me.try_acquire_or_renew().await });
    server.expect("GET", PATH, 200, lease("7", None)).await;
    server
        .expect(
            "PUT",
            PATH,
            409,
            testkit::status_error(409, "Conflict", "the object has been modified"),
        )
        .await;
    assert_eq!(
        task.await.expect("task").expect("no error"),
        Outcome::Conflict
    );
}

#[tokio::test]
async fn a_create_that_lost_the_race_is_not_leadership() {
    let (client, mut server) = testkit::mock();
    let mut me = elector(client, "b");
    let task = tokio::spawn(async move { me.try_acquire_or_renew().await });
    server.expect("GET", PATH, 404, testkit::not_found()).await;
    let post = server
        .expect(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
            409,
            testkit::status_error(409, "AlreadyExists", "exists"),
        )
        .await;
    assert_eq!(post.body["spec"]["holderIdentity"], "b");
    assert_eq!(
        task.await.expect("task").expect("no error"),
        Outcome::Conflict
    );
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let (client, mut server) = testkit::mock();
    let mut me = elector(client, "b");
    let task = tokio::spawn(async move { me.try_acquire_or_renew().await });
    server.expect("GET", PATH, 200, lease("9", Some("a"))).await;
    assert_eq!(
        task.await.expect("task").expect("no error"),
        Outcome::HeldBy("a".into())
    );
    server.expect_silence(Duration::from_millis(100)).await;
}
