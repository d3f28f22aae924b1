//! Self-checks of the suite that need no cluster, so that they run in every `cargo test`: the
//! expectations the scenarios hold a cluster to are checked here against the operator's own
//! builders, status code, metrics encoding, HTTP endpoints and Redis adapter. When one of them
//! fails, the operator changed and the end-to-end expectations must follow (or the change is a
//! bug).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use workerpool_api::storm::PoolPhase;
use workerpool_api::{
    QWorker, QWorkerStatus, StormCluster, StormWorkerPool, StormWorkerPoolStatus,
};
use workerpool_operator::controllers::qworker::build as qbuild;
use workerpool_operator::controllers::stormworkerpool::{build as sbuild, status as sstatus};
use workerpool_operator::metrics::{ResourceCollector, encode};

use crate::harness::{Operator, documents, find_series, free_port, http_get, logs_dir};
use crate::{qworker, storm};

fn cluster() -> StormCluster {
    let objects = documents(storm::CLUSTER_AND_TOPOLOGIES, "ns", |_| {}).expect("cluster manifest");
    let (_, object) = objects
        .into_iter()
        .find(|(gvk, _)| gvk.kind == "StormCluster")
        .expect("a StormCluster document");
    object.try_parse().expect("a StormCluster")
}

fn pool(case: &storm::PoolCase) -> StormWorkerPool {
    let mut pool: StormWorkerPool = serde_yaml::from_str(case.yaml).expect(case.file);
    pool.metadata.namespace = Some("ns".into());
    pool.metadata.uid = Some(format!("uid-{}", case.name));
    pool.metadata.generation = Some(1);
    pool
}

fn example_qworker() -> QWorker {
    let mut qw: QWorker = serde_yaml::from_str(qworker::QWORKER).expect("qworker.yaml");
    qw.metadata.namespace = Some("ns".into());
    qw.metadata.uid = Some("uid-qw".into());
    qw
}

#[test]
fn selfcheck_examples_parse_as_namespaced_objects() {
    let kinds = |yaml: &str, edit: fn(&mut serde_json::Value)| -> Vec<String> {
        documents(yaml, "wpo-e2e-x", edit)
            .expect("parse")
            .iter()
            .map(|(gvk, o)| {
                assert_eq!(o.metadata.namespace.as_deref(), Some("wpo-e2e-x"));
                format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind)
            })
            .collect()
    };
    assert_eq!(
        kinds(storm::CLUSTER_AND_TOPOLOGIES, |_| {}),
        [
            "storm.apache.org/v1beta1/StormCluster",
            "storm.apache.org/v1beta1/StormTopology",
            "storm.apache.org/v1beta1/StormTopology",
            "storm.apache.org/v1beta1/StormTopology"
        ]
    );
    for case in &storm::POOLS {
        assert_eq!(
            kinds(case.yaml, |_| {}),
            ["storm.apache.org/v1beta1/StormWorkerPool"]
        );
    }
    assert_eq!(
        kinds(qworker::SCALER_CONFIG, |_| {}),
        ["quickube.com/v1alpha1/ScalerConfig", "/v1/Secret"]
    );
    let edited = documents(qworker::SCALER_CONFIG, "x", |doc| {
        if doc["kind"] == "ScalerConfig" {
            doc["spec"]["config"]["host"] = serde_json::json!("redis.invalid");
        }
    })
    .expect("parse");
    assert_eq!(edited[0].1.data["spec"]["config"]["host"], "redis.invalid");
    assert_eq!(
        kinds(qworker::QWORKER, |_| {}),
        ["quickube.com/v1alpha1/QWorker"]
    );
}

#[test]
fn selfcheck_storm_expectations_match_the_builders() {
    let cluster = cluster();
    for case in &storm::POOLS {
        let pool = pool(case);
        sbuild::validate(&pool).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let c = sbuild::children(&pool, &cluster).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        storm::check_objects(
            case,
            &pool,
            &c.deployment,
            &c.service,
            &c.config_map,
            c.hpa.as_ref(),
            c.pdb.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let replicas = c.deployment.spec.as_ref().and_then(|s| s.replicas);
        match case.autoscaling {
            Some(_) => assert_eq!(replicas, None, "{}: the HPA owns replicas", case.name),
            None => assert_eq!(replicas, case.replicas, "{}", case.name),
        }
    }

    // The invalid target the scenario sets is one the operator reports as InvalidSpec.
    let mut full = pool(&storm::POOLS[2]);
    if let Some(auto) = full.spec.autoscaling.as_mut() {
        auto.custom_metrics.truncate(1);
        auto.custom_metrics[0].target_average_value = Some("lots".into());
    }
    let err = sbuild::validate(&full).expect_err("\"lots\" is not a quantity");
    assert!(err.to_string().contains("lots"), "{err}");
    assert_eq!(err.category().as_str(), "InvalidSpec");
}

#[test]
fn selfcheck_storm_status_messages() {
    let pool = pool(&storm::POOLS[0]);
    let deployment = |ready: i32| Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            ..DeploymentSpec::default()
        }),
        status: Some(DeploymentStatus {
            replicas: Some(3),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            updated_replicas: Some(3),
            observed_generation: Some(1),
            ..DeploymentStatus::default()
        }),
        ..Deployment::default()
    };
    let now = Timestamp::now();
    let ready = sstatus::running(
        &pool,
        &workerpool_operator::cache::child::Child::of(&deployment(3)),
        None,
        now,
    );
    assert_eq!(ready.phase, Some(PoolPhase::Running));
    assert_eq!(ready.message.as_deref(), Some("All 3 worker(s) are ready"));
    let ready_cond = ready
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready_cond.status.as_str(), ready_cond.reason.as_str()),
        ("True", "WorkersReady")
    );
    let auto = ready
        .conditions
        .iter()
        .find(|c| c.type_ == "Autoscaling")
        .expect("Autoscaling");
    assert_eq!(auto.reason, "Disabled");
    let pending = sstatus::running(
        &pool,
        &workerpool_operator::cache::child::Child::of(&deployment(0)),
        None,
        now,
    );
    assert_eq!(pending.phase, Some(PoolPhase::Pending));
    assert_eq!(pending.message.as_deref(), Some("0/3 worker(s) are ready"));
}

