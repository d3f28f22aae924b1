//! Pure builders of a StormWorkerPool's children. No I/O: every function maps the pool and
//! its cluster to the object the operator applies.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, ObjectMetricSource,
    PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EphemeralVolumeSource, LocalObjectReference, PersistentVolumeClaimSpec,
    PersistentVolumeClaimTemplate, PodSecurityContext, PodSpec, PodTemplateSpec, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use workerpool_api::storm::{
    AutoscalingSpec, CustomMetric, DEFAULT_STORM_IMAGE, DEFAULT_STORM_TAG, MAX_POOL_NAME_LENGTH,
    MetricSourceType, POOL_RESERVED_KEYS, PortsSpec, StormCluster, StormWorkerPool,
    image_reference, reserved_key_in,
};

use workerpool_storm::log4j2::{CLUSTER_XML, CLUSTER_XML_NAME, WORKER_XML, WORKER_XML_NAME};

use super::sizing;
use crate::MANAGED_BY;
use crate::controllers::field_env;
use crate::error::{Error, Result};
use crate::quantity;

pub use super::sizing::WORKER_CONTAINER;
/// Name of the volume holding the pool's storm.yaml.
pub const CONFIG_VOLUME: &str = "storm-config";
/// Where the storm.yaml is mounted (the official image's `STORM_CONF_DIR`).
pub const CONFIG_DIR: &str = "/conf";
/// Storm's local state (`storm.local.dir`) on a volume (an emptyDir, or `spec.storage`).
pub const DATA_DIR: &str = "/data";
/// Storm's logs (`storm.log.dir`) on an emptyDir.
pub const LOG_DIR: &str = "/logs";
/// A writable `/tmp` (an emptyDir) under a read-only root filesystem.
pub const TMP_DIR: &str = "/tmp";
/// Volume of [`DATA_DIR`].
pub const DATA_VOLUME: &str = "storm-data";
/// Volume of [`LOG_DIR`].
pub const LOG_VOLUME: &str = "storm-logs";
/// Volume of [`TMP_DIR`].
pub const TMP_VOLUME: &str = "storm-tmp";
/// The official image's `storm` user and group, the default of the worker pods.
pub const STORM_UID: i64 = 1000;
/// Storm's default `worker.childopts` (2.6–2.8's defaults.yaml): `jvmOpts` are appended to it,
/// so `%HEAP-MEM%` and the heap-dump options stay.
pub const DEFAULT_WORKER_CHILDOPTS: &str = "-Xmx%HEAP-MEM%m -XX:+IgnoreUnrecognizedVMOptions -XX:+PrintGCDetails -Xloggc:artifacts/gc.log -XX:+PrintGCDateStamps -XX:+PrintGCTimeStamps -XX:+UseGCLogFileRotation -XX:NumberOfGCLogFiles=10 -XX:GCLogFileSize=1M -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath=artifacts/heapdump";
pub use crate::apply::{
    APPLIED_HASH_ANNOTATION, applied_hash, applied_hash_of, short_hash, with_applied_hash,
};
pub use crate::controllers::CONFIG_HASH_ANNOTATION;
/// Label naming the pool on every child.
pub const POOL_LABEL: &str = "storm.apache.org/pool";
/// Label naming the topology on every child.
pub const TOPOLOGY_LABEL: &str = "storm.apache.org/topology";

/// Names of a pool's children.
pub fn deployment_name(pool: &str) -> String {
    format!("{pool}-deployment")
}
/// Name of the HPA.
pub fn hpa_name(pool: &str) -> String {
    format!("{pool}-hpa")
}
/// Name of the headless Service.
pub fn service_name(pool: &str) -> String {
    format!("{pool}-headless")
}
/// Name of the ConfigMap with the storm.yaml.
pub fn config_map_name(pool: &str) -> String {
    format!("{pool}-storm-config")
}
/// Name of the PodDisruptionBudget.
pub fn pdb_name(pool: &str) -> String {
    format!("{pool}-pdb")
}

/// Checks the pool's name against [`MAX_POOL_NAME_LENGTH`], for API servers that skip the CRD's
/// CEL rules: a longer name makes the headless Service name (a DNS-1035 label) too long, and every
/// create of a child would be rejected.
pub fn validate_name(name: &str) -> Result<()> {
    if name.len() > MAX_POOL_NAME_LENGTH {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} has {} characters; at most {MAX_POOL_NAME_LENGTH} are allowed, because the headless Service {} must be a DNS label of at most 63 characters",
            name.len(),
            service_name(name)
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} must start with a lowercase letter, because the headless Service {} must be a DNS-1035 label",
            service_name(name)
        )));
    }
    Ok(())
}

/// `workerConfig`: no key the operator sets.
fn validate_worker_config(pool: &StormWorkerPool) -> Result<()> {
    match reserved_key_in(
        pool.spec.worker_config.as_ref(),
        POOL_RESERVED_KEYS,
        "workerConfig",
    ) {
        Some(message) => Err(Error::InvalidSpec(message)),
        None => Ok(()),
    }
}

/// Enabled `autoscaling`: a `maxReplicas`, `minReplicas` not above it, usable custom metrics.
fn validate_autoscaling(auto: &AutoscalingSpec) -> Result<()> {
    let max = auto.max_replicas.ok_or_else(|| {
        Error::InvalidSpec("autoscaling.maxReplicas is required when autoscaling is enabled".into())
    })?;
    let min = auto.min_replicas.unwrap_or(1);
    if min > max {
        return Err(Error::InvalidSpec(format!(
            "autoscaling.minReplicas ({min}) must be <= autoscaling.maxReplicas ({max})"
        )));
    }
    for (i, m) in auto.custom_metrics.iter().enumerate() {
        validate_custom_metric(i, m)?;
    }
    Ok(())
}

/// `autoscaling.customMetrics[i]`: targets that are quantities, at least one, and the ones
/// its type needs.
fn validate_custom_metric(i: usize, m: &CustomMetric) -> Result<()> {
    for (field, value) in [
        ("targetAverageValue", &m.target_average_value),
        ("targetValue", &m.target_value),
    ] {
        if let Some(v) = value
            && quantity::parse(v).is_none()
        {
            return Err(Error::InvalidSpec(format!(
                "autoscaling.customMetrics[{i}].{field}: {v:?} is not a quantity (e.g. \"1000\", \"500m\", \"2k\")"
            )));
        }
    }
    if m.target_average_value.is_none() && m.target_value.is_none() {
        return Err(Error::InvalidSpec(format!(
            "autoscaling.customMetrics[{i}] ({}) needs targetAverageValue or targetValue",
            m.name
        )));
    }
    if m.type_ == MetricSourceType::Object && m.described_object.is_none() {
        return Err(Error::InvalidSpec(format!(
            "autoscaling.customMetrics[{i}] ({}) is an object metric and needs describedObject",
            m.name
        )));
    }
    if m.type_ == MetricSourceType::Pods && m.target_average_value.is_none() {
        return Err(Error::InvalidSpec(format!(
            "autoscaling.customMetrics[{i}] ({}) is a pods metric and needs targetAverageValue",
            m.name
        )));
    }
    Ok(())
}

