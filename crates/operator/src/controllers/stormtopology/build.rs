//! Pure builders of a StormTopology's Jobs: the submission Job (`storm jar`) and the rebalance
//! Job (`storm rebalance -n`), their names, labels and the hash of the submitted spec. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference, PodSecurityContext, PodSpec,
    PodTemplateSpec, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use workerpool_api::storm::{
    DEFAULT_REBALANCE_WAIT_SECONDS, JarSource, MAX_TOPOLOGY_NAME_LENGTH, StormCluster,
    StormTopology,
};
use workerpool_storm::command::{self, Submission};

use crate::MANAGED_BY;
use crate::apply::short_hash;
use crate::error::{Error, Result};

/// Label naming the topology (`metadata.name`) on its Jobs.
pub const TOPOLOGY_LABEL: &str = "storm.apache.org/topology";
/// Label telling the Job's purpose: [`JOB_SUBMIT`] or [`JOB_REBALANCE`].
pub const JOB_LABEL: &str = "storm.apache.org/job";
/// Label of a submission Job carrying the [`spec_hash`] it submits.
pub const SPEC_HASH_LABEL: &str = "storm.apache.org/spec-hash";
/// [`JOB_LABEL`] of submission Jobs.
pub const JOB_SUBMIT: &str = "submit";
/// [`JOB_LABEL`] of rebalance Jobs.
pub const JOB_REBALANCE: &str = "rebalance";
/// Label selector of the Jobs this controller makes (for its watch).
pub const JOB_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,storm.apache.org/job";
/// Where the jar is put inside the submission Job's pod.
pub const JAR_PATH: &str = "/jar/topology.jar";
/// Directory of [`JAR_PATH`] (an emptyDir).
pub const JAR_DIR: &str = "/jar";
/// Name of the emptyDir volume holding the jar.
pub const JAR_VOLUME: &str = "jar";
/// Init container that downloads or copies the jar.
pub const FETCH_CONTAINER: &str = "fetch-jar";
/// Init container that checks the jar's SHA-256.
pub const VERIFY_CONTAINER: &str = "verify-jar";
/// Main container of the submission Job.
pub const SUBMIT_CONTAINER: &str = "submit";
/// Main container of the rebalance Job.
pub const REBALANCE_CONTAINER: &str = "rebalance";
/// Retries of a failing Job's pod.
pub const BACKOFF_LIMIT: i32 = 2;
/// Longest run of a Job.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 600;
/// User and group the Jobs run as (the official storm image's `storm` user).
pub const RUN_AS: i64 = 1000;

/// The Python one-liner that downloads `argv[1]` to `argv[2]` (the storm image has python3,
/// not necessarily curl).
pub const DOWNLOAD_SCRIPT: &str =
    "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])";

/// The shell script that checks the jar against `$JAR_SHA256`; on a mismatch it says so in the
/// log and the container's termination message, and fails.
pub const VERIFY_SCRIPT: &str = r#"echo "$JAR_SHA256  /jar/topology.jar" | sha256sum -c - && exit 0
actual=$(sha256sum /jar/topology.jar | cut -d' ' -f1)
echo "jar checksum mismatch: jar.sha256 is $JAR_SHA256 but the downloaded jar has $actual" | tee /dev/termination-log >&2
exit 1"#;

/// The hash of what a submission depends on: jar, main class, arguments, config and the name
/// in Storm (16 hex digits). A change of any of them means a redeploy.
pub fn spec_hash(topology: &StormTopology) -> String {
    let spec = &topology.spec;
    let input = serde_json::json!({
        "jar": spec.jar,
        "mainClass": spec.main_class,
        "args": spec.args,
        "config": spec.config,
        "topologyName": topology.storm_name(),
    });
    short_hash(&input.to_string())
}

/// `<topology>-submit-<first 8 digits of the hash>` (at most 45 + 8 + 8 = 61 characters).
pub fn submit_job_name(topology: &str, hash: &str) -> String {
    let short: String = hash.chars().take(8).collect();
    format!("{topology}-submit-{short}")
}

