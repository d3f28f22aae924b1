//! The outages scenario: brokers and the operator going away while workers run.
//!
//! Each broker outage uses a private broker process of its own on a free port (the machine's
//! shared services are never stopped): Redis (`redis-server`, append-only file), RabbitMQ
//! (`rabbitmq-server`, a node of its own) and NATS (`nats-server -js`, file storage). For each:
//! three tasks make three workers; the broker is stopped for [`OUTAGE`] while the scenario
//! checks every second that neither `desiredReplicas` nor the live pods go down and that
//! `BrokerReachable=False` names the reason; the broker is started again on its data and the
//! scenario measures how long the operator takes to read the queue again and checks the three
//! tasks are still there. A broker whose binary is missing or that cannot start is skipped with
//! the reason.
//!
//! Then the operator is SIGKILLed in the middle of a rollout and started again: never more new
//! pods than desired, every old pod drained once. Last, if `WPO_E2E_RESTART_APISERVER` names a
//! command that restarts the API server (and returns when it answers again), the API server is
//! restarted during a rollout and a scale-down: the operator must carry on without restarting
//! itself and without extra pods; without the variable this part is skipped with the reason.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use workerpool_api::QWorker;
use workerpool_queue::{BrokerConfig, NatsConfig, RabbitMqConfig, RedisConfig};

use crate::harness::{Observe, Scenario, WAIT, condition, ensure, free_port};

/// How long each broker is down.
pub const OUTAGE: Duration = Duration::from_secs(60);
/// The longest time the operator may take to read a queue again after its broker is back: one
/// poll after the longest backoff (2 s), the client's reconnection, and margin.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
const SELECTOR_PREFIX: &str = "quickube.com/qworker=";
const DRAIN: &str = "quickube.com/drain";
const HASH: &str = "quickube.com/pod-spec-hash";

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(crate::harness::FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The brokers of the scenario.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Redis,
    RabbitMq,
    Nats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::RabbitMq => "rabbitmq",
            Kind::Nats => "nats",
        }
    }
}

