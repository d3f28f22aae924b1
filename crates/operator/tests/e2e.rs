//! End-to-end tests against the Kubernetes cluster that `KUBECONFIG` (or `~/.kube/config`)
//! names (design section 6, cost 4). Run them with `KUBECONFIG=... scripts/e2e`.
//!
//! Each scenario installs the CRDs (server-side apply), creates its own namespace
//! `wpo-e2e-<scenario>-<random>`, starts the operator binary watching only that namespace with
//! its log in `target/e2e-logs/<namespace>.log`, and deletes the namespace at the end, also on
//! failure (`WPO_E2E_KEEP_NAMESPACE=1` keeps it). Without a reachable cluster every test prints
//! `e2e: skipped — ...` and passes (`WPO_E2E_REQUIRE_CLUSTER=1` makes it fail instead).
//!
//! The suite is written for a cluster with an API server and a controller-manager but no nodes,
//! no scheduler and no metrics-server: an in-process node stand-in (`e2e/kubelet.rs`) binds the
//! worker pods and reports them running, as a kubelet would; finished workers are written
//! through the status subresource; the broker is the machine's real Redis (a database of its
//! own, `e2e/redis.rs`).

#[path = "e2e/chart_pod.rs"]
mod chart_pod;
#[path = "e2e/clusters.rs"]
mod clusters;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/kubelet.rs"]
mod kubelet;
#[path = "e2e/leader.rs"]
mod leader;
#[path = "e2e/monitoring.rs"]
mod monitoring;
#[path = "e2e/outages.rs"]
mod outages;
#[path = "e2e/qworker.rs"]
mod qworker;
#[path = "e2e/rbac.rs"]
mod rbac;
#[path = "e2e/recovery.rs"]
mod recovery;
#[path = "e2e/redis.rs"]
mod redis;
#[path = "e2e/selfcheck.rs"]
mod selfcheck;
#[path = "e2e/shared_broker.rs"]
mod shared_broker;
#[path = "e2e/storm.rs"]
mod storm;
#[path = "e2e/storm_autoscale.rs"]
mod storm_autoscale;
#[path = "e2e/webhook.rs"]
mod webhook;

/// The chart's own pod from the operator's image (`scripts/image`): the rendered chart applied,
/// two replicas run by a node stand-in from the image's root filesystem with the in-cluster
/// configuration (ServiceAccount token, CA, KUBERNETES_SERVICE_HOST/PORT, downward API), both
/// Ready through the chart's readiness probe, one Lease holder, a QWorker and a
/// StormWorkerPool reconciled with the chart's RBAC only, and the Lease handed over within its
/// duration when the leader pod is deleted. Skips, saying why, without the image archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_pod_from_image() {
    chart_pod::run().await;
}

/// StormWorkerPool: the seed's manifests, children, status, readiness, Events, metrics,
/// autoscaling off, an invalid spec, garbage collection and the CEL rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_worker_pools() {
    harness::scenario("storm", storm::run).await;
}

/// StormWorkerPool scaled on Storm's own load: the seed's `autoscale-workers` pool rises above
/// minReplicas when its topology's busiest bolt reaches capacity 0.95 (900 ms complete latency)
/// and returns after the load falls and the stabilisation window passed; its HPA carries no
/// `storm_*` metric. Prints the times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_autoscale() {
    harness::scenario("stormscale", storm_autoscale::run).await;
}

/// QWorker and ScalerConfig: bare worker pods, scale subresource, rollout by hash, chosen
/// drains, a finished worker, queue-driven scaling, metrics and the CEL rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qworkers() {
    harness::scenario("qworker", qworker::run).await;
}

/// Outages: private Redis, RabbitMQ and NATS brokers stopped for 60 s and started again (no
/// scale-down, the reason on the status, the queue read again within 10 s, no task lost), the
/// operator SIGKILLed mid-rollout, and (with `WPO_E2E_RESTART_APISERVER`) the API server
/// restarted during a rollout and a scale-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outages() {
    harness::scenario("outages", outages::run).await;
}

/// What must survive the operator's restarts: readiness within seconds, a restart with live
/// workers (never a pod beyond the desired count), a busy worker force-deleted while the
/// operator is down (its task back on the queue), drained pods with a sidecar and drained pods
/// that never started (deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery() {
    harness::scenario("recovery", recovery::run).await;
}

/// QWorkers in the clusters users have: an evicted pod replaced at once (no crash back-off), a
/// queue edit rolling the pods, a worker that crashes beside a running sidecar under
/// `restartPolicy: Never` counted as a crash (its task returned), and a proxy that a mutating
/// admission webhook (served by the test) inserts as the first container: the worker's crash
/// and its exit after a drain seen beside the running proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qworkers_in_real_clusters() {
    harness::scenario("clusters", clusters::run).await;
}

/// The same QWorker name and queue in two namespaces on one Redis, under one cluster-wide
/// operator SIGKILLed and restarted: the list of a worker deleted meanwhile is back on the
/// queue within 20 s, exactly once (the sweep, one TasksRecovered Event), while the live busy
/// workers' lists of both namespaces keep their tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_broker_across_namespaces() {
    harness::scenario("sharedbroker", shared_broker::run).await;
}

/// One leader at a time: two and three replicas started at the same instant, the leader gauge
/// of each sampled every 100 ms (never two at once), and the hand-over after the leader's
/// SIGTERM and SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_election() {
    harness::scenario("leader", leader::run).await;
}

/// Monitoring: a real Prometheus scrapes the operator during a QWorker and a Storm workload;
/// every panel query of every dashboard of the chart must be valid and return series, and every
/// alert rule must evaluate. Skips, saying why, without `prometheus` on PATH.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monitoring() {
    if let Some(reason) = monitoring::prometheus_missing() {
        eprintln!("e2e: skipped — {reason}");
        return;
    }
    harness::scenario("monitoring", monitoring::run).await;
}

/// Least privilege, exactly: the chart's RBAC rules against the API calls the operators of the
/// scenarios above recorded (`--record-api-calls`). Fails on a recorded call the chart does not
/// grant and on a granted verb never recorded (unless justified in `e2e/rbac.rs`). Named to
/// run last; waits for the scenarios of its process to end, and skips, saying why, when they
/// did not all run (no cluster, a filtered run). `WPO_E2E_CALLS=FILE|DIR:...` checks earlier
/// recordings instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_rbac_matches_recorded_calls() {
    rbac::check().await;
}
