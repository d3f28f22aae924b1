//! `workerpool-operator run`: the controller manager.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{Gate, Readiness};
use crate::cli::RunArgs;
use crate::context::Shared;
use crate::controllers::{qworker, scalerconfig, stormcluster, stormtopology, stormworkerpool};
use crate::http::{self, HttpState};
use crate::leader;
use crate::metrics::{Metrics, OperatorCollector, ResourceCollector};
use crate::telemetry;

/// Cancels `token` on SIGTERM or SIGINT.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutdown signal received");
        token.cancel();
    });
}

/// Runs every controller, the HTTP endpoints and (optionally) leader election until SIGTERM.
///
/// The watches start at once on every replica, so `/readyz` answers as soon as the caches have
/// synced, leader or standby. With leader election the controllers' gate opens only on the
/// leader ([`leader`]); losing the Lease stops the process so that a new election starts.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log_level, args.log_format);
    crate::build_info::log_start();
    let (client, lease_client) = crate::api_calls::clients(
        args.record_api_calls.as_deref(),
        usize::from(args.max_api_requests),
    )
    .await
    .context("cannot build a Kubernetes client from KUBECONFIG or the in-cluster config")?;
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    metrics.leader.set(i64::from(!args.leader_election));
    let readiness = Readiness::default();
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(!args.leader_election);
    let shared = Shared::new(client.clone(), metrics.clone(), args.pod_name.clone())
        .with_concurrency(args.max_concurrent_reconciles)
        .with_gate(Gate::new(readiness.clone(), leader_rx));
    // One watch per Storm kind, shared by the three Storm controllers.
    let storm_watches =
        crate::controllers::StormWatches::new(&shared.client, watched_namespace(&args), &readiness);
    let controllers = start_controllers(&args, &shared, &storm_watches, &mut registry, &token);
    let server = serve(registry, readiness, &args, &token);
    info!("controllers started");
    if args.leader_election {
        let follower = GateFollower {
            gate: leader_tx,
            metrics,
        };
        run_elected(controllers, lease_client, follower, &args, &token).await;
    } else {
        controllers.await;
    }
    token.cancel();
    server
        .await
        .context("http server task")?
        .context("http server")?;
    Ok(())
}

/// The namespace to watch (`None`: all). An empty WATCH_NAMESPACE (as a Helm chart may set it)
/// means all namespaces.
fn watched_namespace(args: &RunArgs) -> Option<&str> {
    args.namespace.as_deref().filter(|n| !n.is_empty())
}