/// `storage.size`, when set: a positive quantity.
fn validate_storage(pool: &StormWorkerPool) -> Result<()> {
    if let Some(storage) = &pool.spec.storage
        && quantity::parse(&storage.size).is_none_or(|v| v <= 0.0)
    {
        return Err(Error::InvalidSpec(format!(
            "storage.size {:?} is not a positive quantity (e.g. \"10Gi\")",
            storage.size
        )));
    }
    Ok(())
}

/// `ports`: slot ports within 1..65535.
fn validate_ports(ports: &PortsSpec) -> Result<()> {
    if ports.start < 1 || ports.count < 1 || ports.start + ports.count - 1 > 65535 {
        return Err(Error::InvalidSpec(format!(
            "ports: start {} and count {} must give ports within 1..65535",
            ports.start, ports.count
        )));
    }
    Ok(())
}

/// `template.spec`: each container name used once, and none of the init containers named as
/// the worker.
fn validate_container_names(spec: &PodSpec) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let init = spec.init_containers.iter().flatten();
    for c in spec.containers.iter().chain(init) {
        if !seen.insert(c.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "template.spec: container name {:?} is used more than once",
                c.name
            )));
        }
    }
    if spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == WORKER_CONTAINER)
    {
        return Err(Error::InvalidSpec(format!(
            "template.spec.initContainers: the name {WORKER_CONTAINER:?} is reserved for the Storm worker container"
        )));
    }
    Ok(())
}

/// `template.spec`: no container but the worker has a port among the worker slot ports.
fn validate_sidecar_ports(spec: &PodSpec, ports: &PortsSpec) -> Result<()> {
    let slot_ports: Vec<i32> = (ports.start..ports.start + ports.count).collect();
    for c in spec
        .containers
        .iter()
        .filter(|c| c.name != WORKER_CONTAINER)
    {
        for p in c.ports.iter().flatten() {
            if slot_ports.contains(&p.container_port) {
                return Err(Error::InvalidSpec(format!(
                    "template.spec.containers[{}]: port {} collides with the worker slot ports {}-{}",
                    c.name,
                    p.container_port,
                    ports.start,
                    ports.start + ports.count - 1
                )));
            }
        }
    }
    Ok(())
}

/// Checks what the schema cannot (or what a server that skips CEL rules lets through): the
/// name, quantities of custom-metric targets and container names.
pub fn validate(pool: &StormWorkerPool) -> Result<()> {
    validate_name(&pool.name_any())?;
    validate_worker_config(pool)?;
    if let Some(auto) = pool.spec.enabled_autoscaling() {
        validate_autoscaling(auto)?;
    }
    validate_storage(pool)?;
    let ports = pool.spec.ports();
    validate_ports(&ports)?;
    if let Some(spec) = pool.spec.template.as_ref().and_then(|t| t.spec.as_ref()) {
        validate_container_names(spec)?;
        validate_sidecar_ports(spec, &ports)?;
    }
    Ok(())
}

/// The topology a pool serves.
pub fn topology(pool: &StormWorkerPool) -> &str {
    &pool.spec.topology_ref
}

/// Labels every child and pod carries.
pub fn labels(pool: &StormWorkerPool) -> BTreeMap<String, String> {
    let mut l = selector_labels(pool);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert("app.kubernetes.io/component".into(), "worker".into());
    l.insert(POOL_LABEL.into(), pool.name_any());
    l.insert(TOPOLOGY_LABEL.into(), label_value(topology(pool)));
    l
}

/// Labels selecting the pool's pods (immutable in the Deployment).
pub fn selector_labels(pool: &StormWorkerPool) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "storm-worker".into()),
        ("app.kubernetes.io/instance".into(), pool.name_any()),
    ])
}

fn label_value(v: &str) -> String {
    v.chars().take(63).collect()
}

fn owner_reference(pool: &StormWorkerPool) -> Vec<OwnerReference> {
    pool.controller_owner_ref(&()).into_iter().collect()
}

/// Whether `object` has a controller ownerReference to this pool (same uid), i.e. the operator
/// made it for this pool and may delete it.
pub fn controlled_by<K: Resource>(object: &K, pool: &StormWorkerPool) -> bool {
    crate::controllers::controlled_by(object, pool)
}

fn metadata(pool: &StormWorkerPool, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pool.namespace(),
        labels: Some(labels(pool)),
        owner_references: Some(owner_reference(pool)),
        ..ObjectMeta::default()
    }
}

/// The pool's storm.yaml: the cluster's `stormConfig`, its ZooKeeper root, the memory sizing
/// derived from the worker container ([`sizing`]), the pool's `workerConfig` (which wins over
/// both), then the entries the operator wires: ZooKeeper servers, Nimbus seeds, slot ports,
/// directories, the log4j2 directory, and `worker.childopts` with `jvmOpts` appended.
pub fn storm_yaml(pool: &StormWorkerPool, cluster: &StormCluster) -> Result<String> {
    let mut conf: BTreeMap<String, serde_json::Value> =
        cluster.spec.storm_config.clone().unwrap_or_default();
    if let Some(root) = cluster.zookeeper_root() {
        conf.insert("storm.zookeeper.root".into(), root);
    }
    let sized = sizing::sizing(pool);
    if let Some(capacity) = sized.capacity_mb {
        conf.insert(
            "supervisor.memory.capacity.mb".into(),
            serde_json::json!(capacity),
        );
    }
    if let Some(heap) = sized.heap_mb.filter(|h| *h > 0) {
        conf.insert("worker.heap.memory.mb".into(), serde_json::json!(heap));
    }
    conf.extend(pool.spec.worker_config.clone().unwrap_or_default());
    conf.insert(
        "storm.zookeeper.servers".into(),
        serde_json::json!(cluster.spec.zookeeper_servers),
    );
    conf.insert(
        "nimbus.seeds".into(),
        serde_json::json!(cluster.nimbus_seeds()),
    );
    let ports = pool.spec.ports();
    let slots: Vec<i32> = (ports.start..ports.start + ports.count).collect();
    conf.insert("supervisor.slots.ports".into(), serde_json::json!(slots));
    conf.insert("storm.local.dir".into(), serde_json::json!(DATA_DIR));
    conf.insert("storm.log.dir".into(), serde_json::json!(LOG_DIR));
    conf.insert(
        "storm.log4j2.conf.dir".into(),
        serde_json::json!(CONFIG_DIR),
    );
    if let Some(opts) = pool.spec.jvm_opts.as_ref().filter(|o| !o.is_empty()) {
        let base = conf
            .get("worker.childopts")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(DEFAULT_WORKER_CHILDOPTS)
            .to_string();
        conf.insert(
            "worker.childopts".into(),
            serde_json::json!(format!("{base} {}", opts.join(" "))),
        );
    }
    serde_yaml::to_string(&conf).map_err(|e| {
        Error::InvalidSpec(format!(
            "storm configuration cannot be written as YAML: {e}"
        ))
    })
}

