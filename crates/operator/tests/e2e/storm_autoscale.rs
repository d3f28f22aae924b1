//! Scaling on Storm's own load: the seed's `autoscale-workers` pool (CPU 70 %, memory 80 % and
//! the Pods metric `storm_pending_messages`, target 1000) against a Storm UI stand-in whose
//! topology the test loads and unloads. The operator reads the load, raises the HPA's
//! `minReplicas`, and the real HPA controller scales the Deployment; after the load falls the
//! count returns to `minReplicas` once the stabilisation window has passed. The HPA never
//! carries a `storm_*` metric. The times from each change of the load to the Deployment's
//! count are printed.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use workerpool_api::storm::{ClusterPhase, TopologyPhase};
use workerpool_api::{StormCluster, StormTopology, StormWorkerPool};

use crate::harness::{
    Observe, Scenario, WAIT, condition, ensure, find_series, summarize_conditions,
};
use crate::storm::{CLUSTER_AND_TOPOLOGIES, POOLS};
use workerpool_testkit::storm_ui::{Load, StormUi};

const POOL: &str = "autoscale-workers";
const TOPOLOGY: &str = "streaming-topology";
/// The scale-down stabilisation window the scenario sets (the default, 300 s, would only
/// lengthen the run).
const STABILIZATION_SECONDS: i64 = 60;

/// Saturated: the busiest bolt at capacity 0.95, 900 ms complete latency, 5000 tuple trees
/// acked per second: 4500 in flight (Little's law), 5 pods at 1000 per pod.
const BUSY: Load = Load {
    capacity: 0.95,
    execute_latency_ms: 40.0,
    complete_latency_ms: 900.0,
    acked_per_second: 5000.0,
};
/// Idle again: 100/s at 15 ms, 1.5 in flight.
const IDLE: Load = Load {
    capacity: 0.05,
    execute_latency_ms: 0.5,
    complete_latency_ms: 15.0,
    acked_per_second: 100.0,
};

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

async fn replicas(s: &Scenario) -> Result<i32, String> {
    let deployments: Api<Deployment> = s.api();
    let d = deployments
        .get(&format!("{POOL}-deployment"))
        .await
        .obs("get Deployment")?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(0))
}

async fn describe(s: &Scenario) -> String {
    let pools: Api<StormWorkerPool> = s.api();
    let hpas: Api<HorizontalPodAutoscaler> = s.api();
    let pool = pools.get(POOL).await.ok();
    let hpa = hpas.get(&format!("{POOL}-hpa")).await.ok();
    let st = pool.and_then(|p| p.status).unwrap_or_default();
    let hs = hpa
        .as_ref()
        .and_then(|h| h.status.clone())
        .unwrap_or_default();
    format!(
        "Deployment {:?}; HPA min {:?} current {:?} desired {:?} conditions {:?}; pool stormAutoscaling {:?}, lastScaleDecision {:?}, conditions [{}]",
        replicas(s).await,
        hpa.as_ref()
            .and_then(|h| h.spec.as_ref())
            .and_then(|s| s.min_replicas),
        hs.current_replicas,
        hs.desired_replicas,
        hs.conditions
            .unwrap_or_default()
            .iter()
            .map(|c| format!(
                "{}={} {}",
                c.type_,
                c.status,
                c.reason.clone().unwrap_or_default()
            ))
            .collect::<Vec<_>>(),
        st.storm_autoscaling,
        st.last_scale_decision,
        summarize_conditions(&st.conditions)
    )
}

/// Waits until the Deployment's count satisfies `want`; returns how long that took.
async fn wait_count(
    s: &Scenario,
    what: &str,
    timeout: Duration,
    want: impl Fn(i32) -> bool + Copy,
) -> Duration {
    let started = Instant::now();
    s.eventually(what, timeout, || async move {
        let r = replicas(s).await?;
        if want(r) {
            Ok(())
        } else {
            Err(describe(s).await)
        }
    })
    .await;
    started.elapsed()
}

