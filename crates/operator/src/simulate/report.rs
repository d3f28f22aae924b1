//! The table on stdout and `replicas.csv`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;

use super::engine::{Outcome, Stats};
use super::{HpaBehavior, Params};

/// Both policies on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The trace's name.
    pub trace: String,
    /// Our policy's run.
    pub ours: Outcome,
    /// The HPA model's run.
    pub hpa: Outcome,
}

impl Comparison {
    /// Our worker-seconds relative to the HPA's, in percent (negative: ours uses fewer).
    pub fn worker_seconds_change(&self) -> f64 {
        relative(
            self.ours.stats.worker_seconds,
            self.hpa.stats.worker_seconds,
        )
    }

    /// The project's target: at least 25 % fewer worker-seconds at an equal or lower p95 wait.
    pub fn meets_target(&self) -> bool {
        self.worker_seconds_change() <= -25.0
            && self.ours.stats.p95_wait <= self.hpa.stats.p95_wait + 1e-9
    }
}

fn relative(ours: f64, theirs: f64) -> f64 {
    if theirs == 0.0 {
        if ours == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (ours - theirs) / theirs * 100.0
    }
}

/// The parameters line and one row per policy and trace, plus the relative difference.
pub fn table(params: &Params, comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    let h = &params.hpa;
    let _ = writeln!(
        out,
        "model: service rate {}/s per worker, start-up {} s, scaling factor {} (HPA target {} tasks/pod), replicas {}..{}, {} start",
        params.service_rate,
        params.startup_delay,
        params.scaling_factor,
        (1000.0 / params.scaling_factor).round() / 1000.0,
        params.min_replicas,
        params.max_replicas,
        if params.cold_start { "cold" } else { "warm" },
    );
    let _ = writeln!(
        out,
        "ours: poll {} s, scale-down window {} s, drain between tasks | hpa: sync {} s, tolerance {}, downscale window {} s, behavior {}, KEDA poll {} s, cooldown {} s{}, removed pods requeue their task",
        params.poll_interval,
        params.stabilization,
        h.sync_period,
        h.tolerance,
        h.downscale_stabilization,
        match h.behavior {
            HpaBehavior::Unset => "unset",
            HpaBehavior::Default => "default",
        },
        h.keda_polling_interval,
        h.keda_cooldown_period,
        if h.keda_cached_metrics {
            ", cached metrics"
        } else {
            ""
        },
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<6} {:>12} {:>12} {:>9} {:>9} {:>7} {:>7} {:>10} {:>14}",
        "trace",
        "policy",
        "worker-s",
        "backlog-s",
        "p95 wait",
        "max wait",
        "scales",
        "peak",
        "completed",
        "lost/requeued"
    );
    for c in comparisons {
        for o in [&c.ours, &c.hpa] {
            let s: &Stats = &o.stats;
            let _ = writeln!(
                out,
                "{:<12} {:<6} {:>12.0} {:>12.0} {:>8.1}s {:>8.1}s {:>7} {:>7} {:>10} {:>14}",
                c.trace,
                o.policy.name(),
                s.worker_seconds,
                s.backlog_seconds,
                s.p95_wait,
                s.max_wait,
                s.scale_events,
                s.peak_replicas,
                s.completed,
                format!("{}/{}", s.lost, s.requeued),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "ours vs hpa (target: >= 25 % fewer worker-seconds at an equal or lower p95 wait)"
    );
    for c in comparisons {
        let (o, h) = (&c.ours.stats, &c.hpa.stats);
        let _ = writeln!(
            out,
            "{:<12} worker-seconds {:+6.1} %, backlog-seconds {:+6.1} %, p95 wait {:.1} s vs {:.1} s ({:+.1} s): {}",
            c.trace,
            c.worker_seconds_change(),
            relative(o.backlog_seconds, h.backlog_seconds),
            o.p95_wait,
            h.p95_wait,
            o.p95_wait - h.p95_wait,
            if c.meets_target() { "met" } else { "missed" },
        );
    }
    out
}

/// Writes `time_seconds,arrivals_per_second` and, per policy, queue length (waiting + in flight),
/// requested replicas and existing pods, one row per second.
pub fn write_csv(path: &Path, c: &Comparison) -> anyhow::Result<()> {
    let mut text = String::from(
        "time_seconds,arrivals_per_second,ours_queue_length,ours_replicas,ours_pods,hpa_queue_length,hpa_replicas,hpa_pods\n",
    );
    for (o, h) in c.ours.samples.iter().zip(&c.hpa.samples) {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{}",
            o.time,
            o.arrival_rate,
            o.queue_length,
            o.replicas,
            o.pods,
            h.queue_length,
            h.replicas,
            h.pods
        );
    }
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
