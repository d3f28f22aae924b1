//! `workerpool-operator render`: prints, offline, the objects `run` would apply for the
//! resources in the given files, using the same builders as the controllers.
//!
//! A managed StormCluster is rendered as its daemons (ConfigMap, Services, StatefulSet, UI
//! Deployment), a StormTopology with a `jar` as its submission Job (its cluster must be in the
//! input). Pools are rendered as if their topology and cluster were `Running` (both must be in the
//! input); QWorkers as their first reconcile would create them, at `minReplicas` pods with
//! random names. Objects without a uid get the nil uid, so ownerReferences are complete.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use kube::ResourceExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use workerpool_api::qworker::{ScalerConfig, SecretValue};
use workerpool_api::{QWorker, StormCluster, StormTopology, StormWorkerPool};

use crate::brokers::{Credentials, broker_config};
use crate::cli::RenderArgs;
use crate::controllers::{qworker, stormcluster, stormtopology, stormworkerpool};

/// Where a bad document is and what is wrong with it.
#[derive(Debug)]
pub struct InputError {
    /// File name (`-` for stdin).
    pub file: String,
    /// Index of the document in the file, from 0.
    pub document: usize,
    /// Field path inside the document, if known.
    pub path: Option<String>,
    /// What was expected.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(p) = &self.path {
            write!(f, ", field {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for InputError {}

/// One parsed input document.
#[derive(Clone)]
struct Doc {
    file: String,
    index: usize,
    value: serde_yaml::Value,
}

impl Doc {
    fn error(&self, path: Option<String>, message: impl Into<String>) -> InputError {
        InputError {
            file: self.file.clone(),
            document: self.index,
            path,
            message: message.into(),
        }
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        serde_path_to_error::deserialize(self.value.clone()).map_err(|e| {
            let path = e.path().to_string();
            self.error((path != ".").then_some(path), e.into_inner().to_string())
        })
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))
}

fn documents(name: &str, text: &str) -> Result<Vec<Doc>, InputError> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| InputError {
            file: name.to_string(),
            document: index,
            path: None,
            message: format!("not YAML: {e}"),
        })?;
        if !value.is_null() {
            docs.push(Doc {
                file: name.to_string(),
                index,
                value,
            });
        }
    }
    Ok(docs)
}

const NIL_UID: &str = "00000000-0000-0000-0000-000000000000";

fn complete<K: kube::Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| NIL_UID.into());
    obj
}

/// A StormTopology or StormCluster of the input.
enum StormResource {
    Topology(StormTopology),
    Cluster(StormCluster),
}

#[derive(Default)]
struct Inputs {
    pools: Vec<(Doc, StormWorkerPool)>,
    topologies: BTreeMap<(String, String), StormTopology>,
    clusters: BTreeMap<(String, String), StormCluster>,
    /// Every topology and cluster with its document, in input order.
    storm: Vec<(Doc, StormResource)>,
    qworkers: Vec<(Doc, QWorker)>,
    scalers: Vec<(Doc, ScalerConfig)>,
}

fn kind_of(doc: &Doc) -> Result<(String, String), InputError> {
    let field = |k: &str| {
        doc.value
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| doc.error(Some(k.into()), format!("missing {k}")))
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn classify(docs: Vec<Doc>) -> Result<Inputs, InputError> {
    let mut inputs = Inputs::default();
    for doc in docs {
        let (api_version, kind) = kind_of(&doc)?;
        match (api_version.as_str(), kind.as_str()) {
            ("storm.apache.org/v1beta1", "StormWorkerPool") => {
                let p = complete(doc.parse::<StormWorkerPool>()?);
                inputs.pools.push((doc, p));
            }
            ("storm.apache.org/v1beta1", "StormTopology") => {
                let t = complete(doc.parse::<StormTopology>()?);
                inputs
                    .topologies
                    .insert((t.namespace().unwrap_or_default(), t.name_any()), t.clone());
                inputs.storm.push((doc, StormResource::Topology(t)));
            }
            ("storm.apache.org/v1beta1", "StormCluster") => {
                let c = complete(doc.parse::<StormCluster>()?);
                inputs
                    .clusters
                    .insert((c.namespace().unwrap_or_default(), c.name_any()), c.clone());
                inputs.storm.push((doc, StormResource::Cluster(c)));
            }
            ("quickube.com/v1alpha1", "QWorker") => {
                let q = complete(doc.parse::<QWorker>()?);
                inputs.qworkers.push((doc, q));
            }
            ("quickube.com/v1alpha1", "ScalerConfig") => {
                let s = complete(doc.parse::<ScalerConfig>()?);
                inputs.scalers.push((doc, s));
            }
            ("v1", "Secret") => {}
            _ => {
                return Err(doc.error(
                    Some("kind".into()),
                    format!(
                        "{api_version} {kind} is not a resource of this operator (expected StormWorkerPool, StormTopology, StormCluster, QWorker or ScalerConfig)"
                    ),
                ));
            }
        }
    }
    Ok(inputs)
}

fn to_json<T: serde::Serialize>(obj: &T) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(obj)?)
}

