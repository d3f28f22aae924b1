//! The StormWorkerPool scenario: the seed's manifests, waiting for the topology and cluster,
//! the children of every pool, readiness, Events, metrics, turning autoscaling off, an invalid
//! spec, garbage collection, and the CRD's CEL rules on a real API server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use workerpool_api::storm::{ClusterPhase, PodDisruptionBudgetSpec, PoolPhase, TopologyPhase};
use workerpool_api::{StormCluster, StormTopology, StormWorkerPool};

use crate::harness::{
    Observe, Scenario, WAIT, applied_field_owned_by, condition, controlled_by, ensure,
    expect_rejected, find_series, has_apply_entry, summarize_conditions,
};
use workerpool_operator::controllers::stormtopology::build::{JobState, job_state};
use workerpool_testkit::storm_ui::{self, StormUi};

pub const CLUSTER_AND_TOPOLOGIES: &str =
    include_str!("../../../../examples/storm-cluster-and-topologies.yaml");
const BASIC: &str = include_str!("../../../../examples/storm-basic-worker-pool.yaml");
const AUTOSCALE: &str = include_str!("../../../../examples/storm-autoscale-worker-pool.yaml");
const FULL: &str = include_str!("../../../../examples/storm-full-worker-pool.yaml");
const GPU: &str = include_str!("../../../../examples/storm-gpu-worker-pool.yaml");

/// The operator's field manager.
const OPERATOR: &str = workerpool_operator::FIELD_MANAGER;
const CLUSTER: &str = "storm";
const TOPOLOGIES: [&str; 3] = ["my-topology", "streaming-topology", "ml-topology"];
const ZOOKEEPER: [&str; 3] = [
    "zookeeper-0.zookeeper",
    "zookeeper-1.zookeeper",
    "zookeeper-2.zookeeper",
];

/// What the example manifests say about each pool.
pub struct PoolCase {
    pub name: &'static str,
    pub file: &'static str,
    pub yaml: &'static str,
    pub topology: &'static str,
    /// `spec.replicas` when autoscaling is off.
    pub replicas: Option<i32>,
    /// `(minReplicas, maxReplicas)` when autoscaling is on.
    pub autoscaling: Option<(i32, i32)>,
    pub pdb: bool,
    /// Number of worker slot ports.
    pub ports: usize,
}

pub const POOLS: [PoolCase; 4] = [
    PoolCase {
        name: "my-workers",
        file: "storm-basic-worker-pool.yaml",
        yaml: BASIC,
        topology: "my-topology",
        replicas: Some(3),
        autoscaling: None,
        pdb: false,
        ports: 4,
    },
    PoolCase {
        name: "autoscale-workers",
        file: "storm-autoscale-worker-pool.yaml",
        yaml: AUTOSCALE,
        topology: "streaming-topology",
        replicas: None,
        autoscaling: Some((2, 20)),
        pdb: false,
        ports: 4,
    },
    PoolCase {
        name: "full-workers",
        file: "storm-full-worker-pool.yaml",
        yaml: FULL,
        topology: "my-topology",
        replicas: None,
        autoscaling: Some((2, 10)),
        pdb: true,
        ports: 2,
    },
    PoolCase {
        name: "gpu-workers",
        file: "storm-gpu-worker-pool.yaml",
        yaml: GPU,
        topology: "ml-topology",
        replicas: Some(4),
        autoscaling: None,
        pdb: false,
        ports: 4,
    },
];

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

fn describe_pool(p: &StormWorkerPool) -> String {
    let st = p.status.clone().unwrap_or_default();
    format!(
        "pool {}: phase {:?}, message {:?}, replicas {}/{} ready, deploymentName {:?}, hpaName {:?}, observedGeneration {:?} (generation {:?}), conditions [{}]",
        p.name_any(),
        st.phase,
        st.message,
        st.ready_replicas,
        st.replicas,
        st.deployment_name,
        st.hpa_name,
        st.observed_generation,
        p.metadata.generation,
        summarize_conditions(&st.conditions)
    )
}

async fn get_pool(s: &Scenario, name: &str) -> Result<StormWorkerPool, String> {
    let api: Api<StormWorkerPool> = s.api();
    api.get(name)
        .await
        .obs(&format!("get StormWorkerPool {name}"))
}

/// Waits until the pool is Pending with a Ready=False condition of `reason`.
async fn wait_blocked(s: &Scenario, name: &str, reason: &str) {
    let what = format!("pool {name}: phase Pending with Ready=False reason {reason}");
    s.eventually(&what, WAIT, || async move {
        let p = get_pool(s, name).await?;
        let st = p.status.clone().unwrap_or_default();
        let ok = st.phase == Some(PoolPhase::Pending)
            && condition(&st.conditions, "Ready")
                .is_some_and(|c| c.status == "False" && c.reason == reason);
        ensure(ok, || describe_pool(&p))
    })
    .await;
    s.note(format!("pool {name} is Pending ({reason})"));
}

fn describe_cluster(c: &StormCluster) -> String {
    let st = c.status.clone().unwrap_or_default();
    format!(
        "cluster phase {:?} ({}), leader {:?}, supervisors {:?}, slots {:?}/{:?} free, version {:?}; conditions {}",
        st.phase,
        st.message.unwrap_or_default(),
        st.nimbus_leader,
        st.supervisors,
        st.slots_free,
        st.slots_total,
        st.storm_version,
        summarize_conditions(&st.conditions)
    )
}

async fn get_cluster(s: &Scenario) -> Result<StormCluster, String> {
    let api: Api<StormCluster> = s.api();
    api.get(CLUSTER).await.obs("get StormCluster")
}

fn describe_topology(t: &StormTopology) -> String {
    let st = t.status.clone().unwrap_or_default();
    format!(
        "topology {} phase {:?} ({}), id {:?}, storm status {:?}, workers {:?}, last rebalance {:?}; conditions {}",
        t.name_any(),
        st.phase,
        st.message.unwrap_or_default(),
        st.topology_id,
        st.storm_status,
        st.workers,
        st.last_rebalance,
        summarize_conditions(&st.conditions)
    )
}

/// Waits until the StormTopology `name` has `phase` (and the Storm id `id`, when given).
async fn wait_topology(s: &Scenario, name: &str, phase: TopologyPhase, id: Option<&str>) {
    s.eventually(
        &format!("StormTopology {name} {}", phase.as_str()),
        WAIT,
        || async move {
            let api: Api<StormTopology> = s.api();
            let t = api.get(name).await.obs("get StormTopology")?;
            let st = t.status.clone().unwrap_or_default();
            let ok = st.phase == Some(phase)
                && id.is_none_or(|id| st.topology_id.as_deref() == Some(id));
            ensure(ok, || describe_topology(&t))
        },
    )
    .await;
}

/// The managed cluster's objects: storm.yaml with the Nimbus pods as seeds, the headless
/// Nimbus Service, the Nimbus StatefulSet (uid 1000, so the image's entrypoint never chowns the
/// read-only config), the UI Deployment and Service, all controlled by the cluster.
async fn check_managed_cluster(s: &Scenario) -> Result<(), String> {
    let cluster = get_cluster(s).await?;
    let ns = s.ns.as_str();
    let config_maps: Api<ConfigMap> = s.api();
    let cm = config_maps
        .get("storm-config")
        .await
        .obs("get ConfigMap storm-config")?;
    controlled_by("ConfigMap storm-config", &cm.metadata, &cluster)?;
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("storm.yaml"))
        .cloned()
        .unwrap_or_default();
    let seed = format!("storm-nimbus-0.storm-nimbus.{ns}.svc");
    ensure(
        yaml.contains(&seed) && yaml.contains("zookeeper-0.zookeeper"),
        || format!("storm.yaml lacks the seed {seed} or the ZooKeeper servers:\n{yaml}"),
    )?;
    let services: Api<Service> = s.api();
    let headless = services
        .get("storm-nimbus")
        .await
        .obs("get Service storm-nimbus")?;
    controlled_by("Service storm-nimbus", &headless.metadata, &cluster)?;
    let spec = headless.spec.clone().unwrap_or_default();
    ensure(spec.cluster_ip.as_deref() == Some("None"), || {
        format!(
            "Service storm-nimbus is not headless: {:?}",
            spec.cluster_ip
        )
    })?;
    ensure(spec.ports.iter().flatten().any(|p| p.port == 6627), || {
        "Service storm-nimbus has no port 6627".to_string()
    })?;
    let ui = services.get("storm-ui").await.obs("get Service storm-ui")?;
    controlled_by("Service storm-ui", &ui.metadata, &cluster)?;
    let sets: Api<StatefulSet> = s.api();
    let nimbus = sets
        .get("storm-nimbus")
        .await
        .obs("get StatefulSet storm-nimbus")?;
    controlled_by("StatefulSet storm-nimbus", &nimbus.metadata, &cluster)?;
    let spec = nimbus.spec.clone().unwrap_or_default();
    ensure(spec.service_name.as_deref() == Some("storm-nimbus"), || {
        format!("StatefulSet serviceName {:?}", spec.service_name)
    })?;
    let pod = spec.template.spec.clone().unwrap_or_default();
    let image = pod.containers.first().and_then(|c| c.image.clone());
    ensure(image.as_deref() == Some("storm:2.6.4"), || {
        format!("Nimbus image {image:?}")
    })?;
    let run_as = pod.security_context.as_ref().and_then(|c| c.run_as_user);
    ensure(run_as == Some(1000), || {
        format!("Nimbus runAsUser {run_as:?}")
    })?;
    let deployments: Api<Deployment> = s.api();
    let ui = deployments
        .get("storm-ui")
        .await
        .obs("get Deployment storm-ui")?;
    controlled_by("Deployment storm-ui", &ui.metadata, &cluster)
}

