//! Scaling a pool on Storm's own load, planned without I/O.
//!
//! Two custom metrics of `autoscaling.customMetrics` are *recognised*: the operator evaluates
//! them itself from the Storm UI REST API (`/api/v1/topology/{id}?window=600`) and keeps them out
//! of the HPA, which would find no adapter serving them. Every other custom metric passes to the
//! HPA unchanged.
//!
//! - `storm_pending_messages` (type `pods`, `targetAverageValue`): tuple trees in flight per pod.
//!   By Little's law, in flight = Σ over spouts of `acked / window × completeLatency`; per pod,
//!   divided by the pool's pods. Wanted pods: `⌈inFlight / target⌉`.
//! - `storm_bolt_capacity` (type `pods`, `targetAverageValue`, e.g. `"800m"`): the capacity of
//!   the topology's busiest bolt (Storm reports a bolt's busiest executor: the share of the last
//!   10 minutes it spent executing; near 1.0 it is saturated). Wanted pods:
//!   `⌈pods × capacity / target⌉`, the HPA's own rule.
//!
//! The rates come from Storm's 600 s window (or the topology's uptime when it is younger). As
//! with the HPA, a metric within 10 % of its target keeps the current count, the largest wanted
//! count wins, and it is clamped to `minReplicas..maxReplicas`. More pods than the topology's
//! executors can occupy (`⌈executorsTotal / slots per pod⌉`) cannot help: the count is held
//! there and the decision says so. A higher count applies at once; a lower one only after every
//! recommendation stayed below the count for the stabilisation window (the HPA's
//! `behavior.scaleDown.stabilizationWindowSeconds`, default 300 s), and then goes to the largest
//! of them. What that needs across polls (`belowSince`, `belowMax`) lives in the pool's status.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use workerpool_api::storm::{
    AutoscalingSpec, MetricSourceType, StormAutoscalingStatus, StormScaleDecision, StormScaleInputs,
};
use workerpool_storm::TopologyDetail;

use crate::quantity;

pub use workerpool_api::storm::{BOLT_CAPACITY, PENDING_MESSAGES, RECOGNISED};
/// The Storm window the figures are read from (`?window=600`).
pub const WINDOW: &str = "600";
/// Its length in seconds.
pub const WINDOW_SECONDS: i64 = 600;
/// A metric within this fraction of its target keeps the current count (the HPA's default).
pub const TOLERANCE: f64 = 0.1;
/// Scale-down stabilisation without `behavior.scaleDown.stabilizationWindowSeconds`.
pub const DEFAULT_STABILIZATION: Duration = Duration::from_secs(300);

/// Whether the operator evaluates the custom metric `name` itself.
pub fn recognised(name: &str) -> bool {
    RECOGNISED.contains(&name)
}

/// A recognised metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormMetric {
    /// `storm_pending_messages`.
    PendingMessages,
    /// `storm_bolt_capacity`.
    BoltCapacity,
}

impl StormMetric {
    /// The term a decision by this metric carries.
    pub fn term(self) -> &'static str {
        match self {
            Self::PendingMessages => "PendingMessages",
            Self::BoltCapacity => "BoltCapacity",
        }
    }
}

/// A recognised metric and its per-pod target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Which.
    pub metric: StormMetric,
    /// `targetAverageValue`.
    pub per_pod: f64,
}

/// The recognised metrics of an autoscaled pool, or why one of them makes no sense (they are
/// per-pod averages: `type: pods` with a positive `targetAverageValue`).
pub fn targets(auto: &AutoscalingSpec) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (i, m) in auto.custom_metrics.iter().enumerate() {
        let metric = match m.name.as_str() {
            PENDING_MESSAGES => StormMetric::PendingMessages,
            BOLT_CAPACITY => StormMetric::BoltCapacity,
            _ => continue,
        };
        let at = format!("autoscaling.customMetrics[{i}] ({})", m.name);
        if m.type_ != MetricSourceType::Pods {
            return Err(format!(
                "{at}: the operator evaluates this Storm metric per pod; use type: pods with targetAverageValue"
            ));
        }
        let Some(raw) = m.target_average_value.as_deref() else {
            return Err(format!(
                "{at}: a per-pod Storm metric needs targetAverageValue, not targetValue"
            ));
        };
        match quantity::parse(raw) {
            Some(v) if v > 0.0 && v.is_finite() => out.push(Target { metric, per_pod: v }),
            _ => {
                return Err(format!(
                    "{at}: targetAverageValue {raw:?} is not a positive quantity"
                ));
            }
        }
    }
    Ok(out)
}

