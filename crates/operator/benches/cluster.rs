//! Scale benchmark of the real `workerpool-operator run` binary against the API server that
//! `KUBECONFIG` names (skipped, with the reason printed, when none answers).
//!
//! It creates, in a namespace of its own, one Redis ScalerConfig, one External StormCluster
//! (its UI REST API served by this process from Storm's response shapes), ten StormTopologies,
//! `--pools` StormWorkerPools (every fourth autoscaled) and `--qworkers` QWorkers, then starts
//! the operator and prints:
//! - convergence: from the operator's start until every pool and QWorker has a status of its
//!   current generation;
//! - resident memory (steady, and the peak seen) and CPU of the operator process;
//! - writes per second over `--window` seconds with nothing changing (a full resync period),
//!   from the API server's own `apiserver_request_total`, by verb and resource;
//! - reaction: from a push to 100 queues to `status.desiredReplicas` and to the first worker pod.
//!
//! Nothing else may write to the API server meanwhile: run it without a controller-manager, or
//! with only its namespace and garbage-collector controllers, which remove the namespace after.
//!
//! Run: `KUBECONFIG=... cargo bench -p workerpool-operator --bench cluster -- [--qworkers N]
//! [--pools N] [--window SECS] [--reactions N] [--keep]`; `WPO_BENCH_WRAP="heaptrack -o FILE"`
//! (any command line) runs the operator under a profiler, and `WPO_BENCH_BINARY=PATH` runs
//! that operator binary instead of the one Cargo built (e.g. the image's static musl build,
//! `target/x86_64-unknown-linux-musl/release/workerpool-operator`).
//! `-- --floor [--concurrency N]` runs no operator: it sends the writes that a converged state
//! needs itself and prints how long the API server took, the least time any operator could
//! converge in on that server and machine.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use redis::AsyncCommands;
use serde_json::{Value, json};
use workerpool_api::{QWorker, StormCluster, StormTopology, StormWorkerPool};
use workerpool_testkit::install_crds;
use workerpool_testkit::storm_ui::{Config, StormUi};

const MANAGER: &str = "workerpool-bench";
const TOPOLOGIES: usize = 10;

struct Options {
    qworkers: usize,
    pools: usize,
    window: u64,
    reactions: usize,
    keep: bool,
    floor: bool,
    concurrency: usize,
}

