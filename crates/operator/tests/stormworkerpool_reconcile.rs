//! Reconcile tests of the StormWorkerPool controller against a mocked API server: the exact
//! requests, the applied objects and the written status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use workerpool_api::StormWorkerPool;
use workerpool_operator::cache::child::{Child, ChildKind};
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::ChildTracker;
use workerpool_operator::controllers::stormworkerpool::{ChildCaches, Context, reconcile};
use workerpool_operator::metrics::Metrics;
use workerpool_testkit::examples::{
    STORM_AUTOSCALE_WORKER_POOL as AUTOSCALE, STORM_BASIC_WORKER_POOL as BASIC,
    STORM_GPU_WORKER_POOL as GPU,
};
use workerpool_testkit::storm_ui::{Load, Recorded, StormUi};
use workerpool_testkit::{self as testkit, cache_of, not_found, stored};

/// A cache of the views of `objects`, as the controller's watch of its children fills it.
fn views<K: ChildKind>(
    objects: impl IntoIterator<Item = K>,
) -> kube::runtime::reflector::Store<Child<K>> {
    cache_of(objects.into_iter().map(|o| Child::of(&o)))
}

const NS: &str = "team-a";

fn pool(yaml: &str) -> StormWorkerPool {
    testkit::example(yaml, NS, "0000-1111", 3)
}

fn context(client: kube::Client) -> Arc<Context> {
    Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
        status: Default::default(),
        storm: Default::default(),
        caches: ChildCaches::default(),
    })
}

fn topology(name: &str, phase: &str) -> Value {
    testkit::topology(NS, name)
        .status(json!({"phase": phase}))
        .json()
}

fn cluster() -> Value {
    testkit::running_external_cluster(NS).json()
}

fn path(group_version: &str, kind: &str, name: &str) -> String {
    testkit::object_path(NS, group_version, kind, name)
}

/// Answers the reconciler's reads of a Running topology `name` and its Running cluster.
async fn expect_running_references(api: &mut testkit::ApiServer, name: &str) {
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", name),
        200,
        topology(name, "Running"),
    )
    .await;
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormclusters", "storm"),
        200,
        cluster(),
    )
    .await;
}

/// Expects a server-side apply of the hand-off field manager to `path` (forced or not) and
/// answers with the applied object.
async fn expect_handoff(api: &mut testkit::ApiServer, path: &str, force: bool) -> testkit::Seen {
    let (seen, send) = api.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PATCH", path),
        "unexpected request (query {:?}, body {})",
        seen.query,
        seen.body
    );
    assert_eq!(
        seen.field_manager(),
        ("workerpool-operator-handoff".to_string(), force),
        "{}",
        seen.query
    );
    assert!(
        seen.query.contains("fieldValidation=Ignore"),
        "{}",
        seen.query
    );
    let mut stored = seen.body.clone();
    testkit::merge(
        &mut stored,
        json!({"metadata": {"namespace": NS, "resourceVersion": "1", "generation": 1}}),
    );
    send.send_response(testkit::response(200, &stored));
    seen
}

/// The hand-off manager's body that holds `spec.replicas` alone.
fn replicas_only(replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "autoscale-workers-deployment"}, "spec": {"replicas": replicas}})
}

/// A live object as the server returns it, controlled by the pool with `uid`.
fn owned_by(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": format!("{name}-uid"),
            "ownerReferences": [{"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
                "name": "autoscale-workers", "uid": uid, "controller": true}]}})
}