/// The hash of the pool's configuration files (storm.yaml and the log4j2 files), carried by
/// the pod template so that a change rolls the pods.
pub fn config_hash(storm_yaml: &str) -> String {
    short_hash(&format!("{storm_yaml}{CLUSTER_XML}{WORKER_XML}"))
}

/// Whether the child `current` (its cached view, or the view of the live one) already holds the
/// apply body `desired`: it is controlled by this pool, is not being deleted, and carries the
/// same [`APPLIED_HASH_ANNOTATION`].
pub fn up_to_date<K: crate::cache::child::ChildKind>(
    current: &crate::cache::child::Child<K>,
    desired: &K,
    pool: &StormWorkerPool,
) -> bool {
    crate::controllers::up_to_date(current, desired, pool)
}

/// ConfigMap `<pool>-storm-config`.
pub fn config_map(pool: &StormWorkerPool, storm_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(pool, config_map_name(&pool.name_any())),
        data: Some(BTreeMap::from([
            ("storm.yaml".into(), storm_yaml.to_string()),
            (CLUSTER_XML_NAME.into(), CLUSTER_XML.into()),
            (WORKER_XML_NAME.into(), WORKER_XML.into()),
        ])),
        ..ConfigMap::default()
    }
}

fn worker_image(pool: &StormWorkerPool, cluster: &StormCluster) -> String {
    let pool_image = pool.spec.image.as_ref();
    let cluster_image = cluster.spec.image.as_ref();
    let repository = pool_image
        .and_then(|i| i.repository.clone())
        .or_else(|| cluster_image.and_then(|i| i.repository.clone()))
        .unwrap_or_else(|| DEFAULT_STORM_IMAGE.to_string());
    let tag = pool_image
        .and_then(|i| i.tag.clone())
        .or_else(|| cluster_image.and_then(|i| i.tag.clone()))
        .unwrap_or_else(|| DEFAULT_STORM_TAG.to_string());
    image_reference(&repository, &tag)
}

fn slot_ports(pool: &StormWorkerPool) -> impl Iterator<Item = i32> {
    let ports = pool.spec.ports();
    ports.start..ports.start + ports.count
}

/// Appends `extra` to `base`, an entry of `extra` replacing one of `base` with the same key.
fn merge_by<T>(base: Vec<T>, extra: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(base.len() + extra.len());
    for item in base.into_iter().chain(extra) {
        let k = key(&item);
        if let Some(pos) = out.iter().position(|o| key(o) == k) {
            out[pos] = item;
        } else {
            out.push(item);
        }
    }
    out
}

/// The Storm worker container, merged with the user's container of the same name: the user's
/// settings win; the operator adds its env, slot ports and config mount.
pub fn worker_container(
    pool: &StormWorkerPool,
    cluster: &StormCluster,
    user: Option<&Container>,
) -> Container {
    let mut c = user.cloned().unwrap_or_default();
    c.name = WORKER_CONTAINER.into();
    if c.image.is_none() {
        c.image = Some(worker_image(pool, cluster));
    }
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = pool.spec.image.as_ref().and_then(|i| i.pull_policy.clone());
    }
    if c.command.is_none() && c.args.is_none() {
        c.command = Some(vec![
            "storm".into(),
            "supervisor".into(),
            "-c".into(),
            "storm.local.hostname=$(POD_IP)".into(),
        ]);
    }
    let own_env = vec![
        field_env("POD_IP", "status.podIP"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: "STORM_CONF_DIR".into(),
            value: Some(CONFIG_DIR.into()),
            ..EnvVar::default()
        },
    ];
    c.env = Some(merge_by(own_env, c.env.take().unwrap_or_default(), |e| {
        e.name.clone()
    }));
    let own_ports = slot_ports(pool)
        .map(|p| ContainerPort {
            name: Some(format!("slot-{p}")),
            container_port: p,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect();
    c.ports = Some(merge_by(
        own_ports,
        c.ports.take().unwrap_or_default(),
        |p| p.container_port.to_string(),
    ));
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let own_mounts = vec![
        mount(CONFIG_VOLUME, CONFIG_DIR, true),
        mount(DATA_VOLUME, DATA_DIR, false),
        mount(LOG_VOLUME, LOG_DIR, false),
        mount(TMP_VOLUME, TMP_DIR, false),
    ];
    c.volume_mounts = Some(merge_by(
        own_mounts,
        c.volume_mounts.take().unwrap_or_default(),
        |m| m.mount_path.clone(),
    ));
    if c.security_context.is_none() {
        c.security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        });
    }
    c
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The volume of `storm.local.dir`: an emptyDir, or with `spec.storage` a generic ephemeral
/// volume (one claim per pod, deleted with it).
fn data_volume(pool: &StormWorkerPool) -> Volume {
    let Some(storage) = &pool.spec.storage else {
        return empty_dir(DATA_VOLUME);
    };
    Volume {
        name: DATA_VOLUME.into(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels(pool)),
                    ..ObjectMeta::default()
                }),
                spec: PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".into(),
                            Quantity(storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                },
            }),
        }),
        ..Volume::default()
    }
}

/// The worker pod spec: the user's `template.spec` with the worker container merged in by
/// name; sidecars, volumes, scheduling and security settings pass through untouched.
pub fn pod_spec(pool: &StormWorkerPool, cluster: &StormCluster) -> PodSpec {
    let mut spec = pool
        .spec
        .template
        .as_ref()
        .and_then(|t| t.spec.clone())
        .unwrap_or_default();
    let user_worker = spec
        .containers
        .iter()
        .find(|c| c.name == WORKER_CONTAINER)
        .cloned();
    let worker = worker_container(pool, cluster, user_worker.as_ref());
    let sidecars: Vec<Container> = spec
        .containers
        .drain(..)
        .filter(|c| c.name != WORKER_CONTAINER)
        .collect();
    spec.containers = std::iter::once(worker).chain(sidecars).collect();
    let mounted: Vec<String> = spec.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.clone())
        .collect();
    let own_volumes: Vec<Volume> = [
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&pool.name_any()),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        data_volume(pool),
        empty_dir(LOG_VOLUME),
        empty_dir(TMP_VOLUME),
    ]
    .into_iter()
    .filter(|v| v.name == CONFIG_VOLUME || mounted.contains(&v.name))
    .collect();
    spec.volumes = Some(merge_by(
        own_volumes,
        spec.volumes.take().unwrap_or_default(),
        |v| v.name.clone(),
    ));
    if spec.security_context.is_none() {
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(STORM_UID),
            run_as_group: Some(STORM_UID),
            fs_group: Some(STORM_UID),
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        });
    }
    let pull_secrets: Vec<LocalObjectReference> = pool
        .spec
        .image
        .as_ref()
        .and_then(|i| i.pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|name| LocalObjectReference { name })
        .collect();
    if !pull_secrets.is_empty() {
        spec.image_pull_secrets = Some(merge_by(
            spec.image_pull_secrets.take().unwrap_or_default(),
            pull_secrets,
            |s| s.name.clone(),
        ));
    }
    spec
}

