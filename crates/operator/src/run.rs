//! `workerpool-operator run`: the controller manager.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::context::Shared;
use crate::controllers::{qworker, scalerconfig, storm};
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
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(&args.log_level, args.log_format);
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client from KUBECONFIG or the in-cluster config")?;
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let shared = Shared::new(client.clone(), metrics, args.pod_name.clone());
    // An empty WATCH_NAMESPACE (as a Helm chart may set it) means all namespaces.
    let ns = args.namespace.as_deref().filter(|n| !n.is_empty());

    let (pools, storm_fut) = storm::controller(shared.clone(), ns, token.clone().cancelled_owned());
    let (brokers, scaler_fut) =
        scalerconfig::controller(shared.clone(), ns, token.clone().cancelled_owned());
    let (qworkers, _autoscaler, qworker_fut) =
        qworker::controller(shared.clone(), brokers, ns, token.clone().cancelled_owned());
    registry.register_collector(Box::new(ResourceCollector {
        pools: Some(pools.clone()),
        qworkers: Some(qworkers.clone()),
    }));
    let state = HttpState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let http_token = token.clone();
    let server = tokio::spawn(http::serve(args.metrics_addr, state, async move {
        http_token.cancelled().await
    }));

    let lease = if args.leader_election {
        Some(acquire_leadership(&client, &args, &token).await?)
    } else {
        None
    };
    if token.is_cancelled() {
        return Ok(());
    }
    let ready_flag = ready.clone();
    tokio::spawn(async move {
        let _ = pools.wait_until_ready().await;
        let _ = qworkers.wait_until_ready().await;
        ready_flag.store(true, Ordering::Relaxed);
        info!("caches synced");
    });
    info!("controllers started");
    match lease {
        Some((mut leader, lease_task)) => {
            let lost = async {
                while leader.changed().await.is_ok() {
                    if !*leader.borrow() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = futures::future::join3(storm_fut, qworker_fut, scaler_fut) => {},
                _ = lost => {
                    warn!("leadership lost; stopping so that a new election starts");
                    token.cancel();
                },
            }
            drop(leader);
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
        }
        None => {
            futures::future::join3(storm_fut, qworker_fut, scaler_fut).await;
        }
    }
    token.cancel();
    server
        .await
        .context("http server task")?
        .context("http server")?;
    Ok(())
}

type Leadership = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
);

/// Waits until this replica holds the Lease (or shutdown is requested).
async fn acquire_leadership(
    client: &Client,
    args: &RunArgs,
    token: &CancellationToken,
) -> anyhow::Result<Leadership> {
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
    let (mut channel, task) = manager.watch().await;
    info!(%identity, lease = %args.lease_name, %namespace, "waiting for leadership");
    while !*channel.borrow_and_update() {
        tokio::select! {
            changed = channel.changed() => changed.context("lease manager stopped")?,
            _ = token.cancelled() => break,
        }
    }
    info!(%identity, "acquired leadership");
    Ok((channel, task))
}
