//! Reconcile tests of the StormCluster controller against a mocked API server and a fake Storm
//! UI client: the exact requests, the applied objects, the written status and the Events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DeploymentStatus, StatefulSetStatus};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use workerpool_api::storm::StormCluster;
use workerpool_operator::cache::child::{Child, ChildKind};
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::stormcluster::status::{self, Daemons, StormRead};
use workerpool_operator::controllers::stormcluster::{
    ChildCaches, ClusterMetrics, Context, build, reconcile,
};
use workerpool_operator::metrics::Metrics;
use workerpool_storm::model::NumberOrText;
use workerpool_storm::{ClusterSummary, NimbusStatus, NimbusSummary};
use workerpool_testkit::{
    self as testkit, Builder, FakeConnector, FakeStorm, cache_of, condition, stored,
};

/// A cache of the views of `objects`, as the controller's watch of its children fills it.
fn views<K: ChildKind>(
    objects: impl IntoIterator<Item = K>,
) -> kube::runtime::reflector::Store<Child<K>> {
    cache_of(objects.into_iter().map(|o| Child::of(&o)))
}

const NS: &str = "team-a";

fn managed() -> StormCluster {
    cluster(json!({"mode": "Managed", "zookeeperServers": ["zk-0.zk", "zk-1.zk"]}))
}

fn external() -> StormCluster {
    cluster(json!({"mode": "External", "zookeeperServers": ["zk-0.zk"],
        "uiUrl": "http://admin:s3cret@storm-ui.storm:8080", "nimbusSeeds": ["nimbus-a.storm"]}))
}

fn cluster(spec: Value) -> StormCluster {
    Builder::new(NS, "storm")
        .uid("cluster-uid")
        .generation(2)
        .spec(spec)
        .build()
}

fn context(
    client: kube::Client,
    connector: Arc<FakeConnector>,
    caches: ChildCaches,
) -> Arc<Context> {
    Arc::new(Context::new(
        Shared::new(client, Arc::new(Metrics::default()), None),
        connector,
        Arc::new(ClusterMetrics::default()),
        caches,
    ))
}

fn path(group_version: &str, kind: &str, name: &str) -> String {
    testkit::object_path(NS, group_version, kind, name)
}

fn owned_by_cluster(seen: &testkit::Seen) {
    let owner = &seen.body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "StormCluster", "{}", seen.path);
    assert_eq!(owner["uid"], "cluster-uid", "{}", seen.path);
    assert_eq!(owner["controller"], true, "{}", seen.path);
    assert_eq!(
        seen.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "workerpool-operator"
    );
}

/// Expects the five applies of a Managed cluster named `storm`; the StatefulSet and Deployment
/// report `ready` ready pods. Returns the applied bodies in order.
async fn expect_managed_applies(api: &mut testkit::ApiServer, ready: i32) -> Vec<testkit::Seen> {
    let cm = api
        .expect_operator_apply(&path("v1", "configmaps", "storm-config"), json!({}))
        .await;
    let headless = api
        .expect_operator_apply(&path("v1", "services", "storm-nimbus"), json!({}))
        .await;
    let sts = api
        .expect_operator_apply(
            &path("apps/v1", "statefulsets", "storm-nimbus"),
            json!({"status": {"replicas": 1, "readyReplicas": ready}}),
        )
        .await;
    let ui = api
        .expect_operator_apply(
            &path("apps/v1", "deployments", "storm-ui"),
            json!({"status": {"replicas": 1, "readyReplicas": ready}}),
        )
        .await;
    let ui_svc = api
        .expect_operator_apply(&path("v1", "services", "storm-ui"), json!({}))
        .await;
    vec![cm, headless, sts, ui, ui_svc]
}

