//! The machinery of the end-to-end suite: the reachability gate, CRD installation, the operator
//! process, one namespace per scenario, bounded waits, and small API helpers.
//!
//! Everything here is written for a real API server with a controller-manager but without
//! nodes, scheduler or metrics-server: pods are created and stay `Pending`, Deployments never
//! get ready replicas on their own, HPAs cannot read metrics.

use std::fmt::{Debug, Display};
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Field manager of everything the suite applies or patches.
pub const FIELD_MANAGER: &str = "workerpool-e2e";
/// The operator binary built by Cargo for this test.
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_workerpool-operator");
/// Interval of every poll.
pub const POLL: Duration = Duration::from_millis(500);
/// Default bound of a wait.
pub const WAIT: Duration = Duration::from_secs(60);
/// Bound of a wait that depends on a backed-off retry of the operator (broker polls back off to 30 s).
pub const LONG_WAIT: Duration = Duration::from_secs(120);
/// The worker pods the node stand-in serves (QWorker pods; Storm pools' pods stay Pending).
pub const WORKER_PODS: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=qworker";
/// Label put on every namespace the suite creates, for manual clean-up after an interrupted run.
pub const NAMESPACE_LABEL: &str = "app.kubernetes.io/created-by";

/// Maps any error into the "last observation" string of a wait.
pub trait Observe<T> {
    /// `Err(e)` becomes `Err("<what>: <e>")`.
    fn obs(self, what: &str) -> Result<T, String>;
}

