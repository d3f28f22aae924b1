//! The chart's own pod, from the operator's image, on a real API server: the in-cluster path
//! that users run.
//!
//! `scripts/helm template` renders the chart (two replicas, watching only the scenario's
//! namespace, release and full name = the namespace); the rendered ServiceAccount, Roles,
//! RoleBindings, Service and Deployment are applied in a namespace that enforces the
//! `restricted` Pod Security Standard; the controller-manager creates the Deployment's pods,
//! and a node stand-in ([`Node`]) runs each of them from the root filesystem of the image in
//! `target/images/workerpool-operator.oci.tar` (written by `scripts/image`), as a kubelet
//! would:
//!
//! - the pod's own network namespace (loopback only; the node relays the API server's port and
//!   Redis' 6379 into it, the way a cluster network reaches a Service), so that both replicas
//!   listen on :8080 as in a cluster;
//! - a private mount namespace: the unpacked image root bind-mounted read-only when the
//!   container asks for `readOnlyRootFilesystem`, each `emptyDir` mounted writable at its
//!   `mountPath`, then `chroot` into the root as the container's `runAsUser:runAsGroup` (a
//!   pod asking for `runAsNonRoot` with user 0 is refused);
//! - the image's `Entrypoint`/`Cmd` with the container's `command`/`args` over them, the
//!   image's `Env` and the container's `env` (values and downward-API `fieldRef`s), and
//!   `KUBERNETES_SERVICE_HOST`/`PORT` naming the API server (127.0.0.1 is in its
//!   certificate's SANs);
//! - `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}` inside the root:
//!   a token from the TokenRequest API for the pod's ServiceAccount, bound to the pod, the CA
//!   of `kube-root-ca.crt` (or of the kubeconfig) and the namespace. The operator therefore
//!   has exactly the chart's RBAC, nothing else;
//! - the pod's readiness and liveness probes (HTTP GET inside the pod's network namespace, at
//!   their periods and thresholds), `Ready` reported only from the readiness probe; a
//!   container that exits is restarted (restartPolicy Always); a pod being deleted gets
//!   SIGTERM, then SIGKILL after its grace period, and its deletion finished.
//!
//! It passes when both pods become Ready through the chart's readiness probe, exactly one
//! holds the Lease, a QWorker (its worker pod and status) and a StormWorkerPool (its status)
//! are reconciled, and deleting the leader pod hands the Lease to the standby within the
//! lease duration, whose operator then reconciles a change. Seccomp and capabilities are not
//! applied by the stand-in (the process runs as a non-root user with none).
//!
//! Skips, printing why, without a cluster (as every scenario), without the image archive
//! (`scripts/image` writes it), when not root (mounts, chroot, namespaces), or without
//! `unshare`, `nsenter`, `ip`, `mount`, `chroot` or `tar`. `WPO_E2E_REQUIRE_IMAGE=1` turns the
//! skips other than the cluster's into failures.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::unix::process::CommandExt as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, Probe, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    FIELD_MANAGER, NAMESPACE_LABEL, POLL, WAIT, cluster_or_skip, documents, ensure, install_crds,
    logs_dir, retryable,
};

/// The image archive `scripts/image` writes.
const ARCHIVE: &str = "target/images/workerpool-operator.oci.tar";
/// Replicas of the chart's Deployment.
const REPLICAS: usize = 2;
/// The chart's default `leaderElection.leaseDurationSeconds`.
const LEASE_SECONDS: u64 = 15;
/// The broker port the node relays into each pod (the machine's Redis).
const REDIS_PORT: u16 = 6379;

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An executable on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The host tools the node stand-in runs.
#[derive(Clone, Debug)]
struct Tools {
    unshare: PathBuf,
    nsenter: PathBuf,
    ip: PathBuf,
    mount: PathBuf,
    mkdir: PathBuf,
    chroot: PathBuf,
    sh: PathBuf,
    tar: PathBuf,
}

/// What the scenario needs besides a cluster; `Err` is the reason to skip.
fn prerequisites() -> Result<(PathBuf, Tools), String> {
    let archive = repo_root().join(ARCHIVE);
    if !archive.is_file() {
        return Err(format!(
            "no image archive at {} (scripts/image builds it; it needs buildah, podman or docker)",
            archive.display()
        ));
    }
    // SAFETY: geteuid only reads the process's effective user id.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err("not root: the node stand-in needs mounts, chroot and namespaces".into());
    }
    let tool = |name: &str| which(name).ok_or_else(|| format!("{name} is not on PATH"));
    let tools = Tools {
        unshare: tool("unshare")?,
        nsenter: tool("nsenter")?,
        ip: tool("ip")?,
        mount: tool("mount")?,
        mkdir: tool("mkdir")?,
        chroot: tool("chroot")?,
        sh: tool("sh")?,
        tar: tool("tar")?,
    };
    Ok((archive, tools))
}

/// Runs `f` on a thread of its own inside the network namespace `netns` (a
/// `/proc/PID/ns/net`); the thread ends with `f`. Sockets keep the namespace they were made in.
#[allow(unsafe_code)]
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd as _;
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns changes only the calling thread's network namespace, and this thread
        // ends after `f`; the file descriptor is valid while `ns` lives.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill only sends a signal to the process we started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The unpacked image: its root filesystem and its config.