/// A broker process of the scenario's own, restartable on the same data.
struct PrivateBroker {
    kind: Kind,
    port: u16,
    /// RabbitMQ's Erlang distribution port (a free port of its own: one derived from `port`
    /// was `port` itself for every port from 40000 to 59999, and the node could not listen).
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILLs every process whose environment holds `entry` (RabbitMQ's start script runs the node
/// under its own user in a session of its own, out of reach of a process-group kill).
fn kill_by_env(entry: &str) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|e| e == entry.as_bytes()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

impl PrivateBroker {
    fn new(kind: Kind) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let dist_port = (0..10)
            .filter_map(|_| free_port().ok())
            .find(|p| *p != port)
            .ok_or("no second free port")?;
        let dir = std::env::temp_dir().join(format!("wpo-e2e-{}-{port}", kind.name()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // RabbitMQ's start script drops root for its own user.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let mut broker = Self {
            kind,
            port,
            dist_port,
            dir,
            child: None,
        };
        broker.start()?;
        Ok(broker)
    }

    fn command(&self) -> Result<Command, String> {
        let dir = self.dir.display().to_string();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let bin = which("redis-server").ok_or("redis-server is not installed")?;
                let mut c = Command::new(bin);
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &dir,
                ]);
                c
            }
            Kind::Nats => {
                let bin = which("nats-server").ok_or("nats-server is not installed")?;
                let mut c = Command::new(bin);
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir]);
                c
            }
            Kind::RabbitMq => {
                let bin = which("rabbitmq-server").ok_or("rabbitmq-server is not installed")?;
                let conf = self.dir.join("rabbitmq.conf");
                std::fs::write(&conf, format!("listeners.tcp.default = 127.0.0.1:{port}\n"))
                    .map_err(|e| format!("{}: {e}", conf.display()))?;
                let plugins = self.dir.join("enabled_plugins");
                std::fs::write(&plugins, "[].\n")
                    .map_err(|e| format!("{}: {e}", plugins.display()))?;
                let _ = Command::new("chmod")
                    .args(["666"])
                    .arg(&conf)
                    .arg(&plugins)
                    .status();
                let mut c = Command::new(bin);
                c.env("RABBITMQ_CONFIG_FILE", &conf)
                    .env("RABBITMQ_NODENAME", format!("wpoe2e{port}@localhost"))
                    .env("RABBITMQ_NODE_PORT", &port)
                    .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
                    .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
                    .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
                    .env("RABBITMQ_PID_FILE", self.dir.join("pid"));
                c
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .map_err(|e| format!("broker log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("broker log: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(cmd)
    }

    /// Starts the process and waits (up to 60 s) until its port accepts connections.
    fn start(&mut self) -> Result<(), String> {
        let child = self
            .command()?
            .spawn()
            .map_err(|e| format!("cannot start the {} server: {e}", self.kind.name()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!(
                    "the {} server exited at start ({status}); see {}",
                    self.kind.name(),
                    self.dir.join("broker.log").display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the {} server did not listen within 60 s",
                    self.kind.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the whole process group and waits until the port is closed.
    fn stop(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            // `--` before the group: procps-ng 4.0.2's kill reads `-KILL -1234` as a signal to
            // the group of the first digit only (`kill(-1, SIGKILL)`: every process there is).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        // RabbitMQ's node runs as another user under the script: wait for the port to close.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            if matches!(self.kind, Kind::RabbitMq) {
                kill_by_env(&format!("RABBITMQ_NODENAME=wpoe2e{}@localhost", self.port));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            return Err(format!(
                "the {} server still listens on {} after it was killed",
                self.kind.name(),
                self.port
            ));
        }
        Ok(())
    }

    fn config(&self, stream: &str) -> BrokerConfig {
        match self.kind {
            Kind::Redis => BrokerConfig::Redis(RedisConfig {
                host: "127.0.0.1".into(),
                port: self.port,
                password: None,
                db: 0,
                tls: false,
            }),
            Kind::RabbitMq => BrokerConfig::RabbitMq(RabbitMqConfig {
                url: workerpool_queue::amqp_url(
                    "127.0.0.1",
                    self.port,
                    "/",
                    "guest",
                    "guest",
                    false,
                ),
                management_url: None,
            }),
            Kind::Nats => BrokerConfig::Nats(NatsConfig {
                url: format!("nats://127.0.0.1:{}", self.port),
                stream: stream.into(),
                user: None,
                password: None,
                token: None,
                tls: false,
            }),
        }
    }

    /// The ScalerConfig `spec` that reaches this broker.
    fn scaler_spec(&self, stream: &str) -> serde_json::Value {
        let port = self.port.to_string();
        match self.kind {
            Kind::Redis => json!({"type": "redis", "config": {"host": "127.0.0.1", "port": port}}),
            Kind::RabbitMq => json!({"type": "rabbitmq", "config": {
                "host": "127.0.0.1", "port": port,
                "username": {"value": "guest"}, "password": {"value": "guest"}}}),
            Kind::Nats => json!({"type": "nats", "config": {
                "host": "127.0.0.1", "port": port, "stream": stream}}),
        }
    }
}

/// Reports the worker container of `pod` exited 0, as a drained worker does.
async fn worker_exited(pods: &Api<Pod>, pod: &Pod) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let _ = pods
        .patch_status(
            &pod.name_any(),
            &params(),
            &Patch::Merge(&json!({"status": {"containerStatuses": [
                {"name": "worker", "image": "", "imageID": "", "ready": false,
                 "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "finishedAt": now}}}]}})),
        )
        .await;
}

async fn live_pods(api: &Api<Pod>, name: &str) -> Result<Vec<Pod>, String> {
    Ok(api
        .list(&ListParams::default().labels(&format!("{SELECTOR_PREFIX}{name}")))
        .await
        .obs("list pods")?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect())
}

async fn get_qw(s: &Scenario, name: &str) -> Result<QWorker, String> {
    let api: Api<QWorker> = s.api();
    api.get(name).await.obs("get QWorker")
}

fn summary(q: &QWorker) -> String {
    let st = q.status.clone().unwrap_or_default();
    format!(
        "desired {}, current {}, queueLength {:?}, conditions [{}]",
        st.desired_replicas,
        st.current_replicas,
        st.queue_length,
        crate::harness::summarize_conditions(&st.conditions)
    )
}

async fn apply_pair(s: &Scenario, name: &str, queue: &str, scaler: serde_json::Value) {
    let sc = json!({
        "apiVersion": "quickube.com/v1alpha1", "kind": "ScalerConfig",
        "metadata": {"name": name}, "spec": scaler,
    });
    let qw = json!({
        "apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
        "metadata": {"name": name},
        "spec": {
            "podSpec": {"terminationGracePeriodSeconds": 5,
                        "containers": [{"name": "worker", "image": "worker:1"}]},
            "scaleConfig": {"scalerConfigRef": name, "queue": queue,
                            "minReplicas": 1, "maxReplicas": 10, "scalingFactor": 1}
        }
    });
    let yaml = format!(
        "{}\n---\n{}",
        serde_json::to_string(&sc).unwrap_or_default(),
        serde_json::to_string(&qw).unwrap_or_default()
    );
    s.apply_yaml(&format!("{name}.yaml"), &yaml, |_| {}).await;
}

async fn expect_workers(s: &Scenario, name: &str, n: usize) {
    let pods: Api<Pod> = s.api();
    let pods = &pods;
    s.eventually(
        &format!("{n} live workers of {name}"),
        WAIT,
        || async move {
            let live = live_pods(pods, name).await?;
            let q = get_qw(s, name).await?;
            ensure(
                live.len() == n
                    && q.status
                        .as_ref()
                        .is_some_and(|st| st.desired_replicas == n as i32),
                || format!("{} live; {}", live.len(), summary(&q)),
            )
        },
    )
    .await;
}

/// One broker outage; see the module documentation.
async fn outage(s: &Scenario, mut broker: PrivateBroker) {
    let kind = broker.kind.name();
    let name = format!("outage-{kind}");
    let name = name.as_str();
    let queue = format!("outage_{kind}_q");
    let stream = format!("OUTAGE_{}", broker.port);
    let cfg = broker.config(&stream);
    if let BrokerConfig::Nats(n) = &cfg
        && let Err(e) =
            workerpool_queue::ensure_nats_queue(n, &queue, Duration::from_secs(30)).await
    {
        s.fail(format!("cannot create the NATS stream and consumer: {e}"));
    }
    apply_pair(s, name, &queue, broker.scaler_spec(&stream)).await;
    expect_workers(s, name, 1).await;
    let tasks: Vec<Vec<u8>> = (1..=3).map(|i| format!("task-{i}").into_bytes()).collect();
    if let Err(e) = workerpool_queue::push_batch(&cfg, &queue, &tasks).await {
        s.fail(format!("cannot push to the private {kind}: {e}"));
    }
    expect_workers(s, name, 3).await;

    // The outage.
    broker.stop().unwrap_or_else(|e| s.fail(e));
    let down = Instant::now();
    let pods: Api<Pod> = s.api();
    let mut reason = None;
    while down.elapsed() < OUTAGE {
        let q = get_qw(s, name).await.unwrap_or_else(|e| s.fail(e));
        let live = live_pods(&pods, name).await.unwrap_or_else(|e| s.fail(e));
        let st = q.status.clone().unwrap_or_default();
        if st.desired_replicas < 3 || live.len() < 3 {
            s.fail(format!(
                "{kind} down for {:?}: scaled down to {} live pods; {}",
                down.elapsed(),
                live.len(),
                summary(&q)
            ));
        }
        if let Some(c) = condition(&st.conditions, "BrokerReachable")
            && c.status == "False"
        {
            reason.get_or_insert_with(|| (c.reason.clone(), down.elapsed()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some((reason, after)) = reason else {
        s.fail(format!(
            "{kind} down for {OUTAGE:?}: BrokerReachable never became False"
        ));
    };

    // Back.
    broker.start().unwrap_or_else(|e| s.fail(e));
    let up = Instant::now();
    s.eventually(
        &format!("BrokerReachable=True after {kind} came back"),
        WAIT,
        || async move {
            let q = get_qw(s, name).await?;
            let st = q.status.clone().unwrap_or_default();
            ensure(
                condition(&st.conditions, "BrokerReachable").is_some_and(|c| c.status == "True"),
                || summary(&q),
            )
        },
    )
    .await;
    let recovered = up.elapsed();
    if recovered > RECOVERY_BOUND {
        s.fail(format!(
            "the operator read the {kind} queue again only {recovered:?} after the broker came back"
        ));
    }
    let depth = match workerpool_queue::connect(&cfg).await {
        Ok(b) => b.depth(&queue, &[]).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if depth != Ok(3) {
        s.fail(format!(
            "{kind}: after the outage the queue holds {depth:?}, want 3"
        ));
    }
    expect_workers(s, name, 3).await;
    s.note(format!(
        "{kind} down {OUTAGE:?}: no scale-down (3 workers kept), BrokerReachable=False ({reason}) after {:.1} s, queue read again {:.1} s after the broker came back, 3 of 3 tasks kept",
        after.as_secs_f64(),
        recovered.as_secs_f64()
    ));
    let qws: Api<QWorker> = s.api();
    let _ = qws.delete(name, &DeleteParams::default()).await;
    s.eventually(&format!("the pods of {name} gone"), WAIT, || async {
        let left = pods
            .list(&ListParams::default().labels(&format!("{SELECTOR_PREFIX}{name}")))
            .await
            .obs("list pods")?;
        ensure(left.items.is_empty(), || {
            format!("{} pod(s) left", left.items.len())
        })
    })
    .await;
}

/// A rollout with the operator killed in its middle: never more new pods than desired, each old
/// pod drained once, and the rollout completes after the restart.
async fn rollout_with(s: &Scenario, name: &str, interrupt: impl AsyncFnOnce()) -> (usize, usize) {
    let pods: Api<Pod> = s.api();
    let pods = &pods;
    let old_hash = live_pods(pods, name).await.unwrap_or_else(|e| s.fail(e))[0]
        .labels()
        .get(HASH)
        .cloned()
        .unwrap_or_default();
    let qws: Api<QWorker> = s.api();
    let env = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string();
    if let Err(e) = qws
        .patch(
            name,
            &params(),
            &Patch::Merge(&json!({"spec": {"podSpec": {"containers": [
                {"name": "worker", "image": "worker:1", "env": [{"name": "ROLL", "value": env}]}
            ]}}})),
        )
        .await
    {
        s.fail(format!("cannot change the pod template: {e}"));
    }
    // Sample while the rollout goes on: new-hash pods never above 3; old pods drain once.
    let most_new = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (most_new, sampling, pods, name, old) = (
            most_new.clone(),
            sampling.clone(),
            pods.clone(),
            name.to_string(),
            old_hash.clone(),
        );
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(live) = live_pods(&pods, &name).await {
                    let new = live
                        .iter()
                        .filter(|p| p.labels().get(HASH) != Some(&old))
                        .count();
                    most_new.fetch_max(new, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    interrupt().await;
    // The old workers leave as a worker would: once asked, their worker container ends.
    let old_ref = old_hash.as_str();
    s.eventually("the rollout to complete", WAIT, || async move {
        let live = live_pods(pods, name).await?;
        for p in live
            .iter()
            .filter(|p| p.labels().get(HASH).map(String::as_str) == Some(old_ref))
        {
            if p.annotations().contains_key(DRAIN) {
                worker_exited(pods, p).await;
            }
        }
        let old = live
            .iter()
            .filter(|p| p.labels().get(HASH).map(String::as_str) == Some(old_ref))
            .count();
        let new = live.len() - old;
        ensure(old == 0 && new == 3, || {
            format!("{old} old and {new} new live pods")
        })
    })
    .await;
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = sampler.await;
    let events = s.events_about("QWorker", name).await.unwrap_or_default();
    let drains = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RollingOut"))
        .map(|e| e.series.as_ref().map_or(1, |x| x.count.max(1) as usize))
        .sum::<usize>();
    (most_new.load(std::sync::atomic::Ordering::SeqCst), drains)
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    s.wait_default_service_account().await;
    for kind in [Kind::Redis, Kind::RabbitMq, Kind::Nats] {
        match PrivateBroker::new(kind) {
            Ok(broker) => outage(s, broker).await,
            Err(why) => s.note(format!("{} outage: skipped — {why}", kind.name())),
        }
    }

    // The operator SIGKILLed in the middle of a rollout, on a Redis QWorker with 3 workers.
    let mut broker = match PrivateBroker::new(Kind::Redis) {
        Ok(b) => b,
        Err(why) => {
            s.note(format!(
                "operator kill and API server restart: skipped — {why}"
            ));
            return;
        }
    };
    let name = "outage-rollout";
    let queue = "outage_rollout_q";
    let cfg = broker.config("");
    apply_pair(s, name, queue, broker.scaler_spec("")).await;
    let tasks: Vec<Vec<u8>> = (1..=3).map(|i| format!("task-{i}").into_bytes()).collect();
    if let Err(e) = workerpool_queue::push_batch(&cfg, queue, &tasks).await {
        s.fail(format!("cannot push: {e}"));
    }
    expect_workers(s, name, 3).await;
    let (most_new, drains) = rollout_with(s, name, async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.operator.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.operator.restart().unwrap_or_else(|e| s.fail(e));
        s.wait_operator_ready().await;
    })
    .await;
    if most_new > 3 {
        s.fail(format!(
            "{most_new} new pods at once during the interrupted rollout (desired 3)"
        ));
    }
    s.note(format!(
        "operator SIGKILLed mid-rollout and restarted: at most {most_new} new pods, RollingOut Events for {drains} drain(s) of 3 old pods, rollout complete"
    ));

    // The API server restarted during a rollout and a scale-down.
    let Ok(restart) = std::env::var("WPO_E2E_RESTART_APISERVER") else {
        s.note("API server restart: skipped — WPO_E2E_RESTART_APISERVER does not name a command that restarts the API server");
        return;
    };
    let (most_new, _) = rollout_with(s, name, async || {
        let status = Command::new("sh").arg("-c").arg(&restart).status();
        if !status.as_ref().is_ok_and(|st| st.success()) {
            s.fail(format!("`{restart}` failed: {status:?}"));
        }
    })
    .await;
    if let Some(status) = s.operator.exited() {
        s.fail(format!(
            "the operator exited during the API server restart ({status})"
        ));
    }
    if most_new > 3 {
        s.fail(format!(
            "{most_new} new pods at once across the API server restart"
        ));
    }
    // Scale-down across another restart: the queue empties, 3 -> 1.
    let _ = Command::new("redis-cli")
        .args(["-p", &broker.port.to_string(), "DEL", queue])
        .status();
    let status = Command::new("sh").arg("-c").arg(&restart).status();
    if !status.as_ref().is_ok_and(|st| st.success()) {
        s.fail(format!("`{restart}` failed: {status:?}"));
    }
    let pods: Api<Pod> = s.api();
    let pods = &pods;
    s.eventually(
        "exactly 2 workers drained, then 1 left",
        WAIT,
        || async move {
            let live = live_pods(pods, name).await?;
            let drained: Vec<&Pod> = live
                .iter()
                .filter(|p| p.annotations().contains_key(DRAIN))
                .collect();
            for p in &drained {
                worker_exited(pods, p).await;
            }
            ensure(live.len() == 1, || {
                format!("{} live pods ({} draining)", live.len(), drained.len())
            })
        },
    )
    .await;
    if let Some(status) = s.operator.exited() {
        s.fail(format!(
            "the operator exited during the API server restarts ({status})"
        ));
    }
    let _ = broker.stop();
    s.note(format!(
        "API server restarted during a rollout (at most {most_new} new pods) and a scale-down (3 -> 1); the operator carried on without restarting"
    ));
}