/// A managed cluster's daemons (an External cluster has none).
fn render_cluster(
    doc: &Doc,
    cluster: &StormCluster,
    out: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    stormcluster::build::validate(cluster).map_err(|e| doc.error(None, e.to_string()))?;
    if cluster.spec.mode == workerpool_api::ClusterMode::Managed {
        let c =
            stormcluster::build::children(cluster).map_err(|e| doc.error(None, e.to_string()))?;
        out.push(to_json(&c.config_map)?);
        out.push(to_json(&c.nimbus_service)?);
        out.push(to_json(&c.nimbus)?);
        out.push(to_json(&c.ui)?);
        out.push(to_json(&c.ui_service)?);
    }
    Ok(())
}

/// A submitted topology's Job, as if it were not in Storm yet (its cluster must be in the
/// input); nothing for a topology without a jar.
fn render_topology(
    doc: &Doc,
    topology: &StormTopology,
    inputs: &Inputs,
    out: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    stormtopology::build::validate(topology).map_err(|e| doc.error(None, e.to_string()))?;
    if topology.spec.jar.is_none() {
        return Ok(());
    }
    let ns = topology.namespace().unwrap_or_default();
    let name = &topology.spec.cluster_ref;
    let cluster = inputs
        .clusters
        .get(&(ns.clone(), name.clone()))
        .ok_or_else(|| {
            doc.error(
                Some("spec.clusterRef".into()),
                format!("StormCluster {ns}/{name} is not in the input; render needs a submitted topology's cluster"),
            )
        })?;
    let hash = stormtopology::build::spec_hash(topology);
    let job = stormtopology::build::submit_job(topology, cluster, &hash)
        .map_err(|e| doc.error(None, e.to_string()))?;
    out.push(to_json(&job)?);
    Ok(())
}

/// A pool's children, as if its topology and cluster (both in the input) were `Running`.
fn render_pool(
    doc: &Doc,
    pool: &StormWorkerPool,
    inputs: &Inputs,
    out: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let ns = pool.namespace().unwrap_or_default();
    let topology = inputs
        .topologies
        .get(&(ns.clone(), pool.spec.topology_ref.clone()))
        .ok_or_else(|| {
            doc.error(
                Some("spec.topologyRef".into()),
                format!(
                    "StormTopology {ns}/{} is not in the input; render needs the pool's topology and cluster",
                    pool.spec.topology_ref
                ),
            )
        })?;
    let cluster_name = pool
        .spec
        .cluster_ref
        .clone()
        .unwrap_or_else(|| topology.spec.cluster_ref.clone());
    let cluster = inputs
        .clusters
        .get(&(ns.clone(), cluster_name.clone()))
        .ok_or_else(|| {
            doc.error(
                Some("spec.clusterRef".into()),
                format!("StormCluster {ns}/{cluster_name} is not in the input"),
            )
        })?;
    let children = stormworkerpool::build::children(pool, cluster)
        .map_err(|e| doc.error(None, e.to_string()))?;
    out.push(to_json(&children.config_map)?);
    out.push(to_json(&children.deployment)?);
    out.push(to_json(&children.service)?);
    if let Some(hpa) = &children.hpa {
        out.push(to_json(hpa)?);
    }
    if let Some(pdb) = &children.pdb {
        out.push(to_json(pdb)?);
    }
    Ok(())
}

