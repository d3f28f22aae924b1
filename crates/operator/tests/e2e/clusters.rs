//! QWorkers in the clusters users have: a worker beside a sidecar under `restartPolicy:
//! Never`, pods stopped from outside, and queue edits. The node stand-in reports the pods
//! running; the scenario writes what a kubelet would report when a worker is evicted, crashes
//! or exits, and puts tasks in the workers' processing lists as a busy worker would.
//!
//! 1. An evicted pod (phase Failed, reason Evicted, `DisruptionTarget`, exit 137) is no crash:
//!    its task goes back to the queue, the pod goes, its replacement comes at once, and no
//!    `CrashLooping` is reported.
//! 2. A queue edit rolls the pods: new pods take the new queue (`QWORKER_QUEUE`, annotation),
//!    every old pod is asked to drain as stale.
//! 3. A worker that crashes holding a task while its sidecar keeps the pod `Running` is a
//!    crash: not counted as live, its task back on the queue, the pod kept for inspection with
//!    its crash streak, `CrashLooping` reported, a replacement after the back-off.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use workerpool_api::QWorker;

use crate::harness::{Observe, Scenario, WAIT, condition, ensure};
use crate::redis::TestRedis;

const NAME: &str = "mesh";
const SCALER: &str = "mesh-broker";
const SELECTOR: &str = "quickube.com/qworker=mesh";
const DRAIN: &str = "quickube.com/drain";
const QUEUE_ANNOTATION: &str = "quickube.com/queue";
const STREAK: &str = "quickube.com/crash-streak";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Pods of the QWorker that are neither being deleted nor finished by their phase.
async fn pods(api: &Api<Pod>) -> Result<Vec<Pod>, String> {
    Ok(api
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .obs("list pods")?
        .items)
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && !p.annotations().contains_key(STREAK)
        && !p.annotations().contains_key(DRAIN)
}

fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{}[{}{}{}]",
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
                p.annotations()
                    .get(DRAIN)
                    .map(|d| format!(",drain={d}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn qworker(s: &Scenario) -> Result<QWorker, String> {
    let api: Api<QWorker> = s.api();
    api.get(NAME).await.obs("get QWorker")
}

/// Waits for `n` running pods (not draining, not crashed) and returns them.
async fn expect_running(s: &Scenario, api: &Api<Pod>, n: usize) -> Vec<Pod> {
    s.eventually(&format!("{n} running worker pods"), WAIT, || async move {
        let all = pods(api).await?;
        let up: Vec<Pod> = all.iter().filter(|p| running(p)).cloned().collect();
        ensure(up.len() == n, || describe(&all))?;
        Ok(up)
    })
    .await
}

/// Reports pod `name` as a kubelet would: `phase`, `reason`, the worker terminated with
/// `code`, the sidecar running or terminated.
async fn report(s: &Scenario, api: &Api<Pod>, name: &str, status: serde_json::Value) {
    if let Err(e) = api
        .patch_status(name, &params(), &Patch::Merge(&json!({ "status": status })))
        .await
    {
        s.fail(format!("cannot write the status of pod {name}: {e}"));
    }
}

fn terminated(name: &str, code: i32, reason: &str) -> serde_json::Value {
    json!({"name": name, "image": "", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"terminated": {"exitCode": code, "reason": reason,
                                    "finishedAt": k8s_openapi::jiff::Timestamp::now().to_string()}}})
}

fn still_running(name: &str) -> serde_json::Value {
    json!({"name": name, "image": "", "imageID": "", "ready": true, "restartCount": 0,
           "started": true,
           "state": {"running": {"startedAt": k8s_openapi::jiff::Timestamp::now().to_string()}}})
}