#[test]
fn selfcheck_qworker_pod_expectations_match_the_builder() {
    let qw = example_qworker();
    assert_eq!(qbuild::selector(&qw), qworker::SELECTOR);
    let spec = qbuild::template_spec(&qw, &BTreeMap::new());
    let hash = qbuild::pod_spec_hash(&qw, &spec);
    let pod = qbuild::pod(&qw, &spec, &hash, &qbuild::pod_name(qworker::NAME));
    qworker::check_worker_pod(&pod, &qw, &hash, qworker::IMAGE).expect("first pod");

    let mut changed = qw.clone();
    changed
        .spec
        .pod_spec
        .edit(|s| s.containers[0].image = Some(qworker::NEW_IMAGE.into()));
    let new_spec = qbuild::template_spec(&changed, &BTreeMap::new());
    let new_hash = qbuild::pod_spec_hash(&changed, &new_spec);
    assert_ne!(hash, new_hash, "a new image must change the pod-spec hash");
    let pod = qbuild::pod(
        &changed,
        &new_spec,
        &new_hash,
        &qbuild::pod_name(qworker::NAME),
    );
    qworker::check_worker_pod(&pod, &changed, &new_hash, qworker::NEW_IMAGE).expect("new pod");
}

#[test]
fn selfcheck_metrics_series_as_the_operator_encodes_them() {
    let case = &storm::POOLS[0];
    let mut p = pool(case);
    p.status = Some(StormWorkerPoolStatus {
        phase: Some(PoolPhase::Running),
        replicas: 3,
        ready_replicas: 3,
        available_replicas: 3,
        ..StormWorkerPoolStatus::default()
    });
    let (pools, mut pool_writer) = reflector::store::<StormWorkerPool>();
    pool_writer.apply_watcher_event(&watcher::Event::Apply(p));
    let mut q = example_qworker();
    q.status = Some(QWorkerStatus {
        desired_replicas: 1,
        current_replicas: 1,
        queue_length: Some(0),
        ..QWorkerStatus::default()
    });
    let (qworkers, mut qworker_writer) = reflector::store::<QWorker>();
    qworker_writer.apply_watcher_event(&watcher::Event::Apply(q));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ResourceCollector {
        pools: Some(pools),
        qworkers: Some(qworkers),
        ..ResourceCollector::default()
    }));
    let body = encode(&registry).expect("encode");

    let ready = find_series(
        &body,
        "storm_worker_pool_replicas",
        &[
            ("pool", case.name),
            ("namespace", "ns"),
            ("topology", case.topology),
            ("state", "ready"),
        ],
    )
    .expect("ready series");
    assert!(ready.ends_with(" 3"), "{ready}");
    find_series(
        &body,
        "storm_worker_pool_info",
        &[
            ("pool", case.name),
            ("namespace", "ns"),
            ("topology", case.topology),
        ],
    )
    .expect("info series");
    let labels = [
        ("namespace", "ns"),
        ("qworker", qworker::NAME),
        ("queue", qworker::QUEUE),
    ];
    let desired = find_series(&body, "qworker_desired_replicas", &labels).expect("desired");
    assert!(desired.ends_with(" 1"), "{desired}");
    find_series(&body, "qworker_current_replicas", &labels).expect("current");
    find_series(&body, "qworker_queue_length", &labels).expect("queue length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selfcheck_operator_process_serves_http_and_stops() {
    // A kubeconfig naming a port nobody listens on: the operator starts, its controllers keep
    // retrying, and its HTTP endpoints answer.
    let dir = logs_dir();
    std::fs::create_dir_all(&dir).expect("log dir");
    let kubeconfig = dir.join("selfcheck-kubeconfig.yaml");
    let port = free_port().expect("port");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\n    namespace: default\ncurrent-context: none\nusers:\n- name: none\n  user:\n    token: none\n"
        ),
    )
    .expect("kubeconfig");
    let operator = Operator::start("selfcheck", Some(&kubeconfig)).expect("start the operator");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match http_get(operator.port, "/healthz").await {
            Ok((200, _)) => break,
            other => {
                assert!(
                    operator.exited().is_none(),
                    "the operator exited: {}",
                    operator.log_tail(20)
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "/healthz never answered 200: {other:?}\n{}",
                    operator.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (code, _) = http_get(operator.port, "/readyz").await.expect("/readyz");
    assert_eq!(code, 503, "not ready without an API server");
    let (code, body) = http_get(operator.port, "/metrics").await.expect("/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("storm_worker_pool_info"), "{body}");
    operator.stop();
    assert!(
        operator.exited().is_none(),
        "stopped: no child left to poll"
    );
    let log = std::fs::read_to_string(&operator.log).expect("log file");
    assert!(log.contains("serving /metrics"), "{log}");
}
