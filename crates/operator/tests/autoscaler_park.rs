//! An idle QWorker's poll parks, against a mocked API server and the real local Redis: with an
//! empty queue, no worker and the count at `minReplicas`, the poll does not come every interval;
//! the probe wakes it at the first task (it then scales up as an unparked poll would) and when
//! the queue cannot be read (it then reports the error).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use redis::AsyncCommands;
use serde_json::json;
use support::{polls, redis};
use workerpool_api::QWorker;
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::autoscaler::{Autoscaler, PARKED_POLL};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const NS: &str = "park";

fn qworker(name: &str, queue: &str) -> QWorker {
    testkit::qworker(NS, name, queue)
        .spec(json!({"scaleConfig": {"minReplicas": 0, "maxReplicas": 5}}))
        .build()
}

fn path(name: &str) -> String {
    format!("/apis/quickube.com/v1alpha1/namespaces/{NS}/qworkers/{name}/status")
}

/// An autoscaler over caches holding `qworkers`, no pods, and the local Redis ScalerConfig.
fn autoscaler(client: kube::Client, qworkers: &[QWorker]) -> (Autoscaler, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let configs = testkit::cache_of([testkit::local_redis(NS, "redis", "sc")]);
    let autoscaler = Autoscaler::new(
        Shared::new(client.clone(), metrics.clone(), None),
        Brokers::new(client, configs),
        testkit::cache_of(qworkers.to_vec()),
        testkit::cache_of(Vec::<Pod>::new()),
    );
    (autoscaler, metrics)
}

#[tokio::test]
async fn an_idle_poll_parks_until_the_first_task_comes() {
    let queue = format!("park-task-{}", std::process::id());
    let mut redis = redis().await;
    let _: () = redis.del(&queue).await.expect("del");
    let (client, mut api) = testkit::mock();
    let q = qworker("idle", &queue);
    let (autoscaler, metrics) = autoscaler(client, std::slice::from_ref(&q));
    autoscaler.ensure(&q);

    let first = api
        .expect_apply(&path("idle"), serde_json::to_value(&q).expect("json"))
        .await;
    assert_eq!(first.body["status"]["desiredReplicas"], 0);
    assert_eq!(first.body["status"]["queueLength"], 0);
    // Unparked, a poll would come every second: three or four more by now.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(polls(&metrics, NS, "idle"), 1, "the idle poll parked");

    let pushed = Instant::now();
    let _: () = redis.lpush(&queue, "a").await.expect("lpush");
    let up = api
        .expect_apply(&path("idle"), serde_json::to_value(&q).expect("json"))
        .await;
    assert_eq!(up.body["status"]["desiredReplicas"], 1, "{}", up.body);
    assert_eq!(up.body["status"]["queueLength"], 1);
    assert!(
        pushed.elapsed() < PARKED_POLL / 5,
        "woken by the probe, not by the parked poll's own timer: {:?}",
        pushed.elapsed()
    );
    // Not idle any more (a task waits): the next task scales it up again.
    let _: () = redis.lpush(&queue, "b").await.expect("lpush");
    let again = api
        .expect_apply(&path("idle"), serde_json::to_value(&q).expect("json"))
        .await;
    assert_eq!(again.body["status"]["desiredReplicas"], 2, "{}", again.body);
    assert!(polls(&metrics, NS, "idle") >= 3);
    let _: () = redis.del(&queue).await.expect("cleanup");
}

#[tokio::test]
async fn a_parked_poll_is_woken_when_its_queue_cannot_be_read() {
    let queue = format!("park-error-{}", std::process::id());
    let mut redis = redis().await;
    let _: () = redis.del(&queue).await.expect("del");
    let (client, mut api) = testkit::mock();
    let q = qworker("broken", &queue);
    let (autoscaler, metrics) = autoscaler(client, std::slice::from_ref(&q));
    autoscaler.ensure(&q);
    api.expect_apply(&path("broken"), serde_json::to_value(&q).expect("json"))
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(polls(&metrics, NS, "broken"), 1, "parked");

    // A key of another type: Redis refuses to read its length (WRONGTYPE).
    let _: () = redis.set(&queue, "not a list").await.expect("set");
    let failed = api
        .expect_apply(&path("broken"), serde_json::to_value(&q).expect("json"))
        .await;
    let conditions = failed.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .clone();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "BrokerReachable" && c["status"] == "False"),
        "{conditions:?}"
    );
    assert_eq!(
        failed.body["status"]["desiredReplicas"], 0,
        "the count is kept"
    );
    let _: () = redis.del(&queue).await.expect("cleanup");
}