/// Deployment `<pool>-deployment`. `replicas` is left out while the HPA owns it.
pub fn deployment(pool: &StormWorkerPool, cluster: &StormCluster, config_hash: &str) -> Deployment {
    let template_meta = pool
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref());
    let mut pod_labels = template_meta
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.extend(labels(pool));
    let mut pod_annotations = template_meta
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    let replicas = match pool.spec.enabled_autoscaling() {
        Some(_) => None,
        None => Some(pool.spec.replicas.unwrap_or(1)),
    };
    Deployment {
        metadata: metadata(pool, deployment_name(&pool.name_any())),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(pool)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(pool, cluster)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The replica count a Deployment is created with while autoscaling is enabled:
/// `spec.replicas` (default 1) clamped to `autoscaling.minReplicas ..= autoscaling.maxReplicas`.
/// `None` when autoscaling is disabled (the operator's apply then sets `spec.replicas` itself).
pub fn initial_replicas(pool: &StormWorkerPool) -> Option<i32> {
    let auto = pool.spec.enabled_autoscaling()?;
    let min = auto.min_replicas.unwrap_or(1);
    let max = auto.max_replicas.unwrap_or(min).max(min);
    Some(pool.spec.replicas.unwrap_or(1).clamp(min, max))
}

/// `desired` with `spec.replicas` set: the object that creates an autoscaled pool's Deployment
/// at its initial count (applied by the hand-off field manager, never by the operator's own).
/// The hash annotation is left out: it records the operator's own apply, which follows.
pub fn with_replicas(desired: &Deployment, replicas: i32) -> Deployment {
    let mut d = desired.clone();
    if let Some(annotations) = d.metadata.annotations.as_mut() {
        annotations.remove(APPLIED_HASH_ANNOTATION);
        if annotations.is_empty() {
            d.metadata.annotations = None;
        }
    }
    if let Some(spec) = d.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    d
}

/// The apply body of the hand-off field manager: the Deployment's `spec.replicas` and nothing
/// else, so that the manager owns only that field.
pub fn replicas_patch(deployment: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": deployment },
        "spec": { "replicas": replicas },
    })
}

/// Headless Service `<pool>-headless` exposing the slot ports.
pub fn service(pool: &StormWorkerPool) -> Service {
    Service {
        metadata: metadata(pool, service_name(&pool.name_any())),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(pool)),
            ports: Some(
                slot_ports(pool)
                    .map(|p| ServicePort {
                        name: Some(format!("slot-{p}")),
                        port: p,
                        target_port: Some(IntOrString::Int(p)),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn target(average: Option<&String>, value: Option<&String>) -> MetricTarget {
    match (average, value) {
        (Some(avg), _) => MetricTarget {
            type_: "AverageValue".into(),
            average_value: Some(Quantity(avg.clone())),
            ..MetricTarget::default()
        },
        (None, v) => MetricTarget {
            type_: "Value".into(),
            value: v.map(|v| Quantity(v.clone())),
            ..MetricTarget::default()
        },
    }
}

fn resource_metric(name: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// HPA `<pool>-hpa` (autoscaling/v2), when autoscaling is enabled, at the spec's bounds.
pub fn hpa(pool: &StormWorkerPool) -> Option<HorizontalPodAutoscaler> {
    hpa_with_floor(pool, None)
}

/// HPA `<pool>-hpa` with `minReplicas` raised to `floor` (the count derived from Storm's load,
/// at most `maxReplicas`). The custom metrics the operator evaluates itself
/// ([`super::autoscale::recognised`]) are left out: nothing would serve them to the HPA.
pub fn hpa_with_floor(
    pool: &StormWorkerPool,
    floor: Option<i32>,
) -> Option<HorizontalPodAutoscaler> {
    let auto = pool.spec.enabled_autoscaling()?;
    let max_replicas = auto.max_replicas.unwrap_or(1);
    let min_replicas = auto
        .min_replicas
        .unwrap_or(1)
        .max(floor.unwrap_or(0))
        .min(max_replicas.max(1));
    let mut metrics = Vec::new();
    if let Some(cpu) = auto.target_cpu_utilization_percentage {
        metrics.push(resource_metric("cpu", cpu));
    }
    if let Some(mem) = auto.target_memory_utilization_percentage {
        metrics.push(resource_metric("memory", mem));
    }
    for m in auto
        .custom_metrics
        .iter()
        .filter(|m| !super::autoscale::recognised(&m.name))
    {
        let metric = MetricIdentifier {
            name: m.name.clone(),
            selector: m.selector.clone(),
        };
        let t = target(m.target_average_value.as_ref(), m.target_value.as_ref());
        metrics.push(match m.type_ {
            MetricSourceType::Pods => MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource { metric, target: t }),
                ..MetricSpec::default()
            },
            MetricSourceType::Object => MetricSpec {
                type_: "Object".into(),
                object: Some(ObjectMetricSource {
                    described_object: m.described_object.clone().unwrap_or_default(),
                    metric,
                    target: t,
                }),
                ..MetricSpec::default()
            },
            MetricSourceType::External => MetricSpec {
                type_: "External".into(),
                external: Some(ExternalMetricSource { metric, target: t }),
                ..MetricSpec::default()
            },
        });
    }
    Some(HorizontalPodAutoscaler {
        metadata: metadata(pool, hpa_name(&pool.name_any())),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: deployment_name(&pool.name_any()),
            },
            min_replicas: Some(min_replicas),
            max_replicas,
            metrics: (!metrics.is_empty()).then_some(metrics),
            behavior: auto.behavior.clone(),
        }),
        status: None,
    })
}

