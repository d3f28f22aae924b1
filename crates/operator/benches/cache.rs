//! What one cached object costs, by kind: the bytes and allocations the watch caches hold per
//! object, counted by a counting allocator while 1,000 objects shaped as the API server returns
//! them (managedFields, status, the operator's labels and applied hash) are decoded as the watch
//! decodes them, slimmed, and kept (run: `cargo bench -p workerpool-operator --bench cache`).
//! Each child kind is counted as the operator caches it (a [`Child`] view) and, for comparison,
//! as the whole `k8s-openapi` object with its metadata slimmed (what a cache of the kind holds
//! without a view). Bytes are the sizes asked of the allocator, without its own overhead per
//! allocation (8 to 16 bytes with glibc).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use workerpool_api::{QWorker, StormCluster, StormWorkerPool};
use workerpool_operator::cache::child::Child;
use workerpool_operator::cache::{Slim, slim_metadata};
use workerpool_operator::controllers::stormworkerpool::build;

/// Counts live heap bytes and allocations.
struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        BYTES.fetch_add(size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `size` is the caller's new size.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: usize = 1000;
const NS: &str = "wpo-scale-5000";

/// `object` as the API server returns it: identity, managedFields, creation time.
fn served(mut object: Value, i: usize) -> Value {
    let meta = &mut object["metadata"];
    meta["namespace"] = json!(NS);
    meta["uid"] = json!(format!("6f1c2d3e-{i:04}-4a5b-8c9d-0e1f2a3b4c5d"));
    meta["resourceVersion"] = json!(format!("{}", 1_234_567 + i));
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2026-12-06T10:00:00Z");
    meta["managedFields"] = json!([{"manager": "workerpool-operator", "operation": "Apply",
        "apiVersion": "v1", "time": "2026-12-06T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/name": {}}}}}]);
    object
}

/// Bytes and allocations held per object once `bodies` are decoded into `K`, slimmed by
/// `slim`, and kept as the cache keeps them (in an `Arc`).
fn held<K: DeserializeOwned>(bodies: &[Vec<u8>], slim: fn(&mut K)) -> (f64, f64) {
    let mut kept = Vec::with_capacity(bodies.len());
    let (bytes, blocks) = (BYTES.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst));
    for body in bodies {
        let mut object: K = serde_json::from_slice(body).expect("decodes");
        slim(&mut object);
        kept.push(Arc::new(object));
    }
    let n = bodies.len() as f64;
    let per = (
        (BYTES.load(Ordering::SeqCst) - bytes) as f64 / n,
        (BLOCKS.load(Ordering::SeqCst) - blocks) as f64 / n,
    );
    drop(kept);
    per
}

/// A built child as JSON.
fn json_of<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("json")
}

fn row(kind: &str, cached_as: &str, (bytes, blocks): (f64, f64), body: usize) {
    println!("| {kind} | {cached_as} | {bytes:.0} | {blocks:.1} | {body} |");
}

