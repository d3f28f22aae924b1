//! `workerpool-operator simulate`: replays a queue-load trace through the real scaling code and
//! through a faithful model of KEDA + the Kubernetes HPA, and reports what each costs.
//!
//! # Usage
//!
//! ```text
//! workerpool-operator simulate                        # step, spike and daily-sine, one table
//! workerpool-operator simulate --trace spike
//! workerpool-operator simulate --trace load.csv --service-rate 2 --startup-delay 30
//! ```
//!
//! It prints one table (worker-seconds, backlog-seconds, p95 and max task wait, scale events,
//! tasks completed, tasks lost/requeued, and ours relative to the HPA) and writes
//! `replicas.csv` and `replicas.png` into `--out` (default `target/simulate`; with several
//! traces, one sub-directory per trace).
//!
//! # Traces
//!
//! A CSV file of `time_seconds,arrivals_per_second` rows (header optional, `#` comments): each
//! row's rate holds until the next row; the last row's time is the end of the trace. Or a built-in
//! trace (see [`Trace::built_in`]):
//! - `step`: 5/s for 10 min, 50/s for 20 min, 5/s for 10 min;
//! - `spike`: 5/s for 10 min, a 2-minute spike of 100/s, 5/s for 18 min;
//! - `daily-sine`: a day compressed into 2 h, from 2/s up to 40/s (after one hour) and back;
//! - `capped-downstream` (by name only): the step's shape at 40/s while a downstream service
//!   completes at most 20 tasks/s in all until minute 20 (more workers do not help).
//!
//! # The model
//!
//! Deterministic, discrete time in steps of 100 ms, no randomness:
//! - Tasks arrive at the trace's rate as a fluid (whole tasks released as the accumulated
//!   arrivals reach them) into one FIFO queue; each task remembers its arrival, and its wait is
//!   the start of the service that completes it minus its arrival. A step's arrivals come before
//!   the controllers look, so a task in service is counted for its whole service time.
//! - A trace may limit the completions of all workers together (a downstream bottleneck): the
//!   ready workers then share that rate.
//! - Each task takes `1 / service_rate` seconds of one ready worker. A pod becomes ready
//!   `startup_delay` seconds after it is created. Worker-seconds count every second a pod exists,
//!   start-up and draining included; backlog-seconds integrate the waiting tasks.
//! - Both policies see the same metric, the queue length as the operator measures it: tasks
//!   waiting plus tasks in flight. Both aim at the same load per worker: ours recommends
//!   `ceil(queueLength × scalingFactor)` workers, the HPA's AverageValue target is
//!   `1 / scalingFactor` tasks per pod. The default scaling factor is `1 / (service_rate × 10 s)`:
//!   ten seconds of queued work per worker.
//! - Start (default): the steady state of the trace's first rate `r0` for both policies:
//!   `n0 = ceil(r0 / service_rate)` ready, busy workers and `n0 / scalingFactor` tasks in the
//!   system. `--cold-start`: an empty queue and `--min-replicas` pods.
//! - Tasks that have not started by the end count in the wait percentiles with the wait they have
//!   had so far.
//!
//! ## `ours`
//!
//! The live code: every `--poll-interval` (1 s), what a poll sees (queue length, ready, draining
//! and starting pods, the pods' median start-up time) through
//! [`Scaler::step`](workerpool_scaling::Scaler::step): the rate policy (`--policy rate`,
//! the default, with `--target-drain-seconds` and `--max-surge-percent`) or the specification's
//! rule (`--policy queue-length`), then the scale-down window `--stabilization` (30 s; with the
//! rate policy it holds only the arrivals' need, not workers added for a backlog).
//! The reconciler acts on every change at once (it is watch-driven) and keeps that many pods
//! that are not draining: it creates pods, or chooses the surplus (not ready first, then idle,
//! then busy, youngest first); a pod without a task leaves at once, a busy one drains: it
//! finishes its current task, takes no other and exits. No task is interrupted.
//!
//! ## `hpa`: KEDA + HorizontalPodAutoscaler, defaults
//!
//! A ScaledObject with one queue trigger and KEDA's defaults (`pollingInterval: 30`,
//! `cooldownPeriod: 300`, `minReplicaCount: 0`, `maxReplicaCount` = `--max-replicas`,
//! `metricType: AverageValue`, `useCachedMetrics: false`, no `advanced.horizontalPodAutoscalerConfig`):
//! - KEDA's loop, every `pollingInterval`, only activates: an active trigger (queue length above
//!   the activation value 0) at zero replicas scales to 1; an inactive one scales to 0 once
//!   `cooldownPeriod` has passed since the last active poll (only with `minReplicaCount: 0`).
//! - Between 1 and N the HPA decides (`minReplicas` = max(`minReplicaCount`, 1); at zero
//!   replicas it is disabled). It syncs every 15 s (`--horizontal-pod-autoscaler-sync-period`).
//!   Each sync reads the metric through KEDA's metrics server, which queries the queue afresh
//!   because `useCachedMetrics` is false (`--keda-cached-metrics` serves the value of KEDA's last
//!   poll instead).
//! - External metric, AverageValue target (`GetExternalPerPodMetricReplicas`):
//!   `ratio = metric / (target × statusReplicas)`; if `|1 − ratio| ≤ 0.1` (the tolerance) the
//!   proposal is the current count, else `ceil(metric / target)`. Pod readiness does not enter.
//! - KEDA leaves `spec.behavior` unset, so the controller takes its path without behavior
//!   (`normalizeDesiredReplicas`): the highest proposal of the last 300 s
//!   (`--horizontal-pod-autoscaler-downscale-stabilization`), at most `max(2 × current, 4)` per
//!   sync, within min and max. `--hpa-behavior default` applies the documented default behavior
//!   instead (scale up by max(100 %, 4 pods) per 15 s with no stabilization, scale down by 100 % per
//!   15 s after a 300 s stabilization window); with a 15 s sync the two differ only at the edges.
//! - Scale-down removes pods the way a ReplicaSet ranks them (not ready first, then the most
//!   recently ready). Kubernetes knows nothing of tasks, so a removed pod's task in flight is
//!   interrupted; the charitable assumption here is that it goes back to the head of the queue
//!   (counted as requeued, not lost; its work so far is wasted) and that the pod vanishes at once
//!   (no termination grace period is charged).
//!
//! ## What the model shows
//!
//! The queue-length rules do not come to rest after a change of load, a property of the rules,
//! not of the model:
//! - the specification's rule (`--policy queue-length`) hunts around the need (between 17 and 22
//!   workers for a need of 20, period about 70 s): the queue integrates the capacity error, a
//!   higher count is applied at once but takes effect only after the start-up delay, and a lower
//!   one waits for the 30 s window;
//! - the HPA cycles with its 300 s window: once extra pods have drained the queue, the metric
//!   (waiting + in flight) reads about a tenth of the target, the window holds the old peak for five
//!   minutes, then the count falls far below the need and the queue builds up again.
//!
//! The rate policy sizes for the arrivals and counts the pods already starting, so it settles
//! at the need (see docs/scaling.md, "Scaling quality").
//!
//! At a constant load that starts at its steady state both keep `ceil(rate / service_rate)`.
//!
//! ## Sources
//!
//! - Kubernetes, Horizontal Pod Autoscaling, "Algorithm details" (ratio, tolerance 0.1, sync
//!   period 15 s) and "Default Behavior":
//!   <https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/>
//! - kube-controller-manager source, `pkg/controller/podautoscaler/horizontal.go`
//!   (`reconcileAutoscaler`, `normalizeDesiredReplicas`, `convertDesiredReplicasWithRules`:
//!   `scaleUpLimitFactor = 2`, `scaleUpLimitMinimum = 4`; `stabilizeRecommendationWithBehaviors`,
//!   `convertDesiredReplicasWithBehaviorRate`) and `replica_calculator.go`
//!   (`GetExternalPerPodMetricReplicas`).
//! - Kubernetes ReplicaSet, "Scaling a ReplicaSet" (which pods are deleted first):
//!   <https://kubernetes.io/docs/concepts/workloads/controllers/replicaset/#scaling-a-replicaset>
//! - KEDA ScaledObject specification (`pollingInterval` 30 s, `cooldownPeriod` 300 s,
//!   `minReplicaCount` 0, `maxReplicaCount` 100, `useCachedMetrics` false, `metricType`
//!   AverageValue, `advanced.horizontalPodAutoscalerConfig.behavior`):
//!   <https://keda.sh/docs/latest/reference/scaledobject-spec/>
//! - KEDA, Scaling Deployments (activation 0↔1 by KEDA, 1↔N by the HPA):
//!   <https://keda.sh/docs/latest/concepts/scaling-deployments/>