/// Checks a ScalerConfig's broker configuration, with placeholders for values from Secrets.
fn check_scaler(doc: &Doc, sc: &ScalerConfig) -> Result<(), InputError> {
    let placeholder = |v: &Option<SecretValue>| {
        v.as_ref()
            .map(|v| v.value.clone().unwrap_or_else(|| "from-secret".into()))
    };
    let creds = Credentials {
        username: placeholder(&sc.spec.config.username),
        password: placeholder(&sc.spec.config.password),
        token: placeholder(&sc.spec.config.token),
    };
    broker_config(sc.spec.type_, &sc.spec.config, &creds)
        .map_err(|e| doc.error(Some("spec.config".into()), e.message))?;
    Ok(())
}

/// Checks a QWorker's replica bounds, scaling factor and containers.
fn check_qworker(doc: &Doc, qw: &QWorker) -> Result<(), InputError> {
    let sc = &qw.spec.scale_config;
    if sc.min_replicas > sc.max_replicas {
        return Err(doc.error(
            Some("spec.scaleConfig.minReplicas".into()),
            format!(
                "minReplicas ({}) must be <= maxReplicas ({})",
                sc.min_replicas, sc.max_replicas
            ),
        ));
    }
    if sc.scaling_factor <= 0.0 {
        return Err(doc.error(
            Some("spec.scaleConfig.scalingFactor".into()),
            "scalingFactor must be > 0",
        ));
    }
    if qw.spec.pod_spec.get().containers.is_empty() {
        return Err(doc.error(
            Some("spec.podSpec.containers".into()),
            "at least one container is needed",
        ));
    }
    Ok(())
}

/// A QWorker's pods as its first reconcile would create them: `minReplicas` of them, with
/// random names.
fn render_qworker(doc: &Doc, qw: &QWorker, out: &mut Vec<serde_json::Value>) -> anyhow::Result<()> {
    check_qworker(doc, qw)?;
    let spec = qworker::build::template_spec(qw, &qworker::vpa_requests(qw));
    let hash = qworker::build::pod_spec_hash(qw, &spec);
    for _ in 0..qw.spec.scale_config.min_replicas.max(0) {
        let name = qworker::build::pod_name(&qw.name_any());
        out.push(to_json(&qworker::build::pod(qw, &spec, &hash, &name))?);
    }
    Ok(())
}

/// Renders every object `run` would apply for the documents in `texts` (name, YAML text).
pub fn render(texts: &[(String, String)]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for (name, text) in texts {
        docs.extend(documents(name, text)?);
    }
    let inputs = classify(docs)?;
    let mut out = Vec::new();
    for (doc, resource) in &inputs.storm {
        match resource {
            StormResource::Cluster(cluster) => render_cluster(doc, cluster, &mut out)?,
            StormResource::Topology(topology) => {
                render_topology(doc, topology, &inputs, &mut out)?;
            }
        }
    }
    for (doc, pool) in &inputs.pools {
        render_pool(doc, pool, &inputs, &mut out)?;
    }
    for (doc, sc) in &inputs.scalers {
        check_scaler(doc, sc)?;
    }
    for (doc, qw) in &inputs.qworkers {
        render_qworker(doc, qw, &mut out)?;
    }
    Ok(out)
}

