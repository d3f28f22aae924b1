//! The autoscaler's poll against a mocked API server and the real local Redis: with
//! `scalingPolicy: Rate` the status apply carries `status.lastScaleDecision` (the deciding term,
//! the queue length and the rates), written with the autoscaler's field manager in the same
//! apply as `desiredReplicas`; the same numbers on `/metrics`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::json;
use workerpool_api::{QWorker, ScalerConfig};
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::autoscaler::{AUTOSCALER_MANAGER, Autoscaler};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const NS: &str = "decide";
const PATH: &str = "/apis/quickube.com/v1alpha1/namespaces/decide/qworkers/rated/status";

fn qworker(queue: &str) -> QWorker {
    testkit::qworker(NS, "rated", queue)
        .spec(
            json!({"scaleConfig": {"minReplicas": 0, "maxReplicas": 50, "scalingPolicy": "Rate"}}),
        )
        .build()
}

#[tokio::test]
async fn a_change_of_the_desired_count_records_the_decision_and_its_rates() {
    let queue = format!("decide-{}", std::process::id());
    let (client, mut api) = testkit::mock();
    let (qw_reader, mut qw_writer) = reflector::store::<QWorker>();
    let (pod_reader, mut pod_writer) = reflector::store::<Pod>();
    let (sc_reader, mut sc_writer) = reflector::store::<ScalerConfig>();
    pod_writer.apply_watcher_event(&watcher::Event::InitDone);
    sc_writer.apply_watcher_event(&watcher::Event::Apply(testkit::local_redis(
        NS, "redis", "sc",
    )));
    let q = qworker(&queue);
    qw_writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    let mut redis = redis::Client::open("redis://127.0.0.1:6379/")
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis at 127.0.0.1:6379");
    let _: () = redis.del(&queue).await.expect("del");
    let _: () = redis.lpush(&queue, &["a", "b", "c"]).await.expect("lpush");
    let metrics = Arc::new(Metrics::default());
    let shared = Shared::new(client.clone(), metrics.clone(), None);
    let autoscaler = Autoscaler::new(
        shared,
        Brokers::new(client, sc_reader),
        qw_reader,
        pod_reader,
    );
    autoscaler.ensure(&q);

    // First poll: no rates yet, the specification's rule: 3 tasks × 1 = 3 workers.
    let first = api
        .expect_apply(PATH, serde_json::to_value(&q).expect("json"))
        .await;
    assert!(
        first
            .query
            .contains(&format!("fieldManager={AUTOSCALER_MANAGER}")),
        "{}",
        first.query
    );
    let s = &first.body["status"];
    assert_eq!(s["desiredReplicas"], 3);
    let d = &s["lastScaleDecision"];
    assert_eq!((d["from"].clone(), d["to"].clone()), (json!(0), json!(3)));
    assert_eq!(d["term"], "QueueLength");
    assert_eq!(d["queueLength"], 3);
    assert!(
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains("scalingFactor 1")),
        "{d}"
    );

    // Three more tasks before each of the next polls. The second poll has one rate sample
    // only: still the specification's rule, 6 workers.
    let _: () = redis.lpush(&queue, &["d", "e", "f"]).await.expect("lpush");
    let second = api
        .expect_apply(PATH, serde_json::to_value(&q).expect("json"))
        .await;
    let d = &second.body["status"]["lastScaleDecision"];
    assert_eq!((d["from"].clone(), d["to"].clone()), (json!(3), json!(6)));
    assert_eq!(d["term"], "QueueLength");
    // Third poll: 3 arrivals/s with no worker ready; at the assumed 0.1 task/s per worker
    // (scalingFactor 1, targetDrainSeconds 10) the arrivals need 30 workers, and the 9 waiting
    // tasks 10 % more.
    let _: () = redis.lpush(&queue, &["g", "h", "i"]).await.expect("lpush");
    let third = api
        .expect_apply(PATH, serde_json::to_value(&q).expect("json"))
        .await;
    let s = &third.body["status"];
    // Polls are about a second apart: the rate is about 3/s, the count about 33.
    let desired = s["desiredReplicas"].as_i64().expect("desiredReplicas");
    assert!((30..=37).contains(&desired), "{s}");
    let d = &s["lastScaleDecision"];
    assert_eq!(
        (d["from"].clone(), d["to"].clone()),
        (json!(6), json!(desired))
    );
    assert_eq!(d["term"], "Backlog");
    assert_eq!(d["queueLength"], 9);
    let arrivals = d["arrivalRate"].as_f64().expect("arrivalRate");
    assert!((arrivals - 3.0).abs() < 0.3, "{d}");
    assert_eq!(d["workerThroughput"], 0.1);
    assert!(
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains("by Backlog: queue length 9") && m.contains("arrivals ")),
        "{d}"
    );

    // A ScaledUp Event says the same (the first two, recorded before the third apply).
    assert!(
        api.events.iter().any(|(t, reason, note)| t == "Normal"
            && reason == "ScaledUp"
            && note.contains("by QueueLength")),
        "{:?}",
        api.events
    );
    // The same numbers on /metrics.
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(
            r#"qworker_scale_decisions_total{namespace="decide",qworker="rated",term="Backlog"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"qworker_scaling{namespace="decide",qworker="rated",quantity="arrival_rate"}"#
        ),
        "{text}"
    );
    let _: () = redis.del(&queue).await.expect("cleanup");
}