mod args;
mod controllers;
mod engine;
mod plot;
mod report;
mod trace;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};

pub use engine::{Outcome, Sample, Stats, TICK, percentile, simulate};
pub use report::{Comparison, StepResponse, step_response};
pub use trace::{BUILT_IN, Trace};

pub use args::SimulateArgs;

/// Seconds of queued work per worker that the default scaling factor aims at.
pub const TARGET_DRAIN_SECONDS: f64 = 10.0;

/// A scaling policy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The operator's own autoscaler and reconciler.
    Ours,
    /// KEDA + the Kubernetes HPA with their defaults.
    Hpa,
}

impl Policy {
    /// Short name for tables and file columns.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Hpa => "hpa",
        }
    }
}

/// Our scaling policy on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Rates, start-up times and the backlog (`scalingPolicy: Rate`, the default).
    #[default]
    Rate,
    /// The specification's rule, `ceil(queueLength × scalingFactor)` (`scalingPolicy: QueueLength`).
    QueueLength,
}

impl From<PolicyArg> for workerpool_scaling::Mode {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Rate => Self::Rate,
            PolicyArg::QueueLength => Self::QueueLength,
        }
    }
}

/// Which HPA normalization the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HpaBehavior {
    /// `spec.behavior` unset (what KEDA creates by default): the controller's legacy path.
    #[default]
    Unset,
    /// `spec.behavior` set to the documented default policies.
    Default,
}