#[tokio::test]
async fn a_managed_cluster_gets_its_objects_and_reports_the_leader() {
    let (client, mut api) = testkit::mock();
    let c = managed();
    let connector = FakeConnector::new(FakeStorm::leader("storm-nimbus-0.storm-nimbus.team-a.svc"));
    let ctx = context(client, connector.clone(), ChildCaches::default());
    let task = tokio::spawn(reconcile(Arc::new(c.clone()), ctx));

    let applied = expect_managed_applies(&mut api, 1).await;
    for seen in &applied {
        owned_by_cluster(seen);
    }
    let yaml = applied[0].body["data"]["storm.yaml"]
        .as_str()
        .expect("storm.yaml");
    assert!(
        yaml.contains("storm-nimbus-0.storm-nimbus.team-a.svc"),
        "{yaml}"
    );
    assert!(yaml.contains("nimbus.thrift.port: 6627"), "{yaml}");
    assert_eq!(applied[1].body["spec"]["clusterIP"], "None");
    assert_eq!(applied[1].body["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(applied[2].body["spec"]["serviceName"], "storm-nimbus");
    assert_eq!(applied[2].body["spec"]["replicas"], 1);
    let script = applied[2].body["spec"]["template"]["spec"]["containers"][0]["command"][2]
        .as_str()
        .expect("script");
    assert!(
        script.contains("${POD_NAME}.storm-nimbus.team-a.svc"),
        "{script}"
    );
    assert!(script.ends_with("exec storm nimbus\n"), "{script}");
    assert_eq!(
        applied[2].body["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        1000
    );
    assert_eq!(applied[3].body["spec"]["replicas"], 1);
    assert_eq!(applied[4].body["spec"]["ports"][0]["port"], 8080);

    let status = api
        .expect_apply(
            &path("storm.apache.org/v1beta1", "stormclusters", "storm/status"),
            stored(&c),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Running", "{s}");
    assert_eq!(
        s["nimbusLeader"],
        "storm-nimbus-0.storm-nimbus.team-a.svc:6627"
    );
    assert_eq!(s["stormVersion"], "2.8.8");
    assert_eq!(s["supervisors"], 2);
    assert_eq!(
        (s["slotsTotal"].clone(), s["slotsFree"].clone()),
        (json!(8), json!(5))
    );
    assert_eq!(s["uiUrl"], "http://storm-ui.team-a.svc:8080");
    assert_eq!(s["observedGeneration"], 2);
    assert_eq!(
        s["nimbusSeeds"],
        json!(["storm-nimbus-0.storm-nimbus.team-a.svc"])
    );
    for (t, reason) in [
        ("Ready", "Running"),
        ("Reachable", "UIReachable"),
        ("DaemonsReady", "DaemonsReady"),
    ] {
        let cond = condition(s, t).unwrap_or_else(|| panic!("no {t}"));
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("True"), Some(reason))
        );
        assert_eq!(cond["observedGeneration"], 2);
    }

    let action = api.finish(task).await.expect("reconcile ok");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert_eq!(
        connector.urls(),
        vec!["http://storm-ui.team-a.svc:8080".to_string()]
    );
    let reasons: Vec<&str> = api.events.iter().map(|e| e.1.as_str()).collect();
    // The children's creation is one Event for the whole reconcile, published after it.
    assert_eq!(reasons, vec!["StormReachable", "LeaderElected", "Created"]);
    assert_eq!(
        api.events[2].2,
        "Created ConfigMap storm-config, Service storm-nimbus, StatefulSet storm-nimbus, Deployment storm-ui, Service storm-ui"
    );
}

#[tokio::test]
async fn an_external_cluster_gets_nothing_but_its_status() {
    let (client, mut api) = testkit::mock();
    let c = external();
    let connector = FakeConnector::new(FakeStorm::leader("nimbus-a.storm"));
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector.clone(), ChildCaches::default()),
    ));
    // The first and only write is the status: no object is applied, read or deleted.
    let status = api
        .expect_apply(
            &path("storm.apache.org/v1beta1", "stormclusters", "storm/status"),
            stored(&c),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["nimbusLeader"], "nimbus-a.storm:6627");
    assert_eq!(
        s["uiUrl"], "http://storm-ui.storm:8080",
        "userinfo never reaches status"
    );
    assert_eq!(s["nimbusSeeds"], json!(["nimbus-a.storm"]));
    assert!(condition(s, "DaemonsReady").is_none());
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        connector.urls(),
        vec!["http://admin:s3cret@storm-ui.storm:8080".to_string()]
    );
    for (_, _, note) in &api.events {
        assert!(!note.contains("s3cret"), "{note}");
    }
}

