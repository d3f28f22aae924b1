//! Reconcile tests of the QWorker controller against a mocked API server (and the real local
//! Redis where tasks are recovered): pod creation, victim choice, rollouts, expectations.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::{Value, json};
use support::redis;
use workerpool_api::{QWorker, QWorkerStatus, ScalerConfig};
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::qworker::build::{
    self, DRAIN_ANNOTATION, POD_SPEC_HASH_LABEL,
};
use workerpool_operator::controllers::qworker::plan::RECOVERY_FINALIZER;
use workerpool_operator::controllers::qworker::sweep::Sweeper;
use workerpool_operator::controllers::qworker::{Context, Expectations, reconcile, release};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit as testkit;

const NS: &str = "jobs";

fn qworker(desired: i32) -> QWorker {
    let mut q: QWorker = testkit::example(testkit::examples::QWORKER, NS, "qw-uid", 2);
    q.status = Some(QWorkerStatus {
        desired_replicas: desired,
        ..QWorkerStatus::default()
    });
    q
}

fn current_hash(q: &QWorker) -> String {
    build::pod_spec_hash(q, &build::template_spec(q, &Default::default()))
}

/// A running pod of `q` as the cache would hold it.
fn pod(q: &QWorker, name: &str, hash: &str, ready: bool, created: &str) -> Pod {
    let spec = build::template_spec(q, &Default::default());
    let mut p = build::pod(q, &spec, hash, name);
    p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().expect("timestamp"),
    ));
    if let Some(spec) = p.spec.as_mut() {
        spec.node_name = Some("node-1".into());
    }
    let worker = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .expect("a worker container");
    p.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": worker, "image": "", "imageID": "", "ready": ready,
                                   "restartCount": 0, "state": {"running": {}}}]
        }))
        .expect("status"),
    );
    p
}

struct Harness {
    ctx: Arc<Context>,
    pods: Writer<Pod>,
    configs: Writer<ScalerConfig>,
}

fn harness(client: kube::Client) -> Harness {
    let (pod_reader, pods) = reflector::store();
    let (config_reader, configs) = reflector::store();
    let shared = Shared::new(client.clone(), Arc::new(Metrics::default()), None);
    let ctx = Arc::new(Context {
        shared,
        pods: pod_reader.into(),
        brokers: Brokers::new(client, config_reader),
        autoscaler: None,
        expectations: Expectations::default(),
    });
    Harness { ctx, pods, configs }
}

impl Harness {
    fn with_pods(&mut self, pods: Vec<Pod>) {
        self.pods.apply_watcher_event(&watcher::Event::Init);
        for p in pods {
            self.pods.apply_watcher_event(&watcher::Event::InitApply(p));
        }
        self.pods.apply_watcher_event(&watcher::Event::InitDone);
    }
}

fn status_path(name: &str) -> String {
    format!("/apis/quickube.com/v1alpha1/namespaces/{NS}/qworkers/{name}/status")
}
const PODS: &str = "/api/v1/namespaces/jobs/pods";

fn stored(q: &QWorker) -> Value {
    serde_json::to_value(q).expect("json")
}