/// The figures of `detail` (read with `?window=600`) for a pool of `pods` pods with
/// `slots_per_pod` slots each.
pub fn inputs(detail: &TopologyDetail, pods: i32, slots_per_pod: i32) -> StormScaleInputs {
    let window = match detail.uptime_seconds {
        u if u > 0 => u.min(WINDOW_SECONDS),
        _ => WINDOW_SECONDS,
    };
    let pending: f64 = detail
        .spouts
        .iter()
        .map(|s| s.acked.max(0) as f64 / window as f64 * (s.complete_latency.max(0.0) / 1000.0))
        .sum();
    let latency = detail
        .spouts
        .iter()
        .map(|s| s.complete_latency)
        .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));
    let busiest = detail
        .bolts
        .iter()
        .max_by(|a, b| a.capacity.total_cmp(&b.capacity));
    let slots = i64::from(slots_per_pod.max(1));
    let useful = if detail.executors_total > 0 {
        i32::try_from((detail.executors_total + slots - 1) / slots).unwrap_or(i32::MAX)
    } else {
        i32::MAX
    };
    let pods = pods.max(0);
    StormScaleInputs {
        window_seconds: window,
        pods,
        pending_messages: (!detail.spouts.is_empty()).then_some(round(pending)),
        pending_messages_per_pod: (!detail.spouts.is_empty())
            .then(|| round(pending / f64::from(pods.max(1)))),
        complete_latency_ms: latency,
        busiest_bolt: busiest.map(|b| b.component_id.clone()),
        bolt_capacity: busiest.map(|b| b.capacity),
        execute_latency_ms: busiest.map(|b| b.execute_latency),
        executors: detail.executors_total,
        useful_pods: useful,
    }
}

/// Three decimals, as Storm writes its figures: status changes only when a figure does.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Everything [`plan`] needs.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The recognised metrics.
    pub targets: &'a [Target],
    /// What Storm reports.
    pub inputs: &'a StormScaleInputs,
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// The state in force (from status); `None` on the first evaluation.
    pub previous: Option<&'a StormAutoscalingStatus>,
    /// Scale-down stabilisation window.
    pub stabilization: Duration,
    /// Now.
    pub now: Timestamp,
}

/// A plan: the new state, and the decision when the count changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The state to write to status.
    pub status: StormAutoscalingStatus,
    /// Set when the count changed.
    pub decision: Option<StormScaleDecision>,
    /// The reason in words (for the condition).
    pub message: String,
}

/// The count one metric wants, and how it says so.
fn wanted(target: &Target, inputs: &StormScaleInputs) -> Option<(i32, &'static str, String)> {
    let pods = inputs.pods.max(1);
    let (per_pod, what) = match target.metric {
        StormMetric::PendingMessages => (
            inputs.pending_messages_per_pod?,
            format!(
                "{PENDING_MESSAGES} {:.0}/pod ({:.0} in flight over {pods} pod(s))",
                inputs.pending_messages_per_pod?, inputs.pending_messages?
            ),
        ),
        StormMetric::BoltCapacity => (
            inputs.bolt_capacity?,
            format!(
                "{BOLT_CAPACITY} {:.3} (bolt {})",
                inputs.bolt_capacity?,
                inputs.busiest_bolt.as_deref().unwrap_or("?")
            ),
        ),
    };
    let ratio = per_pod / target.per_pod;
    if !ratio.is_finite() {
        return None;
    }
    if (ratio - 1.0).abs() <= TOLERANCE {
        return Some((
            pods,
            "Tolerance",
            format!(
                "{what} is within {:.0} % of its target {}: {pods} pod(s) kept",
                TOLERANCE * 100.0,
                target.per_pod
            ),
        ));
    }
    let raw = (f64::from(pods) * ratio - 1e-9).ceil().max(0.0);
    let count = if raw >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        raw as i32
    };
    Some((
        count,
        target.metric.term(),
        format!("{what}, target {}: {count} pod(s)", target.per_pod),
    ))
}