#[tokio::test]
async fn an_unreachable_new_cluster_is_pending_with_one_warning() {
    let (client, mut api) = testkit::mock();
    let c = managed();
    let connector = FakeConnector::new(FakeStorm::unreachable());
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector, ChildCaches::default()),
    ));
    expect_managed_applies(&mut api, 0).await;
    let status = api
        .expect_apply(
            &path("storm.apache.org/v1beta1", "stormclusters", "storm/status"),
            stored(&c),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Pending", "{s}");
    assert!(s.get("nimbusLeader").is_none());
    assert_eq!(
        s["message"],
        "Daemons starting (Nimbus 0/1 ready, UI 0/1 ready); the Storm UI does not answer yet"
    );
    let reach = condition(s, "Reachable").expect("Reachable");
    assert_eq!(
        (reach["status"].as_str(), reach["reason"].as_str()),
        (Some("False"), Some("UIUnreachable"))
    );
    let daemons = condition(s, "DaemonsReady").expect("DaemonsReady");
    assert_eq!(daemons["status"], "False");
    let action = api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "first failure: normal interval"
    );
    let warnings: Vec<&(String, String, String)> =
        api.events.iter().filter(|e| e.0 == "Warning").collect();
    assert_eq!(warnings.len(), 1, "{:?}", api.events);
    assert_eq!(warnings[0].1, "StormUnreachable");
    assert!(
        warnings[0].2.contains("connection refused"),
        "{}",
        warnings[0].2
    );
}

#[tokio::test]
async fn a_running_external_cluster_whose_ui_stops_answering_is_degraded_and_polled_less() {
    let (client, mut api) = testkit::mock();
    let mut c = external();
    let up = status::compute(
        &c,
        None,
        &Ok(StormRead {
            summary: ClusterSummary::default(),
            nimbuses: vec![NimbusSummary {
                host: "nimbus-a.storm".into(),
                port: NumberOrText::Number(6627),
                status: NimbusStatus::Leader,
                version: None,
                nimbus_up_time_seconds: None,
            }],
        }),
        k8s_openapi::jiff::Timestamp::now(),
    );
    c.status = Some(up);
    let ctx = context(
        client,
        FakeConnector::new(FakeStorm::unreachable()),
        ChildCaches::default(),
    );
    let task = tokio::spawn(reconcile(Arc::new(c.clone()), ctx.clone()));
    let status = api
        .expect_apply(
            &path("storm.apache.org/v1beta1", "stormclusters", "storm/status"),
            stored(&c),
        )
        .await;
    assert_eq!(status.body["status"]["phase"], "Degraded");
    let first = api.finish(task).await.expect("reconcile ok");
    assert_eq!(first, Action::requeue(Duration::from_secs(15)));
    assert_eq!(api.events.len(), 1, "{:?}", api.events);
    assert!(!api.events[0].2.contains("s3cret"), "{}", api.events[0].2);
    // The next poll finds the same: same status (no write), no Event, a longer wait.
    c.status = serde_json::from_value(status.body["status"].clone()).expect("status");
    let task = tokio::spawn(reconcile(Arc::new(c.clone()), ctx));
    let second = api.finish(task).await.expect("reconcile ok");
    assert_eq!(second, Action::requeue(Duration::from_secs(30)));
    assert_eq!(api.events.len(), 1, "{:?}", api.events);
}

/// A Managed cluster whose objects are cached as the last apply left them (hash annotations,
/// ready pods) and whose status is what the fake's answers give.
fn settled(c: &mut StormCluster) -> ChildCaches {
    let children = build::children(c).expect("children");
    let mut sts = children.nimbus.clone();
    sts.status = Some(StatefulSetStatus {
        replicas: 1,
        ready_replicas: Some(1),
        ..StatefulSetStatus::default()
    });
    let mut ui = children.ui.clone();
    ui.status = Some(DeploymentStatus {
        replicas: Some(1),
        ready_replicas: Some(1),
        ..DeploymentStatus::default()
    });
    let poll = Ok(StormRead {
        summary: ClusterSummary {
            storm_version: Some("2.8.8".into()),
            supervisors: 2,
            topologies: 1,
            slots_used: 3,
            slots_total: 8,
            slots_free: 5,
            executors_total: 28,
            tasks_total: 28,
        },
        nimbuses: vec![NimbusSummary {
            host: "storm-nimbus-0.storm-nimbus.team-a.svc".into(),
            port: NumberOrText::Number(6627),
            status: NimbusStatus::Leader,
            version: Some("2.8.8".into()),
            nimbus_up_time_seconds: Some(NumberOrText::Number(1)),
        }],
    });
    let daemons = Daemons {
        nimbus_ready: 1,
        nimbus_desired: 1,
        ui_ready: 1,
        ui_desired: 1,
    };
    c.status = Some(status::compute(
        c,
        Some(daemons),
        &poll,
        k8s_openapi::jiff::Timestamp::now(),
    ));
    ChildCaches {
        config_maps: views([children.config_map.clone()]),
        services: views([children.nimbus_service.clone(), children.ui_service.clone()]),
        statefulsets: views([sts]),
        deployments: views([ui]),
    }
}