#[tokio::test]
async fn autoscaled_pool_is_created_at_its_initial_count_without_the_operator_owning_it() {
    let (client, mut api) = testkit::mock();
    let p = pool(AUTOSCALE);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));

    expect_running_references(&mut api, "streaming-topology").await;
    let cm = api
        .expect_operator_apply(
            &path("v1", "configmaps", "autoscale-workers-storm-config"),
            json!({}),
        )
        .await;
    assert!(
        cm.body["data"]["storm.yaml"]
            .as_str()
            .expect("storm.yaml")
            .contains("nimbus-0")
    );
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    // Autoscaling is on: the operator reads the Deployment to see who owns its replicas.
    api.expect("GET", &deploy_path, 404, not_found()).await;
    // It does not exist: the hand-off manager creates it, not forced, at clamp(2, 2, 20).
    let create = expect_handoff(&mut api, &deploy_path, false).await;
    assert_eq!(create.body["spec"]["replicas"], 2, "the initial count");
    assert_eq!(
        create.body["spec"]["template"]["spec"]["containers"][0]["name"], "worker",
        "a full Deployment, so that the create is valid"
    );
    assert_eq!(
        create.body["metadata"]["ownerReferences"][0]["uid"],
        "0000-1111"
    );
    // The operator's apply takes every other field and never sets replicas.
    let deploy = api.expect_operator_apply(&deploy_path,
        json!({"spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}}),
    )
    .await;
    assert!(
        deploy.body["spec"].get("replicas").is_none(),
        "replicas must be left to the HPA: {}",
        deploy.body["spec"]
    );
    assert_eq!(
        deploy.body["spec"]["template"],
        create.body["spec"]["template"]
    );
    assert_eq!(
        deploy.body["metadata"]["ownerReferences"][0]["kind"],
        "StormWorkerPool"
    );
    assert_eq!(
        deploy.body["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    // The hand-off manager then gives up everything but replicas, at the same count.
    let release = expect_handoff(&mut api, &deploy_path, false).await;
    assert_eq!(release.body, replicas_only(2));
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let hpa = api
        .expect_operator_apply(
            &path(
                "autoscaling/v2",
                "horizontalpodautoscalers",
                "autoscale-workers-hpa",
            ),
            json!({}),
        )
        .await;
    assert_eq!(hpa.body["spec"]["minReplicas"], 2);
    assert_eq!(hpa.body["spec"]["maxReplicas"], 20);
    let metrics = hpa.body["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(
        metrics.len(),
        2,
        "cpu and memory; storm_pending_messages is evaluated by the operator: {metrics:?}"
    );
    // No PodDisruptionBudget is configured and the cache shows none: nothing is read or deleted.
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["readyReplicas"], 2);
    assert_eq!(s["deploymentName"], "autoscale-workers-deployment");
    assert_eq!(s["hpaName"], "autoscale-workers-hpa");
    assert_eq!(s["message"], "All 2 worker(s) are ready");
    assert_eq!(s["observedGeneration"], 3);
    let conds = s["conditions"].as_array().expect("conditions");
    let ready = conds.iter().find(|c| c["type"] == "Ready").expect("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("WorkersReady"))
    );
    assert_eq!(ready["observedGeneration"], 3);
    let auto = conds
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .expect("Autoscaling");
    assert_eq!(
        (auto["status"].as_str(), auto["reason"].as_str()),
        (Some("False"), Some("HPANotReported")),
        "a new HPA has no conditions yet"
    );
    assert_eq!(
        auto["message"],
        "HPA autoscale-workers-hpa has not reported whether it can scale yet (min: 2, max: 20)"
    );

    api.finish(task).await.expect("reconcile ok");
    let created: Vec<&str> = api
        .events
        .iter()
        .filter(|e| e.1 == "Created")
        .map(|e| e.2.as_str())
        .collect();
    // One Event for the whole reconcile, naming every child it created.
    assert_eq!(
        created,
        vec![
            "Created ConfigMap autoscale-workers-storm-config, Deployment autoscale-workers-deployment, Service autoscale-workers-headless, HorizontalPodAutoscaler autoscale-workers-hpa",
        ]
    );
}

#[tokio::test]
async fn later_reconciles_leave_the_hpa_count_alone_and_report_the_hpa_conditions() {
    let (client, mut api) = testkit::mock();
    let p = pool(AUTOSCALE);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    expect_running_references(&mut api, "streaming-topology").await;
    api.expect_operator_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    // The HPA scaled to 6 through the scale subresource; the hand-off manager let go.
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "autoscale-workers-deployment", "namespace": NS, "managedFields": [
            {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:selector": {}, "f:template": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": 6, "selector": {}, "template": {}}});
    api.expect("GET", &deploy_path, 200, live).await;
    let deploy = api.expect_operator_apply(&deploy_path,
        json!({"spec": {"replicas": 6}, "status": {"replicas": 6, "readyReplicas": 6, "availableReplicas": 6, "updatedReplicas": 6}}),
    )
    .await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    // No hand-off request: the next request is the Service.
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let no_metrics = "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API";
    api.expect_operator_apply(&path(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "autoscale-workers-hpa",
        ),
        json!({"status": {"currentReplicas": 6, "desiredReplicas": 6, "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "the HPA controller was able to get the target's current scale"},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric", "message": no_metrics}]}}),
    )
    .await;
    // No PodDisruptionBudget is configured and the cache shows none: nothing is read or deleted.
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["replicas"], 6, "the HPA's count");
    let auto = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .cloned()
        .expect("Autoscaling");
    assert_eq!(auto["status"], "False");
    assert_eq!(auto["reason"], "FailedGetResourceMetric");
    assert_eq!(
        auto["message"],
        format!(
            "HPA autoscale-workers-hpa cannot scale (ScalingActive=False): {no_metrics} (current: 6, min: 2, max: 20)"
        )
    );
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn an_interrupted_create_is_released_at_the_current_count() {
    let (client, mut api) = testkit::mock();
    let p = pool(AUTOSCALE);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    expect_running_references(&mut api, "streaming-topology").await;
    api.expect_operator_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    // The hand-off manager created the Deployment, then the reconcile failed; the HPA has
    // since scaled it to 4.
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "autoscale-workers-deployment", "namespace": NS, "managedFields": [
            {"manager": "workerpool-operator-handoff", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:selector": {}, "f:template": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": 4, "selector": {}, "template": {}}});
    api.expect("GET", &deploy_path, 200, live).await;
    let deploy = api.expect_operator_apply(&deploy_path, json!({})).await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    let release = expect_handoff(&mut api, &deploy_path, false).await;
    assert_eq!(
        release.body,
        replicas_only(4),
        "the live count, not the initial one"
    );
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_over_before_dropping_them() {
    let (client, mut api) = testkit::mock();
    let p = pool(AUTOSCALE);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    expect_running_references(&mut api, "streaming-topology").await;
    api.expect_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let existing = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "autoscale-workers-deployment", "namespace": NS, "managedFields": [
            {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}]},
        "spec": {"replicas": 7, "selector": {}, "template": {}}});
    api.expect(
        "GET",
        &path("apps/v1", "deployments", "autoscale-workers-deployment"),
        200,
        existing,
    )
    .await;
    let handoff = expect_handoff(
        &mut api,
        &path("apps/v1", "deployments", "autoscale-workers-deployment"),
        true,
    )
    .await;
    assert_eq!(handoff.body, replicas_only(7), "the current count is kept");
    let deploy = api
        .expect_operator_apply(
            &path("apps/v1", "deployments", "autoscale-workers-deployment"),
            json!({}),
        )
        .await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    // The hand-off applied replicas alone; there is nothing to release afterwards.
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn a_namespace_being_deleted_is_left_alone_without_a_warning_or_a_retry() {
    let (client, mut api) = testkit::mock();
    let p = pool(AUTOSCALE);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    expect_running_references(&mut api, "streaming-topology").await;
    let refused =
        testkit::namespace_terminating("team-a", "configmaps", "autoscale-workers-storm-config");
    api.expect(
        "PATCH",
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        403,
        refused,
    )
    .await;
    api.expect_quiet_end(task).await;
}

#[tokio::test]
async fn missing_topology_gives_pending_with_the_reason_and_a_warning() {
    let (client, mut api) = testkit::mock();
    let p = pool(BASIC);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", "my-topology"),
        404,
        not_found(),
    )
    .await;
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "my-workers/status",
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Pending");
    assert_eq!(
        s["message"],
        "StormTopology team-a/my-topology does not exist"
    );
    assert_eq!(s["conditions"][0]["reason"], "TopologyNotFound");
    assert_eq!(s["conditions"][0]["status"], "False");
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(api.events.len(), 1);
    assert_eq!(api.events[0].0, "Warning");
    assert_eq!(api.events[0].1, "TopologyNotFound");
    api.expect_silence(std::time::Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn topology_not_running_waits() {
    let (client, mut api) = testkit::mock();
    let p = pool(GPU);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", "ml-topology"),
        200,
        topology("ml-topology", "Submitting"),
    )
    .await;
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "gpu-workers/status",
            ),
            stored(&p),
        )
        .await;
    assert_eq!(status.body["status"]["phase"], "Pending");
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "TopologyNotRunning"
    );
    assert_eq!(
        status.body["status"]["message"],
        "StormTopology team-a/ml-topology is Submitting, waiting for Running"
    );
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn a_topology_its_controller_has_not_looked_at_yet_is_waited_for_quietly() {
    let (client, mut api) = testkit::mock();
    let p = pool(GPU);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    let mut fresh = topology("ml-topology", "Running");
    fresh.as_object_mut().expect("object").remove("status");
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", "ml-topology"),
        200,
        fresh,
    )
    .await;
    // No status write and no Warning: the topology's first status wakes the pool.
    let action = api.finish(task).await.expect("reconcile ok");
    assert!(api.events.is_empty(), "{:?}", api.events);
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(
            workerpool_operator::controllers::stormworkerpool::UNOBSERVED_RETRY
        )
    );
}

