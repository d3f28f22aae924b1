//! Reconcile tests of the StormWorkerPool controller against a mocked API server: the exact
//! requests, the applied objects and the written status.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use workerpool_api::StormWorkerPool;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::ChildTracker;
use workerpool_operator::controllers::storm::{Context, reconcile};
use workerpool_operator::metrics::Metrics;

const NS: &str = "team-a";

fn pool(yaml: &str) -> StormWorkerPool {
    let mut p: StormWorkerPool = serde_yaml::from_str(yaml).expect("example");
    p.metadata.namespace = Some(NS.into());
    p.metadata.uid = Some("0000-1111".into());
    p.metadata.generation = Some(3);
    p
}

fn context(client: kube::Client) -> Arc<Context> {
    Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
    })
}

fn topology(name: &str, phase: &str) -> Value {
    json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormTopology",
        "metadata": {"name": name, "namespace": NS}, "spec": {"clusterRef": "storm"},
        "status": {"phase": phase}})
}

fn cluster() -> Value {
    json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormCluster",
        "metadata": {"name": "storm", "namespace": NS},
        "spec": {"zookeeperServers": ["zk-0"], "nimbusSeeds": ["nimbus-0"], "image": {"repository": "storm", "tag": "2.6.4"}},
        "status": {"phase": "Running"}})
}

fn path(group_version: &str, kind: &str, name: &str) -> String {
    let prefix = if group_version == "v1" {
        "/api".to_string()
    } else {
        "/apis".to_string()
    };
    format!("{prefix}/{group_version}/namespaces/{NS}/{kind}/{name}")
}

/// What the server stores after a status apply: the pool itself (the response is the whole object).
fn stored(p: &StormWorkerPool) -> Value {
    let mut v = serde_json::to_value(p).expect("json");
    v.as_object_mut().expect("object").remove("status");
    v
}