#[tokio::test]
async fn creates_the_desired_workers_with_the_protocol() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    h.with_pods(vec![]);
    let q = qworker(3);
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let hash = current_hash(&q);
    let mut names = Vec::new();
    for _ in 0..3 {
        let (seen, send) = api.next().await;
        assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", PODS));
        assert!(seen.query.contains("fieldManager=workerpool-operator"));
        let body = &seen.body;
        let name = body["metadata"]["name"].as_str().expect("name").to_string();
        assert!(name.starts_with("example-qworker-"), "{name}");
        assert_eq!(
            body["metadata"]["labels"]["quickube.com/qworker"],
            "example-qworker"
        );
        assert_eq!(
            body["metadata"]["labels"][POD_SPEC_HASH_LABEL],
            hash.as_str()
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "qw-uid");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(body["spec"]["restartPolicy"], "OnFailure");
        let env = body["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        let get = |n: &str| {
            env.iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(get("QWORKER_NAME")["value"], "example-qworker");
        assert_eq!(get("POD_SPEC_HASH")["value"], hash.as_str());
        assert_eq!(
            get("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            get("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        names.push(name);
        send.send_response(
            http::Response::builder()
                .status(201)
                .body(kube::client::Body::from(
                    serde_json::to_vec(&seen.body).expect("json"),
                ))
                .expect("response"),
        );
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3, "unique names");
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    let s = &status.body["status"];
    assert_eq!(s["currentReplicas"], 3);
    assert_eq!(s["currentPodSpecHash"], hash.as_str());
    assert_eq!(s["selector"], "quickube.com/qworker=example-qworker");
    assert_eq!(s["observedGeneration"], 2);
    assert!(
        s.get("desiredReplicas").is_none(),
        "desiredReplicas belongs to the autoscaler: {s}"
    );
    let conds = s["conditions"].as_array().expect("conditions");
    let scaling = conds
        .iter()
        .find(|c| c["type"] == "Scaling")
        .expect("Scaling");
    assert_eq!(scaling["status"], "True");
    api.finish(task).await.expect("reconcile ok");
    assert!(
        api.events
            .iter()
            .any(|e| e.1 == "Created" && e.2.starts_with("Created 3 worker pod(s)"))
    );

    // The watch has not delivered the new pods yet: a second reconcile must not create more.
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    assert_eq!(status.body["status"]["currentReplicas"], 3);
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn scale_down_drains_exactly_the_excess_not_ready_then_youngest() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    let q = qworker(2);
    let hash = current_hash(&q);
    h.with_pods(vec![
        pod(
            &q,
            "example-qworker-old",
            &hash,
            true,
            "2026-11-23T10:00:00Z",
        ),
        pod(
            &q,
            "example-qworker-mid",
            &hash,
            true,
            "2026-11-23T11:00:00Z",
        ),
        pod(
            &q,
            "example-qworker-new",
            &hash,
            true,
            "2026-11-23T12:00:00Z",
        ),
        pod(
            &q,
            "example-qworker-sick",
            &hash,
            false,
            "2026-11-23T09:00:00Z",
        ),
    ]);
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let mut drained = Vec::new();
    for _ in 0..2 {
        let (seen, send) = api.next().await;
        assert_eq!(seen.method, "PATCH");
        assert!(seen.path.starts_with(&format!("{PODS}/")), "{}", seen.path);
        assert_eq!(
            seen.body["metadata"]["annotations"][DRAIN_ANNOTATION],
            "scale-down"
        );
        drained.push(seen.path.rsplit('/').next().expect("name").to_string());
        send.send_response(
            http::Response::builder()
                .status(200)
                .body(kube::client::Body::from(
                    serde_json::to_vec(&pod(&q, "x", &hash, true, "2026-11-23T09:00:00Z"))
                        .expect("json"),
                ))
                .expect("response"),
        );
    }
    assert_eq!(drained, vec!["example-qworker-sick", "example-qworker-new"]);
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    assert_eq!(status.body["status"]["currentReplicas"], 2);
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.iter().any(|e| e.1 == "DrainRequested"));

    // Until the cache shows the annotations, a second reconcile must not drain anyone else:
    // its first request is the status write, with the same count.
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    assert_eq!(status.body["status"]["currentReplicas"], 2);
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn a_new_template_drains_old_pods_and_creates_new_ones() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    let q = qworker(1);
    h.with_pods(vec![pod(
        &q,
        "example-qworker-v1",
        "oldhash",
        true,
        "2026-11-23T10:00:00Z",
    )]);
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let (drain, send) = api.next().await;
    assert_eq!(
        (drain.method.as_str(), drain.path.as_str()),
        ("PATCH", "/api/v1/namespaces/jobs/pods/example-qworker-v1")
    );
    assert_eq!(
        drain.body["metadata"]["annotations"][DRAIN_ANNOTATION],
        "stale-hash"
    );
    assert_eq!(
        drain.body["metadata"]["annotations"]["quickube.com/current-pod-spec-hash"],
        current_hash(&q).as_str()
    );
    send.send_response(
        http::Response::builder()
            .status(200)
            .body(kube::client::Body::from(
                serde_json::to_vec(&pod(
                    &q,
                    "example-qworker-v1",
                    "oldhash",
                    true,
                    "2026-11-23T10:00:00Z",
                ))
                .expect("json"),
            ))
            .expect("response"),
    );
    let (create, send) = api.next().await;
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", PODS)
    );
    assert_eq!(
        create.body["metadata"]["labels"][POD_SPEC_HASH_LABEL],
        current_hash(&q).as_str()
    );
    send.send_response(
        http::Response::builder()
            .status(201)
            .body(kube::client::Body::from(
                serde_json::to_vec(&create.body).expect("json"),
            ))
            .expect("response"),
    );
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    assert_eq!(
        status.body["status"]["currentPodSpecHash"],
        current_hash(&q).as_str()
    );
    assert_eq!(status.body["status"]["currentReplicas"], 1);
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.iter().any(|e| e.1 == "RollingOut"));
}