/// A recommended count, the term that decided it, and the reason in words.
type Recommendation = (i32, &'static str, String);

/// The largest count the recognised metrics want; without a figure, the count in force
/// (`previous`, else `min`).
fn recommend(input: &PlanInput<'_>, min: i32, previous: Option<i32>) -> Recommendation {
    let best = input
        .targets
        .iter()
        .filter_map(|t| wanted(t, input.inputs))
        .max_by_key(|(count, _, _)| *count);
    match best {
        Some(w) => w,
        None => (
            previous.unwrap_or(min),
            "NoData",
            "Storm reports no figure for the recognised metrics: the count is kept".to_string(),
        ),
    }
}

/// `wanted`, held at the pods the topology's executors can occupy when it asks for more (and
/// that is below `max`).
fn hold_at_useful(
    wanted: Recommendation,
    inputs: &StormScaleInputs,
    min: i32,
    max: i32,
) -> Recommendation {
    let (recommendation, term, message) = wanted;
    let useful = inputs.useful_pods;
    if recommendation > useful && useful < max {
        let held = useful.max(min);
        let message = format!(
            "{message}; but the topology's {} executor(s) occupy at most {useful} pod(s): more \
             pods cannot help, held at {held} (raise the topology's parallelism)",
            inputs.executors
        );
        return (held, "ExecutorsExhausted", message);
    }
    (recommendation, term, message)
}

/// `wanted` clamped to `min..=max` (a `NoData` term stays when raised to `min`).
fn clamp_to_bounds(wanted: Recommendation, min: i32, max: i32) -> Recommendation {
    let (recommendation, term, message) = wanted;
    if recommendation > max {
        (
            max,
            "MaxReplicas",
            format!("{message}; capped at maxReplicas {max}"),
        )
    } else if recommendation < min {
        let term = if term == "NoData" {
            term
        } else {
            "MinReplicas"
        };
        (min, term, format!("{message}; raised to minReplicas {min}"))
    } else {
        (recommendation, term, message)
    }
}

/// A `recommendation` below the count in force, `from`: the count goes down to the largest
/// recommendation of the stabilisation window once every one stayed below `from` for the
/// window, else stays; `status` gets the count and the window's state, the returned message
/// the reason.
fn stabilize_down(
    input: &PlanInput<'_>,
    from: i32,
    recommendation: i32,
    status: &mut StormAutoscalingStatus,
    message: String,
) -> String {
    let since = input
        .previous
        .and_then(|p| p.below_since.as_ref())
        .map_or(input.now, |t| t.0);
    let below_max = input
        .previous
        .and_then(|p| p.below_max)
        .map_or(recommendation, |m| m.max(recommendation));
    let waited = input.now.duration_since(since).as_secs_f64().max(0.0);
    let window = input.stabilization.as_secs_f64();
    if waited >= window {
        status.replicas = below_max.min(from);
        if recommendation < status.replicas {
            status.below_since = Some(Time(input.now));
            status.below_max = Some(recommendation);
        }
        format!(
            "{message}; below {from} for {waited:.0} s (stabilisation window {window:.0} s): \
             down to {}",
            status.replicas
        )
    } else {
        status.below_since = Some(Time(since));
        status.below_max = Some(below_max);
        format!(
            "{message}; {from} kept until the recommendations stay lower for the \
             stabilisation window ({waited:.0}/{window:.0} s)"
        )
    }
}

/// The pure decision (see the module docs).
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let max = input.max.max(1);
    let min = input.min.clamp(1, max);
    let previous = input.previous.map(|p| p.replicas.clamp(min, max));
    let wanted = hold_at_useful(recommend(input, min, previous), input.inputs, min, max);
    let (recommendation, term, mut message) = clamp_to_bounds(wanted, min, max);
    let from = previous.unwrap_or(min);
    let mut status = StormAutoscalingStatus {
        replicas: from,
        recommendation,
        term: term.to_string(),
        below_since: None,
        below_max: None,
        inputs: Some(input.inputs.clone()),
    };
    if previous.is_none() || recommendation >= from {
        status.replicas = recommendation;
    } else {
        message = stabilize_down(input, from, recommendation, &mut status, message);
    }
    let decision =
        (status.replicas != from || previous.is_none() && status.replicas != min).then(|| {
            StormScaleDecision {
                time: Time(input.now),
                from,
                to: status.replicas,
                term: status.term.clone(),
                message: message.clone(),
                inputs: Some(input.inputs.clone()),
            }
        });
    Plan {
        status,
        decision,
        message,
    }
}