/// The submission Job of `name`: `storm jar` with the downloaded jar, the main class and the
/// topology's name, from the cluster's image, controlled by the topology.
async fn check_submission(s: &Scenario, name: &str, main_class: &str) -> Result<(), String> {
    let topologies: Api<StormTopology> = s.api();
    let topology = topologies.get(name).await.obs("get StormTopology")?;
    let jobs: Api<Job> = s.api();
    let list = jobs.list(&ListParams::default()).await.obs("list Jobs")?;
    let prefix = format!("{name}-submit-");
    let Some(job) = list
        .items
        .iter()
        .find(|j| j.name_any().starts_with(&prefix))
    else {
        let names: Vec<String> = list.items.iter().map(|j| j.name_any()).collect();
        return Err(format!(
            "no Job {prefix}*; Jobs: {names:?}; {}",
            describe_topology(&topology)
        ));
    };
    controlled_by(&format!("Job {}", job.name_any()), &job.metadata, &topology)?;
    let pod = job
        .spec
        .as_ref()
        .and_then(|j| j.template.spec.clone())
        .unwrap_or_default();
    let argv = pod
        .containers
        .first()
        .and_then(|c| c.command.clone())
        .unwrap_or_default();
    let jar = argv.iter().position(|a| a == "/jar/topology.jar");
    let ok = argv.first().map(String::as_str) == Some("storm")
        && argv.get(1).map(String::as_str) == Some("jar")
        && jar.is_some_and(|i| argv.get(i + 1).map(String::as_str) == Some(main_class))
        && argv.iter().any(|a| a == name)
        && argv
            .iter()
            .any(|a| a.contains("storm-nimbus-0.storm-nimbus"));
    ensure(ok, || format!("Job {} runs {argv:?}", job.name_any()))?;
    let image = pod.containers.first().and_then(|c| c.image.clone());
    ensure(image.as_deref() == Some("storm:2.6.4"), || {
        format!("submission image {image:?}")
    })?;
    let fetch = pod
        .init_containers
        .iter()
        .flatten()
        .flat_map(|c| c.command.clone().unwrap_or_default())
        .any(|a| a.contains("storm-starter-2.6.4.jar"));
    ensure(fetch, || {
        "no init container fetches the jar URL".to_string()
    })
}

fn managed_by_label(what: &str, meta: &ObjectMeta) -> Result<(), String> {
    let value = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"));
    ensure(value.map(String::as_str) == Some(OPERATOR), || {
        format!("{what}: label app.kubernetes.io/managed-by is {value:?}")
    })
}

/// Every child of a pool, as the design names them, owned by the pool, as the cluster has
/// them; and the pool's status.
async fn check_children(s: &Scenario, case: &PoolCase) -> Result<(), String> {
    let name = case.name;
    let pool = get_pool(s, name).await?;
    let dep_name = format!("{name}-deployment");
    let deployments: Api<Deployment> = s.api();
    let dep = deployments
        .get_opt(&dep_name)
        .await
        .obs("get Deployment")?
        .ok_or_else(|| {
            format!(
                "Deployment {dep_name} not created yet; {}",
                describe_pool(&pool)
            )
        })?;
    let services: Api<Service> = s.api();
    let svc_name = format!("{name}-headless");
    let svc = services
        .get_opt(&svc_name)
        .await
        .obs("get Service")?
        .ok_or_else(|| format!("Service {svc_name} not created yet"))?;
    let config_maps: Api<ConfigMap> = s.api();
    let cm_name = format!("{name}-storm-config");
    let cm = config_maps
        .get_opt(&cm_name)
        .await
        .obs("get ConfigMap")?
        .ok_or_else(|| format!("ConfigMap {cm_name} not created yet"))?;
    let hpas: Api<HorizontalPodAutoscaler> = s.api();
    let hpa = hpas
        .get_opt(&format!("{name}-hpa"))
        .await
        .obs("get HorizontalPodAutoscaler")?;
    let pdbs: Api<PodDisruptionBudget> = s.api();
    let pdb = pdbs
        .get_opt(&format!("{name}-pdb"))
        .await
        .obs("get PodDisruptionBudget")?;
    check_replica_ownership(case, &dep)?;
    check_objects(case, &pool, &dep, &svc, &cm, hpa.as_ref(), pdb.as_ref())?;
    check_status(case, &pool)
}

/// Design section 3: with autoscaling on, the operator's server-side apply leaves
/// `spec.replicas` to the HPA; with it off, the operator's apply sets it.
fn check_replica_ownership(case: &PoolCase, dep: &Deployment) -> Result<(), String> {
    let what = format!("Deployment {}", dep.name_any());
    ensure(has_apply_entry(&dep.metadata, OPERATOR), || {
        format!("{what}: no managedFields Apply entry of {OPERATOR}")
    })?;
    let operator_owns_replicas =
        applied_field_owned_by(&dep.metadata, OPERATOR, &["f:spec", "f:replicas"]);
    match case.autoscaling {
        Some((min, max)) => {
            ensure(!operator_owns_replicas, || {
                format!(
                    "{what}: autoscaling is on, yet the operator's apply sets spec.replicas (managedFields: {:?})",
                    dep.metadata.managed_fields
                )
            })?;
            // Created at clamp(spec.replicas, min, max), not at the API's default of 1.
            let replicas = dep.spec.as_ref().and_then(|s| s.replicas);
            ensure(replicas.is_some_and(|r| r >= min && r <= max), || {
                format!("{what}: spec.replicas {replicas:?}, want within [{min}, {max}]")
            })
        }
        None => ensure(operator_owns_replicas, || {
            format!("{what}: the operator's apply does not set spec.replicas")
        }),
    }
}

