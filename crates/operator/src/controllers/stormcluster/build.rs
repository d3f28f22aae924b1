//! Pure builders of a Managed StormCluster's objects: the storm.yaml ConfigMap, the Nimbus
//! headless Service and StatefulSet, the UI Deployment and Service. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use workerpool_api::storm::{
    CLUSTER_RESERVED_KEYS, ClusterMode, MANAGED_THRIFT_PORT_MESSAGE, MAX_CLUSTER_NAME_LENGTH,
    NIMBUS_THRIFT_PORT, StormCluster, UI_PORT, ZOOKEEPER_PORT_MESSAGE, reserved_key_in,
};

use workerpool_storm::log4j2::{CLUSTER_XML, CLUSTER_XML_NAME};

use crate::MANAGED_BY;
use crate::apply::{short_hash, with_applied_hash};
use crate::controllers::CONFIG_HASH_ANNOTATION;
use crate::controllers::field_env;
use crate::error::{Error, Result};
use crate::quantity;

/// `app.kubernetes.io/component` of the Nimbus objects.
pub const NIMBUS_COMPONENT: &str = "nimbus";
/// `app.kubernetes.io/component` of the UI objects.
pub const UI_COMPONENT: &str = "ui";
/// Name of the Nimbus and UI containers' volume holding the ConfigMap (read-only).
pub const CONFIG_VOLUME: &str = "storm-config";
/// Where the ConfigMap's storm.yaml is mounted, read-only.
pub const CONFIG_MOUNT: &str = "/etc/storm-config";
/// The writable config directory (`STORM_CONF_DIR` of the official image, an emptyDir) the
/// start script copies the storm.yaml to.
pub const CONF_DIR: &str = "/conf";
/// Storm's local state (`storm.local.dir`): the Nimbus volume claim, an emptyDir for the UI.
pub const DATA_DIR: &str = "/data";
/// Storm's log directory (`storm.log.dir`), an emptyDir.
pub const LOG_DIR: &str = "/logs";
/// The official image's `storm` user and group.
pub const STORM_UID: i64 = 1000;
/// Default size of each Nimbus pod's data volume.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";
/// Labels of every object of `cluster` with `component` (`nimbus` or `ui`).
pub fn labels(cluster: &StormCluster, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster, component);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l
}

/// Labels selecting the pods of `component` (immutable in StatefulSet and Deployment).
pub fn selector_labels(cluster: &StormCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "storm".into()),
        ("app.kubernetes.io/instance".into(), cluster.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn owner_reference(cluster: &StormCluster) -> Vec<OwnerReference> {
    cluster.controller_owner_ref(&()).into_iter().collect()
}

fn metadata(cluster: &StormCluster, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster, component)),
        owner_references: Some(owner_reference(cluster)),
        ..ObjectMeta::default()
    }
}

/// Whether `object` has a controller ownerReference to this cluster (same uid).
pub fn controlled_by<K: Resource>(object: &K, cluster: &StormCluster) -> bool {
    crate::controllers::controlled_by(object, cluster)
}

/// Whether the object `current` (its cached view, or the view of the live one) already holds
/// the apply body `desired` ([`crate::controllers::up_to_date`]).
pub fn up_to_date<K: crate::cache::child::ChildKind>(
    current: &crate::cache::child::Child<K>,
    desired: &K,
    cluster: &StormCluster,
) -> bool {
    crate::controllers::up_to_date(current, desired, cluster)
}

fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with(['/', ':', '.', '-'])
        && !r.ends_with(['/', ':'])
        && r.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':')
        })
        && !r.contains("//")
}

fn valid_tag(t: &str) -> bool {
    if let Some(hex) = t.strip_prefix("sha256:") {
        return hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The name: short enough for `<cluster>-nimbus-<n>`, and a valid start of a Service name.
fn validate_name(cluster: &StormCluster) -> Result<()> {
    let name = cluster.name_any();
    if name.len() > MAX_CLUSTER_NAME_LENGTH {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} has {} characters; at most {MAX_CLUSTER_NAME_LENGTH} are allowed, because <cluster>-nimbus-<n> must be a DNS label",
            name.len()
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} must start with a lowercase letter, because {} and {} are Service names",
            cluster.nimbus_name(),
            cluster.ui_name()
        )));
    }
    Ok(())
}

