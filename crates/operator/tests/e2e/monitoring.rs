//! The monitoring scenario: a real Prometheus (the machine's `prometheus`, 1 s scrapes, on a free
//! port of 127.0.0.1, its TSDB in a temporary directory, with the chart's alert rules loaded)
//! scrapes the operator during a QWorker workload (a queue that fills and empties, a QWorker
//! scaled by rates, an unreachable broker) and a Storm workload (an external cluster served by the suite's Storm
//! UI, two observed topologies, a pool scaled by the operator and one by an HPA). Then every
//! panel query of every dashboard of the chart (`monitoring/dashboards/*.json`) is evaluated
//! through Prometheus' HTTP API, with its template variables replaced: the scenario fails on a
//! query Prometheus rejects, and on one that returns no series. It also checks that every alert rule evaluates without error and that the
//! unreachable broker's alert is pending.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;
use workerpool_api::QWorker;
use workerpool_api::storm::{ClusterPhase, TopologyPhase};
use workerpool_api::{StormCluster, StormTopology};

use crate::harness::{
    LONG_WAIT, Observe, Scenario, WAIT, WORKER_PODS, condition, ensure, free_port, http_get,
    logs_dir, summarize_conditions,
};
use crate::redis::TestRedis;
use workerpool_testkit::storm_ui::StormUi;

/// The Prometheus binary (Debian package `prometheus`).
const PROMETHEUS: &str = "prometheus";
/// The job name of the scrape: the alerts select jobs whose name contains workerpool-operator.
const JOB: &str = "workerpool-operator";
/// What `$__rate_interval` becomes: four scrape intervals and more.
const RATE_INTERVAL: &str = "30s";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/workerpool-operator")
}