/// The children's content (pure: also checked offline against the operator's builders).
pub fn check_objects(
    case: &PoolCase,
    pool: &StormWorkerPool,
    dep: &Deployment,
    svc: &Service,
    cm: &ConfigMap,
    hpa: Option<&HorizontalPodAutoscaler>,
    pdb: Option<&PodDisruptionBudget>,
) -> Result<(), String> {
    let name = case.name;
    let dep_name = format!("{name}-deployment");
    let what = format!("Deployment {dep_name}");
    controlled_by(&what, &dep.metadata, pool)?;
    managed_by_label(&what, &dep.metadata)?;
    let spec = dep
        .spec
        .as_ref()
        .ok_or_else(|| format!("{what}: no spec"))?;
    if case.autoscaling.is_none() {
        ensure(spec.replicas == case.replicas, || {
            format!(
                "{what}: spec.replicas {:?}, want {:?}",
                spec.replicas, case.replicas
            )
        })?;
    }
    let pod = spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| format!("{what}: no pod template spec"))?;
    let worker = pod
        .containers
        .iter()
        .find(|c| c.name == "worker")
        .ok_or_else(|| format!("{what}: no container \"worker\""))?;
    ensure(worker.image.as_deref() == Some("storm:2.6.4"), || {
        format!(
            "{what}: worker image {:?}, want storm:2.6.4 (the cluster's)",
            worker.image
        )
    })?;
    // The image's storm user, a read-only root, Storm's state and logs on volumes.
    let run_as = pod.security_context.as_ref().and_then(|c| c.run_as_user);
    let read_only = worker
        .security_context
        .as_ref()
        .and_then(|c| c.read_only_root_filesystem);
    ensure(run_as == Some(1000) && read_only == Some(true), || {
        format!(
            "{what}: runAsUser {run_as:?} and readOnlyRootFilesystem {read_only:?}, want 1000 and true"
        )
    })?;
    let mounts: Vec<&str> = worker
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    ensure(
        ["/conf", "/data", "/logs", "/tmp"]
            .iter()
            .all(|p| mounts.contains(p)),
        || format!("{what}: the worker mounts {mounts:?}, want /conf, /data, /logs and /tmp"),
    )?;
    let config_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "storm-config")
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone());
    ensure(
        config_volume == Some(format!("{name}-storm-config")),
        || format!("{what}: volume storm-config refers to ConfigMap {config_volume:?}"),
    )?;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    match name {
        "my-workers" => {
            let requests = worker.resources.as_ref().and_then(|r| r.requests.clone());
            let cpu = requests
                .as_ref()
                .and_then(|r| r.get("cpu"))
                .map(|q| q.0.clone());
            ensure(cpu.as_deref() == Some("1"), || {
                format!("{what}: worker cpu request {cpu:?}, want \"1\" from the template")
            })?;
        }
        "gpu-workers" => {
            let accelerator = pod
                .node_selector
                .as_ref()
                .and_then(|n| n.get("accelerator"))
                .cloned();
            ensure(accelerator.as_deref() == Some("nvidia-tesla-v100"), || {
                format!("{what}: nodeSelector accelerator {accelerator:?}")
            })?;
            let gpu = worker
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("nvidia.com/gpu"))
                .map(|q| q.0.clone());
            ensure(gpu.as_deref() == Some("1"), || {
                format!("{what}: nvidia.com/gpu limit {gpu:?}")
            })?;
        }
        "full-workers" => {
            ensure(
                pod.containers.iter().any(|c| c.name == "log-shipper"),
                || format!("{what}: the log-shipper sidecar is missing"),
            )?;
            ensure(
                pod.service_account_name.as_deref() == Some("storm-worker"),
                || format!("{what}: serviceAccountName {:?}", pod.service_account_name),
            )?;
            let pull = pod
                .image_pull_secrets
                .iter()
                .flatten()
                .any(|s| s.name == "registry-credentials");
            ensure(pull, || {
                format!("{what}: imagePullSecrets {:?}", pod.image_pull_secrets)
            })?;
            ensure(
                !pod.tolerations
                    .iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .is_empty(),
                || format!("{what}: the tolerations are missing"),
            )?;
            let team = template_labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .cloned();
            ensure(team.as_deref() == Some("streaming"), || {
                format!("{what}: pod template label team {team:?}")
            })?;
        }
        _ => {}
    }

    // Headless Service
    let what = format!("Service {}", svc.name_any());
    controlled_by(&what, &svc.metadata, pool)?;
    managed_by_label(&what, &svc.metadata)?;
    let svc_spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| format!("{what}: no spec"))?;
    ensure(svc_spec.cluster_ip.as_deref() == Some("None"), || {
        format!(
            "{what}: clusterIP {:?}, want None (headless)",
            svc_spec.cluster_ip
        )
    })?;
    let ports = svc_spec.ports.as_ref().map_or(0, Vec::len);
    ensure(ports == case.ports, || {
        format!("{what}: {ports} ports, want {} slot ports", case.ports)
    })?;
    let instance = svc_spec
        .selector
        .as_ref()
        .and_then(|s| s.get("app.kubernetes.io/instance"))
        .cloned();
    ensure(instance.as_deref() == Some(name), || {
        format!("{what}: selector app.kubernetes.io/instance {instance:?}")
    })?;

    // ConfigMap with storm.yaml
    let what = format!("ConfigMap {}", cm.name_any());
    controlled_by(&what, &cm.metadata, pool)?;
    managed_by_label(&what, &cm.metadata)?;
    let storm_yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("storm.yaml"))
        .ok_or_else(|| format!("{what}: no key storm.yaml"))?;
    let conf: serde_json::Value =
        serde_yaml::from_str(storm_yaml).obs(&format!("{what}: storm.yaml is not YAML"))?;
    ensure(conf["storm.zookeeper.servers"] == json!(ZOOKEEPER), || {
        format!(
            "{what}: storm.zookeeper.servers is {}, want the cluster's {ZOOKEEPER:?}",
            conf["storm.zookeeper.servers"]
        )
    })?;
    // The managed cluster's seeds: its Nimbus pods' stable DNS names.
    let seed = format!(
        "storm-nimbus-0.storm-nimbus.{}.svc",
        pool.namespace().unwrap_or_default()
    );
    ensure(conf["nimbus.seeds"] == json!([seed]), || {
        format!("{what}: nimbus.seeds is {}", conf["nimbus.seeds"])
    })?;
    ensure(conf["storm.zookeeper.port"] == json!(2181), || {
        format!(
            "{what}: storm.zookeeper.port (from the cluster's stormConfig) is {}",
            conf["storm.zookeeper.port"]
        )
    })?;
    let slots = conf["supervisor.slots.ports"]
        .as_array()
        .map_or(0, Vec::len);
    ensure(slots == case.ports, || {
        format!(
            "{what}: supervisor.slots.ports is {}",
            conf["supervisor.slots.ports"]
        )
    })?;
    if name == "full-workers" {
        let childopts = conf["worker.childopts"].as_str().unwrap_or_default();
        ensure(
            childopts.starts_with("-Xmx%HEAP-MEM%m ")
                && childopts.contains("-XX:+HeapDumpOnOutOfMemoryError")
                && childopts.ends_with(" -Xmx2g -XX:+UseG1GC"),
            || {
                format!(
                    "{what}: worker.childopts is {childopts:?}, want Storm's defaults then jvmOpts"
                )
            },
        )?;
        ensure(conf["topology.message.timeout.secs"] == json!(60), || {
            format!(
                "{what}: workerConfig entry topology.message.timeout.secs is {}",
                conf["topology.message.timeout.secs"]
            )
        })?;
    }

    // HorizontalPodAutoscaler (autoscaling/v2)
    let hpa_name = format!("{name}-hpa");
    match (case.autoscaling, hpa) {
        (Some((min, max)), Some(hpa)) => {
            let what = format!("HorizontalPodAutoscaler {hpa_name}");
            controlled_by(&what, &hpa.metadata, pool)?;
            let spec = hpa
                .spec
                .as_ref()
                .ok_or_else(|| format!("{what}: no spec"))?;
            let target = &spec.scale_target_ref;
            ensure(
                target.kind == "Deployment"
                    && target.name == dep_name
                    && target.api_version.as_deref() == Some("apps/v1"),
                || format!("{what}: scaleTargetRef {target:?}"),
            )?;
            ensure(
                spec.min_replicas == Some(min) && spec.max_replicas == max,
                || {
                    format!(
                        "{what}: min {:?} max {}, want {min} and {max}",
                        spec.min_replicas, spec.max_replicas
                    )
                },
            )?;
            // The operator evaluates storm_pending_messages itself from the Storm UI: the HPA,
            // which nothing would serve it to, does not carry it.
            let storm_metric = spec.metrics.iter().flatten().any(|m| {
                m.pods
                    .as_ref()
                    .is_some_and(|p| p.metric.name == "storm_pending_messages")
            });
            ensure(!storm_metric, || {
                format!(
                    "{what}: carries storm_pending_messages, which nothing serves: {:?}",
                    spec.metrics
                )
            })?;
            let cpu = spec.metrics.iter().flatten().any(|m| {
                m.resource
                    .as_ref()
                    .is_some_and(|r| r.name == "cpu" && r.target.average_utilization == Some(70))
            });
            ensure(cpu, || {
                format!("{what}: no cpu Utilization 70 metric: {:?}", spec.metrics)
            })?;
        }
        (Some(_), None) => {
            return Err(format!(
                "HorizontalPodAutoscaler {hpa_name} not created yet"
            ));
        }
        (None, Some(_)) => {
            return Err(format!(
                "HorizontalPodAutoscaler {hpa_name} exists although autoscaling is off"
            ));
        }
        (None, None) => {}
    }

    // PodDisruptionBudget
    let pdb_name = format!("{name}-pdb");
    match (case.pdb, pdb) {
        (true, Some(pdb)) => {
            let what = format!("PodDisruptionBudget {pdb_name}");
            controlled_by(&what, &pdb.metadata, pool)?;
            let spec = pdb
                .spec
                .as_ref()
                .ok_or_else(|| format!("{what}: no spec"))?;
            ensure(spec.max_unavailable == Some(IntOrString::Int(1)), || {
                format!("{what}: maxUnavailable {:?}, want 1", spec.max_unavailable)
            })?;
            let selected = spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("app.kubernetes.io/instance"))
                .cloned();
            ensure(selected.as_deref() == Some(name), || {
                format!("{what}: selector app.kubernetes.io/instance {selected:?}")
            })?;
        }
        (true, None) => return Err(format!("PodDisruptionBudget {pdb_name} not created yet")),
        (false, Some(_)) => {
            return Err(format!(
                "PodDisruptionBudget {pdb_name} exists although none is configured"
            ));
        }
        (false, None) => {}
    }

    Ok(())
}