pub async fn run(s: Scenario) {
    let s = &s;
    s.wait_default_service_account().await;
    let ui = StormUi::start().await;
    ui.add("ml-topology", "ACTIVE", 3);
    s.apply_yaml(
        "storm-cluster-and-topologies.yaml",
        CLUSTER_AND_TOPOLOGIES,
        |_| {},
    )
    .await;
    let clusters: Api<StormCluster> = s.api();
    if let Err(e) = clusters
        .patch(
            "storm",
            &merge_params(),
            &Patch::Merge(&json!({"spec": {"uiUrl": ui.url}})),
        )
        .await
    {
        s.fail(format!("cannot set the uiUrl of the cluster: {e}"));
    }
    let clusters = &clusters;
    s.eventually("the cluster Running", WAIT, || async move {
        let c = clusters.get("storm").await.obs("get StormCluster")?;
        let phase = c.status.and_then(|s| s.phase);
        ensure(phase == Some(ClusterPhase::Running), || {
            format!("cluster {phase:?}")
        })
    })
    .await;
    let topologies: Api<StormTopology> = s.api();
    let phase_of = |want: TopologyPhase| {
        let topologies = topologies.clone();
        move || {
            let topologies = topologies.clone();
            async move {
                let t = topologies.get(TOPOLOGY).await.obs("get StormTopology")?;
                let st = t.status.unwrap_or_default();
                ensure(st.phase == Some(want), || {
                    format!("{TOPOLOGY}: {:?} {:?}", st.phase, st.message)
                })
            }
        }
    };
    s.eventually(
        "streaming-topology Submitting",
        WAIT,
        phase_of(TopologyPhase::Submitting),
    )
    .await;
    // What a successful `storm jar` does: Nimbus lists it. Idle to begin with.
    ui.add(TOPOLOGY, "ACTIVE", 2);
    ui.set_load(TOPOLOGY, IDLE);
    s.eventually(
        "streaming-topology Running",
        WAIT,
        phase_of(TopologyPhase::Running),
    )
    .await;

    // The seed's pool, with a shorter scale-down stabilisation window.
    let case = &POOLS[1];
    assert_eq!(case.name, POOL);
    s.apply_yaml(case.file, case.yaml, |doc| {
        doc["spec"]["autoscaling"]["behavior"] =
            json!({"scaleDown": {"stabilizationWindowSeconds": STABILIZATION_SECONDS}});
    })
    .await;
    let hpas: Api<HorizontalPodAutoscaler> = s.api();
    let hpa_name = format!("{POOL}-hpa");
    s.eventually(
        "the pool's HPA at minReplicas 2 without storm_* metrics, the Storm-derived count 2",
        WAIT,
        || {
            let hpas = hpas.clone();
            let hpa_name = hpa_name.clone();
            async move {
                let hpa = hpas.get(&hpa_name).await.obs("get HPA")?;
                let spec = hpa.spec.unwrap_or_default();
                let names: Vec<String> = spec
                    .metrics
                    .iter()
                    .flatten()
                    .map(|m| {
                        m.pods
                            .as_ref()
                            .map(|p| p.metric.name.clone())
                            .unwrap_or_else(|| {
                                m.resource
                                    .as_ref()
                                    .map(|r| r.name.clone())
                                    .unwrap_or_default()
                            })
                    })
                    .collect();
                ensure(names == ["cpu", "memory"], || {
                    format!("HPA metrics {names:?}")
                })?;
                ensure(spec.min_replicas == Some(2), || {
                    format!("HPA min {:?}", spec.min_replicas)
                })?;
                let pools: Api<StormWorkerPool> = s.api();
                let st = pools
                    .get(POOL)
                    .await
                    .obs("get pool")?
                    .status
                    .unwrap_or_default();
                let storm = st.storm_autoscaling.clone();
                ensure(
                    storm
                        .as_ref()
                        .is_some_and(|a| a.replicas == 2 && a.inputs.is_some()),
                    || describe_sync(&st),
                )?;
                ensure(replicas(s).await? == 2, || {
                    "Deployment not at 2".to_string()
                })
            }
        },
    )
    .await;
    s.note("HPA autoscale-workers-hpa: cpu and memory only, minReplicas 2; idle topology: Storm-derived count 2");

    // Load: the busiest bolt at capacity 0.95, 900 ms complete latency.
    ui.set_load(TOPOLOGY, BUSY);
    let up = wait_count(
        s,
        "the Deployment above minReplicas after the load rose",
        Duration::from_secs(120),
        |r| r > 2,
    )
    .await;
    let at_five = wait_count(
        s,
        "the Deployment at 5 (4500 in flight / 1000 per pod)",
        Duration::from_secs(120),
        |r| r == 5,
    )
    .await;
    s.note(format!(
        "load at capacity 0.95 / 900 ms: above minReplicas after {:.1} s, at 5 after {:.1} s more",
        up.as_secs_f64(),
        at_five.as_secs_f64()
    ));
    ensure(up <= Duration::from_secs(60), || {
        format!("took {up:?}, more than a minute")
    })
    .unwrap_or_else(|e| s.fail(e));
    let pools: Api<StormWorkerPool> = s.api();
    s.eventually(
        "the pool's status names the Storm-derived count and its inputs",
        WAIT,
        || {
            let pools = pools.clone();
            async move {
                let st = pools
                    .get(POOL)
                    .await
                    .obs("get pool")?
                    .status
                    .unwrap_or_default();
                let d = st
                    .last_scale_decision
                    .clone()
                    .ok_or_else(|| describe_sync(&st))?;
                ensure(
                    d.from == 2 && d.to == 5 && d.term == "PendingMessages",
                    || describe_sync(&st),
                )?;
                let inputs = d.inputs.clone().unwrap_or_default();
                ensure(
                    inputs.pending_messages == Some(4500.0)
                        && inputs.bolt_capacity == Some(0.95)
                        && inputs.busiest_bolt.as_deref() == Some("count")
                        && inputs.useful_pods == 7,
                    || describe_sync(&st),
                )?;
                let c =
                    condition(&st.conditions, "Autoscaling").ok_or_else(|| describe_sync(&st))?;
                ensure(
                    c.message.contains("Storm-derived count 5")
                        && c.message.contains("busiest bolt count at capacity 0.950"),
                    || describe_sync(&st),
                )
            }
        },
    )
    .await;
    s.expect_event("StormWorkerPool", POOL, "Normal", "StormScaled", "2 -> 5")
        .await;
    let hpa = hpas
        .get(&hpa_name)
        .await
        .unwrap_or_else(|e| s.fail(format!("get HPA: {e}")));
    let min = hpa.spec.as_ref().and_then(|s| s.min_replicas);
    ensure(min == Some(5), || {
        format!("HPA minReplicas {min:?}, want 5")
    })
    .unwrap_or_else(|e| s.fail(e));
    let body = s.metrics().await.unwrap_or_else(|e| s.fail(e));
    for (family, labels) in [
        (
            "storm_worker_pool_storm_metric",
            vec![("pool", POOL), ("metric", "storm_pending_messages")],
        ),
        (
            "storm_worker_pool_storm_metric",
            vec![("pool", POOL), ("metric", "storm_bolt_capacity")],
        ),
        ("storm_worker_pool_storm_replicas", vec![("pool", POOL)]),
    ] {
        let line = find_series(&body, family, &labels).unwrap_or_else(|e| s.fail(e));
        s.note(format!("/metrics: {line}"));
    }

    // The load falls: back to minReplicas once the window has passed, not before.
    ui.set_load(TOPOLOGY, IDLE);
    let down = wait_count(
        s,
        "the Deployment back at minReplicas after the load fell",
        Duration::from_secs(STABILIZATION_SECONDS as u64 + 120),
        |r| r == 2,
    )
    .await;
    s.note(format!(
        "load gone: back at minReplicas 2 after {:.1} s (stabilisation window {STABILIZATION_SECONDS} s)",
        down.as_secs_f64()
    ));
    ensure(
        down >= Duration::from_secs(STABILIZATION_SECONDS as u64 - 15),
        || format!("down after {down:?}: sooner than the stabilisation window"),
    )
    .unwrap_or_else(|e| s.fail(e));
    let hpa = hpas
        .get(&hpa_name)
        .await
        .unwrap_or_else(|e| s.fail(format!("get HPA: {e}")));
    let spec = hpa.spec.unwrap_or_default();
    let storm_metrics: Vec<_> = spec
        .metrics
        .iter()
        .flatten()
        .filter(|m| {
            m.pods
                .as_ref()
                .is_some_and(|p| p.metric.name.starts_with("storm_"))
        })
        .collect();
    ensure(
        spec.min_replicas == Some(2) && storm_metrics.is_empty(),
        || {
            format!(
                "HPA min {:?}, storm metrics {storm_metrics:?}",
                spec.min_replicas
            )
        },
    )
    .unwrap_or_else(|e| s.fail(e));
    s.note("HPA back at minReplicas 2, no storm_* metric throughout");
}

fn describe_sync(st: &workerpool_api::StormWorkerPoolStatus) -> String {
    format!(
        "stormAutoscaling {:?}, lastScaleDecision {:?}, conditions [{}]",
        st.storm_autoscaling,
        st.last_scale_decision,
        summarize_conditions(&st.conditions)
    )
}