#[tokio::test]
async fn finished_pods_without_finalizer_are_deleted_after_their_tasks_return_to_the_real_queue() {
    let queue = format!("test-recover-{}", std::process::id());
    let redis = redis::Client::open("redis://127.0.0.1:6379/").expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis at 127.0.0.1:6379");
    let processing = workerpool_queue::processing_list(&queue, "example-qworker-done");
    let _: () = conn.del(&[&queue, &processing]).await.expect("del");
    let _: () = conn.lpush(&processing, "task-42").await.expect("lpush");

    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    let mut q = qworker(1);
    q.spec.scale_config.queue = queue.clone();
    let hash = current_hash(&q);
    let mut done = pod(
        &q,
        "example-qworker-done",
        &hash,
        false,
        "2026-11-23T10:00:00Z",
    );
    done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).expect("status"));
    // Made by an older version, without the recovery finalizer: its tasks return before the delete.
    done.metadata.finalizers = None;
    h.with_pods(vec![
        done,
        pod(
            &q,
            "example-qworker-live",
            &hash,
            true,
            "2026-11-23T10:00:00Z",
        ),
    ]);
    let config: ScalerConfig = testkit::local_redis(NS, "example-scaler-config", "sc-uid");
    h.configs
        .apply_watcher_event(&watcher::Event::Apply(config));

    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    api.expect(
        "DELETE",
        "/api/v1/namespaces/jobs/pods/example-qworker-done",
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
    .await;
    let moved: Vec<String> = conn.lrange(&queue, 0, -1).await.expect("lrange");
    assert_eq!(
        moved,
        vec!["task-42"],
        "the finished worker's task is back in the queue before the delete"
    );
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    assert_eq!(status.body["status"]["currentReplicas"], 1);
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.iter().any(|e| e.1 == "TasksRecovered"));
    let _: () = conn.del(&[&queue, &processing]).await.expect("cleanup");
}

#[tokio::test]
async fn min_above_max_is_reported_on_the_status() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    h.with_pods(vec![]);
    let mut q = qworker(1);
    q.spec.scale_config.min_replicas = 5;
    q.spec.scale_config.max_replicas = 2;
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    let ready = &status.body["status"]["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["reason"].as_str()),
        (Some("Ready"), Some("InvalidSpec"))
    );
    let err = api.finish(task).await.expect_err("invalid");
    assert!(err.is_permanent());
    assert!(
        api.events
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "InvalidSpec")
    );
}

fn redis_config() -> ScalerConfig {
    testkit::local_redis(NS, "example-scaler-config", "sc-uid")
}