#[tokio::test]
async fn invalid_custom_metric_fails_the_pool_without_touching_children() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    p.spec
        .autoscaling
        .as_mut()
        .expect("autoscaling")
        .custom_metrics[0]
        .target_average_value = Some("a lot".into());
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["conditions"][0]["reason"], "InvalidSpec");
    assert!(
        s["message"]
            .as_str()
            .expect("message")
            .contains("customMetrics[0].targetAverageValue")
    );
    let action = api
        .finish(task)
        .await
        .expect("an invalid spec is reported, not retried");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(api.events.len(), 1);
    assert_eq!(
        (api.events[0].0.as_str(), api.events[0].1.as_str()),
        ("Warning", "InvalidSpec")
    );
}

#[tokio::test]
async fn disabling_autoscaling_deletes_the_owned_hpa_even_without_hpa_name_and_restores_replicas() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    p.spec.autoscaling.as_mut().expect("autoscaling").enabled = false;
    // The status write that would have recorded the HPA failed: the status does not name it.
    p.status = None;
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(owned_by(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            "autoscale-workers-hpa",
            "0000-1111",
        ))
        .expect("hpa");
    let caches = ChildCaches {
        hpas: views([hpa]),
        ..ChildCaches::default()
    };
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "streaming-topology").await;
    api.expect_operator_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy = api
        .expect_operator_apply(
            &path("apps/v1", "deployments", "autoscale-workers-deployment"),
            json!({}),
        )
        .await;
    assert_eq!(
        deploy.body["spec"]["replicas"], 2,
        "spec.replicas is restored"
    );
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let hpa_path = path(
        "autoscaling/v2",
        "horizontalpodautoscalers",
        "autoscale-workers-hpa",
    );
    api.expect(
        "GET",
        &hpa_path,
        200,
        owned_by(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            "autoscale-workers-hpa",
            "0000-1111",
        ),
    )
    .await;
    let delete = api
        .expect(
            "DELETE",
            &hpa_path,
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        )
        .await;
    assert_eq!(
        delete.body["preconditions"]["uid"], "autoscale-workers-hpa-uid",
        "only the HPA that was read is deleted: {}",
        delete.body
    );
    assert_eq!(delete.body["propagationPolicy"], "Background");
    // The cache shows no PodDisruptionBudget: nothing is read or deleted.
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert!(s.get("hpaName").is_none(), "hpaName cleared: {s}");
    let auto = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .cloned()
        .expect("Autoscaling");
    assert_eq!(auto["status"], "False");
    assert_eq!(auto["reason"], "Disabled");
    api.finish(task).await.expect("reconcile ok");
    assert!(
        api.events
            .iter()
            .any(|e| e.1 == "Deleted" && e.2.contains("autoscale-workers-hpa"))
    );
}