#[derive(Clone, Debug)]
struct Image {
    root: PathBuf,
    id: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    user: Option<String>,
}

impl Image {
    /// Unpacks the first image of an OCI archive into `dir/root` (its layers in order; the
    /// images of `scripts/image` have no whiteouts).
    fn unpack(archive: &Path, dir: &Path, tools: &Tools) -> Result<Self, String> {
        let layout = dir.join("layout");
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(&layout).map_err(|e| format!("{}: {e}", layout.display()))?;
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let untar = |file: &Path, into: &Path| -> Result<(), String> {
            let out = Command::new(&tools.tar)
                .arg("-xf")
                .arg(file)
                .arg("-C")
                .arg(into)
                .output()
                .map_err(|e| format!("tar: {e}"))?;
            ensure(out.status.success(), || {
                format!(
                    "tar -xf {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        };
        untar(archive, &layout)?;
        let blob = |digest: &str| layout.join("blobs").join(digest.replacen(':', "/", 1));
        let json_of = |path: &Path| -> Result<Value, String> {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
        };
        let index = json_of(&layout.join("index.json"))?;
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .ok_or("index.json names no manifest")?
            .to_string();
        let manifest = json_of(&blob(&manifest_digest))?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().ok_or("a layer without digest")?;
            untar(&blob(digest), &root)?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or("the manifest names no config")?;
        let config = json_of(&blob(config_digest))?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let c = &config["config"];
        Ok(Self {
            root,
            id: config_digest.to_string(),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"])
                .into_iter()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
                .collect(),
            user: c["User"]
                .as_str()
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        })
    }

    /// `(uid, gid)` of the image's `User` (numeric, as `scripts/image` sets it).
    fn user(&self) -> (Option<i64>, Option<i64>) {
        let Some(user) = &self.user else {
            return (None, None);
        };
        let (u, g) = user.split_once(':').unwrap_or((user.as_str(), ""));
        (u.parse().ok(), g.parse().ok())
    }
}

/// Where the node stand-in reaches the API server, and what it mounts into each pod.
#[derive(Clone)]
struct NodeConfig {
    client: Client,
    namespace: String,
    selector: String,
    image: Image,
    tools: Tools,
    api_port: u16,
    ca_pem: String,
    dir: PathBuf,
}

/// The node stand-in; stops every pod it runs when dropped.
struct Node {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    pods: Arc<Mutex<HashMap<String, Arc<PodRun>>>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        for run in pods.values() {
            run.kill_now();
        }
    }
}

/// One pod the node runs: its network-namespace holder and its container process.
struct PodRun {
    name: String,
    holder: Mutex<Option<Child>>,
    process: Mutex<Option<Child>>,
    /// Cancelled when the pod is deleted: its container is then stopped.
    stop: CancellationToken,
    /// Cancelled once the container has stopped: the pod's network (the relays) goes last, so
    /// that a stopping container still reaches the API server (to release its Lease).
    net: CancellationToken,
}

impl PodRun {
    fn kill_now(&self) {
        self.stop.cancel();
        self.net.cancel();
        for slot in [&self.process, &self.holder] {
            let mut child = slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        let child = self.process.lock().unwrap_or_else(|p| p.into_inner());
        child.as_ref().map(Child::id)
    }

    /// The exit code if the container process has ended (and forgets the process).
    fn exited(&self) -> Option<i32> {
        let mut child = self.process.lock().unwrap_or_else(|p| p.into_inner());
        let code = child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|s| s.code().unwrap_or(137))?;
        *child = None;
        Some(code)
    }
}

impl Drop for PodRun {
    fn drop(&mut self) {
        self.kill_now();
    }
}

impl Node {
    fn start(config: NodeConfig) -> Self {
        let stop = CancellationToken::new();
        let pods: Arc<Mutex<HashMap<String, Arc<PodRun>>>> = Arc::default();
        let task = tokio::spawn(node_loop(config, pods.clone(), stop.clone()));
        Self { task, stop, pods }
    }

    /// The container log of pod `name`.
    fn log_of(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }
}

async fn node_loop(
    config: NodeConfig,
    pods: Arc<Mutex<HashMap<String, Arc<PodRun>>>>,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(config.client.clone(), &config.namespace);
    let nodes = Api::all(config.client.clone());
    let mut beat: Option<std::time::Instant> = None;
    while !stop.is_cancelled() {
        // The Node the pods are bound to exists, or the pod garbage collector deletes them.
        if beat.is_none_or(|t| t.elapsed() >= crate::kubelet::HEARTBEAT)
            && crate::kubelet::heartbeat(&nodes).await
        {
            beat = Some(std::time::Instant::now());
        }
        if let Ok(list) = api
            .list(&ListParams::default().labels(&config.selector))
            .await
        {
            let mut seen = Vec::new();
            for pod in list.items {
                let uid = pod.uid().unwrap_or_default();
                seen.push(uid.clone());
                let known = pods
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&uid)
                    .cloned();
                match known {
                    Some(run) if pod.metadata.deletion_timestamp.is_some() => run.stop.cancel(),
                    Some(_) => {}
                    None if pod.metadata.deletion_timestamp.is_some() => {}
                    None => {
                        let run = Arc::new(PodRun {
                            name: pod.name_any(),
                            holder: Mutex::new(None),
                            process: Mutex::new(None),
                            stop: stop.child_token(),
                            net: stop.child_token(),
                        });
                        pods.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(uid, run.clone());
                        let config = config.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_pod(&config, &pod, &run).await {
                                eprintln!("e2e[chart-pod]: node: pod {}: {e}", run.name);
                            }
                            run.kill_now();
                        });
                    }
                }
            }
            // A pod gone from the API (force-deleted): stop it.
            let all = pods.lock().unwrap_or_else(|p| p.into_inner());
            for (uid, run) in all.iter() {
                if !seen.contains(uid) {
                    run.stop.cancel();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = stop.cancelled() => return,
        }
    }
}

fn status_params() -> PatchParams {
    PatchParams {
        field_manager: Some("e2e-image-node".into()),
        ..PatchParams::default()
    }
}

/// `/var/run/secrets/kubernetes.io/serviceaccount` as the kubelet projects it.
const SA_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// Runs one pod until it is deleted (or the node stops).
async fn serve_pod(config: &NodeConfig, pod: &Pod, run: &PodRun) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(config.client.clone(), &config.namespace);
    let name = pod.name_any();
    let spec = pod.spec.clone().ok_or("a pod without spec")?;
    let [container] = spec.containers.as_slice() else {
        return Err("the node stand-in runs pods of one container".into());
    };
    // Bound, as a scheduler would: its deletion is then graceful.
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": crate::kubelet::NODE}
    });
    api.create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding)
        .await
        .map_err(|e| format!("binding: {e}"))?;

    // The pod's network namespace, held by a process of its own (a pod sandbox).
    let mut holder = Command::new(&config.tools.unshare)
        .args(["--net", "--"])
        .arg(&config.tools.sh)
        .arg("-c")
        .arg("\"$0\" link set lo up && echo up && exec sleep 100000")
        .arg(&config.tools.ip)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("unshare --net: {e}"))?;
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let netns = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
    *run.holder.lock().unwrap_or_else(|p| p.into_inner()) = Some(holder);
    ensure(line.trim() == "up", || {
        "the pod's network namespace did not start".to_string()
    })?;
    for port in [config.api_port, REDIS_PORT] {
        relay(&netns, port, run.net.clone()).await?;
    }

    // Its root: a copy of the image's, with the ServiceAccount's files.
    let dir = config.dir.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&config.image.root)
        .arg(&root)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    ensure(copied.success(), || "cp -a of the image root failed".into())?;
    let sa = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    if spec.automount_service_account_token != Some(false) {
        let token = token_for(config, &sa, pod).await?;
        let sa_dir = root.join(SA_DIR);
        std::fs::create_dir_all(&sa_dir).map_err(|e| e.to_string())?;
        for (file, content) in [
            ("token", token.as_str()),
            ("ca.crt", config.ca_pem.as_str()),
            ("namespace", config.namespace.as_str()),
        ] {
            std::fs::write(sa_dir.join(file), content).map_err(|e| e.to_string())?;
        }
    }
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volumeMount {} names no volume", mount.name))?;
        if volume.empty_dir.is_some() {
            let source = dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
            let chmod = Command::new("chmod").arg("0777").arg(&source).status();
            ensure(chmod.is_ok_and(|s| s.success()), || "chmod failed".into())?;
            mounts.push((source, mount.mount_path.clone()));
        }
        // Projected ServiceAccount volumes: the files written above, at the same path.
    }

    // What runs: the image's entrypoint and command with the container's over them.
    let (command, args) = match (&container.command, &container.args) {
        (Some(c), Some(a)) => (c.clone(), a.clone()),
        (Some(c), None) => (c.clone(), Vec::new()),
        (None, Some(a)) => (config.image.entrypoint.clone(), a.clone()),
        (None, None) => (config.image.entrypoint.clone(), config.image.cmd.clone()),
    };
    let argv: Vec<String> = command.into_iter().chain(args).collect();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let (image_uid, image_gid) = config.image.user();
    let uid = sc
        .run_as_user
        .or(pod_sc.run_as_user)
        .or(image_uid)
        .unwrap_or(0);
    let gid = sc
        .run_as_group
        .or(pod_sc.run_as_group)
        .or(image_gid)
        .unwrap_or(0);
    if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
        return Err("runAsNonRoot with user 0: the kubelet would refuse to start it".into());
    }
    let read_only = sc.read_only_root_filesystem == Some(true);
    let env = pod_env(config, pod, container)?;
    let log = Node::log_of(&config.dir, &name);
    let start = || {
        start_container(
            &config.tools,
            &netns,
            &root,
            &mounts,
            read_only,
            (uid, gid),
            &argv,
            &env,
            &log,
        )
    };

    let mut restarts = 0;
    let mut ready = false;
    *run.process.lock().unwrap_or_else(|p| p.into_inner()) = Some(start()?);
    report(
        &api,
        pod,
        container,
        &config.image.id,
        true,
        false,
        restarts,
        None,
    )
    .await;
    let readiness = container.readiness_probe.clone();
    let liveness = container.liveness_probe.clone();
    let started = Instant::now();
    let mut last_ready_probe: Option<Instant> = None;
    let mut last_live_probe: Option<Instant> = None;
    let (mut ready_ok, mut ready_fail, mut live_fail) = (0, 0, 0);
    loop {
        tokio::select! {
            _ = run.stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {},
        }
        if let Some(code) = run.exited() {
            eprintln!("e2e[chart-pod]: node: pod {name}: container exited with {code}; restarting");
            report(
                &api,
                pod,
                container,
                &config.image.id,
                false,
                false,
                restarts,
                Some(code),
            )
            .await;
            ready = false;
            (ready_ok, ready_fail, live_fail) = (0, 0, 0);
            tokio::time::sleep(Duration::from_secs(1)).await;
            restarts += 1;
            *run.process.lock().unwrap_or_else(|p| p.into_inner()) = Some(start()?);
            report(
                &api,
                pod,
                container,
                &config.image.id,
                true,
                false,
                restarts,
                None,
            )
            .await;
            continue;
        }
        if let Some(probe) = &readiness
            && due(probe, started, last_ready_probe)
        {
            last_ready_probe = Some(Instant::now());
            if probe_ok(&netns, container, probe).await {
                ready_ok += 1;
                ready_fail = 0;
            } else {
                ready_fail += 1;
                ready_ok = 0;
            }
            let now_ready = if ready {
                ready_fail < probe.failure_threshold.unwrap_or(3)
            } else {
                ready_ok >= probe.success_threshold.unwrap_or(1)
            };
            if now_ready != ready {
                ready = now_ready;
                report(
                    &api,
                    pod,
                    container,
                    &config.image.id,
                    true,
                    ready,
                    restarts,
                    None,
                )
                .await;
            }
        }
        if let Some(probe) = &liveness
            && due(probe, started, last_live_probe)
        {
            last_live_probe = Some(Instant::now());
            if probe_ok(&netns, container, probe).await {
                live_fail = 0;
            } else {
                live_fail += 1;
                if live_fail >= probe.failure_threshold.unwrap_or(3) {
                    eprintln!("e2e[chart-pod]: node: pod {name}: liveness probe failed; killing");
                    if let Some(pid) = run.pid() {
                        signal(pid, libc::SIGKILL);
                    }
                    live_fail = 0;
                }
            }
        }
    }

    // Deleted: SIGTERM, the grace period, SIGKILL; then the deletion is finished.
    let grace = Duration::from_secs(
        u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
    );
    let mut code = 0;
    if let Some(pid) = run.pid() {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        code = loop {
            if let Some(code) = run.exited() {
                break code;
            }
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("e2e[chart-pod]: node: pod {name}: stopped (exit code {code})");
    }
    run.net.cancel();
    report(
        &api,
        pod,
        container,
        &config.image.id,
        false,
        false,
        restarts,
        Some(code),
    )
    .await;
    let _ = api
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
    Ok(())
}

