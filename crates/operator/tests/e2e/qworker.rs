//! The QWorker scenario: the seed's QWorker with a ScalerConfig whose broker is unreachable,
//! then reachable (the machine's real Redis, a database of its own): bare worker pods, the scale subresource, a
//! rollout by pod-spec hash, drains chosen by the operator, a finished worker, queue-driven
//! scaling, metrics, and the CRDs' CEL rules on a real API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use workerpool_api::{
    BrokerConnection, BrokerType, QWorker, ScalerConfig, ScalerConfigSpec, SecretKeyRef,
    SecretValue,
};

use crate::harness::{
    FIELD_MANAGER, LONG_WAIT, Observe, Scenario, WAIT, condition, controlled_by, ensure,
    expect_rejected, find_series, summarize_conditions, summarize_events,
};
use crate::redis::TestRedis;

pub const SCALER_CONFIG: &str = include_str!("../../../../examples/scalerconfig.yaml");
pub const QWORKER: &str = include_str!("../../../../examples/qworker.yaml");

pub const NAME: &str = "example-qworker";
const SCALER: &str = "example-scaler-config";
pub const QUEUE: &str = "task-queue";
pub const SELECTOR: &str = "quickube.com/qworker=example-qworker";
const HASH_LABEL: &str = "quickube.com/pod-spec-hash";
const DRAIN: &str = "quickube.com/drain";
const CURRENT_HASH_ANNOTATION: &str = "quickube.com/current-pod-spec-hash";
pub const IMAGE: &str = "worker-image:latest";
pub const NEW_IMAGE: &str = "worker-image:v2";

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

async fn get_qw(s: &Scenario) -> Result<QWorker, String> {
    let api: Api<QWorker> = s.api();
    api.get(NAME).await.obs("get QWorker")
}

fn describe_qw(q: &QWorker) -> String {
    let st = q.status.clone().unwrap_or_default();
    format!(
        "QWorker {}: minReplicas {}, desiredReplicas {}, currentReplicas {}, currentPodSpecHash {:?}, queueLength {:?}, selector {:?}, conditions [{}]",
        q.name_any(),
        q.spec.scale_config.min_replicas,
        st.desired_replicas,
        st.current_replicas,
        st.current_pod_spec_hash,
        st.queue_length,
        st.selector,
        summarize_conditions(&st.conditions)
    )
}

fn current_hash(q: &QWorker) -> String {
    q.status
        .as_ref()
        .map(|s| s.current_pod_spec_hash.clone())
        .unwrap_or_default()
}

/// Every pod with the QWorker's label.
async fn worker_pods(s: &Scenario) -> Result<Vec<Pod>, String> {
    let api: Api<Pod> = s.api();
    Ok(api
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .obs("list worker pods")?
        .items)
}

/// Not terminal and not being deleted.
fn is_live(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.labels().get(HASH_LABEL).map(String::as_str)
}

fn drain_of(p: &Pod) -> Option<&str> {
    p.annotations()
        .get(DRAIN)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Live pods of `hash` that are not asked to drain.
fn serving<'a>(pods: &'a [Pod], hash: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| is_live(p) && hash_of(p) == Some(hash) && drain_of(p).is_none())
        .collect()
}

fn describe_pods(pods: &[Pod]) -> String {
    let rows: Vec<String> = pods
        .iter()
        .map(|p| {
            format!(
                "{} (hash {}, drain {}, phase {}{})",
                p.name_any(),
                hash_of(p).unwrap_or("-"),
                drain_of(p).unwrap_or("-"),
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or("-"),
                if p.metadata.deletion_timestamp.is_some() {
                    ", terminating"
                } else {
                    ""
                }
            )
        })
        .collect();
    format!("{} pod(s): [{}]", pods.len(), rows.join(", "))
}