#[tokio::test]
async fn no_delete_is_sent_for_a_missing_hpa_or_a_child_of_another_owner() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    p.spec.autoscaling.as_mut().expect("autoscaling").enabled = false;
    // A stale status still names an HPA that no longer exists.
    p.status = Some(workerpool_api::StormWorkerPoolStatus {
        hpa_name: Some("autoscale-workers-hpa".into()),
        ..Default::default()
    });
    // A PodDisruptionBudget of the same name that another pool controls is left alone.
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(owned_by(
        "policy/v1",
        "PodDisruptionBudget",
        "autoscale-workers-pdb",
        "another-pool",
    ))
    .expect("pdb");
    let caches = ChildCaches {
        pdbs: views([pdb]),
        ..ChildCaches::default()
    };
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "streaming-topology").await;
    for (kind, name) in [
        ("configmaps", "autoscale-workers-storm-config"),
        ("deployments", "autoscale-workers-deployment"),
        ("services", "autoscale-workers-headless"),
    ] {
        let gv = if kind == "deployments" {
            "apps/v1"
        } else {
            "v1"
        };
        api.expect_operator_apply(&path(gv, kind, name), json!({}))
            .await;
    }
    // The cache shows no HPA, and a PodDisruptionBudget of another owner: nothing is read or
    // deleted.
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    assert!(status.body["status"].get("hpaName").is_none());
    api.finish(task).await.expect("reconcile ok");
    assert!(
        !api.events.iter().any(|e| e.1 == "Deleted"),
        "{:?}",
        api.events
    );
}

#[tokio::test]
async fn a_name_too_long_for_the_headless_service_fails_the_pool_without_touching_children() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(BASIC);
    let name = "w".repeat(55);
    p.metadata.name = Some(name.clone());
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                &format!("{name}/status"),
            ),
            stored(&p),
        )
        .await;
    let s = &status.body["status"];
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["conditions"][0]["reason"], "InvalidSpec");
    assert_eq!(s["conditions"][0]["status"], "False");
    assert_eq!(
        s["message"],
        format!(
            "invalid spec: metadata.name {name:?} has 55 characters; at most 54 are allowed, because the headless Service {name}-headless must be a DNS label of at most 63 characters"
        )
    );
    let action = api.finish(task).await.expect("reported, not retried");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert_eq!(api.events.len(), 1);
    assert_eq!(
        (api.events[0].0.as_str(), api.events[0].1.as_str()),
        ("Warning", "InvalidSpec")
    );
}

#[tokio::test]
async fn api_errors_are_returned_for_retry_and_reported() {
    let (client, mut api) = testkit::mock();
    let p = pool(BASIC);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", "my-topology"),
        500,
        testkit::status_error(500, "InternalError", "etcd is sad"),
    )
    .await;
    let err = api
        .finish(task)
        .await
        .expect_err("a transient error is retried");
    assert_eq!(err.category().as_str(), "ApiError");
    assert_eq!(api.events.len(), 1);
    assert_eq!(
        (api.events[0].0.as_str(), api.events[0].1.as_str()),
        ("Warning", "ApiError")
    );
}

/// The pool's children as the last apply left them (hash annotations included), in caches, with
/// the Deployment reporting every worker ready; the pool's status is what that state gives.
fn settled(
    p: &mut StormWorkerPool,
) -> (
    ChildCaches,
    workerpool_operator::controllers::stormworkerpool::build::Children,
) {
    settled_managed(p, None)
}