/// `<topology>-rebalance-<start time in epoch seconds, base 36>`: derived from the time recorded
/// in `status.lastRebalance`, so a restarted operator finds the same name; at most
/// 45 + 11 + 7 = 63 characters.
pub fn rebalance_job_name(topology: &str, time: Timestamp) -> String {
    format!(
        "{topology}-rebalance-{}",
        base36(time.as_second().max(0).unsigned_abs())
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Checks what the schema cannot (or what a server that skips CEL rules lets through).
pub fn validate(topology: &StormTopology) -> Result<()> {
    let name = topology.name_any();
    if name.len() > MAX_TOPOLOGY_NAME_LENGTH {
        return Err(Error::InvalidSpec(format!(
            "metadata.name {name:?} has {} characters; at most {MAX_TOPOLOGY_NAME_LENGTH} are allowed, because Jobs named {name}-submit-<hash> must be DNS labels of at most 63 characters",
            name.len()
        )));
    }
    let storm_name = topology.storm_name();
    if storm_name.is_empty() || storm_name.contains(['/', '.', ':', '\\']) {
        return Err(Error::InvalidSpec(format!(
            "topology name {storm_name:?} may not be empty nor contain '/', '.', ':' or a backslash"
        )));
    }
    if let Some(jar) = &topology.spec.jar {
        if jar.url.is_some() == jar.image.is_some() {
            return Err(Error::InvalidSpec(
                "jar needs exactly one of url or image".into(),
            ));
        }
        if jar.image.is_some() && jar.path.is_none() {
            return Err(Error::InvalidSpec(
                "jar.image needs jar.path, the path of the jar inside the image".into(),
            ));
        }
        if topology
            .spec
            .main_class
            .as_deref()
            .is_none_or(str::is_empty)
        {
            return Err(Error::InvalidSpec(
                "mainClass is required when jar is set: the class that builds and submits the topology".into(),
            ));
        }
    }
    Ok(())
}

/// The cluster's image (default `storm:2.6.4`; `repository@sha256:…` for a digest), through
/// [`StormCluster::image_reference`].
pub fn cluster_image(cluster: &StormCluster) -> String {
    cluster.image_reference()
}

/// Labels of a Job of `topology` with the purpose `job`.
pub fn labels(topology: &StormTopology, job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        ("app.kubernetes.io/component".into(), format!("storm-{job}")),
        (
            TOPOLOGY_LABEL.into(),
            topology.name_any().chars().take(63).collect(),
        ),
        (JOB_LABEL.into(), job.into()),
    ])
}