/// The Storm part of the `Autoscaling` condition's message.
pub fn describe(status: &StormAutoscalingStatus) -> String {
    let mut text = format!(
        "Storm-derived count {} ({}, recommendation {})",
        status.replicas, status.term, status.recommendation
    );
    if let Some(i) = &status.inputs {
        if let (Some(total), Some(per_pod)) = (i.pending_messages, i.pending_messages_per_pod) {
            text.push_str(&format!(
                "; {total:.0} tuples in flight, {per_pod:.0}/pod over {} pod(s)",
                i.pods
            ));
        }
        if let Some(l) = i.complete_latency_ms {
            text.push_str(&format!(", complete latency {l:.0} ms"));
        }
        if let (Some(b), Some(c)) = (&i.busiest_bolt, i.bolt_capacity) {
            text.push_str(&format!("; busiest bolt {b} at capacity {c:.3}"));
        }
        if i.executors > 0 {
            text.push_str(&format!(
                "; {} executor(s) occupy at most {} pod(s)",
                i.executors, i.useful_pods
            ));
        }
        text.push_str(&format!(" (Storm window {} s)", i.window_seconds));
    }
    if let (Some(since), Some(m)) = (&status.below_since, status.below_max) {
        text.push_str(&format!("; lower ({m}) since {}", since.0));
    }
    text
}

#[cfg(test)]
mod tests {
    use workerpool_api::storm::CustomMetric;

    use super::*;