/// As [`settled`], the cached Deployment decoded with `managed` as its managedFields (`None`:
/// without any, as an object built rather than served).
fn settled_managed(
    p: &mut StormWorkerPool,
    managed: Option<Value>,
) -> (
    ChildCaches,
    workerpool_operator::controllers::stormworkerpool::build::Children,
) {
    use workerpool_operator::controllers::stormworkerpool::{build, status};
    let cluster = testkit::running_external_cluster(NS).build();
    let children = build::children(p, &cluster).expect("children");
    let mut deployment = children.deployment.clone();
    let replicas = build::initial_replicas(p).unwrap_or(p.spec.replicas.unwrap_or(1));
    deployment.spec.as_mut().expect("spec").replicas = Some(replicas);
    deployment.status = Some(
        serde_json::from_value(json!({"replicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "updatedReplicas": replicas}))
        .expect("status"),
    );
    if let Some(managed) = managed {
        deployment.metadata.managed_fields =
            Some(serde_json::from_value(managed).expect("managedFields"));
    }
    let hpa = children.hpa.clone().map(|mut h| {
        h.status = Some(
            serde_json::from_value(json!({"currentReplicas": replicas, "desiredReplicas": replicas,
                "conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"}]}))
            .expect("hpa status"),
        );
        h
    });
    p.status = Some(status::running(
        p,
        &Child::of(&deployment),
        hpa.as_ref().map(Child::of).as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let caches = ChildCaches {
        config_maps: views([children.config_map.clone()]),
        deployments: views([deployment]),
        services: views([children.service.clone()]),
        hpas: views(hpa),
        pdbs: views(children.pdb.clone()),
        ..ChildCaches::default()
    };
    (caches, children)
}

/// Puts the Running topology `topology` and its Running cluster in the caches.
fn cache_running_references(caches: &mut ChildCaches, topology: &str) {
    caches.topologies = cache_of([testkit::topology(NS, topology)
        .status(json!({"phase": "Running"}))
        .build()]);
    caches.clusters = cache_of([testkit::running_external_cluster(NS).build()]);
}

fn context_with(client: kube::Client, caches: ChildCaches) -> Arc<Context> {
    Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
        status: Default::default(),
        storm: Default::default(),
        caches,
    })
}

#[tokio::test]
async fn a_resync_of_an_unchanged_pool_sends_no_write() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(BASIC);
    let (mut caches, children) = settled(&mut p);
    for (what, hash) in [
        ("ConfigMap", &children.config_map.metadata.annotations),
        ("Deployment", &children.deployment.metadata.annotations),
        ("Service", &children.service.metadata.annotations),
    ] {
        assert_eq!(
            hash.as_ref().expect("annotations")["workerpool-operator/applied-hash"].len(),
            16,
            "{what}"
        );
    }
    cache_running_references(&mut caches, "my-topology");
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    // Every child is cached with the hash of its body, and so are the topology and the cluster;
    // neither an HPA nor a PodDisruptionBudget is configured, and the cache shows none. No
    // request at all: no read of the references, no apply, no read or delete of a child, no
    // status write.
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.is_empty(), "{:?}", api.events);
}

/// `deployment` with `managed` as its managedFields, as the API server returns it.
fn with_managed_fields(deployment: &Deployment, managed: Value) -> Value {
    let mut live = serde_json::to_value(deployment).expect("json");
    testkit::merge(&mut live, json!({"metadata": {"managedFields": managed}}));
    live
}

