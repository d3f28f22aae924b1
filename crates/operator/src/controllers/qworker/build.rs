//! Pure parts of the QWorker controller: the pod-spec hash, the worker pod, and the plan that
//! says which pods to create, drain and delete.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ObjectFieldSelector, Pod,
    PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use workerpool_api::QWorker;

use crate::MANAGED_BY;
use crate::controllers::field_env;

pub use workerpool_queue::protocol::{
    CURRENT_HASH_ANNOTATION, DRAIN_ANNOTATION, POD_SPEC_HASH_LABEL, PODINFO_DIR, QUEUE_ANNOTATION,
    QWORKER_LABEL, RECOVERY_FINALIZER, SCALER_CONFIG_ANNOTATION, WORKER_CONTAINER_ANNOTATION,
};
use workerpool_queue::protocol::{
    ENV_ANNOTATIONS_FILE, ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_POD_SPEC_HASH, ENV_QUEUE,
    ENV_QWORKER_NAME,
};
/// Name of the downward-API volume that exposes the pod's annotations to the worker.
pub const PODINFO_VOLUME: &str = "qworker-podinfo";
/// Annotation that lets the cluster autoscaler remove a node running a worker pod: a drained
/// or evicted worker loses nothing (its task goes back to the queue). Set to `"true"` unless
/// `spec.template.annotations` sets it.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";

/// Checks what the CRD schema may not have checked (an API server without CEL, or an object
/// stored before a rule existed). The error says what to change.
pub fn validate(qw: &QWorker) -> Result<(), String> {
    let sc = &qw.spec.scale_config;
    let name = qw.name_any();
    if name.len() > 63 {
        return Err(format!(
            "metadata.name is {} characters long; at most 63 are allowed because it is the value of the workers' {QWORKER_LABEL} label",
            name.len()
        ));
    }
    if sc.min_replicas > sc.max_replicas {
        return Err(format!(
            "scaleConfig.minReplicas ({}) must be <= scaleConfig.maxReplicas ({})",
            sc.min_replicas, sc.max_replicas
        ));
    }
    let pod_spec = qw.spec.pod_spec.get();
    if pod_spec.containers.is_empty() {
        return Err(
            "podSpec.containers must name at least one container (the first one is the worker)"
                .into(),
        );
    }
    if pod_spec.restart_policy.as_deref() == Some("Always") {
        return Err("podSpec.restartPolicy must be OnFailure (the default) or Never, not Always: a worker that exits after draining must not be restarted".into());
    }
    Ok(())
}

