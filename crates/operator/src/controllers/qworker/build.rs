//! Pure parts of the QWorker controller: the pod-spec hash, the worker pod, and the plan that
//! says which pods to create, drain and delete.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, ObjectFieldSelector, Pod,
    PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use workerpool_api::QWorker;

use crate::MANAGED_BY;
use crate::controllers::field_env;

/// Label naming a worker pod's QWorker.
pub const QWORKER_LABEL: &str = "quickube.com/qworker";
/// Label with the hash of the pod template the pod was created from.
pub const POD_SPEC_HASH_LABEL: &str = "quickube.com/pod-spec-hash";
/// Annotation asking a worker to finish its current task and exit (value: the reason).
pub const DRAIN_ANNOTATION: &str = "quickube.com/drain";
/// Annotation with the QWorker's current pod-spec hash; a worker whose own hash differs exits.
pub const CURRENT_HASH_ANNOTATION: &str = "quickube.com/current-pod-spec-hash";
/// Name of the downward-API volume that exposes the pod's annotations to the worker.
pub const PODINFO_VOLUME: &str = "qworker-podinfo";
/// Where the downward-API volume is mounted; the annotations are in `annotations` below it.
pub const PODINFO_DIR: &str = "/etc/qworker";

/// Why a pod is asked to drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainReason {
    /// The desired count went down.
    ScaleDown,
    /// The pod runs an old pod template.
    StaleHash,
}

impl DrainReason {
    /// The drain annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::ScaleDown => "scale-down",
            DrainReason::StaleHash => "stale-hash",
        }
    }
}

