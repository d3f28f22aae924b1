//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::brokers::hosts::AllowedHosts;
#[cfg(feature = "simulate")]
use crate::simulate::SimulateArgs;
use crate::telemetry::LogFormat;

/// Kubernetes operator that runs pools of worker pods (StormWorkerPool, QWorker) and scales
/// them to their real load.
#[derive(Debug, Parser)]
#[command(
    name = "workerpool-operator",
    version,
    long_version = crate::build_info::LONG_VERSION,
    about
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller manager against the cluster of the current kube context.
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML.
    Crds,
    /// Print, offline, the objects the operator would create for the resources in FILE.
    Render(RenderArgs),
    /// Replay a queue-load trace through the scaling code and compare policies, offline.
    #[cfg(feature = "simulate")]
    Simulate(SimulateArgs),
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Elect a leader through a coordination.k8s.io Lease so that only one replica reconciles.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "workerpool-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Lease duration in seconds: a new leader takes over within this time.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// This replica's identity (the pod name), used in Events and the Lease.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Read every Secret a ScalerConfig references from this namespace (usually the operator's
    /// own: KEDA-style central credentials) instead of the ScalerConfig's namespace (empty means
    /// the ScalerConfig's). The Secret must still permit the ScalerConfig: its annotation
    /// `quickube.com/scaler-configs` names it as `<namespace>/<name>` (or `<namespace>/*`, `*/*`).
    #[arg(long, env = "CREDENTIALS_NAMESPACE")]
    pub credentials_namespace: Option<String>,
    /// Broker hosts a ScalerConfig may point at, comma-separated: host names, `*.domain`
    /// wildcards and IP networks (`10.0.0.0/8`). Any other host is refused before a connection
    /// is tried (`BrokerReachable=False`, `BrokerHostNotAllowed`). Empty allows every host.
    #[arg(long, env = "ALLOWED_BROKER_HOSTS", default_value = "", value_parser = AllowedHosts::parse)]
    pub allowed_broker_hosts: AllowedHosts,
    /// Append every distinct Kubernetes API call (RBAC verb, group, resource, scope) to this
    /// file, for checking the chart's RBAC against what the operator really does.
    #[arg(long, env = "RECORD_API_CALLS", value_name = "FILE")]
    pub record_api_calls: Option<PathBuf>,
    /// At most this many Kubernetes API requests in flight at once (watches excepted); the rest
    /// wait in the process, so a start-up burst neither opens a connection per request nor
    /// overloads the API server.
    #[arg(long, env = "MAX_API_REQUESTS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_api_requests: u16,
    /// At most this many objects of each kind reconciled at once.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Between two polls of a QWorker, its queue is read this many times per poll interval
    /// (all queues of a ScalerConfig in one broker call) while its length could add workers, so
    /// that a task pushed just after a poll is seen within a fraction of the interval; 0 turns
    /// early polls off.
    #[arg(long, env = "EARLY_POLLS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub early_polls: u32,
    /// Threads that run the controllers, the polls and the HTTP endpoints. One (the default)
    /// runs everything on a single thread, which at 1,000 QWorkers + 1,000 pools used about 4 %
    /// of it: no wake-ups across threads, one allocator arena. More give a runtime with that
    /// many worker threads, for far larger installations.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
}

impl RunArgs {
    /// The `--credentials-namespace`, `None` when unset or empty.
    pub fn credentials_namespace(&self) -> Option<&str> {
        self.credentials_namespace
            .as_deref()
            .filter(|n| !n.is_empty())
    }
}

/// Options of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// YAML file(s) with StormWorkerPool, StormTopology, StormCluster, QWorker and ScalerConfig documents; `-` reads stdin.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
}

#[cfg(test)]
mod credentials_namespace_tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["workerpool-operator", "run"]
            .into_iter()
            .chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Run(run) => run,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn credentials_namespace_flag() {
        let args = run_args(&["--credentials-namespace", "workerpool-system"]);
        assert_eq!(args.credentials_namespace(), Some("workerpool-system"));
        let args = run_args(&["--credentials-namespace", ""]);
        assert_eq!(args.credentials_namespace(), None);
    }
}
