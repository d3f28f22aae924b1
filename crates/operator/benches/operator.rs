//! Benchmarks of the operator, printing their figures (run: `cargo bench -p workerpool-operator --bench operator`).
//!
//! - reaction: time from a real Redis queue-depth change to the autoscaler's status write, at
//!   1, 100 and 1,000 QWorkers polled every second (the Kubernetes API is mocked in process and
//!   answers at once, so the figure is the operator's own reaction, without API latency);
//! - footprint: resident memory and CPU of this process while it manages 1,000 QWorkers polled
//!   every second against real Redis plus 1,000 StormWorkerPools;
//! - reconciles: StormWorkerPool reconciles per second against the mocked API.
//!
//! Options (after `--`): `--quick` for a short run (CI), `--only reaction|footprint|reconciles`,
//! `--qworkers N` and `--window SECS` for the footprint. It runs on one thread, as the operator
//! does by default.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use workerpool_api::{QWorker, ScalerConfig, StormCluster, StormWorkerPool};
use workerpool_operator::brokers::Brokers;
use workerpool_operator::context::Shared;
use workerpool_operator::controllers::ChildTracker;
use workerpool_operator::controllers::qworker::autoscaler::Autoscaler;
use workerpool_operator::controllers::stormworkerpool;
use workerpool_operator::metrics::Metrics;
use workerpool_testkit::{self as testkit, Builder, merge, response};

const NS: &str = "bench";

/// A status write seen by the mocked API server.
struct Write {
    name: String,
    desired: i64,
    at: Instant,
}

/// An in-process Kubernetes API that answers every request at once: GETs of topologies and
/// clusters, applies echoed back (status applies merged into the stored object), deletes 404.
fn mock_api(
    objects: Arc<Mutex<HashMap<String, Value>>>,
    writes: mpsc::UnboundedSender<Write>,
) -> kube::Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let objects = objects.clone();
        let writes = writes.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            let resp = match method.as_str() {
                "GET" if path.contains("/stormtopologies/") => response(
                    200,
                    &testkit::topology(NS, &name)
                        .status(json!({"phase": "Running"}))
                        .json(),
                ),
                "GET" if path.contains("/stormclusters/") => response(
                    200,
                    &Builder::<StormCluster>::new(NS, &name)
                        .spec(json!({"mode": "External", "uiUrl": "http://storm-ui:8080",
                            "zookeeperServers": ["zk"], "nimbusSeeds": ["nimbus"]}))
                        .status(json!({"phase": "Running"}))
                        .json(),
                ),
                "PATCH" if path.ends_with("/status") => {
                    let base = path.trim_end_matches("/status").to_string();
                    let mut stored = objects
                        .lock()
                        .map(|o| o.get(&base).cloned())
                        .ok()
                        .flatten()
                        .unwrap_or(Value::Null);
                    merge(&mut stored, body.clone());
                    if path.contains("/qworkers/") {
                        let qw = base.rsplit('/').next().unwrap_or_default().to_string();
                        let desired = body["status"]["desiredReplicas"].as_i64().unwrap_or(-1);
                        let _ = writes.send(Write {
                            name: qw,
                            desired,
                            at: Instant::now(),
                        });
                    }
                    response(200, &stored)
                }
                "PATCH" => {
                    let mut stored = body.clone();
                    merge(
                        &mut stored,
                        json!({"metadata": {"resourceVersion": "1", "generation": 1, "namespace": NS}}),
                    );
                    response(200, &stored)
                }
                "POST" => response(201, &body),
                _ => response(
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
                ),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    kube::Client::new(service, NS)
}