/// `zookeeperServers`: at least one, none empty, no port.
fn validate_zookeeper_servers(cluster: &StormCluster) -> Result<()> {
    let servers = &cluster.spec.zookeeper_servers;
    if servers.is_empty() || servers.iter().any(|s| s.trim().is_empty()) {
        return Err(Error::InvalidSpec(
            "zookeeperServers must list at least one server, none empty".into(),
        ));
    }
    if let Some(server) = servers.iter().find(|s| s.contains(':')) {
        return Err(Error::InvalidSpec(format!(
            "zookeeperServers entry {server:?}: {ZOOKEEPER_PORT_MESSAGE}"
        )));
    }
    Ok(())
}

/// `stormConfig`: no key the operator sets, and no Thrift port on a Managed cluster.
fn validate_storm_config(cluster: &StormCluster) -> Result<()> {
    let config = cluster.spec.storm_config.as_ref();
    if let Some(message) = reserved_key_in(config, CLUSTER_RESERVED_KEYS, "stormConfig") {
        return Err(Error::InvalidSpec(message));
    }
    if cluster.spec.mode == ClusterMode::Managed
        && config.is_some_and(|c| c.contains_key("nimbus.thrift.port"))
    {
        return Err(Error::InvalidSpec(MANAGED_THRIFT_PORT_MESSAGE.into()));
    }
    Ok(())
}

/// `image`: a usable repository and tag (or digest).
fn validate_image(cluster: &StormCluster) -> Result<()> {
    let image = cluster.spec.image.as_ref();
    if let Some(r) = image.and_then(|i| i.repository.as_deref())
        && !valid_repository(r)
    {
        return Err(Error::InvalidSpec(format!(
            "image.repository {r:?} is not a usable image repository (lowercase letters, digits, '.', '_', '-', '/', a registry port)"
        )));
    }
    if let Some(t) = image.and_then(|i| i.tag.as_deref())
        && !valid_tag(t)
    {
        return Err(Error::InvalidSpec(format!(
            "image.tag {t:?} is not a usable image tag (letters, digits, '.', '_', '-', at most 128) or sha256 digest"
        )));
    }
    Ok(())
}

/// A Managed cluster: a positive `nimbus.storageSize` when set.
fn validate_managed(cluster: &StormCluster) -> Result<()> {
    if let Some(size) = cluster
        .spec
        .nimbus
        .as_ref()
        .and_then(|n| n.storage_size.as_deref())
        && quantity::parse(size).is_none_or(|v| v <= 0.0)
    {
        return Err(Error::InvalidSpec(format!(
            "nimbus.storageSize {size:?} is not a positive quantity (e.g. \"1Gi\")"
        )));
    }
    Ok(())
}

/// An External cluster: an http(s) `uiUrl` and `nimbusSeeds`.
fn validate_external(cluster: &StormCluster) -> Result<()> {
    let url = cluster.spec.ui_url.as_deref().unwrap_or_default();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url::Url::parse(url).is_err()
    {
        return Err(Error::InvalidSpec(format!(
            "uiUrl {:?} must be an http:// or https:// URL (required when External)",
            scrub_userinfo(url)
        )));
    }
    if cluster.spec.nimbus_seeds.is_empty() {
        return Err(Error::InvalidSpec(
            "an External cluster needs nimbusSeeds".into(),
        ));
    }
    Ok(())
}

/// Checks what the schema cannot (or what a server skipping CEL rules lets through): the name,
/// the image reference, the storage size, the UI URL and seeds of an External cluster.
pub fn validate(cluster: &StormCluster) -> Result<()> {
    validate_name(cluster)?;
    validate_zookeeper_servers(cluster)?;
    validate_storm_config(cluster)?;
    validate_image(cluster)?;
    match cluster.spec.mode {
        ClusterMode::Managed => validate_managed(cluster),
        ClusterMode::External => validate_external(cluster),
    }
}

pub use crate::error::scrub_userinfo;

/// The daemons' image: [`StormCluster::image_reference`] (`storm:2.6.4` by default; a
/// `sha256:` tag is a digest).
pub fn image(cluster: &StormCluster) -> String {
    cluster.image_reference()
}