/// Parameters of the KEDA + HPA model.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaParams {
    /// HPA sync period, seconds (15).
    pub sync_period: f64,
    /// HPA tolerance (0.1).
    pub tolerance: f64,
    /// HPA downscale stabilization window, seconds (300).
    pub downscale_stabilization: f64,
    /// Legacy normalization or the default behavior.
    pub behavior: HpaBehavior,
    /// KEDA `pollingInterval`, seconds (30).
    pub keda_polling_interval: f64,
    /// KEDA `cooldownPeriod`, seconds (300).
    pub keda_cooldown_period: f64,
    /// KEDA `useCachedMetrics` (false).
    pub keda_cached_metrics: bool,
}

impl Default for HpaParams {
    fn default() -> Self {
        Self {
            sync_period: 15.0,
            tolerance: 0.1,
            downscale_stabilization: 300.0,
            behavior: HpaBehavior::Unset,
            keda_polling_interval: 30.0,
            keda_cooldown_period: 300.0,
            keda_cached_metrics: false,
        }
    }
}

/// Parameters of a run (the CLI's defaults in [`Default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Tasks per second one ready worker completes (1).
    pub service_rate: f64,
    /// Seconds from pod creation to taking tasks (10).
    pub startup_delay: f64,
    /// Seconds to simulate (`None`: the trace's length).
    pub duration: Option<f64>,
    /// Lower replica bound (0).
    pub min_replicas: i32,
    /// Upper replica bound (100).
    pub max_replicas: i32,
    /// Workers per queued task (0.1 = 1 / (service rate × 10 s)).
    pub scaling_factor: f64,
    /// Our poll interval, seconds (1).
    pub poll_interval: f64,
    /// Our scale-down stabilization window, seconds (30).
    pub stabilization: f64,
    /// Start empty at the minimum instead of at the first rate's steady state.
    pub cold_start: bool,
    /// Our scaling policy (`scalingPolicy`: `Rate` by default, or the specification's `QueueLength`).
    pub mode: workerpool_scaling::Mode,
    /// `targetDrainSeconds` (10).
    pub target_drain_seconds: f64,
    /// `maxSurgePercent` (10).
    pub max_surge_percent: f64,
    /// Shifts the phases of the periodic loops; `None`: all start at 0.
    pub seed: Option<u64>,
    /// The KEDA + HPA model.
    pub hpa: HpaParams,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            service_rate: 1.0,
            startup_delay: 10.0,
            duration: None,
            min_replicas: 0,
            max_replicas: 100,
            scaling_factor: 1.0 / TARGET_DRAIN_SECONDS,
            poll_interval: 1.0,
            stabilization: 30.0,
            cold_start: false,
            mode: workerpool_scaling::Mode::Rate,
            target_drain_seconds: workerpool_scaling::DEFAULT_TARGET_DRAIN_SECONDS,
            max_surge_percent: workerpool_scaling::DEFAULT_MAX_SURGE_PERCENT,
            seed: None,
            hpa: HpaParams::default(),
        }
    }
}

impl Params {
    /// Our policy's settings, as a QWorker's `scaleConfig` gives them.
    pub fn knobs(&self) -> workerpool_scaling::Knobs {
        workerpool_scaling::Knobs {
            scaling_factor: self.scaling_factor,
            min: self.min_replicas,
            max: self.max_replicas,
            mode: self.mode,
            target_drain_seconds: self.target_drain_seconds,
            max_surge: self.max_surge_percent / 100.0,
        }
    }

