//! Scale benchmark of the real `workerpool-operator run` binary against the API server that
//! `KUBECONFIG` names (skipped, with the reason printed, when none answers).
//!
//! Each run creates, in a namespace of its own, one Redis ScalerConfig, one External
//! StormCluster (its UI REST API served by this process from Storm's response shapes), ten
//! StormTopologies, `--pools` StormWorkerPools (every fourth autoscaled) and `--qworkers`
//! QWorkers, then starts the operator and prints:
//! - convergence: from the operator's start until every pool and QWorker has a status of its
//!   current generation (and when the first and half of them had), and the API server's CPU
//!   meanwhile (its `process_cpu_seconds_total`) and the operator's, the write and read
//!   requests it served meanwhile (`apiserver_request_total`) and the operator's reconciles;
//! - with `--floor`, the floor measured first in the same invocation (below) and convergence
//!   as a multiple of it;
//! - resident memory (steady, and the peak seen) and CPU of the operator process;
//! - writes per second over `--window` seconds with nothing changing (a full resync period),
//!   from the API server's own `apiserver_request_total`, by verb and resource;
//! - reaction: from a push to 100 queues to `status.desiredReplicas` and to the first worker pod.
//!
//! Nothing else may write to the API server meanwhile: run it without a controller-manager, or
//! with only its namespace and garbage-collector controllers, which remove the namespace after.
//! Each run (and each floor) starts once the API server is quiet ([`settle`]): the garbage
//! collector reads every object of a deleted namespace again for minutes after it is gone.
//!
//! Run: `KUBECONFIG=... cargo bench -p workerpool-operator --bench cluster -- [--qworkers N]
//! [--pools N] [--sizes N,M,...] [--floor] [--plot FILE.png] [--window SECS] [--reactions N]
//! [--keep]`. `--sizes 100,1000,5000` runs one size after the other (N QWorkers + N pools each)
//! and prints a table of them; `--plot` draws resident memory and CPU at rest against the
//! number of objects into a PNG. `WPO_BENCH_WRAP="heaptrack -o FILE"` (any command line) runs
//! the operator under a profiler, and `WPO_BENCH_BINARY=PATH` runs that operator binary instead
//! of the one Cargo built (e.g. the image's static musl build,
//! `target/x86_64-unknown-linux-musl/release/workerpool-operator`).
//! The floor (`--floor`, or `--floor-only [--concurrency N]` without the operator's runs):
//! no operator runs; with the same watches of pools and QWorkers open through which it sees
//! the operator converge, the benchmark sends the writes that a converged state needs itself and
//! prints how long the API server took, the least time any operator could converge in on that
//! server and machine.

#[path = "cluster/plot.rs"]
mod plot;

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
    /// QWorkers and pools of each run, in order.
    sizes: Vec<(usize, usize)>,
    window: u64,
    reactions: usize,
    keep: bool,
    /// Measure the floor before each run.
    floor: bool,
    /// Measure the floor only.
    floor_only: bool,
    concurrency: usize,
    plot: Option<std::path::PathBuf>,
}