/// managedFields of an autoscaled Deployment whose hand-off is over: the operator's apply does
/// not own replicas, the hand-off manager owns replicas alone.
fn handed_off() -> Value {
    json!([
        {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "workerpool-operator-handoff", "operation": "Apply", "fieldsType": "FieldsV1",
         "fieldsV1": {".": {}, "f:spec": {".": {}, "f:replicas": {}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:replicas": {}}, "f:status": {}}}])
}

/// managedFields of an autoscaled Deployment whose release after the operator's apply did not
/// happen: the hand-off manager still holds fields beside replicas.
fn release_missed() -> Value {
    json!([
        {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "workerpool-operator-handoff", "operation": "Apply", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:replicas": {}, "f:template": {}}}}])
}

#[tokio::test]
async fn a_resync_of_an_unchanged_autoscaled_pool_sends_nothing() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    // The cached Deployment carries the hash of the body and the hand-off is over: its view,
    // decoded with its managedFields, says so without a GET.
    let (mut caches, _) = settled_managed(&mut p, Some(handed_off()));
    cache_running_references(&mut caches, "streaming-topology");
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    // No request at all: no read of the Deployment or of the references, no apply, no status.
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.is_empty(), "{:?}", api.events);
}

#[tokio::test]
async fn an_autoscaled_pool_whose_cache_shows_the_release_missed_reads_the_deployment() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    let (mut caches, children) = settled_managed(&mut p, Some(release_missed()));
    cache_running_references(&mut caches, "streaming-topology");
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    // The cache says the hand-off is unfinished: the live Deployment decides, and the
    // hand-off manager gives up the fields beside replicas.
    let mut live = with_managed_fields(&children.deployment, release_missed());
    testkit::merge(&mut live, json!({"spec": {"replicas": 3}}));
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    api.expect("GET", &deploy_path, 200, live).await;
    let deploy = api.expect_operator_apply(&deploy_path, json!({})).await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    let release = expect_handoff(&mut api, &deploy_path, false).await;
    assert_eq!(release.body, replicas_only(3));
    task.abort();
}

#[tokio::test]
async fn a_resync_of_an_autoscaled_pool_whose_cache_lacks_managed_fields_reads_the_deployment() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    let (caches, children) = settled(&mut p);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "streaming-topology").await;
    // A view without managedFields (an object built, not served) settles nothing by itself:
    // the live Deployment decides, and it shows the hand-off over.
    let mut live = with_managed_fields(&children.deployment, handed_off());
    testkit::merge(
        &mut live,
        json!({"spec": {"replicas": 2},
               "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}}),
    );
    api.expect(
        "GET",
        &path("apps/v1", "deployments", "autoscale-workers-deployment"),
        200,
        live,
    )
    .await;
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.is_empty(), "{:?}", api.events);
}

#[tokio::test]
async fn a_child_whose_hash_differs_is_the_only_one_applied() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(BASIC);
    let (mut caches, children) = settled(&mut p);
    let mut stale = children.config_map.clone();
    stale.metadata.annotations.get_or_insert_default().insert(
        "workerpool-operator/applied-hash".into(),
        "0123456789abcdef".into(),
    );
    caches.config_maps = views([stale]);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "my-topology").await;
    let cm = api
        .expect_operator_apply(
            &path("v1", "configmaps", "my-workers-storm-config"),
            json!({}),
        )
        .await;
    assert_eq!(
        cm.body["metadata"]["annotations"]["workerpool-operator/applied-hash"],
        children
            .config_map
            .metadata
            .annotations
            .as_ref()
            .expect("annotations")["workerpool-operator/applied-hash"],
        "the apply carries the hash of its body"
    );
    assert_eq!(
        cm.body,
        serde_json::to_value(&children.config_map).expect("json"),
        "the body that was hashed"
    );
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn a_hand_off_left_unfinished_is_finished_even_when_the_hash_matches() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(AUTOSCALE);
    let (caches, children) = settled(&mut p);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "streaming-topology").await;
    // The operator's apply went through, the release after it did not: the hand-off manager
    // still holds fields beside replicas.
    let mut live = serde_json::to_value(&children.deployment).expect("json");
    testkit::merge(
        &mut live,
        json!({"metadata": {"managedFields": [
            {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:template": {}}}},
            {"manager": "workerpool-operator-handoff", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:replicas": {}, "f:template": {}}}}]},
            "spec": {"replicas": 3}}),
    );
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    api.expect("GET", &deploy_path, 200, live).await;
    let deploy = api.expect_operator_apply(&deploy_path, json!({})).await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    let release = expect_handoff(&mut api, &deploy_path, false).await;
    assert_eq!(release.body, replicas_only(3));
    task.abort();
}

#[tokio::test]
async fn a_replica_count_changed_by_someone_else_is_set_back() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(BASIC);
    let (mut caches, children) = settled(&mut p);
    // `kubectl scale` left the hash as it was.
    let mut scaled = children.deployment.clone();
    scaled.spec.as_mut().expect("spec").replicas = Some(5);
    caches.deployments = views([scaled]);
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context_with(client, caches)));
    expect_running_references(&mut api, "my-topology").await;
    let deploy = api.expect_operator_apply(&path("apps/v1", "deployments", "my-workers-deployment"),
        json!({"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 3}}),
    )
    .await;
    assert_eq!(deploy.body["spec"]["replicas"], 3);
    api.finish(task).await.expect("reconcile ok");
}

#[tokio::test]
async fn a_reconcile_before_the_cache_shows_its_own_status_write_does_not_repeat_it() {
    let (client, mut api) = testkit::mock();
    let mut p = pool(BASIC);
    let (mut caches, _) = settled(&mut p);
    // The pool as the cache shows it before its first status write.
    p.status = None;
    p.metadata.resource_version = Some("7".into());
    cache_running_references(&mut caches, "my-topology");
    let ctx = context_with(client, caches);
    let status_path = path(
        "storm.apache.org/v1beta1",
        "stormworkerpools",
        "my-workers/status",
    );

    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    api.expect_apply(&status_path, stored(&p)).await;
    api.finish(task).await.expect("reconcile ok");

    // Woken again (say, by a child's event) while the cache still shows version 7: same status,
    // nothing sent.
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    api.finish(task).await.expect("reconcile ok");
    api.expect_silence(std::time::Duration::from_millis(100))
        .await;

    // Another version without the status (someone cleared it): compared with the cache again,
    // and written.
    p.metadata.resource_version = Some("9".into());
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx.clone()));
    api.expect_apply(&status_path, stored(&p)).await;
    api.finish(task).await.expect("reconcile ok");
}

/// A Storm UI listing `streaming-topology` (id `streaming-topology-1-1700000000`, the recorded
/// detail) with the spout acking `acked_per_second` at `complete_latency_ms` and the bolt
/// `count` at `capacity`.
async fn storm_ui(acked_per_second: f64, complete_latency_ms: f64, capacity: f64) -> StormUi {
    let ui = StormUi::start().await;
    ui.add("streaming-topology", "ACTIVE", 3);
    ui.set_load(
        "streaming-topology",
        Load {
            capacity,
            // The recorded one.
            execute_latency_ms: 0.031,
            complete_latency_ms,
            acked_per_second,
        },
    );
    ui
}

/// Runs one reconcile of `p` (topology with a Storm id, cluster at `ui`) through every child
/// apply; returns the applied HPA and the written status.
async fn reconcile_with_storm(
    p: &StormWorkerPool,
    ui: &str,
) -> (Value, Value, Vec<(String, String, String)>) {
    let (client, mut api) = testkit::mock();
    let ctx = Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
        status: Default::default(),
        storm: workerpool_operator::controllers::stormworkerpool::StormReader::new(Arc::new(
            workerpool_storm::RestConnector::new(),
        )),
        caches: ChildCaches::default(),
    });
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    let mut t = topology("streaming-topology", "Running");
    t["status"]["topologyId"] = json!("streaming-topology-1-1700000000");
    api.expect(
        "GET",
        &path(
            "storm.apache.org/v1beta1",
            "stormtopologies",
            "streaming-topology",
        ),
        200,
        t,
    )
    .await;
    let mut c = cluster();
    c["spec"]["uiUrl"] = json!(ui);
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormclusters", "storm"),
        200,
        c,
    )
    .await;
    api.expect_operator_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    api.expect("GET", &deploy_path, 404, not_found()).await;
    expect_handoff(&mut api, &deploy_path, false).await;
    api.expect_operator_apply(&deploy_path,
        json!({"spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}}),
    )
    .await;
    expect_handoff(&mut api, &deploy_path, false).await;
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let hpa = api
        .expect_operator_apply(
            &path(
                "autoscaling/v2",
                "horizontalpodautoscalers",
                "autoscale-workers-hpa",
            ),
            json!({}),
        )
        .await;
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(p),
        )
        .await;
    api.finish(task).await.expect("reconcile ok");
    (hpa.body, status.body["status"].clone(), api.events.clone())
}

