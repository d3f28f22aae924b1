//! The two control loops: ours (the real scaling code) and a model of KEDA + the Kubernetes HPA.

use std::time::Duration;

use workerpool_scaling::{Decision, Knobs, Observation, Scaler};

use super::{HpaBehavior, Params};

/// Length of one time step in milliseconds.
pub const TICK_MS: u64 = 100;
/// Length of one time step in seconds.
pub const TICK: f64 = TICK_MS as f64 / 1000.0;
/// What a controller observes when it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Tasks waiting plus tasks in flight, as the operator measures queue length.
    pub queue_length: u64,
    /// Pods that exist and are not on their way out (ours: not draining; HPA: all pods, since
    /// removed pods vanish at once).
    pub pods: u32,
    /// Ready pods that are not draining (what the operator's pod cache shows).
    pub ready: u32,
    /// Ready pods that are draining (finishing their task).
    pub draining: u32,
    /// Ages in seconds of the pods not ready yet (not draining).
    pub starting: Vec<f64>,
    /// Median seconds from creation to readiness of the ready pods (`None`: no ready pod).
    pub startup_seconds: Option<f64>,
}

/// A control loop: told the starting replica count, then run once per time step.
pub trait Controller {
    /// The replica count requested at time 0.
    fn start(&mut self, replicas: i32);
    /// Runs the loop at `now_ms`; answers the requested replica count when it acted.
    fn tick(&mut self, now_ms: u64, view: &View) -> Option<i32>;
    /// Our decisions that changed the count (none for models of other systems).
    fn decisions(&self) -> &[(u64, Decision)] {
        &[]
    }
}

/// Milliseconds of `seconds`, at least one time step.
fn period_ms(seconds: f64) -> u64 {
    ((seconds * 1000.0).round() as u64).max(TICK_MS)
}

/// Offset of a periodic loop's first run: 0 without a seed, else a deterministic pseudo-random
/// multiple of the time step below `period` (splitmix64 of the seed and a per-loop salt).
fn phase_ms(seed: Option<u64>, salt: u64, period: u64) -> u64 {
    let Some(seed) = seed else { return 0 };
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let steps = (period / TICK_MS).max(1);
    (z % steps) * TICK_MS
}

/// Advances `next` past `now` by whole periods; true when the loop is due at `now`.
fn due(next: &mut u64, period: u64, now: u64) -> bool {
    if now < *next {
        return false;
    }
    while *next <= now {
        *next += period;
    }
    true
}

/// Ours: every poll interval, the observation a poll makes (queue length, ready and starting
/// pods, their start-up time) through [`Scaler::step`] from `workerpool_scaling`,
/// exactly as the live autoscaler does.
pub struct OursModel {
    knobs: Knobs,
    poll_ms: u64,
    next_ms: u64,
    scaler: Scaler,
    current: i32,
    /// Every decision, for the report.
    pub decisions: Vec<(u64, Decision)>,
}

impl OursModel {
    /// Our loop with the bounds, factor, policy, poll interval and window of `params`.
    pub fn new(params: &Params) -> Self {
        let poll_ms = period_ms(params.poll_interval);
        Self {
            knobs: params.knobs(),
            poll_ms,
            next_ms: phase_ms(params.seed, 1, poll_ms),
            scaler: Scaler::new(Duration::from_secs_f64(params.stabilization)),
            current: 0,
            decisions: Vec::new(),
        }
    }
}

impl Controller for OursModel {
    fn start(&mut self, replicas: i32) {
        self.current = replicas;
    }

    fn tick(&mut self, now_ms: u64, view: &View) -> Option<i32> {
        if !due(&mut self.next_ms, self.poll_ms, now_ms) {
            return None;
        }
        let observation = Observation {
            at: Duration::from_millis(now_ms),
            queue_length: view.queue_length,
            ready: view.ready,
            draining: view.draining,
            starting: view.starting.clone(),
            startup_seconds: view.startup_seconds,
        };
        let decision = self.scaler.step(&observation, &self.knobs, self.current);
        if decision.replicas != self.current {
            self.decisions.push((now_ms, decision));
        }
        self.current = decision.replicas;
        Some(decision.replicas)
    }

    fn decisions(&self) -> &[(u64, Decision)] {
        &self.decisions
    }
}