    const DETAIL: &str = include_str!("../../../../storm/tests/fixtures/topology-detail.json");

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
    }

    fn metric(name: &str, type_: MetricSourceType, avg: Option<&str>) -> CustomMetric {
        CustomMetric {
            name: name.into(),
            type_,
            target_average_value: avg.map(str::to_string),
            target_value: avg.is_none().then(|| "5".to_string()),
            ..CustomMetric::default()
        }
    }

    fn auto(metrics: Vec<CustomMetric>) -> AutoscalingSpec {
        AutoscalingSpec {
            enabled: true,
            min_replicas: Some(2),
            max_replicas: Some(20),
            custom_metrics: metrics,
            ..AutoscalingSpec::default()
        }
    }

    #[test]
    fn recognised_metrics_and_targets_that_make_no_sense() {
        let ok = auto(vec![
            metric(PENDING_MESSAGES, MetricSourceType::Pods, Some("1000")),
            metric(BOLT_CAPACITY, MetricSourceType::Pods, Some("800m")),
            metric("storm_other", MetricSourceType::Pods, Some("1")),
            metric("requests", MetricSourceType::External, None),
        ]);
        assert_eq!(
            targets(&ok),
            Ok(vec![
                Target {
                    metric: StormMetric::PendingMessages,
                    per_pod: 1000.0
                },
                Target {
                    metric: StormMetric::BoltCapacity,
                    per_pod: 0.8
                },
            ])
        );
        let bad = [
            (
                metric(PENDING_MESSAGES, MetricSourceType::External, Some("1000")),
                "use type: pods",
            ),
            (
                metric(BOLT_CAPACITY, MetricSourceType::Pods, None),
                "needs targetAverageValue",
            ),
            (
                metric(BOLT_CAPACITY, MetricSourceType::Pods, Some("0")),
                "not a positive quantity",
            ),
        ];
        for (m, want) in bad {
            let err = targets(&auto(vec![m])).expect_err("refused");
            assert!(err.contains(want), "{err}");
            assert!(
                err.starts_with("autoscaling.customMetrics[0] (storm_"),
                "{err}"
            );
        }
    }

    #[test]
    fn inputs_follow_littles_law_from_the_fixture() {
        let mut detail: TopologyDetail = serde_json::from_str(DETAIL).expect("fixture");
        let i = inputs(&detail, 2, 4);
        // 372280 acked over the 600 s window at 14.237 ms: 8.834 in flight.
        assert_eq!(i.window_seconds, 600);
        assert_eq!(i.pending_messages, Some(8.834));
        assert_eq!(i.pending_messages_per_pod, Some(4.417));
        assert_eq!(i.busiest_bolt.as_deref(), Some("split"));
        assert_eq!(i.bolt_capacity, Some(0.005));
        assert_eq!((i.executors, i.useful_pods), (28, 7));
        // A topology younger than the window: the rate is over its uptime.
        detail.uptime_seconds = 60;
        detail.spouts[0].acked = 60_000;
        detail.spouts[0].complete_latency = 900.0;
        let i = inputs(&detail, 3, 4);
        assert_eq!(i.window_seconds, 60);
        assert_eq!(i.pending_messages, Some(900.0));
        assert_eq!(i.pending_messages_per_pod, Some(300.0));
    }

    fn load(pods: i32, pending: f64, capacity: f64, useful: i32) -> StormScaleInputs {
        StormScaleInputs {
            window_seconds: 600,
            pods,
            pending_messages: Some(pending),
            pending_messages_per_pod: Some(pending / f64::from(pods)),
            complete_latency_ms: Some(900.0),
            busiest_bolt: Some("count".into()),
            bolt_capacity: Some(capacity),
            execute_latency_ms: Some(1.0),
            executors: i64::from(useful) * 4,
            useful_pods: useful,
        }
    }

    const PENDING: Target = Target {
        metric: StormMetric::PendingMessages,
        per_pod: 1000.0,
    };
    const CAPACITY: Target = Target {
        metric: StormMetric::BoltCapacity,
        per_pod: 0.8,
    };

    /// One poll of a trace: seconds, pods running, in flight, capacity, useful pods; the count
    /// and term wanted.
    type Step = (i64, i32, f64, f64, i32, i32, &'static str);

    fn replay(targets: &[Target], steps: &[Step], window: u64) {
        let mut state: Option<StormAutoscalingStatus> = None;
        for &(at, pods, pending, capacity, useful, want, term) in steps {
            let inputs = load(pods, pending, capacity, useful);
            let p = plan(&PlanInput {
                targets,
                inputs: &inputs,
                min: 2,
                max: 20,
                previous: state.as_ref(),
                stabilization: Duration::from_secs(window),
                now: ts(at),
            });
            let what = format!(
                "t={at}s pods={pods} pending={pending} capacity={capacity}: {}",
                p.message
            );
            assert_eq!(
                (p.status.replicas, p.status.term.as_str()),
                (want, term),
                "{what}"
            );
            let changed = state.as_ref().map_or(2, |s| s.replicas) != p.status.replicas;
            assert_eq!(p.decision.is_some(), changed, "{what}");
            state = Some(p.status);
        }
    }

    #[test]
    fn rising_load_then_falling_load_with_stabilisation() {
        replay(
            &[PENDING],
            &[
                // Idle: minReplicas.
                (0, 2, 100.0, 0.1, 7, 2, "MinReplicas"),
                // 4500 in flight: ⌈4500 / 1000⌉ = 5 at once.
                (15, 2, 4500.0, 0.95, 7, 5, "PendingMessages"),
                // Within 10 % of the target at 5 pods: kept.
                (30, 5, 5300.0, 0.9, 7, 5, "Tolerance"),
                // More: 6.
                (45, 5, 6000.0, 0.95, 7, 6, "PendingMessages"),
                // Load falls: 6 kept through the 60 s window, then the largest recommendation
                // of the window (3), then minReplicas one window later.
                (60, 6, 2500.0, 0.3, 7, 6, "PendingMessages"),
                (90, 6, 1500.0, 0.1, 7, 6, "PendingMessages"),
                (120, 6, 100.0, 0.1, 7, 3, "MinReplicas"),
                (150, 3, 100.0, 0.1, 7, 3, "MinReplicas"),
                (180, 3, 100.0, 0.1, 7, 2, "MinReplicas"),
            ],
            60,
        );
    }

    #[test]
    fn a_blip_does_not_flap() {
        replay(
            &[PENDING],
            &[
                (0, 2, 4500.0, 0.9, 7, 5, "PendingMessages"),
                (15, 5, 100.0, 0.1, 7, 5, "MinReplicas"),
                // Up again before the window ended: the scale-down clock starts over.
                (30, 5, 5000.0, 0.9, 7, 5, "Tolerance"),
                (45, 5, 100.0, 0.1, 7, 5, "MinReplicas"),
                (90, 5, 100.0, 0.1, 7, 5, "MinReplicas"),
                (105, 5, 100.0, 0.1, 7, 2, "MinReplicas"),
            ],
            60,
        );
    }

    #[test]
    fn saturation_that_executors_cannot_absorb_is_held_and_said() {
        let inputs = load(3, 100.0, 0.99, 3);
        let previous = StormAutoscalingStatus {
            replicas: 3,
            recommendation: 3,
            term: "BoltCapacity".into(),
            ..StormAutoscalingStatus::default()
        };
        let p = plan(&PlanInput {
            targets: &[PENDING, CAPACITY],
            inputs: &inputs,
            min: 2,
            max: 20,
            previous: Some(&previous),
            stabilization: DEFAULT_STABILIZATION,
            now: ts(0),
        });
        // ⌈3 × 0.99 / 0.8⌉ = 4 wanted, but 12 executors fill 3 pods of 4 slots.
        assert_eq!(p.status.replicas, 3);
        assert_eq!(p.status.term, "ExecutorsExhausted");
        assert_eq!(p.decision, None, "held: nothing changes");
        assert!(p.message.contains("more pods cannot help"), "{}", p.message);
        assert!(p.message.contains("12 executor(s)"), "{}", p.message);
        // Rising capacity climbs only to what the executors fill.
        replay(
            &[CAPACITY],
            &[
                (0, 2, 0.0, 0.95, 5, 3, "BoltCapacity"),
                (15, 3, 0.0, 0.95, 5, 4, "BoltCapacity"),
                (30, 4, 0.0, 0.95, 5, 5, "BoltCapacity"),
                (45, 5, 0.0, 0.95, 5, 5, "ExecutorsExhausted"),
                (60, 5, 0.0, 0.99, 5, 5, "ExecutorsExhausted"),
            ],
            300,
        );
    }

    #[test]
    fn bounds_and_missing_figures() {
        replay(
            &[PENDING],
            &[
                (0, 2, 50_000.0, 0.9, 100, 20, "MaxReplicas"),
                (15, 20, 30_000.0, 0.9, 100, 20, "MaxReplicas"),
            ],
            300,
        );
        let mut inputs = load(4, 0.0, 0.0, 7);
        inputs.pending_messages = None;
        inputs.pending_messages_per_pod = None;
        let previous = StormAutoscalingStatus {
            replicas: 4,
            recommendation: 4,
            term: "PendingMessages".into(),
            ..StormAutoscalingStatus::default()
        };
        let p = plan(&PlanInput {
            targets: &[PENDING],
            inputs: &inputs,
            min: 2,
            max: 20,
            previous: Some(&previous),
            stabilization: DEFAULT_STABILIZATION,
            now: ts(0),
        });
        assert_eq!((p.status.replicas, p.status.term.as_str()), (4, "NoData"));
        assert_eq!(p.decision, None);
    }

    #[test]
    fn the_condition_names_the_count_and_its_inputs() {
        let status = StormAutoscalingStatus {
            replicas: 5,
            recommendation: 5,
            term: "PendingMessages".into(),
            inputs: Some(load(2, 4500.0, 0.95, 7)),
            ..StormAutoscalingStatus::default()
        };
        assert_eq!(
            describe(&status),
            "Storm-derived count 5 (PendingMessages, recommendation 5); 4500 tuples in flight, \
             2250/pod over 2 pod(s), complete latency 900 ms; busiest bolt count at capacity \
             0.950; 28 executor(s) occupy at most 7 pod(s) (Storm window 600 s)"
        );
    }
}