/// The pool's status after its children were applied.
fn check_status(case: &PoolCase, pool: &StormWorkerPool) -> Result<(), String> {
    let dep_name = format!("{}-deployment", case.name);
    let hpa_name = format!("{}-hpa", case.name);
    let st = pool.status.clone().unwrap_or_default();
    let want_hpa = case.autoscaling.map(|_| hpa_name.clone());
    let ok = st.deployment_name.as_deref() == Some(dep_name.as_str())
        && st.hpa_name == want_hpa
        && st.observed_generation == pool.metadata.generation
        && st.phase.is_some_and(|p| p != PoolPhase::Failed)
        && condition(&st.conditions, "Ready").is_some()
        && condition(&st.conditions, "Autoscaling").is_some_and(|c| match case.autoscaling {
            Some(_) => c.reason != "Disabled",
            None => c.reason == "Disabled",
        });
    ensure(ok, || {
        format!(
            "status not as expected (want deploymentName {dep_name}, hpaName {want_hpa:?}, observedGeneration = generation, a phase other than Failed, Ready and Autoscaling conditions): {}",
            describe_pool(pool)
        )
    })
}

/// The CRD's CEL rules, evaluated by the real API server (dry-run creates).
async fn cel_rules(s: &Scenario) {
    let mut pool: StormWorkerPool = serde_yaml::from_str(AUTOSCALE)
        .unwrap_or_else(|e| s.fail(format!("{}: {e}", POOLS[1].file)));
    pool.metadata.name = Some("cel-min-above-max".into());
    if let Some(auto) = pool.spec.autoscaling.as_mut() {
        auto.min_replicas = Some(5);
        auto.max_replicas = Some(2);
    }
    expect_rejected(
        s,
        "a pool with autoscaling.minReplicas 5 > maxReplicas 2",
        &pool,
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
    )
    .await;

    let mut pool: StormWorkerPool =
        serde_yaml::from_str(BASIC).unwrap_or_else(|e| s.fail(format!("{}: {e}", POOLS[0].file)));
    pool.metadata.name = Some("cel-pdb-both".into());
    pool.spec.pod_disruption_budget = Some(PodDisruptionBudgetSpec {
        min_available: Some(IntOrString::Int(1)),
        max_unavailable: Some(IntOrString::Int(1)),
    });
    expect_rejected(
        s,
        "a pool with both podDisruptionBudget.minAvailable and maxUnavailable",
        &pool,
        "set exactly one of minAvailable and maxUnavailable",
    )
    .await;

    // Keys the operator wires, and ZooKeeper servers with a port (the example cluster, changed).
    let example = CLUSTER_AND_TOPOLOGIES
        .split("\n---")
        .next()
        .unwrap_or_default();
    let cluster: StormCluster = serde_yaml::from_str(example).unwrap_or_else(|e| {
        s.fail(format!(
            "the StormCluster of storm-cluster-and-topologies.yaml: {e}"
        ))
    });
    let mut ui_port = cluster.clone();
    ui_port.metadata.name = Some("cel-ui-port".into());
    ui_port
        .spec
        .storm_config
        .get_or_insert_default()
        .insert("ui.port".into(), json!(9090));
    expect_rejected(
        s,
        "a cluster whose stormConfig sets ui.port",
        &ui_port,
        "stormConfig must not set ui.port: a Managed cluster's UI listens on 8080",
    )
    .await;
    let mut zk_port = cluster;
    zk_port.metadata.name = Some("cel-zk-port".into());
    zk_port.spec.zookeeper_servers = vec!["zk:2181".into()];
    expect_rejected(
        s,
        "a cluster with the ZooKeeper server zk:2181",
        &zk_port,
        "zookeeperServers entries are host names without a port: Storm appends storm.zookeeper.port",
    )
    .await;
}

/// Which way the readiness simulation reached its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    /// A patch of the Deployment's status made the pool Running (no pods: no controller-manager
    /// creates them, nor resets the patched status).
    DeploymentStatus,
    /// The pods, marked Ready through their status subresource, made the pool Running.
    PodsReady,
    /// Neither could be observed; the pool reports `0/N worker(s) are ready`.
    Pending,
}

/// Simulates ready workers of `my-workers` where no node exists, and checks the pool's status
/// follows: by marking its pods Ready where a controller-manager created them (a stable state:
/// the rebalance that follows needs the ready slots to stay), else by patching the Deployment's
/// status (without a deployment controller nothing resets it). Every status the pool takes is
/// recorded through a watch.
async fn simulate_readiness(s: &Scenario) -> Readiness {
    let name = "my-workers";
    let replicas = 3;
    let want = format!("All {replicas} worker(s) are ready");
    let want = want.as_str();
    let pools: Api<StormWorkerPool> = s.api();
    type Seen = Arc<Mutex<Vec<(Option<PoolPhase>, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let stream = watcher(
        pools.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                if let Ok(pool) = item {
                    let st = pool.status.unwrap_or_default();
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((st.phase, st.message));
                }
            }
        })
    };
    let seen_running = |seen: &Seen| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(phase, message)| {
                *phase == Some(PoolPhase::Running) && message.as_deref() == Some(want)
            })
    };
    let history = |seen: &Seen| format!("{:?}", seen.lock().unwrap_or_else(|p| p.into_inner()));
    let seen_ref = &seen;
    s.eventually("the watch on my-workers to start", WAIT, || async move {
        ensure(
            !seen_ref
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty(),
            || "no event yet".to_string(),
        )
    })
    .await;

    let dep_name = format!("{name}-deployment");
    let mut outcome = Readiness::Pending;
    // 1. Where a controller-manager creates the Deployment's pods, mark them Ready: the
    //    ReplicaSet and deployment controllers then report ready replicas themselves, and keep
    //    doing so (a patched Deployment status would be reset by them at once).
    {
        let pods: Api<Pod> = s.api();
        let pods_ref = &pods;
        let selector =
            format!("app.kubernetes.io/name=storm-worker,app.kubernetes.io/instance={name}");
        let selector = selector.as_str();
        let dep_ref = dep_name.as_str();
        let found = s
            .within(Duration::from_secs(15), || async move {
                let list = pods_ref
                    .list(&ListParams::default().labels(selector))
                    .await
                    .obs("list pods")?;
                let live: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(ResourceExt::name_any)
                    .collect();
                ensure(live.len() == replicas as usize, || {
                    format!("{} pod(s) of {dep_ref}: {live:?}", live.len())
                })?;
                Ok(live)
            })
            .await;
        match found {
            Ok(names) => {
                let patch = json!({"status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Initialized", "status": "True"},
                        {"type": "ContainersReady", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                }});
                let mut patched = true;
                for pod in &names {
                    if let Err(e) = pods
                        .patch_status(pod, &merge_params(), &Patch::Merge(&patch))
                        .await
                    {
                        s.note(format!("cannot mark pod {pod} Ready: {e}"));
                        patched = false;
                    }
                }
                if patched {
                    let running = s
                        .within(Duration::from_secs(30), || async move {
                            ensure(seen_running(seen_ref), || history(seen_ref))
                        })
                        .await;
                    if running.is_ok() {
                        outcome = Readiness::PodsReady;
                    }
                }
            }
            Err(last) => s.note(format!(
                "the pods of {dep_name} did not appear (no ReplicaSet controller?): {last}"
            )),
        }
    }
    // 2. Without pods, patch the Deployment's status subresource, a few times.
    if outcome == Readiness::Pending {
        let deployments: Api<Deployment> = s.api();
        for attempt in 1..=3 {
            let dep = match deployments.get(&dep_name).await {
                Ok(d) => d,
                Err(e) => s.fail(format!("get Deployment {dep_name}: {e}")),
            };
            let patch = json!({"status": {
                "observedGeneration": dep.metadata.generation,
                "replicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "updatedReplicas": replicas,
            }});
            if let Err(e) = deployments
                .patch_status(&dep_name, &merge_params(), &Patch::Merge(&patch))
                .await
            {
                s.note(format!("patching the status of {dep_name} failed: {e}"));
            }
            let running = s
                .within(Duration::from_secs(5), || async move {
                    ensure(seen_running(seen_ref), || history(seen_ref))
                })
                .await;
            if running.is_ok() {
                outcome = Readiness::DeploymentStatus;
                break;
            }
            s.note(format!(
                "attempt {attempt}: the pool did not report Running after the Deployment status patch (the deployment controller resets it)"
            ));
        }
    }
    recorder.abort();

    match outcome {
        Readiness::PodsReady => {
            // The state is stable now: the whole status and the metrics must agree.
            s.eventually(
                "my-workers Running with Ready=True WorkersReady",
                WAIT,
                || async move {
                    let p = get_pool(s, name).await?;
                    let st = p.status.clone().unwrap_or_default();
                    let ok = st.phase == Some(PoolPhase::Running)
                        && st.message.as_deref() == Some(want)
                        && st.ready_replicas == replicas
                        && condition(&st.conditions, "Ready")
                            .is_some_and(|c| c.status == "True" && c.reason == "WorkersReady");
                    ensure(ok, || describe_pool(&p))
                },
            )
            .await;
            let ns = s.ns.as_str();
            s.eventually(
                "storm_worker_pool_replicas{state=\"ready\"} 3",
                WAIT,
                || async move {
                    let body = s.metrics().await?;
                    let line = find_series(
                        &body,
                        "storm_worker_pool_replicas",
                        &[("pool", name), ("namespace", ns), ("state", "ready")],
                    )?;
                    ensure(line.ends_with(" 3"), || line.clone())
                },
            )
            .await;
        }
        Readiness::Pending => {
            let want_pending = format!("0/{replicas} worker(s) are ready");
            let p = get_pool(s, name).await.unwrap_or_else(|e| s.fail(e));
            let st = p.status.clone().unwrap_or_default();
            if st.phase != Some(PoolPhase::Pending)
                || st.message.as_deref() != Some(want_pending.as_str())
            {
                s.fail(format!(
                    "readiness could not be simulated, and the pool is not Pending with \"{want_pending}\": {}; statuses seen: {}",
                    describe_pool(&p),
                    history(&seen)
                ));
            }
        }
        Readiness::DeploymentStatus => {}
    }
    s.note(format!(
        "readiness of my-workers: {outcome:?}; pool statuses seen: {}",
        history(&seen)
    ));
    outcome
}