#[tokio::test]
async fn the_sweep_returns_the_tasks_of_workers_that_vanished_while_the_operator_was_down() {
    let queue = format!("test-sweep-{}", std::process::id());
    let old_queue = format!("test-sweep-old-{}", std::process::id());
    let untracked = format!("test-sweep-untracked-{}", std::process::id());
    let mut conn = redis().await;
    // A worker pod force-deleted while no operator ran: its list stays behind.
    let gone = workerpool_queue::processing_list(&queue, "example-qworker-bcd45");
    // The list of a worker of a QWorker deleted since; its queue is only in `status.queues`.
    let orphan = workerpool_queue::processing_list(&old_queue, "deleted-qworker-xkz42");
    // A live worker's list, and a list of a worker the operator never made: both stay.
    let live = workerpool_queue::processing_list(&queue, "example-qworker-live2");
    let foreign = workerpool_queue::processing_list(&queue, "some-other-host");
    // The list of a busy worker of a QWorker with the same name and queue in another
    // namespace (processing lists carry no namespace): it stays too.
    let neighbour = workerpool_queue::processing_list(&queue, "example-qworker-nsb22");
    // A queue this ScalerConfig does not serve: not looked at.
    let other = workerpool_queue::processing_list(&untracked, "someone-else-abc12");
    let keys = [
        &queue, &old_queue, &untracked, &gone, &orphan, &live, &foreign, &neighbour, &other,
    ];
    let _: () = conn.del(&keys).await.expect("del");
    for (list, task) in [
        (&gone, "task-7"),
        (&orphan, "task-6"),
        (&live, "task-8"),
        (&foreign, "task-9"),
        (&neighbour, "task-10"),
        (&other, "task-11"),
    ] {
        let _: () = conn.lpush(list, task).await.expect("lpush");
    }

    let (client, mut api) = testkit::mock();
    let mut h = harness(client.clone());
    let mut q = qworker(1);
    q.spec.scale_config.queue = queue.clone();
    let hash = current_hash(&q);
    let mut other_namespace = pod(
        &q,
        "example-qworker-nsb22",
        &hash,
        true,
        "2026-11-23T10:00:00Z",
    );
    other_namespace.metadata.namespace = Some("jobs-b".into());
    h.with_pods(vec![
        pod(
            &q,
            "example-qworker-live2",
            &hash,
            true,
            "2026-11-23T10:00:00Z",
        ),
        other_namespace,
    ]);
    let mut config = redis_config();
    config.status = Some(serde_json::from_value(json!({"queues": [old_queue]})).expect("status"));
    h.configs
        .apply_watcher_event(&watcher::Event::Apply(config));
    let (qworkers, mut qworker_writer) = reflector::store::<QWorker>();
    qworker_writer.apply_watcher_event(&watcher::Event::Apply(q.clone()));
    let mut sweeper = Sweeper::new(
        h.ctx.shared.clone(),
        h.ctx.brokers.clone(),
        qworkers,
        h.ctx.pods.store().clone(),
        None,
    );

    let task = tokio::spawn(async move {
        sweeper.tick().await;
        sweeper
    });
    // The queue in use is recorded before the sweep looks, with the sweep's own manager.
    let recorded = api
        .expect_apply(
            "/apis/quickube.com/v1alpha1/namespaces/jobs/scalerconfigs/example-scaler-config/status",
            json!({"spec": serde_json::to_value(&redis_config().spec).expect("spec")}),
        )
        .await;
    assert!(
        recorded
            .query
            .contains("fieldManager=workerpool-operator-sweep")
    );
    let mut want = vec![old_queue.clone(), queue.clone()];
    want.sort();
    assert_eq!(recorded.body["status"], json!({"queues": want}));
    // Each vanished worker is confirmed gone by the API server, by name, in every namespace.
    let mut asked = Vec::new();
    for _ in 0..2 {
        let seen = api
            .expect(
                "GET",
                "/api/v1/pods",
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
            )
            .await;
        asked.push(seen.query);
    }
    assert!(
        asked.iter().any(|q| q.contains("example-qworker-bcd45")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|q| q.contains("deleted-qworker-xkz42")),
        "{asked:?}"
    );
    api.finish(task).await;

    let queued: Vec<String> = conn.lrange(&queue, 0, -1).await.expect("lrange");
    assert_eq!(queued, vec!["task-7"], "the vanished worker's task returns");
    let requeued: Vec<String> = conn.lrange(&old_queue, 0, -1).await.expect("lrange");
    assert_eq!(
        requeued,
        vec!["task-6"],
        "so does the task of a deleted QWorker's worker, found by its recorded queue"
    );
    for (list, task, why) in [
        (&live, "task-8", "a live worker keeps its task"),
        (&foreign, "task-9", "lists of other workers are not touched"),
        (
            &neighbour,
            "task-10",
            "the busy worker of the same QWorker name in another namespace keeps its task",
        ),
        (
            &other,
            "task-11",
            "a queue the ScalerConfig does not serve is not swept",
        ),
    ] {
        let left: Vec<String> = conn.lrange(list, 0, -1).await.expect("lrange");
        assert_eq!(left, vec![task], "{why}");
    }
    assert_eq!(
        api.events
            .iter()
            .filter(|e| e.1 == "TasksRecovered")
            .count(),
        2
    );
    let _: () = conn.del(&keys).await.expect("cleanup");
}