/// KEDA + HPA as KEDA sets them up by default for a queue trigger (see the module docs).
pub struct HpaModel {
    /// AverageValue target per pod, in tasks (milli-precision, as a Kubernetes quantity).
    target: f64,
    /// KEDA `minReplicaCount`.
    keda_min: i32,
    /// HPA `minReplicas`: KEDA sets `max(minReplicaCount, 1)`.
    hpa_min: i32,
    max: i32,
    tolerance: f64,
    behavior: HpaBehavior,
    sync_ms: u64,
    next_sync_ms: u64,
    keda_ms: u64,
    next_keda_ms: u64,
    cooldown_ms: u64,
    window_ms: u64,
    cached: bool,
    cached_metric: Option<u64>,
    /// The scale subresource's `spec.replicas`.
    spec: i32,
    last_active_ms: Option<u64>,
    /// Unstabilized recommendations `(time, replicas)` (`a.recommendations` in the controller).
    recommendations: Vec<(u64, i32)>,
    /// Scale events `(time, change)` for the behavior rate policies.
    up_events: Vec<(u64, i32)>,
    down_events: Vec<(u64, i32)>,
}

/// Default behavior: scale-up policies `Pods 4` and `Percent 100`, scale-down `Percent 100`,
/// all with `periodSeconds: 15`, `selectPolicy: Max`, scale-up stabilization 0.
const POLICY_PERIOD_MS: u64 = 15_000;

impl HpaModel {
    /// The KEDA + HPA model for `params`.
    pub fn new(params: &Params) -> Self {
        let h = &params.hpa;
        let sync_ms = period_ms(h.sync_period);
        let keda_ms = period_ms(h.keda_polling_interval);
        let keda_min = params.min_replicas.max(0);
        let max = params.max_replicas.max(keda_min).max(1);
        Self {
            target: ((1000.0 / params.scaling_factor).round() / 1000.0).max(0.001),
            keda_min,
            hpa_min: keda_min.max(1).min(max),
            max,
            tolerance: h.tolerance,
            behavior: h.behavior,
            sync_ms,
            next_sync_ms: phase_ms(params.seed, 2, sync_ms),
            keda_ms,
            next_keda_ms: phase_ms(params.seed, 3, keda_ms),
            cooldown_ms: (h.keda_cooldown_period * 1000.0).round() as u64,
            window_ms: (h.downscale_stabilization * 1000.0).round() as u64,
            cached: h.keda_cached_metrics,
            cached_metric: None,
            spec: 0,
            last_active_ms: None,
            recommendations: Vec::new(),
            up_events: Vec::new(),
            down_events: Vec::new(),
        }
    }

    /// The HPA's AverageValue target per pod.
    #[cfg(test)]
    pub fn target(&self) -> f64 {
        self.target
    }

    /// KEDA's scale loop (every `pollingInterval`): only activation. An active trigger (queue
    /// length above the activation value 0) at zero replicas scales to `max(minReplicaCount, 1)`;
    /// an inactive one with `minReplicaCount: 0` scales to zero once `cooldownPeriod` has passed
    /// since the last active poll. Between 1 and N the HPA decides.
    fn keda_poll(&mut self, now: u64, view: &View) -> bool {
        let metric = view.queue_length;
        if self.cached {
            self.cached_metric = Some(metric);
        }
        if metric > 0 {
            self.last_active_ms = Some(now);
            if self.spec == 0 {
                self.spec = self.keda_min.max(1).min(self.max);
                return true;
            }
        } else if self.spec > 0
            && self.keda_min == 0
            && self
                .last_active_ms
                .is_none_or(|t| now > t + self.cooldown_ms)
        {
            self.spec = 0;
            return true;
        }
        false
    }

    /// One HPA sync (`reconcileAutoscaler`) for a single External metric with an AverageValue
    /// target.
    fn hpa_sync(&mut self, now: u64, view: &View) -> bool {
        let current = self.spec;
        if current == 0 && self.hpa_min != 0 {
            // "ScalingDisabled": the target is at zero; KEDA brings it back.
            return false;
        }
        let desired = if current > self.max {
            self.max
        } else if current < self.hpa_min {
            self.hpa_min
        } else {
            let proposal = self.proposal(view);
            match self.behavior {
                HpaBehavior::Unset => self.normalize_legacy(now, current, proposal),
                HpaBehavior::Default => self.normalize_with_behavior(now, current, proposal),
            }
        };
        if desired == current {
            return false;
        }
        if self.behavior == HpaBehavior::Default {
            self.store_event(now, current, desired);
        }
        self.spec = desired;
        true
    }

    /// `GetExternalPerPodMetricReplicas`: `ratio = metric / (target × statusReplicas)`; outside
    /// the tolerance the proposal is `ceil(metric / target)`, inside it `statusReplicas`.
    fn proposal(&self, view: &View) -> i32 {
        let metric = if self.cached {
            self.cached_metric.unwrap_or(view.queue_length)
        } else {
            view.queue_length
        } as f64;
        let status = f64::from(view.pods);
        let ratio = metric / (self.target * status);
        // As in Go, 0/0 is NaN and NaN > tolerance is false.
        if (1.0 - ratio).abs() > self.tolerance {
            let raw = (metric / self.target).ceil();
            if raw >= f64::from(i32::MAX) {
                i32::MAX
            } else {
                raw as i32
            }
        } else {
            i32::try_from(view.pods).unwrap_or(i32::MAX)
        }
    }