/// Whether `probe` is due: after its initial delay, every period.
fn due(probe: &Probe, started: Instant, last: Option<Instant>) -> bool {
    let secs = |v: Option<i32>, default: u64| {
        Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
    };
    match last {
        None => started.elapsed() >= secs(probe.initial_delay_seconds, 0),
        Some(at) => at.elapsed() >= secs(probe.period_seconds, 10),
    }
}

/// An HTTP GET probe inside the pod's network namespace: a 2xx or 3xx answer in time.
async fn probe_ok(netns: &Path, container: &Container, probe: &Probe) -> bool {
    let Some(get) = &probe.http_get else {
        return false;
    };
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map_or(0, |p| p.container_port),
    };
    let Ok(port) = u16::try_from(port) else {
        return false;
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let timeout = Duration::from_secs(
        probe
            .timeout_seconds
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(1),
    );
    http_in_netns(netns, port, &path, timeout)
        .await
        .is_ok_and(|(code, _)| (200..400).contains(&code))
}

/// `GET path` on 127.0.0.1:`port` of the pod's network namespace: (status, body).
async fn http_in_netns(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let (netns, path) = (netns.to_path_buf(), path.to_string());
    let bytes = tokio::task::spawn_blocking(move || {
        in_netns(&netns, move || {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut stream = StdStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.write_all(
                format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            Ok(response)
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("GET 127.0.0.1:{port} in the pod: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP answer {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Listens on 127.0.0.1:`port` inside the pod's network namespace and forwards each
/// connection to 127.0.0.1:`port` of the host, until `stop`.
async fn relay(netns: &Path, port: u16, stop: CancellationToken) -> Result<(), String> {
    let netns = netns.to_path_buf();
    let listener = tokio::task::spawn_blocking(move || {
        in_netns(&netns, move || {
            let l = StdListener::bind(("127.0.0.1", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("relay listener on :{port} in the pod: {e}"))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            let Ok((mut inside, _)) = accepted else {
                continue;
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut outside) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inside, &mut outside) => {},
                    _ = stop.cancelled() => {},
                }
            });
        }
    });
    Ok(())
}

/// A token of ServiceAccount `sa` bound to `pod`, from the TokenRequest API (as the kubelet
/// gets the token of a projected ServiceAccount volume).
async fn token_for(config: &NodeConfig, sa: &str, pod: &Pod) -> Result<String, String> {
    let api: Api<ServiceAccount> = Api::namespaced(config.client.clone(), &config.namespace);
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        status: None,
    };
    let answer = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for ServiceAccount {sa}: {e}"))?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("TokenRequest for ServiceAccount {sa}: no token"))
}

/// The container's environment: the image's, the container's (values and downward-API field
/// references), and the API server's address.
fn pod_env(
    config: &NodeConfig,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<(String, String)>, String> {
    let mut env: BTreeMap<String, String> = config.image.env.iter().cloned().collect();
    env.insert("HOSTNAME".into(), pod.name_any());
    env.insert("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into());
    env.insert(
        "KUBERNETES_SERVICE_PORT".into(),
        config.api_port.to_string(),
    );
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            v.clone()
        } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => config.namespace.clone(),
                "metadata.uid" => pod.uid().unwrap_or_default(),
                "spec.nodeName" => crate::kubelet::NODE.into(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
                other => return Err(format!("env {}: fieldRef {other} not served", var.name)),
            }
        } else {
            return Err(format!(
                "env {}: only values and fieldRefs are served",
                var.name
            ));
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env.into_iter().collect())
}

/// The container's process: in the pod's network namespace, a private mount namespace with
/// the root (read-only if asked) and its emptyDirs, chrooted as `uid:gid`.
#[allow(clippy::too_many_arguments)]
fn start_container(
    tools: &Tools,
    netns: &Path,
    root: &Path,
    mounts: &[(PathBuf, String)],
    read_only: bool,
    (uid, gid): (i64, i64),
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child, String> {
    const SCRIPT: &str = r#"set -e
mount="$1"; mkdir="$2"; chroot="$3"; root="$4"; user="$5"; ro="$6"; shift 6
"$mount" --bind "$root" "$root"
while [ "$1" != "--" ]; do
  "$mkdir" -p "$root$2"
  "$mount" --bind "$1" "$root$2"
  shift 2
done
shift
if [ "$ro" = true ]; then "$mount" -o remount,bind,ro "$root"; fi
exec "$chroot" --userspec="$user" "$root" "$@""#;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(&tools.nsenter);
    command
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(&tools.unshare)
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&tools.sh)
        .arg("-c")
        .arg(SCRIPT)
        .arg("sh")
        .arg(&tools.mount)
        .arg(&tools.mkdir)
        .arg(&tools.chroot)
        .arg(root)
        .arg(format!("{uid}:{gid}"))
        .arg(if read_only { "true" } else { "false" });
    for (source, target) in mounts {
        command.arg(source).arg(target);
    }
    command
        .arg("--")
        .args(argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the container: {e}"))
}

/// Reports the pod's status as a kubelet would.
#[allow(clippy::too_many_arguments)]
async fn report(
    api: &Api<Pod>,
    pod: &Pod,
    container: &Container,
    image_id: &str,
    running: bool,
    ready: bool,
    restarts: i32,
    exit: Option<i32>,
) {
    let now = Timestamp::now().to_string();
    let state = if running {
        json!({"running": {"startedAt": now}})
    } else {
        let code = exit.unwrap_or(0);
        json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                              "finishedAt": now}})
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": pod.metadata.creation_timestamp.as_ref().map_or(now.clone(), |t| t.0.to_string()),
        "containerStatuses": [{
            "name": container.name, "image": container.image.clone().unwrap_or_default(),
            "imageID": image_id, "ready": ready, "started": running, "restartCount": restarts,
            "state": state
        }],
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag(ready), "lastTransitionTime": now},
            {"type": "Ready", "status": flag(ready), "lastTransitionTime": now}
        ]
    }});
    if let Err(e) = api
        .patch_status(&pod.name_any(), &status_params(), &Patch::Merge(&status))
        .await
    {
        eprintln!("e2e[chart-pod]: node: status of {}: {e}", pod.name_any());
    }
}