#[tokio::test]
async fn a_deleted_pod_is_released_only_after_its_worker_stopped_and_its_tasks_returned() {
    let queue = format!("test-release-{}", std::process::id());
    let mut conn = redis().await;
    let name = "example-qworker-fgh78";
    let processing = workerpool_queue::processing_list(&queue, name);
    let _: () = conn.del(&[&queue, &processing]).await.expect("del");
    let _: () = conn.lpush(&processing, "task-1").await.expect("lpush");

    let (client, mut api) = testkit::mock();
    let (qworkers, _writer) = reflector::store::<QWorker>();
    let (config_reader, mut configs) = reflector::store();
    configs.apply_watcher_event(&watcher::Event::Apply(redis_config()));
    let ctx = Arc::new(release::Context {
        shared: Shared::new(client.clone(), Arc::new(Metrics::default()), None),
        qworkers,
        brokers: Brokers::new(client, config_reader),
    });
    let mut q = qworker(1);
    q.spec.scale_config.queue = queue.clone();
    let mut p = pod(&q, name, &current_hash(&q), true, "2026-11-23T10:00:00Z");
    p.metadata.resource_version = Some("41".into());
    assert_eq!(
        p.metadata.finalizers.as_deref(),
        Some(&[RECOVERY_FINALIZER.to_string()][..])
    );

    // Deleted gracefully a moment ago; the worker still runs: nothing happens yet.
    let soon =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(30);
    p.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(soon));
    let waited = release::reconcile(Arc::new(p.clone()), ctx.clone())
        .await
        .expect("release check");
    assert!(
        format!("{waited:?}").contains("requeue_after: Some"),
        "{waited:?}"
    );
    let still: Vec<String> = conn.lrange(&processing, 0, -1).await.expect("lrange");
    assert_eq!(still, vec!["task-1"], "a running worker keeps its task");

    // The kubelet reports the worker terminated: tasks back, then the finalizer goes.
    if let Some(cs) = p
        .status
        .as_mut()
        .and_then(|s| s.container_statuses.as_mut())
    {
        cs[0].state = serde_json::from_value(json!({"terminated": {"exitCode": 137}})).ok();
    }
    let task = tokio::spawn(release::reconcile(Arc::new(p.clone()), ctx.clone()));
    let patch = api
        .expect(
            "PATCH",
            &format!("{PODS}/{name}"),
            200,
            serde_json::to_value(&p).expect("pod"),
        )
        .await;
    assert_eq!(patch.body["metadata"]["finalizers"], json!([]));
    assert_eq!(patch.body["metadata"]["resourceVersion"], "41");
    let queued: Vec<String> = conn.lrange(&queue, 0, -1).await.expect("lrange");
    assert_eq!(
        queued,
        vec!["task-1"],
        "the task is back before the finalizer goes"
    );
    api.finish(task).await.expect("released");
    let _: () = conn.del(&[&queue, &processing]).await.expect("cleanup");
}