/// Answers the reconciler's reads of a Running topology `name` and its Running cluster.
async fn expect_running_references(api: &mut support::ApiServer, name: &str) {
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

fn not_found() -> Value {
    support::status_error(404, "NotFound", "not found")
}

#[tokio::test]
async fn autoscaled_pool_applies_children_without_replicas_and_reports_the_hpa() {
    let (client, mut api) = support::mock();
    let p = pool(include_str!(
        "../../../examples/storm-autoscale-worker-pool.yaml"
    ));
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));

    expect_running_references(&mut api, "streaming-topology").await;
    let cm = api
        .expect_apply(
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
    // Autoscaling is being turned on: the operator looks for a Deployment whose replicas it owns.
    api.expect(
        "GET",
        &path("apps/v1", "deployments", "autoscale-workers-deployment"),
        404,
        not_found(),
    )
    .await;
    let deploy = api
        .expect_apply(
            &path("apps/v1", "deployments", "autoscale-workers-deployment"),
            json!({"status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 2}}),
        )
        .await;
    assert!(
        deploy.body["spec"].get("replicas").is_none(),
        "replicas must be left to the HPA: {}",
        deploy.body["spec"]
    );
    assert_eq!(
        deploy.body["metadata"]["ownerReferences"][0]["kind"],
        "StormWorkerPool"
    );
    assert_eq!(
        deploy.body["metadata"]["ownerReferences"][0]["controller"],
        true
    );
    api.expect_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    let hpa = api
        .expect_apply(
            &path(
                "autoscaling/v2",
                "horizontalpodautoscalers",
                "autoscale-workers-hpa",
            ),
            json!({"status": {"currentReplicas": 5, "desiredReplicas": 5}}),
        )
        .await;
    assert_eq!(hpa.body["spec"]["minReplicas"], 2);
    assert_eq!(hpa.body["spec"]["maxReplicas"], 20);
    assert_eq!(
        hpa.body["spec"]["metrics"][2]["pods"]["metric"]["name"],
        "storm_pending_messages"
    );
    api.expect(
        "DELETE",
        &path("policy/v1", "poddisruptionbudgets", "autoscale-workers-pdb"),
        404,
        not_found(),
    )
    .await;
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
    assert_eq!(auto["reason"], "HPAActive");
    assert_eq!(
        auto["message"],
        "HPA is active (current: 5, min: 2, max: 20)"
    );

    api.finish(task).await.expect("reconcile ok");
    let created: Vec<&str> = api
        .events
        .iter()
        .filter(|e| e.1 == "Created")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(
        created,
        vec![
            "Created ConfigMap autoscale-workers-storm-config",
            "Created Deployment autoscale-workers-deployment",
            "Created Service autoscale-workers-headless",
            "Created HorizontalPodAutoscaler autoscale-workers-hpa",
        ]
    );
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_over_before_dropping_them() {
    let (client, mut api) = support::mock();
    let p = pool(include_str!(
        "../../../examples/storm-autoscale-worker-pool.yaml"
    ));
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
    let (handoff, send) = api.next().await;
    assert_eq!(handoff.method, "PATCH");
    assert!(
        handoff
            .query
            .contains("fieldManager=workerpool-operator-handoff"),
        "{}",
        handoff.query
    );
    assert_eq!(
        handoff.body["spec"],
        json!({"replicas": 7}),
        "the current count is kept"
    );
    send.send_response(
        http::Response::builder()
            .status(200)
            .body(kube::client::Body::from(
                serde_json::to_vec(&handoff.body).expect("json"),
            ))
            .expect("response"),
    );
    let deploy = api
        .expect_apply(
            &path("apps/v1", "deployments", "autoscale-workers-deployment"),
            json!({}),
        )
        .await;
    assert!(deploy.body["spec"].get("replicas").is_none());
    task.abort();
}

#[tokio::test]
async fn missing_topology_gives_pending_with_the_reason_and_a_warning() {
    let (client, mut api) = support::mock();
    let p = pool(include_str!(
        "../../../examples/storm-basic-worker-pool.yaml"
    ));
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
    let (client, mut api) = support::mock();
    let p = pool(include_str!("../../../examples/storm-gpu-worker-pool.yaml"));
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
async fn invalid_custom_metric_fails_the_pool_without_touching_children() {
    let (client, mut api) = support::mock();
    let mut p = pool(include_str!(
        "../../../examples/storm-autoscale-worker-pool.yaml"
    ));
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
async fn disabling_autoscaling_deletes_the_hpa_and_restores_replicas() {
    let (client, mut api) = support::mock();
    let mut p = pool(include_str!(
        "../../../examples/storm-autoscale-worker-pool.yaml"
    ));
    p.spec.autoscaling.as_mut().expect("autoscaling").enabled = false;
    p.status = Some(workerpool_api::StormWorkerPoolStatus {
        hpa_name: Some("autoscale-workers-hpa".into()),
        ..Default::default()
    });
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    expect_running_references(&mut api, "streaming-topology").await;
    api.expect_apply(
        &path("v1", "configmaps", "autoscale-workers-storm-config"),
        json!({}),
    )
    .await;
    let deploy = api
        .expect_apply(
            &path("apps/v1", "deployments", "autoscale-workers-deployment"),
            json!({}),
        )
        .await;
    assert_eq!(
        deploy.body["spec"]["replicas"], 2,
        "spec.replicas is restored"
    );
    api.expect_apply(
        &path("v1", "services", "autoscale-workers-headless"),
        json!({}),
    )
    .await;
    api.expect(
        "DELETE",
        &path(
            "autoscaling/v2",
            "horizontalpodautoscalers",
            "autoscale-workers-hpa",
        ),
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
    .await;
    api.expect(
        "DELETE",
        &path("policy/v1", "poddisruptionbudgets", "autoscale-workers-pdb"),
        404,
        not_found(),
    )
    .await;
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
async fn api_errors_are_returned_for_retry_and_reported() {
    let (client, mut api) = support::mock();
    let p = pool(include_str!(
        "../../../examples/storm-basic-worker-pool.yaml"
    ));
    let task = tokio::spawn(reconcile(Arc::new(p.clone()), context(client)));
    api.expect(
        "GET",
        &path("storm.apache.org/v1beta1", "stormtopologies", "my-topology"),
        500,
        support::status_error(500, "InternalError", "etcd is sad"),
    )
    .await;
    let err = api
        .finish(task)
        .await
        .expect_err("a transient error is retried");
    assert_eq!(err.category(), "ApiError");
    assert_eq!(api.events.len(), 1);
    assert_eq!(
        (api.events[0].0.as_str(), api.events[0].1.as_str()),
        ("Warning", "ApiError")
    );
}
