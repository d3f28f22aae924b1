//! One Redis for two namespaces: the same QWorker name on the same queue in both, served by one
//! cluster-wide operator that is SIGKILLed and started again. Processing lists carry no
//! namespace (`<queue>:processing:<pod>`), so the sweep of either namespace's ScalerConfig sees
//! the lists of both; it must return only the list of the worker that is gone from every
//! namespace, once, and leave the live workers' lists of both namespaces alone.
//!
//! 1. The scenario's namespace-scoped operator is stopped; a second namespace (with a node
//!    stand-in of its own) and an operator watching every namespace are started.
//! 2. In both namespaces: ScalerConfig `broker` on the same Redis database and QWorker `w` on
//!    the same queue, minReplicas 2; a task in the processing list of one live (busy) worker of
//!    each namespace.
//! 3. The operator is SIGKILLed; a worker pod of the second namespace is released (its
//!    finalizer removed) and deleted with grace 0, so that it is gone while its list, holding
//!    `gone-task`, stays in Redis; the operator is started again.
//! 4. Within 20 s of the restart `gone-task` is back on the queue, exactly once, with one
//!    Normal Event `TasksRecovered` naming the gone worker, and none naming a busy one; for 15 s
//!    from the restart the busy workers' lists of both namespaces keep their tasks and neither
//!    task appears in the queue. The Event is on the ScalerConfig whose sweep found the list
//!    first, of either namespace: with the same QWorker name and queue in both, nothing tells
//!    the operator which namespace a gone worker was in (the scenario prints which).
//! 5. Both ScalerConfigs record the queue in `status.queues`; the second namespace has its two
//!    workers again.
//!
//! The second namespace is deleted at the end (while the cluster-wide operator still runs, so
//! that it releases the workers' finalizers), also on failure, and so are the Redis keys.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use workerpool_api::qworker::ScalerConfig;

use crate::harness::{
    self, Observe, Operator, Scenario, WAIT, WORKER_PODS, ensure, summarize_events,
};
use crate::kubelet::Kubelet;
use crate::redis::TestRedis;

const NAME: &str = "w";
const SCALER: &str = "broker";
const SELECTOR: &str = "quickube.com/qworker=w";
const DRAIN: &str = "quickube.com/drain";
const GONE_TASK: &str = "gone-task";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(harness::FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

async fn pods(api: &Api<Pod>) -> Result<Vec<Pod>, String> {
    Ok(api
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .obs("list pods")?
        .items)
}

fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{}[{}{}]",
                p.name_any(),
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                if p.metadata.deletion_timestamp.is_some() {
                    ",terminating"
                } else {
                    ""
                },
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until exactly `n` live, running, non-draining workers run in `s`'s namespace.
async fn expect_running(s: &Scenario, api: &Api<Pod>, n: usize) -> Vec<Pod> {
    s.eventually(
        &format!("{n} running workers in {}", s.ns),
        WAIT,
        || async move {
            let all = pods(api).await?;
            let running: Vec<Pod> = all
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !p.annotations().contains_key(DRAIN)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .cloned()
                .collect();
            ensure(running.len() == n, || describe(&all))?;
            Ok(running)
        },
    )
    .await
}

/// The TasksRecovered Events about ScalerConfig `broker` of `s`'s namespace that name `worker`.
async fn recovered_events(s: &Scenario, worker: &str) -> Result<Vec<String>, String> {
    let events = s.events_about("ScalerConfig", SCALER).await?;
    Ok(events
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("TasksRecovered")
                && e.note.as_deref().unwrap_or("").contains(worker)
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.type_.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or("")
            )
        })
        .collect())
}

