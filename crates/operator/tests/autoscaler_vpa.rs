//! The autoscaler against a mocked API server and the real local Redis: activateVPA reads
//! PodMetrics (mocked responses) and records the largest use; missing metrics never stop scaling.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector;
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::json;
use workerpool_api::{QWorker, ScalerConfig};
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::autoscaler::Autoscaler;
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const NS: &str = "vpa";

fn qworker(queue: &str) -> QWorker {
    testkit::qworker(NS, "sized", queue)
        .spec(json!({
            "podSpec": {"containers": [{"name": "worker", "image": "w:1",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            "scaleConfig": {"minReplicas": 1, "maxReplicas": 5, "activateVPA": true}
        }))
        .build()
}

async fn start(
    queue: &str,
    tasks: &[&str],
) -> (testkit::ApiServer, redis::aio::MultiplexedConnection) {
    let (client, api) = testkit::mock();
    let (qw_reader, mut qw_writer) = reflector::store::<QWorker>();
    let (pod_reader, mut pod_writer) = reflector::store::<Pod>();
    let (sc_reader, mut sc_writer) = reflector::store::<ScalerConfig>();
    pod_writer.apply_watcher_event(&watcher::Event::InitDone);
    sc_writer.apply_watcher_event(&watcher::Event::Apply(testkit::local_redis(
        NS, "redis", "sc",
    )));
    let q = qworker(queue);
    qw_writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    let redis = redis::Client::open("redis://127.0.0.1:6379/")
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis at 127.0.0.1:6379");
    let mut conn = redis.clone();
    let _: () = conn.del(queue).await.expect("del");
    let _: () = conn.lpush(queue, tasks).await.expect("lpush");
    let shared = Shared::new(client.clone(), Arc::new(Metrics::default()), None);
    let autoscaler = Autoscaler::new(
        shared,
        Brokers::new(client, sc_reader),
        qw_reader,
        pod_reader,
    );
    autoscaler.ensure(&q);
    // The stores must outlive the test's requests.
    std::mem::forget((qw_writer, pod_writer, sc_writer));
    (api, redis)
}

#[tokio::test]
async fn pod_metrics_are_recorded_as_the_largest_use_per_container() {
    let queue = format!("vpa-record-{}", std::process::id());
    let (mut api, mut redis) = start(&queue, &["a", "b", "c"]).await;
    let (list, send) = api.next().await;
    assert_eq!(
        (list.method.as_str(), list.path.as_str()),
        ("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/vpa/pods")
    );
    assert!(
        list.query
            .contains("labelSelector=quickube.com%2Fqworker%3Dsized"),
        "one list by selector: {}",
        list.query
    );
    let metrics = json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList", "metadata": {},
    "items": [
        {"metadata": {"name": "sized-a", "namespace": NS}, "timestamp": "2026-11-23T10:00:00Z", "window": "30s",
         "containers": [{"name": "worker", "usage": {"cpu": "250m", "memory": "300Mi"}}]},
        {"metadata": {"name": "sized-b", "namespace": NS}, "timestamp": "2026-11-23T10:00:00Z", "window": "30s",
         "containers": [{"name": "worker", "usage": {"cpu": "400m", "memory": "120Mi"}}]}
    ]});
    send.send_response(
        http::Response::builder()
            .status(200)
            .body(kube::client::Body::from(
                serde_json::to_vec(&metrics).expect("json"),
            ))
            .expect("response"),
    );
    let status = api
        .expect_apply(
            "/apis/quickube.com/v1alpha1/namespaces/vpa/qworkers/sized/status",
            serde_json::to_value(qworker(&queue)).expect("json"),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["desiredReplicas"], 3, "scaling goes on");
    assert_eq!(s["maxContainerResourcesUsage"]["worker"]["cpu"], "400m");
    assert_eq!(s["maxContainerResourcesUsage"]["worker"]["memory"], "300Mi");
    let cond = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ResourceMetricsAvailable")
        .cloned()
        .expect("condition");
    assert_eq!(cond["status"], "True");
    let _: () = redis.del(&queue).await.expect("cleanup");
}

#[tokio::test]
async fn a_cluster_without_metrics_server_still_scales() {
    let queue = format!("vpa-missing-{}", std::process::id());
    let (mut api, mut redis) = start(&queue, &["a", "b"]).await;
    api.expect(
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/vpa/pods",
        404,
        testkit::status_error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
    .await;
    let status = api
        .expect_apply(
            "/apis/quickube.com/v1alpha1/namespaces/vpa/qworkers/sized/status",
            serde_json::to_value(qworker(&queue)).expect("json"),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["desiredReplicas"], 2);
    let cond = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ResourceMetricsAvailable")
        .cloned()
        .expect("condition");
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("MetricsUnavailable"))
    );
    let broker = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "BrokerReachable")
        .cloned()
        .expect("broker");
    assert_eq!(broker["status"], "True");
    let _: () = redis.del(&queue).await.expect("cleanup");
}

