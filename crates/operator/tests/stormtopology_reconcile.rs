//! Reconcile tests of the StormTopology controller against a mocked API server and a fake
//! Storm (the testkit's `FakeStorm`, no HTTP): the exact Kubernetes requests, the written status,
//! and the Storm calls (by id, never by name).

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};
use workerpool_api::storm::{StormCluster, StormTopology, StormTopologyStatus, StormWorkerPool};
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::stormtopology::{
    Context, FINALIZER, TopologyMetrics, build, reconcile,
};
use workerpool_operator::metrics::Metrics;
use workerpool_storm::command::{self, Submission};
use workerpool_storm::{TopologyStatus, TopologySummary};
use workerpool_testkit::{
    self as testkit, Builder, FakeConnector, FakeStorm, cache_of, condition, stored,
};

const NS: &str = "team-a";
const ID: &str = "wordcount-7-1700000000";

fn summary(status: TopologyStatus, workers: i64) -> TopologySummary {
    TopologySummary {
        id: ID.into(),
        name: "wordcount".into(),
        status,
        uptime_seconds: 3600,
        tasks_total: 28,
        workers_total: workers,
        executors_total: 28,
    }
}

fn cluster() -> StormCluster {
    testkit::running_external_cluster(NS).build()
}

/// A topology named `wordcount` with `spec` merged in.
fn topology(spec: Value) -> StormTopology {
    testkit::topology(NS, "wordcount")
        .uid("t-uid")
        .generation(2)
        .resource_version("7")
        .spec(spec)
        .build()
}

fn jar_spec() -> Value {
    json!({"jar": {"url": "https://repo.example/wc.jar"}, "mainClass": "org.example.WordCount",
        "args": ["--fast"]})
}

fn with_finalizer(mut t: StormTopology) -> StormTopology {
    t.metadata.finalizers = Some(vec![FINALIZER.into()]);
    t
}

struct Setup {
    storm: Arc<FakeStorm>,
    ctx: Arc<Context>,
}

fn setup(
    client: kube::Client,
    found: Vec<TopologySummary>,
    pools: Vec<StormWorkerPool>,
    jobs: Vec<Job>,
) -> Setup {
    let storm = FakeStorm::with(found);
    let ctx = Arc::new(Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        connector: FakeConnector::new(storm.clone()),
        metrics: Arc::new(TopologyMetrics::default()),
        clusters: cache_of([cluster()]),
        pools: cache_of(pools),
        jobs: cache_of(jobs),
        status: Default::default(),
        pace: Default::default(),
    });
    Setup { storm, ctx }
}

fn path(rest: &str) -> String {
    format!("/apis/storm.apache.org/v1beta1/namespaces/{NS}/stormtopologies/{rest}")
}

fn jobs_path() -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs")
}

/// The topology with the status a status apply wrote.
fn after(t: &StormTopology, seen: &testkit::Seen) -> StormTopology {
    let mut next = t.clone();
    let status: StormTopologyStatus =
        serde_json::from_value(seen.body["status"].clone()).expect("status");
    next.status = Some(status);
    next
}

fn main_argv(job: &Value) -> Vec<String> {
    serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["command"].clone())
        .expect("argv")
}

#[tokio::test]
async fn a_new_topology_gets_its_finalizer_and_a_submission_job() {
    let (client, mut api) = testkit::mock();
    let s = setup(client, vec![], vec![], vec![]);
    let t = topology(jar_spec());
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));

    let fin = api
        .expect("PATCH", &path("wordcount"), 200, stored(&t))
        .await;
    assert_eq!(fin.body["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(
        fin.body["metadata"]["resourceVersion"], "7",
        "guarded by resourceVersion"
    );

    let hash = build::spec_hash(&t);
    let (seen, send) = api.next().await;
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", jobs_path().as_str())
    );
    assert_eq!(
        seen.body["metadata"]["name"],
        format!("wordcount-submit-{}", &hash[..8])
    );
    assert_eq!(seen.body["metadata"]["ownerReferences"][0]["uid"], "t-uid");
    assert_eq!(
        seen.body["metadata"]["labels"]["storm.apache.org/job"],
        "submit"
    );
    let config = Default::default();
    assert_eq!(
        main_argv(&seen.body),
        command::submit(&Submission {
            jar_path: "/jar/topology.jar",
            main_class: "org.example.WordCount",
            topology_name: "wordcount",
            args: &["--fast".to_string()],
            config: &config,
            nimbus_seeds: &["nimbus-0".to_string()],
            client_config: &Default::default(),
        })
    );
    assert_eq!(
        seen.body["spec"]["template"]["spec"]["initContainers"][0]["command"][3],
        "https://repo.example/wc.jar"
    );
    send.send_response(testkit::response(201, &seen.body));

    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let st = &status.body["status"];
    assert_eq!(st["phase"], "Submitting");
    assert_eq!(st["submitJob"], format!("wordcount-submit-{}", &hash[..8]));
    assert!(
        st.get("submittedHash").is_none(),
        "recorded only once the Job succeeded"
    );
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(s.storm.calls(), vec!["summary"]);
    assert!(api.events.iter().any(|e| e.1 == "Submitting"));
}

