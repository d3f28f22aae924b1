//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Kubernetes operator that runs pools of worker pods (StormWorkerPool, QWorker) and scales
/// them to their real load.
#[derive(Debug, Parser)]
#[command(name = "workerpool-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller manager against the cluster of the current kube context.
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML.
    Crds,
    /// Print, offline, the objects the operator would create for the resources in FILE.
    Render(RenderArgs),
    /// Replay a queue-load trace through the scaling code and compare policies, offline.
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
}

/// Options of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// YAML file(s) with StormWorkerPool, StormTopology, StormCluster, QWorker and ScalerConfig documents; `-` reads stdin.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
}

/// Options of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Built-in trace (`step`, `spike`, `sine`) or a CSV file `time_seconds,arrivals_per_second`.
    #[arg(long, default_value = "step")]
    pub trace: String,
}