impl<T, E: Display> Observe<T> for Result<T, E> {
    fn obs(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// `Err(message)` unless `cond` holds: the check helper of every wait.
pub fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(message()) }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A client for the cluster that `KUBECONFIG` (or `~/.kube/config`, or the in-cluster config)
/// names, or `None` after printing why every test skips. The gate: building the client and
/// `GET /version` must both succeed within 5 s. `WPO_E2E_REQUIRE_CLUSTER=1` turns the skip into
/// a failure (for CI jobs that must not pass vacuously).
pub async fn cluster_or_skip(scenario: &str) -> Option<Client> {
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| "<unset>".to_string());
    let attempt = tokio::time::timeout(Duration::from_secs(5), async {
        let client = Client::try_default()
            .await
            .map_err(|e| format!("cannot build a client: {e}"))?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| format!("GET /version failed: {e}"))?;
        Ok::<_, String>((client, version))
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 5 s".to_string()));
    match attempt {
        Ok((client, version)) => {
            eprintln!(
                "e2e[{scenario}]: cluster reachable (KUBECONFIG={kubeconfig}; server {})",
                version.git_version
            );
            Some(client)
        }
        Err(error) => {
            let message = format!("no reachable cluster (KUBECONFIG={kubeconfig}; error: {error})");
            if env_flag("WPO_E2E_REQUIRE_CLUSTER") {
                panic!("e2e: WPO_E2E_REQUIRE_CLUSTER is set but there is {message}");
            }
            eprintln!("e2e: skipped — {message}");
            None
        }
    }
}

/// Installs every CRD by server-side apply with the suite's field manager and waits until each
/// is Established ([`workerpool_testkit::install_crds`]).
pub async fn install_crds(client: &Client) {
    workerpool_testkit::install_crds(client, FIELD_MANAGER).await;
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The operator process of one scenario, killed when stopped or dropped.
pub struct Operator {
    child: Mutex<Option<Child>>,
    /// Port of `/metrics`, `/healthz` and `/readyz` on 127.0.0.1.
    pub port: u16,
    /// File with the operator's stdout and stderr.
    pub log: PathBuf,
    namespace: String,
    /// Watches every namespace (no `--namespace`); `namespace` still names its log and calls.
    cluster_wide: bool,
    kubeconfig: Option<PathBuf>,
    extra: Vec<String>,
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `target/e2e-logs/`, next to the directory of the operator binary.
pub fn logs_dir() -> PathBuf {
    let bin = Path::new(OPERATOR_BIN);
    bin.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("e2e-logs")
}

impl Operator {
    /// Starts `workerpool-operator run` watching only `namespace`, with its log in a file;
    /// `kubeconfig` replaces the inherited `KUBECONFIG` (for the suite's self-check).
    pub fn start(namespace: &str, kubeconfig: Option<&Path>) -> Result<Self, String> {
        Self::start_with(namespace, kubeconfig, &[], "")
    }

    /// Like [`Operator::start`], with extra arguments of `run` and a log name suffix.
    pub fn start_with(
        namespace: &str,
        kubeconfig: Option<&Path>,
        extra: &[&str],
        log_suffix: &str,
    ) -> Result<Self, String> {
        Self::launch(namespace, false, kubeconfig, extra, log_suffix)
    }

    /// Starts `workerpool-operator run` watching every namespace (no `--namespace`), as the
    /// chart installs it by default; its log is `<namespace><log_suffix>.log` and its API calls
    /// are recorded for `namespace`'s scenario, as [`Operator::start_with`] does.
    pub fn start_cluster_wide(namespace: &str, log_suffix: &str) -> Result<Self, String> {
        Self::launch(namespace, true, None, &[], log_suffix)
    }

    fn launch(
        namespace: &str,
        cluster_wide: bool,
        kubeconfig: Option<&Path>,
        extra: &[&str],
        log_suffix: &str,
    ) -> Result<Self, String> {
        let port = free_port().obs("cannot pick a free port")?;
        let dir = logs_dir();
        std::fs::create_dir_all(&dir).obs(&format!("cannot create {}", dir.display()))?;
        let log = dir.join(format!("{namespace}{log_suffix}.log"));
        File::create(&log).obs(&format!("cannot create {}", log.display()))?;
        let operator = Self {
            child: Mutex::new(None),
            port,
            log,
            namespace: namespace.to_string(),
            cluster_wide,
            kubeconfig: kubeconfig.map(Path::to_path_buf),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        operator.spawn()?;
        Ok(operator)
    }

    /// Starts the process (appending to the log) unless it runs.
    fn spawn(&self) -> Result<(), String> {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .obs(&format!("cannot open {}", self.log.display()))?;
        let stdout = stderr.try_clone().obs("cannot clone the log file handle")?;
        let mut command = Command::new(OPERATOR_BIN);
        if let Some(path) = &self.kubeconfig {
            command.env("KUBECONFIG", path);
        }
        // Every API call of the operator, for the suite's RBAC check (e2e/rbac.rs).
        let calls = crate::rbac::calls_file(&self.log);
        if self.kubeconfig.is_none() {
            // WPO_E2E_CHART_RBAC=1: as the chart's ServiceAccount, with the chart's RBAC only.
            if let Some(user) = crate::rbac::chart_identity(&self.namespace)? {
                command.env("KUBE_RS_DEBUG_IMPERSONATE_USER", user);
            }
        }
        command.arg("run");
        if !self.cluster_wide {
            command.args(["--namespace", &self.namespace]);
        }
        let child = command
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.port)])
            .arg("--record-api-calls")
            .arg(&calls)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("METRICS_ADDR")
            .env_remove("LEADER_ELECTION")
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .obs(&format!("cannot start {OPERATOR_BIN}"))?;
        crate::rbac::register(&self.namespace, &calls, child.id());
        *slot = Some(child);
        Ok(())
    }

    /// Starts the process again after [`Operator::stop`] (same port and log).
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    /// Kills the process with SIGKILL (idempotent).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the process to stop with SIGTERM and waits up to 10 s for it to exit (then kills
    /// it): the operator's graceful shutdown.
    pub fn terminate(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = child.take() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again if a scenario left it stopped.
    pub fn restart_if_stopped(&self) -> Result<(), String> {
        self.spawn()
    }

    /// The exit status if the process has ended.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of the operator's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match File::open(&self.log) {
            Ok(f) => {
                let all: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET http://127.0.0.1:<port><path>` over a plain HTTP/1.0 connection: (status, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    let request = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    });
    let bytes = request
        .await
        .obs("HTTP task failed")?
        .obs(&format!("GET 127.0.0.1:{port}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed HTTP status line: {head:?}"))?;
    Ok((code, body.to_string()))
}

/// One scenario: a client, its own namespace and its own operator process.
#[derive(Clone)]
pub struct Scenario {
    /// The API client.
    pub client: Client,
    /// The scenario's namespace.
    pub ns: String,
    /// The operator process watching `ns`.
    pub operator: Arc<Operator>,
    /// The node stand-in serving the namespace's worker pods (kept until the namespace is gone).
    pub kubelet: Arc<crate::kubelet::Kubelet>,
}

/// Runs `body` as a scenario named `name`: skips without a cluster; otherwise installs the
/// CRDs, creates the namespace `wpo-e2e-<name>-<random>`, starts the operator on it, runs the
/// body, and always stops the operator and deletes the namespace (also when the body panics;
/// `WPO_E2E_KEEP_NAMESPACE=1` keeps it for debugging).
pub async fn scenario<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Scenario) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(client) = cluster_or_skip(name).await else {
        return;
    };
    install_crds(&client).await;

    let ns = format!("wpo-e2e-{name}-{}", random_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = namespaces
        .create(&PostParams::default(), &namespace(&ns))
        .await
    {
        panic!("e2e[{name}]: cannot create namespace {ns}: {e}");
    }
    eprintln!("e2e[{name}]: namespace {ns}");

    let operator = match Operator::start(&ns, None) {
        Ok(op) => Arc::new(op),
        Err(e) => {
            delete_namespace(&namespaces, &ns).await;
            panic!("e2e[{name}]: {e}");
        }
    };
    eprintln!(
        "e2e[{name}]: operator started, watching {ns}, metrics on 127.0.0.1:{}, log {}",
        operator.port,
        operator.log.display()
    );
    let kubelet = Arc::new(crate::kubelet::Kubelet::start(
        client.clone(),
        &ns,
        WORKER_PODS,
    ));
    let s = Scenario {
        client: client.clone(),
        ns: ns.clone(),
        operator: operator.clone(),
        kubelet: kubelet.clone(),
    };
    let outcome = AssertUnwindSafe(async {
        s.wait_operator_ready().await;
        body(s.clone()).await;
    })
    .catch_unwind()
    .await;

    if env_flag("WPO_E2E_KEEP_NAMESPACE") {
        operator.stop();
        eprintln!("e2e[{name}]: keeping namespace {ns} (WPO_E2E_KEEP_NAMESPACE)");
    } else {
        // The operator keeps running while the namespace goes: it releases the task-recovery
        // finalizers of the worker pods being deleted.
        let _ = operator.restart_if_stopped();
        remove_namespace(&client, &ns).await;
        operator.stop();
    }
    drop(kubelet);
    match outcome {
        Ok(()) => eprintln!(
            "e2e[{name}]: passed (operator log: {})",
            operator.log.display()
        ),
        Err(panic) => {
            eprintln!(
                "e2e[{name}]: FAILED (operator log: {})",
                operator.log.display()
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// A namespace of the suite: labelled [`NAMESPACE_LABEL`] (for manual clean-up) and with the
/// `privileged` Pod Security level.
pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [
                    (NAMESPACE_LABEL.to_string(), FIELD_MANAGER.to_string()),
                    // Worker pods must be admitted even where a cluster-wide Pod Security
                    // default is stricter (the seed's pods set no security context).
                    (
                        "pod-security.kubernetes.io/enforce".to_string(),
                        "privileged".to_string(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// Deletes namespace `ns` and waits up to [`WAIT`] for it to go (an operator watching it
/// releases the task-recovery finalizers meanwhile); then removes the finalizers of the pods
/// still in it.
pub async fn remove_namespace(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    delete_namespace(&namespaces, ns).await;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && matches!(namespaces.get_opt(ns).await, Ok(Some(_))) {
        tokio::time::sleep(POLL).await;
    }
    if matches!(namespaces.get_opt(ns).await, Ok(Some(_))) {
        eprintln!("e2e: namespace {ns} still exists {WAIT:?} after its deletion");
        release_pods(client, ns).await;
    }
}

/// Removes the finalizers of the pods still in `ns` once its scenario is over, so that the
/// namespace goes: a worker pod keeps its task-recovery finalizer while its broker, which the
/// scenario may have stopped, cannot take its tasks back.
async fn release_pods(client: &Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods.list(&Default::default()).await else {
        return;
    };
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    for pod in list.items.iter().filter(|p| !p.finalizers().is_empty()) {
        let name = pod.name_any();
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => eprintln!(
                "e2e: removed the finalizers {:?} of pod {ns}/{name}",
                pod.finalizers()
            ),
            Err(e) => eprintln!("e2e: could not remove the finalizers of pod {ns}/{name}: {e}"),
        }
    }
}

async fn delete_namespace(api: &Api<Namespace>, ns: &str) {
    match api.delete(ns, &DeleteParams::background()).await {
        Ok(_) => eprintln!("e2e: deleting namespace {ns}"),
        Err(e) => eprintln!("e2e: could not delete namespace {ns}: {e}"),
    }
}

impl Scenario {
    /// Prints a progress line.
    pub fn note(&self, message: impl Display) {
        eprintln!("e2e[{}]: {message}", self.ns);
    }

    /// Fails the test with `message` and the tail of the operator's log.
    pub fn fail(&self, message: impl Display) -> ! {
        panic!(
            "e2e[{}]: {message}\n----- last lines of the operator log ({}) -----\n{}\n-----",
            self.ns,
            self.operator.log.display(),
            self.operator.log_tail(60)
        );
    }

    /// A typed API in the scenario's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Polls `check` every 500 ms until it returns `Ok`, for at most `timeout`; on timeout,
    /// fails with `what`, the last observation (`Err` text) and the operator log.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        match self.within(timeout, check).await {
            Ok(v) => v,
            Err(last) => self.fail(format!(
                "timed out after {timeout:?} waiting for {what}\n  last observed: {last}"
            )),
        }
    }

    /// Polls `check` every 500 ms until it returns `Ok`, for at most `timeout`; returns the
    /// last observation on timeout instead of failing. Fails at once if the operator exits.
    pub async fn within<T, F, Fut>(&self, timeout: Duration, mut check: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        loop {
            let last = match check().await {
                Ok(v) => return Ok(v),
                Err(observed) => observed,
            };
            if let Some(status) = self.operator.exited() {
                self.fail(format!(
                    "the operator exited ({status})\n  last observed: {last}"
                ));
            }
            if started.elapsed() >= timeout {
                return Err(last);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Checks every 500 ms for `duration` that `check` keeps returning `Ok`; fails at once otherwise.
    pub async fn consistently<F, Fut>(&self, what: &str, duration: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        loop {
            if let Err(observed) = check().await {
                self.fail(format!(
                    "{what} stopped holding after {:?}\n  observed: {observed}",
                    started.elapsed()
                ));
            }
            if started.elapsed() >= duration {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the operator's `/readyz` answers 200 and returns how long that took.
    pub async fn wait_operator_ready(&self) -> Duration {
        let port = self.operator.port;
        let started = Instant::now();
        self.eventually(
            "the operator's /readyz to answer 200",
            WAIT,
            || async move {
                let (code, body) = http_get(port, "/readyz").await?;
                ensure(code == 200, || format!("/readyz answered {code}: {body}"))
            },
        )
        .await;
        let took = started.elapsed();
        self.note(format!(
            "operator ready ({} ms after the first check)",
            took.as_millis()
        ));
        took
    }

    /// Waits for the namespace's `default` ServiceAccount (created by kube-controller-manager);
    /// pods cannot be created before it exists.
    pub async fn wait_default_service_account(&self) {
        let api: Api<ServiceAccount> = self.api();
        let api = &api;
        self.eventually(
            "the namespace's default ServiceAccount (is kube-controller-manager running?)",
            WAIT,
            || async move {
                api.get_opt("default")
                    .await
                    .obs("get serviceaccount default")?
                    .map(|_| ())
                    .ok_or_else(|| "not created yet".to_string())
            },
        )
        .await;
    }

    /// The body of `GET /metrics` of the operator.
    pub async fn metrics(&self) -> Result<String, String> {
        let (code, body) = http_get(self.operator.port, "/metrics").await?;
        ensure(code == 200, || format!("/metrics answered {code}"))?;
        Ok(body)
    }

    /// Applies (server-side, forced, field manager `workerpool-e2e`) every document of a
    /// multi-document YAML stream in the scenario's namespace, after `edit`. Each document is
    /// applied as a DynamicObject whose resource is discovered from its apiVersion and kind.
    pub async fn apply_yaml(
        &self,
        source: &str,
        yaml: &str,
        edit: impl Fn(&mut serde_json::Value),
    ) -> Vec<DynamicObject> {
        let objects =
            documents(yaml, &self.ns, edit).unwrap_or_else(|e| self.fail(format!("{source}: {e}")));
        let mut applied = Vec::new();
        for (gvk, object) in &objects {
            applied.push(self.apply_dynamic(source, gvk, object).await);
        }
        applied
    }

    async fn apply_dynamic(
        &self,
        source: &str,
        gvk: &GroupVersionKind,
        object: &DynamicObject,
    ) -> DynamicObject {
        let name = object.name_any();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let started = Instant::now();
        loop {
            // A freshly Established CRD can take a moment to appear in discovery and be served.
            let result = match kube::discovery::pinned_kind(&self.client, gvk).await {
                Ok((resource, _caps)) => {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(self.client.clone(), &self.ns, &resource);
                    api.patch(&name, &params, &Patch::Apply(object))
                        .await
                        .map_err(|e| (retryable(&e), e.to_string()))
                }
                Err(e) => Err((true, format!("discovery: {e}"))),
            };
            match result {
                Ok(o) => return o,
                Err((true, e)) if started.elapsed() < Duration::from_secs(30) => {
                    self.note(format!("apply {} {name}: {e}; retrying", gvk.kind));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err((_, e)) => {
                    self.fail(format!("{source}: apply {} {name} failed: {e}", gvk.kind))
                }
            }
        }
    }

    /// Events (`events.k8s.io/v1`) of the namespace about the object `kind`/`name`.
    pub async fn events_about(&self, kind: &str, name: &str) -> Result<Vec<Event>, String> {
        let api: Api<Event> = self.api();
        let list = api
            .list(&ListParams::default())
            .await
            .obs("list events.k8s.io/v1 Events")?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.name.as_deref() == Some(name) && r.kind.as_deref() == Some(kind)
                })
            })
            .collect())
    }

    /// Waits for an Event of `type_` (`Normal`/`Warning`) and `reason` about `kind`/`name`
    /// whose note contains `note_contains`.
    pub async fn expect_event(
        &self,
        kind: &str,
        name: &str,
        type_: &str,
        reason: &str,
        note_contains: &str,
    ) -> Event {
        let what = format!("a {type_} Event {reason} about {kind} {name}");
        self.eventually(&what, WAIT, || async move {
            let events = self.events_about(kind, name).await?;
            events
                .iter()
                .find(|e| {
                    e.type_.as_deref() == Some(type_)
                        && e.reason.as_deref() == Some(reason)
                        && e.note.as_deref().unwrap_or("").contains(note_contains)
                })
                .cloned()
                .ok_or_else(|| format!("events about it: [{}]", summarize_events(&events)))
        })
        .await
    }
}

/// The documents of a multi-document YAML stream as DynamicObjects in namespace `ns`, each
/// with the group, version and kind of its `apiVersion` and `kind`, after `edit`.
pub fn documents(
    yaml: &str,
    ns: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> Result<Vec<(GroupVersionKind, DynamicObject)>, String> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = serde_json::Value::deserialize(document).obs("not YAML")?;
        if value.is_null() {
            continue;
        }
        edit(&mut value);
        value["metadata"]["namespace"] = serde_json::json!(ns);
        let object: DynamicObject = serde_json::from_value(value).obs("not a Kubernetes object")?;
        let gvk = object
            .types
            .as_ref()
            .and_then(|t| GroupVersionKind::try_from(t).ok())
            .ok_or_else(|| format!("{} has no valid apiVersion/kind", object.name_any()))?;
        out.push((gvk, object));
    }
    Ok(out)
}

/// Whether an API error may go away by itself (CRD not served yet, conflicts, server trouble).
pub fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 404 | 409 | 429) || s.code >= 500,
        _ => true,
    }
}

/// `type/reason: note` of each event, for failure messages.
pub fn summarize_events(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{}/{}: {}",
                e.type_.as_deref().unwrap_or("?"),
                e.reason.as_deref().unwrap_or("?"),
                e.note.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `type=status/reason: message` of each condition, for failure messages.
pub fn summarize_conditions(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| format!("{}={}/{}: {}", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The condition of `type_`.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Checks that `meta` has exactly one controller ownerReference and that it names `owner`.
pub fn controlled_by<K>(what: &str, meta: &ObjectMeta, owner: &K) -> Result<(), String>
where
    K: Resource<DynamicType = ()>,
{
    let controllers: Vec<&OwnerReference> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .collect();
    let [reference] = controllers.as_slice() else {
        return Err(format!(
            "{what}: expected exactly one controller ownerReference, found {controllers:?}"
        ));
    };
    let want_uid = owner.meta().uid.as_deref().unwrap_or_default();
    ensure(
        reference.uid == want_uid
            && reference.kind == K::kind(&())
            && reference.api_version == K::api_version(&())
            && Some(reference.name.as_str()) == owner.meta().name.as_deref(),
        || {
            format!(
                "{what}: controller ownerReference {reference:?} does not name {} {} (uid {want_uid})",
                K::kind(&()),
                owner.meta().name.as_deref().unwrap_or_default()
            )
        },
    )
}

/// Whether `manager` owns the field at `path` (FieldsV1 keys such as `f:spec`) through an apply.
pub fn applied_field_owned_by(meta: &ObjectMeta, manager: &str, path: &[&str]) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            path.iter()
                .try_fold(&f.0, |node, key| node.get(key))
                .is_some()
        })
}

/// Whether `manager` has any apply entry in `meta.managedFields`.
pub fn has_apply_entry(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.operation.as_deref() == Some("Apply")
            && m.subresource.as_deref().unwrap_or("").is_empty()
    })
}

/// Expects the dry-run creation of `object` to be rejected with 422 and a message containing
/// `message` (a CEL rule of the CRD, evaluated by the real API server).
pub async fn expect_rejected<K>(s: &Scenario, what: &str, object: &K, message: &str)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let api: Api<K> = s.api();
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    match api.create(&params, object).await {
        Ok(_) => s.fail(format!(
            "{what}: the API server accepted it (dry run); the CEL rule \"{message}\" was not enforced"
        )),
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(message) => {
            s.note(format!("{what}: rejected as expected (422: {})", status.message));
        }
        Err(e) => s.fail(format!(
            "{what}: expected a 422 rejection mentioning \"{message}\", got: {e}"
        )),
    }
}

/// Expects a metrics exposition to contain a series of `family` whose labels include every
/// `name="value"` pair of `labels`; returns the matching line.
pub fn find_series(body: &str, family: &str, labels: &[(&str, &str)]) -> Result<String, String> {
    let prefix = format!("{family}{{");
    body.lines()
        .find(|line| {
            line.starts_with(&prefix)
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .map(str::to_string)
        .ok_or_else(|| {
            let family_lines: Vec<&str> = body.lines().filter(|l| l.starts_with(&prefix)).collect();
            format!(
                "no {family}{{..}} series with {labels:?}; series of that family: {family_lines:?}"
            )
        })
}