#[tokio::test]
async fn a_topology_found_active_is_running_with_its_id() {
    let (client, mut api) = testkit::mock();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    // Observed only (no jar): no finalizer, no Job.
    let t = topology(json!({}));
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let st = &status.body["status"];
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["topologyId"], ID);
    assert_eq!(st["stormStatus"], "ACTIVE");
    assert_eq!(st["workers"], 3);
    assert_eq!(st["executors"], 28);
    assert_eq!(st["observedGeneration"], 2);
    let ready = st["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Active"))
    );
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        s.storm.calls(),
        vec!["summary".to_string(), format!("topology:{ID}")],
        "the detail is read by id, never by name"
    );
}

#[tokio::test]
async fn suspend_deactivates_by_id() {
    let (client, mut api) = testkit::mock();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    let t = topology(json!({"suspend": true}));
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    assert_eq!(status.body["status"]["phase"], "Suspended");
    assert_eq!(status.body["status"]["stormStatus"], "INACTIVE");
    api.finish(task).await.expect("reconcile ok");
    assert!(
        s.storm.calls().contains(&format!("deactivate:{ID}")),
        "{:?}",
        s.storm.calls()
    );
    assert!(api.events.iter().any(|e| e.1 == "Suspended"));
}

#[tokio::test]
async fn delete_kills_by_id_and_keeps_the_finalizer_until_storm_drops_it() {
    let (client, mut api) = testkit::mock();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    let mut t = with_finalizer(topology(
        json!({"jar": {"url": "https://repo.example/wc.jar"}, "mainClass": "org.example.WordCount", "killWaitSeconds": 20}),
    ));
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));

    // 1: the kill, phase Killing; the finalizer stays.
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    assert_eq!(status.body["status"]["phase"], "Killing");
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        s.storm.calls(),
        vec!["summary".to_string(), format!("kill:{ID}:20")]
    );

    // 2: Storm lists it KILLED: no second kill, nothing written, the finalizer stays.
    let t2 = after(&t, &status);
    let task = tokio::spawn(reconcile(Arc::new(t2.clone()), s.ctx.clone()));
    api.finish(task).await.expect("reconcile ok");
    let kills = s
        .storm
        .calls()
        .iter()
        .filter(|c| c.starts_with("kill:"))
        .count();
    assert_eq!(kills, 1, "killed once: {:?}", s.storm.calls());

    // 3: it has left Storm: the finalizer is removed, guarded by resourceVersion.
    s.storm.set(vec![]);
    let task = tokio::spawn(reconcile(Arc::new(t2.clone()), s.ctx.clone()));
    let fin = api
        .expect("PATCH", &path("wordcount"), 200, stored(&t2))
        .await;
    assert_eq!(fin.body["metadata"]["finalizers"], json!([]));
    assert_eq!(fin.body["metadata"]["resourceVersion"], "7");
    api.finish(task).await.expect("reconcile ok");
}

/// A succeeded submission Job of the current spec, as the cache shows it.
fn succeeded_job(t: &StormTopology) -> Job {
    let hash = build::spec_hash(t);
    let mut job = build::submit_job(t, &cluster(), &hash).expect("job");
    job.status = serde_json::from_value(
        json!({"succeeded": 1, "completionTime": "2026-01-01T00:00:00Z",
        "conditions": [{"type": "Complete", "status": "True"}]}),
    )
    .expect("status");
    job
}

#[tokio::test]
async fn a_steady_topology_makes_no_write_on_the_second_reconcile() {
    let (client, mut api) = testkit::mock();
    let t = with_finalizer(topology(jar_spec()));
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![succeeded_job(&t)],
    );
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let st = &status.body["status"];
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["submittedHash"], build::spec_hash(&t));
    api.finish(task).await.expect("reconcile ok");
    assert!(api.events.iter().any(|e| e.1 == "Submitted"));

    let events = api.events.len();
    let task = tokio::spawn(reconcile(Arc::new(after(&t, &status)), s.ctx.clone()));
    // `finish` fails the test on any request but an Event.
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        api.events.len(),
        events,
        "no Event either: {:?}",
        api.events
    );
}