#[tokio::test]
async fn storms_load_raises_the_hpa_floor_and_the_status_says_why() {
    // 5000 tuple trees acked per second at 900 ms: 4500 in flight, 2250 per pod of 2.
    let ui = storm_ui(5000.0, 900.0, 0.95).await;
    let p = pool(AUTOSCALE);
    let (hpa, status, events) = reconcile_with_storm(&p, &ui.url).await;
    assert_eq!(
        ui.recorded()
            .iter()
            .map(Recorded::target)
            .collect::<Vec<_>>(),
        ["/api/v1/topology/streaming-topology-1-1700000000?window=600"]
    );
    assert_eq!(hpa["spec"]["minReplicas"], 5, "⌈4500 / 1000⌉");
    assert_eq!(hpa["spec"]["maxReplicas"], 20);
    let names: Vec<&str> = hpa["spec"]["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            m["resource"]["name"]
                .as_str()
                .unwrap_or("not a resource metric")
        })
        .collect();
    assert_eq!(names, ["cpu", "memory"]);
    let storm = &status["stormAutoscaling"];
    assert_eq!(storm["replicas"], 5);
    assert_eq!(storm["term"], "PendingMessages");
    assert_eq!(storm["inputs"]["pendingMessages"], 4500.0);
    assert_eq!(storm["inputs"]["pendingMessagesPerPod"], 2250.0);
    assert_eq!(storm["inputs"]["busiestBolt"], "count");
    assert_eq!(storm["inputs"]["boltCapacity"], 0.95);
    assert_eq!(storm["inputs"]["usefulPods"], 7);
    let decision = &status["lastScaleDecision"];
    assert_eq!(
        (decision["from"].as_i64(), decision["to"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(decision["term"], "PendingMessages");
    let auto = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .expect("Autoscaling");
    let message = auto["message"].as_str().expect("message");
    assert!(
        message.contains("Storm-derived count 5 (PendingMessages")
            && message.contains("4500 tuples in flight, 2250/pod over 2 pod(s)")
            && message.contains("busiest bolt count at capacity 0.950"),
        "{message}"
    );
    let scaled: Vec<&(String, String, String)> =
        events.iter().filter(|e| e.1 == "StormScaled").collect();
    assert_eq!(scaled.len(), 1, "{events:?}");
    assert_eq!(scaled[0].0, "Normal");
    assert!(
        scaled[0]
            .2
            .starts_with("Storm-derived count 2 -> 5 (PendingMessages)"),
        "{}",
        scaled[0].2
    );
}

#[tokio::test]
async fn a_storm_metric_that_makes_no_sense_is_reported_and_kept_out_of_the_hpa() {
    let ui = storm_ui(5000.0, 900.0, 0.95).await;
    let mut p = pool(AUTOSCALE);
    if let Some(auto) = p.spec.autoscaling.as_mut() {
        auto.custom_metrics[0].type_ = workerpool_api::storm::MetricSourceType::External;
        auto.custom_metrics[0].target_value = Some("1000".into());
        auto.custom_metrics[0].target_average_value = None;
    }
    let (hpa, status, events) = reconcile_with_storm(&p, &ui.url).await;
    assert!(ui.recorded().is_empty(), "Storm is not read");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["metrics"].as_array().map(Vec::len), Some(2));
    assert!(status.get("stormAutoscaling").is_none(), "{status}");
    let auto = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .expect("Autoscaling");
    assert_eq!(
        (auto["status"].as_str(), auto["reason"].as_str()),
        (Some("False"), Some("InvalidStormMetric"))
    );
    assert!(
        auto["message"]
            .as_str()
            .expect("message")
            .contains("use type: pods"),
        "{auto}"
    );
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.1 == "InvalidStormMetric")
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0].0, "Warning");
}