#[tokio::test]
async fn a_poll_of_an_unchanged_cluster_sends_no_write() {
    let (client, mut api) = testkit::mock();
    let mut c = managed();
    let caches = settled(&mut c);
    let connector = FakeConnector::new(FakeStorm::leader("storm-nimbus-0.storm-nimbus.team-a.svc"));
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector.clone(), caches),
    ));
    // Every object is cached with the hash of its body and Storm answers as before: no apply,
    // no status write, no Event. `finish` fails on any request.
    let action = api.finish(task).await.expect("reconcile ok");
    assert!(api.events.is_empty(), "{:?}", api.events);
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
    assert_eq!(connector.urls().len(), 1, "Storm was polled");
}

#[tokio::test]
async fn a_changed_config_is_applied_and_rolls_the_daemons() {
    let (client, mut api) = testkit::mock();
    let mut c = managed();
    let caches = settled(&mut c);
    c.spec.storm_config = Some(
        [("topology.debug".to_string(), json!(true))]
            .into_iter()
            .collect(),
    );
    let connector = FakeConnector::new(FakeStorm::leader("storm-nimbus-0.storm-nimbus.team-a.svc"));
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector, caches),
    ));
    let cm = api
        .expect_operator_apply(&path("v1", "configmaps", "storm-config"), json!({}))
        .await;
    assert!(
        cm.body["data"]["storm.yaml"]
            .as_str()
            .expect("yaml")
            .contains("topology.debug: true")
    );
    // The headless Service did not change; the StatefulSet and the Deployment carry a new config hash.
    api.expect_operator_apply(
        &path("apps/v1", "statefulsets", "storm-nimbus"),
        json!({"status": {"replicas": 1, "readyReplicas": 1}}),
    )
    .await;
    api.expect_operator_apply(
        &path("apps/v1", "deployments", "storm-ui"),
        json!({"status": {"replicas": 1, "readyReplicas": 1}}),
    )
    .await;
    // Status unchanged: no status write.
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn an_apply_rejected_as_invalid_fails_the_cluster() {
    let (client, mut api) = testkit::mock();
    let c = managed();
    let connector = FakeConnector::new(FakeStorm::leader("x"));
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector.clone(), ChildCaches::default()),
    ));
    api.expect(
        "PATCH",
        &path("v1", "configmaps", "storm-config"),
        422,
        testkit::status_error(422, "Invalid", "ConfigMap \"storm-config\" is invalid"),
    )
    .await;
    let status = api
        .expect_apply(
            &path("storm.apache.org/v1beta1", "stormclusters", "storm/status"),
            stored(&c),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Failed");
    let ready = condition(s, "Ready").expect("Ready");
    assert_eq!(ready["reason"], "ApplyRejected");
    assert!(api.finish(task).await.is_err());
    assert!(
        connector.urls().is_empty(),
        "Storm is not polled after a failed apply"
    );
    assert_eq!(api.events[0].1, "Rejected");
}

#[tokio::test]
async fn a_namespace_being_deleted_is_left_alone_without_a_warning_or_a_retry() {
    let (client, mut api) = testkit::mock();
    let c = managed();
    let connector = FakeConnector::new(FakeStorm::leader("x"));
    let task = tokio::spawn(reconcile(
        Arc::new(c.clone()),
        context(client, connector.clone(), ChildCaches::default()),
    ));
    let namespace = c.metadata.namespace.clone().unwrap_or_default();
    api.expect(
        "PATCH",
        &path("v1", "configmaps", "storm-config"),
        403,
        testkit::namespace_terminating(&namespace, "configmaps", "storm-config"),
    )
    .await;
    api.expect_quiet_end(task).await;
}