#[tokio::test]
async fn a_wake_within_the_pace_reads_nothing_and_looks_again_when_it_ends() {
    let (client, mut api) = testkit::mock();
    let t = topology(json!({}));
    let mut s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    Arc::get_mut(&mut s.ctx).expect("one owner").pace =
        workerpool_operator::runtime::Pace::every(std::time::Duration::from_secs(60));
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    api.finish(task).await.expect("reconcile ok");
    let calls = s.storm.calls().len();
    assert_eq!(calls, 2, "summary and detail: {:?}", s.storm.calls());

    // A pool's change wakes it again at once: nothing is read or written, and it is looked at
    // again when the interval ends.
    let task = tokio::spawn(reconcile(Arc::new(after(&t, &status)), s.ctx.clone()));
    let action = api.finish(task).await.expect("reconcile ok");
    assert_eq!(s.storm.calls().len(), calls, "{:?}", s.storm.calls());
    let again = format!("{action:?}");
    assert!(
        again.contains("requeue_after: Some(5") && again.contains("s)"),
        "requeued for the interval's end (just under 60 s): {again}"
    );

    // A spec change is not held back.
    let mut changed = after(&t, &status);
    changed.metadata.generation = Some(3);
    let task = tokio::spawn(reconcile(Arc::new(changed.clone()), s.ctx.clone()));
    api.expect_apply(&path("wordcount/status"), stored(&changed))
        .await;
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(s.storm.calls().len(), calls + 2, "{:?}", s.storm.calls());
}

#[tokio::test]
async fn a_changed_spec_kills_the_running_topology_once() {
    let (client, mut api) = testkit::mock();
    let old = with_finalizer(topology(jar_spec()));
    let mut t = with_finalizer(topology(
        json!({"jar": {"url": "https://repo.example/wc-2.jar"}, "mainClass": "org.example.WordCount"}),
    ));
    t.status = Some(StormTopologyStatus {
        submitted_hash: Some(build::spec_hash(&old)),
        ..StormTopologyStatus::default()
    });
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![succeeded_job(&old)],
    );
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    assert_eq!(status.body["status"]["phase"], "Killing");
    api.finish(task).await.expect("reconcile ok");
    assert!(s.storm.calls().contains(&format!("kill:{ID}:30")));
    assert!(api.events.iter().any(|e| e.1 == "Redeploying"));
}

fn pool(ready: i32) -> StormWorkerPool {
    Builder::new(NS, "wc-workers")
        .spec(json!({"topologyRef": "wordcount"}))
        .status(json!({"replicas": ready, "readyReplicas": ready, "updatedReplicas": ready}))
        .build()
}

#[tokio::test]
async fn a_rebalance_is_recorded_before_its_job_is_created() {
    let (client, mut api) = testkit::mock();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 4)],
        vec![pool(2)],
        vec![],
    );
    let t = topology(json!({}));
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let record = &status.body["status"]["lastRebalance"];
    assert_eq!(record["fromWorkers"], 4);
    assert_eq!(record["toWorkers"], 8);
    assert_eq!(record["result"], "Running");
    let job_name = record["jobName"].as_str().expect("jobName").to_string();
    let job = api.expect("POST", &jobs_path(), 201, json!({})).await;
    assert_eq!(job.body["metadata"]["name"], job_name);
    let argv = main_argv(&job.body);
    assert_eq!(
        argv,
        command::rebalance(
            "wordcount",
            30,
            8,
            &["nimbus-0".to_string()],
            &Default::default()
        )
    );
    api.finish(task).await.expect("reconcile ok");
    assert!(
        api.events
            .iter()
            .any(|e| e.1 == "Rebalancing" && e.2.contains("workers 4 → 8")),
        "{:?}",
        api.events
    );
}

#[tokio::test]
async fn a_failed_submission_job_fails_the_topology_without_a_new_job() {
    let (client, mut api) = testkit::mock();
    let t = with_finalizer(topology(jar_spec()));
    let hash = build::spec_hash(&t);
    let mut job = build::submit_job(&t, &cluster(), &hash).expect("job");
    job.status = serde_json::from_value(json!({"failed": 3, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}))
    .expect("status");
    let s = setup(client, vec![], vec![], vec![job]);
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    // No POST of a Job: straight to the status.
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let st = &status.body["status"];
    assert_eq!(st["phase"], "Failed");
    let submitted = condition(st, "Submitted").expect("a Submitted condition");
    assert_eq!(submitted["status"], "False");
    assert_eq!(submitted["reason"], "SubmissionFailed");
    assert!(
        submitted["message"]
            .as_str()
            .expect("message")
            .contains("Job has reached the specified backoff limit"),
        "{submitted}"
    );
    api.finish(task).await.expect("reconcile ok");
    assert!(
        api.events
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "SubmissionFailed"),
        "{:?}",
        api.events
    );
}

