//! The recovery scenario: what must hold across the operator's restarts, with the machine's
//! real Redis as broker and the node stand-in running the pods.
//!
//! 1. `/readyz` answers within seconds of the start.
//! 2. Restart with live workers: the operator is killed, `minReplicas` raised from 5 to 6, the
//!    operator started again: never more than 6 live worker pods at any sample.
//! 3. A busy worker pod force-deleted while the operator is down: after the restart its task
//!    is back on the queue and the pod is gone.
//! 4. A drained pod whose worker exited while its sidecar runs: deleted.
//! 5. A pod that never started (the cluster cannot place it) and is chosen on scale-down:
//!    deleted at once, no running worker asked to drain.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use workerpool_api::QWorker;

use crate::harness::{Observe, Operator, Scenario, WAIT, ensure, http_get, summarize_events};
use crate::redis::TestRedis;
use k8s_openapi::api::coordination::v1::Lease;

const NAME: &str = "recovery";
const SCALER: &str = "recovery-broker";
const SELECTOR: &str = "quickube.com/qworker=recovery";
const DRAIN: &str = "quickube.com/drain";
const FINALIZER: &str = "quickube.com/task-recovery";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{}[{}{}{}{}]",
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
                    .unwrap_or_default(),
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    ""
                } else {
                    ",unbound"
                },
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn pods(api: &Api<Pod>) -> Result<Vec<Pod>, String> {
    Ok(api
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .obs("list pods")?
        .items)
}

async fn set_min(s: &Scenario, min: i32) {
    let api: Api<QWorker> = s.api();
    if let Err(e) = api
        .patch(
            NAME,
            &params(),
            &Patch::Merge(&json!({"spec": {"scaleConfig": {"minReplicas": min}}})),
        )
        .await
    {
        s.fail(format!("cannot set minReplicas {min}: {e}"));
    }
}