#[tokio::test]
async fn a_deleted_qworker_leaves_no_expectations_nor_metric_series_behind() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    h.with_pods(vec![]);
    let q = qworker(2);
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    for _ in 0..2 {
        api.expect(
            "POST",
            PODS,
            201,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "created", "namespace": NS}}),
        )
        .await;
    }
    api.expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(h.ctx.expectations.len(), 1, "two creates are expected");
    let series = |metrics: &Metrics| {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        workerpool_operator::metrics::encode(&registry)
            .expect("encode")
            .lines()
            .filter(|l| l.contains("qworker=\"example-qworker\""))
            .count()
    };
    assert!(
        series(&h.ctx.shared.metrics) > 0,
        "pods_created counts the creates"
    );

    workerpool_operator::controllers::qworker::forget(&h.ctx, &q);
    assert!(h.ctx.expectations.is_empty(), "expectations freed");
    assert_eq!(series(&h.ctx.shared.metrics), 0, "metric series gone");
}

#[tokio::test]
async fn a_deleted_scalerconfig_closes_its_broker_connection() {
    let (client, _api) = testkit::mock();
    let (config_reader, mut configs) = reflector::store();
    configs.apply_watcher_event(&watcher::Event::Apply(redis_config()));
    let brokers = Brokers::new(client, config_reader);
    let broker = brokers
        .get(NS, "example-scaler-config")
        .await
        .unwrap_or_else(|e| panic!("connect to the local Redis: {e}"));
    broker.ping().await.expect("ping");
    let connection = Arc::downgrade(&broker);
    drop(broker);
    assert!(
        connection.upgrade().is_some(),
        "the pool keeps the connection"
    );
    assert_eq!(brokers.len(), 1);

    brokers.remove(NS, "example-scaler-config");
    assert!(
        connection.upgrade().is_none(),
        "the connection is dropped (closed) with its ScalerConfig"
    );
    assert!(brokers.is_empty());
}

#[tokio::test]
async fn a_crashed_pod_is_kept_its_tasks_returned_and_its_replacement_backs_off() {
    let queue = format!("test-crash-{}", std::process::id());
    let mut conn = redis().await;
    let processing = workerpool_queue::processing_list(&queue, "example-qworker-crash");
    let _: () = conn.del(&[&queue, &processing]).await.expect("del");
    let _: () = conn.lpush(&processing, "task-7").await.expect("lpush");

    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    let mut q = qworker(1);
    q.spec.scale_config.queue = queue.clone();
    q.spec
        .pod_spec
        .edit(|s| s.restart_policy = Some("Never".into()));
    let hash = current_hash(&q);
    let mut crashed = pod(
        &q,
        "example-qworker-crash",
        &hash,
        false,
        "2026-11-23T10:00:00Z",
    );
    // Crashed on start-up just now (restartPolicy Never): the pod is Failed.
    let finished = k8s_openapi::jiff::Timestamp::now().to_string();
    crashed.status = Some(
        serde_json::from_value(json!({
            "phase": "Failed",
            "containerStatuses": [{"name": "worker", "image": "", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": finished}}}]
        }))
        .expect("status"),
    );
    h.with_pods(vec![crashed]);
    h.configs
        .apply_watcher_event(&watcher::Event::Apply(redis_config()));

    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    // Kept, not deleted: its task goes back first, then it is marked with its crash streak.
    let mark = api
        .expect(
            "PATCH",
            &format!("{PODS}/example-qworker-crash"),
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "example-qworker-crash"}}),
        )
        .await;
    assert_eq!(
        mark.body["metadata"]["annotations"]["quickube.com/crash-streak"],
        "1"
    );
    let moved: Vec<String> = conn.lrange(&queue, 0, -1).await.expect("lrange");
    assert_eq!(moved, vec!["task-7"], "the crashed worker's task is back");
    // No replacement yet: the status says why.
    let status = api
        .expect_apply(&status_path("example-qworker"), stored(&q))
        .await;
    let scaling = status.body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Scaling"))
        .cloned()
        .expect("Scaling condition");
    assert_eq!(scaling["status"], "False");
    assert_eq!(scaling["reason"], "CrashLooping");
    let message = scaling["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("example-qworker-crash") && message.contains("exit code 3"),
        "{message}"
    );
    assert_eq!(status.body["status"]["currentReplicas"], 0);
    api.finish(task).await.expect("reconcile ok");
    let _: () = conn.del(&[&queue, &processing]).await.expect("cleanup");
}