/// PodDisruptionBudget `<pool>-pdb`, when configured.
pub fn pdb(pool: &StormWorkerPool) -> Option<PodDisruptionBudget> {
    let p = pool.spec.pod_disruption_budget.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: metadata(pool, pdb_name(&pool.name_any())),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: p.min_available.clone(),
            max_unavailable: p.max_unavailable.clone(),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(pool)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// Everything a pool wants to exist, built together so callers cannot mix inputs.
#[derive(Clone, Debug)]
pub struct Children {
    /// The storm.yaml ConfigMap.
    pub config_map: ConfigMap,
    /// The worker Deployment.
    pub deployment: Deployment,
    /// The headless Service.
    pub service: Service,
    /// The HPA, when autoscaling is enabled.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// The PodDisruptionBudget, when configured.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Validates the pool and builds all of its children, each carrying its
/// [`APPLIED_HASH_ANNOTATION`].
pub fn children(pool: &StormWorkerPool, cluster: &StormCluster) -> Result<Children> {
    children_with_floor(pool, cluster, None)
}

/// [`children`], with the HPA's `minReplicas` raised to the Storm-derived `floor`.
pub fn children_with_floor(
    pool: &StormWorkerPool,
    cluster: &StormCluster,
    floor: Option<i32>,
) -> Result<Children> {
    validate(pool)?;
    let yaml = storm_yaml(pool, cluster)?;
    let hash = config_hash(&yaml);
    Ok(Children {
        config_map: with_applied_hash(config_map(pool, &yaml)),
        deployment: with_applied_hash(deployment(pool, cluster, &hash)),
        service: with_applied_hash(service(pool)),
        hpa: hpa_with_floor(pool, floor).map(with_applied_hash),
        pdb: pdb(pool).map(with_applied_hash),
    })
}

/// The object kind of `K`, for messages and Events.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::child::Child;
    use workerpool_api::StormClusterSpec;
    use workerpool_api::storm::ImageSpec;

    fn example(yaml: &str) -> StormWorkerPool {
        let mut pool: StormWorkerPool = serde_yaml::from_str(yaml).expect("example parses");
        pool.metadata.namespace = Some("ns".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    fn basic() -> StormWorkerPool {
        example(include_str!(
            "../../../../../examples/storm-basic-worker-pool.yaml"
        ))
    }
    fn autoscale() -> StormWorkerPool {
        example(include_str!(
            "../../../../../examples/storm-autoscale-worker-pool.yaml"
        ))
    }
    fn gpu() -> StormWorkerPool {
        example(include_str!(
            "../../../../../examples/storm-gpu-worker-pool.yaml"
        ))
    }
    fn full() -> StormWorkerPool {
        example(include_str!(
            "../../../../../examples/storm-full-worker-pool.yaml"
        ))
    }

    fn cluster() -> StormCluster {
        StormCluster::new(
            "storm",
            StormClusterSpec {
                image: Some(ImageSpec {
                    repository: Some("apache/storm".into()),
                    tag: Some("2.6.0".into()),
                    ..ImageSpec::default()
                }),
                zookeeper_servers: vec!["zk-0".into(), "zk-1".into()],
                nimbus_seeds: vec!["nimbus-0".into()],
                storm_config: Some(BTreeMap::from([
                    ("storm.zookeeper.port".into(), serde_json::json!(2181)),
                    (
                        "topology.message.timeout.secs".into(),
                        serde_json::json!(30),
                    ),
                ])),
                mode: workerpool_api::ClusterMode::External,
                ui_url: Some("http://storm-ui:8080".into()),
                ..StormClusterSpec::default()
            },
        )
    }

    fn worker(d: &Deployment) -> Container {
        pod(d).containers[0].clone()
    }
    fn pod(d: &Deployment) -> PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    #[test]
    fn names_follow_the_design() {
        let c = children(&basic(), &cluster()).expect("valid");
        assert_eq!(
            c.deployment.metadata.name.as_deref(),
            Some("my-workers-deployment")
        );
        assert_eq!(
            c.service.metadata.name.as_deref(),
            Some("my-workers-headless")
        );
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("my-workers-storm-config")
        );
        let a = children(&autoscale(), &cluster()).expect("valid");
        let hpa = a.hpa.expect("hpa");
        assert_eq!(hpa.metadata.name.as_deref(), Some("autoscale-workers-hpa"));
        let full = children(&full(), &cluster()).expect("valid");
        assert_eq!(
            full.pdb.expect("pdb").metadata.name.as_deref(),
            Some("full-workers-pdb")
        );
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let c = children(&full(), &cluster()).expect("valid");
        let metas = [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &c.hpa.as_ref().expect("hpa").metadata,
            &c.pdb.as_ref().expect("pdb").metadata,
        ];
        for meta in metas {
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert_eq!(owners.len(), 1, "{:?}", meta.name);
            assert_eq!(owners[0].kind, "StormWorkerPool");
            assert_eq!(owners[0].uid, "uid-1");
            assert_eq!(owners[0].controller, Some(true));
            let labels = meta.labels.clone().unwrap_or_default();
            assert_eq!(
                labels["app.kubernetes.io/managed-by"],
                "workerpool-operator"
            );
            assert_eq!(labels["app.kubernetes.io/instance"], "full-workers");
            assert_eq!(labels[TOPOLOGY_LABEL], "my-topology");
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
        }
    }

    #[test]
    fn basic_pool_runs_a_supervisor_with_the_users_resources() {
        let c = children(&basic(), &cluster()).expect("valid");
        assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
        let w = worker(&c.deployment);
        assert_eq!(w.name, "worker");
        assert_eq!(
            w.image.as_deref(),
            Some("apache/storm:2.6.0"),
            "cluster image"
        );
        let requests = w.resources.and_then(|r| r.requests).expect("requests");
        assert_eq!(requests["memory"], Quantity("1Gi".into()));
        assert_eq!(requests["cpu"], Quantity("1".into()));
        assert_eq!(
            w.command.expect("command"),
            vec![
                "storm",
                "supervisor",
                "-c",
                "storm.local.hostname=$(POD_IP)"
            ]
        );
        let env = w.env.expect("env");
        let pod_ip = env.iter().find(|e| e.name == "POD_IP").expect("POD_IP");
        assert_eq!(
            pod_ip
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("status.podIP")
        );
        let ports: Vec<i32> = w
            .ports
            .expect("ports")
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, vec![6700, 6701, 6702, 6703]);
        assert!(c.hpa.is_none());
        assert!(c.pdb.is_none());
    }

    #[test]
    fn a_digest_pinned_cluster_image_gives_a_digest_reference() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let mut c = cluster();
        c.spec.image = Some(ImageSpec {
            repository: Some("registry.local:5000/storm".into()),
            tag: Some(digest.clone()),
            ..ImageSpec::default()
        });
        let d = children(&basic(), &c).expect("valid").deployment;
        assert_eq!(
            worker(&d).image,
            Some(format!("registry.local:5000/storm@{digest}"))
        );
    }

    #[test]
    fn supervisors_run_as_storm_with_a_read_only_root_and_state_on_volumes() {
        let c = children(&basic(), &cluster()).expect("valid");
        let p = pod(&c.deployment);
        let sc = p.security_context.clone().expect("pod securityContext");
        assert_eq!(
            (
                sc.run_as_user,
                sc.run_as_group,
                sc.fs_group,
                sc.run_as_non_root
            ),
            (Some(1000), Some(1000), Some(1000), Some(true))
        );
        let w = worker(&c.deployment);
        let csc = w
            .security_context
            .clone()
            .expect("container securityContext");
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        let mounts: Vec<(&str, &str, Option<bool>)> = w
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                (CONFIG_VOLUME, CONFIG_DIR, Some(true)),
                (DATA_VOLUME, DATA_DIR, None),
                (LOG_VOLUME, LOG_DIR, None),
                (TMP_VOLUME, TMP_DIR, None),
            ]
        );
        let volumes = p.volumes.clone().expect("volumes");
        let data = volumes
            .iter()
            .find(|v| v.name == DATA_VOLUME)
            .expect("data");
        assert!(data.empty_dir.is_some(), "an emptyDir without spec.storage");
        // The ConfigMap holds the log4j2 files storm.log4j2.conf.dir points at.
        let files = c.config_map.data.clone().expect("data");
        assert!(files["cluster.xml"].contains("<Console name=\"CONSOLE\""));
        assert!(files["worker.xml"].contains("<Console name=\"CONSOLE\""));
        // A pool's own securityContexts win.
        let mut own = basic();
        let spec = own
            .spec
            .template
            .as_mut()
            .and_then(|t| t.spec.as_mut())
            .expect("spec");
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(1000650000),
            ..PodSecurityContext::default()
        });
        spec.containers[0].security_context = Some(SecurityContext {
            read_only_root_filesystem: Some(false),
            ..SecurityContext::default()
        });
        let d = children(&own, &cluster()).expect("valid").deployment;
        assert_eq!(
            pod(&d).security_context.and_then(|s| s.run_as_user),
            Some(1000650000)
        );
        assert_eq!(
            worker(&d)
                .security_context
                .and_then(|s| s.read_only_root_filesystem),
            Some(false)
        );
        // spec.storage: a generic ephemeral volume per pod.
        let mut stored = basic();
        stored.spec.storage = Some(workerpool_api::PoolStorageSpec {
            size: "10Gi".into(),
            storage_class_name: Some("fast".into()),
        });
        let d = children(&stored, &cluster()).expect("valid").deployment;
        let data = pod(&d)
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == DATA_VOLUME)
            .expect("data");
        let claim = data
            .ephemeral
            .and_then(|e| e.volume_claim_template)
            .expect("claim template")
            .spec;
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.and_then(|r| r.requests).expect("requests")["storage"],
            Quantity("10Gi".into())
        );
        stored.spec.storage = Some(workerpool_api::PoolStorageSpec {
            size: "lots".into(),
            storage_class_name: None,
        });
        assert!(matches!(
            children(&stored, &cluster()),
            Err(Error::InvalidSpec(m)) if m.contains("storage.size")
        ));
    }

    #[test]
    fn memory_sizing_reaches_storm_yaml() {
        let conf = |pool: &StormWorkerPool, cluster: &StormCluster| {
            serde_yaml::from_str::<BTreeMap<String, serde_json::Value>>(
                &storm_yaml(pool, cluster).expect("yaml"),
            )
            .expect("parse")
        };
        let sized = conf(&basic(), &cluster());
        assert_eq!(
            sized["supervisor.memory.capacity.mb"],
            serde_json::json!(512)
        );
        assert_eq!(sized["worker.heap.memory.mb"], serde_json::json!(85));
        assert!(
            !sized.contains_key("worker.childopts"),
            "without jvmOpts Storm's default childopts apply"
        );
        let unsized_ = conf(&gpu(), &cluster());
        assert!(
            !unsized_.contains_key("worker.heap.memory.mb"),
            "no memory, no sizing"
        );
        assert!(!unsized_.contains_key("supervisor.memory.capacity.mb"));
        let mut managed = cluster();
        managed.spec.mode = workerpool_api::ClusterMode::Managed;
        managed.spec.nimbus_seeds.clear();
        managed.metadata.namespace = Some("ns".into());
        assert_eq!(
            conf(&basic(), &managed)["storm.zookeeper.root"],
            serde_json::json!("/storm/ns/storm"),
            "the Managed cluster's root"
        );
    }

    #[test]
    fn storm_yaml_has_cluster_ports_and_worker_config() {
        let yaml = storm_yaml(&full(), &cluster()).expect("yaml");
        let conf: BTreeMap<String, serde_json::Value> = serde_yaml::from_str(&yaml).expect("parse");
        assert_eq!(
            conf["storm.zookeeper.servers"],
            serde_json::json!(["zk-0", "zk-1"])
        );
        assert_eq!(conf["nimbus.seeds"], serde_json::json!(["nimbus-0"]));
        assert_eq!(
            conf["supervisor.slots.ports"],
            serde_json::json!([6700, 6701])
        );
        assert_eq!(
            conf["worker.childopts"],
            serde_json::json!(format!("{DEFAULT_WORKER_CHILDOPTS} -Xmx2g -XX:+UseG1GC")),
            "jvmOpts follow Storm's defaults: %HEAP-MEM% and the heap dump stay"
        );
        let childopts = conf["worker.childopts"].as_str().expect("string");
        assert!(childopts.starts_with("-Xmx%HEAP-MEM%m "), "{childopts}");
        assert!(childopts.contains("-XX:+HeapDumpOnOutOfMemoryError"));
        assert_eq!(
            conf["worker.heap.memory.mb"],
            serde_json::json!(2048),
            "workerConfig wins over the sizing"
        );
        assert_eq!(
            conf["supervisor.memory.capacity.mb"],
            serde_json::json!(3072 - 512),
            "from the 3Gi limit"
        );
        assert_eq!(conf["storm.local.dir"], serde_json::json!(DATA_DIR));
        assert_eq!(conf["storm.log.dir"], serde_json::json!(LOG_DIR));
        assert_eq!(conf["storm.log4j2.conf.dir"], serde_json::json!(CONFIG_DIR));
        assert!(
            !conf.contains_key("storm.zookeeper.root"),
            "an External cluster without a root keeps Storm's"
        );
        assert_eq!(
            conf["storm.zookeeper.port"],
            serde_json::json!(2181),
            "cluster config kept"
        );
        assert_eq!(
            conf["topology.message.timeout.secs"],
            serde_json::json!(60),
            "pool workerConfig overrides the cluster's"
        );
    }

    #[test]
    fn config_change_changes_the_pod_template_hash() {
        let pool = full();
        let before = children(&pool, &cluster()).expect("valid").deployment;
        let mut changed = pool.clone();
        changed
            .spec
            .worker_config
            .get_or_insert_default()
            .insert("worker.heap.memory.mb".into(), serde_json::json!(4096));
        let after = children(&changed, &cluster()).expect("valid").deployment;
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .expect("annotations")[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&before), hash(&after));
        assert_eq!(
            hash(&before),
            hash(&children(&pool, &cluster()).expect("valid").deployment)
        );
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_hpa() {
        let c = children(&autoscale(), &cluster()).expect("valid");
        assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), None);
        let json = serde_json::to_value(&c.deployment).expect("json");
        assert!(
            json["spec"].get("replicas").is_none(),
            "replicas must be absent from the apply"
        );
        let spec = c.hpa.and_then(|h| h.spec).expect("hpa spec");
        assert_eq!(spec.min_replicas, Some(2));
        assert_eq!(spec.max_replicas, 20);
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "autoscale-workers-deployment");
        let metrics = spec.metrics.expect("metrics");
        assert_eq!(
            metrics.len(),
            2,
            "storm_pending_messages is the operator's, not the HPA's: {metrics:?}"
        );
        let cpu = metrics[0].resource.as_ref().expect("cpu");
        assert_eq!(
            (cpu.name.as_str(), cpu.target.average_utilization),
            ("cpu", Some(70))
        );
        let mem = metrics[1].resource.as_ref().expect("memory");
        assert_eq!(
            (mem.name.as_str(), mem.target.average_utilization),
            ("memory", Some(80))
        );
    }

    #[test]
    fn the_storm_floor_raises_min_replicas_and_unknown_metrics_pass_through() {
        let mut pool = autoscale();
        let auto = pool.spec.autoscaling.as_mut().expect("autoscaling");
        auto.custom_metrics
            .push(workerpool_api::storm::CustomMetric {
                name: "storm_custom_from_an_adapter".into(),
                target_average_value: Some("5".into()),
                ..Default::default()
            });
        let min_and_names = |floor| {
            let spec = hpa_with_floor(&pool, floor)
                .and_then(|h| h.spec)
                .expect("spec");
            let names: Vec<String> = spec
                .metrics
                .unwrap_or_default()
                .iter()
                .map(|m| match &m.pods {
                    Some(p) => p.metric.name.clone(),
                    None => m
                        .resource
                        .as_ref()
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                })
                .collect();
            (spec.min_replicas, names)
        };
        let names = vec![
            "cpu".to_string(),
            "memory".into(),
            "storm_custom_from_an_adapter".into(),
        ];
        assert_eq!(min_and_names(None), (Some(2), names.clone()));
        assert_eq!(
            min_and_names(Some(1)),
            (Some(2), names.clone()),
            "never below minReplicas"
        );
        assert_eq!(min_and_names(Some(5)), (Some(5), names.clone()));
        assert_eq!(
            min_and_names(Some(50)),
            (Some(20), names),
            "never above maxReplicas"
        );
    }

    #[test]
    fn gpu_resources_and_node_selector_pass_through() {
        let c = children(&gpu(), &cluster()).expect("valid");
        let p = pod(&c.deployment);
        assert_eq!(
            p.node_selector.expect("node selector")["accelerator"],
            "nvidia-tesla-v100"
        );
        let r = p.containers[0].resources.clone().expect("resources");
        assert_eq!(
            r.limits.expect("limits")["nvidia.com/gpu"],
            Quantity("1".into())
        );
        assert_eq!(
            r.requests.expect("requests")["nvidia.com/gpu"],
            Quantity("1".into())
        );
        assert_eq!(c.deployment.spec.as_ref().and_then(|s| s.replicas), Some(4));
    }

    #[test]
    fn full_template_passes_through_untouched() {
        let pool = full();
        let c = children(&pool, &cluster()).expect("valid");
        let p = pod(&c.deployment);
        assert_eq!(p.containers.len(), 2);
        assert_eq!(p.containers[0].name, "worker");
        assert_eq!(
            p.containers[0].image.as_deref(),
            Some("storm:2.6.4"),
            "pool image wins"
        );
        assert_eq!(
            p.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let user_sidecar = pool
            .spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .expect("spec")
            .containers[1]
            .clone();
        assert_eq!(p.containers[1], user_sidecar, "sidecar untouched");
        let mounts: Vec<&str> = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, vec![CONFIG_DIR, DATA_DIR, LOG_DIR, TMP_DIR]);
        let data = p.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == DATA_DIR)
            .expect("/data");
        assert_eq!(data.name, "data", "the user's mount of /data wins");
        let volumes: Vec<&str> = p
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            vec![CONFIG_VOLUME, LOG_VOLUME, TMP_VOLUME, "data"],
            "no storm-data volume nobody mounts"
        );
        assert_eq!(p.service_account_name.as_deref(), Some("storm-worker"));
        let sc = p.security_context.clone().expect("the user's");
        assert_eq!(
            (sc.run_as_user, sc.run_as_non_root, sc.fs_group),
            (Some(1000), Some(true), None),
            "the user's pod securityContext is kept as it is"
        );
        assert_eq!(
            p.tolerations.expect("tolerations")[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(p.affinity.and_then(|a| a.pod_anti_affinity).is_some());
        assert_eq!(
            p.image_pull_secrets.expect("pull secrets")[0].name,
            "registry-credentials"
        );
        let meta = c
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .expect("meta");
        assert_eq!(meta.labels.expect("labels")["team"], "streaming");
        let annotations = meta.annotations.expect("annotations");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let hpa = c.hpa.and_then(|h| h.spec).expect("hpa");
        let external = hpa.metrics.expect("metrics")[1]
            .external
            .clone()
            .expect("external");
        assert_eq!(external.target.type_, "Value");
        assert_eq!(external.target.value, Some(Quantity("5k".into())));
        let behavior = hpa.behavior.expect("behavior");
        assert_eq!(
            behavior
                .scale_down
                .and_then(|s| s.stabilization_window_seconds),
            Some(300)
        );
        let pdb = c.pdb.and_then(|p| p.spec).expect("pdb");
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.selector.and_then(|s| s.match_labels),
            Some(selector_labels(&pool))
        );
        let svc = c.service.spec.expect("service");
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc.ports.expect("ports").len(), 2);
    }

    #[test]
    fn invalid_input_gets_a_specific_error() {
        let mut bad_quantity = autoscale();
        bad_quantity
            .spec
            .autoscaling
            .as_mut()
            .expect("autoscaling")
            .custom_metrics[0]
            .target_average_value = Some("lots".into());
        let mut duplicate = full();
        let spec = duplicate
            .spec
            .template
            .as_mut()
            .and_then(|t| t.spec.as_mut())
            .expect("spec");
        spec.containers[1].name = "worker".into();
        let mut port_clash = full();
        let spec = port_clash
            .spec
            .template
            .as_mut()
            .and_then(|t| t.spec.as_mut())
            .expect("spec");
        spec.containers[1].ports = Some(vec![ContainerPort {
            container_port: 6701,
            ..ContainerPort::default()
        }]);
        let mut inverted = autoscale();
        inverted
            .spec
            .autoscaling
            .as_mut()
            .expect("autoscaling")
            .min_replicas = Some(30);
        let mut reserved = full();
        reserved
            .spec
            .worker_config
            .get_or_insert_default()
            .insert("storm.local.dir".into(), serde_json::json!("/tmp/x"));
        let cases = [
            (
                reserved,
                "workerConfig must not set storm.local.dir: the operator mounts a volume at /data",
            ),
            (
                bad_quantity,
                "customMetrics[0].targetAverageValue: \"lots\" is not a quantity",
            ),
            (
                duplicate,
                "container name \"worker\" is used more than once",
            ),
            (
                port_clash,
                "port 6701 collides with the worker slot ports 6700-6701",
            ),
            (
                inverted,
                "minReplicas (30) must be <= autoscaling.maxReplicas (20)",
            ),
        ];
        for (pool, want) in cases {
            match children(&pool, &cluster()) {
                Err(Error::InvalidSpec(msg)) => {
                    assert!(msg.contains(want), "{msg:?} should contain {want:?}")
                }
                other => panic!("expected InvalidSpec containing {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn pool_names_are_limited_by_the_headless_service() {
        let longest = "a".repeat(MAX_POOL_NAME_LENGTH);
        assert_eq!(service_name(&longest).len(), 63, "a DNS label at most");
        let cases = [
            (longest.clone(), None),
            (
                "p".repeat(55),
                Some("has 55 characters; at most 54 are allowed"),
            ),
            (
                "1-workers".to_string(),
                Some("must start with a lowercase letter"),
            ),
            ("my-workers".to_string(), None),
        ];
        for (name, want) in cases {
            let mut pool = basic();
            pool.metadata.name = Some(name.clone());
            match (validate(&pool), want) {
                (Ok(()), None) => {}
                (Err(Error::InvalidSpec(msg)), Some(want)) => {
                    assert!(
                        msg.contains(want),
                        "{name}: {msg:?} should contain {want:?}"
                    );
                    assert!(msg.contains(&service_name(&name)), "{msg}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let mut too_long = basic();
        too_long.metadata.name = Some("w".repeat(55));
        assert!(matches!(
            children(&too_long, &cluster()),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn autoscaled_deployments_start_at_the_clamped_replica_count() {
        // (spec.replicas, minReplicas, maxReplicas) -> initial count
        let cases = [
            (Some(2), Some(2), 10, 2),
            (None, Some(2), 10, 2),
            (Some(1), Some(2), 10, 2),
            (Some(15), Some(2), 10, 10),
            (Some(0), None, 5, 1),
            (Some(5), None, 10, 5),
        ];
        for (replicas, min, max, want) in cases {
            let mut pool = autoscale();
            pool.spec.replicas = replicas;
            let auto = pool.spec.autoscaling.as_mut().expect("autoscaling");
            auto.min_replicas = min;
            auto.max_replicas = Some(max);
            assert_eq!(
                initial_replicas(&pool),
                Some(want),
                "replicas {replicas:?}, min {min:?}, max {max}"
            );
        }
        assert_eq!(initial_replicas(&basic()), None, "no autoscaling");
        let c = children(&autoscale(), &cluster()).expect("valid");
        let create = with_replicas(&c.deployment, 2);
        assert_eq!(create.spec.as_ref().and_then(|s| s.replicas), Some(2));
        assert_eq!(
            create.spec.as_ref().map(|s| &s.template),
            c.deployment.spec.as_ref().map(|s| &s.template)
        );
        assert_eq!(
            replicas_patch("autoscale-workers-deployment", 2),
            serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "autoscale-workers-deployment"}, "spec": {"replicas": 2}})
        );
    }

    #[test]
    fn every_child_carries_the_hash_of_its_apply_body() {
        let pool = autoscale();
        let c = children(&pool, &cluster()).expect("children");
        let hash = |m: &ObjectMeta| {
            m.annotations.as_ref().expect("annotations")[APPLIED_HASH_ANNOTATION].clone()
        };
        let cm = hash(&c.config_map.metadata);
        assert_eq!(
            cm,
            applied_hash(&c.config_map),
            "the annotation is left out"
        );
        assert_eq!(
            cm,
            applied_hash(&config_map(
                &pool,
                &storm_yaml(&pool, &cluster()).expect("yaml")
            ))
        );
        assert_eq!(hash(&c.deployment.metadata), applied_hash(&c.deployment));
        assert_eq!(hash(&c.service.metadata), applied_hash(&c.service));
        let hpa = c.hpa.as_ref().expect("hpa");
        assert_eq!(hash(&hpa.metadata), applied_hash(hpa));
        // Another body, another hash; the same body, the same hash.
        let mut other = pool.clone();
        other.spec.worker_config = Some(BTreeMap::from([("a".into(), serde_json::json!(1))]));
        let o = children(&other, &cluster()).expect("children");
        assert_ne!(hash(&o.config_map.metadata), cm);
        assert_ne!(hash(&o.deployment.metadata), hash(&c.deployment.metadata));
        assert_eq!(hash(&o.service.metadata), hash(&c.service.metadata));
        // The hand-off manager's create does not claim the operator's apply.
        let create = with_replicas(&c.deployment, 2);
        assert_eq!(applied_hash_of(&create), None);
        // Up to date: controlled by the pool, same hash.
        assert!(up_to_date(&Child::of(&c.config_map), &c.config_map, &pool));
        assert!(!up_to_date(&Child::of(&o.config_map), &c.config_map, &pool));
        let mut foreign = c.config_map.clone();
        foreign.metadata.owner_references = None;
        assert!(!up_to_date(&Child::of(&foreign), &c.config_map, &pool));
    }

    #[test]
    fn only_children_controlled_by_this_pool_count_as_owned() {
        let pool = autoscale();
        let owned = hpa(&pool).expect("hpa");
        assert!(controlled_by(&owned, &pool));
        let mut other = owned.clone();
        if let Some(refs) = other.metadata.owner_references.as_mut() {
            refs[0].uid = "someone-else".into();
        }
        assert!(!controlled_by(&other, &pool), "another pool's uid");
        let mut not_controller = owned.clone();
        if let Some(refs) = not_controller.metadata.owner_references.as_mut() {
            refs[0].controller = None;
        }
        assert!(!controlled_by(&not_controller, &pool), "not the controller");
        let mut unowned = owned;
        unowned.metadata.owner_references = None;
        assert!(!controlled_by(&unowned, &pool), "no ownerReferences");
    }
}