#[tokio::test]
async fn a_cluster_that_is_not_running_leaves_the_topology_pending() {
    let (client, mut api) = testkit::mock();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    let t = topology(json!({"clusterRef": "other"}));
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    let st = &status.body["status"];
    assert_eq!(st["phase"], "Pending");
    let ready = condition(st, "ClusterReady").expect("a ClusterReady condition");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ClusterNotFound"))
    );
    let action = api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
    );
    assert!(s.storm.calls().is_empty(), "Storm is not asked");
}

#[tokio::test]
async fn a_renamed_topology_kills_the_one_under_the_recorded_id() {
    let (client, mut api) = testkit::mock();
    let old = with_finalizer(topology(jar_spec()));
    let mut spec = jar_spec();
    spec["topologyName"] = json!("wordcount-v2");
    let mut t = with_finalizer(topology(spec));
    t.status = Some(StormTopologyStatus {
        submitted_hash: Some(build::spec_hash(&old)),
        topology_id: Some(ID.into()),
        ..StormTopologyStatus::default()
    });
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3)],
        vec![],
        vec![],
    );
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    assert_eq!(status.body["status"]["phase"], "Killing");
    api.finish(task).await.expect("reconcile ok");
    assert_eq!(
        s.storm.calls(),
        vec!["summary".to_string(), format!("kill:{ID}:30")],
        "no submission while the old name still runs"
    );
}

#[tokio::test]
async fn a_namespace_being_deleted_gets_no_submission_warning_or_retry() {
    let (client, mut api) = testkit::mock();
    let s = setup(client, vec![], vec![], vec![]);
    let t = topology(jar_spec());
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    api.expect("PATCH", &path("wordcount"), 200, stored(&t))
        .await;
    let hash = build::spec_hash(&t);
    let job = format!("wordcount-submit-{}", &hash[..8]);
    let namespace = t.metadata.namespace.clone().unwrap_or_default();
    api.expect(
        "POST",
        &jobs_path(),
        403,
        testkit::namespace_terminating(&namespace, "jobs", &job),
    )
    .await;
    api.expect_quiet_end(task).await;
}

#[tokio::test]
async fn a_topology_deleted_mid_submission_deletes_its_job_first_then_kills_by_id_and_name() {
    let (client, mut api) = testkit::mock();
    let mut t = with_finalizer(topology(json!({
        "jar": {"url": "https://repo.example/wc.jar"}, "mainClass": "org.example.WordCount",
        "topologyName": "wordcount-v2", "killWaitSeconds": 0})));
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    // The old topology's id is recorded; the submission of the new name is still running.
    t.status = Some(StormTopologyStatus {
        topology_id: Some(ID.into()),
        ..StormTopologyStatus::default()
    });
    let job = build::submit_job(&t, &cluster(), &build::spec_hash(&t)).expect("job");
    let job_name = job.metadata.name.clone().expect("name");
    let mut renamed = summary(TopologyStatus::Active, 2);
    renamed.id = "wordcount-v2-2-1700000100".into();
    renamed.name = "wordcount-v2".into();
    let s = setup(
        client,
        vec![summary(TopologyStatus::Active, 3), renamed.clone()],
        vec![],
        vec![job],
    );

    // 1: the Job is deleted (foreground: it goes after its pods), nothing is killed yet.
    let task = tokio::spawn(reconcile(Arc::new(t.clone()), s.ctx.clone()));
    let delete = api
        .expect(
            "DELETE",
            &format!("{}/{job_name}", jobs_path()),
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        )
        .await;
    assert_eq!(delete.body["propagationPolicy"], "Foreground");
    let status = api
        .expect_apply(&path("wordcount/status"), stored(&t))
        .await;
    assert_eq!(status.body["status"]["phase"], "Killing");
    let message = status.body["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains(&job_name), "{message}");
    api.finish(task).await.expect("reconcile ok");
    assert!(s.storm.calls().is_empty(), "{:?}", s.storm.calls());

    // 2: the Job is gone: both the recorded id and the current name are killed.
    let gone = Arc::new(Context {
        shared: s.ctx.shared.clone(),
        connector: s.ctx.connector.clone(),
        metrics: s.ctx.metrics.clone(),
        clusters: cache_of([cluster()]),
        pools: cache_of([]),
        jobs: cache_of([]),
        status: Default::default(),
        pace: Default::default(),
    });
    let t2 = after(&t, &status);
    let task = tokio::spawn(reconcile(Arc::new(t2.clone()), gone));
    api.expect_apply(&path("wordcount/status"), stored(&t2))
        .await;
    api.finish(task).await.expect("reconcile ok");
    let mut kills: Vec<String> = s
        .storm
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("kill:"))
        .collect();
    kills.sort();
    assert_eq!(
        kills,
        vec![format!("kill:{ID}:0"), format!("kill:{}:0", renamed.id)]
    );
}