    /// Parameters from the command line, checked.
    pub fn from_args(args: &SimulateArgs) -> anyhow::Result<Self> {
        let params = Self {
            service_rate: args.service_rate,
            startup_delay: args.startup_delay,
            duration: args.duration,
            min_replicas: args.min_replicas,
            max_replicas: args.max_replicas,
            scaling_factor: args
                .scaling_factor
                .unwrap_or(1.0 / (args.service_rate * TARGET_DRAIN_SECONDS)),
            poll_interval: args.poll_interval,
            stabilization: args.stabilization,
            cold_start: args.cold_start,
            mode: args.policy.into(),
            target_drain_seconds: args.target_drain_seconds,
            max_surge_percent: args.max_surge_percent,
            seed: args.seed,
            hpa: HpaParams {
                sync_period: args.hpa_sync_period,
                tolerance: args.hpa_tolerance,
                downscale_stabilization: args.hpa_downscale_stabilization,
                behavior: args.hpa_behavior,
                keda_polling_interval: args.keda_polling_interval,
                keda_cooldown_period: args.keda_cooldown_period,
                keda_cached_metrics: args.keda_cached_metrics,
            },
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks every value; the error names the option.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn positive(name: &str, v: f64) -> anyhow::Result<()> {
            if !v.is_finite() || v <= 0.0 {
                bail!("--{name} must be a positive number, got {v}");
            }
            Ok(())
        }
        fn non_negative(name: &str, v: f64) -> anyhow::Result<()> {
            if !v.is_finite() || v < 0.0 {
                bail!("--{name} must be a number >= 0, got {v}");
            }
            Ok(())
        }
        positive("service-rate", self.service_rate)?;
        non_negative("startup-delay", self.startup_delay)?;
        if let Some(d) = self.duration {
            positive("duration", d)?;
            if d / TICK > 1e9 {
                bail!("--duration {d} s is too long to simulate in 100 ms steps");
            }
        }
        if self.min_replicas < 0 {
            bail!("--min-replicas must be >= 0, got {}", self.min_replicas);
        }
        if self.max_replicas < 1 || self.max_replicas < self.min_replicas {
            bail!(
                "--max-replicas must be >= 1 and >= --min-replicas ({}), got {}",
                self.min_replicas,
                self.max_replicas
            );
        }
        positive("scaling-factor", self.scaling_factor)?;
        positive("poll-interval", self.poll_interval)?;
        non_negative("stabilization", self.stabilization)?;
        positive("target-drain-seconds", self.target_drain_seconds)?;
        non_negative("max-surge-percent", self.max_surge_percent)?;
        positive("hpa-sync-period", self.hpa.sync_period)?;
        non_negative("hpa-tolerance", self.hpa.tolerance)?;
        non_negative(
            "hpa-downscale-stabilization",
            self.hpa.downscale_stabilization,
        )?;
        positive("keda-polling-interval", self.hpa.keda_polling_interval)?;
        non_negative("keda-cooldown-period", self.hpa.keda_cooldown_period)?;
        Ok(())
    }
}

/// Runs both policies on `trace`.
pub fn compare(trace: &Trace, params: &Params) -> Comparison {
    let ours = simulate(trace, params, Policy::Ours);
    let hpa = simulate(trace, params, Policy::Hpa);
    let step =
        |o: &Outcome| report::step_response(o, trace, params.service_rate, params.max_replicas);
    Comparison {
        trace: trace.name.clone(),
        step_ours: step(&ours),
        step_hpa: step(&hpa),
        ours,
        hpa,
    }
}

/// Runs the simulation described by `args`: prints the table, writes the CSV and PNG files.
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let params = Params::from_args(args)?;
    let traces: Vec<Trace> = match (&args.trace, args.all) {
        (Some(spec), false) => vec![Trace::load(spec)?],
        _ => BUILT_IN
            .iter()
            .filter_map(|name| Trace::built_in(name))
            .collect(),
    };
    let several = traces.len() > 1;
    let mut comparisons = Vec::with_capacity(traces.len());
    let mut written: Vec<PathBuf> = Vec::new();
    for trace in &traces {
        let comparison = compare(trace, &params);
        let dir = if several {
            args.out.join(&trace.name)
        } else {
            args.out.clone()
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        let csv = dir.join("replicas.csv");
        report::write_csv(&csv, &comparison)?;
        let png = dir.join("replicas.png");
        plot::write_png(&png, trace, &params, &comparison)?;
        written.push(csv);
        written.push(png);
        comparisons.push(comparison);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(report::table(&params, &comparisons).as_bytes())?;
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    out.flush()?;
    Ok(())
}
