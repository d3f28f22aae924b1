//! A new QWorker's first status, against a mocked API server and the real local Redis: the
//! autoscaler's first look at the queue goes to the reconciler, which creates the pods it asks
//! for and writes both managers' fields in one apply; when that write fails, the autoscaler
//! writes its fields itself.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::json;
use support::redis;
use workerpool_api::QWorker;
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::autoscaler::{AUTOSCALER_MANAGER, Autoscaler};
use workerpool_operator::controllers::qworker::{Context, Expectations, reconcile};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const PODS: &str = "/api/v1/namespaces/handover/pods";

fn status_path(name: &str) -> String {
    format!("/apis/quickube.com/v1alpha1/namespaces/handover/qworkers/{name}/status")
}

/// A reconciler and its autoscaler for the status-less QWorker `name`, whose queue holds three
/// tasks (scalingFactor 1: three workers).
async fn start(
    name: &str,
) -> (
    Arc<Context>,
    QWorker,
    Arc<Metrics>,
    testkit::ApiServer,
    String,
) {
    let queue = format!("handover-{name}-{}", std::process::id());
    let mut redis = redis().await;
    let _: () = redis.del(&queue).await.expect("del");
    let _: () = redis.lpush(&queue, &["a", "b", "c"]).await.expect("lpush");
    let q: QWorker = testkit::qworker("handover", name, &queue)
        .spec(json!({"scaleConfig": {"minReplicas": 0, "maxReplicas": 5}}))
        .build();
    let (client, api) = testkit::mock();
    let qw_reader = testkit::cache_of([q.clone()]);
    let sc_reader = testkit::cache_of([testkit::local_redis("handover", "redis", "sc")]);
    let (pod_reader, mut pod_writer) = reflector::store::<Pod>();
    pod_writer.apply_watcher_event(&watcher::Event::InitDone);
    let metrics = Arc::new(Metrics::default());
    let shared = Shared::new(client.clone(), metrics.clone(), None);
    let brokers = Brokers::new(client, sc_reader);
    let autoscaler = Autoscaler::new(
        shared.clone(),
        brokers.clone(),
        qw_reader,
        pod_reader.clone(),
    );
    let ctx = Arc::new(Context {
        shared,
        pods: pod_reader.into(),
        brokers,
        autoscaler: Some(autoscaler),
        expectations: Expectations::default(),
    });
    // Leaked on purpose: the poll and the test end together.
    std::mem::forget(pod_writer);
    (ctx, q, metrics, api, queue)
}

/// Runs a reconcile that finds no answer yet (it starts the poll), then waits for the poll's
/// first read of the queue.
async fn first_look(
    ctx: &Arc<Context>,
    q: &QWorker,
    metrics: &Metrics,
    api: &mut testkit::ApiServer,
) {
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), ctx.clone()));
    let action = api.finish(task).await.expect("no error");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_millis(500)),
        "nothing decided before the autoscaler's first look"
    );
    let polls = || {
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text.lines()
            .any(|l| l.starts_with("qworker_poll_duration_seconds_count") && !l.ends_with(" 0"))
    };
    for _ in 0..100 {
        if polls() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(polls(), "the poll read the queue within 2 s");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answers the three pod creations of a reconcile.
async fn create_three(api: &mut testkit::ApiServer) {
    for _ in 0..3 {
        let (seen, send) = api.next().await;
        assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", PODS));
        send.send_response(testkit::response(201, &seen.body));
    }
}

#[tokio::test]
async fn a_new_qworker_gets_one_status_apply_with_both_managers_fields() {
    let (ctx, q, metrics, mut api, queue) = start("one-write").await;
    first_look(&ctx, &q, &metrics, &mut api).await;
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), ctx.clone()));
    // The pods the autoscaler's first look asks for, created at once.
    create_three(&mut api).await;
    let (seen, send) = api.next().await;
    assert_eq!(seen.path, status_path("one-write"));
    assert_eq!(
        seen.field_manager(),
        ("workerpool-operator".to_string(), false),
        "{}",
        seen.query
    );
    let s = &seen.body["status"];
    assert_eq!(s["desiredReplicas"], 3, "{s}");
    assert_eq!(s["queueLength"], 3, "{s}");
    assert_eq!(s["currentReplicas"], 3, "{s}");
    assert_eq!(s["observedGeneration"], 1, "{s}");
    assert_eq!(s["lastScaleDecision"]["to"], 3, "{s}");
    let broker = testkit::condition(s, "BrokerReachable").expect("BrokerReachable");
    assert_eq!(broker["status"], "True");
    assert!(testkit::condition(s, "Ready").is_some() && testkit::condition(s, "Scaling").is_some());
    send.send_response(testkit::response(200, &testkit::stored(&q)));
    api.finish(task).await.expect("reconcile ok");
    // Woken again before the watch delivered that write (the cache shows no status yet): it
    // waits, for an apply of its own fields alone would remove the autoscaler's.
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), ctx.clone()));
    assert_eq!(
        api.finish(task).await.expect("no error"),
        kube::runtime::controller::Action::requeue(Duration::from_millis(500))
    );
    // The autoscaler announces what was written, and writes nothing itself.
    api.expect_silence(Duration::from_millis(1500)).await;
    assert!(
        api.events.iter().any(|(t, reason, note)| t == "Normal"
            && reason == "ScaledUp"
            && note.contains("0 -> 3")),
        "{:?}",
        api.events
    );
    let _: () = redis().await.del(&queue).await.expect("cleanup");
}

#[tokio::test]
async fn when_the_reconciler_cannot_write_the_autoscaler_writes_its_fields_itself() {
    let (ctx, q, metrics, mut api, queue) = start("fallback").await;
    first_look(&ctx, &q, &metrics, &mut api).await;
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), ctx.clone()));
    create_three(&mut api).await;
    api.expect(
        "PATCH",
        &status_path("fallback"),
        500,
        testkit::status_error(500, "InternalError", "etcd timed out"),
    )
    .await;
    let seen = api
        .expect_apply(&status_path("fallback"), testkit::stored(&q))
        .await;
    assert_eq!(
        seen.field_manager(),
        (AUTOSCALER_MANAGER.to_string(), true),
        "{}",
        seen.query
    );
    assert_eq!(seen.body["status"]["desiredReplicas"], 3);
    assert!(seen.body["status"].get("observedGeneration").is_none());
    api.finish(task)
        .await
        .expect_err("the reconciler's write failed");
    let _: () = redis().await.del(&queue).await.expect("cleanup");
}