fn options() -> Options {
    let mut o = Options {
        qworkers: 1000,
        pools: 1000,
        window: 320,
        reactions: 100,
        keep: false,
        floor: false,
        concurrency: 16,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--qworkers" => o.qworkers = value() as usize,
            "--pools" => o.pools = value() as usize,
            "--window" => o.window = value(),
            "--reactions" => o.reactions = value() as usize,
            "--concurrency" => o.concurrency = value().max(1) as usize,
            "--floor" => {
                o.floor = true;
                i += 1;
                continue;
            }
            "--keep" => {
                o.keep = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; anything else is a mistake.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// A Storm UI REST API answering with Storm 2.x shapes, smaller than the recorded ones: one
/// leader, every bench topology ACTIVE with 2 workers and 8 executors, no spout or bolt.
async fn storm_ui() -> StormUi {
    let topology = json!({"uptime": "1h", "uptimeSeconds": 3600, "tasksTotal": 8, "workersTotal": 2,
        "executorsTotal": 8});
    let mut detail = topology.clone();
    detail["spouts"] = json!([]);
    detail["bolts"] = json!([]);
    let ui = StormUi::start_with(Config {
        cluster_summary: json!({"stormVersion": "2.8.8", "supervisors": 2, "slotsUsed": 3,
            "slotsTotal": 8, "slotsFree": 5, "tasksTotal": 80, "executorsTotal": 80}),
        nimbus_summary: json!({"nimbuses": [{"host": "nimbus-0.nimbus", "port": 6627, "status": "Leader",
            "version": "2.8.8", "nimbusUpTimeSeconds": 4452, "nimbusUpTime": "1h"}]}),
        supervisor_summary: json!({"supervisors": []}),
        topology_summary: json!({"topologies": [topology], "schedulerDisplayResource": false}),
        topology_detail: detail,
        // Uptimes grow with the clock, as Storm's do (a frozen uptime would move the
        // topologies' launchTime, and so their status, as time passes).
        uptimes_grow: true,
        ..Config::default()
    })
    .await;
    for i in 0..TOPOLOGIES {
        ui.add(&format!("scale-t{i}"), "ACTIVE", 2);
    }
    ui
}

/// Creates every object of `items` (JSON) through `api`, 32 at a time.
async fn create_all<K>(api: &Api<K>, items: Vec<Value>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    futures::stream::iter(items)
        .map(|item| async move {
            let object: K = serde_json::from_value(item).expect("object");
            api.create(&PostParams::default(), &object)
                .await
                .map(|_| ())
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("create");
}

/// Write requests the API server has served, by `verb resource` (leases and the API server's
/// own endpoint bookkeeping left out).
async fn writes(client: &Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("API server /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        let resource = label("resource");
        if !matches!(
            verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) || matches!(resource.as_str(), "leases" | "endpoints" | "endpointslices")
        {
            continue;
        }
        let subresource = label("subresource");
        let key = if subresource.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{subresource}")
        };
        *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn start_operator(namespace: &str, log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    // `WPO_BENCH_WRAP` (e.g. `heaptrack -o /tmp/op`) runs the operator under a profiler.
    let wrap: Vec<String> = std::env::var("WPO_BENCH_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let binary = std::env::var("WPO_BENCH_BINARY")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_workerpool-operator").to_string());
    let (program, prefix) = match wrap.split_first() {
        Some((program, rest)) => (program.clone(), [rest, &[binary]].concat()),
        None => (binary, Vec::new()),
    };
    Command::new(program)
        .args(prefix)
        .args([
            "run",
            "--namespace",
            namespace,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "text")
        .env_remove("WATCH_NAMESPACE")
        .env_remove("LEADER_ELECTION")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start the operator")
}

/// A watch cache of `api`, filled (listed once) before this returns, and the task that keeps it.
async fn follow<K>(api: Api<K>) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader.wait_until_ready().await.expect("the watch lists");
    (reader, task)
}

fn converged<K: kube::Resource>(object: &K, observed: Option<i64>) -> bool {
    observed.is_some() && observed == object.meta().generation
}

/// The least time the API server takes for the writes that a converged state needs, with no
/// operator running: the benchmark sends, `concurrency` at a time, what the operator must send
/// for every pool (its ConfigMap, Deployment, Service, HPA when autoscaled, then its status,
/// built by the operator's own functions) and one status apply per QWorker carrying both
/// writers' fields. Returns the time and the writes the API server counted.
async fn floor(client: &Client, ns: &str, concurrency: usize) -> (Duration, BTreeMap<String, f64>) {
    use futures::future::BoxFuture;
    use workerpool_operator::apply::{apply, apply_status};
    use workerpool_operator::controllers::{qworker, stormworkerpool};
    let pools: Api<StormWorkerPool> = Api::namespaced(client.clone(), ns);
    let qworkers: Api<QWorker> = Api::namespaced(client.clone(), ns);
    let cluster = Api::<StormCluster>::namespaced(client.clone(), ns)
        .get("storm")
        .await
        .expect("cluster");
    let pool_list = pools.list(&Default::default()).await.expect("pools").items;
    let qworker_list = qworkers
        .list(&Default::default())
        .await
        .expect("qworkers")
        .items;
    let pool_job = |pool: StormWorkerPool| -> BoxFuture<'_, ()> {
        let (client, cluster, pools) = (client.clone(), &cluster, &pools);
        Box::pin(async move {
            let children = stormworkerpool::build::children(&pool, cluster).expect("children");
            apply(&Api::namespaced(client.clone(), ns), &children.config_map)
                .await
                .expect("ConfigMap");
            let deployment = apply(&Api::namespaced(client.clone(), ns), &children.deployment)
                .await
                .expect("Deployment");
            apply(&Api::namespaced(client.clone(), ns), &children.service)
                .await
                .expect("Service");
            let hpa = match &children.hpa {
                Some(hpa) => Some(
                    apply(&Api::namespaced(client.clone(), ns), hpa)
                        .await
                        .expect("HPA"),
                ),
                None => None,
            };
            let status = stormworkerpool::status::running(
                &pool,
                &deployment,
                hpa.as_ref(),
                Timestamp::now(),
            );
            apply_status(pools, &pool.name_any(), &status)
                .await
                .expect("pool status");
        })
    };
    let qworker_job = |qw: QWorker| -> BoxFuture<'_, ()> {
        let qworkers = &qworkers;
        Box::pin(async move {
            let spec = qworker::build::template_spec(&qw, &BTreeMap::new());
            let generation = qw.metadata.generation;
            let now = Time(Timestamp::now());
            let condition = |kind: &str, status: &str, reason: &str, message: &str| {
                json!({"type": kind, "status": status, "reason": reason, "message": message,
                       "lastTransitionTime": now, "observedGeneration": generation})
            };
            let status = json!({
                "observedGeneration": generation,
                "currentReplicas": 0,
                "currentPodSpecHash": qworker::build::pod_spec_hash(&qw, &spec),
                "selector": qworker::build::selector(&qw),
                "desiredReplicas": 0,
                "queueLength": 0,
                "conditions": [
                    condition("Ready", "True", "WorkersReady", "All 0 worker(s) are ready"),
                    condition("Scaling", "False", "Stable", "0 worker(s) running"),
                    condition("BrokerReachable", "True", "QueueRead", "queue length 0"),
                ],
            });
            apply_status(qworkers, &qw.name_any(), &status)
                .await
                .expect("QWorker status");
        })
    };
    // Interleaved, as the two controllers run side by side.
    let mut jobs = Vec::new();
    let mut pool_iter = pool_list.into_iter();
    let mut qworker_iter = qworker_list.into_iter();
    loop {
        let (p, q) = (pool_iter.next(), qworker_iter.next());
        if p.is_none() && q.is_none() {
            break;
        }
        jobs.extend(p.map(pool_job));
        jobs.extend(q.map(qworker_job));
    }
    let before = writes(client).await;
    let start = Instant::now();
    futures::stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let took = start.elapsed();
    (took, delta(&before, &writes(client).await))
}

#[tokio::main]
async fn main() {
    let o = options();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            println!("cluster bench: skipped — no Kubernetes client from KUBECONFIG ({e})");
            return;
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), client.list_api_groups()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return println!("cluster bench: skipped — the API server did not answer ({e})");
        }
        Err(_) => return println!("cluster bench: skipped — the API server did not answer in 5 s"),
    }
    install_crds(&client, MANAGER).await;
    let ns = format!("wpo-scale-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let ui = storm_ui().await.url;
    println!(
        "namespace {ns}; Storm UI at {ui}; {} QWorkers, {} pools",
        o.qworkers, o.pools
    );

    // Objects.
    let dyn_api = |kind: &str| -> Api<kube::api::DynamicObject> {
        let (group, version, plural) = match kind {
            "ScalerConfig" => ("quickube.com", "v1alpha1", "scalerconfigs"),
            _ => unreachable!(),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        Api::namespaced_with(client.clone(), &ns, &ar)
    };
    let queue_prefix = format!("{ns}-q");
    dyn_api("ScalerConfig")
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "quickube.com/v1alpha1", "kind": "ScalerConfig",
                "metadata": {"name": "redis"},
                "spec": {"type": "redis", "config": {"host": "127.0.0.1", "port": "6379"}}}),
            )
            .expect("scalerconfig"),
        )
        .await
        .expect("create ScalerConfig");
    let clusters: Api<StormCluster> = Api::namespaced(client.clone(), &ns);
    create_all(&clusters, vec![json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormCluster",
        "metadata": {"name": "storm"},
        "spec": {"mode": "External", "uiUrl": ui, "nimbusSeeds": ["nimbus-0.nimbus"], "zookeeperServers": ["zk-0.zk"]}})]).await;
    let topologies: Api<StormTopology> = Api::namespaced(client.clone(), &ns);
    create_all(
        &topologies,
        (0..TOPOLOGIES)
            .map(|i| {
                json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormTopology",
        "metadata": {"name": format!("scale-t{i}")},
        "spec": {"clusterRef": "storm", "rebalance": {"enabled": false}}})
            })
            .collect(),
    )
    .await;
    // Without the StormCluster and StormTopology controllers someone must say Running; with them
    // the operator reads it from the UI above and this write is overwritten.
    let running = Patch::Merge(json!({"status": {"phase": "Running"}}));
    clusters
        .patch_status("storm", &PatchParams::default(), &running)
        .await
        .expect("cluster status");
    for i in 0..TOPOLOGIES {
        topologies
            .patch_status(&format!("scale-t{i}"), &PatchParams::default(), &running)
            .await
            .expect("topology status");
    }
    let pools: Api<StormWorkerPool> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    create_all(&pools, (0..o.pools).map(|i| {
        let mut spec = json!({"topologyRef": format!("scale-t{}", i % TOPOLOGIES), "replicas": 1});
        if i % 4 == 0 {
            spec["autoscaling"] = json!({"enabled": true, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70});
        }
        json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool", "metadata": {"name": format!("pool-{i}")}, "spec": spec})
    }).collect()).await;
    let qworkers: Api<QWorker> = Api::namespaced(client.clone(), &ns);
    create_all(&qworkers, (0..o.qworkers).map(|i| json!({"apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
        "metadata": {"name": format!("qw-{i}")},
        "spec": {"podSpec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                 "scaleConfig": {"scalerConfigRef": "redis", "queue": format!("{queue_prefix}{i}"),
                                 "minReplicas": 0, "maxReplicas": 3, "scalingFactor": 1000}}})).collect()).await;
    println!(
        "created {} objects in {:.1} s",
        o.pools + o.qworkers + TOPOLOGIES + 2,
        t.elapsed().as_secs_f64()
    );

    if o.floor {
        let (took, sent) = floor(&client, &ns, o.concurrency).await;
        println!(
            "floor: the writes a converged state needs, sent by the benchmark alone {} at a time, took {:.1} s ({} write requests)",
            o.concurrency,
            took.as_secs_f64(),
            sent.values().sum::<f64>()
        );
        println!("writes: {sent:?}");
        let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
        return;
    }

    // Start and converge. Convergence is seen through watches, not by listing 2,000 objects
    // again and again: the API server's work is then the operator's, not the benchmark's.
    let (pool_cache, pool_watch) = follow(pools.clone()).await;
    let (qworker_cache, qworker_watch) = follow(qworkers.clone()).await;
    let log = std::env::temp_dir().join(format!("{ns}-operator.log"));
    let before_start = writes(&client).await;
    let start = Instant::now();
    let mut operator = start_operator(&ns, &log);
    let pid = operator.id();
    let mut peak: f64 = 0.0;
    let convergence = loop {
        peak = peak.max(rss_mib(pid));
        let pools_done = pool_cache
            .state()
            .iter()
            .filter(|x| {
                converged(&***x, x.status.as_ref().and_then(|s| s.observed_generation))
                    && x.status
                        .as_ref()
                        .and_then(|s| s.deployment_name.as_ref())
                        .is_some()
            })
            .count();
        let qw_done = qworker_cache
            .state()
            .iter()
            .filter(|x| converged(&***x, x.status.as_ref().and_then(|s| s.observed_generation)))
            .count();
        if pools_done == o.pools && qw_done == o.qworkers {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(600) {
            panic!(
                "not converged after 600 s: {pools_done}/{} pools, {qw_done}/{} QWorkers (log {})",
                o.pools,
                o.qworkers,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool_watch.abort();
    qworker_watch.abort();
    let start_writes = delta(&before_start, &writes(&client).await);
    println!(
        "converged in {:.1} s ({} write requests)",
        convergence.as_secs_f64(),
        start_writes.values().sum::<f64>()
    );

    // Quiet window: nothing changes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let w0 = writes(&client).await;
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(o.window) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = rss_mib(pid);
        peak = peak.max(r);
        rss.push(r);
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - c0) / window * 100.0;
    let quiet = delta(&w0, &writes(&client).await);
    // `+ 0.0`: an empty sum is -0.0.
    let quiet_total: f64 = quiet.values().sum::<f64>() + 0.0;

    // Reaction: push to queues, time the status and the first pod.
    let redis = redis::Client::open("redis://127.0.0.1:6379/").expect("redis");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let pushed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let status_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pod_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch_status = {
        let seen = status_seen.clone();
        let stream = watcher(qworkers.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(q)) = stream.next().await {
                if q.status.as_ref().is_some_and(|s| s.desired_replicas > 0) {
                    seen.lock()
                        .expect("lock")
                        .entry(q.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let watch_pods = {
        let seen = pod_seen.clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let stream = watcher(
            api,
            watcher::Config::default().labels("quickube.com/qworker"),
        )
        .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(p)) = stream.next().await {
                if let Some(owner) = p.labels().get("quickube.com/qworker") {
                    seen.lock()
                        .expect("lock")
                        .entry(owner.clone())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let items: Vec<String> = (0..1000).map(|i| format!("task-{i}")).collect();
    for i in 0..o.reactions.min(o.qworkers) {
        let name = format!("qw-{i}");
        let _: () = conn
            .rpush(format!("{queue_prefix}{i}"), &items)
            .await
            .expect("push");
        pushed.lock().expect("lock").insert(name, Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    watch_status.abort();
    watch_pods.abort();
    let latencies = |seen: &Arc<Mutex<HashMap<String, Instant>>>| {
        let pushed = pushed.lock().expect("lock");
        let seen = seen.lock().expect("lock");
        let mut v: Vec<f64> = pushed
            .iter()
            .map(|(name, t)| {
                seen.get(name).map_or(f64::INFINITY, |s| {
                    s.saturating_duration_since(*t).as_secs_f64()
                })
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let to_status = latencies(&status_seen);
    let to_pod = latencies(&pod_seen);

    println!();
    println!("| figure | measured |");
    println!("|---|---|");
    println!(
        "| objects | {} QWorkers + {} StormWorkerPools (+ {TOPOLOGIES} topologies, 1 cluster, 1 ScalerConfig) |",
        o.qworkers, o.pools
    );
    println!(
        "| convergence from start | {:.1} s |",
        convergence.as_secs_f64()
    );
    println!(
        "| resident memory, steady (median over the window) | {:.1} MiB |",
        percentile(
            &{
                let mut r = rss.clone();
                r.sort_by(f64::total_cmp);
                r
            },
            50.0
        )
    );
    println!("| resident memory, peak | {peak:.1} MiB |");
    println!("| CPU over the {window:.0} s window | {cpu:.2} % of a core |");
    println!(
        "| writes in the {window:.0} s window | {quiet_total} ({:.3}/s) |",
        quiet_total / window
    );
    println!(
        "| queue push → status.desiredReplicas ({} queues) | p50 {:.2} s, p99 {:.2} s |",
        to_status.len(),
        percentile(&to_status, 50.0),
        percentile(&to_status, 99.0)
    );
    println!(
        "| queue push → first worker pod | p50 {:.2} s, p99 {:.2} s |",
        percentile(&to_pod, 50.0),
        percentile(&to_pod, 99.0)
    );
    if !quiet.is_empty() {
        println!("\nwrites in the window: {quiet:?}");
    }
    println!("writes during convergence: {start_writes:?}");

    // Clean up: the operator keeps running while the namespace goes (worker pods carry its finalizer).
    for i in 0..o.reactions.min(o.qworkers) {
        let _: Result<(), _> = conn.del(format!("{queue_prefix}{i}")).await;
    }
    if o.keep {
        println!(
            "kept namespace {ns}; operator pid {pid} and the Storm UI keep running until Ctrl-C (log {})",
            log.display()
        );
        let _ = tokio::signal::ctrl_c().await;
        let _ = operator.kill();
        let _ = operator.wait();
        return;
    }
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && namespaces.get_opt(&ns).await.ok().flatten().is_some() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = operator.kill();
    let _ = operator.wait();
}