fn options() -> Options {
    let mut o = Options {
        sizes: Vec::new(),
        window: 320,
        reactions: 100,
        keep: false,
        floor: false,
        floor_only: false,
        concurrency: 16,
        plot: None,
    };
    let (mut qworkers, mut pools) = (1000, 1000);
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let text = || {
            args.get(i + 1)
                .cloned()
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        let value = || {
            text()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--qworkers" => qworkers = value() as usize,
            "--pools" => pools = value() as usize,
            "--sizes" => {
                o.sizes = text()
                    .split(',')
                    .map(|n| {
                        let n = n.trim().parse::<usize>().unwrap_or_else(|_| {
                            panic!("--sizes takes numbers separated by commas, not {n:?}")
                        });
                        (n, n)
                    })
                    .collect();
            }
            "--window" => o.window = value(),
            "--reactions" => o.reactions = value() as usize,
            "--concurrency" => o.concurrency = value().max(1) as usize,
            "--plot" => o.plot = Some(text().into()),
            flag @ ("--floor" | "--floor-only" | "--keep" | "--bench") => {
                match flag {
                    "--floor" => o.floor = true,
                    "--floor-only" => (o.floor, o.floor_only) = (true, true),
                    "--keep" => o.keep = true,
                    // `cargo bench` passes `--bench`.
                    _ => {}
                }
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    if o.sizes.is_empty() {
        o.sizes.push((qworkers, pools));
    }
    if o.keep && o.sizes.len() > 1 {
        panic!("--keep keeps one run's namespace: give one size");
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

/// What the API server's `/metrics` tells the benchmark.
struct ServerMetrics {
    /// Write requests served, by `verb resource` (leases and the API server's own endpoint
    /// bookkeeping left out).
    writes: BTreeMap<String, f64>,
    /// Reads served (GET and LIST, not WATCH), by `verb resource`, the same left out.
    reads: BTreeMap<String, f64>,
    /// `process_cpu_seconds_total` of the API server.
    cpu_seconds: f64,
}

async fn server_metrics(client: &Client) -> ServerMetrics {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("API server /metrics");
    let cpu_seconds = text
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let (mut writes, mut reads) = (BTreeMap::new(), BTreeMap::new());
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
        let counted = match verb.as_str() {
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" => &mut writes,
            "GET" | "LIST" => &mut reads,
            _ => continue,
        };
        if matches!(resource.as_str(), "leases" | "endpoints" | "endpointslices") {
            continue;
        }
        let subresource = label("subresource");
        let key = if subresource.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{subresource}")
        };
        *counted.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    ServerMetrics {
        writes,
        reads,
        cpu_seconds,
    }
}

/// Requests on resources the API server has served so far (reads and writes; requests for
/// paths such as `/metrics` and discovery left out).
fn resource_requests(m: &ServerMetrics) -> f64 {
    m.writes
        .iter()
        .chain(&m.reads)
        .filter(|(k, _)| {
            k.split_once(' ')
                .is_some_and(|(_, r)| !r.is_empty() && !r.starts_with('/'))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits until the API server serves next to nothing (at most one request on a resource a
/// second over 5 s), at most ten minutes. A namespace just deleted keeps the garbage collector
/// reading its objects (one GET each, answered 404) for minutes after the namespace is gone;
/// a measurement started meanwhile would share the server with it.
async fn settle(client: &Client) {
    let start = Instant::now();
    let mut last = resource_requests(&server_metrics(client).await);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = resource_requests(&server_metrics(client).await);
        if now - last <= 5.0 {
            println!(
                "API server quiet after {:.0} s",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        if start.elapsed() > Duration::from_secs(600) {
            println!(
                "API server still serving {:.0} requests/s after 600 s; going on",
                (now - last) / 5.0
            );
            return;
        }
        last = now;
    }
}

/// The API server's CPU between two readings `over` apart, in % of a core.
fn server_cpu(before: &ServerMetrics, after: &ServerMetrics, over: Duration) -> f64 {
    (after.cpu_seconds - before.cpu_seconds) / over.as_secs_f64() * 100.0
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

/// Resident MiB of `pid` by kind: anonymous (the heap, stacks), file-backed (code and
/// libraries), and of the latter the executable's own mappings (its code and read-only data).
fn rss_parts(pid: u32) -> [f64; 3] {
    let kib = |text: &str, key: &str| -> f64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .sum()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe_kib = workerpool_operator::memory::resident_kib_of(&smaps, &exe) as f64;
    [kib(&status, "RssAnon:"), kib(&status, "RssFile:"), exe_kib].map(|k| k / 1024.0)
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

/// Busy and total CPU time of the whole machine so far, in ticks (`/proc/stat`), to tell
/// whether a phase used every core.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// The share of the machine's CPU (in % of all its cores) busy since `before`.
fn machine_busy_since(before: (f64, f64)) -> f64 {
    let (busy, total) = machine_ticks();
    (busy - before.0) / (total - before.1).max(1.0) * 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn start_operator(namespace: &str, log: &std::path::Path, metrics_port: u16) -> Child {
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
            &format!("127.0.0.1:{metrics_port}"),
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

/// A port free on 127.0.0.1 now, for the operator's `/metrics`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The operator's `workerpool_reconciles_total` by controller, read from its `/metrics` on
/// `port` (empty when it does not answer).
fn operator_reconciles(port: u16) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut text = String::new();
    let read = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        c.read_to_string(&mut text)
    });
    if read.is_err() {
        return BTreeMap::new();
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("workerpool_reconciles_total{controller=\""))
        .filter_map(|rest| {
            let (controller, value) = rest.split_once("\"} ")?;
            Some((controller.to_string(), value.trim().parse().ok()?))
        })
        .collect()
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
/// writers' fields, with the benchmark's watches of the pools and QWorkers open as during the
/// operator's run. Returns the time and the writes the API server counted.
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
                Some(hpa) => Some(workerpool_operator::cache::child::Child::of(
                    &apply(&Api::namespaced(client.clone(), ns), hpa)
                        .await
                        .expect("HPA"),
                )),
                None => None,
            };
            let status = stormworkerpool::status::running(
                &pool,
                &workerpool_operator::cache::child::Child::of(&deployment),
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
    // The watches through which the operator's run is seen converging are open here too: they
    // cost the API server the same in both.
    let (_pools_seen, pool_watch) = follow(pools.clone()).await;
    let (_qworkers_seen, qworker_watch) = follow(qworkers.clone()).await;
    let before = server_metrics(client).await;
    let machine = machine_ticks();
    let start = Instant::now();
    futures::stream::iter(jobs)
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let took = start.elapsed();
    let busy = machine_busy_since(machine);
    pool_watch.abort();
    qworker_watch.abort();
    let after = server_metrics(client).await;
    println!(
        "floor: API server CPU {:.0} % of a core, the machine {busy:.0} % busy; reads {:?}",
        server_cpu(&before, &after, took),
        delta(&before.reads, &after.reads)
    );
    (took, delta(&before.writes, &after.writes))
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
    let ui = storm_ui().await.url;
    let mut rows = Vec::new();
    for &(qworkers, pools) in &o.sizes {
        let floor = if o.floor {
            let ns = Fixture::create(&client, &ui, qworkers, pools).await;
            let (took, sent) = floor(&client, &ns.name, o.concurrency).await;
            println!(
                "floor: the writes a converged state needs, sent by the benchmark alone {} at a time, took {:.1} s ({} write requests)",
                o.concurrency,
                took.as_secs_f64(),
                sent.values().sum::<f64>()
            );
            println!("writes: {sent:?}");
            ns.delete(&client).await;
            Some((took, sent.values().sum::<f64>()))
        } else {
            None
        };
        if o.floor_only {
            continue;
        }
        let ns = Fixture::create(&client, &ui, qworkers, pools).await;
        let mut row = measure(&client, &ns, &o).await;
        row.floor = floor;
        print_row(&row);
        rows.push(row);
    }
    if rows.len() > 1 {
        println!(
            "\n| objects | RSS steady (peak) | CPU at rest | convergence (floor) | API server CPU while converging | writes at rest | push → desiredReplicas p99 |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} + {} | {:.1} ({:.1}) MiB | {:.2} % | {:.1} s ({}) | {:.0} % | {} | {:.2} s |",
                r.qworkers,
                r.pools,
                r.rss_steady,
                r.rss_peak,
                r.cpu,
                r.convergence.as_secs_f64(),
                r.floor.map_or_else(
                    || "not run".to_string(),
                    |(f, _)| format!("{:.1} s", f.as_secs_f64())
                ),
                r.server_cpu,
                r.quiet_writes,
                percentile(&r.to_status, 99.0)
            );
        }
    }
    if let Some(path) = o.plot.as_ref().filter(|_| !rows.is_empty()) {
        match plot::write_png(path, &rows) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => eprintln!("plot: cannot write {}: {e}", path.display()),
        }
    }
}

/// The objects of one run, in a namespace of their own.
struct Fixture {
    name: String,
    qworkers: usize,
    pools: usize,
}

impl Fixture {
    /// Creates one Redis ScalerConfig, the External StormCluster at `ui`, the topologies,
    /// `pools` StormWorkerPools and `qworkers` QWorkers in a new namespace, once the API server
    /// is quiet.
    async fn create(client: &Client, ui: &str, qworkers: usize, pools: usize) -> Self {
        settle(client).await;
        let ns = format!("wpo-scale-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
            )
            .await
            .expect("namespace");
        println!("\nnamespace {ns}; Storm UI at {ui}; {qworkers} QWorkers, {pools} pools");
        let t = Instant::now();
        create_objects(client, &ns, ui, qworkers, pools).await;
        println!(
            "created {} objects in {:.1} s",
            pools + qworkers + TOPOLOGIES + 2,
            t.elapsed().as_secs_f64()
        );
        Fixture {
            name: ns,
            qworkers,
            pools,
        }
    }

    /// Deletes the namespace and waits (at most 15 minutes) until it is gone.
    async fn delete(&self, client: &Client) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let _ = namespaces
            .delete(&self.name, &DeleteParams::background())
            .await;
        // The next run starts only once the namespace controller is done: its deletes would
        // otherwise share the API server with the operator's convergence.
        let start = Instant::now();
        while namespaces
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            if start.elapsed() > Duration::from_secs(900) {
                println!(
                    "namespace {} still there after {:.0} s; going on",
                    self.name,
                    start.elapsed().as_secs_f64()
                );
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!(
            "namespace {} deleted in {:.0} s",
            self.name,
            start.elapsed().as_secs_f64()
        );
    }
}

fn queue_prefix(ns: &str) -> String {
    format!("{ns}-q")
}

async fn create_objects(client: &Client, ns: &str, ui: &str, qworkers: usize, pools: usize) {
    let gvk = kube::api::GroupVersionKind::gvk("quickube.com", "v1alpha1", "ScalerConfig");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "scalerconfigs");
    Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
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
    let clusters: Api<StormCluster> = Api::namespaced(client.clone(), ns);
    create_all(&clusters, vec![json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormCluster",
        "metadata": {"name": "storm"},
        "spec": {"mode": "External", "uiUrl": ui, "nimbusSeeds": ["nimbus-0.nimbus"], "zookeeperServers": ["zk-0.zk"]}})]).await;
    let topologies: Api<StormTopology> = Api::namespaced(client.clone(), ns);
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
    let pool_api: Api<StormWorkerPool> = Api::namespaced(client.clone(), ns);
    create_all(&pool_api, (0..pools).map(|i| {
        let mut spec = json!({"topologyRef": format!("scale-t{}", i % TOPOLOGIES), "replicas": 1});
        if i % 4 == 0 {
            spec["autoscaling"] = json!({"enabled": true, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70});
        }
        json!({"apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool", "metadata": {"name": format!("pool-{i}")}, "spec": spec})
    }).collect()).await;
    let queue_prefix = queue_prefix(ns);
    let qworker_api: Api<QWorker> = Api::namespaced(client.clone(), ns);
    create_all(&qworker_api, (0..qworkers).map(|i| json!({"apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
        "metadata": {"name": format!("qw-{i}")},
        "spec": {"podSpec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
                 "scaleConfig": {"scalerConfigRef": "redis", "queue": format!("{queue_prefix}{i}"),
                                 "minReplicas": 0, "maxReplicas": 3, "scalingFactor": 1000}}})).collect()).await;
}

/// What one run measured.
struct Row {
    qworkers: usize,
    pools: usize,
    /// The floor of the same invocation (`--floor`): its time and writes.
    floor: Option<(Duration, f64)>,
    convergence: Duration,
    convergence_writes: BTreeMap<String, f64>,
    /// Reads (GET, LIST) the API server served meanwhile, by verb and resource.
    convergence_reads: BTreeMap<String, f64>,
    /// The operator's reconciles until it converged, by controller.
    convergence_reconciles: BTreeMap<String, f64>,
    /// The API server's CPU while the operator converged, in % of a core.
    server_cpu: f64,
    /// The operator's own CPU while it converged, in % of a core.
    operator_cpu: f64,
    /// From the start until the first object converged, and until half of them had.
    first_converged: Duration,
    half_converged: Duration,
    rss_steady: f64,
    rss_peak: f64,
    /// Medians over the window of [`rss_parts`].
    rss_parts: [f64; 3],
    /// CPU at rest, in % of a core, over `window`.
    cpu: f64,
    window: f64,
    quiet: BTreeMap<String, f64>,
    quiet_writes: f64,
    to_status: Vec<f64>,
    to_pod: Vec<f64>,
}

/// Starts the operator on `ns`'s objects and measures convergence, the quiet window and the
/// reaction; deletes the namespace after (unless `--keep`).
async fn measure(client: &Client, ns: &Fixture, o: &Options) -> Row {
    let pools: Api<StormWorkerPool> = Api::namespaced(client.clone(), &ns.name);
    let qworkers: Api<QWorker> = Api::namespaced(client.clone(), &ns.name);
    // Convergence is seen through watches, not by listing the objects again and again: the API
    // server's work is then the operator's, not the benchmark's.
    let (pool_cache, pool_watch) = follow(pools.clone()).await;
    let (qworker_cache, qworker_watch) = follow(qworkers.clone()).await;
    let log = std::env::temp_dir().join(format!("{}-operator.log", ns.name));
    let before_start = server_metrics(client).await;
    let machine = machine_ticks();
    let start = Instant::now();
    let mut next_report = Duration::from_secs(10);
    let metrics_port = free_port();
    let mut operator = start_operator(&ns.name, &log, metrics_port);
    let pid = operator.id();
    let mut peak: f64 = 0.0;
    let (mut first_converged, mut half_converged) = (None, None);
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
        let done = pools_done + qw_done;
        if done > 0 {
            first_converged.get_or_insert_with(|| start.elapsed());
        }
        if done * 2 >= ns.pools + ns.qworkers {
            half_converged.get_or_insert_with(|| start.elapsed());
        }
        if pools_done == ns.pools && qw_done == ns.qworkers {
            break start.elapsed();
        }
        if start.elapsed() >= next_report {
            println!(
                "  {:>4.0} s: {pools_done} pools, {qw_done} QWorkers converged",
                start.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(10);
        }
        if start.elapsed() > Duration::from_secs(900) {
            panic!(
                "not converged after 900 s: {pools_done}/{} pools, {qw_done}/{} QWorkers (log {})",
                ns.pools,
                ns.qworkers,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let operator_cpu = cpu_seconds(pid) / convergence.as_secs_f64() * 100.0;
    let machine_busy = machine_busy_since(machine);
    let convergence_reconciles = operator_reconciles(metrics_port);
    let after_start = server_metrics(client).await;
    pool_watch.abort();
    qworker_watch.abort();
    let convergence_writes = delta(&before_start.writes, &after_start.writes);
    let convergence_reads = delta(&before_start.reads, &after_start.reads);
    let server_cpu = server_cpu(&before_start, &after_start, convergence);
    let (first_converged, half_converged) = (
        first_converged.unwrap_or(convergence),
        half_converged.unwrap_or(convergence),
    );
    println!(
        "converged in {:.1} s ({} write requests; the first object at {:.1} s, half at {:.1} s; \
         API server CPU {server_cpu:.0} %, operator CPU {operator_cpu:.0} % of a core, \
         the machine {machine_busy:.0} % busy)",
        convergence.as_secs_f64(),
        convergence_writes.values().sum::<f64>(),
        first_converged.as_secs_f64(),
        half_converged.as_secs_f64(),
    );

    // Quiet window: nothing changes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let w0 = server_metrics(client).await.writes;
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let mut parts: [Vec<f64>; 3] = Default::default();
    while t0.elapsed() < Duration::from_secs(o.window) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = rss_mib(pid);
        peak = peak.max(r);
        rss.push(r);
        for (all, now) in parts.iter_mut().zip(rss_parts(pid)) {
            all.push(now);
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - c0) / window * 100.0;
    let quiet = delta(&w0, &server_metrics(client).await.writes);
    // `+ 0.0`: an empty sum is -0.0.
    let quiet_writes: f64 = quiet.values().sum::<f64>() + 0.0;
    rss.sort_by(f64::total_cmp);
    let rss_parts = parts.map(|mut p| {
        p.sort_by(f64::total_cmp);
        percentile(&p, 50.0)
    });

    let (to_status, to_pod) = react(client, ns, o.reactions).await;
    if o.keep {
        println!(
            "kept namespace {}; operator pid {pid} and the Storm UI keep running until Ctrl-C (log {})",
            ns.name,
            log.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    } else {
        // The operator keeps running while the namespace goes (worker pods carry its finalizer).
        ns.delete(client).await;
    }
    let _ = operator.kill();
    let _ = operator.wait();
    Row {
        qworkers: ns.qworkers,
        pools: ns.pools,
        floor: None,
        convergence,
        convergence_writes,
        convergence_reads,
        convergence_reconciles,
        server_cpu,
        operator_cpu,
        first_converged,
        half_converged,
        rss_steady: percentile(&rss, 50.0),
        rss_peak: peak,
        rss_parts,
        cpu,
        window,
        quiet,
        quiet_writes,
        to_status,
        to_pod,
    }
}

/// Pushes 1,000 tasks to each of the first `n` queues, 20 ms apart, and returns the sorted
/// times from each push to its QWorker's `status.desiredReplicas` above 0 and to its first pod.
async fn react(client: &Client, ns: &Fixture, n: usize) -> (Vec<f64>, Vec<f64>) {
    let qworkers: Api<QWorker> = Api::namespaced(client.clone(), &ns.name);
    let queue_prefix = queue_prefix(&ns.name);
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
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
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
    let n = n.min(ns.qworkers);
    for i in 0..n {
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
    for i in 0..n {
        let _: Result<(), _> = conn.del(format!("{queue_prefix}{i}")).await;
    }
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
    (latencies(&status_seen), latencies(&pod_seen))
}

/// Prints one run's figures as a table.
fn print_row(r: &Row) {
    println!();
    println!("| figure | measured |");
    println!("|---|---|");
    println!(
        "| objects | {} QWorkers + {} StormWorkerPools (+ {TOPOLOGIES} topologies, 1 cluster, 1 ScalerConfig) |",
        r.qworkers, r.pools
    );
    println!(
        "| convergence from start | {:.1} s ({} writes) |",
        r.convergence.as_secs_f64(),
        r.convergence_writes.values().sum::<f64>()
    );
    if let Some((floor, writes)) = r.floor {
        println!(
            "| the floor of the same run | {:.1} s ({writes} writes): convergence is {:.2} × the floor |",
            floor.as_secs_f64(),
            r.convergence.as_secs_f64() / floor.as_secs_f64()
        );
    }
    println!(
        "| first object converged, half converged | {:.1} s, {:.1} s |",
        r.first_converged.as_secs_f64(),
        r.half_converged.as_secs_f64()
    );
    println!(
        "| CPU while the operator converged: API server, operator | {:.0} %, {:.0} % of a core |",
        r.server_cpu, r.operator_cpu
    );
    println!(
        "| resident memory, steady (median over the window) | {:.1} MiB ({:.1} KB per object) |",
        r.rss_steady,
        r.rss_steady * 1024.0 * 1.024 / (r.qworkers + r.pools).max(1) as f64
    );
    println!(
        "| of which anonymous; code and libraries (the executable's) | {:.1} MiB; {:.1} MiB ({:.1} MiB) |",
        r.rss_parts[0], r.rss_parts[1], r.rss_parts[2]
    );
    println!("| resident memory, peak | {:.1} MiB |", r.rss_peak);
    println!(
        "| CPU over the {:.0} s window | {:.2} % of a core |",
        r.window, r.cpu
    );
    println!(
        "| writes in the {:.0} s window | {} ({:.3}/s) |",
        r.window,
        r.quiet_writes,
        r.quiet_writes / r.window
    );
    println!(
        "| queue push → status.desiredReplicas ({} queues) | p50 {:.2} s, p99 {:.2} s |",
        r.to_status.len(),
        percentile(&r.to_status, 50.0),
        percentile(&r.to_status, 99.0)
    );
    println!(
        "| queue push → first worker pod | p50 {:.2} s, p99 {:.2} s |",
        percentile(&r.to_pod, 50.0),
        percentile(&r.to_pod, 99.0)
    );
    if !r.quiet.is_empty() {
        println!("\nwrites in the window: {:?}", r.quiet);
    }
    println!("writes during convergence: {:?}", r.convergence_writes);
    println!(
        "reads during convergence (the bench's own included): {:?}",
        r.convergence_reads
    );
    println!(
        "the operator's reconciles during convergence: {:?}",
        r.convergence_reconciles
    );
}