fn qworker(i: usize, queue: &str) -> QWorker {
    testkit::qworker(NS, &format!("qw-{i}"), queue)
        .uid(&format!("uid-{i}"))
        .spec(json!({
            "podSpec": {"containers": [{"name": "worker", "image": "worker:1"}]},
            "scaleConfig": {"minReplicas": 0, "maxReplicas": 50, "pollIntervalSeconds": 1}
        }))
        .status(json!({"desiredReplicas": 0, "conditions": [{"type": "BrokerReachable", "status": "True",
            "reason": "QueueRead", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
        .build()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

struct Fleet {
    autoscaler: Autoscaler,
    writes: mpsc::UnboundedReceiver<Write>,
    queues: Vec<String>,
    redis: redis::aio::MultiplexedConnection,
    _qworkers: Writer<QWorker>,
    _pods: Writer<Pod>,
    _configs: Writer<ScalerConfig>,
}

async fn fleet(n: usize, tag: &str) -> anyhow::Result<Fleet> {
    let objects = Arc::new(Mutex::new(HashMap::new()));
    let (tx, writes) = mpsc::unbounded_channel();
    let client = mock_api(objects.clone(), tx);
    let (qw_reader, mut qw_writer) = reflector::store::<QWorker>();
    let (pod_reader, mut pod_writer) = reflector::store::<Pod>();
    let (sc_reader, mut sc_writer) = reflector::store::<ScalerConfig>();
    pod_writer.apply_watcher_event(&watcher::Event::InitDone);
    sc_writer.apply_watcher_event(&watcher::Event::Apply(testkit::local_redis(
        NS, "redis", "sc",
    )));
    let redis = redis::Client::open("redis://127.0.0.1:6379/")?
        .get_multiplexed_async_connection()
        .await?;
    let mut queues = Vec::new();
    let mut conn = redis.clone();
    for i in 0..n {
        let queue = format!("bench-{tag}-{}-{i}", std::process::id());
        let _: () = conn.del(&queue).await?;
        let q = qworker(i, &queue);
        objects.lock().map_err(|_| anyhow::anyhow!("lock"))?.insert(
            format!("/apis/quickube.com/v1alpha1/namespaces/{NS}/qworkers/qw-{i}"),
            serde_json::to_value(&q)?,
        );
        qw_writer.apply_watcher_event(&watcher::Event::Apply(q));
        queues.push(queue);
    }
    let shared = Shared::new(client.clone(), Arc::new(Metrics::default()), None);
    let brokers = Brokers::new(client, sc_reader);
    let autoscaler = Autoscaler::new(shared, brokers, qw_reader.clone(), pod_reader);
    for q in qw_reader.state() {
        autoscaler.ensure(&q);
    }
    Ok(Fleet {
        autoscaler,
        writes,
        queues,
        redis,
        _qworkers: qw_writer,
        _pods: pod_writer,
        _configs: sc_writer,
    })
}

/// Pushes 3 tasks into every queue at spread-out moments and measures push → status write.
async fn reaction(n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut f = fleet(n, "reaction").await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while f.writes.try_recv().is_ok() {}
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    let spread = Duration::from_millis(1000);
    let start = Instant::now();
    for (i, queue) in f.queues.iter().enumerate() {
        let offset = spread.mul_f64(i as f64 / n.max(1) as f64);
        if let Some(wait) = offset.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let _: () = f.redis.lpush(queue, &["a", "b", "c"]).await?;
        pushed.insert(format!("qw-{i}"), Instant::now());
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < n && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), f.writes.recv()).await {
            Ok(Some(w)) if w.desired == 3 => {
                if let Some(t) = pushed.remove(&w.name) {
                    latencies.push(w.at.duration_since(t));
                }
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for q in &f.queues {
        let _: () = f.redis.del(q).await?;
    }
    anyhow::ensure!(
        latencies.len() == n,
        "only {} of {n} QWorkers reacted within 30 s",
        latencies.len()
    );
    latencies.sort();
    Ok(latencies)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

fn pool(i: usize) -> StormWorkerPool {
    Builder::new(NS, &format!("pool-{i}"))
        .uid(&format!("pool-uid-{i}"))
        .generation(1)
        .spec(json!({"topologyRef": "topo", "replicas": 3,
            "template": {"spec": {"containers": [{"name": "worker", "resources": {"requests": {"cpu": "1"}}}]}}}))
        .build()
}

async fn reconciles(n: usize) -> anyhow::Result<(f64, Vec<Arc<StormWorkerPool>>)> {
    let (tx, _rx) = mpsc::unbounded_channel();
    let pools: Vec<Arc<StormWorkerPool>> = (0..n).map(|i| Arc::new(pool(i))).collect();
    let mut objects = HashMap::new();
    for p in &pools {
        objects.insert(
            format!(
                "/apis/storm.apache.org/v1beta1/namespaces/{NS}/stormworkerpools/{}",
                p.metadata.name.clone().unwrap_or_default()
            ),
            serde_json::to_value(p.as_ref())?,
        );
    }
    let client = mock_api(Arc::new(Mutex::new(objects)), tx);
    let ctx = Arc::new(stormworkerpool::Context {
        shared: Shared::new(client, Arc::new(Metrics::default()), None),
        children: ChildTracker::default(),
        status: Default::default(),
        storm: Default::default(),
        caches: stormworkerpool::ChildCaches::default(),
    });
    let start = Instant::now();
    for p in &pools {
        stormworkerpool::reconcile(p.clone(), ctx.clone()).await?;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), pools))
}

/// One thread, as the operator runs by default (`--worker-threads 1`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    println!(
        "command: cargo bench -p workerpool-operator --bench operator{}",
        if quick { " -- --quick" } else { "" }
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::env::consts::ARCH
    );

    if run("reaction") {
        let sizes: &[usize] = if quick { &[1, 100] } else { &[1, 100, 1000] };
        println!("\nreaction: Redis LPUSH -> status.desiredReplicas write (poll interval 1 s)");
        println!(
            "{:>10} {:>10} {:>10} {:>10}",
            "qworkers", "p50 ms", "p99 ms", "max ms"
        );
        for &n in sizes {
            let l = reaction(n).await?;
            println!(
                "{n:>10} {:>10.0} {:>10.0} {:>10.0}",
                percentile(&l, 0.5).as_secs_f64() * 1000.0,
                percentile(&l, 0.99).as_secs_f64() * 1000.0,
                l.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
            );
        }
    }

    if run("reconciles") {
        let n = if quick { 200 } else { 2000 };
        let (rate, _) = reconciles(n).await?;
        println!(
            "\nreconciles: {n} StormWorkerPool reconciles against the mocked API: {rate:.0} per second"
        );
    }

    if run("footprint") {
        let n = option("--qworkers").map_or(if quick { 100 } else { 1000 }, |n| n as usize);
        let window = Duration::from_secs(option("--window").unwrap_or(if quick { 5 } else { 30 }));
        let (_, pools) = reconciles(n).await?;
        let f = fleet(n, "footprint").await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut peak = 0;
        while t0.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak = peak.max(rss_kib());
        }
        let cpu = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        println!(
            "\nfootprint: {n} QWorkers polled every second against real Redis ({} polls in {} schedules) + {} StormWorkerPools",
            f.autoscaler.running(),
            f.autoscaler.schedules(),
            pools.len()
        );
        println!(
            "  resident memory (peak VmRSS): {:.1} MiB",
            peak as f64 / 1024.0
        );
        println!("  CPU: {cpu:.1}% of one core over {} s", window.as_secs());
        let mut conn = f.redis.clone();
        for q in &f.queues {
            let _: () = conn.del(q).await?;
        }
    }
    Ok(())
}