fn main() {
    let cluster: StormCluster = serde_json::from_value(json!({
        "apiVersion": "storm.apache.org/v1beta1", "kind": "StormCluster",
        "metadata": {"name": "storm", "namespace": NS},
        "spec": {"mode": "External", "uiUrl": "http://127.0.0.1:34567",
                 "nimbusSeeds": ["nimbus-0.nimbus"], "zookeeperServers": ["zk-0.zk"]}}))
    .expect("cluster");
    let mut bodies: [Vec<Vec<u8>>; 6] = Default::default();
    for i in 0..N {
        let pool = served(
            json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
                "metadata": {"name": format!("pool-{i}")},
                "spec": {"topologyRef": format!("scale-t{}", i % 10), "replicas": 1,
                    "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 5,
                                    "targetCPUUtilizationPercentage": 70}},
                "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 0,
                    "phase": "Pending", "conditions": [
                    {"type": "Ready", "status": "False", "reason": "WorkersNotReady",
                     "message": "0/1 worker(s) are ready", "lastTransitionTime": "2026-12-06T10:00:01Z",
                     "observedGeneration": 1},
                    {"type": "Autoscaling", "status": "False", "reason": "HPANotReported",
                     "message": "HPA has not reported whether it can scale yet (min: 1, max: 5)",
                     "lastTransitionTime": "2026-12-06T10:00:01Z", "observedGeneration": 1}]}}),
            i,
        );
        let typed: StormWorkerPool = serde_json::from_value(pool.clone()).expect("pool");
        let children = build::children(&typed, &cluster).expect("children");
        let owner = json!([{"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
            "name": format!("pool-{i}"), "uid": "6f1c2d3e-0000-4a5b-8c9d-0e1f2a3b4c5d",
            "controller": true, "blockOwnerDeletion": true}]);
        let child = |object: Value, status: Value| {
            let mut object = served(object, i);
            object["metadata"]["ownerReferences"] = owner.clone();
            if !status.is_null() {
                object["status"] = status;
            }
            serde_json::to_vec(&object).expect("json")
        };
        let deployment_status = json!({"observedGeneration": 1, "replicas": 1,
            "updatedReplicas": 1, "unavailableReplicas": 1, "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.",
             "lastUpdateTime": "2026-12-06T10:00:01Z", "lastTransitionTime": "2026-12-06T10:00:01Z"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "message": format!("ReplicaSet \"pool-{i}-workers-5d8f7c9b6d\" is progressing."),
             "lastUpdateTime": "2026-12-06T10:00:01Z", "lastTransitionTime": "2026-12-06T10:00:01Z"}]});
        let hpa_status = json!({"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
            {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale",
             "message": "the HPA controller was able to get the target's current scale",
             "lastTransitionTime": "2026-12-06T10:00:16Z"},
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
             "message": "the HPA was unable to compute the replica count: failed to get cpu utilization",
             "lastTransitionTime": "2026-12-06T10:00:16Z"}]});
        bodies[0].push(serde_json::to_vec(&pool).expect("json"));
        bodies[1].push(child(json_of(&children.config_map), Value::Null));
        bodies[2].push(child(json_of(&children.deployment), deployment_status));
        bodies[3].push(child(json_of(&children.service), Value::Null));
        bodies[4].push(child(
            json_of(children.hpa.as_ref().expect("autoscaled")),
            hpa_status,
        ));
        bodies[5].push(
            serde_json::to_vec(&served(
                json!({"apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
                "metadata": {"name": format!("qw-{i}")},
                "spec": {"podSpec": {"restartPolicy": "Never", "containers": [{"name": "worker",
                    "image": "busybox", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                    "scaleConfig": {"scalerConfigRef": "redis", "queue": format!("wpo-bench-{i}"),
                        "minReplicas": 0, "maxReplicas": 3, "scalingFactor": 1000}},
                "status": {"observedGeneration": 1, "currentReplicas": 0, "desiredReplicas": 0,
                    "queueLength": 0, "conditions": [{"type": "Ready", "status": "True",
                    "reason": "Scaled", "message": "0 of 0 workers",
                    "lastTransitionTime": "2026-12-06T10:00:01Z", "observedGeneration": 1}]}}),
                i,
            ))
            .expect("json"),
        );
    }
    let size = |k: usize| bodies[k][0].len();
    println!(
        "cache: bytes and allocations held per cached object ({N} of each, decoded as the watch decodes them)\n"
    );
    println!("| kind | cached as | bytes | allocations | JSON body (bytes) |");
    println!("|---|---|---|---|---|");
    row(
        "StormWorkerPool",
        "StormWorkerPool, slimmed",
        held::<StormWorkerPool>(&bodies[0], Slim::slim),
        size(0),
    );
    row(
        "QWorker",
        "QWorker, slimmed",
        held::<QWorker>(&bodies[5], Slim::slim),
        size(5),
    );
    row(
        "ConfigMap",
        "Child view",
        held::<Child<ConfigMap>>(&bodies[1], |_| {}),
        size(1),
    );
    row(
        "ConfigMap",
        "whole, metadata slimmed",
        held::<ConfigMap>(&bodies[1], slim_metadata),
        size(1),
    );
    row(
        "Deployment",
        "Child view",
        held::<Child<Deployment>>(&bodies[2], |_| {}),
        size(2),
    );
    row(
        "Deployment",
        "whole, metadata slimmed",
        held::<Deployment>(&bodies[2], slim_metadata),
        size(2),
    );
    row(
        "Service",
        "Child view",
        held::<Child<Service>>(&bodies[3], |_| {}),
        size(3),
    );
    row(
        "Service",
        "whole, metadata slimmed",
        held::<Service>(&bodies[3], slim_metadata),
        size(3),
    );
    row(
        "HorizontalPodAutoscaler",
        "Child view",
        held::<Child<HorizontalPodAutoscaler>>(&bodies[4], |_| {}),
        size(4),
    );
    row(
        "HorizontalPodAutoscaler",
        "whole, metadata slimmed",
        held::<HorizontalPodAutoscaler>(&bodies[4], slim_metadata),
        size(4),
    );
}