/// Why the scenario cannot run on this machine (no usable `prometheus`), or `None`.
pub fn prometheus_missing() -> Option<String> {
    match Command::new(PROMETHEUS).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`{PROMETHEUS} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "no `{PROMETHEUS}` on PATH ({e}); install the Debian package prometheus"
        )),
    }
}

/// A Prometheus process scraping the operator; killed, and its TSDB removed, when dropped.
pub struct Prometheus {
    child: Child,
    /// Port of its HTTP API on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus for the scenario `ns`, scraping 127.0.0.1:`target` every second and
    /// evaluating the chart's alert rules every second.
    pub fn start(ns: &str, target: u16) -> Result<Self, String> {
        let port = free_port().obs("cannot pick a free port")?;
        let dir = std::env::temp_dir().join(format!("wpo-e2e-prometheus-{ns}"));
        std::fs::create_dir_all(&dir).obs(&format!("cannot create {}", dir.display()))?;
        let rules = chart_dir().join("monitoring/alerts.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
            rules = rules.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).obs("cannot write prometheus.yml")?;
        let logs = logs_dir();
        std::fs::create_dir_all(&logs).obs("cannot create the logs directory")?;
        let log = logs.join(format!("{ns}-prometheus.log"));
        let out = std::fs::File::create(&log).obs(&format!("cannot create {}", log.display()))?;
        let err = out.try_clone().obs("cannot clone the log file handle")?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .obs(&format!("cannot start {PROMETHEUS}"))?;
        Ok(Self {
            child,
            port,
            dir,
            log,
        })
    }

    /// `GET` of an API path: the parsed `data` of a success, else the error Prometheus gave.
    async fn api(&self, path: &str) -> Result<Value, ApiError> {
        let (code, body) = http_get(self.port, path)
            .await
            .map_err(ApiError::Transport)?;
        let parsed: Value = serde_json::from_str(&body)
            .map_err(|e| ApiError::Transport(format!("HTTP {code}, not JSON ({e}): {body}")))?;
        if parsed["status"] == "success" {
            return Ok(parsed["data"].clone());
        }
        let message = format!(
            "HTTP {code}, {}: {}",
            parsed["errorType"].as_str().unwrap_or("?"),
            parsed["error"].as_str().unwrap_or("?")
        );
        if (400..500).contains(&code) {
            Err(ApiError::Rejected(message))
        } else {
            Err(ApiError::Transport(message))
        }
    }

    /// The result vector of the instant query `expr`.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, ApiError> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A failed API call: a query Prometheus refuses (permanent), or anything else (retried).
#[derive(Debug)]
pub enum ApiError {
    /// Prometheus answered 4xx: the query is invalid.
    Rejected(String),
    /// No answer, a 5xx or a body that is not Prometheus' JSON.
    Transport(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Rejected(m) => write!(f, "rejected: {m}"),
            ApiError::Transport(m) => write!(f, "{m}"),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One panel query of a dashboard.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    /// The dashboard file.
    pub dashboard: String,
    /// The panel's title.
    pub panel: String,
    /// The target's PromQL, as written (with template variables).
    pub expr: String,
}

fn collect_panels(panels: &[Value], dashboard: &str, out: &mut Vec<PanelQuery>) {
    for panel in panels {
        // A collapsed row keeps its panels inside.
        if let Some(inner) = panel["panels"].as_array() {
            collect_panels(inner, dashboard, out);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    dashboard: dashboard.to_string(),
                    panel: panel["title"].as_str().unwrap_or("?").to_string(),
                    expr: expr.to_string(),
                });
            }
        }
    }
}

/// Every target's `expr` of every panel of every dashboard of the chart.
pub fn dashboard_queries() -> Result<Vec<PanelQuery>, String> {
    let dir = chart_dir().join("monitoring/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .obs(&format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(file).obs(&format!("cannot read {name}"))?;
        let dashboard: Value = serde_json::from_str(&text).obs(&format!("{name}: not JSON"))?;
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        collect_panels(&panels, &name, &mut out);
    }
    Ok(out)
}

/// `expr` with its template variables replaced: `$__rate_interval` by [`RATE_INTERVAL`],
/// `$namespace` by `namespace`, every other variable (`$qworker`, `$job`, ...) by `.*` (the
/// dashboards' "All").
pub fn substitute(expr: &str, namespace: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "" => out.push('$'),
            "__rate_interval" => out.push_str(RATE_INTERVAL),
            "namespace" => out.push_str(namespace),
            _ => out.push_str(".*"),
        }
        rest = &after[len.min(after.len())..];
    }
    out.push_str(rest);
    out
}
const EXTERNAL_STORM: &str = r#"
apiVersion: storm.apache.org/v1beta1
kind: StormCluster
metadata:
  name: storm
spec:
  mode: External
  uiUrl: UI_URL
  nimbusSeeds: [nimbus-0.nimbus]
  zookeeperServers: [zookeeper]
  pollIntervalSeconds: 2
---
apiVersion: storm.apache.org/v1beta1
kind: StormTopology
metadata:
  name: my-topology
spec:
  clusterRef: storm
---
apiVersion: storm.apache.org/v1beta1
kind: StormTopology
metadata:
  name: streaming-topology
spec:
  clusterRef: storm
"#;

/// A QWorker `qworker` on `queue` of the ScalerConfig `scaler`, with `policy` (`QueueLength`,
/// the default, or `Rate`).
fn qworker_yaml(qworker: &str, scaler: &str, queue: &str, max: u32, policy: &str) -> String {
    format!(
        r#"
apiVersion: quickube.com/v1alpha1
kind: QWorker
metadata:
  name: {qworker}
spec:
  podSpec:
    containers:
      - name: worker
        image: worker-image:latest
  scaleConfig:
    scalerConfigRef: {scaler}
    queue: {queue}
    minReplicas: 0
    maxReplicas: {max}
    scalingFactor: 1
    scalingPolicy: {policy}
"#
    )
}

/// A ScalerConfig named `name` for Redis at `host`, database `db`.
fn scaler_yaml(name: &str, host: &str, db: i64) -> String {
    format!(
        r#"
apiVersion: quickube.com/v1alpha1
kind: ScalerConfig
metadata:
  name: {name}
spec:
  type: redis
  config:
    host: {host}
    port: "6379"
    db: {db}
"#
    )
}

async fn get_qw(s: &Scenario, name: &str) -> Result<QWorker, String> {
    let api: Api<QWorker> = s.api();
    api.get(name).await.obs(&format!("get QWorker {name}"))
}

fn describe_qw(q: &QWorker) -> String {
    let st = q.status.clone().unwrap_or_default();
    format!(
        "desiredReplicas {}, currentReplicas {}, queueLength {:?}, conditions [{}]",
        st.desired_replicas,
        st.current_replicas,
        st.queue_length,
        summarize_conditions(&st.conditions)
    )
}

/// Waits until QWorker `name` asks for `desired` workers and runs as many.
async fn wait_workers(s: &Scenario, name: &str, desired: i32) {
    let what = format!("QWorker {name} with {desired} desired and current workers");
    s.eventually(&what, WAIT, || async move {
        let q = get_qw(s, name).await?;
        let st = q.status.clone().unwrap_or_default();
        ensure(
            st.desired_replicas == desired && st.current_replicas == desired,
            || describe_qw(&q),
        )
    })
    .await;
}

/// The QWorker workload: `busy` scales to 3 on a queue of 3 tasks and back to 0 (pods
/// created, then drained); `rated` (`scalingPolicy: Rate`, whose estimates `qworker_scaling`
/// reports) works on a queue of 2 tasks; `stalled` cannot reach its broker.
async fn qworker_workload(s: &Scenario, redis: &TestRedis, queues: &[String; 2]) {
    let [queue, rated_queue] = queues;
    s.wait_default_service_account().await;
    s.apply_yaml(
        "monitoring: reachable broker",
        &scaler_yaml("redis", "127.0.0.1", redis.db),
        |_| {},
    )
    .await;
    // `.invalid` never resolves (RFC 2606).
    s.apply_yaml(
        "monitoring: unreachable broker",
        &scaler_yaml("unreachable", "redis.invalid", 0),
        |_| {},
    )
    .await;
    redis
        .set_len(rated_queue, 2)
        .await
        .unwrap_or_else(|e| s.fail(e));
    for (qworker, scaler, queue, max, policy) in [
        ("busy", "redis", queue, 3, "QueueLength"),
        ("rated", "redis", rated_queue, 2, "Rate"),
        ("stalled", "unreachable", queue, 1, "QueueLength"),
    ] {
        s.apply_yaml(
            &format!("monitoring: QWorker {qworker}"),
            &qworker_yaml(qworker, scaler, queue, max, policy),
            |_| {},
        )
        .await;
    }
    redis.set_len(queue, 3).await.unwrap_or_else(|e| s.fail(e));
    wait_workers(s, "busy", 3).await;
    s.note("QWorker busy: 3 workers for 3 tasks");
    redis.set_len(queue, 0).await.unwrap_or_else(|e| s.fail(e));
    s.eventually("QWorker busy back to 0 desired", WAIT, || async move {
        let q = get_qw(s, "busy").await?;
        let st = q.status.clone().unwrap_or_default();
        ensure(st.desired_replicas == 0, || describe_qw(&q))
    })
    .await;
    s.eventually(
        "QWorker stalled with BrokerReachable=False",
        WAIT,
        || async move {
            let q = get_qw(s, "stalled").await?;
            let st = q.status.clone().unwrap_or_default();
            ensure(
                condition(&st.conditions, "BrokerReachable").is_some_and(|c| c.status == "False"),
                || describe_qw(&q),
            )
        },
    )
    .await;
    s.note("QWorker busy: drained back to 0; QWorker stalled: broker unreachable");
}

/// The Storm workload: an external cluster on the suite's Storm UI, two observed topologies,
/// the seed's basic pool (replicas set by the operator) and autoscaled pool (an HPA).
async fn storm_workload(s: &Scenario, ui: &StormUi) {
    ui.add("my-topology", "ACTIVE", 3);
    ui.add("streaming-topology", "ACTIVE", 2);
    s.apply_yaml(
        "monitoring: external Storm cluster",
        &EXTERNAL_STORM.replace("UI_URL", &ui.url),
        |_| {},
    )
    .await;
    for case in &crate::storm::POOLS[..2] {
        s.apply_yaml(case.file, case.yaml, |_| {}).await;
    }
    s.eventually("StormCluster storm Running", WAIT, || async move {
        let api: Api<StormCluster> = s.api();
        let c = api.get("storm").await.obs("get StormCluster")?;
        let phase = c.status.as_ref().and_then(|st| st.phase);
        ensure(phase == Some(ClusterPhase::Running), || {
            format!("phase {phase:?}")
        })
    })
    .await;
    for name in ["my-topology", "streaming-topology"] {
        s.eventually(
            &format!("StormTopology {name} Running"),
            WAIT,
            || async move {
                let api: Api<StormTopology> = s.api();
                let t = api.get(name).await.obs("get StormTopology")?;
                let phase = t.status.as_ref().and_then(|st| st.phase);
                ensure(phase == Some(TopologyPhase::Running), || {
                    format!("phase {phase:?}")
                })
            },
        )
        .await;
    }
    s.note(
        "StormCluster storm and its two topologies Running; pools my-workers, autoscale-workers",
    );
}

pub async fn run(s: Scenario) {
    let s = &s;
    let prometheus = Prometheus::start(&s.ns, s.operator.port).unwrap_or_else(|e| s.fail(e));
    let prom = &prometheus;
    s.note(format!(
        "Prometheus on 127.0.0.1:{} scraping the operator every second (log {})",
        prom.port,
        prom.log.display()
    ));
    let version = Command::new(PROMETHEUS)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    s.note(version);
    let up = format!("up{{job=\"{JOB}\"}} == 1");
    let up = up.as_str();
    s.eventually(
        "Prometheus ready, scraping the operator",
        WAIT,
        || async move {
            let series = prom.query(up).await.map_err(|e| e.to_string())?;
            ensure(!series.is_empty(), || {
                "the operator's target is not up yet".into()
            })
        },
    )
    .await;

    let ui = StormUi::start().await;
    storm_workload(s, &ui).await;
    let redis = TestRedis::connect().await.unwrap_or_else(|e| s.fail(e));
    let queues = [format!("{}-jobs", s.ns), format!("{}-rated", s.ns)];
    qworker_workload(s, &redis, &queues).await;

    // Every panel query: valid, and with series once the rate windows have filled.
    let queries = dashboard_queries().unwrap_or_else(|e| s.fail(e));
    ensure(queries.len() >= 30, || {
        format!("only {} panel queries found", queries.len())
    })
    .unwrap_or_else(|e| s.fail(e));
    let ns = s.ns.as_str();
    let queries_ref = &queries;
    let with_data = s
        .eventually(
            "every dashboard panel query to return series",
            LONG_WAIT,
            || async move {
                let mut empty = Vec::new();
                let mut with_data = 0;
                for q in queries_ref {
                    let expr = substitute(&q.expr, ns);
                    match prom.query(&expr).await {
                        Ok(series) if !series.is_empty() => with_data += 1,
                        Ok(_) => empty.push(format!("{} / {}: {expr}", q.dashboard, q.panel)),
                        Err(ApiError::Rejected(e)) => s.fail(format!(
                            "{} / {}: Prometheus rejects the query {expr}: {e}",
                            q.dashboard, q.panel
                        )),
                        Err(e) => return Err(format!("Prometheus: {e}")),
                    }
                }
                ensure(empty.is_empty(), || {
                    format!(
                        "{} queries without series:\n    {}",
                        empty.len(),
                        empty.join("\n    ")
                    )
                })?;
                Ok(with_data)
            },
        )
        .await;
    s.note(format!(
        "{} dashboard panel queries: {with_data} returned series",
        queries.len()
    ));

    // The alert rules load and evaluate without error; the unreachable broker's alert waits
    // out its `for`.
    let groups = prom
        .api("/api/v1/rules?type=alert")
        .await
        .unwrap_or_else(|e| s.fail(format!("GET /api/v1/rules: {e}")));
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok" && r["health"] != "unknown")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    ensure(rules.len() >= 15 && unhealthy.is_empty(), || {
        format!(
            "{} alert rules loaded; unhealthy: {unhealthy:?}",
            rules.len()
        )
    })
    .unwrap_or_else(|e| s.fail(e));
    let pending_alert = format!(
        "ALERTS{{alertname=\"QWorkerBrokerUnreachable\", namespace=\"{ns}\", qworker=\"stalled\"}}"
    );
    let pending_alert = pending_alert.as_str();
    s.eventually(
        "the QWorkerBrokerUnreachable alert of QWorker stalled (pending)",
        WAIT,
        || async move {
            let series = prom.query(pending_alert).await.map_err(|e| e.to_string())?;
            ensure(!series.is_empty(), || "no ALERTS series yet".to_string())?;
            Ok(series)
        },
    )
    .await;
    s.note(format!(
        "{} alert rules evaluate without error; QWorkerBrokerUnreachable is pending for QWorker stalled",
        rules.len()
    ));
    // The QWorkers go before the namespace: their pods' tasks go back while the ScalerConfig
    // still exists (a namespace deletion may remove it first and leave the pods held).
    let api: Api<QWorker> = s.api();
    for name in ["busy", "rated", "stalled"] {
        if let Err(e) = api.delete(name, &DeleteParams::background()).await {
            s.note(format!("cannot delete QWorker {name}: {e}"));
        }
    }
    let pods: Api<Pod> = s.api();
    let pods = &pods;
    let left = s
        .within(WAIT, || async move {
            let list = pods
                .list(&ListParams::default().labels(WORKER_PODS))
                .await
                .obs("list worker pods")?;
            ensure(list.items.is_empty(), || {
                format!("{} worker pod(s) left", list.items.len())
            })
        })
        .await;
    if let Err(left) = left {
        s.note(format!("after deleting the QWorkers: {left}"));
    }
    redis.del(&queues).await;
}

#[test]
fn selfcheck_dashboard_queries_are_found_and_substituted() {
    let queries = dashboard_queries().expect("dashboards");
    for dashboard in ["operator.json", "qworkers.json", "storm.json"] {
        assert!(
            queries.iter().any(|q| q.dashboard == dashboard),
            "no query in {dashboard}"
        );
    }
    for q in &queries {
        let expr = substitute(&q.expr, "wpo-e2e-monitoring-x");
        assert!(!expr.contains('$'), "{}: {expr}", q.panel);
    }
    assert_eq!(
        substitute(
            r#"rate(x{namespace=~"$namespace", qworker=~"${qworker}"}[$__rate_interval])"#,
            "ns"
        ),
        r#"rate(x{namespace=~"ns", qworker=~".*"}[30s])"#
    );
    assert_eq!(url_encode("up{a=\"b c\"}"), "up%7Ba%3D%22b%20c%22%7D");
}