/// Prints the rendered objects of `args.files` as a YAML stream.
pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
    let mut texts = Vec::new();
    for f in &args.files {
        texts.push((f.display().to_string(), read(f)?));
    }
    let objects = render(&texts)?;
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o)?);
    }
    crate::crds::write_stdout(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> (String, String) {
        let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
        (
            name.to_string(),
            std::fs::read_to_string(&path).expect("example"),
        )
    }

    #[test]
    fn renders_every_example_with_the_builders() {
        let texts: Vec<(String, String)> = [
            "storm-cluster-and-topologies.yaml",
            "storm-basic-worker-pool.yaml",
            "storm-autoscale-worker-pool.yaml",
            "storm-gpu-worker-pool.yaml",
            "storm-full-worker-pool.yaml",
            "scalerconfig.yaml",
            "scalerconfig-rabbitmq-nats.yaml",
            "qworker.yaml",
        ]
        .iter()
        .map(|n| example(n))
        .collect();
        let objects = render(&texts).expect("renders");
        let names: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        for want in [
            "ConfigMap/my-workers-storm-config",
            "Deployment/my-workers-deployment",
            "Service/my-workers-headless",
            "HorizontalPodAutoscaler/autoscale-workers-hpa",
            "PodDisruptionBudget/full-workers-pdb",
            "ConfigMap/storm-config",
            "Service/storm-nimbus",
            "StatefulSet/storm-nimbus",
            "Deployment/storm-ui",
            "Service/storm-ui",
        ] {
            assert!(
                names.contains(&want.to_string()),
                "{want} missing from {names:?}"
            );
        }
        // The two topologies with a jar get their submission Job; the observed one none.
        let jobs: Vec<&String> = names.iter().filter(|n| n.starts_with("Job/")).collect();
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        assert!(
            jobs.iter()
                .any(|j| j.starts_with("Job/my-topology-submit-")),
            "{jobs:?}"
        );
        assert!(
            jobs.iter()
                .any(|j| j.starts_with("Job/streaming-topology-submit-")),
            "{jobs:?}"
        );
        let pods: Vec<&serde_json::Value> = objects.iter().filter(|o| o["kind"] == "Pod").collect();
        assert_eq!(
            pods.len(),
            1,
            "example-qworker starts at minReplicas 1 (image-resizer at 0)"
        );
        assert_eq!(
            pods[0]["metadata"]["labels"]["quickube.com/qworker"],
            "example-qworker"
        );
        assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["uid"], NIL_UID);
    }

    #[test]
    fn a_submitted_topology_needs_its_cluster_and_an_external_cluster_renders_nothing() {
        let topology = "apiVersion: storm.apache.org/v1beta1\nkind: StormTopology\nmetadata: {name: t}\nspec: {clusterRef: c, mainClass: a.B, jar: {url: 'https://x/t.jar'}}\n";
        let err = render(&[("t.yaml".into(), topology.into())]).expect_err("no cluster");
        assert!(
            err.to_string()
                .contains("field spec.clusterRef: StormCluster default/c is not in the input"),
            "{err}"
        );
        let cluster = "apiVersion: storm.apache.org/v1beta1\nkind: StormCluster\nmetadata: {name: c}\nspec: {mode: External, uiUrl: 'http://ui:8080', nimbusSeeds: [n0], zookeeperServers: [zk]}\n";
        let objects =
            render(&[("t.yaml".into(), format!("{cluster}---\n{topology}"))]).expect("renders");
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            ["Job"],
            "an External cluster has no objects of the operator's"
        );
        let argv = objects[0]["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
        assert!(argv.contains("nimbus.seeds=[\\\"n0\\\"]"), "{argv}");
    }

    #[test]
    fn errors_name_the_file_document_and_field() {
        let bad = "apiVersion: storm.apache.org/v1beta1\nkind: StormWorkerPool\nmetadata: {name: a}\nspec:\n  topologyRef: t\n  replicas: many\n";
        let topology = "apiVersion: storm.apache.org/v1beta1\nkind: StormTopology\nmetadata: {name: t}\nspec: {clusterRef: c}\n";
        let err = render(&[("pools.yaml".into(), format!("{topology}---\n{bad}"))])
            .expect_err("bad replicas");
        let msg = err.to_string();
        assert!(
            msg.starts_with("pools.yaml: document 1, field spec.replicas: invalid type"),
            "{msg}"
        );

        let unknown = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
        let msg = render(&[("d.yaml".into(), unknown.into())])
            .expect_err("kind")
            .to_string();
        assert!(msg.contains("d.yaml: document 0, field kind: apps/v1 Deployment is not a resource of this operator"), "{msg}");

        let orphan = "apiVersion: storm.apache.org/v1beta1\nkind: StormWorkerPool\nmetadata: {name: a}\nspec: {topologyRef: nowhere}\n";
        let msg = render(&[("o.yaml".into(), orphan.into())])
            .expect_err("topology")
            .to_string();
        assert!(
            msg.contains(
                "field spec.topologyRef: StormTopology default/nowhere is not in the input"
            ),
            "{msg}"
        );

        let q = "apiVersion: quickube.com/v1alpha1\nkind: QWorker\nmetadata: {name: q}\nspec:\n  podSpec: {containers: [{name: w, image: i}]}\n  scaleConfig: {scalerConfigRef: s, queue: q, minReplicas: 4, maxReplicas: 2}\n";
        let msg = render(&[("q.yaml".into(), q.into())])
            .expect_err("min>max")
            .to_string();
        assert!(
            msg.contains(
                "field spec.scaleConfig.minReplicas: minReplicas (4) must be <= maxReplicas (2)"
            ),
            "{msg}"
        );
    }
}