    /// `normalizeDesiredReplicas` (HPA without `spec.behavior`, as KEDA creates it by default):
    /// the highest recommendation of the downscale stabilization window, then at most
    /// `max(2 × current, 4)` and at least `minReplicas`.
    fn normalize_legacy(&mut self, now: u64, current: i32, proposal: i32) -> i32 {
        let cutoff = now.saturating_sub(self.window_ms);
        self.recommendations.retain(|&(t, _)| t >= cutoff);
        let stabilized = self
            .recommendations
            .iter()
            .map(|&(_, r)| r)
            .fold(proposal, i32::max);
        self.recommendations.push((now, proposal));
        let scale_up_limit = current.saturating_mul(2).max(4);
        let maximum_allowed = self.max.min(scale_up_limit);
        if stabilized < self.hpa_min {
            self.hpa_min
        } else if stabilized > maximum_allowed {
            maximum_allowed
        } else {
            stabilized
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors` with the default behavior: stabilization (up: 0 s,
    /// down: the window) then the rate policies over the last 15 s of scale events.
    fn normalize_with_behavior(&mut self, now: u64, current: i32, proposal: i32) -> i32 {
        let down_cutoff = now.saturating_sub(self.window_ms);
        // Up window 0: no earlier recommendation is after the cutoff `now`.
        let up = proposal;
        let down = self
            .recommendations
            .iter()
            .filter(|&&(t, _)| t > down_cutoff)
            .map(|&(_, r)| r)
            .fold(proposal, i32::max);
        self.recommendations.retain(|&(t, _)| t > down_cutoff);
        self.recommendations.push((now, proposal));
        let mut recommendation = current;
        if recommendation < up {
            recommendation = up;
        }
        if recommendation > down {
            recommendation = down;
        }

        let period_cutoff = now.saturating_sub(POLICY_PERIOD_MS);
        let in_period = |events: &[(u64, i32)]| -> i32 {
            events
                .iter()
                .filter(|&&(t, _)| t > period_cutoff)
                .map(|&(_, c)| c)
                .sum()
        };
        let period_start = current - in_period(&self.up_events) + in_period(&self.down_events);
        if recommendation > current {
            let by_pods = period_start + 4;
            let by_percent = (f64::from(period_start) * 2.0).ceil() as i32;
            let limit = by_pods.max(by_percent).max(current);
            recommendation.min(self.max.min(limit))
        } else if recommendation < current {
            let by_percent = (f64::from(period_start) * 0.0) as i32;
            let limit = by_percent.min(current);
            recommendation.max(self.hpa_min.max(limit))
        } else {
            recommendation
        }
    }

    /// `storeScaleEvent`, keeping only events within the longest policy period.
    fn store_event(&mut self, now: u64, previous: i32, new: i32) {
        let cutoff = now.saturating_sub(POLICY_PERIOD_MS);
        self.up_events.retain(|&(t, _)| t > cutoff);
        self.down_events.retain(|&(t, _)| t > cutoff);
        if new > previous {
            self.up_events.push((now, new - previous));
        } else {
            self.down_events.push((now, previous - new));
        }
    }
}

impl Controller for HpaModel {
    fn start(&mut self, replicas: i32) {
        self.spec = replicas;
        if replicas > 0 {
            self.last_active_ms = Some(0);
        }
    }

    fn tick(&mut self, now_ms: u64, view: &View) -> Option<i32> {
        let mut changed = false;
        if due(&mut self.next_keda_ms, self.keda_ms, now_ms) {
            changed |= self.keda_poll(now_ms, view);
        }
        if due(&mut self.next_sync_ms, self.sync_ms, now_ms) {
            // The HPA reads the metric through KEDA's metrics server; without
            // useCachedMetrics that is a fresh query of the queue.
            changed |= self.hpa_sync(now_ms, view);
        }
        changed.then_some(self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HPA alone: `minReplicaCount: 1`, so KEDA never scales to zero.
    fn model(behavior: HpaBehavior) -> HpaModel {
        model_with_min(behavior, 1)
    }

    fn model_with_min(behavior: HpaBehavior, min_replicas: i32) -> HpaModel {
        let mut params = Params::default();
        params.hpa.behavior = behavior;
        params.min_replicas = min_replicas;
        params.max_replicas = 100;
        let mut m = HpaModel::new(&params);
        m.start(5);
        m
    }

    fn view(queue_length: u64, pods: u32) -> View {
        View {
            queue_length,
            pods,
            ..View::default()
        }
    }

    #[test]
    fn target_is_the_inverse_of_the_scaling_factor() {
        assert_eq!(model(HpaBehavior::Unset).target(), 10.0);
    }

    #[test]
    fn tolerance_keeps_the_current_count() {
        for behavior in [HpaBehavior::Unset, HpaBehavior::Default] {
            let mut m = model(behavior);
            // 54 tasks for 5 pods at 10 per pod: ratio 1.08, within 10 %.
            assert_eq!(m.tick(0, &view(54, 5)), None, "{behavior:?}");
            // 56: ratio 1.12, desired ceil(5.6) = 6.
            assert_eq!(m.tick(15_000, &view(56, 5)), Some(6), "{behavior:?}");
        }
    }

    #[test]
    fn scale_up_is_limited_to_double_or_four_per_sync() {
        for behavior in [HpaBehavior::Unset, HpaBehavior::Default] {
            let mut m = model(behavior);
            assert_eq!(m.tick(0, &view(1000, 5)), Some(10), "{behavior:?}");
            assert_eq!(m.tick(15_000, &view(1000, 10)), Some(20), "{behavior:?}");
            assert_eq!(m.tick(30_000, &view(1000, 20)), Some(40), "{behavior:?}");
            assert_eq!(m.tick(45_000, &view(1000, 40)), Some(80), "{behavior:?}");
            assert_eq!(m.tick(60_000, &view(1000, 80)), Some(100), "{behavior:?}");
            let mut small = model(behavior);
            small.start(1);
            // Legacy: max(2 × 1, 4) = 4 pods in total; behavior: 1 + 4 pods.
            let want = if behavior == HpaBehavior::Unset { 4 } else { 5 };
            assert_eq!(small.tick(0, &view(1000, 1)), Some(want), "{behavior:?}");
        }
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        for behavior in [HpaBehavior::Unset, HpaBehavior::Default] {
            let mut m = model(behavior);
            assert_eq!(m.tick(0, &view(200, 5)), Some(10), "{behavior:?}");
            assert_eq!(m.tick(15_000, &view(200, 10)), Some(20), "{behavior:?}");
            // The queue empties: recommendations fall to 1, the count holds for 300 s.
            let mut t = 30_000;
            while t <= 300_000 {
                assert_eq!(m.tick(t, &view(0, 20)), None, "{behavior:?} at {t}");
                t += 15_000;
            }
            // The last 20 was recommended at 15 s; the window is inclusive in the legacy path
            // (`Before(cutoff)` drops) and exclusive with behavior (`After(cutoff)` keeps).
            let released = [315_000, 330_000]
                .into_iter()
                .find_map(|t| m.tick(t, &view(0, 20)).map(|r| (t, r)));
            let at = if behavior == HpaBehavior::Unset {
                330_000
            } else {
                315_000
            };
            assert_eq!(released, Some((at, 1)), "{behavior:?}");
        }
    }

    #[test]
    fn keda_activates_from_zero_and_deactivates_after_the_cooldown() {
        let mut m = model_with_min(HpaBehavior::Unset, 0);
        m.start(0);
        // At zero the HPA is disabled; KEDA's poll at 0 s finds an empty queue.
        assert_eq!(m.tick(0, &view(0, 0)), None);
        assert_eq!(
            m.tick(15_000, &view(50, 0)),
            None,
            "the HPA does not scale from zero"
        );
        // KEDA's poll activates (0 -> 1); the HPA sync of the same instant sees 50 tasks for no
        // pod yet and scales at most to max(2 × 1, 4).
        assert_eq!(m.tick(30_000, &view(50, 0)), Some(4));
        assert_eq!(m.tick(45_000, &view(50, 4)), Some(5), "ceil(50 / 10)");
        // Idle from 60 s: the HPA holds 5 through its window; KEDA scales to zero at its first
        // poll more than cooldownPeriod after the last active one (30 s).
        let mut last = None;
        let mut t = 60_000;
        while t <= 400_000 {
            if let Some(r) = m.tick(t, &view(0, 5)) {
                last = Some((t, r));
            }
            t += TICK_MS * 10;
        }
        assert_eq!(
            last,
            Some((360_000, 0)),
            "zero at the first poll after 30 s + 300 s"
        );
    }

    #[test]
    fn phases_are_deterministic_and_within_the_period() {
        assert_eq!(phase_ms(None, 1, 15_000), 0);
        let a = phase_ms(Some(7), 2, 15_000);
        assert_eq!(a, phase_ms(Some(7), 2, 15_000));
        assert!(a < 15_000 && a.is_multiple_of(TICK_MS));
    }
}