/// The protocol of design section 4 on one worker pod.
pub fn check_worker_pod(p: &Pod, qw: &QWorker, hash: &str, image: &str) -> Result<(), String> {
    let name = p.name_any();
    let what = format!("worker pod {name}");
    ensure(name.starts_with(&format!("{NAME}-")), || {
        format!("{what}: the name does not start with {NAME}-")
    })?;
    controlled_by(&what, &p.metadata, qw)?;
    let labels = p.labels();
    ensure(
        labels.get("quickube.com/qworker").map(String::as_str) == Some(NAME),
        || {
            format!(
                "{what}: label quickube.com/qworker is {:?}",
                labels.get("quickube.com/qworker")
            )
        },
    )?;
    ensure(hash_of(p) == Some(hash), || {
        format!(
            "{what}: label {HASH_LABEL} is {:?}, want {hash}",
            hash_of(p)
        )
    })?;
    let annotated = p.annotations().get(CURRENT_HASH_ANNOTATION).cloned();
    ensure(annotated.as_deref() == Some(hash), || {
        format!("{what}: annotation {CURRENT_HASH_ANNOTATION} is {annotated:?}, want {hash}")
    })?;
    let spec = p.spec.as_ref().ok_or_else(|| format!("{what}: no spec"))?;
    ensure(spec.restart_policy.as_deref() == Some("OnFailure"), || {
        format!(
            "{what}: restartPolicy {:?}, want OnFailure",
            spec.restart_policy
        )
    })?;
    let downward = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.downward_api.as_ref().map(|d| (v.name.clone(), d)))
        .find(|(_, d)| {
            d.items.iter().flatten().any(|i| {
                i.path == "annotations"
                    && i.field_ref
                        .as_ref()
                        .is_some_and(|f| f.field_path == "metadata.annotations")
            })
        })
        .map(|(name, _)| name)
        .ok_or_else(|| {
            format!(
                "{what}: no downward-API volume exposing metadata.annotations as \"annotations\""
            )
        })?;
    let worker = spec
        .containers
        .iter()
        .find(|c| c.name == "worker")
        .ok_or_else(|| format!("{what}: no container \"worker\""))?;
    ensure(worker.image.as_deref() == Some(image), || {
        format!("{what}: image {:?}, want {image}", worker.image)
    })?;
    ensure(
        worker
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == downward),
        || {
            format!(
                "{what}: the downward-API volume {downward} is not mounted in the worker container"
            )
        },
    )?;
    let env = worker.env.clone().unwrap_or_default();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    let field = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    ensure(value("POD_SPEC_HASH").as_deref() == Some(hash), || {
        format!(
            "{what}: env POD_SPEC_HASH {:?}, want status.currentPodSpecHash {hash}",
            value("POD_SPEC_HASH")
        )
    })?;
    ensure(value("QWORKER_NAME").as_deref() == Some(NAME), || {
        format!("{what}: env QWORKER_NAME {:?}", value("QWORKER_NAME"))
    })?;
    ensure(
        field("POD_NAME").as_deref() == Some("metadata.name"),
        || format!("{what}: env POD_NAME is not the downward-API metadata.name"),
    )?;
    ensure(
        field("POD_NAMESPACE").as_deref() == Some("metadata.namespace"),
        || format!("{what}: env POD_NAMESPACE is not the downward-API metadata.namespace"),
    )
}

/// The CRDs' CEL rules, evaluated by the real API server (dry-run creates).
async fn cel_rules(s: &Scenario) {
    let example: QWorker =
        serde_yaml::from_str(QWORKER).unwrap_or_else(|e| s.fail(format!("qworker.yaml: {e}")));

    let mut qw = example.clone();
    qw.metadata.name = Some("cel-zero-factor".into());
    qw.spec.scale_config.scaling_factor = 0.0;
    expect_rejected(
        s,
        "a QWorker with scalingFactor 0",
        &qw,
        "scalingFactor must be > 0",
    )
    .await;

    let mut qw = example.clone();
    qw.metadata.name = Some("cel-min-above-max".into());
    qw.spec.scale_config.min_replicas = 5;
    qw.spec.scale_config.max_replicas = 2;
    expect_rejected(
        s,
        "a QWorker with minReplicas 5 > maxReplicas 2",
        &qw,
        "minReplicas must be <= maxReplicas",
    )
    .await;

    let nats = ScalerConfig::new(
        "cel-nats-without-stream",
        ScalerConfigSpec {
            type_: BrokerType::Nats,
            config: BrokerConnection {
                url: Some("nats://nats.invalid:4222".into()),
                ..BrokerConnection::default()
            },
        },
    );
    expect_rejected(
        s,
        "a nats ScalerConfig without config.stream",
        &nats,
        "a nats ScalerConfig needs config.stream",
    )
    .await;

    let both = ScalerConfig::new(
        "cel-password-twice",
        ScalerConfigSpec {
            type_: BrokerType::Redis,
            config: BrokerConnection {
                host: Some("redis.invalid".into()),
                password: Some(SecretValue {
                    value: Some("plain".into()),
                    secret: Some(SecretKeyRef {
                        name: "redis-credentials".into(),
                        key: "password".into(),
                    }),
                }),
                ..BrokerConnection::default()
            },
        },
    );
    expect_rejected(
        s,
        "a ScalerConfig password with both value and secret",
        &both,
        "set exactly one of value and secret",
    )
    .await;
}