/// A QWorker whose status the reconciler wrote with the autoscaler's first fields (a hand-over):
/// `BrokerReachable`, `desiredReplicas` and `queueLength` there, the autoscaler not among its
/// managers yet (`autoscaler_applied`: `managedFields` absent), an older `observedGeneration`.
fn handed_over() -> QWorker {
    let mut q = qworker(0);
    q.spec.scale_config.min_replicas = 0;
    q.status = Some(
        serde_json::from_value(json!({
            "desiredReplicas": 0, "queueLength": 0, "observedGeneration": 1,
            "currentReplicas": 0, "currentPodSpecHash": current_hash(&q),
            "selector": "quickube.com/qworker=example-qworker",
            "conditions": [
                {"type": "BrokerReachable", "status": "True", "reason": "QueueRead",
                 "message": "queue length 0", "lastTransitionTime": "2026-12-07T10:00:00Z",
                 "observedGeneration": 1},
                {"type": "Ready", "status": "True", "reason": "WorkersReady",
                 "message": "All 0 worker(s) are ready", "lastTransitionTime": "2026-12-07T10:00:00Z",
                 "observedGeneration": 1},
            ]
        }))
        .expect("status"),
    );
    q
}

/// The types of the conditions of an applied status.
fn condition_types(status: &Value) -> Vec<String> {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| c["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn until_the_autoscaler_applies_the_reconciler_repeats_its_fields_without_forcing() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    h.with_pods(vec![]);
    let q = handed_over();
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let (seen, send) = api.next().await;
    assert_eq!(seen.path, status_path("example-qworker"));
    assert_eq!(
        seen.field_manager(),
        ("workerpool-operator".to_string(), false),
        "carried fields are applied without forcing: {}",
        seen.query
    );
    let s = &seen.body["status"];
    assert_eq!(s["observedGeneration"], 2);
    assert_eq!(
        (s["desiredReplicas"].clone(), s["queueLength"].clone()),
        (json!(0), json!(0))
    );
    let mut types = condition_types(s);
    types.sort();
    assert_eq!(types, ["BrokerReachable", "Ready", "Scaling"]);
    send.send_response(testkit::response(200, &stored(&q)));
    api.finish(task).await.expect("reconcile ok");

    // Once the autoscaler has applied (the cache keeps that as an empty `managedFields`), the
    // reconciler applies its own fields alone, forcing as before.
    let mut q = handed_over();
    q.metadata.managed_fields = Some(Vec::new());
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    let seen = api
        .expect_operator_apply(&status_path("example-qworker"), stored(&q))
        .await;
    let s = &seen.body["status"];
    assert!(
        s.get("desiredReplicas").is_none() && s.get("queueLength").is_none(),
        "{s}"
    );
    assert_eq!(condition_types(s), ["Ready", "Scaling"]);
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn a_conflict_with_the_autoscaler_leaves_it_its_fields() {
    let (client, mut api) = testkit::mock();
    let mut h = harness(client);
    h.with_pods(vec![]);
    let q = handed_over();
    let task = tokio::spawn(reconcile(Arc::new(q.clone()), h.ctx.clone()));
    // The autoscaler changed desiredReplicas after the cache saw the object.
    let seen = api
        .expect(
            "PATCH",
            &status_path("example-qworker"),
            409,
            testkit::status_error(
                409,
                "Conflict",
                "Apply failed with 1 conflict: conflict with \"workerpool-operator-autoscaler\" with subresource \"status\": .status.desiredReplicas",
            ),
        )
        .await;
    assert_eq!(seen.body["status"]["desiredReplicas"], 0);
    let seen = api
        .expect_operator_apply(&status_path("example-qworker"), stored(&q))
        .await;
    let s = &seen.body["status"];
    assert!(
        s.get("desiredReplicas").is_none(),
        "the autoscaler's now: {s}"
    );
    assert_eq!(condition_types(s), ["Ready", "Scaling"]);
    api.finish(task)
        .await
        .expect("no error: the reconciler's fields were written");
}