/// The daemons' storm.yaml: the spec's `stormConfig`, then the entries the operator wires
/// (ZooKeeper servers and root, Nimbus seeds, ports, directories, logging), which `validate`
/// keeps out of `stormConfig`. `storm.local.hostname` is left out: each Nimbus pod appends its
/// own stable DNS name at start.
pub fn storm_yaml(cluster: &StormCluster) -> Result<String> {
    let mut conf: BTreeMap<String, serde_json::Value> =
        cluster.spec.storm_config.clone().unwrap_or_default();
    conf.insert(
        "storm.zookeeper.servers".into(),
        serde_json::json!(cluster.spec.zookeeper_servers),
    );
    if let Some(root) = cluster.zookeeper_root() {
        conf.insert("storm.zookeeper.root".into(), root);
    }
    conf.insert(
        "nimbus.thrift.port".into(),
        serde_json::json!(NIMBUS_THRIFT_PORT),
    );
    conf.insert("storm.local.dir".into(), serde_json::json!(DATA_DIR));
    conf.insert("storm.log.dir".into(), serde_json::json!(LOG_DIR));
    conf.insert("ui.port".into(), serde_json::json!(UI_PORT));
    conf.insert(
        "storm.log4j2.conf.dir".into(),
        serde_json::json!(CONFIG_MOUNT),
    );
    conf.remove("storm.local.hostname");
    conf.insert(
        "nimbus.seeds".into(),
        serde_json::json!(cluster.nimbus_seeds()),
    );
    serde_yaml::to_string(&conf).map_err(|e| {
        Error::InvalidSpec(format!(
            "storm configuration cannot be written as YAML: {e}"
        ))
    })
}

/// The stable DNS name of the Nimbus pod named by the shell variable `POD_NAME`, as in
/// [`StormCluster::nimbus_seeds`].
pub fn nimbus_hostname_pattern(cluster: &StormCluster) -> String {
    let ns = cluster.namespace().unwrap_or_else(|| "default".into());
    format!("${{POD_NAME}}.{}.{ns}.svc", cluster.nimbus_name())
}

/// The start script of a daemon (`nimbus` or `ui`): copies the read-only storm.yaml to the
/// writable [`CONF_DIR`], appends the pod's `storm.local.hostname` when given, and execs the
/// daemon (the image's entrypoint, which would chown `/conf`, never runs).
pub fn start_script(daemon: &str, hostname: Option<&str>) -> String {
    let mut script = format!("set -e\ncp {CONFIG_MOUNT}/storm.yaml {CONF_DIR}/storm.yaml\n");
    if let Some(host) = hostname {
        script.push_str(&format!(
            "printf 'storm.local.hostname: \"%s\"\\n' \"{host}\" >> {CONF_DIR}/storm.yaml\n"
        ));
    }
    script.push_str(&format!("exec storm {daemon}\n"));
    script
}

/// ConfigMap `<cluster>-config` holding `storm.yaml` and the daemons' log4j2 `cluster.xml`
/// (Storm's files plus the console, so `kubectl logs` shows the daemon's log).
pub fn config_map(cluster: &StormCluster, storm_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(cluster, cluster.config_name(), NIMBUS_COMPONENT),
        data: Some(BTreeMap::from([
            ("storm.yaml".into(), storm_yaml.to_string()),
            (CLUSTER_XML_NAME.into(), CLUSTER_XML.into()),
        ])),
        ..ConfigMap::default()
    }
}