/// Whether the number of serving pods is expected to go up or down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Towards {
    /// Scaling up: more than the target is over-creation, a failure at once.
    Up,
    /// Scaling down.
    Down,
}

/// Waits until exactly `count` live pods of `hash` serve (not draining), then checks for `hold`
/// that it stays so. Returns the pods.
async fn expect_serving(
    s: &Scenario,
    hash: &str,
    count: usize,
    hold: Duration,
    towards: Towards,
) -> Vec<Pod> {
    let what = format!("exactly {count} serving worker pod(s) of hash {hash}");
    s.eventually(&what, WAIT, || async move {
        let pods = worker_pods(s).await?;
        let n = serving(&pods, hash).len();
        if towards == Towards::Up && n > count {
            s.fail(format!(
                "more than {count} serving worker pods of hash {hash}: {}",
                describe_pods(&pods)
            ));
        }
        ensure(n == count, || describe_pods(&pods))
    })
    .await;
    s.consistently(&what, hold, || async move {
        let pods = worker_pods(s).await?;
        ensure(serving(&pods, hash).len() == count, || describe_pods(&pods))
    })
    .await;
    let pods = worker_pods(s).await.unwrap_or_else(|e| s.fail(e));
    serving(&pods, hash).into_iter().cloned().collect()
}

/// Checks for `hold` that exactly `n` worker pods exist in all (nothing over-created).
async fn expect_total(s: &Scenario, n: usize, hold: Duration) {
    s.consistently(
        &format!("exactly {n} worker pod(s) in all"),
        hold,
        || async move {
            let pods = worker_pods(s).await?;
            ensure(pods.len() == n, || describe_pods(&pods))
        },
    )
    .await;
}

/// Waits for `currentReplicas == n`.
async fn expect_current(s: &Scenario, n: i32) {
    s.eventually(
        &format!("status.currentReplicas {n}"),
        WAIT,
        || async move {
            let q = get_qw(s).await?;
            let current = q.status.as_ref().map_or(0, |st| st.current_replicas);
            ensure(current == n, || describe_qw(&q))
        },
    )
    .await;
}