/// Waits until exactly `n` live, running, non-draining workers exist.
async fn expect_running(s: &Scenario, api: &Api<Pod>, n: usize) -> Vec<Pod> {
    s.eventually(&format!("{n} running workers"), WAIT, || async move {
        let all = pods(api).await?;
        let running: Vec<Pod> = all
            .iter()
            .filter(|p| {
                live(p)
                    && !p.annotations().contains_key(DRAIN)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .cloned()
            .collect();
        ensure(running.len() == n, || describe(&all))?;
        Ok(running)
    })
    .await
}

/// Two replicas with leader election: both become ready (the standby's caches sync too), and
/// exactly one holds the Lease.
async fn leader_election(s: &Scenario) {
    let lease_args = [
        "--leader-election",
        "--lease-namespace",
        s.ns.as_str(),
        "--lease-name",
        "recovery-e2e",
    ];
    let replicas: Vec<Operator> = ["-a", "-b"]
        .iter()
        .map(|suffix| {
            let mut args = lease_args.to_vec();
            let id = format!("replica{suffix}");
            args.extend(["--pod-name", id.as_str()]);
            Operator::start_with(&s.ns, None, &args, &format!("-replica{suffix}"))
                .unwrap_or_else(|e| s.fail(e))
        })
        .collect();
    for r in &replicas {
        let port = r.port;
        s.eventually(
            "a replica's /readyz 200, leader or standby",
            WAIT,
            || async move {
                let (code, body) = http_get(port, "/readyz").await?;
                ensure(code == 200, || format!("/readyz answered {code}: {body}"))
            },
        )
        .await;
    }
    let leases: Api<Lease> = s.api();
    let leases = &leases;
    let holder = s
        .eventually("the Lease held by one replica", WAIT, || async move {
            let lease = leases.get("recovery-e2e").await.obs("get lease")?;
            lease
                .spec
                .and_then(|sp| sp.holder_identity)
                .filter(|h| h.starts_with("replica-"))
                .ok_or_else(|| "no holder".to_string())
        })
        .await;
    for r in &replicas {
        r.stop();
    }
    s.note(format!(
        "two replicas with leader election: both ready, {holder} leads"
    ));
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    s.wait_default_service_account().await;
    let pod_api: Api<Pod> = s.api();
    let pod_api = &pod_api;
    let kubelet = &s.kubelet;
    let redis = TestRedis::connect().await.unwrap_or_else(|e| s.fail(e));
    let redis = &redis;
    let queue = format!("recovery-{}", s.ns);
    let queue = queue.as_str();
    redis.del(&[queue.to_string()]).await;

    // 1. Readiness within seconds of a start (the scenario's first start was awaited by the
    //    harness; restart and time it).
    let _ = s.operator.restart();
    let took = s.wait_operator_ready().await;
    if took > Duration::from_secs(10) {
        s.fail(format!("/readyz took {took:?} after a start"));
    }
    leader_election(s).await;

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
      - name: log-shipper
        image: sidecar-image:latest
  scaleConfig:
    scalerConfigRef: {SCALER}
    queue: {queue}
    minReplicas: 5
    maxReplicas: 10
    scalingFactor: 1
"#,
        db = redis.db
    );
    s.apply_yaml("recovery.yaml", &manifest, |_| {}).await;
    let first = expect_running(s, pod_api, 5).await;
    for p in &first {
        if !p.finalizers().iter().any(|f| f == FINALIZER) {
            s.fail(format!(
                "pod {} lacks the {FINALIZER} finalizer",
                p.name_any()
            ));
        }
    }
    s.note("5 workers running, each with the task-recovery finalizer");

    // 2. Restart with live workers: never a pod beyond the desired count.
    s.operator.stop();
    set_min(s, 6).await;
    let most = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (most, sampling, api) = (most.clone(), sampling.clone(), pod_api.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while sampling.load(Ordering::SeqCst) {
                if let Ok(all) = pods(&api).await {
                    most.fetch_max(all.iter().filter(|p| live(p)).count(), Ordering::SeqCst);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    s.operator.restart().unwrap_or_else(|e| s.fail(e));
    s.wait_operator_ready().await;
    expect_running(s, pod_api, 6).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.await.unwrap_or(0);
    let peak = most.load(Ordering::SeqCst);
    if peak > 6 {
        s.fail(format!(
            "{peak} live worker pods at one sample after a restart with desired 6"
        ));
    }
    s.note(format!(
        "restart with 5 live workers and desired 6: at most {peak} live pods over {samples} samples"
    ));

    // 3. A busy worker force-deleted while the operator is down.
    let victim = expect_running(s, pod_api, 6).await[0].name_any();
    let processing = workerpool_queue::processing_list(queue, &victim);
    redis
        .push(&processing, "busy-task")
        .await
        .unwrap_or_else(|e| s.fail(e));
    s.operator.stop();
    if let Err(e) = pod_api
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
    {
        s.fail(format!("cannot force-delete pod {victim}: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.operator.restart().unwrap_or_else(|e| s.fail(e));
    s.wait_operator_ready().await;
    let victim_ref = victim.as_str();
    let processing_ref = processing.as_str();
    s.eventually(
        "the force-deleted worker's task back on the queue and the pod gone",
        WAIT,
        || async move {
            let queued = redis.items(queue).await?;
            let held = redis.len(processing_ref).await?;
            let pod = pod_api.get_opt(victim_ref).await.obs("get pod")?;
            ensure(
                queued.contains(&"busy-task".to_string()) && held == 0 && pod.is_none(),
                || {
                    format!(
                        "queue {queued:?}, {held} held, pod {victim_ref} exists: {}",
                        pod.is_some()
                    )
                },
            )
        },
    )
    .await;
    s.eventually("a TasksRecovered Event", WAIT, || async move {
        let events = s.events_about("QWorker", NAME).await?;
        ensure(
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("TasksRecovered")),
            || format!("[{}]", summarize_events(&events)),
        )
    })
    .await;
    redis.del(&[queue.to_string()]).await;
    expect_running(s, pod_api, 6).await;
    s.note(format!(
        "busy worker {victim} force-deleted while the operator was down: its task returned, the pod released"
    ));

    // 4. Scale-down: the drained worker exits, its sidecar keeps running; the pod is deleted.
    set_min(s, 5).await;
    let drained = s
        .eventually("one worker asked to drain", WAIT, || async move {
            let all = pods(pod_api).await?;
            let draining: Vec<String> = all
                .iter()
                .filter(|p| live(p) && p.annotations().contains_key(DRAIN))
                .map(ResourceExt::name_any)
                .collect();
            ensure(draining.len() == 1, || describe(&all))?;
            Ok(draining[0].clone())
        })
        .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let exited = json!({"status": {"containerStatuses": [
        {"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}},
        {"name": "log-shipper", "image": "", "imageID": "", "ready": true, "restartCount": 0,
         "started": true, "state": {"running": {"startedAt": now}}}
    ]}});
    if let Err(e) = pod_api
        .patch_status(&drained, &params(), &Patch::Merge(&exited))
        .await
    {
        s.fail(format!("cannot report the worker of {drained} exited: {e}"));
    }
    let drained_ref = drained.as_str();
    s.eventually(
        "the drained pod with a running sidecar deleted and released",
        WAIT,
        || async move {
            let pod = pod_api.get_opt(drained_ref).await.obs("get pod")?;
            ensure(pod.is_none(), || {
                format!(
                    "pod {drained_ref} still exists: {}",
                    pod.as_ref()
                        .map(|p| describe(std::slice::from_ref(p)))
                        .unwrap_or_default()
                )
            })
        },
    )
    .await;
    s.note(format!(
        "drained pod {drained} deleted once its worker exited, its sidecar still running"
    ));

    // 5. A pod that never started is deleted, not drained, when it is the one too many.
    let before: BTreeSet<String> = expect_running(s, pod_api, 5)
        .await
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    kubelet.hold(true);
    set_min(s, 6).await;
    let before_ref = &before;
    let pending = s
        .eventually("a sixth pod, unbound", WAIT, || async move {
            let all = pods(pod_api).await?;
            let new: Vec<String> = all
                .iter()
                .filter(|p| live(p) && !before_ref.contains(&p.name_any()))
                .map(ResourceExt::name_any)
                .collect();
            ensure(new.len() == 1, || describe(&all))?;
            Ok(new[0].clone())
        })
        .await;
    set_min(s, 5).await;
    let pending_ref = pending.as_str();
    s.eventually("the pod that never started deleted", WAIT, || async move {
        let pod = pod_api.get_opt(pending_ref).await.obs("get pod")?;
        ensure(pod.is_none(), || format!("pod {pending_ref} still exists"))
    })
    .await;
    let all = pods(pod_api).await.unwrap_or_else(|e| s.fail(e));
    if let Some(p) = all.iter().find(|p| p.annotations().contains_key(DRAIN)) {
        s.fail(format!(
            "a running worker was asked to drain instead of the pod that never started: {}",
            p.name_any()
        ));
    }
    kubelet.hold(false);
    expect_running(s, pod_api, 5).await;
    s.note(format!(
        "pod {pending} that never started deleted on scale-down; no running worker drained"
    ));
}
