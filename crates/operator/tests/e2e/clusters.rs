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
//! 4. A proxy injected as the *first* container by a mutating admission webhook (as Istio's
//!    `holdApplicationUntilProxyStarts` and Linkerd's `proxy-await` do; `e2e/webhook.rs`) into
//!    the pods of a QWorker whose podSpec names only `worker`: every pod starts with
//!    `istio-proxy`. The worker crashes holding a task while the proxy runs: its task back on
//!    the queue, the pod not counted as live, `CrashLooping`, a replacement after the back-off.
//!    On scale-down the drained worker exits 0 while the proxy runs: the pod is deleted within
//!    seconds and the QWorker converges. The webhook's configuration is deleted at the end,
//!    also on failure.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use workerpool_api::QWorker;

use crate::harness::{Observe, Scenario, WAIT, condition, ensure};
use crate::redis::TestRedis;
use crate::webhook::{self, PROXY, ProxyInjector};

const NAME: &str = "mesh";
const SCALER: &str = "mesh-broker";
/// The QWorker of step 4, whose pods the webhook gives a proxy.
const MESHED: &str = "meshed";
const QWORKER_LABEL: &str = "quickube.com/qworker";
const DRAIN: &str = "quickube.com/drain";
const QUEUE_ANNOTATION: &str = "quickube.com/queue";
const STREAK: &str = "quickube.com/crash-streak";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The pods of QWorker `name`.
async fn pods(api: &Api<Pod>, name: &str) -> Result<Vec<Pod>, String> {
    Ok(api
        .list(&ListParams::default().labels(&format!("{QWORKER_LABEL}={name}")))
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

async fn qworker(s: &Scenario, name: &str) -> Result<QWorker, String> {
    let api: Api<QWorker> = s.api();
    api.get(name).await.obs("get QWorker")
}

/// Waits for `n` running pods of QWorker `name` (not draining, not crashed) and returns them.
async fn expect_running(s: &Scenario, api: &Api<Pod>, name: &str, n: usize) -> Vec<Pod> {
    s.eventually(&format!("{n} running {name} pods"), WAIT, || async move {
        let all = pods(api, name).await?;
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

/// Waits until the crash of `victim`'s worker is counted: the pod kept with crash streak 1, not
/// counted in `status.currentReplicas` (`live` other workers), and `Scaling=False,
/// CrashLooping` naming it; returns the condition's message.
async fn expect_crash_kept(
    s: &Scenario,
    pod_api: &Api<Pod>,
    name: &str,
    victim: &str,
    live: i32,
) -> String {
    let message = s
        .eventually(
            "the crash reported and the pod not counted as live",
            WAIT,
            || async move {
                let qw = qworker(s, name).await?;
                let status = qw.status.clone().unwrap_or_default();
                let pod = pod_api.get_opt(victim).await.obs("get pod")?;
                let kept = pod
                    .as_ref()
                    .is_some_and(|p| p.annotations().get(STREAK).map(String::as_str) == Some("1"));
                let looping = condition(&status.conditions, "Scaling")
                    .filter(|c| c.reason == "CrashLooping")
                    .map(|c| c.message.clone());
                match looping {
                    Some(m) if kept && status.current_replicas == live => Ok(m),
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
    if !message.contains(victim) {
        s.fail(format!("CrashLooping does not name the pod: {message}"));
    }
    message
}

/// Sets `spec.scaleConfig.minReplicas` of QWorker `name`.
async fn set_min(s: &Scenario, name: &str, min: i32) {
    let api: Api<QWorker> = s.api();
    let patch = json!({"spec": {"scaleConfig": {"minReplicas": min}}});
    if let Err(e) = api.patch(name, &params(), &Patch::Merge(&patch)).await {
        s.fail(format!("cannot set minReplicas {min} of {name}: {e}"));
    }
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
    let first = expect_running(s, pod_api, NAME, 2).await;

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
        let all = pods(pod_api, NAME).await?;
        let gone = !all.iter().any(|p| p.name_any() == evicted_ref);
        let up = all.iter().filter(|p| running(p)).count();
        ensure(gone && up == 2, || describe(&all))
    })
    .await;
    let replaced_in = evicted_at.elapsed();
    let qw = qworker(s, NAME).await.unwrap_or_else(|e| s.fail(e));
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
    let old: Vec<String> = expect_running(s, pod_api, NAME, 2)
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
            let all = pods(pod_api, NAME).await?;
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
        let all = pods(pod_api, NAME).await?;
        ensure(!all.iter().any(|p| old_ref.contains(&p.name_any())), || {
            describe(&all)
        })
    })
    .await;
    s.note("queue edit: both old pods drained as stale and deleted, two new pods on the new queue");

    // 3. A crash beside a running sidecar under restartPolicy: Never.
    let victim = expect_running(s, pod_api, NAME, 2).await[0].name_any();
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
    expect_crash_kept(s, pod_api, NAME, &victim, 1).await;
    // The replacement comes after the back-off (10 s).
    expect_running(s, pod_api, NAME, 2).await;
    redis.del(&[queue.clone(), queue2.clone()]).await;
    s.note(format!(
        "worker of {victim} crashed beside its running proxy: task returned, pod kept, CrashLooping, replaced after the back-off"
    ));

    // 4. A proxy injected first by a mutating admission webhook.
    let injector = ProxyInjector::start().await.unwrap_or_else(|e| s.fail(e));
    let registration = injector
        .register(&s.client, &s.ns, (QWORKER_LABEL, MESHED))
        .await
        .unwrap_or_else(|e| s.fail(e));
    s.note(format!(
        "admission webhook on https://127.0.0.1:{}/mutate registered for the {MESHED} pods",
        injector.port
    ));
    injected_proxy(s, pod_api, redis, &injector).await;
    if let Err(e) = registration.remove().await {
        s.fail(e);
    }
}

/// Step 4: the pods of a QWorker whose podSpec names only `worker` get `istio-proxy` first from
/// the webhook; a crash and a drain of the worker beside the running proxy.
async fn injected_proxy(
    s: &Scenario,
    pod_api: &Api<Pod>,
    redis: &TestRedis,
    injector: &ProxyInjector,
) {
    let client = &s.client;
    let ns = s.ns.as_str();
    s.eventually(
        "the API server calling the webhook (a dry-run pod with the QWorker's label)",
        WAIT,
        || webhook::injects(client, ns, (QWORKER_LABEL, MESHED)),
    )
    .await;
    let queue = format!("meshed-{}", s.ns);
    redis.del(std::slice::from_ref(&queue)).await;
    let manifest = format!(
        r#"
apiVersion: quickube.com/v1alpha1
kind: QWorker
metadata:
  name: {MESHED}
spec:
  podSpec:
    restartPolicy: Never
    terminationGracePeriodSeconds: 5
    containers:
      - name: worker
        image: worker-image:latest
  scaleConfig:
    scalerConfigRef: {SCALER}
    queue: {queue}
    minReplicas: 2
    maxReplicas: 4
    scalingFactor: 0.1
"#
    );
    s.apply_yaml("meshed.yaml", &manifest, |_| {}).await;
    let first = expect_running(s, pod_api, MESHED, 2).await;
    let missing = webhook::without_proxy_first(&first);
    if !missing.is_empty() {
        s.fail(format!(
            "the webhook did not put {PROXY} first in pods {missing:?}; pods it mutated: {:?}",
            injector.seen()
        ));
    }
    s.note(format!(
        "{} pods of {MESHED} start with {PROXY} (webhook): {:?}",
        first.len(),
        first
            .iter()
            .map(|p| format!("{} {:?}", p.name_any(), webhook::container_names(p)))
            .collect::<Vec<_>>()
    ));

    // (a) The worker crashes holding a task; the proxy, first in the pod, keeps running.
    let victim = first[0].name_any();
    let processing = workerpool_queue::processing_list(&queue, &victim);
    redis
        .push(&processing, "meshed-crash-task")
        .await
        .unwrap_or_else(|e| s.fail(e));
    report(
        s,
        pod_api,
        &victim,
        json!({"phase": "Running",
               "containerStatuses": [still_running(PROXY), terminated("worker", 1, "Error")]}),
    )
    .await;
    let crashed_at = Instant::now();
    expect_returned(s, redis, &queue, &processing, "meshed-crash-task").await;
    let message = expect_crash_kept(s, pod_api, MESHED, &victim, 1).await;
    if !message.contains("exit code 1") {
        s.fail(format!(
            "CrashLooping does not give the worker's exit code 1: {message}"
        ));
    }
    // The task went back to the queue; the queue is emptied so that it does not scale the pool.
    redis.del(std::slice::from_ref(&queue)).await;
    let second = expect_running(s, pod_api, MESHED, 2).await;
    let replaced_in = crashed_at.elapsed();
    // The back-off is 10 s from the worker's finishedAt, which the API keeps to the second.
    if replaced_in < Duration::from_millis(8500) {
        s.fail(format!(
            "the crashed pod was replaced after {replaced_in:?}, before the 10 s back-off"
        ));
    }
    let missing = webhook::without_proxy_first(&second);
    if !missing.is_empty() {
        s.fail(format!(
            "the replacement has no {PROXY} first: {missing:?}; pods the webhook mutated: {:?}",
            injector.seen()
        ));
    }
    s.note(format!(
        "worker of {victim} crashed (exit 1) beside {PROXY}, which runs first: task returned, pod kept, CrashLooping, replaced after {:.1} s",
        replaced_in.as_secs_f64()
    ));

    // (b) Scale-down: the drained worker exits 0; the proxy keeps running.
    set_min(s, MESHED, 1).await;
    let drained = s
        .eventually("one meshed pod asked to drain", WAIT, || async move {
            let all = pods(pod_api, MESHED).await?;
            let draining: Vec<String> = all
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.annotations().get(DRAIN).map(String::as_str) == Some("scale-down")
                })
                .map(ResourceExt::name_any)
                .collect();
            ensure(draining.len() == 1, || describe(&all))?;
            Ok(draining[0].clone())
        })
        .await;
    report(
        s,
        pod_api,
        &drained,
        json!({"phase": "Running",
               "containerStatuses": [still_running(PROXY), terminated("worker", 0, "Completed")]}),
    )
    .await;
    let exited_at = Instant::now();
    let drained_ref = drained.as_str();
    let deleted = s
        .within(Duration::from_secs(10), || async move {
            let pod = pod_api.get_opt(drained_ref).await.obs("get pod")?;
            ensure(pod.is_none(), || {
                format!(
                    "pod {drained_ref} still exists: {}",
                    pod.as_ref()
                        .map(|p| describe(std::slice::from_ref(p)))
                        .unwrap_or_default()
                )
            })
        })
        .await;
    if let Err(last) = deleted {
        s.fail(format!(
            "the drained pod whose worker exited 0 beside a running {PROXY} (the first container) was not deleted within 10 s: {last}"
        ));
    }
    let deleted_in = exited_at.elapsed();
    let victim_ref = victim.as_str();
    s.eventually(
        "the meshed QWorker converged on 1 worker",
        WAIT,
        || async move {
            let qw = qworker(s, MESHED).await?;
            let status = qw.status.unwrap_or_default();
            let all = pods(pod_api, MESHED).await?;
            let up = all.iter().filter(|p| running(p)).count();
            // The crashed pod stays for inspection; nothing else but the one worker.
            let others = all
                .iter()
                .filter(|p| !running(p) && p.name_any() != victim_ref)
                .count();
            ensure(
                up == 1
                    && others == 0
                    && status.current_replicas == 1
                    && status.desired_replicas == 1,
                || {
                    format!(
                        "currentReplicas {}, desiredReplicas {}, pods {}",
                        status.current_replicas,
                        status.desired_replicas,
                        describe(&all)
                    )
                },
            )
        },
    )
    .await;
    redis.del(std::slice::from_ref(&queue)).await;
    s.note(format!(
        "drained {drained}: its worker exited 0 beside the running {PROXY}, pod deleted {:.1} s later; 1 worker left",
        deleted_in.as_secs_f64()
    ));
}