async fn patch_qw(s: &Scenario, what: &str, patch: serde_json::Value) {
    let api: Api<QWorker> = s.api();
    if let Err(e) = api
        .patch(NAME, &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!("cannot {what}: {e}"));
    }
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    cel_rules(s).await;
    s.wait_default_service_account().await;
    let redis = TestRedis::connect().await.unwrap_or_else(|e| s.fail(e));
    redis.del(&[QUEUE.to_string()]).await;

    // An unreachable broker: `.invalid` never resolves (RFC 2606).
    s.apply_yaml("scalerconfig.yaml", SCALER_CONFIG, |doc| {
        if doc["kind"] == "ScalerConfig" {
            doc["spec"]["config"]["host"] = json!("redis.invalid");
        }
    })
    .await;
    s.apply_yaml("qworker.yaml", QWORKER, |_| {}).await;

    s.eventually(
        "ScalerConfig healthy=false with Ready=False",
        WAIT,
        || async move {
            let api: Api<ScalerConfig> = s.api();
            let sc = api.get(SCALER).await.obs("get ScalerConfig")?;
            let st = sc.status.clone().unwrap_or_default();
            let ok = sc.status.is_some()
                && !st.healthy
                && condition(&st.conditions, "Ready").is_some_and(|c| c.status == "False");
            ensure(ok, || {
                format!(
                    "healthy {}, message {:?}, conditions [{}]",
                    st.healthy,
                    st.message,
                    summarize_conditions(&st.conditions)
                )
            })
        },
    )
    .await;
    s.eventually(
        "a Warning Event about the ScalerConfig",
        WAIT,
        || async move {
            let events = s.events_about("ScalerConfig", SCALER).await?;
            ensure(
                events.iter().any(|e| e.type_.as_deref() == Some("Warning")),
                || format!("[{}]", summarize_events(&events)),
            )
        },
    )
    .await;
    s.note("ScalerConfig reports the unreachable broker");

    // The QWorker keeps minReplicas workers; an error never scales down.
    let qw = s
        .eventually(
            "QWorker BrokerReachable=False with desiredReplicas 1 and a pod-spec hash",
            WAIT,
            || async move {
                let q = get_qw(s).await?;
                let st = q.status.clone().unwrap_or_default();
                let ok = condition(&st.conditions, "BrokerReachable")
                    .is_some_and(|c| c.status == "False")
                    && st.desired_replicas == 1
                    && !st.current_pod_spec_hash.is_empty();
                if ok { Ok(q) } else { Err(describe_qw(&q)) }
            },
        )
        .await;
    let hash = current_hash(&qw);
    let first = expect_serving(s, &hash, 1, Duration::from_secs(3), Towards::Up).await;
    expect_total(s, 1, Duration::from_secs(1)).await;
    for pod in &first {
        if let Err(e) = check_worker_pod(pod, &qw, &hash, IMAGE) {
            s.fail(e);
        }
    }
    expect_current(s, 1).await;
    s.consistently(
        "desiredReplicas 1 while the broker is unreachable",
        Duration::from_secs(3),
        || async move {
            let q = get_qw(s).await?;
            ensure(
                q.status.as_ref().is_some_and(|st| st.desired_replicas == 1),
                || describe_qw(&q),
            )
        },
    )
    .await;
    s.expect_event(
        "QWorker",
        NAME,
        "Normal",
        "Created",
        "Created 1 worker pod(s)",
    )
    .await;
    s.eventually(
        "a Warning Event about the unreachable broker on the QWorker",
        WAIT,
        || async move {
            let events = s.events_about("QWorker", NAME).await?;
            ensure(
                events.iter().any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref().is_some_and(|r| r.starts_with("Broker"))
                }),
                || format!("[{}]", summarize_events(&events)),
            )
        },
    )
    .await;
    s.note(format!("one worker pod of hash {hash}, broker unreachable"));

    // `kubectl scale`: the scale subresource maps to scaleConfig.minReplicas.
    let api: Api<QWorker> = s.api();
    let api_ref = &api;
    s.eventually(
        "the scale subresource (replicas 1, selector)",
        WAIT,
        || async move {
            let scale = api_ref.get_scale(NAME).await.obs("get scale")?;
            let spec = scale.spec.as_ref().and_then(|s| s.replicas);
            let status = scale.status.as_ref();
            ensure(
                spec == Some(1)
                    && status.is_some_and(|st| {
                        st.replicas == 1 && st.selector.as_deref() == Some(SELECTOR)
                    }),
                || format!("{scale:?}"),
            )
        },
    )
    .await;
    if let Err(e) = api
        .patch_scale(
            NAME,
            &merge_params(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
    {
        s.fail(format!("cannot patch the scale subresource: {e}"));
    }
    let q = get_qw(s).await.unwrap_or_else(|e| s.fail(e));
    if q.spec.scale_config.min_replicas != 3 {
        s.fail(format!(
            "scaling to 3 did not set scaleConfig.minReplicas: {}",
            describe_qw(&q)
        ));
    }
    expect_serving(s, &hash, 3, Duration::from_secs(5), Towards::Up).await;
    expect_total(s, 3, Duration::from_secs(1)).await;
    expect_current(s, 3).await;
    // Legacy workers compare desiredReplicas with currentReplicas: the desired count follows
    // the new bounds at once, broker or not.
    s.eventually(
        "desiredReplicas 3 after minReplicas 3, with the broker unreachable",
        Duration::from_secs(5),
        || async move {
            let q = get_qw(s).await?;
            ensure(
                q.status.as_ref().is_some_and(|st| st.desired_replicas == 3),
                || describe_qw(&q),
            )
        },
    )
    .await;
    s.note("scaled to 3 worker pods, no over-creation, desiredReplicas 3");

    // A new image: a new hash, stale workers asked to drain, new ones created.
    patch_qw(
        s,
        "change the worker image",
        json!({"spec": {"podSpec": {"containers": [{
            "name": "worker",
            "image": NEW_IMAGE,
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
        }]}}}),
    )
    .await;
    let old_hash = hash.as_str();
    let qw = s
        .eventually("a new status.currentPodSpecHash", WAIT, || async move {
            let q = get_qw(s).await?;
            let h = current_hash(&q);
            if !h.is_empty() && h != old_hash {
                Ok(q)
            } else {
                Err(describe_qw(&q))
            }
        })
        .await;
    let new_hash = current_hash(&qw);
    let new_ref = new_hash.as_str();
    s.eventually(
        "the 3 old workers to be asked to drain (stale-hash)",
        WAIT,
        || async move {
            let pods = worker_pods(s).await?;
            let old: Vec<&Pod> = pods
                .iter()
                .filter(|p| hash_of(p) == Some(old_hash))
                .collect();
            let stale = old
                .iter()
                .filter(|p| {
                    drain_of(p) == Some("stale-hash")
                        && p.annotations()
                            .get(CURRENT_HASH_ANNOTATION)
                            .map(String::as_str)
                            == Some(new_ref)
                })
                .count();
            ensure(old.len() == 3 && stale == 3, || describe_pods(&pods))
        },
    )
    .await;
    let fresh = expect_serving(s, &new_hash, 3, Duration::from_secs(4), Towards::Up).await;
    for pod in &fresh {
        if let Err(e) = check_worker_pod(pod, &qw, &new_hash, NEW_IMAGE) {
            s.fail(e);
        }
    }
    s.expect_event("QWorker", NAME, "Normal", "RollingOut", "stale-hash")
        .await;
    s.note(format!("rolled out: hash {hash} -> {new_hash}"));

    // Back to one worker: the operator picks exactly two to drain. The broker is still
    // unreachable, so the autoscaler keeps its last answer within the bounds: lowering the
    // floor alone keeps 3 workers (an error never scales down); lowering the ceiling to 1 is
    // the user's own limit and applies at once.
    patch_qw(
        s,
        "set minReplicas and maxReplicas to 1",
        json!({"spec": {"scaleConfig": {"minReplicas": 1, "maxReplicas": 1}}}),
    )
    .await;
    s.eventually(
        "exactly 2 new workers asked to drain (scale-down)",
        WAIT,
        || async move {
            let pods = worker_pods(s).await?;
            let drained = pods
                .iter()
                .filter(|p| hash_of(p) == Some(new_ref) && drain_of(p) == Some("scale-down"))
                .count();
            if drained > 2 {
                s.fail(format!(
                    "more than 2 workers asked to drain: {}",
                    describe_pods(&pods)
                ));
            }
            ensure(drained == 2, || describe_pods(&pods))
        },
    )
    .await;
    expect_serving(s, &new_hash, 1, Duration::from_secs(4), Towards::Down).await;
    expect_current(s, 1).await;
    s.expect_event("QWorker", NAME, "Normal", "DrainRequested", "scale-down")
        .await;
    s.note("scaled down to 1: 2 workers draining");

    // A drained worker finishes (no kubelet here: its status is written as one would).
    let pods = worker_pods(s).await.unwrap_or_else(|e| s.fail(e));
    let finished = pods
        .iter()
        .find(|p| is_live(p) && drain_of(p) == Some("scale-down"))
        .map(ResourceExt::name_any)
        .unwrap_or_else(|| s.fail(format!("no draining pod: {}", describe_pods(&pods))));
    let pod_api: Api<Pod> = s.api();
    if let Err(e) = pod_api
        .patch_status(
            &finished,
            &merge_params(),
            &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
        )
        .await
    {
        s.fail(format!("cannot mark pod {finished} Succeeded: {e}"));
    }
    let finished_ref = finished.as_str();
    let pod_api_ref = &pod_api;
    let gone = |_: ()| async move {
        let pod = pod_api_ref.get_opt(finished_ref).await.obs("get pod")?;
        ensure(
            pod.as_ref()
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
            || format!("pod {finished_ref} still exists"),
        )
    };
    let early = s.within(Duration::from_secs(8), || gone(())).await;
    s.note(match early {
        Ok(()) => format!("finished pod {finished} deleted while the broker is unreachable"),
        Err(_) => format!(
            "finished pod {finished} kept while the broker is unreachable (its in-flight tasks cannot be returned yet)"
        ),
    });

    // The broker becomes reachable: the real Redis, with two tasks in the finished worker's
    // processing list (held back by the task-recovery finalizer until they can be returned).
    let processing = workerpool_queue::processing_list(QUEUE, &finished);
    redis
        .set_len(&processing, 2)
        .await
        .unwrap_or_else(|e| s.fail(e));
    let scalers: Api<ScalerConfig> = s.api();
    if let Err(e) = scalers
        .patch(
            SCALER,
            &merge_params(),
            &Patch::Merge(&redis.scaler_config_patch()),
        )
        .await
    {
        s.fail(format!(
            "cannot point the ScalerConfig at the local Redis: {e}"
        ));
    }
    patch_qw(
        s,
        "set maxReplicas back to 10",
        json!({"spec": {"scaleConfig": {"maxReplicas": 10}}}),
    )
    .await;
    let scalers_ref = &scalers;
    s.eventually(
        "ScalerConfig healthy=true with Ready=True",
        WAIT,
        || async move {
            let sc = scalers_ref.get(SCALER).await.obs("get ScalerConfig")?;
            let st = sc.status.clone().unwrap_or_default();
            let ok = st.healthy
                && condition(&st.conditions, "Ready").is_some_and(|c| c.status == "True");
            ensure(ok, || {
                format!(
                    "healthy {}, message {:?}, conditions [{}]",
                    st.healthy,
                    st.message,
                    summarize_conditions(&st.conditions)
                )
            })
        },
    )
    .await;
    let redis_ref = &redis;
    let processing_ref = processing.as_str();
    s.eventually(
        "the finished pod gone after its 2 in-flight tasks went back to the queue",
        LONG_WAIT,
        || async move {
            let pod = pod_api_ref.get_opt(finished_ref).await.obs("get pod")?;
            ensure(pod.is_none(), || format!("pod {finished_ref} still exists"))?;
            let held = redis_ref.len(processing_ref).await?;
            ensure(held == 0, || {
                format!("{processing_ref} still holds {held} task(s)")
            })?;
            let queued = redis_ref.len(QUEUE).await?;
            ensure(queued == 2, || format!("{QUEUE} holds {queued} task(s)"))
        },
    )
    .await;
    s.expect_event("QWorker", NAME, "Normal", "TasksRecovered", &finished)
        .await;
    s.note(format!(
        "finished pod {finished} deleted, its 2 tasks returned to {QUEUE}"
    ));

    // Queue-driven scaling: 2 waiting tasks × scalingFactor 2 = 4 workers.
    s.eventually(
        "BrokerReachable=True, queueLength 2 and desiredReplicas 4",
        LONG_WAIT,
        || async move {
            let q = get_qw(s).await?;
            let st = q.status.clone().unwrap_or_default();
            let ok = condition(&st.conditions, "BrokerReachable")
                .is_some_and(|c| c.status == "True")
                && st.queue_length == Some(2)
                && st.desired_replicas == 4;
            ensure(ok, || format!("{}; queue {}", describe_qw(&q), QUEUE))
        },
    )
    .await;
    expect_serving(s, &new_hash, 4, Duration::from_secs(3), Towards::Up).await;
    expect_current(s, 4).await;
    // The Event recorder may fold a repeated reason into the series of an earlier Event (whose
    // note stays the first one, "0 -> 1"), so a series counts as well.
    s.eventually("a ScaledUp Event for 1 -> 4", WAIT, || async move {
        let events = s.events_about("QWorker", NAME).await?;
        ensure(
            events.iter().any(|e| {
                e.reason.as_deref() == Some("ScaledUp")
                    && (e.note.as_deref().unwrap_or("").contains("-> 4") || e.series.is_some())
            }),
            || format!("[{}]", summarize_events(&events)),
        )
    })
    .await;
    s.note("scaled up to 4 on a queue of 2 tasks");

    // The queue empties: back to minReplicas.
    redis.set_len(QUEUE, 0).await.unwrap_or_else(|e| s.fail(e));
    s.eventually("desiredReplicas 1 on an empty queue", WAIT, || async move {
        let q = get_qw(s).await?;
        let st = q.status.clone().unwrap_or_default();
        ensure(
            st.desired_replicas == 1 && st.queue_length == Some(0),
            || describe_qw(&q),
        )
    })
    .await;
    expect_serving(s, &new_hash, 1, Duration::from_secs(3), Towards::Down).await;
    expect_current(s, 1).await;
    s.note("scaled back to 1 on an empty queue");

    // Metrics.
    let ns = s.ns.as_str();
    s.eventually("the QWorker series on /metrics", WAIT, || async move {
        let body = s.metrics().await?;
        let labels = [("namespace", ns), ("qworker", NAME), ("queue", QUEUE)];
        let desired = find_series(&body, "qworker_desired_replicas", &labels)?;
        ensure(desired.ends_with(" 1"), || desired.clone())?;
        find_series(&body, "qworker_current_replicas", &labels)?;
        find_series(&body, "qworker_queue_length", &labels)?;
        Ok(())
    })
    .await;
    s.note(format!("metrics exported (Redis database {})", redis.db));
    redis.del(&[QUEUE.to_string(), processing]).await;
    first_status(s, &redis).await;
}

/// A new QWorker's status is written once, with both managers' fields, by the reconciler's
/// field manager; once the autoscaler changes its fields they are its own, and the reconciler's
/// next writes leave them in place (server-side apply on the real API server).
async fn first_status(s: &Scenario, redis: &TestRedis) {
    const FIRST: &str = "first-status";
    const FIRST_QUEUE: &str = "first-status-queue";
    const OPERATOR: &str = "workerpool-operator";
    const AUTOSCALER: &str = "workerpool-operator-autoscaler";
    redis.del(&[FIRST_QUEUE.to_string()]).await;
    s.apply_yaml("qworker.yaml", QWORKER, |doc| {
        doc["metadata"]["name"] = json!(FIRST);
        doc["spec"]["scaleConfig"]["queue"] = json!(FIRST_QUEUE);
        doc["spec"]["scaleConfig"]["minReplicas"] = json!(0);
        doc["spec"]["scaleConfig"]["maxReplicas"] = json!(2);
        doc["spec"]["scaleConfig"]["scalingFactor"] = json!(1);
    })
    .await;
    let api: Api<QWorker> = s.api();
    let api = &api;
    let owned = |q: &QWorker, manager: &str, field: &str| {
        crate::harness::applied_field_owned_by(&q.metadata, manager, &["f:status", field])
    };
    let first = s
        .eventually(
            "the new QWorker's whole status from one apply of the reconciler",
            WAIT,
            || async move {
                let q = api.get(FIRST).await.obs("get QWorker")?;
                let st = q.status.clone().unwrap_or_default();
                ensure(
                    st.observed_generation == q.metadata.generation
                        && st.queue_length == Some(0)
                        && condition(&st.conditions, "BrokerReachable")
                            .is_some_and(|c| c.status == "True"),
                    || describe_qw(&q),
                )?;
                Ok(q)
            },
        )
        .await;
    let managers = format!("{:?}", first.metadata.managed_fields);
    if !owned(&first, OPERATOR, "f:desiredReplicas")
        || !owned(&first, OPERATOR, "f:queueLength")
        || owned(&first, AUTOSCALER, "f:desiredReplicas")
    {
        s.fail(format!(
            "the first status should be one apply of {OPERATOR}: {managers}"
        ));
    }
    s.note("a new QWorker's status written once, by the reconciler, with the autoscaler's fields");

    redis
        .push(FIRST_QUEUE, "t1")
        .await
        .unwrap_or_else(|e| s.fail(e));
    redis
        .push(FIRST_QUEUE, "t2")
        .await
        .unwrap_or_else(|e| s.fail(e));
    s.eventually(
        "desiredReplicas 2, the autoscaler's own, and currentReplicas 2",
        WAIT,
        || async move {
            let q = api.get(FIRST).await.obs("get QWorker")?;
            let st = q.status.clone().unwrap_or_default();
            ensure(
                st.desired_replicas == 2
                    && st.current_replicas == 2
                    && owned(&q, AUTOSCALER, "f:desiredReplicas"),
                || {
                    format!(
                        "{}; managers {:?}",
                        describe_qw(&q),
                        q.metadata.managed_fields
                    )
                },
            )
        },
    )
    .await;
    s.consistently(
        "the autoscaler's fields stay after the reconciler's writes",
        Duration::from_secs(3),
        || async move {
            let q = api.get(FIRST).await.obs("get QWorker")?;
            let st = q.status.clone().unwrap_or_default();
            ensure(
                st.desired_replicas == 2
                    && st.queue_length == Some(2)
                    && condition(&st.conditions, "BrokerReachable").is_some()
                    && condition(&st.conditions, "Ready").is_some(),
                || describe_qw(&q),
            )
        },
    )
    .await;
    s.note("the autoscaler took its fields over; the reconciler's writes left them in place");
    redis.del(&[FIRST_QUEUE.to_string()]).await;
    if let Err(e) = api.delete(FIRST, &Default::default()).await {
        s.fail(format!("delete {FIRST}: {e}"));
    }
}