/// The scenario.
pub async fn run(scenario: Scenario) {
    let first = &scenario;
    first.wait_default_service_account().await;
    let redis = TestRedis::connect().await.unwrap_or_else(|e| first.fail(e));
    // A cluster-wide operator replaces the namespace-scoped one of the harness.
    first.operator.stop();
    let client = first.client.clone();
    let ns2 = format!("{}-b", first.ns);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = namespaces
        .create(&PostParams::default(), &harness::namespace(&ns2))
        .await
    {
        first.fail(format!("cannot create namespace {ns2}: {e}"));
    }
    first.note(format!("second namespace {ns2}"));
    let operator = match Operator::start_cluster_wide(&first.ns, "-cluster-wide") {
        Ok(op) => Arc::new(op),
        Err(e) => {
            harness::remove_namespace(&client, &ns2).await;
            first.fail(e);
        }
    };
    first.note(format!(
        "cluster-wide operator started, metrics on 127.0.0.1:{}, log {}",
        operator.port,
        operator.log.display()
    ));
    let kubelet = Arc::new(Kubelet::start(client.clone(), &ns2, WORKER_PODS));
    let a = Scenario {
        operator: operator.clone(),
        ..first.clone()
    };
    let b = Scenario {
        client: client.clone(),
        ns: ns2.clone(),
        operator: operator.clone(),
        kubelet: kubelet.clone(),
    };
    let queue = format!("shared-{}", first.ns);
    let outcome = AssertUnwindSafe(steps(&a, &b, &redis, &queue))
        .catch_unwind()
        .await;

    // Clean-up, also on failure: the second namespace goes while the cluster-wide operator
    // still runs (it releases the workers' finalizers), then the queue and its lists.
    let _ = operator.restart_if_stopped();
    harness::remove_namespace(&client, &ns2).await;
    operator.stop();
    drop(kubelet);
    let keys = redis.keys(&format!("{queue}*")).await.unwrap_or_default();
    redis.del(&keys).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn steps(a: &Scenario, b: &Scenario, redis: &TestRedis, queue: &str) {
    a.wait_operator_ready().await;
    b.wait_default_service_account().await;
    redis.del(&[queue.to_string()]).await;
    let manifest = format!(
        r#"
apiVersion: quickube.com/v1alpha1
kind: ScalerConfig
metadata:
  name: {SCALER}
spec:
  type: redis
  config:
    host: 127.0.0.1
    port: "6379"
    db: {db}
---
apiVersion: quickube.com/v1alpha1
kind: QWorker
metadata:
  name: {NAME}
spec:
  podSpec:
    terminationGracePeriodSeconds: 5
    containers:
      - name: worker
        image: worker-image:latest
  scaleConfig:
    scalerConfigRef: {SCALER}
    queue: {queue}
    minReplicas: 2
    maxReplicas: 2
    scalingFactor: 1
"#,
        db = redis.db
    );
    a.apply_yaml("shared-broker.yaml", &manifest, |_| {}).await;
    b.apply_yaml("shared-broker.yaml", &manifest, |_| {}).await;
    let pods_a: Api<Pod> = a.api();
    let pods_b: Api<Pod> = b.api();
    let (pods_a, pods_b) = (&pods_a, &pods_b);
    let running_a = expect_running(a, pods_a, 2).await;
    let running_b = expect_running(b, pods_b, 2).await;
    let busy_a = running_a[0].name_any();
    let busy_b = running_b[0].name_any();
    let gone = running_b[1].name_any();
    let mut names: Vec<&str> = running_a
        .iter()
        .chain(&running_b)
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != 4 {
        a.fail(format!(
            "two namespaces gave their workers the same name: {names:?} (27^5 suffixes: rerun)"
        ));
    }
    let list_a = workerpool_queue::processing_list(queue, &busy_a);
    let list_b = workerpool_queue::processing_list(queue, &busy_b);
    let list_gone = workerpool_queue::processing_list(queue, &gone);
    for (list, task) in [(&list_a, "busy-task-a"), (&list_b, "busy-task-b")] {
        redis.push(list, task).await.unwrap_or_else(|e| a.fail(e));
    }
    a.note(format!(
        "2 workers in each namespace on queue {queue}; busy: {}/{busy_a}, {}/{busy_b}",
        a.ns, b.ns
    ));

    // 3. The operator down; a worker of the second namespace gone, its list left in Redis.
    a.operator.stop();
    redis
        .push(&list_gone, GONE_TASK)
        .await
        .unwrap_or_else(|e| b.fail(e));
    let release = json!({"metadata": {"finalizers": null}});
    if let Err(e) = pods_b
        .patch(&gone, &params(), &Patch::Merge(&release))
        .await
    {
        b.fail(format!("cannot remove the finalizer of pod {gone}: {e}"));
    }
    if let Err(e) = pods_b
        .delete(&gone, &DeleteParams::default().grace_period(0))
        .await
    {
        b.fail(format!("cannot delete pod {gone}: {e}"));
    }
    let gone_ref = gone.as_str();
    b.eventually("the deleted worker pod gone", WAIT, || async move {
        let pod = pods_b.get_opt(gone_ref).await.obs("get pod")?;
        ensure(pod.is_none(), || format!("pod {gone_ref} still exists"))
    })
    .await;
    b.note(format!(
        "operator SIGKILLed; pod {gone} released and deleted, its list ({GONE_TASK}) left in Redis"
    ));
    a.operator.restart().unwrap_or_else(|e| a.fail(e));
    let restarted = Instant::now();

    // 4. The sweep returns the gone worker's list once and leaves the busy workers' alone.
    let (list_a, list_b, list_gone) = (list_a.as_str(), list_b.as_str(), list_gone.as_str());
    let returned = async {
        b.eventually(
            &format!("{GONE_TASK} back on the queue once (the sweep)"),
            Duration::from_secs(20),
            || async move {
                let queued = redis.items(queue).await?;
                let held = redis.len(list_gone).await?;
                let copies = queued.iter().filter(|t| *t == GONE_TASK).count();
                ensure(copies == 1 && held == 0, || {
                    format!("queue {queued:?}, {held} still held in {list_gone}")
                })
            },
        )
        .await;
        restarted.elapsed()
    };
    let kept = a.consistently(
        "the busy workers' lists of both namespaces keep their tasks, none queued, no duplicate",
        Duration::from_secs(15),
        || async move {
            let queued = redis.items(queue).await?;
            let held_a = redis.items(list_a).await?;
            let held_b = redis.items(list_b).await?;
            ensure(
                held_a == ["busy-task-a"] && held_b == ["busy-task-b"],
                || format!("{list_a}: {held_a:?}, {list_b}: {held_b:?}, queue {queued:?}"),
            )?;
            ensure(
                !queued.iter().any(|t| t.starts_with("busy-task"))
                    && queued.iter().filter(|t| *t == GONE_TASK).count() <= 1,
                || format!("queue {queued:?}"),
            )
        },
    );
    let (took, ()) = tokio::join!(returned, kept);
    a.note(format!(
        "{GONE_TASK} back on the queue {:.1} s after the restart; the busy lists of both namespaces kept for {:.1} s",
        took.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    ));
    let (gone_ref, busy_a_ref, busy_b_ref) = (gone.as_str(), busy_a.as_str(), busy_b.as_str());
    let (on, event) = b
        .eventually(
            "one Normal TasksRecovered Event naming the gone worker, on either ScalerConfig",
            WAIT,
            || async move {
                let in_a = recovered_events(a, gone_ref).await?;
                let in_b = recovered_events(b, gone_ref).await?;
                match (in_a.as_slice(), in_b.as_slice()) {
                    ([one], []) if one.starts_with("Normal: ") => Ok((&a.ns, one.clone())),
                    ([], [one]) if one.starts_with("Normal: ") => Ok((&b.ns, one.clone())),
                    _ => {
                        let all_a = a.events_about("ScalerConfig", SCALER).await?;
                        let all_b = b.events_about("ScalerConfig", SCALER).await?;
                        Err(format!(
                            "events about {}/{SCALER}: [{}]; about {}/{SCALER}: [{}]",
                            a.ns,
                            summarize_events(&all_a),
                            b.ns,
                            summarize_events(&all_b)
                        ))
                    }
                }
            },
        )
        .await;
    for (s, worker) in [
        (a, busy_a_ref),
        (b, busy_b_ref),
        (a, busy_b_ref),
        (b, busy_a_ref),
    ] {
        let wrong = recovered_events(s, worker)
            .await
            .unwrap_or_else(|e| s.fail(e));
        if !wrong.is_empty() {
            s.fail(format!(
                "tasks of the live worker {worker} reported returned on {}/{SCALER}: {wrong:?}",
                s.ns
            ));
        }
    }
    b.note(format!(
        "Event on {on}/{SCALER}{}: {event}",
        if *on == b.ns {
            " (the gone worker's namespace)"
        } else {
            ", the other namespace's ScalerConfig: its sweep found the list first"
        }
    ));

    // 5. Both ScalerConfigs record the queue; the second namespace has two workers again.
    for s in [a, b] {
        let api: Api<ScalerConfig> = s.api();
        let api = &api;
        s.eventually(
            &format!("status.queues of {}/{SCALER} to hold {queue}", s.ns),
            WAIT,
            || async move {
                let sc = api.get(SCALER).await.obs("get ScalerConfig")?;
                let queues = sc.status.map(|st| st.queues).unwrap_or_default();
                ensure(queues.iter().any(|q| q == queue), || {
                    format!("status.queues {queues:?}")
                })
            },
        )
        .await;
    }
    expect_running(b, pods_b, 2).await;
    let held = (
        redis.items(list_a).await.unwrap_or_else(|e| a.fail(e)),
        redis.items(list_b).await.unwrap_or_else(|e| b.fail(e)),
    );
    if held.0 != ["busy-task-a"] || held.1 != ["busy-task-b"] {
        a.fail(format!(
            "the busy workers' lists changed at the end: {held:?}"
        ));
    }
    a.note("status.queues of both ScalerConfigs hold the queue; the busy lists untouched");
}