/// Turns autoscaling on again for `autoscale-workers` and watches the Deployment's
/// `spec.replicas` through the hand-over.
async fn hand_back_to_the_hpa(s: &Scenario) {
    let deployments: Api<Deployment> = s.api();
    let dep_name = "autoscale-workers-deployment";
    type Seen = Arc<Mutex<Vec<Option<i32>>>>;
    let seen: Seen = Arc::default();
    let stream = watcher(
        deployments.clone(),
        watcher::Config::default().fields(&format!("metadata.name={dep_name}")),
    )
    .applied_objects()
    .boxed();
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                if let Ok(dep) = item {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(dep.spec.and_then(|s| s.replicas));
                }
            }
        })
    };
    let seen_ref = &seen;
    let history = |seen: &Seen| format!("{:?}", seen.lock().unwrap_or_else(|p| p.into_inner()));
    s.eventually(
        "the watch on autoscale-workers-deployment to start",
        WAIT,
        || async move {
            let seen = seen_ref.lock().unwrap_or_else(|p| p.into_inner());
            ensure(seen.last() == Some(&Some(2)), || {
                format!("replicas seen: {seen:?}")
            })
        },
    )
    .await;

    let pools: Api<StormWorkerPool> = s.api();
    let patch = json!({"spec": {"autoscaling": {"enabled": true}}});
    if let Err(e) = pools
        .patch("autoscale-workers", &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!(
            "cannot turn autoscaling on again on autoscale-workers: {e}"
        ));
    }
    let deployments_ref = &deployments;
    let handed_over = || async move {
        let hpas: Api<HorizontalPodAutoscaler> = s.api();
        let hpa = hpas.get_opt("autoscale-workers-hpa").await.obs("get HPA")?;
        ensure(hpa.is_some(), || {
            "HPA autoscale-workers-hpa not recreated yet".to_string()
        })?;
        let dep = deployments_ref.get(dep_name).await.obs("get Deployment")?;
        let replicas = dep.spec.as_ref().and_then(|d| d.replicas);
        ensure(replicas == Some(2), || {
            format!("Deployment spec.replicas {replicas:?}")
        })?;
        ensure(
            !applied_field_owned_by(&dep.metadata, OPERATOR, &["f:spec", "f:replicas"]),
            || "the operator's apply still sets spec.replicas".to_string(),
        )?;
        let p = get_pool(s, "autoscale-workers").await?;
        let st = p.status.clone().unwrap_or_default();
        ensure(
            st.hpa_name.as_deref() == Some("autoscale-workers-hpa"),
            || describe_pool(&p),
        )
    };
    s.eventually(
        "autoscale-workers with its HPA again, replicas 2 no longer set by the operator",
        WAIT,
        handed_over,
    )
    .await;
    s.consistently(
        "replicas 2 under the HPA",
        Duration::from_secs(3),
        handed_over,
    )
    .await;
    recorder.abort();
    let values = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if values.iter().any(|r| *r != Some(2)) {
        s.fail(format!(
            "spec.replicas of {dep_name} left 2 during the hand-over to the HPA: {}",
            history(&seen)
        ));
    }
    s.note(format!(
        "autoscale-workers: handed back to the HPA, spec.replicas seen {}",
        history(&seen)
    ));
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    cel_rules(s).await;
    s.wait_default_service_account().await;
    let pools: Api<StormWorkerPool> = s.api();

    // A pool whose topology does not exist yet.
    s.apply_yaml(POOLS[0].file, POOLS[0].yaml, |_| {}).await;
    wait_blocked(s, "my-workers", "TopologyNotFound").await;
    s.expect_event(
        "StormWorkerPool",
        "my-workers",
        "Warning",
        "TopologyNotFound",
        "my-topology",
    )
    .await;

    // The managed cluster and its topologies: the operator creates the cluster's daemons, but
    // the UI Service's DNS name does not resolve from the operator's host, so nothing runs yet.
    s.apply_yaml(
        "storm-cluster-and-topologies.yaml",
        CLUSTER_AND_TOPOLOGIES,
        |_| {},
    )
    .await;
    for case in &POOLS[1..] {
        s.apply_yaml(case.file, case.yaml, |_| {}).await;
    }
    s.eventually("the managed cluster's daemons", WAIT, || {
        check_managed_cluster(s)
    })
    .await;
    s.note("StormCluster storm: Nimbus StatefulSet, UI Deployment, Services and storm.yaml as designed");
    s.eventually(
        "the cluster Pending while its UI is unreachable",
        WAIT,
        || async move {
            let c = get_cluster(s).await?;
            let st = c.status.clone().unwrap_or_default();
            let ok = st.phase == Some(ClusterPhase::Pending)
                && condition(&st.conditions, "Reachable").is_some_and(|c| c.status == "False");
            ensure(ok, || describe_cluster(&c))
        },
    )
    .await;
    for case in &POOLS {
        wait_blocked(s, case.name, "TopologyNotRunning").await;
    }

    // The UI, served from Storm's response shapes: the cluster runs, the observed topology is
    // found by name, the two with a jar get their submission Jobs.
    let ui = StormUi::start().await;
    ui.add("ml-topology", "ACTIVE", 3);
    let clusters: Api<StormCluster> = s.api();
    let patch = json!({"spec": {"uiUrl": ui.url}});
    if let Err(e) = clusters
        .patch(CLUSTER, &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!("cannot set the uiUrl of the cluster: {e}"));
    }
    s.eventually(
        "the cluster Running with Storm's figures",
        WAIT,
        || async move {
            let c = get_cluster(s).await?;
            let st = c.status.clone().unwrap_or_default();
            let ok = st.phase == Some(ClusterPhase::Running)
                && st.nimbus_leader.as_deref() == Some(storm_ui::LEADER)
                && st.supervisors == Some(2)
                && st.slots_total == Some(8)
                && st.slots_free == Some(5)
                && st.storm_version.as_deref() == Some("2.8.8");
            ensure(ok, || describe_cluster(&c))
        },
    )
    .await;
    s.note("StormCluster storm: Running, leader, supervisors and slots from the UI REST API");
    wait_topology(
        s,
        "ml-topology",
        TopologyPhase::Running,
        Some("ml-topology-1-1700000000"),
    )
    .await;
    for (name, main_class) in [
        ("my-topology", "org.apache.storm.starter.WordCountTopology"),
        (
            "streaming-topology",
            "org.apache.storm.starter.ExclamationTopology",
        ),
    ] {
        s.eventually(&format!("the submission Job of {name}"), WAIT, || {
            check_submission(s, name, main_class)
        })
        .await;
        wait_topology(s, name, TopologyPhase::Submitting, None).await;
    }
    s.note(
        "my-topology, streaming-topology: submission Jobs run `storm jar` from the cluster's image",
    );
    // What a successful `storm jar` does: Nimbus lists the topologies.
    ui.add("my-topology", "ACTIVE", 3);
    // Fewer executors than one ready pod has slots (4): whenever the rebalance comes, it asks
    // for 2 workers, not for the slots.
    ui.set_executors("my-topology", 2);
    ui.add("streaming-topology", "ACTIVE", 2);
    for name in ["my-topology", "streaming-topology"] {
        let id = format!("{name}-1-1700000000");
        wait_topology(s, name, TopologyPhase::Running, Some(&id)).await;
    }
    let requests = ui.requests();
    let by_name: Vec<&String> = requests
        .iter()
        .filter(|r| {
            TOPOLOGIES
                .iter()
                .any(|t| r.ends_with(&format!("/topology/{t}")))
        })
        .collect();
    ensure(by_name.is_empty(), || {
        format!("the operator called a /topology/{{id}} path with a name: {by_name:?}")
    })
    .unwrap_or_else(|e| s.fail(e));

    // Every pool gets its children.
    for case in &POOLS {
        let what = format!("the children of pool {} ({})", case.name, case.file);
        s.eventually(&what, WAIT, || check_children(s, case)).await;
        s.note(format!(
            "pool {}: children and status as designed",
            case.name
        ));
    }
    for case in &POOLS {
        let dep = format!("{}-deployment", case.name);
        s.expect_event("StormWorkerPool", case.name, "Normal", "Created", &dep)
            .await;
    }
    // 4 slots in the basic example's 1Gi: the sizing says they cannot fit.
    s.eventually("my-workers MemoryFit=False", WAIT, || async move {
        let p = get_pool(s, "my-workers").await?;
        let st = p.status.clone().unwrap_or_default();
        ensure(
            condition(&st.conditions, "MemoryFit")
                .is_some_and(|c| c.status == "False" && c.reason == "SlotsDoNotFit"),
            || describe_pool(&p),
        )
    })
    .await;
    s.expect_event(
        "StormWorkerPool",
        "my-workers",
        "Warning",
        "SlotsDoNotFit",
        "memory request is 1024 MiB",
    )
    .await;
    s.note("my-workers: 4 slots in 1Gi reported (MemoryFit=False, Warning SlotsDoNotFit)");
    let ns = s.ns.as_str();
    s.eventually("the pool series on /metrics", WAIT, || async move {
        let body = s.metrics().await?;
        for case in &POOLS {
            find_series(
                &body,
                "storm_worker_pool_replicas",
                &[
                    ("pool", case.name),
                    ("namespace", ns),
                    ("topology", case.topology),
                    ("state", "desired"),
                ],
            )?;
            find_series(
                &body,
                "storm_worker_pool_info",
                &[
                    ("pool", case.name),
                    ("namespace", ns),
                    ("topology", case.topology),
                ],
            )?;
        }
        Ok(())
    })
    .await;

    // Ready workers, simulated without nodes.
    simulate_readiness(s).await;
    rebalance_and_suspend(s, &ui).await;

    // Autoscaling off: the HPA goes, the operator takes spec.replicas back.
    let patch = json!({"spec": {"autoscaling": {"enabled": false}}});
    if let Err(e) = pools
        .patch("autoscale-workers", &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!(
            "cannot turn autoscaling off on autoscale-workers: {e}"
        ));
    }
    s.eventually(
        "autoscale-workers without HPA and with Deployment spec.replicas 2 owned by the operator",
        WAIT,
        || async move {
            let hpas: Api<HorizontalPodAutoscaler> = s.api();
            let hpa = hpas.get_opt("autoscale-workers-hpa").await.obs("get HPA")?;
            ensure(hpa.is_none(), || {
                "HPA autoscale-workers-hpa still exists".to_string()
            })?;
            let deployments: Api<Deployment> = s.api();
            let dep = deployments
                .get("autoscale-workers-deployment")
                .await
                .obs("get Deployment")?;
            let replicas = dep.spec.as_ref().and_then(|d| d.replicas);
            ensure(replicas == Some(2), || {
                format!("Deployment spec.replicas {replicas:?}")
            })?;
            ensure(
                applied_field_owned_by(&dep.metadata, OPERATOR, &["f:spec", "f:replicas"]),
                || "the operator's apply does not set spec.replicas".to_string(),
            )?;
            let p = get_pool(s, "autoscale-workers").await?;
            let st = p.status.clone().unwrap_or_default();
            let ok = st.hpa_name.is_none()
                && condition(&st.conditions, "Autoscaling")
                    .is_some_and(|c| c.status == "False" && c.reason == "Disabled");
            ensure(ok, || describe_pool(&p))
        },
    )
    .await;
    s.expect_event(
        "StormWorkerPool",
        "autoscale-workers",
        "Normal",
        "Deleted",
        "autoscale-workers-hpa",
    )
    .await;
    s.note("autoscale-workers: HPA deleted, replicas back to 2");

    // Autoscaling back on: the HPA returns and takes spec.replicas over without the count
    // dropping to the API default of 1 on the way (design section 3: hand-over to a second
    // field manager before the operator's apply stops setting it).
    hand_back_to_the_hpa(s).await;

    // The PodDisruptionBudget removed from the spec: the operator deletes the one it owns.
    let patch = json!({"spec": {"podDisruptionBudget": null}});
    if let Err(e) = pools
        .patch("full-workers", &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!(
            "cannot remove the podDisruptionBudget of full-workers: {e}"
        ));
    }
    s.eventually("full-workers-pdb deleted", WAIT, || async move {
        let pdbs: Api<PodDisruptionBudget> = s.api();
        let pdb = pdbs.get_opt("full-workers-pdb").await.obs("get PDB")?;
        ensure(pdb.is_none(), || {
            "full-workers-pdb still exists".to_string()
        })
    })
    .await;
    s.expect_event(
        "StormWorkerPool",
        "full-workers",
        "Normal",
        "Deleted",
        "full-workers-pdb",
    )
    .await;
    s.note("full-workers: PodDisruptionBudget removed from the spec, deleted");

    // An invalid custom metric target: Failed, InvalidSpec, a Warning Event.
    let patch = json!({"spec": {"autoscaling": {"customMetrics": [
        {"name": "storm_pending_messages", "type": "pods", "targetAverageValue": "lots"},
    ]}}});
    if let Err(e) = pools
        .patch("full-workers", &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!("cannot set an invalid metric target on full-workers (the schema must accept it; only the operator can tell): {e}"));
    }
    s.eventually(
        "full-workers Failed with Ready reason InvalidSpec",
        WAIT,
        || async move {
            let p = get_pool(s, "full-workers").await?;
            let st = p.status.clone().unwrap_or_default();
            let ok = st.phase == Some(PoolPhase::Failed)
                && condition(&st.conditions, "Ready").is_some_and(|c| {
                    c.status == "False" && c.reason == "InvalidSpec" && c.message.contains("lots")
                });
            ensure(ok, || describe_pool(&p))
        },
    )
    .await;
    s.expect_event(
        "StormWorkerPool",
        "full-workers",
        "Warning",
        "InvalidSpec",
        "lots",
    )
    .await;
    s.note("full-workers: invalid metric target reported");

    // Deleting a pool removes its children (ownerReferences honoured by the garbage collector).
    if let Err(e) = pools
        .delete("gpu-workers", &DeleteParams::background())
        .await
    {
        s.fail(format!("cannot delete gpu-workers: {e}"));
    }
    s.eventually(
        "the children of gpu-workers to be garbage-collected",
        WAIT,
        || async move {
            let deployments: Api<Deployment> = s.api();
            let services: Api<Service> = s.api();
            let config_maps: Api<ConfigMap> = s.api();
            let mut left = Vec::new();
            if deployments
                .get_opt("gpu-workers-deployment")
                .await
                .obs("get")?
                .is_some()
            {
                left.push("Deployment");
            }
            if services
                .get_opt("gpu-workers-headless")
                .await
                .obs("get")?
                .is_some()
            {
                left.push("Service");
            }
            if config_maps
                .get_opt("gpu-workers-storm-config")
                .await
                .obs("get")?
                .is_some()
            {
                left.push("ConfigMap");
            }
            ensure(left.is_empty(), || format!("still there: {left:?}"))
        },
    )
    .await;
    s.note("gpu-workers: children garbage-collected");
    delete_topologies(s, &ui).await;
    pinned_cluster(s, &ui).await;
    delete_mid_submission(s, &ui).await;
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every container image of a pod spec.
fn images(pod: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Vec<String> {
    pod.map(|p| {
        p.init_containers
            .iter()
            .flatten()
            .chain(&p.containers)
            .filter_map(|c| c.image.clone())
            .collect()
    })
    .unwrap_or_default()
}

/// The submission Jobs of `topology`.
async fn submit_jobs(s: &Scenario, topology: &str) -> Result<Vec<Job>, String> {
    let jobs: Api<Job> = s.api();
    let selector = format!("storm.apache.org/topology={topology},storm.apache.org/job=submit");
    Ok(jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .obs("list Jobs")?
        .items)
}

/// A Managed cluster whose image tag is a digest: its daemons, the submission Job of a topology
/// on it and the Deployment of a pool serving that topology all run `storm@sha256:…`.
async fn pinned_cluster(s: &Scenario, ui: &StormUi) {
    let want = format!("storm@{DIGEST}");
    let manifest = format!(
        "apiVersion: storm.apache.org/v1beta1
kind: StormCluster
metadata: {{name: pinned}}
spec:
  image: {{repository: storm, tag: \"{DIGEST}\"}}
  zookeeperServers: [zookeeper-0.zookeeper]
  uiUrl: {}
---
apiVersion: storm.apache.org/v1beta1
kind: StormTopology
metadata: {{name: pinned-topology}}
spec:
  clusterRef: pinned
  jar: {{url: https://repo.example/pinned.jar}}
  mainClass: org.example.Pinned
---
apiVersion: storm.apache.org/v1beta1
kind: StormWorkerPool
metadata: {{name: pinned-workers}}
spec:
  topologyRef: pinned-topology
  replicas: 1
",
        ui.url
    );
    s.apply_yaml("the digest-pinned cluster", &manifest, |_| {})
        .await;
    let want = want.as_str();
    s.eventually(
        "the pinned cluster's daemons and submission Job on the digest",
        WAIT,
        || async move {
            let sets: Api<StatefulSet> = s.api();
            let deployments: Api<Deployment> = s.api();
            let nimbus = sets.get("pinned-nimbus").await.obs("get StatefulSet")?;
            let ui_dep = deployments.get("pinned-ui").await.obs("get Deployment")?;
            let jobs = submit_jobs(s, "pinned-topology").await?;
            let mut seen = images(nimbus.spec.as_ref().and_then(|x| x.template.spec.as_ref()));
            seen.extend(images(
                ui_dep.spec.as_ref().and_then(|x| x.template.spec.as_ref()),
            ));
            let job_images: Vec<String> = jobs
                .iter()
                .flat_map(|j| images(j.spec.as_ref().and_then(|x| x.template.spec.as_ref())))
                .collect();
            ensure(!job_images.is_empty(), || {
                "no submission Job yet".to_string()
            })?;
            seen.extend(job_images);
            ensure(seen.iter().all(|i| i == want), || {
                format!("images {seen:?}, want {want}")
            })
        },
    )
    .await;
    ui.add("pinned-topology", "ACTIVE", 1);
    s.eventually(
        "the pinned pool's Deployment on the digest",
        WAIT,
        || async move {
            let deployments: Api<Deployment> = s.api();
            let dep = deployments
                .get_opt("pinned-workers-deployment")
                .await
                .obs("get Deployment")?
                .ok_or_else(|| "no Deployment pinned-workers-deployment yet".to_string())?;
            let seen = images(dep.spec.as_ref().and_then(|x| x.template.spec.as_ref()));
            ensure(seen == [want], || format!("images {seen:?}, want {want}"))
        },
    )
    .await;
    s.note(format!(
        "cluster pinned: Nimbus, UI, submission Job and pool Deployment all run {want}"
    ));
}

/// A topology deleted while its submission Job exists: the Job is deleted before the kill, and
/// what the submission put into Storm is killed; nothing is left in Storm or the namespace.
async fn delete_mid_submission(s: &Scenario, ui: &StormUi) {
    let manifest = "apiVersion: storm.apache.org/v1beta1
kind: StormTopology
metadata: {name: orphan}
spec:
  clusterRef: pinned
  killWaitSeconds: 0
  jar: {url: https://repo.example/orphan.jar}
  mainClass: org.example.Orphan
";
    s.apply_yaml("StormTopology orphan", manifest, |_| {}).await;
    s.eventually("the submission Job of orphan", WAIT, || async move {
        let jobs = submit_jobs(s, "orphan").await?;
        ensure(!jobs.is_empty(), || "no submission Job yet".to_string())
    })
    .await;
    let topologies: Api<StormTopology> = s.api();
    if let Err(e) = topologies
        .delete("orphan", &DeleteParams::background())
        .await
    {
        s.fail(format!("cannot delete StormTopology orphan: {e}"));
    }
    // The submission got through just before its Job was stopped.
    let id = ui.add("orphan", "ACTIVE", 1);
    s.eventually(
        "orphan gone from the API and from Storm, its Job deleted",
        WAIT,
        || async move {
            let topologies: Api<StormTopology> = s.api();
            let left = topologies
                .get_opt("orphan")
                .await
                .obs("get StormTopology")?;
            let jobs = submit_jobs(s, "orphan").await?;
            ensure(left.is_none() && jobs.is_empty(), || {
                format!(
                    "StormTopology orphan {}, submission Jobs {:?}",
                    if left.is_some() {
                        "still there"
                    } else {
                        "gone"
                    },
                    jobs.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
                )
            })?;
            ensure(ui.status("orphan").is_none(), || {
                format!("Storm still lists orphan: {:?}", ui.status("orphan"))
            })
        },
    )
    .await;
    let killed = ui
        .requests()
        .iter()
        .any(|r| r.starts_with(&format!("POST /api/v1/topology/{id}/kill/")));
    ensure(killed, || format!("no kill of {id} in {:?}", ui.requests()))
        .unwrap_or_else(|e| s.fail(e));
    s.note(
        "orphan: deleted mid-submission; its Job was deleted first, what it submitted was killed",
    );
}

/// The pools of my-topology have ready slots now: the operator rebalances it with a Job running
/// `storm rebalance my-topology -n <slots>` and records the decision; `suspend` deactivates the
/// topology through the UI REST API by its id, and clearing it activates it again.
async fn rebalance_and_suspend(s: &Scenario, ui: &StormUi) {
    let topologies: Api<StormTopology> = s.api();
    let record = s
        .eventually("a rebalance of my-topology recorded", WAIT, || async move {
            let topologies: Api<StormTopology> = s.api();
            let t = topologies
                .get("my-topology")
                .await
                .obs("get StormTopology")?;
            let st = t.status.clone().unwrap_or_default();
            match st.last_rebalance {
                Some(r) if r.job_name.is_some() && r.to_workers > 0 => Ok(r),
                _ => Err(describe_topology(&t)),
            }
        })
        .await;
    if record.to_workers != 2
        || !record
            .reason
            .contains("capped at the topology's 2 executors")
    {
        s.fail(format!(
            "my-topology has 2 executors and ready slots: expected a rebalance to 2, got {} ({})",
            record.to_workers, record.reason
        ));
    }
    let job_name = record.job_name.clone().unwrap_or_default();
    let to = record.to_workers.to_string();
    s.eventually(&format!("rebalance Job {job_name}"), WAIT, || {
        let job_name = job_name.clone();
        let to = to.clone();
        async move {
            let jobs: Api<Job> = s.api();
            let job = jobs.get(&job_name).await.obs("get rebalance Job")?;
            let argv = job
                .spec
                .as_ref()
                .and_then(|j| j.template.spec.as_ref())
                .and_then(|p| p.containers.first())
                .and_then(|c| c.command.clone())
                .unwrap_or_default();
            let n = argv.iter().position(|a| a == "-n");
            let ok = argv.iter().any(|a| a == "rebalance")
                && argv.iter().any(|a| a == "my-topology")
                && n.is_some_and(|i| argv.get(i + 1) == Some(&to));
            ensure(ok, || format!("Job {job_name} runs {argv:?}"))
        }
    })
    .await;
    s.expect_event("StormTopology", "my-topology", "Normal", "Rebalancing", "")
        .await;
    s.note(format!(
        "my-topology: rebalanced {} → {} workers by Job {} ({})",
        record.from_workers, record.to_workers, job_name, record.reason
    ));
    rebalance_settles(s, ui, &job_name).await;

    let id = "my-topology-1-1700000000";
    for (suspend, op, phase) in [
        (true, "deactivate", TopologyPhase::Suspended),
        (false, "activate", TopologyPhase::Running),
    ] {
        let patch = json!({"spec": {"suspend": suspend}});
        if let Err(e) = topologies
            .patch("my-topology", &merge_params(), &Patch::Merge(&patch))
            .await
        {
            s.fail(format!("cannot set suspend: {suspend} on my-topology: {e}"));
        }
        let expected = format!("POST /api/v1/topology/{id}/{op}");
        s.eventually(&expected, WAIT, || {
            let expected = expected.clone();
            async move {
                let seen = ui.requests();
                ensure(seen.contains(&expected), || {
                    format!(
                        "the UI saw {:?}",
                        seen.iter().rev().take(8).collect::<Vec<_>>()
                    )
                })
            }
        })
        .await;
        wait_topology(s, "my-topology", phase, Some(id)).await;
    }
    s.note("my-topology: suspend deactivated it by id, resume activated it");
}

/// Storm places fewer workers than the rebalance asked for (1 of 2, as its schedulers may):
/// once the rebalance Job has succeeded, my-topology is `Rebalanced=True StormSettled` and is
/// not rebalanced again, even with `minIntervalSeconds: 1` (without the hold it would be asked
/// again every second). Storm's workers and the interval are put back afterwards.
async fn rebalance_settles(s: &Scenario, ui: &StormUi, job_name: &str) {
    let topologies: Api<StormTopology> = s.api();
    let interval = |seconds: i32| json!({"spec": {"rebalance": {"minIntervalSeconds": seconds}}});
    if let Err(e) = topologies
        .patch("my-topology", &merge_params(), &Patch::Merge(&interval(1)))
        .await
    {
        s.fail(format!("cannot set my-topology's minIntervalSeconds: {e}"));
    }
    ui.set_workers("my-topology", 1);
    complete_job(s, job_name).await;
    let topologies = &topologies;
    s.eventually(
        "my-topology Rebalanced=True StormSettled",
        WAIT,
        || async move {
            let t = topologies
                .get("my-topology")
                .await
                .obs("get StormTopology")?;
            let conditions = t.status.as_ref().map(|st| st.conditions.as_slice());
            let settled = condition(conditions.unwrap_or_default(), "Rebalanced")
                .is_some_and(|c| c.status == "True" && c.reason == "StormSettled");
            ensure(settled, || describe_topology(&t))
        },
    )
    .await;
    // Ten intervals: a second rebalance would start within the first.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let jobs: Api<Job> = s.api();
    let rebalances: Vec<String> = jobs
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| s.fail(format!("cannot list Jobs: {e}")))
        .items
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| n.starts_with("my-topology-rebalance-"))
        .collect();
    let last = topologies
        .get("my-topology")
        .await
        .unwrap_or_else(|e| s.fail(format!("cannot get my-topology: {e}")))
        .status
        .and_then(|st| st.last_rebalance)
        .and_then(|r| r.job_name);
    if rebalances != [job_name] || last.as_deref() != Some(job_name) {
        s.fail(format!(
            "Storm settled at 1 of 2 workers: expected no rebalance after {job_name}, found Jobs {rebalances:?}, last rebalance {last:?}"
        ));
    }
    s.expect_event(
        "StormTopology",
        "my-topology",
        "Normal",
        "RebalanceSettled",
        "",
    )
    .await;
    ui.set_workers("my-topology", 2);
    if let Err(e) = topologies
        .patch(
            "my-topology",
            &merge_params(),
            &Patch::Merge(&interval(120)),
        )
        .await
    {
        s.fail(format!(
            "cannot put back my-topology's minIntervalSeconds: {e}"
        ));
    }
    s.note(format!(
        "my-topology: Storm placed 1 of 2 workers after {job_name} succeeded: Rebalanced=True StormSettled, no second rebalance in 10 s at minIntervalSeconds 1"
    ));
}

/// Completes Job `name` as a kubelet would: its pod (created by the controller-manager, never
/// bound here) is reported `Succeeded`, and the controller-manager marks the Job `Complete`.
async fn complete_job(s: &Scenario, name: &str) {
    let pods: Api<Pod> = s.api();
    let selector = format!("job-name={name}");
    let pod = s
        .eventually(&format!("the pod of Job {name}"), WAIT, || {
            let selector = selector.clone();
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .obs("list pods")?;
                list.items
                    .first()
                    .map(ResourceExt::name_any)
                    .ok_or_else(|| format!("no pod with {selector} yet"))
            }
        })
        .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {
        "phase": "Succeeded",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [{
            "name": "rebalance", "image": "storm", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
        }],
    }});
    if let Err(e) = pods
        .patch_status(&pod, &merge_params(), &Patch::Merge(&patch))
        .await
    {
        s.fail(format!(
            "cannot report pod {pod} of Job {name} Succeeded: {e}"
        ));
    }
    let jobs: Api<Job> = s.api();
    s.eventually(&format!("Job {name} Complete"), WAIT, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get(name).await.obs("get Job")?;
            let complete = job_state(&job) == JobState::Succeeded;
            ensure(complete, || format!("Job {name} status {:?}", job.status))
        }
    })
    .await;
}