/// Like [`start`], with `pods` in the pod cache and `q` as the QWorker (its status included).
async fn start_with(
    q: QWorker,
    pods: Vec<Pod>,
    tasks: &[&str],
) -> (testkit::ApiServer, redis::aio::MultiplexedConnection) {
    let queue = q.spec.scale_config.queue.clone();
    let (client, api) = testkit::mock();
    let (qw_reader, mut qw_writer) = reflector::store::<QWorker>();
    let (pod_reader, mut pod_writer) = reflector::store::<Pod>();
    let (sc_reader, mut sc_writer) = reflector::store::<ScalerConfig>();
    pod_writer.apply_watcher_event(&watcher::Event::InitDone);
    for p in pods {
        pod_writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    sc_writer.apply_watcher_event(&watcher::Event::Apply(testkit::local_redis(
        NS, "redis", "sc",
    )));
    qw_writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    let redis = redis::Client::open("redis://127.0.0.1:6379/")
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis at 127.0.0.1:6379");
    let mut conn = redis.clone();
    let _: () = conn.del(&queue).await.expect("del");
    let _: () = conn.lpush(&queue, tasks).await.expect("lpush");
    let shared = Shared::new(client.clone(), Arc::new(Metrics::default()), None);
    let autoscaler = Autoscaler::new(
        shared,
        Brokers::new(client, sc_reader),
        qw_reader,
        pod_reader,
    );
    autoscaler.ensure(&q);
    std::mem::forget((qw_writer, pod_writer, sc_writer));
    (api, redis)
}

/// A worker pod of `sized` whose worker container was OOM-killed at `finished` and restarted.
fn oom_pod(name: &str, finished: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"quickube.com/qworker": "sized"},
            "ownerReferences": [{"apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
                "name": "sized", "uid": "sized-uid", "controller": true}]},
        "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "image": "",
            "imageID": "", "ready": true, "restartCount": 1, "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                "finishedAt": finished}}}]}
    }))
    .expect("pod")
}

async fn first_status(api: &mut testkit::ApiServer, q: &QWorker) -> serde_json::Value {
    api.expect(
        "GET",
        "/apis/metrics.k8s.io/v1beta1/namespaces/vpa/pods",
        200,
        json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetricsList",
               "metadata": {}, "items": []}),
    )
    .await;
    let status = api
        .expect_apply(
            "/apis/quickube.com/v1alpha1/namespaces/vpa/qworkers/sized/status",
            serde_json::to_value(q).expect("json"),
        )
        .await;
    status.body["status"].clone()
}

#[tokio::test]
async fn simultaneous_oom_kills_raise_memory_once_and_name_the_evidence() {
    let queue = format!("vpa-oom-{}", std::process::id());
    let q = qworker(&queue);
    let pods = vec![
        oom_pod("sized-aaaaa", "2026-11-23T10:00:00Z"),
        oom_pod("sized-bbbbb", "2026-11-23T10:00:01Z"),
        oom_pod("sized-ccccc", "2026-11-23T10:00:02Z"),
    ];
    let (mut api, mut redis) = start_with(q.clone(), pods, &["a"]).await;
    let s = first_status(&mut api, &q).await;
    assert_eq!(
        s["maxContainerResourcesUsage"]["worker"]["memory"], "96Mi",
        "request 64Mi × 1.5 once, not × 1.5³"
    );
    assert_eq!(s["oomKillsSeen"].as_array().map(Vec::len), Some(3));
    assert!(s["lastOomRaiseTime"].is_string());
    api.settle_events().await;
    let ooms: Vec<_> = api.events.iter().filter(|e| e.1 == "OOMKilled").collect();
    assert_eq!(ooms.len(), 1, "{:?}", api.events);
    assert!(
        ooms[0].2.contains("sized-ccccc") && ooms[0].2.contains("2026-11-23T10:00:02Z"),
        "{}",
        ooms[0].2
    );
    assert!(ooms[0].2.contains("none -> 96Mi"), "{}", ooms[0].2);
    let _: () = redis.del(&queue).await.expect("cleanup");
}

#[tokio::test]
async fn an_operator_restart_does_not_count_the_same_oom_kills_again() {
    let queue = format!("vpa-oom-restart-{}", std::process::id());
    let mut q = qworker(&queue);
    let kill = |pod: &str, at: &str| json!({"pod": pod, "podUid": format!("uid-{pod}"), "container": "worker", "finishedAt": at});
    // What the operator wrote before it restarted (long ago: the window is over).
    q.status = Some(
        serde_json::from_value(json!({
            "maxContainerResourcesUsage": {"worker": {"memory": "96Mi"}},
            "oomKillsSeen": [kill("sized-aaaaa", "2026-11-23T10:00:00Z"),
                             kill("sized-bbbbb", "2026-11-23T10:00:01Z")],
            "lastOomRaiseTime": "2026-11-23T10:00:05Z"
        }))
        .expect("status"),
    );
    let pods = vec![
        oom_pod("sized-aaaaa", "2026-11-23T10:00:00Z"),
        oom_pod("sized-bbbbb", "2026-11-23T10:00:01Z"),
    ];
    let (mut api, mut redis) = start_with(q.clone(), pods, &["a", "b"]).await;
    let s = first_status(&mut api, &q).await;
    assert_eq!(s["maxContainerResourcesUsage"]["worker"]["memory"], "96Mi");
    assert_eq!(s["oomKillsSeen"].as_array().map(Vec::len), Some(2));
    assert!(
        !api.events.iter().any(|e| e.1 == "OOMKilled"),
        "{:?}",
        api.events
    );
    let _: () = redis.del(&queue).await.expect("cleanup");
}
