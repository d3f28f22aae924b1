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
    /// Ours after the trace's largest step up (`None`: no step up that lasts two minutes).
    pub step_ours: Option<StepResponse>,
    /// The HPA model after the same step.
    pub step_hpa: Option<StepResponse>,
}

/// How the requested replicas answer the trace's largest step up of the arrival rate that lasts
/// at least two minutes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResponse {
    /// Second of the step.
    pub at: f64,
    /// Seconds until the next change of the rate (or the end).
    pub until: f64,
    /// The steady need after the step, `ceil(rate / service rate)` within the bounds.
    pub need: i32,
    /// Highest requested count above the need until the next change, percent of the need.
    pub overshoot_percent: f64,
    /// Seconds from the step until the requested count stays within ±5 % of the need (`None`:
    /// not before the next change).
    pub settle_seconds: Option<f64>,
}

/// The step response of `o` on `trace` (see [`StepResponse`]).
pub fn step_response(
    o: &Outcome,
    trace: &super::Trace,
    service_rate: f64,
    max_replicas: i32,
) -> Option<StepResponse> {
    let segs = trace.segments();
    let mut best: Option<(f64, f64, f64)> = None;
    for (i, &(start, rate)) in segs.iter().enumerate() {
        let previous = if i == 0 { 0.0 } else { segs[i - 1].1 };
        let end = segs.get(i + 1).map_or(trace.length(), |s| s.0);
        if i == 0 || end - start < 120.0 || rate <= previous {
            continue;
        }
        if best.is_none_or(|(_, _, jump)| rate - previous > jump) {
            best = Some((start, end, rate - previous));
        }
    }
    let (at, until, _) = best?;
    let rate = trace.rate_at(at);
    let need = ((rate / service_rate - 1e-9).ceil() as i32).clamp(1, max_replicas.max(1));
    let window: Vec<_> = o
        .samples
        .iter()
        .filter(|s| s.time >= at && s.time < until)
        .collect();
    let peak = window.iter().map(|s| s.replicas).max().unwrap_or(need);
    let band = |r: i32| (f64::from(r) - f64::from(need)).abs() <= 0.05 * f64::from(need) + 1e-9;
    let settle_seconds = match window.iter().rposition(|s| !band(s.replicas)) {
        None => Some(0.0),
        Some(i) if i + 1 < window.len() => Some(window[i + 1].time - at),
        Some(_) => None,
    };
    Some(StepResponse {
        at,
        until,
        need,
        overshoot_percent: (f64::from(peak - need) / f64::from(need) * 100.0).max(0.0),
        settle_seconds,
    })
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
    write_parameters(&mut out, params);
    let _ = writeln!(out);
    write_stats(&mut out, comparisons);
    let _ = writeln!(out);
    write_differences(&mut out, comparisons);
    write_step_responses(&mut out, comparisons);
    out
}

/// The model's and both policies' parameters, two lines.
fn write_parameters(out: &mut String, params: &Params) {
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
}

/// The header and one row of figures per trace and policy.
fn write_stats(out: &mut String, comparisons: &[Comparison]) {
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
}

/// Ours against the HPA model per trace, and whether the target is met.
fn write_differences(out: &mut String, comparisons: &[Comparison]) {
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
}

/// Both policies' response to each trace's largest step up, when a trace has one.
fn write_step_responses(out: &mut String, comparisons: &[Comparison]) {
    let steps: Vec<_> = comparisons
        .iter()
        .filter_map(|c| Some((c, c.step_ours?, c.step_hpa?)))
        .collect();
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "after the largest step up (target: overshoot <= 10 %, settled within ±5 % in <= 120 s, 10x fewer changes than the queue-length rule)"
    );
    let settle = |s: Option<f64>| s.map_or_else(|| "never".to_string(), |v| format!("{v:.0} s"));
    for (c, o, h) in steps {
        let _ = writeln!(
            out,
            "{:<12} at {:.0} s (need {}): overshoot ours {:.0} % / hpa {:.0} %, settled ours {} / hpa {}, desiredReplicas changes ours {} / hpa {}",
            c.trace,
            o.at,
            o.need,
            o.overshoot_percent,
            h.overshoot_percent,
            settle(o.settle_seconds),
            settle(h.settle_seconds),
            c.ours.stats.scale_events,
            c.hpa.stats.scale_events,
        );
    }
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