/// Builds every controller on `shared`, registers the collectors that read their caches in
/// `registry`, and starts the shared Storm watches; the returned future runs the controllers
/// until `token` is cancelled.
fn start_controllers<'a>(
    args: &'a RunArgs,
    shared: &Shared,
    storm_watches: &'a crate::controllers::StormWatches,
    registry: &mut Registry,
    token: &CancellationToken,
) -> futures::future::BoxFuture<'a, ()> {
    let ns = watched_namespace(args);
    let readiness = &shared.gate.readiness;
    let credentials_ns = args.credentials_namespace();
    if let Some(credentials_ns) = credentials_ns {
        info!(namespace = %credentials_ns, "ScalerConfig Secrets are read from this namespace");
    }
    if !args.allowed_broker_hosts.is_empty() {
        info!(hosts = %args.allowed_broker_hosts, "ScalerConfigs may point only at these broker hosts");
    }
    let (brokers, scaler_fut) = scalerconfig::controller(
        shared.clone(),
        ns,
        credentials_ns,
        args.allowed_broker_hosts.clone(),
        token.clone().cancelled_owned(),
    );
    let (qworkers, autoscaler, qworker_fut) = qworker::controller(
        shared.clone(),
        brokers,
        ns,
        args.early_polls,
        token.clone().cancelled_owned(),
    );
    // One Storm UI client per cluster URL, shared by the cluster, topology and pool controllers.
    let connector: Arc<dyn workerpool_storm::Connector> =
        Arc::new(workerpool_storm::RestConnector::new());
    let (pools, storm_fut) = stormworkerpool::controller(
        shared.clone(),
        ns,
        storm_watches,
        connector.clone(),
        token.clone().cancelled_owned(),
    );
    let cluster_metrics = Arc::new(stormcluster::ClusterMetrics::default());
    cluster_metrics.register(registry);
    let (_clusters, cluster_fut) = stormcluster::controller(
        shared.clone(),
        ns,
        storm_watches,
        connector.clone(),
        cluster_metrics,
        token.clone().cancelled_owned(),
    );
    let topology_metrics = Arc::new(stormtopology::TopologyMetrics::default());
    topology_metrics.register(registry);
    let (topologies, topology_fut) = stormtopology::controller(
        shared.clone(),
        ns,
        storm_watches,
        connector,
        topology_metrics,
        token.clone().cancelled_owned(),
    );
    storm_watches.spawn();
    registry.register_collector(Box::new(ResourceCollector {
        pools: Some(pools),
        qworkers: Some(qworkers),
        pods: Some(autoscaler.pods()),
        topologies: Some(topologies),
    }));
    registry.register_collector(Box::new(OperatorCollector {
        readiness: readiness.clone(),
        api: crate::limit::api_stats(),
    }));
    Box::pin(async move {
        futures::future::join5(
            storm_fut,
            qworker_fut,
            scaler_fut,
            cluster_fut,
            topology_fut,
        )
        .await;
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `token` is cancelled, and hands freed
/// memory back to the system once the caches have synced and then periodically.
fn serve(
    registry: Registry,
    readiness: Readiness,
    args: &RunArgs,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let state = HttpState {
        registry: Arc::new(registry),
        readiness: readiness.clone(),
    };
    let http_token = token.clone();
    let server = tokio::spawn(http::serve(args.metrics_addr, state, async move {
        http_token.cancelled().await
    }));
    tokio::spawn(async move {
        readiness.wait().await;
        info!("caches synced");
        // The lists of the start are over: their buffers go back to the system.
        crate::memory::release();
    });
    tokio::spawn(crate::memory::release_every(
        crate::memory::RELEASE_PERIOD,
        token.clone().cancelled_owned(),
    ));
    server
}

/// Runs `controllers` under leader election: `follower` opens the gate while this replica
/// leads; losing the Lease cancels `token` so that the process stops and a new election starts.
async fn run_elected(
    controllers: futures::future::BoxFuture<'_, ()>,
    lease_client: kube::Client,
    follower: GateFollower,
    args: &RunArgs,
    token: &CancellationToken,
) {
    let elector = elector(lease_client, args);
    info!(
        identity = %elector.identity(),
        lease = %args.lease_name,
        "standing by for leadership"
    );
    // The election has a token of its own: on shutdown it releases the Lease only after the
    // controllers have stopped.
    let election_token = CancellationToken::new();
    let mut election = tokio::spawn(leader::run(elector, follower, election_token.clone()));
    let mut controllers = controllers;
    tokio::select! {
        _ = &mut controllers => {
            election_token.cancel();
            if let Err(e) = election.await {
                warn!(error = %e, "the election task panicked");
            }
        },
        end = &mut election => {
            if !matches!(end, Ok(leader::End::Cancelled)) {
                warn!("leadership lost; stopping so that a new election starts");
            }
            token.cancel();
            controllers.await;
        },
    }
}

/// This replica's side of the election on `--lease-name` in `--lease-namespace` (else the pod's
/// namespace, else `default`), as `--pod-name` (else a name from the process id).
fn elector(client: kube::Client, args: &RunArgs) -> leader::Elector {
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("workerpool-operator-{}", std::process::id()));
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    leader::Elector::new(
        client,
        &namespace,
        &args.lease_name,
        &identity,
        leader::Timing::from_lease_seconds(args.lease_duration_seconds),
    )
}

/// Opens and closes the controllers' gate with leadership, and keeps the leader metrics.
struct GateFollower {
    gate: tokio::sync::watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl leader::Follower for GateFollower {
    fn start_leading(&self) {
        self.metrics.leader.set(1);
        self.metrics.leader_transitions.inc();
        self.gate.send_replace(true);
    }

    fn stop_leading(&self) {
        self.gate.send_replace(false);
        self.metrics.leader.set(0);
    }
}