/// PEM of DER certificates (the kubeconfig's CA, when `kube-root-ca.crt` is not published).
fn pem(ders: &[Vec<u8>]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in ders {
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// The CA a pod gets: the `kube-root-ca.crt` ConfigMap the controller-manager publishes into
/// every namespace, else the kubeconfig's.
async fn cluster_ca(client: &Client, ns: &str) -> Result<String, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(cm)) = api.get_opt("kube-root-ca.crt").await
            && let Some(ca) = cm.data.and_then(|d| d.get("ca.crt").cloned())
        {
            return Ok(ca);
        }
        tokio::time::sleep(POLL).await;
    }
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    if let Some(ders) = config.root_cert.filter(|c| !c.is_empty()) {
        return Ok(pem(&ders));
    }
    Err("no kube-root-ca.crt ConfigMap and no CA in the kubeconfig".into())
}

/// `scripts/helm template NS charts/workerpool-operator --namespace NS ARGS...`.
fn helm_template(ns: &str, args: &[&str]) -> Result<String, String> {
    let root = repo_root();
    let output = Command::new(root.join("scripts/helm"))
        .args(["template", ns])
        .arg(root.join("charts/workerpool-operator"))
        .args(["--namespace", ns])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run scripts/helm: {e}"))?;
    ensure(output.status.success(), || {
        format!(
            "scripts/helm template failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Server-side applies every document of `yaml` in `ns` (retrying while a kind is not served yet).
async fn apply_all(client: &Client, ns: &str, yaml: &str) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    for (gvk, object) in documents(yaml, ns, |_| {})? {
        let name = object.name_any();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let started = Instant::now();
        loop {
            let result = match kube::discovery::pinned_kind(client, &gvk).await {
                Ok((resource, _)) => {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(client.clone(), ns, &resource);
                    api.patch(&name, &params, &Patch::Apply(&object))
                        .await
                        .map_err(|e| (retryable(&e), e.to_string()))
                }
                Err(e) => Err((true, format!("discovery: {e}"))),
            };
            match result {
                Ok(_) => break,
                Err((true, _)) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((_, e)) => return Err(format!("apply {} {name}: {e}", gvk.kind)),
            }
        }
        applied.push(format!("{} {name}", gvk.kind));
    }
    Ok(applied)
}

/// Polls `check` until it returns `Ok`, for at most `timeout`; `Err` is the last observation.
async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if started.elapsed() >= timeout => return Err(last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The scenario's state, for the checks and the failure messages.
struct Chart {
    client: Client,
    ns: String,
    selector: String,
    node_dir: PathBuf,
}

impl Chart {
    fn note(&self, message: impl std::fmt::Display) {
        eprintln!("e2e[chart-pod {}]: {message}", self.ns);
    }

    /// Fails with `message` and the tail of every operator pod's log.
    fn fail(&self, message: impl std::fmt::Display) -> ! {
        let mut logs = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.node_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    logs.push_str(&format!(
                        "\n----- {} (last 30 lines) -----\n{}",
                        path.display(),
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    ));
                }
            }
        }
        panic!("e2e[chart-pod {}]: {message}{logs}", self.ns);
    }

    async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        match within(timeout, check).await {
            Ok(v) => v,
            Err(last) => self.fail(format!(
                "timed out after {timeout:?} waiting for {what}\n  last observed: {last}"
            )),
        }
    }

    /// The operator pods that are not being deleted.
    async fn operator_pods(&self) -> Result<Vec<Pod>, String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|e| format!("list operator pods: {e}"))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// The names of `n` operator pods, each Ready.
    async fn ready_pods(&self, n: usize) -> Vec<String> {
        let what = format!("{n} operator pods Ready through the chart's readiness probe");
        self.eventually(&what, Duration::from_secs(120), || async move {
            let pods = self.operator_pods().await?;
            let ready: Vec<String> = pods
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .map(ResourceExt::name_any)
                .collect();
            ensure(ready.len() == n && pods.len() == n, || {
                format!("{} pod(s), Ready: {ready:?}", pods.len())
            })?;
            Ok(ready)
        })
        .await
    }

    async fn lease_holder(&self) -> Result<String, String> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.ns);
        api.get(&self.ns)
            .await
            .map_err(|e| format!("get Lease {}: {e}", self.ns))?
            .spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "the Lease has no holder".to_string())
    }

    async fn get_json(&self, plural_path: &str) -> Result<Value, String> {
        let request = http::Request::get(plural_path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request::<Value>(request)
            .await
            .map_err(|e| format!("GET {plural_path}: {e}"))
    }
}