/// Headless Service `<cluster>-nimbus` giving each Nimbus pod its stable DNS name, ready or not.
pub fn nimbus_service(cluster: &StormCluster) -> Service {
    Service {
        metadata: metadata(cluster, cluster.nimbus_name(), NIMBUS_COMPONENT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cluster, NIMBUS_COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("thrift".into()),
                port: NIMBUS_THRIFT_PORT,
                target_port: Some(IntOrString::String("thrift".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Service `<cluster>-ui` (ClusterIP) of the UI REST API.
pub fn ui_service(cluster: &StormCluster) -> Service {
    Service {
        metadata: metadata(cluster, cluster.ui_name(), UI_COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cluster, UI_COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: UI_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn tcp_probe(port: &str) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// The pod spec shared by Nimbus and UI: uid 1000 (so nothing ever chowns), the ConfigMap
/// read-only, an emptyDir as the writable `/conf` and one for `/logs`.
fn daemon_pod(cluster: &StormCluster, container: Container, extra: Vec<Volume>) -> PodSpec {
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cluster.config_name(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("conf"),
        empty_dir("logs"),
    ];
    volumes.extend(extra);
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        image_pull_secrets: cluster
            .spec
            .image
            .as_ref()
            .and_then(|i| i.pull_secrets.as_ref())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(STORM_UID),
            run_as_group: Some(STORM_UID),
            fs_group: Some(STORM_UID),
            run_as_non_root: Some(true),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    }
}

fn daemon_container(
    cluster: &StormCluster,
    daemon: &str,
    script: String,
    port: (&str, i32),
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
) -> Container {
    Container {
        name: daemon.into(),
        image: Some(image(cluster)),
        image_pull_policy: cluster
            .spec
            .image
            .as_ref()
            .and_then(|i| i.pull_policy.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            EnvVar {
                name: "STORM_CONF_DIR".into(),
                value: Some(CONF_DIR.into()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(port.0.into()),
            container_port: port.1,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp_probe(port.0)),
        resources,
        volume_mounts: Some(vec![
            mount(CONFIG_VOLUME, CONFIG_MOUNT, true),
            mount("conf", CONF_DIR, false),
            mount("data", DATA_DIR, false),
            mount("logs", LOG_DIR, false),
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn template_meta(cluster: &StormCluster, component: &str, config_hash: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        labels: Some(labels(cluster, component)),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.into(),
            config_hash.to_string(),
        )])),
        ..ObjectMeta::default()
    })
}

/// StatefulSet `<cluster>-nimbus`: `nimbus_replicas()` pods `<cluster>-nimbus-<i>` under the
/// headless Service, each with a `data` volume claim; `config_hash` rolls the pods on a
/// storm.yaml change.
pub fn nimbus_statefulset(cluster: &StormCluster, config_hash: &str) -> StatefulSet {
    let nimbus = cluster.spec.nimbus.clone().unwrap_or_default();
    let hostname = nimbus_hostname_pattern(cluster);
    let container = daemon_container(
        cluster,
        "nimbus",
        start_script("nimbus", Some(&hostname)),
        ("thrift", NIMBUS_THRIFT_PORT),
        nimbus.resources.clone(),
    );
    let size = nimbus
        .storage_size
        .clone()
        .unwrap_or_else(|| DEFAULT_STORAGE_SIZE.into());
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(labels(cluster, NIMBUS_COMPONENT)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: nimbus.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: metadata(cluster, cluster.nimbus_name(), NIMBUS_COMPONENT),
        spec: Some(StatefulSetSpec {
            service_name: Some(cluster.nimbus_name()),
            replicas: Some(cluster.nimbus_replicas()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster, NIMBUS_COMPONENT)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: template_meta(cluster, NIMBUS_COMPONENT, config_hash),
                spec: Some(daemon_pod(cluster, container, Vec::new())),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Replicas of the UI Deployment (default 1).
pub fn ui_replicas(cluster: &StormCluster) -> i32 {
    cluster
        .spec
        .ui
        .as_ref()
        .and_then(|u| u.replicas)
        .unwrap_or(1)
}

/// Deployment `<cluster>-ui` running `storm ui`, ready once port 8080 accepts connections (the
/// summary endpoints fail while no Nimbus leads, so an HTTP probe would keep it unready).
pub fn ui_deployment(cluster: &StormCluster, config_hash: &str) -> Deployment {
    let ui = cluster.spec.ui.clone().unwrap_or_default();
    let container = daemon_container(
        cluster,
        "ui",
        start_script("ui", None),
        ("http", UI_PORT),
        ui.resources,
    );
    Deployment {
        metadata: metadata(cluster, cluster.ui_name(), UI_COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: Some(ui_replicas(cluster)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster, UI_COMPONENT)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: template_meta(cluster, UI_COMPONENT, config_hash),
                spec: Some(daemon_pod(cluster, container, vec![empty_dir("data")])),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Every object of a Managed cluster, each carrying its [`APPLIED_HASH_ANNOTATION`](crate::apply::APPLIED_HASH_ANNOTATION).
#[derive(Clone, Debug)]
pub struct Children {
    /// `<cluster>-config`.
    pub config_map: ConfigMap,
    /// `<cluster>-nimbus` (headless).
    pub nimbus_service: Service,
    /// `<cluster>-nimbus`.
    pub nimbus: StatefulSet,
    /// `<cluster>-ui`.
    pub ui: Deployment,
    /// `<cluster>-ui`.
    pub ui_service: Service,
}

/// The objects of a Managed cluster.
pub fn children(cluster: &StormCluster) -> Result<Children> {
    let yaml = storm_yaml(cluster)?;
    let hash = short_hash(&format!("{yaml}{CLUSTER_XML}"));
    Ok(Children {
        config_map: with_applied_hash(config_map(cluster, &yaml)),
        nimbus_service: with_applied_hash(nimbus_service(cluster)),
        nimbus: with_applied_hash(nimbus_statefulset(cluster, &hash)),
        ui: with_applied_hash(ui_deployment(cluster, &hash)),
        ui_service: with_applied_hash(ui_service(cluster)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{APPLIED_HASH_ANNOTATION, applied_hash_of};
    use crate::cache::child::Child;
    use workerpool_api::storm::{ImageSpec, NimbusSpec, StormClusterSpec};

    fn cluster(mode: ClusterMode) -> StormCluster {
        let mut c = StormCluster::new(
            "storm",
            StormClusterSpec {
                mode,
                zookeeper_servers: vec!["zk-0.zk".into(), "zk-1.zk".into()],
                ..StormClusterSpec::default()
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.uid = Some("uid-1".into());
        if mode == ClusterMode::External {
            c.spec.ui_url = Some("http://ui.example:8080".into());
            c.spec.nimbus_seeds = vec!["nimbus-a".into()];
        }
        c
    }

    fn yaml_of(c: &StormCluster) -> serde_yaml::Value {
        serde_yaml::from_str(&storm_yaml(c).expect("yaml")).expect("parses")
    }

    #[test]
    fn storm_yaml_has_the_operator_entries_and_the_users_config() {
        let mut c = cluster(ClusterMode::Managed);
        c.spec.nimbus = Some(NimbusSpec {
            replicas: Some(2),
            ..NimbusSpec::default()
        });
        c.spec.storm_config = Some(BTreeMap::from([
            ("topology.debug".into(), serde_json::json!(true)),
            ("storm.zookeeper.port".into(), serde_json::json!(2182)),
        ]));
        let y = yaml_of(&c);
        assert_eq!(
            y["storm.zookeeper.servers"],
            serde_yaml::to_value(["zk-0.zk", "zk-1.zk"]).expect("v")
        );
        assert_eq!(
            y["nimbus.seeds"],
            serde_yaml::to_value([
                "storm-nimbus-0.storm-nimbus.team-a.svc",
                "storm-nimbus-1.storm-nimbus.team-a.svc"
            ])
            .expect("v")
        );
        assert_eq!(y["nimbus.thrift.port"], serde_yaml::Value::from(6627));
        assert_eq!(y["storm.local.dir"], serde_yaml::Value::from("/data"));
        assert_eq!(y["storm.log.dir"], serde_yaml::Value::from("/logs"));
        assert_eq!(y["ui.port"], serde_yaml::Value::from(8080));
        assert_eq!(
            y["storm.log4j2.conf.dir"],
            serde_yaml::Value::from(CONFIG_MOUNT),
            "the ConfigMap's cluster.xml, which logs to the console too"
        );
        let cm = config_map(&c, "x");
        assert!(cm.data.expect("data")["cluster.xml"].contains("SYSTEM_OUT"));
        assert_eq!(
            y["storm.zookeeper.root"],
            serde_yaml::Value::from("/storm/team-a/storm"),
            "a Managed cluster's own root by default"
        );
        assert_eq!(y["storm.zookeeper.port"], serde_yaml::Value::from(2182));
        assert_eq!(y["topology.debug"], serde_yaml::Value::from(true));
        assert!(y.get("storm.local.hostname").is_none(), "set per pod");
        c.spec
            .storm_config
            .get_or_insert_default()
            .insert("storm.zookeeper.root".into(), serde_json::json!("/storm"));
        assert_eq!(
            yaml_of(&c)["storm.zookeeper.root"],
            serde_yaml::Value::from("/storm"),
            "the user's root wins"
        );
        let external = cluster(ClusterMode::External);
        assert!(
            yaml_of(&external).get("storm.zookeeper.root").is_none(),
            "an External cluster keeps Storm's default unless it sets one"
        );
    }

    #[test]
    fn operator_wired_keys_and_ported_zookeeper_servers_are_refused() {
        let with = |mode: ClusterMode, key: &str| {
            let mut c = cluster(mode);
            c.spec.storm_config = Some(BTreeMap::from([(key.into(), serde_json::json!(1))]));
            validate(&c)
        };
        let cases = [
            (
                ClusterMode::Managed,
                "ui.port",
                Some("stormConfig must not set ui.port"),
            ),
            (ClusterMode::External, "ui.port", Some("spec.uiUrl")),
            (ClusterMode::Managed, "storm.local.dir", Some("/data")),
            (ClusterMode::Managed, "storm.log.dir", Some("/logs")),
            (
                ClusterMode::Managed,
                "nimbus.seeds",
                Some("spec.nimbusSeeds"),
            ),
            (
                ClusterMode::Managed,
                "storm.zookeeper.servers",
                Some("spec.zookeeperServers"),
            ),
            (
                ClusterMode::Managed,
                "supervisor.slots.ports",
                Some("spec.ports"),
            ),
            (
                ClusterMode::Managed,
                "nimbus.thrift.port",
                Some("only for an External cluster"),
            ),
            (ClusterMode::External, "nimbus.thrift.port", None),
            (ClusterMode::Managed, "storm.zookeeper.port", None),
            (ClusterMode::Managed, "storm.zookeeper.root", None),
        ];
        for (mode, key, want) in cases {
            match (with(mode, key), want) {
                (Ok(()), None) => {}
                (Err(Error::InvalidSpec(m)), Some(want)) => {
                    assert!(m.contains(want), "{mode:?} {key}: {m:?} lacks {want:?}");
                    assert!(m.contains(key), "{m}");
                }
                (got, want) => panic!("{mode:?} {key}: got {got:?}, want {want:?}"),
            }
        }
        let mut c = cluster(ClusterMode::Managed);
        c.spec.zookeeper_servers = vec!["zk-0".into(), "zk:2181".into()];
        let err = validate(&c).expect_err("a port").to_string();
        assert!(err.contains("\"zk:2181\""), "{err}");
        assert!(err.contains("storm.zookeeper.port"), "{err}");
    }

    #[test]
    fn nimbus_hostname_matches_the_seeds() {
        let c = cluster(ClusterMode::Managed);
        let pattern = nimbus_hostname_pattern(&c);
        assert_eq!(pattern, "${POD_NAME}.storm-nimbus.team-a.svc");
        let seed = &c.nimbus_seeds()[0];
        assert_eq!(&pattern.replace("${POD_NAME}", "storm-nimbus-0"), seed);
        let script = start_script("nimbus", Some(&pattern));
        assert_eq!(
            script,
            "set -e\ncp /etc/storm-config/storm.yaml /conf/storm.yaml\nprintf 'storm.local.hostname: \"%s\"\\n' \"${POD_NAME}.storm-nimbus.team-a.svc\" >> /conf/storm.yaml\nexec storm nimbus\n"
        );
        assert!(!start_script("ui", None).contains("hostname"));
        assert!(start_script("ui", None).ends_with("exec storm ui\n"));
    }

    #[test]
    fn statefulset_fields() {
        let mut c = cluster(ClusterMode::Managed);
        c.spec.nimbus = Some(NimbusSpec {
            replicas: Some(3),
            storage_size: Some("5Gi".into()),
            storage_class_name: Some("fast".into()),
            ..NimbusSpec::default()
        });
        c.spec.image = Some(ImageSpec {
            repository: Some("apache/storm".into()),
            tag: Some("2.8.8".into()),
            pull_policy: Some("Always".into()),
            pull_secrets: Some(vec!["regcred".into()]),
        });
        let s = nimbus_statefulset(&c, "h1");
        let spec = s.spec.as_ref().expect("spec");
        assert_eq!(s.metadata.name.as_deref(), Some("storm-nimbus"));
        assert_eq!(spec.service_name.as_deref(), Some("storm-nimbus"));
        assert_eq!(spec.replicas, Some(3));
        let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        let cs = claim.spec.as_ref().expect("claim spec");
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .expect("req")["storage"],
            Quantity("5Gi".into())
        );
        let pod = spec.template.spec.as_ref().expect("pod");
        let sc = pod.security_context.as_ref().expect("sc");
        assert_eq!(
            (
                sc.run_as_user,
                sc.run_as_group,
                sc.fs_group,
                sc.run_as_non_root
            ),
            (Some(1000), Some(1000), Some(1000), Some(true))
        );
        assert_eq!(
            pod.image_pull_secrets.as_ref().expect("secrets")[0].name,
            "regcred"
        );
        let ctr = &pod.containers[0];
        assert_eq!(ctr.image.as_deref(), Some("apache/storm:2.8.8"));
        assert_eq!(ctr.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            ctr.readiness_probe
                .as_ref()
                .and_then(|p| p.tcp_socket.as_ref())
                .map(|t| t.port.clone()),
            Some(IntOrString::String("thrift".into()))
        );
        assert_eq!(ctr.ports.as_ref().expect("ports")[0].container_port, 6627);
        let mounts: Vec<(&str, &str)> = ctr
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(mounts.contains(&("storm-config", "/etc/storm-config")));
        assert!(mounts.contains(&("conf", "/conf")));
        assert!(mounts.contains(&("data", "/data")));
        assert!(mounts.contains(&("logs", "/logs")));
        assert!(ctr.command.as_ref().expect("cmd")[2].contains("exec storm nimbus"));
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .expect("ann")[CONFIG_HASH_ANNOTATION],
            "h1"
        );
        // defaults
        let d = nimbus_statefulset(&cluster(ClusterMode::Managed), "h");
        let dspec = d.spec.expect("spec");
        assert_eq!(dspec.replicas, Some(1));
        let dclaim = &dspec.volume_claim_templates.expect("claims")[0];
        let dcs = dclaim.spec.as_ref().expect("claim spec");
        assert_eq!(dcs.storage_class_name, None);
        assert_eq!(
            dcs.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .expect("req")["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(
            dspec.template.spec.expect("pod").containers[0]
                .image
                .as_deref(),
            Some("storm:2.6.4")
        );
    }

    #[test]
    fn services_and_ui_deployment_fields() {
        let c = cluster(ClusterMode::Managed);
        let headless = nimbus_service(&c);
        let hs = headless.spec.as_ref().expect("spec");
        assert_eq!(headless.metadata.name.as_deref(), Some("storm-nimbus"));
        assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
        assert_eq!(hs.publish_not_ready_addresses, Some(true));
        let p = &hs.ports.as_ref().expect("ports")[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("thrift"), 6627));
        assert_eq!(
            hs.selector.as_ref().expect("sel")["app.kubernetes.io/component"],
            "nimbus"
        );
        let ui = ui_service(&c);
        let us = ui.spec.as_ref().expect("spec");
        assert_eq!(ui.metadata.name.as_deref(), Some("storm-ui"));
        assert_eq!(us.type_.as_deref(), Some("ClusterIP"));
        let p = &us.ports.as_ref().expect("ports")[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("http"), 8080));
        let d = ui_deployment(&c, "h");
        let ds = d.spec.as_ref().expect("spec");
        assert_eq!(d.metadata.name.as_deref(), Some("storm-ui"));
        assert_eq!(ds.replicas, Some(1));
        let ctr = &ds.template.spec.as_ref().expect("pod").containers[0];
        assert!(ctr.command.as_ref().expect("cmd")[2].contains("exec storm ui"));
        assert_eq!(
            ctr.readiness_probe
                .as_ref()
                .and_then(|p| p.tcp_socket.as_ref())
                .map(|t| t.port.clone()),
            Some(IntOrString::String("http".into()))
        );
    }

    #[test]
    fn every_child_is_owned_labelled_and_hashed() {
        let c = cluster(ClusterMode::Managed);
        let ch = children(&c).expect("children");
        let metas = [
            ("configmap", &ch.config_map.metadata, "nimbus"),
            ("nimbus svc", &ch.nimbus_service.metadata, "nimbus"),
            ("sts", &ch.nimbus.metadata, "nimbus"),
            ("ui", &ch.ui.metadata, "ui"),
            ("ui svc", &ch.ui_service.metadata, "ui"),
        ];
        for (what, m, component) in metas {
            let owner = &m.owner_references.as_ref().expect("owners")[0];
            assert_eq!(
                (
                    owner.kind.as_str(),
                    owner.name.as_str(),
                    owner.uid.as_str(),
                    owner.controller
                ),
                ("StormCluster", "storm", "uid-1", Some(true)),
                "{what}"
            );
            let l = m.labels.as_ref().expect("labels");
            assert_eq!(
                l["app.kubernetes.io/managed-by"], "workerpool-operator",
                "{what}"
            );
            assert_eq!(l["app.kubernetes.io/name"], "storm", "{what}");
            assert_eq!(l["app.kubernetes.io/instance"], "storm", "{what}");
            assert_eq!(l["app.kubernetes.io/component"], component, "{what}");
            assert_eq!(
                m.annotations.as_ref().expect("ann")[APPLIED_HASH_ANNOTATION].len(),
                16,
                "{what}"
            );
        }
        assert_eq!(ch.config_map.metadata.name.as_deref(), Some("storm-config"));
        assert!(controlled_by(&ch.nimbus, &c));
        assert!(up_to_date(&Child::of(&ch.nimbus), &ch.nimbus, &c));
    }

    #[test]
    fn config_hash_follows_the_config() {
        let c = cluster(ClusterMode::Managed);
        let a = children(&c).expect("children");
        let again = children(&c).expect("children");
        let tmpl_hash = |s: &StatefulSet| {
            s.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .expect("ann")[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(tmpl_hash(&a.nimbus), tmpl_hash(&again.nimbus), "stable");
        let mut changed = c.clone();
        changed.spec.storm_config = Some(BTreeMap::from([(
            "topology.debug".into(),
            serde_json::json!(true),
        )]));
        let b = children(&changed).expect("children");
        assert_ne!(tmpl_hash(&a.nimbus), tmpl_hash(&b.nimbus));
        assert_ne!(
            applied_hash_of(&a.ui),
            applied_hash_of(&b.ui),
            "the UI rolls too"
        );
        assert_ne!(
            applied_hash_of(&a.config_map),
            applied_hash_of(&b.config_map)
        );
        assert_eq!(
            applied_hash_of(&a.nimbus_service),
            applied_hash_of(&b.nimbus_service)
        );
    }

    #[test]
    fn validation_rejects_unusable_specs() {
        assert!(validate(&cluster(ClusterMode::Managed)).is_ok());
        assert!(validate(&cluster(ClusterMode::External)).is_ok());
        let mut c = cluster(ClusterMode::Managed);
        c.spec.image = Some(ImageSpec {
            repository: Some("Apache Storm".into()),
            ..ImageSpec::default()
        });
        assert!(
            matches!(validate(&c), Err(Error::InvalidSpec(m)) if m.contains("image.repository"))
        );
        let mut c = cluster(ClusterMode::Managed);
        c.spec.image = Some(ImageSpec {
            tag: Some("2.6 4".into()),
            ..ImageSpec::default()
        });
        assert!(matches!(validate(&c), Err(Error::InvalidSpec(m)) if m.contains("image.tag")));
        let mut c = cluster(ClusterMode::Managed);
        c.spec.nimbus = Some(NimbusSpec {
            storage_size: Some("lots".into()),
            ..NimbusSpec::default()
        });
        assert!(validate(&c).is_err());
        let mut c = cluster(ClusterMode::External);
        c.spec.ui_url = Some("ftp://user:secret@host".into());
        let err = validate(&c).expect_err("bad url").to_string();
        assert!(!err.contains("secret"), "{err}");
        let mut c = cluster(ClusterMode::Managed);
        c.metadata.name = Some("a".repeat(41));
        assert!(validate(&c).is_err());
        let mut c = cluster(ClusterMode::Managed);
        c.spec.image = Some(ImageSpec {
            repository: Some("registry.local:5000/storm".into()),
            tag: Some(format!("sha256:{}", "a".repeat(64))),
            ..ImageSpec::default()
        });
        assert!(validate(&c).is_ok());
        assert_eq!(
            image(&c),
            format!("registry.local:5000/storm@sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn userinfo_is_scrubbed() {
        assert_eq!(
            scrub_userinfo(
                "Storm UI at https://admin:pw@ui.example:8080/api/v1/cluster/summary is unreachable"
            ),
            "Storm UI at https://ui.example:8080/api/v1/cluster/summary is unreachable"
        );
        assert_eq!(scrub_userinfo("http://ui:8080"), "http://ui:8080");
        assert_eq!(
            scrub_userinfo("a http://u@x b https://p:q@y/z"),
            "a http://x b https://y/z"
        );
    }
}