/// Whether `object` has a controller ownerReference to this topology (same uid).
pub fn controlled_by<K: Resource>(object: &K, topology: &StormTopology) -> bool {
    let Some(uid) = topology.uid() else {
        return false;
    };
    object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

fn security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

fn container(name: &str, image: String, cluster: &StormCluster) -> Container {
    Container {
        name: name.into(),
        image: Some(image),
        image_pull_policy: cluster
            .spec
            .image
            .as_ref()
            .and_then(|i| i.pull_policy.clone()),
        security_context: Some(security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn jar_mount() -> VolumeMount {
    VolumeMount {
        name: JAR_VOLUME.into(),
        mount_path: JAR_DIR.into(),
        ..VolumeMount::default()
    }
}

fn job(
    topology: &StormTopology,
    cluster: &StormCluster,
    name: String,
    mut labels: BTreeMap<String, String>,
    pod: PodSpec,
) -> Job {
    labels.retain(|_, v| !v.is_empty());
    let pull_secrets: Vec<LocalObjectReference> = cluster
        .spec
        .image
        .as_ref()
        .and_then(|i| i.pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|name| LocalObjectReference { name })
        .collect();
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            ..PodSecurityContext::default()
        }),
        ..pod
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: topology.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(topology.controller_owner_ref(&()).into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The init container that puts the jar at [`JAR_PATH`]: a download of `jar.url` with Python
/// in the cluster's `image`, or a `cp` of `jar.path` from `jar.image`.
fn fetch_container(jar: &JarSource, image: &str, cluster: &StormCluster) -> Result<Container> {
    match (&jar.url, &jar.image, &jar.path) {
        (Some(url), _, _) => Ok(Container {
            command: Some(vec![
                "python3".into(),
                "-c".into(),
                DOWNLOAD_SCRIPT.into(),
                url.clone(),
                JAR_PATH.into(),
            ]),
            volume_mounts: Some(vec![jar_mount()]),
            ..container(FETCH_CONTAINER, image.to_string(), cluster)
        }),
        (None, Some(jar_image), Some(path)) => Ok(Container {
            command: Some(vec!["cp".into(), path.clone(), JAR_PATH.into()]),
            volume_mounts: Some(vec![jar_mount()]),
            ..container(FETCH_CONTAINER, jar_image.clone(), cluster)
        }),
        _ => Err(Error::InvalidSpec(
            "jar needs url, or image and path".into(),
        )),
    }
}

/// The init container that checks the jar against `sha256`.
fn verify_container(sha256: &str, image: &str, cluster: &StormCluster) -> Container {
    Container {
        command: Some(vec!["sh".into(), "-c".into(), VERIFY_SCRIPT.into()]),
        env: Some(vec![EnvVar {
            name: "JAR_SHA256".into(),
            value: Some(sha256.to_string()),
            ..EnvVar::default()
        }]),
        volume_mounts: Some(vec![jar_mount()]),
        ..container(VERIFY_CONTAINER, image.to_string(), cluster)
    }
}

/// The main container: `storm jar` of the topology against the cluster's Nimbus seeds.
fn submit_container(topology: &StormTopology, cluster: &StormCluster, image: String) -> Container {
    let config = topology.spec.config.clone().unwrap_or_default();
    let main_class = topology.spec.main_class.clone().unwrap_or_default();
    let storm_name = topology.storm_name();
    let seeds = cluster.nimbus_seeds();
    let client_config = cluster.storm_config_where(command::is_client_setting);
    let argv = command::submit(&Submission {
        jar_path: JAR_PATH,
        main_class: &main_class,
        topology_name: &storm_name,
        args: &topology.spec.args,
        config: &config,
        nimbus_seeds: &seeds,
        client_config: &client_config,
    });
    Container {
        command: Some(argv),
        volume_mounts: Some(vec![jar_mount()]),
        ..container(SUBMIT_CONTAINER, image, cluster)
    }
}

/// The submission Job `<topology>-submit-<hash8>`: an init container fetches the jar (from
/// `jar.url` with Python in the cluster image, or by `cp` from `jar.image`) into an emptyDir,
/// another checks `jar.sha256` when set, and the main container runs `storm jar` from the
/// cluster's image against its Nimbus seeds.
pub fn submit_job(topology: &StormTopology, cluster: &StormCluster, hash: &str) -> Result<Job> {
    validate(topology)?;
    let Some(jar) = &topology.spec.jar else {
        return Err(Error::InvalidSpec(
            "the topology has no jar; it is not submitted by the operator".into(),
        ));
    };
    let image = cluster_image(cluster);
    let mut init = vec![fetch_container(jar, &image, cluster)?];
    if let Some(sha) = &jar.sha256 {
        init.push(verify_container(sha, &image, cluster));
    }
    let pod = PodSpec {
        init_containers: Some(init),
        containers: vec![submit_container(topology, cluster, image)],
        volumes: Some(vec![Volume {
            name: JAR_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let mut labels = labels(topology, JOB_SUBMIT);
    labels.insert(SPEC_HASH_LABEL.into(), hash.into());
    Ok(job(
        topology,
        cluster,
        submit_job_name(&topology.name_any(), hash),
        labels,
        pod,
    ))
}

/// The rebalance Job `job_name`: `storm rebalance <name> -w <wait> -n <workers>` from the
/// cluster's image against its Nimbus seeds.
pub fn rebalance_job(
    topology: &StormTopology,
    cluster: &StormCluster,
    job_name: &str,
    workers: i32,
) -> Job {
    let wait = topology
        .spec
        .rebalance
        .as_ref()
        .and_then(|r| r.wait_seconds)
        .unwrap_or(DEFAULT_REBALANCE_WAIT_SECONDS);
    let argv = command::rebalance(
        &topology.storm_name(),
        u32::try_from(wait).unwrap_or(0),
        u32::try_from(workers).unwrap_or(1).max(1),
        &cluster.nimbus_seeds(),
        &cluster.storm_config_where(command::is_client_setting),
    );
    let pod = PodSpec {
        containers: vec![Container {
            command: Some(argv),
            ..container(REBALANCE_CONTAINER, cluster_image(cluster), cluster)
        }],
        ..PodSpec::default()
    };
    job(
        topology,
        cluster,
        job_name.to_string(),
        labels(topology, JOB_REBALANCE),
        pod,
    )
}

/// How a Job ended, from its conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Still running (or not started).
    Running,
    /// Condition `Complete`.
    Succeeded,
    /// Condition `Failed`, with its reason and message.
    Failed(String),
}

/// The state of `job`.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for c in conditions.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return JobState::Succeeded,
            "Failed" => {
                let reason = c.reason.as_deref().unwrap_or("Failed");
                let message = c.message.as_deref().unwrap_or("no message");
                return JobState::Failed(format!("{reason}: {message}"));
            }
            _ => {}
        }
    }
    JobState::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use workerpool_api::storm::JarSource;

    fn cluster() -> StormCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1", "kind": "StormCluster",
            "metadata": {"name": "storm", "namespace": "team-a"},
            "spec": {"zookeeperServers": ["zk-0"],
                "image": {"repository": "apache/storm", "tag": "2.8.8", "pullSecrets": ["regcred"]}}
        }))
        .expect("cluster")
    }

    fn topology(jar: serde_json::Value) -> StormTopology {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1", "kind": "StormTopology",
            "metadata": {"name": "wordcount", "namespace": "team-a", "uid": "t-uid"},
            "spec": {"clusterRef": "storm", "jar": jar, "mainClass": "org.example.WordCount",
                "args": ["--fast"], "config": {"topology.workers": 3}}
        }))
        .expect("topology")
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    #[test]
    fn url_jar_is_downloaded_checked_and_submitted() {
        let t = topology(serde_json::json!({"url": "https://repo.example/wc.jar",
            "sha256": "a".repeat(64)}));
        let hash = spec_hash(&t);
        let job = submit_job(&t, &cluster(), &hash).expect("job");
        assert_eq!(job.name_any(), format!("wordcount-submit-{}", &hash[..8]));
        let pod = pod(&job);
        let init = pod.init_containers.as_ref().expect("init");
        assert_eq!(init.len(), 2);
        assert_eq!(init[0].name, FETCH_CONTAINER);
        assert_eq!(init[0].image.as_deref(), Some("apache/storm:2.8.8"));
        assert_eq!(
            init[0].command.as_ref().expect("cmd")[..2],
            ["python3".to_string(), "-c".to_string()]
        );
        assert_eq!(
            init[0].command.as_ref().expect("cmd")[3..],
            [
                "https://repo.example/wc.jar".to_string(),
                JAR_PATH.to_string()
            ]
        );
        assert_eq!(init[1].name, VERIFY_CONTAINER);
        let verify = init[1].command.as_ref().expect("cmd").join(" ");
        assert!(verify.contains("sha256sum -c"), "{verify}");
        assert!(verify.contains("checksum mismatch"), "{verify}");
        assert_eq!(
            init[1].env.as_ref().expect("env")[0].value.as_deref(),
            Some("a".repeat(64).as_str())
        );
        let main = &pod.containers[0];
        assert_eq!(main.image.as_deref(), Some("apache/storm:2.8.8"));
        let seeds = serde_json::json!(cluster().nimbus_seeds()).to_string();
        let argv = main.command.as_ref().expect("argv");
        let config = t.spec.config.clone().expect("config");
        let cluster_seeds = cluster().nimbus_seeds();
        assert_eq!(
            argv,
            &command::submit(&Submission {
                jar_path: JAR_PATH,
                main_class: "org.example.WordCount",
                topology_name: "wordcount",
                args: &["--fast".to_string()],
                config: &config,
                nimbus_seeds: &cluster_seeds,
                client_config: &BTreeMap::new(),
            })
        );
        for part in [
            "storm",
            "jar",
            JAR_PATH,
            "org.example.WordCount",
            "wordcount",
            "--fast",
            "topology.workers=3",
        ] {
            assert!(argv.iter().any(|a| a == part), "{part} not in {argv:?}");
        }
        assert!(argv.contains(&format!("nimbus.seeds={seeds}")), "{argv:?}");
        assert!(seeds.contains("storm-nimbus-0.storm-nimbus.team-a.svc"));
        // Pod and Job settings.
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let sc = pod.security_context.as_ref().expect("security context");
        assert_eq!(
            (sc.run_as_user, sc.fs_group, sc.run_as_non_root),
            (Some(1000), Some(1000), Some(true))
        );
        assert_eq!(
            pod.image_pull_secrets.as_ref().expect("secrets")[0].name,
            "regcred"
        );
        assert!(
            pod.volumes.as_ref().expect("volumes")[0]
                .empty_dir
                .is_some()
        );
        let spec = job.spec.as_ref().expect("spec");
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let owner = &job.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StormTopology", "wordcount", "t-uid")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = job.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[TOPOLOGY_LABEL], "wordcount");
        assert_eq!(labels[JOB_LABEL], "submit");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "workerpool-operator"
        );
        assert_eq!(labels[SPEC_HASH_LABEL], hash);
    }

    #[test]
    fn image_jar_is_copied_without_checksum_step() {
        let t =
            topology(serde_json::json!({"image": "registry.example/wc:1", "path": "/opt/wc.jar"}));
        let job = submit_job(&t, &cluster(), &spec_hash(&t)).expect("job");
        let init = pod(&job).init_containers.clone().expect("init");
        assert_eq!(init.len(), 1, "no sha256, no check");
        assert_eq!(init[0].image.as_deref(), Some("registry.example/wc:1"));
        assert_eq!(
            init[0].command.as_ref().expect("cmd"),
            &vec!["cp".to_string(), "/opt/wc.jar".into(), JAR_PATH.into()]
        );
        assert_eq!(
            init[0].volume_mounts.as_ref().expect("mounts")[0].mount_path,
            JAR_DIR
        );
    }

    #[test]
    fn jobs_of_a_digest_pinned_cluster_use_the_digest_reference() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let mut c = cluster();
        if let Some(image) = c.spec.image.as_mut() {
            image.tag = Some(digest.clone());
        }
        let want = format!("apache/storm@{digest}");
        let t = topology(serde_json::json!({"url": "https://repo.example/wc.jar"}));
        let job = submit_job(&t, &c, &spec_hash(&t)).expect("job");
        let p = pod(&job);
        let images: Vec<Option<&str>> = p
            .init_containers
            .iter()
            .flatten()
            .chain(&p.containers)
            .map(|c| c.image.as_deref())
            .collect();
        assert_eq!(images, vec![Some(want.as_str()), Some(want.as_str())]);
        let rebalance = rebalance_job(&t, &c, "wordcount-rebalance-1", 3);
        assert_eq!(
            pod(&rebalance).containers[0].image.as_deref(),
            Some(want.as_str())
        );
    }

    #[test]
    fn an_external_clusters_thrift_port_and_transport_reach_both_jobs() {
        let mut c = cluster();
        c.spec.mode = workerpool_api::ClusterMode::External;
        c.spec.nimbus_seeds = vec!["nimbus.example".into()];
        c.spec.storm_config = Some(BTreeMap::from([
            ("nimbus.thrift.port".into(), serde_json::json!(16627)),
            (
                "storm.thrift.transport".into(),
                serde_json::json!("org.example.Transport"),
            ),
            ("topology.debug".into(), serde_json::json!(true)),
        ]));
        let t = topology(serde_json::json!({"url": "https://repo.example/wc.jar"}));
        let submit = submit_job(&t, &c, &spec_hash(&t)).expect("job");
        let rebalance = rebalance_job(&t, &c, "wordcount-rebalance-1", 2);
        for job in [&submit, &rebalance] {
            let argv = pod(job).containers[0].command.clone().expect("argv");
            assert!(
                argv.contains(&"nimbus.thrift.port=16627".to_string()),
                "{argv:?}"
            );
            assert!(
                argv.contains(&r#"storm.thrift.transport="org.example.Transport""#.to_string()),
                "{argv:?}"
            );
            assert!(
                !argv.iter().any(|a| a.starts_with("topology.debug")),
                "only client settings: {argv:?}"
            );
        }
    }

    #[test]
    fn the_hash_follows_what_a_submission_depends_on() {
        let a = topology(serde_json::json!({"url": "https://repo.example/wc.jar"}));
        let mut b = a.clone();
        b.spec.suspend = true;
        b.spec.kill_wait_seconds = Some(5);
        assert_eq!(spec_hash(&a), spec_hash(&b), "suspend is no redeploy");
        b.spec.args.push("--more".into());
        assert_ne!(spec_hash(&a), spec_hash(&b));
        let mut c = a.clone();
        c.spec.jar = Some(JarSource {
            url: Some("https://repo.example/wc-2.jar".into()),
            ..JarSource::default()
        });
        assert_ne!(spec_hash(&a), spec_hash(&c));
        let mut d = a.clone();
        d.spec.topology_name = Some("other".into());
        assert_ne!(spec_hash(&a), spec_hash(&d));
    }

    #[test]
    fn names_stay_dns_labels() {
        let long = "t".repeat(MAX_TOPOLOGY_NAME_LENGTH);
        assert!(submit_job_name(&long, &"f".repeat(16)).len() <= 63);
        let far = Timestamp::from_second(4_000_000_000).expect("time");
        let name = rebalance_job_name(&long, far);
        assert!(name.len() <= 63, "{name} has {}", name.len());
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        assert_eq!(
            rebalance_job_name("wc", now),
            rebalance_job_name("wc", now),
            "deterministic"
        );
        assert_ne!(
            rebalance_job_name("wc", now),
            rebalance_job_name("wc", Timestamp::from_second(1_800_000_001).expect("time"))
        );
    }

    #[test]
    fn rebalance_job_runs_storm_rebalance_with_the_seeds() {
        let mut t = topology(serde_json::json!({"url": "https://repo.example/wc.jar"}));
        t.spec.rebalance = Some(workerpool_api::RebalanceSpec {
            wait_seconds: Some(10),
            ..Default::default()
        });
        let job = rebalance_job(&t, &cluster(), "wordcount-rebalance-x", 8);
        let argv = pod(&job).containers[0].command.clone().expect("argv");
        assert_eq!(
            argv,
            command::rebalance(
                "wordcount",
                10,
                8,
                &cluster().nimbus_seeds(),
                &BTreeMap::new()
            )
        );
        assert_eq!(argv[..2], ["storm", "rebalance"].map(String::from));
        let n = argv.iter().position(|a| a == "wordcount").expect("name");
        assert_eq!(
            argv[n..],
            ["wordcount", "-w", "10", "-n", "8"].map(String::from)
        );
        assert!(argv.iter().any(|a| a.starts_with("nimbus.seeds=")));
        assert_eq!(
            job.metadata.labels.as_ref().expect("l")[JOB_LABEL],
            "rebalance"
        );
        assert!(pod(&job).init_containers.is_none());
    }

    #[test]
    fn a_jar_without_main_class_is_invalid() {
        let mut t = topology(serde_json::json!({"url": "https://repo.example/wc.jar"}));
        t.spec.main_class = None;
        assert!(matches!(validate(&t), Err(Error::InvalidSpec(m)) if m.contains("mainClass")));
    }

    #[test]
    fn job_state_reads_the_conditions() {
        let mut job = Job::default();
        assert_eq!(job_state(&job), JobState::Running);
        job.status = serde_json::from_value(serde_json::json!({"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}))
            .expect("status");
        assert_eq!(
            job_state(&job),
            JobState::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            )
        );
    }
}
