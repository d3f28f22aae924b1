//! `workerpool-operator run`: the controller manager.

use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{Gate, Readiness};
use crate::cli::RunArgs;
use crate::context::Shared;
use crate::controllers::{qworker, scalerconfig, storm, stormcluster, stormtopology};
use crate::http::{self, HttpState};
use crate::metrics::{Metrics, ResourceCollector};
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
/// leader; losing the Lease stops the process so that a new election starts.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log_level, args.log_format);
    crate::build_info::log_start();
    let client = crate::api_calls::client(
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
    let readiness = Readiness::default();
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(!args.leader_election);
    let shared = Shared::new(client.clone(), metrics, args.pod_name.clone())
        .with_concurrency(args.max_concurrent_reconciles)
        .with_gate(Gate::new(readiness.clone(), leader_rx));
    // An empty WATCH_NAMESPACE (as a Helm chart may set it) means all namespaces.
    let ns = args.namespace.as_deref().filter(|n| !n.is_empty());

    let (pools, storm_fut) = storm::controller(shared.clone(), ns, token.clone().cancelled_owned());
    let credentials_ns = args.credentials_namespace();
    if let Some(credentials_ns) = credentials_ns {
        info!(namespace = %credentials_ns, "ScalerConfig Secrets are read from this namespace");
    }
    let (brokers, scaler_fut) = scalerconfig::controller(
        shared.clone(),
        ns,
        credentials_ns,
        token.clone().cancelled_owned(),
    );
    let (qworkers, _autoscaler, qworker_fut) = qworker::controller(
        shared.clone(),
        brokers,
        ns,
        args.early_polls,
        token.clone().cancelled_owned(),
    );
    // One Storm UI client per cluster URL, shared by the cluster and topology controllers.
    let connector: Arc<dyn workerpool_storm::Connector> =
        Arc::new(workerpool_storm::RestConnector::new());
    let cluster_metrics = Arc::new(stormcluster::ClusterMetrics::default());
    cluster_metrics.register(&mut registry);
    let (_clusters, cluster_fut) = stormcluster::controller(
        shared.clone(),
        ns,
        connector.clone(),
        cluster_metrics,
        token.clone().cancelled_owned(),
    );
    let topology_metrics = Arc::new(stormtopology::TopologyMetrics::default());
    topology_metrics.register(&mut registry);
    let (_topologies, topology_fut) = stormtopology::controller(
        shared.clone(),
        ns,
        connector,
        topology_metrics,
        token.clone().cancelled_owned(),
    );
    registry.register_collector(Box::new(ResourceCollector {
        pools: Some(pools),
        qworkers: Some(qworkers),
    }));
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
    info!("controllers started");
    let controllers = futures::future::join5(
        storm_fut,
        qworker_fut,
        scaler_fut,
        cluster_fut,
        topology_fut,
    );
    if args.leader_election {
        let (leader, lease_task) = start_lease(&client, &args).await?;
        tokio::select! {
            _ = controllers => {},
            _ = follow_lease(leader, leader_tx) => {
                warn!("leadership lost; stopping so that a new election starts");
                token.cancel();
            },
        }
        match lease_task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    warn!(error = %e, "could not release the lease");
                } else {
                    info!("lease released");
                }
            }
            Ok(Err(e)) => warn!(error = %e, "lease manager failed"),
            Err(e) => warn!(error = %e, "lease task panicked"),
        }
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

type Lease = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

/// Starts competing for the Lease; the receiver says whether this replica holds it.
async fn start_lease(client: &Client, args: &RunArgs) -> anyhow::Result<Lease> {
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("workerpool-operator-{}", std::process::id()));
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let duration = args.lease_duration_seconds.max(2);
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_parameters(
            LeaseParams::new(identity.clone(), duration, grace)
                .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER)),
        )
        .build()
        .await
        .with_context(|| format!("cannot use Lease {namespace}/{}", args.lease_name))?;
    info!(%identity, lease = %args.lease_name, %namespace, "standing by for leadership");
    Ok(manager.watch().await)
}

/// Opens the gate when this replica becomes the leader; returns when it lost leadership (or
/// the lease manager stopped).
async fn follow_lease(
    mut lease: tokio::sync::watch::Receiver<bool>,
    leader: tokio::sync::watch::Sender<bool>,
) {
    let mut leading = false;
    loop {
        let holds = *lease.borrow_and_update();
        if holds && !leading {
            info!("acquired leadership");
            leader.send_replace(true);
            leading = true;
        } else if !holds && leading {
            leader.send_replace(false);
            return;
        }
        if lease.changed().await.is_err() {
            leader.send_replace(false);
            return;
        }
    }
}
