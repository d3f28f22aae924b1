//! Builders of the operator's objects (from JSON or from the repository's examples), the caches
//! the controllers read, and small helpers over the JSON the mocked API server sees.

use std::marker::PhantomData;

use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use workerpool_api::{QWorker, ScalerConfig, StormCluster, StormTopology};

use crate::api_server::merge;

/// The manifests of `examples/` that tests load, as the repository holds them.
pub mod examples {
    /// `examples/qworker.yaml`.
    pub const QWORKER: &str = include_str!("../../../examples/qworker.yaml");
    /// `examples/scalerconfig.yaml`.
    pub const SCALER_CONFIG: &str = include_str!("../../../examples/scalerconfig.yaml");
    /// `examples/storm-autoscale-worker-pool.yaml`.
    pub const STORM_AUTOSCALE_WORKER_POOL: &str =
        include_str!("../../../examples/storm-autoscale-worker-pool.yaml");
    /// `examples/storm-basic-worker-pool.yaml`.
    pub const STORM_BASIC_WORKER_POOL: &str =
        include_str!("../../../examples/storm-basic-worker-pool.yaml");
    /// `examples/storm-full-worker-pool.yaml`.
    pub const STORM_FULL_WORKER_POOL: &str =
        include_str!("../../../examples/storm-full-worker-pool.yaml");
    /// `examples/storm-gpu-worker-pool.yaml`.
    pub const STORM_GPU_WORKER_POOL: &str =
        include_str!("../../../examples/storm-gpu-worker-pool.yaml");
    /// `examples/storm-cluster-and-topologies.yaml` (several documents).
    pub const STORM_CLUSTER_AND_TOPOLOGIES: &str =
        include_str!("../../../examples/storm-cluster-and-topologies.yaml");
}

/// The one-document example `yaml` (see [`examples`]) as a `K` in `namespace`, with `uid` and
/// `generation` set as the API server would.
pub fn example<K>(yaml: &str, namespace: &str, uid: &str, generation: i64) -> K
where
    K: Resource + DeserializeOwned,
{
    let mut object: K = serde_yaml::from_str(yaml).expect("example");
    let meta = object.meta_mut();
    meta.namespace = Some(namespace.into());
    meta.uid = Some(uid.into());
    meta.generation = Some(generation);
    object
}

/// An object of kind `K` under construction, as JSON: `apiVersion`, `kind`, `metadata.name` and
/// `metadata.namespace` are set; the rest is merged in ([`merge`]) by the methods.
#[derive(Clone, Debug)]
pub struct Builder<K> {
    json: Value,
    kind: PhantomData<fn() -> K>,
}

impl<K> Builder<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    /// `K` `namespace/name`, with nothing else.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            json: json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()),
                "metadata": {"name": name, "namespace": namespace}}),
            kind: PhantomData,
        }
    }

    /// Sets `metadata.uid`.
    pub fn uid(self, uid: &str) -> Self {
        self.merge(json!({"metadata": {"uid": uid}}))
    }

    /// Sets `metadata.generation`.
    pub fn generation(self, generation: i64) -> Self {
        self.merge(json!({"metadata": {"generation": generation}}))
    }

    /// Sets `metadata.resourceVersion`.
    pub fn resource_version(self, version: &str) -> Self {
        self.merge(json!({"metadata": {"resourceVersion": version}}))
    }

    /// Merges `spec` into the spec.
    pub fn spec(self, spec: Value) -> Self {
        self.merge(json!({ "spec": spec }))
    }

    /// Merges `status` into the status.
    pub fn status(self, status: Value) -> Self {
        self.merge(json!({ "status": status }))
    }

    /// Merges `extra` into the whole object.
    pub fn merge(mut self, extra: Value) -> Self {
        merge(&mut self.json, extra);
        self
    }

    /// The object as JSON, as the API server would answer it.
    pub fn json(&self) -> Value {
        self.json.clone()
    }

    /// The object; panics when the JSON is not a valid `K`.
    pub fn build(self) -> K {
        serde_json::from_value(self.json)
            .unwrap_or_else(|e| panic!("not a valid {}: {e}", K::kind(&())))
    }
}

/// The StormCluster `storm` in `namespace`: External, its UI at `http://storm-ui:8080`,
/// ZooKeeper `zk-0`, Nimbus seed `nimbus-0`, image `storm:2.6.4`, and `status.phase: Running`.
pub fn running_external_cluster(namespace: &str) -> Builder<StormCluster> {
    Builder::new(namespace, "storm")
        .spec(json!({"mode": "External", "uiUrl": "http://storm-ui:8080", "zookeeperServers": ["zk-0"],
            "nimbusSeeds": ["nimbus-0"], "image": {"repository": "storm", "tag": "2.6.4"}}))
        .status(json!({"phase": "Running"}))
}

/// The StormTopology `namespace/name` of the StormCluster `storm` (observed only: no jar).
pub fn topology(namespace: &str, name: &str) -> Builder<StormTopology> {
    Builder::new(namespace, name).spec(json!({"clusterRef": "storm"}))
}

/// The QWorker `namespace/name` (uid `<name>-uid`, generation 1) with one container `worker`
/// (image `w:1`) and a scale config on the ScalerConfig `redis`, queue `queue`, scaling
/// factor 1; merge the rest of `spec.scaleConfig` (replica bounds, policy) in.
pub fn qworker(namespace: &str, name: &str, queue: &str) -> Builder<QWorker> {
    Builder::new(namespace, name)
        .uid(&format!("{name}-uid"))
        .generation(1)
        .spec(json!({
            "podSpec": {"containers": [{"name": "worker", "image": "w:1"}]},
            "scaleConfig": {"scalerConfigRef": "redis", "queue": queue, "scalingFactor": 1}
        }))
}

/// The ScalerConfig `namespace/name` (uid `<name>-uid`, generation 1) of broker `type_` with
/// `config`.
pub fn scaler_config(
    namespace: &str,
    name: &str,
    type_: &str,
    config: Value,
) -> Builder<ScalerConfig> {
    Builder::new(namespace, name)
        .uid(&format!("{name}-uid"))
        .generation(1)
        .spec(json!({"type": type_, "config": config}))
}

/// A ScalerConfig `namespace/name` (uid `uid`) for the machine's local Redis on 127.0.0.1:6379.
pub fn local_redis(namespace: &str, name: &str, uid: &str) -> ScalerConfig {
    scaler_config(
        namespace,
        name,
        "redis",
        json!({"host": "127.0.0.1", "port": "6379"}),
    )
    .uid(uid)
    .build()
}

/// A reflector cache holding `objects`, as the controllers' watches fill it.
pub fn cache_of<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    reader
}

/// What the server stores after a status apply of `object`: the object without its status (the
/// mocked server merges the applied status in).
pub fn stored<K: Serialize>(object: &K) -> Value {
    let mut v = serde_json::to_value(object).expect("json");
    v.as_object_mut().expect("object").remove("status");
    v
}

/// The condition `type_` of a JSON `status`, if it has one.
pub fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
}

/// The API path of object `name` of resource `plural` in `group_version` (`v1` is the core
/// group) in `namespace`.
pub fn object_path(namespace: &str, group_version: &str, plural: &str, name: &str) -> String {
    let prefix = if group_version == "v1" {
        "/api"
    } else {
        "/apis"
    };
    format!("{prefix}/{group_version}/namespaces/{namespace}/{plural}/{name}")
}