/// One reconcile of the seed's autoscaled pool whose Storm-derived count was 5 and whose
/// topology went idle for longer than the stabilisation window, with the Deployment at
/// `replicas` and an HPA that cannot compute (no metrics-server); returns the Deployment's
/// merge patch, if one was sent, and the written status.
async fn idle_after_the_window(replicas: i32) -> (Option<Value>, Value) {
    let ui = storm_ui(100.0, 15.0, 0.05).await;
    let mut p = pool(AUTOSCALE);
    p.status = Some(
        serde_json::from_value(json!({
            "stormAutoscaling": {"replicas": 5, "recommendation": 2, "term": "MinReplicas",
                "belowSince": "2020-01-01T00:00:00Z", "belowMax": 2}
        }))
        .expect("status"),
    );
    let (client, mut api) = testkit::mock();
    let ctx = Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
        status: Default::default(),
        storm: workerpool_operator::controllers::stormworkerpool::StormReader::new(Arc::new(
            workerpool_storm::RestConnector::new(),
        )),
        caches: ChildCaches::default(),
    });
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), ctx));
    let mut t = topology("streaming-topology", "Running");
    t["status"]["topologyId"] = json!("streaming-topology-1-1700000000");
    api.expect(
        "GET",
        &path(
            "storm.apache.org/v1beta1",
            "stormtopologies",
            "streaming-topology",
        ),
        200,
        t,
    )
    .await;
    let mut c = cluster();
    c["spec"]["uiUrl"] = json!(ui.url);
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormclusters", "storm"),
        200,
        c,
    )
    .await;
    api.expect_operator_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy_path = path("apps/v1", "deployments", "autoscale-workers-deployment");
    let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "autoscale-workers-deployment", "namespace": NS, "managedFields": [
            {"manager": "workerpool-operator", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:selector": {}, "f:template": {}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": replicas, "selector": {}, "template": {}}});
    api.expect("GET", &deploy_path, 200, live).await;
    api.expect_operator_apply(&deploy_path, json!({"spec": {"replicas": replicas}}))
        .await;
    api.expect_operator_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let hpa = api.expect_operator_apply(&path("autoscaling/v2", "horizontalpodautoscalers", "autoscale-workers-hpa"),
        json!({"status": {"currentReplicas": replicas, "desiredReplicas": replicas, "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
             "message": "unable to get metrics for resource cpu"}]}}),
    )
    .await;
    assert_eq!(
        hpa.body["spec"]["minReplicas"], 2,
        "the floor fell to minReplicas"
    );
    let (seen, send) = api.next().await;
    let patch = if seen.method == "PATCH" && seen.path == deploy_path {
        assert!(
            seen.query
                .contains("fieldManager=workerpool-operator-storm-autoscaler"),
            "{}",
            seen.query
        );
        let mut answer = seen.body.clone();
        testkit::merge(
            &mut answer,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "autoscale-workers-deployment", "namespace": NS}}),
        );
        send.send_response(testkit::response(200, &answer));
        Some(seen.body)
    } else {
        assert_eq!(
            seen.path,
            path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status"
            )
        );
        let mut answer = stored(&p);
        testkit::merge(&mut answer, seen.body.clone());
        send.send_response(testkit::response(200, &answer));
        api.finish(task).await.expect("reconcile ok");
        return (None, seen.body["status"].clone());
    };
    let status = api
        .expect_apply(
            &path(
                "storm.apache.org/v1beta1",
                "stormworkerpools",
                "autoscale-workers/status",
            ),
            stored(&p),
        )
        .await;
    api.finish(task).await.expect("reconcile ok");
    (patch, status.body["status"].clone())
}

#[tokio::test]
async fn a_stuck_hpa_gives_back_only_what_the_storm_floor_raised() {
    // Raised to 5 by Storm: the HPA cannot compute, so the operator takes it back to 2.
    let (patch, status) = idle_after_the_window(5).await;
    assert_eq!(patch, Some(json!({"spec": {"replicas": 2}})));
    assert_eq!(status["stormAutoscaling"]["replicas"], 2);
    assert_eq!(
        (
            status["lastScaleDecision"]["from"].as_i64(),
            status["lastScaleDecision"]["to"].as_i64()
        ),
        (Some(5), Some(2))
    );
    // At 8 the HPA scaled beyond the Storm floor on its own metrics before they failed: left alone.
    let (patch, status) = idle_after_the_window(8).await;
    assert_eq!(patch, None);
    assert_eq!(status["stormAutoscaling"]["replicas"], 2);
}

#[tokio::test]
async fn an_unreachable_storm_ui_keeps_the_count_in_force_and_says_so() {
    let mut p = pool(AUTOSCALE);
    p.status = Some(
        serde_json::from_value(json!({
            "stormAutoscaling": {"replicas": 4, "recommendation": 4, "term": "PendingMessages"}
        }))
        .expect("status"),
    );
    // Nothing listens on port 1.
    let (hpa, status, events) = reconcile_with_storm(&p, "http://127.0.0.1:1").await;
    assert_eq!(hpa["spec"]["minReplicas"], 4, "the count in force stays");
    assert_eq!(status["stormAutoscaling"]["replicas"], 4);
    assert!(status.get("lastScaleDecision").is_none(), "{status}");
    let auto = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Autoscaling")
        .expect("Autoscaling");
    assert_eq!(
        (auto["status"].as_str(), auto["reason"].as_str()),
        (Some("False"), Some("StormUnreachable"))
    );
    let message = auto["message"].as_str().expect("message");
    assert!(
        message.contains("streaming-topology-1-1700000000")
            && message.contains("Storm-derived count 4 kept"),
        "{message}"
    );
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.1 == "StormUnreachable")
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0].0, "Warning");
}