/// The pod template the workers run: the user's podSpec with activateVPA requests applied.
/// Everything in it is covered by [`pod_spec_hash`].
pub fn template_spec(
    qw: &QWorker,
    vpa_requests: &BTreeMap<String, BTreeMap<String, String>>,
) -> PodSpec {
    let mut spec = qw.spec.pod_spec.get();
    for c in &mut spec.containers {
        if let Some(requests) = vpa_requests.get(&c.name) {
            let resources = c.resources.get_or_insert_default();
            let reqs = resources.requests.get_or_insert_default();
            for (resource, value) in requests {
                reqs.insert(
                    resource.clone(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity(value.clone()),
                );
            }
        }
    }
    spec
}

/// A deterministic short hash of everything that defines a worker pod: the pod spec, the
/// template's labels and annotations, and where it takes tasks from (the queue and the
/// ScalerConfig, given to the worker as `QWORKER_QUEUE` and its broker): editing any of them
/// rolls the pods, so no old worker keeps consuming the old queue.
pub fn pod_spec_hash(qw: &QWorker, spec: &PodSpec) -> String {
    let template = qw.spec.template.clone().unwrap_or_default();
    let material = serde_json::json!({
        "spec": spec,
        "labels": template.labels,
        "annotations": template.annotations,
        "queue": qw.spec.scale_config.queue,
        "scalerConfigRef": qw.spec.scale_config.scaler_config_ref,
    });
    let digest = Sha256::digest(material.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Labels selecting a QWorker's pods.
pub fn selector_labels(qw: &QWorker) -> BTreeMap<String, String> {
    BTreeMap::from([(QWORKER_LABEL.to_string(), qw.name_any())])
}

/// The label selector string of a QWorker's pods (status `selector`, for the scale subresource).
pub fn selector(qw: &QWorker) -> String {
    format!("{QWORKER_LABEL}={}", qw.name_any())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn with_protocol(mut c: Container, qw: &QWorker, hash: &str) -> Container {
    let identity = [
        env(ENV_QWORKER_NAME, &qw.name_any()),
        env(ENV_POD_SPEC_HASH, hash),
        field_env(ENV_POD_NAME, "metadata.name"),
        field_env(ENV_POD_NAMESPACE, "metadata.namespace"),
        env(ENV_ANNOTATIONS_FILE, &format!("{PODINFO_DIR}/annotations")),
    ];
    let mut envs: Vec<EnvVar> = c
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !identity.iter().any(|i| i.name == e.name))
        .collect();
    if !envs.iter().any(|e| e.name == ENV_QUEUE) {
        envs.push(env(ENV_QUEUE, &qw.spec.scale_config.queue));
    }
    c.env = Some(identity.into_iter().chain(envs).collect());
    let mounts = c.volume_mounts.get_or_insert_default();
    if !mounts.iter().any(|m| m.name == PODINFO_VOLUME) {
        mounts.push(VolumeMount {
            name: PODINFO_VOLUME.into(),
            mount_path: PODINFO_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    c
}

/// The worker pod `name` of `qw` running template `spec` with hash `hash`.
pub fn pod(qw: &QWorker, spec: &PodSpec, hash: &str, name: &str) -> Pod {
    let template = qw.spec.template.clone().unwrap_or_default();
    let mut labels = template.labels.unwrap_or_default();
    labels.extend([
        ("app.kubernetes.io/name".to_string(), "qworker".to_string()),
        ("app.kubernetes.io/instance".to_string(), qw.name_any()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "worker".to_string(),
        ),
        (QWORKER_LABEL.to_string(), qw.name_any()),
        (POD_SPEC_HASH_LABEL.to_string(), hash.to_string()),
    ]);
    let mut annotations = template.annotations.unwrap_or_default();
    annotations
        .entry(SAFE_TO_EVICT_ANNOTATION.into())
        .or_insert_with(|| "true".into());
    annotations.insert(CURRENT_HASH_ANNOTATION.into(), hash.into());
    annotations.insert(QUEUE_ANNOTATION.into(), qw.spec.scale_config.queue.clone());
    if let Some(worker) = spec.containers.first() {
        annotations.insert(WORKER_CONTAINER_ANNOTATION.into(), worker.name.clone());
    }
    annotations.insert(
        SCALER_CONFIG_ANNOTATION.into(),
        qw.spec.scale_config.scaler_config_ref.clone(),
    );
    let mut spec = spec.clone();
    spec.containers = spec
        .containers
        .into_iter()
        .map(|c| with_protocol(c, qw, hash))
        .collect();
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("OnFailure".into());
    }
    let volumes = spec.volumes.get_or_insert_default();
    volumes.retain(|v| v.name != PODINFO_VOLUME);
    volumes.push(Volume {
        name: PODINFO_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "annotations".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.annotations".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            ..DownwardAPIVolumeSource::default()
        }),
        ..Volume::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: qw.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: qw.controller_owner_ref(&()).map(|o| vec![o]),
            finalizers: Some(vec![RECOVERY_FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The characters of a worker pod name's random suffix (as Kubernetes' own name generator).
pub const POD_NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A new worker pod name: `<qworker>-<5 random characters>`.
pub fn pod_name(qw: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| POD_NAME_ALPHABET[rng.random_range(0..POD_NAME_ALPHABET.len())] as char)
        .collect();
    let prefix: String = qw.chars().take(57).collect();
    format!("{prefix}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qw() -> QWorker {
        let mut q: QWorker =
            serde_yaml::from_str(include_str!("../../../../../examples/qworker.yaml"))
                .expect("example");
        q.metadata.namespace = Some("ns".into());
        q.metadata.uid = Some("uid-7".into());
        q
    }

    #[test]
    fn the_example_hashes_as_every_earlier_release_did() {
        // A new hash for the same QWorker would roll every worker pod on an operator upgrade.
        let q = qw();
        let spec = template_spec(&q, &BTreeMap::new());
        assert_eq!(pod_spec_hash(&q, &spec), "4e98942b89");
    }

    #[test]
    fn hash_is_deterministic_and_covers_the_template() {
        let q = qw();
        let spec = template_spec(&q, &BTreeMap::new());
        let h = pod_spec_hash(&q, &spec);
        assert_eq!(h.len(), 10);
        assert_eq!(h, pod_spec_hash(&q.clone(), &spec.clone()));
        let mut changed = q.clone();
        changed
            .spec
            .pod_spec
            .edit(|s| s.containers[0].image = Some("worker-image:v2".into()));
        let changed_spec = template_spec(&changed, &BTreeMap::new());
        assert_ne!(h, pod_spec_hash(&changed, &changed_spec));
        let mut scaled = q.clone();
        scaled.spec.scale_config.max_replicas = 99;
        assert_eq!(
            h,
            pod_spec_hash(&scaled, &spec),
            "scaling settings do not roll pods"
        );
        let mut requeued = q.clone();
        requeued.spec.scale_config.queue = "other-queue".into();
        assert_ne!(h, pod_spec_hash(&requeued, &spec), "a new queue rolls pods");
        let mut moved = q.clone();
        moved.spec.scale_config.scaler_config_ref = "other-broker".into();
        assert_ne!(
            h,
            pod_spec_hash(&moved, &spec),
            "a new ScalerConfig rolls pods"
        );
        let vpa = BTreeMap::from([(
            "worker".to_string(),
            BTreeMap::from([("memory".to_string(), "512Mi".to_string())]),
        )]);
        assert_ne!(
            h,
            pod_spec_hash(&q, &template_spec(&q, &vpa)),
            "new requests roll pods"
        );
    }

    #[test]
    fn pod_carries_the_protocol() {
        let q = qw();
        let spec = template_spec(&q, &BTreeMap::new());
        let p = pod(&q, &spec, "abc123", "example-qworker-x2b4c");
        let labels = p.labels();
        assert_eq!(labels[QWORKER_LABEL], "example-qworker");
        assert_eq!(labels[POD_SPEC_HASH_LABEL], "abc123");
        let owner = &p.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("QWorker", "uid-7", Some(true))
        );
        let s = p.spec.clone().expect("spec");
        assert_eq!(s.restart_policy.as_deref(), Some("OnFailure"));
        let c = &s.containers[0];
        let env: BTreeMap<&str, &EnvVar> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        assert_eq!(
            env["QWORKER_NAME"].value.as_deref(),
            Some("example-qworker")
        );
        assert_eq!(env["POD_SPEC_HASH"].value.as_deref(), Some("abc123"));
        assert_eq!(env["QWORKER_QUEUE"].value.as_deref(), Some("task-queue"));
        let path = |e: &EnvVar| {
            e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(path(env["POD_NAME"]).as_deref(), Some("metadata.name"));
        assert_eq!(
            path(env["POD_NAMESPACE"]).as_deref(),
            Some("metadata.namespace")
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == PODINFO_DIR)
        );
        let vol = s
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == PODINFO_VOLUME)
            .expect("volume");
        let item = &vol
            .downward_api
            .as_ref()
            .and_then(|d| d.items.clone())
            .expect("items")[0];
        assert_eq!(
            item.field_ref.as_ref().map(|f| f.field_path.as_str()),
            Some("metadata.annotations")
        );
        assert_eq!(p.annotations()[CURRENT_HASH_ANNOTATION], "abc123");
        assert_eq!(p.annotations()[QUEUE_ANNOTATION], "task-queue");
        assert_eq!(
            p.annotations()[WORKER_CONTAINER_ANNOTATION],
            q.spec.pod_spec.get().containers[0].name
        );
        assert_eq!(p.finalizers(), [super::super::plan::RECOVERY_FINALIZER]);
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .expect("requests");
        assert_eq!(requests["cpu"].0, "500m");
    }

    #[test]
    fn pods_are_safe_to_evict_unless_the_template_says_otherwise() {
        let q = qw();
        let spec = template_spec(&q, &BTreeMap::new());
        let p = pod(&q, &spec, "abc123", "example-qworker-x2b4c");
        assert_eq!(p.annotations()[SAFE_TO_EVICT_ANNOTATION], "true");
        let mut pinned = q.clone();
        pinned.spec.template = Some(workerpool_api::TemplateMetadata {
            annotations: Some(BTreeMap::from([(
                SAFE_TO_EVICT_ANNOTATION.to_string(),
                "false".to_string(),
            )])),
            ..Default::default()
        });
        let p = pod(&pinned, &spec, "abc123", "example-qworker-x2b4c");
        assert_eq!(p.annotations()[SAFE_TO_EVICT_ANNOTATION], "false");
    }

    #[test]
    fn users_restart_policy_is_kept() {
        let mut q = qw();
        q.spec
            .pod_spec
            .edit(|s| s.restart_policy = Some("Never".into()));
        let spec = template_spec(&q, &BTreeMap::new());
        let p = pod(&q, &spec, "h", "n");
        assert_eq!(
            p.spec.and_then(|s| s.restart_policy).as_deref(),
            Some("Never")
        );
    }

    #[test]
    fn validation_names_what_to_change() {
        assert_eq!(validate(&qw()), Ok(()));
        let mut long = qw();
        long.metadata.name = Some("q".repeat(64));
        assert!(validate(&long).is_err_and(|e| e.contains("at most 63")));
        long.metadata.name = Some("q".repeat(63));
        assert_eq!(validate(&long), Ok(()));
        let mut always = qw();
        always
            .spec
            .pod_spec
            .edit(|s| s.restart_policy = Some("Always".into()));
        assert!(validate(&always).is_err_and(|e| e.contains("restartPolicy")));
        let mut bounds = qw();
        bounds.spec.scale_config.min_replicas = 5;
        bounds.spec.scale_config.max_replicas = 2;
        assert!(validate(&bounds).is_err_and(|e| e.contains("minReplicas (5)")));
        let mut empty = qw();
        empty.spec.pod_spec.edit(|s| s.containers.clear());
        assert!(validate(&empty).is_err_and(|e| e.contains("at least one container")));
    }

    #[test]
    fn pod_names_are_prefixed_and_random() {
        let a = pod_name("example-qworker");
        let b = pod_name("example-qworker");
        assert!(a.starts_with("example-qworker-") && a.len() == "example-qworker-".len() + 5);
        assert_ne!(a, b);
        assert!(pod_name(&"x".repeat(80)).len() <= 63);
    }
}