/// Deleting a topology the operator submitted kills it in Storm (by id) and waits until Nimbus
/// drops it; deleting an observed one kills nothing.
async fn delete_topologies(s: &Scenario, ui: &StormUi) {
    let topologies: Api<StormTopology> = s.api();
    for name in ["streaming-topology", "ml-topology"] {
        if let Err(e) = topologies.delete(name, &DeleteParams::background()).await {
            s.fail(format!("cannot delete StormTopology {name}: {e}"));
        }
    }
    s.eventually("both StormTopologies gone", WAIT, || async move {
        let topologies: Api<StormTopology> = s.api();
        let mut left = Vec::new();
        for name in ["streaming-topology", "ml-topology"] {
            if topologies
                .get_opt(name)
                .await
                .obs("get StormTopology")?
                .is_some()
            {
                left.push(name);
            }
        }
        ensure(left.is_empty(), || format!("still there: {left:?}"))
    })
    .await;
    let kills: Vec<String> = ui
        .requests()
        .into_iter()
        .filter(|r| r.contains("/kill/"))
        .collect();
    ensure(
        kills.len() == 1
            && kills[0].starts_with("POST /api/v1/topology/streaming-topology-1-1700000000/kill/"),
        || format!("kill requests: {kills:?} (one, for the submitted topology, by id)"),
    )
    .unwrap_or_else(|e| s.fail(e));
    ensure(ui.status("streaming-topology").is_none(), || {
        "Storm still lists streaming-topology".to_string()
    })
    .unwrap_or_else(|e| s.fail(e));
    ensure(
        ui.status("ml-topology").as_deref() == Some("ACTIVE"),
        || "the observed ml-topology was touched in Storm".to_string(),
    )
    .unwrap_or_else(|e| s.fail(e));
    s.note(
        "streaming-topology: killed in Storm by id on delete; ml-topology (observed) left running",
    );
}