/// Waits until `task` is back on `queue` and `processing` is empty.
async fn expect_returned(
    s: &Scenario,
    redis: &TestRedis,
    queue: &str,
    processing: &str,
    task: &str,
) {
    s.eventually(
        &format!("task {task} back on {queue}"),
        WAIT,
        || async move {
            let queued = redis.items(queue).await?;
            let held = redis.len(processing).await?;
            ensure(queued.iter().any(|t| t == task) && held == 0, || {
                format!("queue {queued:?}, {held} still held in {processing}")
            })
        },
    )
    .await;
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    s.wait_default_service_account().await;
    let pod_api: Api<Pod> = s.api();
    let pod_api = &pod_api;
    let redis = TestRedis::connect().await.unwrap_or_else(|e| s.fail(e));
    let redis = &redis;
    let queue = format!("mesh-{}", s.ns);
    let queue2 = format!("mesh2-{}", s.ns);
    redis.del(&[queue.clone(), queue2.clone()]).await;
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
    restartPolicy: Never
    terminationGracePeriodSeconds: 5
    containers:
      - name: worker
        image: worker-image:latest
      - name: proxy
        image: proxy-image:latest
  scaleConfig:
    scalerConfigRef: {SCALER}
    queue: {queue}
    minReplicas: 2
    maxReplicas: 4
    scalingFactor: 0.1
"#,
        db = redis.db
    );
    s.apply_yaml("mesh.yaml", &manifest, |_| {}).await;
    let first = expect_running(s, pod_api, 2).await;

    // 1. Eviction.
    let evicted = first[0].name_any();
    let processing = workerpool_queue::processing_list(&queue, &evicted);
    redis
        .push(&processing, "evicted-task")
        .await
        .unwrap_or_else(|e| s.fail(e));
    report(
        s,
        pod_api,
        &evicted,
        json!({"phase": "Failed", "reason": "Evicted",
               "message": "The node was low on resource: memory.",
               "conditions": [{"type": "DisruptionTarget", "status": "True",
                               "reason": "TerminationByKubelet",
                               "message": "The node was low on resource: memory."}],
               "containerStatuses": [terminated("worker", 137, "Error"),
                                     terminated("proxy", 137, "Error")]}),
    )
    .await;
    let evicted_at = std::time::Instant::now();
    expect_returned(s, redis, &queue, &processing, "evicted-task").await;
    let evicted_ref = evicted.as_str();
    s.eventually("the evicted pod gone and replaced", WAIT, || async move {
        let all = pods(pod_api).await?;
        let gone = !all.iter().any(|p| p.name_any() == evicted_ref);
        let up = all.iter().filter(|p| running(p)).count();
        ensure(gone && up == 2, || describe(&all))
    })
    .await;
    let replaced_in = evicted_at.elapsed();
    let qw = qworker(s).await.unwrap_or_else(|e| s.fail(e));
    let conditions = qw.status.clone().unwrap_or_default().conditions;
    if let Some(c) = condition(&conditions, "Scaling").filter(|c| c.reason == "CrashLooping") {
        s.fail(format!(
            "an eviction reported as a crash loop: {}",
            c.message
        ));
    }
    if replaced_in > Duration::from_secs(8) {
        s.fail(format!(
            "the evicted pod was replaced after {replaced_in:?}: a crash back-off (10 s)?"
        ));
    }
    redis.del(std::slice::from_ref(&queue)).await;
    s.note(format!(
        "evicted pod {evicted}: task returned, replaced after {:.1} s, no CrashLooping",
        replaced_in.as_secs_f64()
    ));

    // 2. A queue edit rolls the pods.
    let old: Vec<String> = expect_running(s, pod_api, 2)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let qws: Api<QWorker> = s.api();
    let edit = json!({"spec": {"scaleConfig": {"queue": queue2}}});
    if let Err(e) = qws.patch(NAME, &params(), &Patch::Merge(&edit)).await {
        s.fail(format!("cannot edit the queue: {e}"));
    }
    let (old_ref, queue2_ref) = (&old, queue2.as_str());
    s.eventually(
        "old pods drained as stale, new pods on the new queue",
        WAIT,
        || async move {
            let all = pods(pod_api).await?;
            let stale = old_ref.iter().all(|n| {
                all.iter().any(|p| {
                    p.name_any() == *n
                        && p.annotations().get(DRAIN).map(String::as_str) == Some("stale-hash")
                })
            });
            let new: Vec<&Pod> = all
                .iter()
                .filter(|p| running(p) && !old_ref.contains(&p.name_any()))
                .collect();
            let on_new_queue = new.iter().all(|p| {
                p.annotations().get(QUEUE_ANNOTATION).map(String::as_str) == Some(queue2_ref)
                    && p.spec.iter().flat_map(|s| &s.containers).any(|c| {
                        c.name == "worker"
                            && c.env.iter().flatten().any(|e| {
                                e.name == "QWORKER_QUEUE" && e.value.as_deref() == Some(queue2_ref)
                            })
                    })
            });
            ensure(stale && new.len() == 2 && on_new_queue, || describe(&all))
        },
    )
    .await;
    // The old workers finish their task and exit 0; their proxies keep running.
    for name in &old {
        report(
            s,
            pod_api,
            name,
            json!({"containerStatuses": [terminated("worker", 0, "Completed"),
                                         still_running("proxy")]}),
        )
        .await;
    }
    s.eventually("the drained old pods deleted", WAIT, || async move {
        let all = pods(pod_api).await?;
        ensure(!all.iter().any(|p| old_ref.contains(&p.name_any())), || {
            describe(&all)
        })
    })
    .await;
    s.note("queue edit: both old pods drained as stale and deleted, two new pods on the new queue");

    // 3. A crash beside a running sidecar under restartPolicy: Never.
    let victim = expect_running(s, pod_api, 2).await[0].name_any();
    let processing = workerpool_queue::processing_list(&queue2, &victim);
    redis
        .push(&processing, "crash-task")
        .await
        .unwrap_or_else(|e| s.fail(e));
    report(
        s,
        pod_api,
        &victim,
        json!({"containerStatuses": [terminated("worker", 137, "Error"),
                                     still_running("proxy")]}),
    )
    .await;
    expect_returned(s, redis, &queue2, &processing, "crash-task").await;
    let victim_ref = victim.as_str();
    let message = s
        .eventually(
            "the crash reported and the pod not counted as live",
            WAIT,
            || async move {
                let qw = qworker(s).await?;
                let status = qw.status.clone().unwrap_or_default();
                let pod = pod_api.get_opt(victim_ref).await.obs("get pod")?;
                let kept = pod
                    .as_ref()
                    .is_some_and(|p| p.annotations().get(STREAK).map(String::as_str) == Some("1"));
                let looping = condition(&status.conditions, "Scaling")
                    .filter(|c| c.reason == "CrashLooping")
                    .map(|c| c.message.clone());
                match looping {
                    Some(m) if kept && status.current_replicas == 1 => Ok(m),
                    _ => Err(format!(
                        "currentReplicas {}, pod kept with streak 1: {kept}, conditions {:?}",
                        status.current_replicas,
                        status
                            .conditions
                            .iter()
                            .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
                            .collect::<Vec<_>>()
                    )),
                }
            },
        )
        .await;
    if !message.contains(&victim) {
        s.fail(format!("CrashLooping does not name the pod: {message}"));
    }
    // The replacement comes after the back-off (10 s).
    expect_running(s, pod_api, 2).await;
    redis.del(&[queue.clone(), queue2.clone()]).await;
    s.note(format!(
        "worker of {victim} crashed beside its running proxy: task returned, pod kept, CrashLooping, replaced after the back-off"
    ));
}
