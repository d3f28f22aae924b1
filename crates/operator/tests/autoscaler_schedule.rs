//! The autoscaler's schedules, against a mocked API server and the real local Redis: the polls
//! of every QWorker reading through one ScalerConfig run in one schedule (one task, one timer),
//! concurrently, so that a write the API server does not answer holds no other poll; a QWorker
//! that names another ScalerConfig moves to that schedule with its state; a schedule with no
//! QWorker left ends.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::json;
use support::{polls, redis};
use workerpool_api::QWorker;
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::autoscaler::Autoscaler;
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const NS: &str = "schedule";

fn qworker(name: &str, queue: &str, scaler_config: &str) -> QWorker {
    testkit::qworker(NS, name, queue)
        .spec(json!({"scaleConfig": {
            "scalerConfigRef": scaler_config, "minReplicas": 0, "maxReplicas": 5
        }}))
        .build()
}

fn path(name: &str) -> String {
    format!("/apis/quickube.com/v1alpha1/namespaces/{NS}/qworkers/{name}/status")
}

/// An autoscaler over a QWorker cache that the test writes, no pods, and two ScalerConfigs of
/// the local Redis (`one` and `two`).
fn autoscaler(client: kube::Client) -> (Autoscaler, Writer<QWorker>, std::sync::Arc<Metrics>) {
    let metrics = std::sync::Arc::new(Metrics::default());
    let configs = testkit::cache_of([
        testkit::local_redis(NS, "one", "one-uid"),
        testkit::local_redis(NS, "two", "two-uid"),
    ]);
    let (qworkers, writer) = reflector::store();
    let autoscaler = Autoscaler::new(
        Shared::new(client.clone(), metrics.clone(), None),
        Brokers::new(client, configs),
        qworkers,
        testkit::cache_of(Vec::<Pod>::new()),
    );
    (autoscaler, writer, metrics)
}

/// Waits (5 s at most) until `autoscaler` runs `n` schedules.
async fn schedules(autoscaler: &Autoscaler, n: usize) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while autoscaler.schedules() != n {
        assert!(
            tokio::time::Instant::now() < until,
            "{} schedules run, not {n}",
            autoscaler.schedules()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_polls_of_one_scaler_config_share_a_schedule_and_a_slow_write_holds_no_other() {
    let id = std::process::id();
    let names = ["a", "b", "c", "d"];
    let queues: Vec<String> = names.iter().map(|n| format!("sched-{n}-{id}")).collect();
    let mut redis = redis().await;
    let _: () = redis.del(&queues).await.expect("del");
    let (client, mut api) = testkit::mock();
    let (autoscaler, mut writer, _) = autoscaler(client);
    // a, b and c read through `one`, d through `two`.
    let qworkers: Vec<QWorker> = names
        .iter()
        .zip(&queues)
        .map(|(n, q)| qworker(n, q, if *n == "d" { "two" } else { "one" }))
        .collect();
    for q in &qworkers {
        writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    }
    for q in &qworkers {
        autoscaler.ensure(q);
    }
    assert_eq!(autoscaler.running(), 4);
    assert_eq!(autoscaler.schedules(), 2, "one schedule per ScalerConfig");

    // Each first poll writes the status. The first write is never answered; the others come.
    let (first, _held) = api.next().await;
    let mut written = vec![first.path];
    for _ in 1..names.len() {
        let (seen, send) = api.next().await;
        assert_eq!(seen.method, "PATCH", "{}", seen.path);
        let name = seen.path.rsplit('/').nth(1).expect("name").to_string();
        let q = qworkers
            .iter()
            .find(|q| q.metadata.name.as_deref() == Some(&name));
        let mut stored = testkit::stored(q.expect("a QWorker of the test"));
        testkit::merge(&mut stored, json!({"status": seen.body["status"]}));
        send.send_response(testkit::response(200, &stored));
        written.push(seen.path);
    }
    written.sort();
    let mut expected: Vec<String> = names.iter().map(|n| path(n)).collect();
    expected.sort();
    assert_eq!(written, expected, "every QWorker's first poll wrote");
    let _: () = redis.del(&queues).await.expect("cleanup");
}

#[tokio::test]
async fn a_qworker_that_names_another_scaler_config_moves_with_its_state() {
    let queue = format!("sched-move-{}", std::process::id());
    let mut redis = redis().await;
    let _: () = redis.del(&queue).await.expect("del");
    let (client, mut api) = testkit::mock();
    let (autoscaler, mut writer, metrics) = autoscaler(client);
    let q = qworker("mover", &queue, "one");
    writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    autoscaler.ensure(&q);
    let first = api
        .expect_apply(&path("mover"), serde_json::to_value(&q).expect("json"))
        .await;
    assert_eq!(first.body["status"]["desiredReplicas"], 0);
    schedules(&autoscaler, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = polls(&metrics, NS, "mover");

    // The same QWorker, now read through `two`.
    let mut moved = qworker("mover", &queue, "two");
    moved.metadata.generation = Some(2);
    writer.apply_watcher_event(&watcher::Event::Apply(moved.clone()));
    autoscaler.ensure(&moved);
    // It polls at once in its new schedule; the old one, empty, ends.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while polls(&metrics, NS, "mover") == before {
        assert!(
            tokio::time::Instant::now() < until,
            "no poll after the move"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    schedules(&autoscaler, 1).await;
    assert_eq!(autoscaler.running(), 1);
    // Its state came along: what it wrote is still what it reads, so it writes nothing (a new
    // poller would write again, finding no status on the cached QWorker).
    api.expect_silence(Duration::from_millis(500)).await;

    // The probe of the new connection wakes it at the first task.
    let _: () = redis.lpush(&queue, "t").await.expect("lpush");
    let up = api
        .expect_apply(&path("mover"), serde_json::to_value(&moved).expect("json"))
        .await;
    assert_eq!(up.body["status"]["desiredReplicas"], 1, "{}", up.body);

    autoscaler.forget(&moved);
    schedules(&autoscaler, 0).await;
    assert_eq!(autoscaler.running(), 0);
    let _: () = redis.del(&queue).await.expect("cleanup");
}