/// The scenario (see the module documentation).
pub async fn run() {
    let Some(client) = cluster_or_skip("chart-pod").await else {
        return;
    };
    let (archive, tools) = match prerequisites() {
        Ok(found) => found,
        Err(reason) => {
            if env_flag("WPO_E2E_REQUIRE_IMAGE") {
                panic!("e2e[chart-pod]: WPO_E2E_REQUIRE_IMAGE is set but {reason}");
            }
            eprintln!("e2e: skipped — chart pod from the image: {reason}");
            return;
        }
    };
    install_crds(&client).await;
    let suffix: String = {
        use rand::Rng as _;
        let mut rng = rand::rng();
        (0..6)
            .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
            .collect()
    };
    let ns = format!("wpo-e2e-chart-{suffix}");
    let node_dir = logs_dir().join(format!("{ns}-node"));
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{}: {e}", node_dir.display()));
    let image = Image::unpack(&archive, &node_dir.join("image"), &tools)
        .unwrap_or_else(|e| panic!("e2e[chart-pod]: cannot unpack {}: {e}", archive.display()));
    eprintln!(
        "e2e[chart-pod]: image {} ({}), entrypoint {:?} {:?}, user {:?}",
        archive.display(),
        image.id,
        image.entrypoint,
        image.cmd,
        image.user
    );

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            labels: Some(
                [
                    (NAMESPACE_LABEL.to_string(), FIELD_MANAGER.to_string()),
                    // The chart's pod must pass the strictest Pod Security Standard.
                    (
                        "pod-security.kubernetes.io/enforce".to_string(),
                        "restricted".to_string(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    if let Err(e) = namespaces.create(&PostParams::default(), &namespace).await {
        panic!("e2e[chart-pod]: cannot create namespace {ns}: {e}");
    }
    let chart = Chart {
        client: client.clone(),
        ns: ns.clone(),
        selector: format!(
            "app.kubernetes.io/name=workerpool-operator,app.kubernetes.io/instance={ns}"
        ),
        node_dir: node_dir.clone(),
    };
    chart.note(format!(
        "namespace {ns}; pod logs in {}",
        node_dir.display()
    ));

    let node: Arc<Mutex<Option<Node>>> = Arc::default();
    let outcome = AssertUnwindSafe(body(&chart, &image, &tools, &node))
        .catch_unwind()
        .await;

    // Tear-down: the QWorker's pods go while the operator still runs (it releases their
    // task-recovery finalizers), then the operator pods, then the namespace.
    let qworkers = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("quickube.com", "v1alpha1", "QWorker"),
        "qworkers",
    );
    let qw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &qworkers);
    let _ = qw
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let _ = within(Duration::from_secs(30), || async {
        let workers = pods
            .list(&ListParams::default().labels("quickube.com/qworker"))
            .await
            .map_err(|e| e.to_string())?;
        ensure(workers.items.is_empty(), || "worker pods remain".into())
    })
    .await;
    if env_flag("WPO_E2E_KEEP_NAMESPACE") {
        eprintln!("e2e[chart-pod]: keeping namespace {ns} (WPO_E2E_KEEP_NAMESPACE)");
    } else {
        let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
        let _ = within(WAIT, || async {
            // Pods left with a finalizer once the operator is gone: released here.
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items.iter().filter(|p| !p.finalizers().is_empty()) {
                    let patch = json!({"metadata": {"finalizers": null}});
                    let _ = pods
                        .patch(
                            &p.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
            }
            match namespaces.get_opt(&ns).await {
                Ok(None) => Ok(()),
                _ => Err("namespace still there".to_string()),
            }
        })
        .await;
    }
    drop(node.lock().unwrap_or_else(|p| p.into_inner()).take());
    match outcome {
        Ok(()) => eprintln!(
            "e2e[chart-pod]: passed (pod logs in {})",
            node_dir.display()
        ),
        Err(panic) => {
            eprintln!(
                "e2e[chart-pod]: FAILED (pod logs in {})",
                node_dir.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

async fn body(chart: &Chart, image: &Image, tools: &Tools, node: &Mutex<Option<Node>>) {
    let ns = chart.ns.as_str();
    let client = &chart.client;

    // The chart, rendered as a user would install it, and applied.
    let rendered = helm_template(
        ns,
        &[
            "--set",
            &format!("replicaCount={REPLICAS}"),
            "--set",
            &format!("watchNamespace={ns}"),
            "--set",
            &format!("fullnameOverride={ns}"),
        ],
    )
    .unwrap_or_else(|e| chart.fail(e));
    let applied = apply_all(client, ns, &rendered)
        .await
        .unwrap_or_else(|e| chart.fail(e));
    chart.note(format!(
        "applied the rendered chart: {}",
        applied.join(", ")
    ));

    let config = kube::Config::infer()
        .await
        .unwrap_or_else(|e| chart.fail(format!("kubeconfig: {e}")));
    let api_host = config.cluster_url.host().unwrap_or_default().to_string();
    let api_port = config.cluster_url.port_u16().unwrap_or(443);
    if api_host != "127.0.0.1" && api_host != "localhost" {
        chart.fail(format!(
            "the API server is at {api_host}: the node stand-in relays only 127.0.0.1 into pods"
        ));
    }
    let ca_pem = cluster_ca(client, ns)
        .await
        .unwrap_or_else(|e| chart.fail(e));
    *node.lock().unwrap_or_else(|p| p.into_inner()) = Some(Node::start(NodeConfig {
        client: client.clone(),
        namespace: ns.to_string(),
        selector: chart.selector.clone(),
        image: image.clone(),
        tools: tools.clone(),
        api_port,
        ca_pem,
        dir: chart.node_dir.clone(),
    }));

    // 1. Both pods Ready through the chart's own readiness probe (/readyz: caches synced).
    let started = Instant::now();
    let pods = chart.ready_pods(REPLICAS).await;
    chart.note(format!(
        "{REPLICAS} pods Ready from the image after {:.1} s: {pods:?}",
        started.elapsed().as_secs_f64()
    ));

    // 2. Exactly one holds the Lease, and keeps it.
    let holder = chart
        .eventually("a holder of the Lease among the pods", WAIT, || async {
            let holder = chart.lease_holder().await?;
            ensure(pods.contains(&holder), || {
                format!("holder {holder:?} is not one of {pods:?}")
            })?;
            Ok(holder)
        })
        .await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = chart.lease_holder().await.unwrap_or_else(|e| chart.fail(e));
        if now != holder {
            chart.fail(format!(
                "the Lease moved from {holder} to {now} with both pods up"
            ));
        }
    }
    let standby = pods
        .iter()
        .find(|p| **p != holder)
        .cloned()
        .unwrap_or_else(|| chart.fail("no standby pod"));
    chart.note(format!("leader {holder}, standby {standby}"));

    // Both serve /metrics with the image's build.
    let netns_of = |pod: &str| -> PathBuf {
        let guard = node.lock().unwrap_or_else(|p| p.into_inner());
        let runs = guard.as_ref().map(|n| n.pods.clone());
        drop(guard);
        let Some(runs) = runs else {
            chart.fail("no node");
        };
        let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
        let run = runs
            .values()
            .find(|r| r.name == pod)
            .unwrap_or_else(|| chart.fail(format!("the node does not run {pod}")));
        let holder = run.holder.lock().unwrap_or_else(|p| p.into_inner());
        let pid = holder.as_ref().map_or(0, Child::id);
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    };
    for pod in &pods {
        let (code, body) = http_in_netns(&netns_of(pod), 8080, "/metrics", Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| chart.fail(e));
        let line = body
            .lines()
            .find(|l| l.starts_with("workerpool_operator_build_info{"))
            .map(str::to_string);
        if code != 200 || line.is_none() {
            chart.fail(format!(
                "{pod}: /metrics answered {code} without workerpool_operator_build_info"
            ));
        }
        chart.note(format!("{pod}: {}", line.unwrap_or_default()));
    }

    // 3. A QWorker and a StormWorkerPool, reconciled by the leader with the chart's RBAC only.
    let redis_db = 11;
    let manifest = format!(
        r#"
apiVersion: quickube.com/v1alpha1
kind: ScalerConfig
metadata:
  name: redis
spec:
  type: redis
  config:
    host: 127.0.0.1
    port: "{REDIS_PORT}"
    db: {redis_db}
---
apiVersion: quickube.com/v1alpha1
kind: QWorker
metadata:
  name: echo
spec:
  podSpec:
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      seccompProfile:
        type: RuntimeDefault
    containers:
      - name: worker
        image: qworker-echo:0.1.0
        securityContext:
          allowPrivilegeEscalation: false
          capabilities:
            drop: ["ALL"]
  scaleConfig:
    scalerConfigRef: redis
    queue: chart-pod-{ns}
    minReplicas: 1
    maxReplicas: 3
    scalingFactor: 1
"#
    );
    apply_all(client, ns, &manifest)
        .await
        .unwrap_or_else(|e| chart.fail(e));
    apply_all(
        client,
        ns,
        include_str!("../../../../examples/storm-basic-worker-pool.yaml"),
    )
    .await
    .unwrap_or_else(|e| chart.fail(e));
    let worker_pods = |n: usize| async move {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels("quickube.com/qworker=echo"))
            .await
            .map_err(|e| e.to_string())?;
        let live: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        ensure(live.len() == n, || format!("{} worker pod(s)", live.len()))?;
        ensure(
            live.iter().all(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| o.kind == "QWorker" && o.name == "echo")
            }),
            || "a worker pod not owned by the QWorker".into(),
        )
    };
    chart
        .eventually("the QWorker's worker pod", WAIT, || worker_pods(1))
        .await;
    let qworker_status = chart
        .eventually("the QWorker's status", WAIT, || async {
            let qw = chart
                .get_json(&format!(
                    "/apis/quickube.com/v1alpha1/namespaces/{ns}/qworkers/echo"
                ))
                .await?;
            let status = &qw["status"];
            ensure(
                status["desiredReplicas"] == json!(1)
                    && status["currentPodSpecHash"]
                        .as_str()
                        .is_some_and(|h| !h.is_empty()),
                || format!("status {status}"),
            )?;
            Ok(status.clone())
        })
        .await;
    chart.note(format!("QWorker echo reconciled: status {qworker_status}"));
    let pool_status = chart
        .eventually("the StormWorkerPool's status", WAIT, || async {
            let pool = chart
                .get_json(&format!(
                    "/apis/storm.apache.org/v1beta1/namespaces/{ns}/stormworkerpools/my-workers"
                ))
                .await?;
            let conditions = pool["status"]["conditions"].clone();
            ensure(
                conditions.as_array().into_iter().flatten().any(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "False"
                        && c["reason"] == "TopologyNotFound"
                }),
                || format!("status {}", pool["status"]),
            )?;
            Ok(pool["status"].clone())
        })
        .await;
    chart.note(format!(
        "StormWorkerPool my-workers reconciled: phase {}, Ready=False TopologyNotFound",
        pool_status["phase"]
    ));

    // 4. Deleting the leader pod hands the Lease to the standby within the lease duration.
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deleted = Instant::now();
    pod_api
        .delete(&holder, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| chart.fail(format!("delete pod {holder}: {e}")));
    let bound = Duration::from_secs(LEASE_SECONDS);
    let new_holder = chart
        .eventually(
            &format!("another pod to take the Lease after {holder} was deleted"),
            bound,
            || async {
                let now = chart.lease_holder().await?;
                ensure(now != holder, || format!("holder {now}"))?;
                let live: Vec<String> = chart
                    .operator_pods()
                    .await?
                    .iter()
                    .map(ResourceExt::name_any)
                    .collect();
                ensure(live.contains(&now), || {
                    format!("holder {now} is not one of the live pods {live:?}")
                })?;
                Ok(now)
            },
        )
        .await;
    let took = deleted.elapsed();
    let who = if new_holder == standby {
        "the standby"
    } else {
        "the Deployment's replacement pod"
    };
    chart.note(format!(
        "Lease handed over from {holder} to {who} {new_holder} {:.1} s after the delete (bound {LEASE_SECONDS} s)",
        took.as_secs_f64()
    ));
    // The new leader reconciles: a higher minimum adds a worker.
    let qworkers = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("quickube.com", "v1alpha1", "QWorker"),
        "qworkers",
    );
    let qw: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &qworkers);
    qw.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"scaleConfig": {"minReplicas": 2}}})),
    )
    .await
    .unwrap_or_else(|e| chart.fail(format!("patch QWorker echo: {e}")));
    chart
        .eventually("a second worker pod from the new leader", WAIT, || {
            worker_pods(2)
        })
        .await;
    chart.note(format!(
        "the new leader {new_holder} reconciled minReplicas 2"
    ));
    // The Deployment's replacement pod comes up as the new standby.
    let pods = chart.ready_pods(REPLICAS).await;
    chart.note(format!("{REPLICAS} pods Ready again: {pods:?}"));
}