/// The pod template the workers run: the user's podSpec with activateVPA requests applied.
/// Everything in it is covered by [`pod_spec_hash`].
pub fn template_spec(
    qw: &QWorker,
    vpa_requests: &BTreeMap<String, BTreeMap<String, String>>,
) -> PodSpec {
    let mut spec = qw.spec.pod_spec.clone();
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

/// A deterministic short hash of everything that defines a worker pod: the pod spec and the
/// template's labels and annotations.
pub fn pod_spec_hash(qw: &QWorker, spec: &PodSpec) -> String {
    let template = qw.spec.template.clone().unwrap_or_default();
    let material = serde_json::json!({
        "spec": spec,
        "labels": template.labels,
        "annotations": template.annotations,
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
        env("QWORKER_NAME", &qw.name_any()),
        env("POD_SPEC_HASH", hash),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        env(
            "QWORKER_ANNOTATIONS_FILE",
            &format!("{PODINFO_DIR}/annotations"),
        ),
    ];
    let mut envs: Vec<EnvVar> = c
        .env
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !identity.iter().any(|i| i.name == e.name))
        .collect();
    if !envs.iter().any(|e| e.name == "QWORKER_QUEUE") {
        envs.push(env("QWORKER_QUEUE", &qw.spec.scale_config.queue));
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
    annotations.insert(CURRENT_HASH_ANNOTATION.into(), hash.into());
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
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A new worker pod name: `<qworker>-<5 random characters>`.
pub fn pod_name(qw: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let prefix: String = qw.chars().take(57).collect();
    format!("{prefix}-{suffix}")
}

/// What the planner needs to know of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its `quickube.com/pod-spec-hash` label.
    pub hash: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Carries the drain annotation.
    pub draining: bool,
    /// The Ready condition is true.
    pub ready: bool,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
}

impl PodView {
    /// The planner's view of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        Self {
            name: pod.name_any(),
            hash: pod.labels().get(POD_SPEC_HASH_LABEL).cloned(),
            phase: status.and_then(|s| s.phase.clone()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            draining: pod
                .annotations()
                .get(DRAIN_ANNOTATION)
                .is_some_and(|v| !v.is_empty()),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }

    /// Succeeded or Failed: the pod's containers will not run again.
    pub fn terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

/// What one reconcile does to a QWorker's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New pods to create.
    pub create: usize,
    /// Pods to ask to drain, with the reason.
    pub drain: Vec<(String, DrainReason)>,
    /// Finished pods to delete (their processing lists are recovered first).
    pub delete: Vec<String>,
    /// Live workers after the plan: not terminal, not terminating, not draining.
    pub current: i32,
}

/// Plans pod creations, drains and deletions so that exactly `desired` live, non-draining
/// workers run the current template.
///
/// `pending_creates` counts pods created but not yet seen in the cache; `pending_drains` names
/// pods annotated but not yet seen with the annotation (expectations, so a lagging watch never
/// causes over-creation or a second drain).
pub fn plan(
    pods: &[PodView],
    current_hash: &str,
    desired: i32,
    pending_creates: usize,
    pending_drains: &HashSet<String>,
) -> Plan {
    let mut out = Plan::default();
    let mut fresh: Vec<&PodView> = Vec::new();
    for p in pods {
        if p.terminal() {
            out.delete.push(p.name.clone());
        } else if p.terminating || p.draining || pending_drains.contains(&p.name) {
            continue;
        } else if p.hash.as_deref() != Some(current_hash) {
            out.drain.push((p.name.clone(), DrainReason::StaleHash));
        } else {
            fresh.push(p);
        }
    }
    let desired = desired.max(0) as usize;
    let have = fresh.len() + pending_creates;
    if have < desired {
        out.create = desired - have;
    } else if have > desired {
        let excess = (have - desired).min(fresh.len());
        // Victims: not ready first, then the youngest, then by name for determinism.
        fresh.sort_by(|a, b| {
            a.ready
                .cmp(&b.ready)
                .then_with(|| b.created.cmp(&a.created))
                .then_with(|| a.name.cmp(&b.name))
        });
        for victim in fresh.drain(..excess) {
            out.drain
                .push((victim.name.clone(), DrainReason::ScaleDown));
        }
    }
    out.current = (fresh.len() + pending_creates) as i32;
    out
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

    fn view(name: &str, hash: &str, ready: bool, age_secs: i64) -> PodView {
        PodView {
            name: name.into(),
            hash: Some(hash.into()),
            phase: Some("Running".into()),
            terminating: false,
            draining: false,
            ready,
            created: Timestamp::from_second(1_000_000 - age_secs).ok(),
        }
    }

    #[test]
    fn hash_is_deterministic_and_covers_the_template() {
        let q = qw();
        let spec = template_spec(&q, &BTreeMap::new());
        let h = pod_spec_hash(&q, &spec);
        assert_eq!(h.len(), 10);
        assert_eq!(h, pod_spec_hash(&q.clone(), &spec.clone()));
        let mut changed = q.clone();
        changed.spec.pod_spec.containers[0].image = Some("worker-image:v2".into());
        let changed_spec = template_spec(&changed, &BTreeMap::new());
        assert_ne!(h, pod_spec_hash(&changed, &changed_spec));
        let mut scaled = q.clone();
        scaled.spec.scale_config.max_replicas = 99;
        assert_eq!(
            h,
            pod_spec_hash(&scaled, &spec),
            "scaling settings do not roll pods"
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
        let requests = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .expect("requests");
        assert_eq!(requests["cpu"].0, "500m");
    }

    #[test]
    fn users_restart_policy_is_kept() {
        let mut q = qw();
        q.spec.pod_spec.restart_policy = Some("Never".into());
        let spec = template_spec(&q, &BTreeMap::new());
        let p = pod(&q, &spec, "h", "n");
        assert_eq!(
            p.spec.and_then(|s| s.restart_policy).as_deref(),
            Some("Never")
        );
    }

    #[test]
    fn pod_names_are_prefixed_and_random() {
        let a = pod_name("example-qworker");
        let b = pod_name("example-qworker");
        assert!(a.starts_with("example-qworker-") && a.len() == "example-qworker-".len() + 5);
        assert_ne!(a, b);
        assert!(pod_name(&"x".repeat(80)).len() <= 63);
    }

    #[test]
    fn plan_table() {
        let none = HashSet::new();
        let h = "cur";
        // (pods, desired, pending creates) -> (create, drained names, deleted, current)
        let mut finished = view("done", h, false, 5);
        finished.phase = Some("Succeeded".into());
        let mut failed = view("crashed", h, false, 5);
        failed.phase = Some("Failed".into());
        let mut terminating = view("going", h, true, 5);
        terminating.terminating = true;
        let mut draining = view("leaving", h, true, 5);
        draining.draining = true;
        // (pods, desired, pending creates, want create, want drained, want deleted, want current)
        type Case<'a> = (
            Vec<PodView>,
            i32,
            usize,
            usize,
            Vec<&'a str>,
            Vec<&'a str>,
            i32,
        );
        let cases: Vec<Case> = vec![
            (vec![], 3, 0, 3, vec![], vec![], 0),
            (vec![view("a", h, true, 10)], 3, 2, 0, vec![], vec![], 3),
            (
                vec![
                    view("a", h, true, 10),
                    view("b", h, true, 5),
                    view("c", h, false, 20),
                ],
                1,
                0,
                0,
                vec!["c", "b"],
                vec![],
                1,
            ),
            (
                vec![view("a", h, true, 10), view("b", h, true, 5)],
                2,
                0,
                0,
                vec![],
                vec![],
                2,
            ),
            (
                vec![view("old1", "old", true, 10), view("a", h, true, 5)],
                2,
                0,
                1,
                vec!["old1"],
                vec![],
                1,
            ),
            (
                vec![finished.clone(), failed.clone(), view("a", h, true, 5)],
                2,
                0,
                1,
                vec![],
                vec!["done", "crashed"],
                1,
            ),
            (
                vec![terminating.clone(), draining.clone()],
                1,
                0,
                1,
                vec![],
                vec![],
                0,
            ),
            (
                vec![view("a", h, true, 10), view("b", h, true, 5)],
                0,
                0,
                0,
                vec!["b", "a"],
                vec![],
                0,
            ),
        ];
        for (i, (pods, desired, pending, create, drained, deleted, current)) in
            cases.into_iter().enumerate()
        {
            let p = plan(&pods, h, desired, pending, &none);
            assert_eq!(p.create, create, "case {i} create");
            let names: Vec<&str> = p.drain.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, drained, "case {i} drained");
            assert_eq!(p.delete, deleted, "case {i} deleted");
            assert_eq!(p.current, current, "case {i} current");
        }
    }

    #[test]
    fn pending_drains_are_not_drained_twice() {
        let pods = vec![view("a", "cur", true, 10), view("b", "cur", true, 5)];
        let pending = HashSet::from(["b".to_string()]);
        let p = plan(&pods, "cur", 1, 0, &pending);
        assert!(p.drain.is_empty(), "b is already leaving: {:?}", p.drain);
        assert_eq!(p.current, 1);
    }

    #[test]
    fn stale_pods_drain_with_their_reason() {
        let pods = vec![view("old", "v1", true, 10)];
        let p = plan(&pods, "v2", 1, 0, &HashSet::new());
        assert_eq!(p.drain, vec![("old".to_string(), DrainReason::StaleHash)]);
        assert_eq!(p.create, 1);
    }
}
