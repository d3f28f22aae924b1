//! The command line of `workerpool-operator simulate`.

use std::path::PathBuf;

use clap::Args;

use super::{HpaBehavior, PolicyArg};

/// Options of `simulate`.
///
/// The model and its sources are described in [`crate::simulate`].
#[derive(Clone, Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct SimulateArgs {
    /// Built-in trace (`step`, `spike`, `daily-sine`) or a CSV file `time_seconds,arrivals_per_second`
    /// (piecewise constant, header optional). Without it, all three built-in traces run.
    #[arg(long)]
    pub trace: Option<String>,
    /// Run the three built-in traces (`step`, `spike`, `daily-sine`) and print one table.
    #[arg(long, conflicts_with = "trace")]
    pub all: bool,
    /// Tasks per second that one ready worker completes.
    #[arg(long, default_value_t = 1.0)]
    pub service_rate: f64,
    /// Seconds from pod creation until the worker takes tasks.
    #[arg(long, default_value_t = 10.0)]
    pub startup_delay: f64,
    /// Seconds to simulate (default: the trace's length; past its end the last rate holds).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Lower bound of the replica count (both policies; KEDA's `minReplicaCount`).
    #[arg(long, default_value_t = 0)]
    pub min_replicas: i32,
    /// Upper bound of the replica count (both policies; KEDA's `maxReplicaCount`).
    #[arg(long, default_value_t = 100)]
    pub max_replicas: i32,
    /// Workers per queued task (default: 1 / (service rate × 10 s), i.e. ten seconds of queued
    /// work per worker). The HPA model's AverageValue target is its inverse.
    #[arg(long)]
    pub scaling_factor: Option<f64>,
    /// Seconds between two polls of the queue by our autoscaler.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Our scale-down stabilization window, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub stabilization: f64,
    /// Our scaling policy: `rate` (arrival and completion rates, start-up times, backlog; the
    /// default) or `queue-length` (the specification's `ceil(queueLength × scalingFactor)`).
    #[arg(long, value_enum, default_value_t = PolicyArg::Rate)]
    pub policy: PolicyArg,
    /// Ours (`rate`): `targetDrainSeconds`, the time in which the specification's rule clears the
    /// queue (a worker is assumed to complete 1/(scaling factor × this) tasks/s until measured).
    #[arg(long, default_value_t = 10.0)]
    pub target_drain_seconds: f64,
    /// Ours (`rate`): `maxSurgePercent`, workers beyond the arrivals' need for the backlog.
    #[arg(long, default_value_t = 10.0)]
    pub max_surge_percent: f64,
    /// Directory for `replicas.csv` and `replicas.png` (one sub-directory per trace with `--all`).
    #[arg(long, default_value = "target/simulate")]
    pub out: PathBuf,
    /// Start with an empty queue and the minimum replica count instead of the steady state of the
    /// trace's first rate.
    #[arg(long)]
    pub cold_start: bool,
    /// The model has no randomness; a seed only shifts the phases of the periodic loops (our poll,
    /// the HPA sync, KEDA's poll) relative to the trace, deterministically.
    #[arg(long)]
    pub seed: Option<u64>,
    /// HPA model: `--horizontal-pod-autoscaler-sync-period` in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub hpa_sync_period: f64,
    /// HPA model: `--horizontal-pod-autoscaler-tolerance`.
    #[arg(long, default_value_t = 0.1)]
    pub hpa_tolerance: f64,
    /// HPA model: scale-down stabilization window in seconds
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`).
    #[arg(long, default_value_t = 300.0)]
    pub hpa_downscale_stabilization: f64,
    /// HPA model: `unset` (KEDA leaves `spec.behavior` empty; the controller's legacy path) or
    /// `default` (`spec.behavior` set to the documented default policies).
    #[arg(long, value_enum, default_value_t = HpaBehavior::Unset)]
    pub hpa_behavior: HpaBehavior,
    /// HPA model: KEDA `pollingInterval` in seconds (activation from and to zero).
    #[arg(long, default_value_t = 30.0)]
    pub keda_polling_interval: f64,
    /// HPA model: KEDA `cooldownPeriod` in seconds (before scaling to zero).
    #[arg(long, default_value_t = 300.0)]
    pub keda_cooldown_period: f64,
    /// HPA model: KEDA `useCachedMetrics: true` (the HPA reads the value of KEDA's last poll
    /// instead of a fresh one).
    #[arg(long)]
    pub keda_cached_metrics: bool,
}
