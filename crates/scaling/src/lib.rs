//! The scaling rule, shared by the live autoscaler and `workerpool-operator simulate`.
//!
//! Two rules, chosen by `scaleConfig.scalingPolicy`:
//!
//! - `QueueLength` (the specification's rule, and a QWorker's default): `desired =
//!   clamp(ceil(queueLength × scalingFactor), minReplicas, maxReplicas)`.
//! - `Rate` (`simulate`'s default): the specification's rule read as "clear the queue within
//!   `targetDrainSeconds`", which makes `1 / (scalingFactor × targetDrainSeconds)` the tasks per
//!   second one worker is assumed to complete until experiments measure it. Each poll estimates
//!   the arrival rate λ from the change of the queue length and the work the busy workers did
//!   (`λ = dQ/dt + μ × busy`), projects the backlog to the moment a pod created now would be
//!   ready (counting the pods already starting as capacity on the way), and asks for
//!   `λ / μ` workers (Little's law) plus the workers that drain that projected backlog: at the
//!   specification's pace while they stay within `maxSurgePercent` of `λ / μ`, never slower than
//!   within ten times `targetDrainSeconds`. A lower count is applied only when the current one
//!   exceeds the need by more than 5 % (and one worker).
//!
//! Scaling that does not help is noticed: when pods became ready while tasks were waiting, the
//! completion rate should rise by `μ` per new worker (the slope of the queue length falls by as
//! much). If it rose by less than a quarter of that, more workers would not help (a database or
//! a downstream service is the bottleneck): the count is held (`Ineffective`), one probe of 10 %
//! more workers is made every minute, and normal scaling resumes when a probe helps or the
//! backlog is gone.
//!
//! The pure decision is [`decide`] ([`PolicyInput`] → [`Decision`] with the deciding
//! [`Term`]); [`Estimator`] keeps the rate estimates between polls (in memory: after a restart
//! the first decisions fall back to the specification's rule); [`Scaler`] chains both and the
//! scale-down [`Stabilizer`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Workers for `queue_length` tasks: `clamp(ceil(queue_length × factor), min, max)`.
pub fn recommend(queue_length: u64, factor: f64, min: i32, max: i32) -> i32 {
    let max = max.max(0);
    let min = min.clamp(0, max);
    let raw = (queue_length as f64 * factor).ceil();
    if !raw.is_finite() || raw >= f64::from(max) {
        return max;
    }
    (raw.max(0.0) as i32).clamp(min, max)
}

/// The queue length at which a QWorker's next poll should come early, before its interval ends:
/// the smallest length for which the specification's rule ([`recommend`]) answers more workers
/// than `current`, and more than the last poll saw (`last_length`), so that a queue that stays
/// long does not wake the poll again and again. `None` when an early poll would not be acted on:
/// at `max`, or under the rate policy while workers run (its estimates want evenly spaced
/// polls; the workers are already draining the queue). A queue with no worker at all is always
/// watched: a task that waits for the first worker is the wait users feel.
pub fn wake_threshold(knobs: &Knobs, current: i32, last_length: Option<u64>) -> Option<u64> {
    let max = knobs.max.max(0);
    let factor = knobs.scaling_factor;
    if current >= max || !(factor > 0.0 && factor.is_finite()) {
        return None;
    }
    if knobs.mode == Mode::Rate && current > 0 {
        return None;
    }
    let current = current.max(0);
    // ceil(L × factor) > current ⟺ L > current / factor; then one step either way for
    // floating-point noise, as `recommend` computes it.
    let estimate = (f64::from(current) / factor).floor();
    if estimate >= 1e15 {
        return None;
    }
    let rises = |length: u64| recommend(length, factor, 0, i32::MAX) > current;
    let mut length = estimate as u64 + 1;
    if length > 1 && rises(length - 1) {
        length -= 1;
    } else if !rises(length) {
        length += 1;
    }
    Some(length.max(last_length.map_or(0, |l| l.saturating_add(1))))
}

/// Scale-down stabilization: remembers recommendations for `window` and answers their maximum.
#[derive(Clone, Debug, Default)]
pub struct Stabilizer {
    window: Duration,
    history: VecDeque<(Duration, i32)>,
}

impl Stabilizer {
    /// A stabilizer over `window` (zero: every recommendation is applied at once).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            history: VecDeque::new(),
        }
    }

    /// Changes the window, keeping the history.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Records `recommendation` at time `now` (any monotonic origin) and returns the count to
    /// apply: the largest recommendation of the last `window`.
    pub fn next(&mut self, now: Duration, recommendation: i32) -> i32 {
        while let Some(&(t, _)) = self.history.front() {
            if now.saturating_sub(t) > self.window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(_, r)) = self.history.back() {
            if r <= recommendation {
                self.history.pop_back();
            } else {
                break;
            }
        }
        self.history.push_back((now, recommendation));
        self.history
            .front()
            .map_or(recommendation, |&(_, r)| r.max(recommendation))
    }
}

/// Which rule decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Rates, start-up times and the backlog (see the module docs); `simulate`'s default.
    #[default]
    Rate,
    /// The specification's rule alone.
    QueueLength,
}

/// Default `targetDrainSeconds`.
pub const DEFAULT_TARGET_DRAIN_SECONDS: f64 = 10.0;
/// Default `maxSurgePercent`.
pub const DEFAULT_MAX_SURGE_PERCENT: f64 = 10.0;
/// The backlog is drained within this multiple of `targetDrainSeconds` at the latest, whatever
/// `maxSurgePercent` allows.
pub const MAX_DRAIN_MULTIPLE: f64 = 10.0;
/// A lower count is applied only when the current one exceeds the need by this fraction (and by
/// one worker).
pub const SCALE_DOWN_TOLERANCE: f64 = 0.05;
/// Time constant of the rate estimates, seconds.
pub const RATE_TIME_CONSTANT: f64 = 2.0;
/// Seconds after new workers became ready at which their effect is judged.
pub const EXPERIMENT_SECONDS: f64 = 15.0;
/// Below this fraction of the expected rise of the completion rate, scaling is ineffective.
pub const INEFFECTIVE_FRACTION: f64 = 0.25;
/// Seconds between probes while scaling is ineffective.
pub const PROBE_SECONDS: f64 = 60.0;

/// The policy's settings (from the QWorker's `scaleConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knobs {
    /// `scalingFactor`: workers per queued task.
    pub scaling_factor: f64,
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// `scalingPolicy`.
    pub mode: Mode,
    /// `targetDrainSeconds`: the specification's rule clears the queue in this time.
    pub target_drain_seconds: f64,
    /// `maxSurgePercent` / 100: workers beyond the arrivals' need, for the backlog.
    pub max_surge: f64,
}

impl Knobs {
    /// The specification's bounds and factor with the default rate policy.
    pub fn new(scaling_factor: f64, min: i32, max: i32) -> Self {
        Self {
            scaling_factor,
            min,
            max,
            mode: Mode::Rate,
            target_drain_seconds: DEFAULT_TARGET_DRAIN_SECONDS,
            max_surge: DEFAULT_MAX_SURGE_PERCENT / 100.0,
        }
    }

    /// Tasks per second one worker is assumed to complete before it is measured:
    /// `1 / (scalingFactor × targetDrainSeconds)`.
    pub fn assumed_throughput(&self) -> f64 {
        let t = (self.scaling_factor * self.target_drain_seconds.max(1e-3)).max(1e-9);
        1.0 / t
    }
}

/// What a poll observes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// When (any monotonic origin).
    pub at: Duration,
    /// Waiting plus in-flight tasks.
    pub queue_length: u64,
    /// Ready workers that are not draining.
    pub ready: u32,
    /// Ready workers asked to drain (they still finish the task they hold).
    pub draining: u32,
    /// Ages in seconds of the live workers that are not ready yet (not draining).
    pub starting: Vec<f64>,
    /// Typical seconds from a worker's creation to its readiness (`None`: none seen yet).
    pub startup_seconds: Option<f64>,
}

/// Rates estimated across polls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Arrivals, tasks per second.
    pub arrival: f64,
    /// Completions, tasks per second.
    pub completion: f64,
    /// Tasks per second one busy worker completes.
    pub throughput: f64,
}

/// Whether more workers help.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Effect {
    /// Scale normally.
    Effective,
    /// More workers did not raise the completion rate: at most this many (the workers that
    /// helped).
    Hold(i32),
    /// Ineffective: at most `.0` workers, but try `.1` more once.
    Probe(i32, i32),
}

/// The evidence that scaling is ineffective: `ready` workers went from `from` to `to` while
/// tasks were waiting, and the completion rate changed by `observed` tasks/s instead of
/// `expected`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    /// Ready workers before.
    pub from: u32,
    /// Ready workers after.
    pub to: u32,
    /// Observed change of the completion rate, tasks/s.
    pub observed: f64,
    /// Expected change, tasks/s.
    pub expected: f64,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ready workers {} -> {} raised the completion rate by {:.2}/s, expected {:.2}/s",
            self.from, self.to, self.observed, self.expected
        )
    }
}

/// Everything [`decide`] needs: observed numbers only, no I/O.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// Waiting plus in-flight tasks.
    pub queue_length: u64,
    /// Ready workers that are not draining.
    pub ready: u32,
    /// Ready workers asked to drain.
    pub draining: u32,
    /// Ages (s) of the workers still starting.
    pub starting: Vec<f64>,
    /// Typical start-up time, seconds.
    pub startup_seconds: f64,
    /// The rate estimates (`None`: not enough polls yet, the specification's rule decides).
    pub rates: Option<Rates>,
    /// The desired count in force.
    pub current: i32,
    /// Whether more workers help.
    pub effect: Effect,
    /// The settings.
    pub knobs: Knobs,
}

/// The term that decided a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Term {
    /// `ceil(queueLength × scalingFactor)` (the specification's rule, or no rates yet).
    QueueLength,
    /// `λ / μ`: the arrivals' need.
    Arrivals,
    /// The arrivals' need plus the workers that drain the projected backlog.
    Backlog,
    /// Within the scale-down tolerance: the count is kept.
    Tolerance,
    /// Workers are still starting: the count is kept until they are ready.
    Starting,
    /// A lower count waits for the stabilization window.
    Stabilization,
    /// More workers did not help: the count is held.
    Ineffective,
    /// A probe while ineffective.
    Probe,
    /// `minReplicas`.
    Min,
    /// `maxReplicas`.
    Max,
}

impl Term {
    /// CamelCase name (status, Events, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueLength => "QueueLength",
            Self::Arrivals => "Arrivals",
            Self::Backlog => "Backlog",
            Self::Tolerance => "Tolerance",
            Self::Starting => "Starting",
            Self::Stabilization => "Stabilization",
            Self::Ineffective => "Ineffective",
            Self::Probe => "Probe",
            Self::Min => "MinReplicas",
            Self::Max => "MaxReplicas",
        }
    }

    /// Every term, for metric series.
    pub const ALL: [Term; 10] = [
        Self::QueueLength,
        Self::Arrivals,
        Self::Backlog,
        Self::Tolerance,
        Self::Starting,
        Self::Stabilization,
        Self::Ineffective,
        Self::Probe,
        Self::Min,
        Self::Max,
    ];
}

/// A decision and the numbers behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The count to request.
    pub replicas: i32,
    /// What decided it.
    pub term: Term,
    /// `λ / μ` (0 without rates).
    pub arrival_need: f64,
    /// Workers beyond the arrivals' need (for the projected backlog, or kept while it drains).
    pub backlog_workers: f64,
    /// Tasks expected to wait when a pod created now is ready.
    pub projected_backlog: f64,
    /// The rates used.
    pub rates: Option<Rates>,
    /// Evidence while scaling is ineffective.
    pub evidence: Option<Evidence>,
}

/// The pure decision.
pub fn decide(input: &PolicyInput) -> Decision {
    let k = &input.knobs;
    let max = k.max.max(0);
    let min = k.min.clamp(0, max);
    let rates = match (k.mode, input.rates) {
        (Mode::Rate, Some(r)) if r.throughput > 0.0 && r.arrival.is_finite() => r,
        _ => return queue_length_decision(input, min, max),
    };
    let need = rates.arrival.max(0.0) / rates.throughput;
    let projected = projected_backlog(input, &rates);
    let mut target = need + backlog_surge(k, rates.throughput, need, projected);
    let mut keep = Keep::No;
    if input.effect == Effect::Effective && target < f64::from(input.current) {
        (target, keep) = scale_down_target(input, need, projected);
    }
    let wanted = whole_workers(target, max);
    let term = if wanted > (need - 1e-6).ceil() as i32 {
        Term::Backlog
    } else {
        Term::Arrivals
    };
    let (replicas, term) = match input.effect {
        Effect::Hold(hold) => hold_ineffective(wanted, hold, term),
        Effect::Probe(hold, step) => probe(wanted, hold, step, term),
        Effect::Effective => keep_or_tolerate(input.current, wanted, target, keep, term),
    };
    let (replicas, term) = within_bounds(replicas, term, target, min, max);
    Decision {
        replicas,
        term,
        arrival_need: need,
        backlog_workers: (target - need).max(0.0),
        projected_backlog: projected,
        rates: Some(rates),
        evidence: None,
    }
}

/// The specification's rule (no rates, or the `QueueLength` policy); a bound that cut it is
/// the term.
fn queue_length_decision(input: &PolicyInput, min: i32, max: i32) -> Decision {
    let replicas = recommend(input.queue_length, input.knobs.scaling_factor, min, max);
    Decision {
        replicas,
        term: if replicas == max && spec_raw(input) > f64::from(max) {
            Term::Max
        } else if replicas == min && spec_raw(input) < f64::from(min) {
            Term::Min
        } else {
            Term::QueueLength
        },
        arrival_need: 0.0,
        backlog_workers: 0.0,
        projected_backlog: input.queue_length as f64,
        rates: None,
        evidence: None,
    }
}

/// Tasks expected to wait when a pod created now is ready: those waiting now and the arrivals
/// until then, less what the ready and the starting workers complete meanwhile.
fn projected_backlog(input: &PolicyInput, rates: &Rates) -> f64 {
    let mu = rates.throughput;
    let ready = f64::from(input.ready);
    let waiting = (input.queue_length as f64 - ready - f64::from(input.draining)).max(0.0);
    let h = input.startup_seconds.max(0.0);
    // Worker-seconds of service before a pod created now is ready: the ready workers for the
    // whole horizon, each starting pod from its expected readiness on.
    let on_the_way: f64 = input.starting.iter().map(|&age| age.max(0.0).min(h)).sum();
    let capacity = mu * (ready * h + on_the_way);
    (waiting + rates.arrival.max(0.0) * h - capacity).max(0.0)
}

/// Workers beyond the arrivals' `need` that drain `projected` tasks: at the specification's
/// pace within `maxSurgePercent` of the need, never slower than within [`MAX_DRAIN_MULTIPLE`]
/// times `targetDrainSeconds`.
fn backlog_surge(k: &Knobs, mu: f64, need: f64, projected: f64) -> f64 {
    let drain = k.target_drain_seconds.max(1e-3);
    let fast = projected / (mu * drain);
    let slowest = projected / (mu * drain * MAX_DRAIN_MULTIPLE);
    fast.min((k.max_surge.max(0.0) * need).max(slowest))
}

/// What keeps the count in force when the target is lower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Nothing: the target is followed.
    No,
    /// Tasks will still wait when a new worker could be ready.
    Backlog,
    /// Workers asked for are still starting.
    Starting,
}

/// The target when it is below the count in force (scaling effective): the count is kept for
/// starting workers or a projected backlog, else lowered to what the throughput still needs.
fn scale_down_target(input: &PolicyInput, need: f64, projected: f64) -> (f64, Keep) {
    let h = input.startup_seconds.max(0.0);
    // A pod that has been starting for twice the usual start-up (at least a minute) may never
    // be ready (unschedulable, crash-looping): it does not hold the count.
    let patience = (2.0 * h).max(h + 30.0).max(60.0);
    if input.starting.iter().any(|&age| age < patience) && projected <= 0.0 {
        // Workers still starting were asked for; a lower count would cancel them only to
        // start others a poll later. Judge them by their throughput once they are ready.
        (f64::from(input.current), Keep::Starting)
    } else if projected > 0.0 {
        // Tasks will still wait when a new worker could be ready: the workers that run (or
        // start) drain them at no extra start-up; none goes.
        (f64::from(input.current), Keep::Backlog)
    } else {
        // Only what the observed throughput no longer needs goes: never below the workers
        // busy now.
        let busy =
            (input.queue_length as f64).min(f64::from(input.ready) + f64::from(input.draining));
        (need.max(busy).min(f64::from(input.current)), Keep::No)
    }
}

/// Whole workers for `target`, at most `max`.
fn whole_workers(target: f64, max: i32) -> i32 {
    // Float noise must not add a worker: 50.000001 workers are 50.
    let wanted = (target - 1e-6).ceil().max(0.0);
    if wanted >= f64::from(max) {
        max
    } else {
        wanted as i32
    }
}

/// More workers did not help: at most `hold`.
fn hold_ineffective(wanted: i32, hold: i32, term: Term) -> (i32, Term) {
    if wanted <= hold {
        (wanted, term)
    } else {
        (hold, Term::Ineffective)
    }
}

/// A probe while ineffective: at most `step` (at least one) workers beyond `hold`.
fn probe(wanted: i32, hold: i32, step: i32, term: Term) -> (i32, Term) {
    let probe = hold.saturating_add(step.max(1));
    if wanted <= hold {
        (wanted, term)
    } else {
        (wanted.min(probe), Term::Probe)
    }
}

/// Scaling effective: the count in force is kept for a backlog, for starting workers, or while
/// a lower count is within the scale-down tolerance; else `wanted`.
fn keep_or_tolerate(current: i32, wanted: i32, target: f64, keep: Keep, term: Term) -> (i32, Term) {
    let tolerance = (SCALE_DOWN_TOLERANCE * f64::from(current)).max(1.0);
    match keep {
        Keep::Backlog => (current, Term::Backlog),
        Keep::Starting => (current, Term::Starting),
        Keep::No if wanted < current && f64::from(current) - target <= tolerance => {
            (current, Term::Tolerance)
        }
        Keep::No => (wanted, term),
    }
}

/// `replicas` within `min..=max`; a bound that cut the count or the target is the term.
fn within_bounds(replicas: i32, term: Term, target: f64, min: i32, max: i32) -> (i32, Term) {
    let (mut replicas, mut term) = (replicas, term);
    if replicas >= max {
        if replicas > max || target > f64::from(max) {
            term = Term::Max;
        }
        replicas = max;
    }
    if replicas <= min {
        if replicas < min || target < f64::from(min) {
            term = Term::Min;
        }
        replicas = min;
    }
    (replicas, term)
}

fn spec_raw(input: &PolicyInput) -> f64 {
    (input.queue_length as f64 * input.knobs.scaling_factor).ceil()
}

/// A test of whether workers that became ready raised the completion rate.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Experiment {
    started: Duration,
    ready_before: u32,
    slope_before: f64,
}

/// Ineffective scaling: the next probe, the evidence, and the count held.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ineffective {
    next_probe: Duration,
    evidence: Evidence,
    hold: i32,
    /// When the last probe was allowed: only workers ready after it are judged.
    probed_at: Option<Duration>,
}

/// Rate estimates and the effectiveness test, kept across polls.
#[derive(Clone, Debug, Default)]
pub struct Estimator {
    last: Option<(Duration, u64, u32)>,
    samples: u32,
    arrival: f64,
    slope: f64,
    experiment: Option<Experiment>,
    ineffective: Option<Ineffective>,
    draining: u32,
}

impl Estimator {
    /// Polls needed before the rates are used.
    pub const WARM_UP: u32 = 2;

    /// Takes one observation; answers the rates (once warmed up), whether more workers help,
    /// and the evidence when they do not.
    pub fn observe(
        &mut self,
        obs: &Observation,
        knobs: &Knobs,
    ) -> (Option<Rates>, Effect, Option<Evidence>) {
        let mu = knobs.assumed_throughput();
        let mut slope_before = self.slope;
        if let Some((t0, q0, r0)) = self.last
            && obs.at > t0
        {
            let dt = (obs.at - t0).as_secs_f64();
            let slope = (obs.queue_length as f64 - q0 as f64) / dt;
            let busy = q0.min(u64::from(r0) + u64::from(self.draining)) as f64;
            let arrival = (slope + mu * busy).max(0.0);
            if self.samples == 0 {
                self.arrival = arrival;
                self.slope = slope;
                slope_before = slope;
            } else {
                let a = 1.0 - (-dt / RATE_TIME_CONSTANT).exp();
                self.arrival += a * (arrival - self.arrival);
                self.slope += a * (slope - self.slope);
            }
            self.samples = self.samples.saturating_add(1);
            let waiting = obs.queue_length > u64::from(obs.ready) + u64::from(obs.draining);
            let was_waiting = q0 > u64::from(r0) + u64::from(self.draining);
            if obs.ready > r0 && was_waiting && self.experiment.is_none() {
                // The queue's slope before the new workers: the smoothed one, or the last
                // interval's if the load just rose (the higher: a load that rises during the
                // test must not look like workers that do not help).
                self.experiment = Some(Experiment {
                    started: obs.at,
                    ready_before: r0,
                    slope_before: slope_before.max(slope),
                });
            }
            if let Some(e) = self.experiment
                && (obs.at - e.started).as_secs_f64() >= EXPERIMENT_SECONDS
            {
                self.experiment = None;
                self.judge(e, obs, waiting, mu);
            }
            if !waiting {
                // Nothing waits: more workers have nothing to help with.
                self.ineffective = None;
            }
        }
        self.last = Some((obs.at, obs.queue_length, obs.ready));
        self.draining = obs.draining;
        let rates = (self.samples >= Self::WARM_UP).then(|| Rates {
            arrival: self.arrival,
            completion: (self.arrival - self.slope).max(0.0),
            throughput: mu,
        });
        let Some(ineffective) = self.ineffective.as_mut() else {
            return (rates, Effect::Effective, None);
        };
        let evidence = Some(ineffective.evidence);
        let hold = ineffective.hold;
        if obs.at >= ineffective.next_probe && self.experiment.is_none() {
            ineffective.next_probe = obs.at + Duration::from_secs_f64(PROBE_SECONDS);
            ineffective.probed_at = Some(obs.at);
            let step = ((f64::from(hold.max(0)) * 0.1).ceil() as i32).max(2);
            return (rates, Effect::Probe(hold, step), evidence);
        }
        (rates, Effect::Hold(hold), evidence)
    }

    fn judge(&mut self, e: Experiment, obs: &Observation, waiting: bool, mu: f64) {
        let added = obs.ready.saturating_sub(e.ready_before);
        if added == 0 {
            return;
        }
        if !waiting {
            self.ineffective = None;
            return;
        }
        if let Some(i) = self.ineffective
            && i.probed_at.is_none_or(|p| e.started < p)
        {
            // Held: only a probe's workers are judged (others were asked for before the hold).
            return;
        }
        let observed = e.slope_before - self.slope;
        let expected = mu * f64::from(added);
        let big_enough = f64::from(added) >= (f64::from(e.ready_before) * 0.1).ceil().max(2.0);
        if !big_enough {
            return;
        }
        if observed < INEFFECTIVE_FRACTION * expected {
            let next_probe = obs.at + Duration::from_secs_f64(PROBE_SECONDS);
            // Keep the workers that helped: those before, plus as many as the completion rate
            // rose by (a failed probe keeps the count held before it).
            let helped = i64::from(e.ready_before) + (observed.max(0.0) / mu).ceil() as i64;
            let helped = i32::try_from(helped).unwrap_or(i32::MAX).max(1);
            let hold = self.ineffective.map_or(helped, |i| i.hold);
            self.ineffective = Some(Ineffective {
                hold,
                probed_at: None,
                next_probe,
                evidence: Evidence {
                    from: e.ready_before,
                    to: obs.ready,
                    observed,
                    expected,
                },
            });
        } else {
            self.ineffective = None;
        }
    }

    /// Whether scaling is currently held as ineffective.
    pub fn is_ineffective(&self) -> bool {
        self.ineffective.is_some()
    }
}

/// The whole policy across polls: estimator, decision, scale-down stabilization.
#[derive(Clone, Debug, Default)]
pub struct Scaler {
    estimator: Estimator,
    stabilizer: Stabilizer,
}

impl Scaler {
    /// A scaler whose lower counts wait for `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            estimator: Estimator::default(),
            stabilizer: Stabilizer::new(window),
        }
    }

    /// Changes the scale-down window.
    pub fn set_window(&mut self, window: Duration) {
        self.stabilizer.set_window(window);
    }

    /// One poll: estimates, decides, stabilizes. `current` is the desired count in force.
    pub fn step(&mut self, obs: &Observation, knobs: &Knobs, current: i32) -> Decision {
        let (rates, effect, evidence) = self.estimator.observe(obs, knobs);
        let input = PolicyInput {
            queue_length: obs.queue_length,
            ready: obs.ready,
            draining: obs.draining,
            starting: obs.starting.clone(),
            startup_seconds: obs.startup_seconds.unwrap_or(0.0),
            rates,
            current,
            effect,
            knobs: *knobs,
        };
        let mut decision = decide(&input);
        if knobs.mode == Mode::Rate {
            decision.evidence = evidence;
        }
        // The window holds what the arrivals needed (a rate estimate can dip for a poll); the
        // workers added for a backlog go as soon as the backlog is gone (it is measured).
        let held = if decision.rates.is_some() && decision.term != Term::QueueLength {
            decision
                .replicas
                .min((decision.arrival_need - 1e-6).ceil().max(0.0) as i32)
        } else {
            decision.replicas
        };
        let stabilized = self.stabilizer.next(obs.at, held);
        if stabilized > decision.replicas {
            decision.term = Term::Stabilization;
            decision.replicas = stabilized;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_poll_comes_when_the_rule_would_add_a_worker() {
        let knobs = |factor: f64, mode: Mode| Knobs {
            mode,
            ..Knobs::new(factor, 0, 5)
        };
        let ql = knobs(0.1, Mode::QueueLength);
        // 3 workers answer for up to 30 tasks at 0.1 worker per task.
        assert_eq!(wake_threshold(&ql, 3, None), Some(31));
        assert_eq!(recommend(30, 0.1, 0, 5), 3);
        assert_eq!(recommend(31, 0.1, 0, 5), 4);
        // No worker: the first task wakes the poll.
        assert_eq!(wake_threshold(&ql, 0, None), Some(1));
        assert_eq!(
            wake_threshold(&knobs(1000.0, Mode::Rate), 0, Some(0)),
            Some(1)
        );
        // A long queue the last poll saw wakes nothing until it grows.
        assert_eq!(wake_threshold(&ql, 3, Some(40)), Some(41));
        // At the maximum, and under the rate policy with workers, polls keep their interval.
        assert_eq!(wake_threshold(&ql, 5, None), None);
        assert_eq!(wake_threshold(&knobs(0.1, Mode::Rate), 2, None), None);
        assert_eq!(
            wake_threshold(&knobs(0.0, Mode::QueueLength), 0, None),
            None
        );
        // Whatever the factor, the threshold is the first length that raises the count.
        for factor in [0.001, 0.07, 0.1, 0.3, 1.0, 2.5, 1000.0] {
            for current in 0..5 {
                let t = wake_threshold(&knobs(factor, Mode::QueueLength), current, None)
                    .expect("below max");
                assert!(recommend(t, factor, 0, 5) > current, "{factor} {current}");
                assert!(
                    t == 0 || recommend(t - 1, factor, 0, 5) <= current,
                    "{factor} {current}"
                );
            }
        }
    }

    #[test]
    fn formula_matches_the_seed() {
        let cases = [
            // (queue length, factor, min, max, want)
            (0, 2.0, 1, 10, 1),
            (1, 2.0, 1, 10, 2),
            (3, 2.0, 1, 10, 6),
            (100, 2.0, 1, 10, 10),
            (7, 0.5, 0, 10, 4),
            (7, 0.1, 0, 10, 1),
            (0, 0.1, 0, 10, 0),
            (10, 0.25, 3, 10, 3),
            (u64::MAX, 1.0, 0, 5, 5),
            (5, 1.0, 4, 2, 2),
        ];
        for (len, factor, min, max, want) in cases {
            assert_eq!(
                recommend(len, factor, min, max),
                want,
                "len={len} factor={factor} min={min} max={max}"
            );
        }
    }

    #[test]
    fn scale_up_is_immediate_scale_down_waits_for_the_window() {
        let mut s = Stabilizer::new(Duration::from_secs(10));
        let t = Duration::from_secs;
        assert_eq!(s.next(t(0), 2), 2);
        assert_eq!(s.next(t(1), 8), 8, "up at once");
        assert_eq!(s.next(t(2), 3), 8, "down waits");
        assert_eq!(s.next(t(11), 3), 8, "8 is still within the window");
        assert_eq!(s.next(t(12), 3), 3, "8 has left the window");
        assert_eq!(s.next(t(13), 1), 3);
        assert_eq!(s.next(t(23), 1), 1);
    }

    fn knobs() -> Knobs {
        // 0.1 workers per task over a 10 s drain target: 1 task/s per worker assumed.
        Knobs::new(0.1, 0, 100)
    }

    fn rates(arrival: f64) -> Option<Rates> {
        Some(Rates {
            arrival,
            completion: arrival,
            throughput: 1.0,
        })
    }

    #[derive(Default)]
    struct Case {
        name: &'static str,
        queue: u64,
        ready: u32,
        starting: Vec<f64>,
        startup: f64,
        arrival: Option<f64>,
        current: i32,
        hold: Option<i32>,
        probe: Option<(i32, i32)>,
        mode: Option<Mode>,
        min: Option<i32>,
        max: Option<i32>,
        want: i32,
        term: Option<Term>,
    }

    #[test]
    fn decisions_by_table() {
        let cases = [
            Case {
                name: "no rates yet: the specification's rule",
                queue: 37,
                arrival: None,
                current: 2,
                want: 4,
                term: Some(Term::QueueLength),
                ..Case::default()
            },
            Case {
                name: "QueueLength mode ignores the rates",
                queue: 37,
                arrival: Some(50.0),
                mode: Some(Mode::QueueLength),
                current: 2,
                want: 4,
                term: Some(Term::QueueLength),
                ..Case::default()
            },
            Case {
                name: "steady: Little's law, nothing waits",
                queue: 20,
                ready: 20,
                startup: 10.0,
                arrival: Some(20.0),
                current: 20,
                want: 20,
                term: Some(Term::Arrivals),
                ..Case::default()
            },
            Case {
                name: "a step: arrivals plus at most 10 % for the projected backlog",
                queue: 50,
                ready: 5,
                startup: 10.0,
                arrival: Some(50.0),
                current: 5,
                want: 55,
                term: Some(Term::Backlog),
                ..Case::default()
            },
            Case {
                name: "starting pods count as capacity on the way",
                queue: 100,
                ready: 5,
                starting: vec![9.0; 45],
                startup: 10.0,
                arrival: Some(50.0),
                current: 50,
                want: 55,
                term: Some(Term::Backlog),
                ..Case::default()
            },
            Case {
                name: "a large backlog without arrivals drains within 100 s at the latest",
                queue: 1000,
                arrival: Some(0.0),
                current: 0,
                want: 10,
                term: Some(Term::Backlog),
                ..Case::default()
            },
            Case {
                name: "within the tolerance the count is kept",
                queue: 49,
                ready: 51,
                startup: 10.0,
                arrival: Some(49.0),
                current: 51,
                want: 51,
                term: Some(Term::Tolerance),
                ..Case::default()
            },
            Case {
                name: "less load: down to what the throughput needs",
                queue: 5,
                ready: 50,
                startup: 10.0,
                arrival: Some(5.0),
                current: 50,
                want: 5,
                term: Some(Term::Arrivals),
                ..Case::default()
            },
            Case {
                name: "never below the workers busy now",
                queue: 30,
                ready: 50,
                startup: 10.0,
                arrival: Some(5.0),
                current: 50,
                want: 30,
                ..Case::default()
            },
            Case {
                name: "a backlog that will still wait keeps every worker",
                queue: 500,
                ready: 60,
                startup: 10.0,
                arrival: Some(10.0),
                current: 60,
                want: 60,
                term: Some(Term::Backlog),
                ..Case::default()
            },
            Case {
                name: "workers still starting are kept",
                queue: 5,
                ready: 5,
                starting: vec![2.0; 5],
                startup: 10.0,
                arrival: Some(5.0),
                current: 10,
                want: 10,
                term: Some(Term::Starting),
                ..Case::default()
            },
            Case {
                name: "a pod starting for too long does not hold the count",
                queue: 5,
                ready: 5,
                starting: vec![300.0],
                startup: 10.0,
                arrival: Some(5.0),
                current: 10,
                want: 5,
                term: Some(Term::Arrivals),
                ..Case::default()
            },
            Case {
                name: "ineffective: held at the workers that helped",
                queue: 5000,
                ready: 40,
                startup: 10.0,
                arrival: Some(60.0),
                current: 40,
                hold: Some(20),
                want: 20,
                term: Some(Term::Ineffective),
                ..Case::default()
            },
            Case {
                name: "ineffective but the need fell below the hold",
                queue: 3,
                ready: 20,
                startup: 10.0,
                arrival: Some(3.0),
                current: 20,
                hold: Some(20),
                want: 3,
                ..Case::default()
            },
            Case {
                name: "a probe adds a few",
                queue: 5000,
                ready: 20,
                startup: 10.0,
                arrival: Some(60.0),
                current: 20,
                probe: Some((20, 2)),
                want: 22,
                term: Some(Term::Probe),
                ..Case::default()
            },
            Case {
                name: "maxReplicas",
                queue: 5000,
                ready: 5,
                startup: 10.0,
                arrival: Some(500.0),
                current: 5,
                want: 100,
                term: Some(Term::Max),
                ..Case::default()
            },
            Case {
                name: "minReplicas",
                queue: 0,
                ready: 3,
                startup: 10.0,
                arrival: Some(0.0),
                current: 3,
                min: Some(2),
                want: 2,
                term: Some(Term::Min),
                ..Case::default()
            },
        ];
        for c in cases {
            let mut k = knobs();
            if let Some(m) = c.mode {
                k.mode = m;
            }
            k.min = c.min.unwrap_or(k.min);
            k.max = c.max.unwrap_or(k.max);
            let effect = match (c.hold, c.probe) {
                (Some(h), _) => Effect::Hold(h),
                (None, Some((h, step))) => Effect::Probe(h, step),
                (None, None) => Effect::Effective,
            };
            let input = PolicyInput {
                queue_length: c.queue,
                ready: c.ready,
                draining: 0,
                starting: c.starting.clone(),
                startup_seconds: c.startup,
                rates: c.arrival.and_then(rates),
                current: c.current,
                effect,
                knobs: k,
            };
            let d = decide(&input);
            assert_eq!(d.replicas, c.want, "{}: {d:?}", c.name);
            if let Some(term) = c.term {
                assert_eq!(d.term, term, "{}: {d:?}", c.name);
            }
        }
    }

    /// Polls once a second: `ready(t)` ready workers, the queue moving by `slope(t)`.
    fn run(
        e: &mut Estimator,
        from: u64,
        to: u64,
        queue: &mut f64,
        ready: impl Fn(u64) -> u32,
        completions: impl Fn(u32) -> f64,
        arrivals: f64,
    ) -> (Option<Rates>, Effect, Option<Evidence>) {
        let k = knobs();
        let mut last = (None, Effect::Effective, None);
        for t in from..to {
            let r = ready(t);
            *queue = (*queue + arrivals - completions(r)).max(0.0);
            let obs = Observation {
                at: Duration::from_secs(t),
                queue_length: *queue as u64,
                ready: r,
                ..Observation::default()
            };
            last = e.observe(&obs, &k);
        }
        last
    }

    #[test]
    fn rates_follow_the_queue_and_the_busy_workers() {
        let mut e = Estimator::default();
        let mut q = 1000.0;
        // 30 ready workers at 1 task/s each, 40 arrivals/s: the queue grows by 10/s.
        let (rates, effect, _) = run(&mut e, 0, 30, &mut q, |_| 30, f64::from, 40.0);
        let r = rates.expect("warmed up");
        assert!((r.arrival - 40.0).abs() < 0.5, "{r:?}");
        assert!((r.completion - 30.0).abs() < 0.5, "{r:?}");
        assert_eq!(effect, Effect::Effective);
    }

    #[test]
    fn workers_that_do_not_raise_the_completion_rate_make_scaling_ineffective() {
        let mut e = Estimator::default();
        let mut q = 1000.0;
        // A downstream completes 20/s whatever the number of workers; 40/s arrive.
        let capped = |r: u32| f64::from(r).min(20.0);
        run(&mut e, 0, 30, &mut q, |_| 18, capped, 40.0);
        // 30 more workers become ready at 30 s: completions rise by 2/s, not 30/s.
        let (_, effect, evidence) = run(&mut e, 30, 50, &mut q, |_| 48, capped, 40.0);
        let ev = evidence.expect("evidence");
        assert_eq!((ev.from, ev.to), (18, 48));
        assert!(
            (ev.observed - 2.0).abs() < 1.0 && ev.expected == 30.0,
            "{ev:?}"
        );
        // Held at the 18 that were there plus the 2 whose work showed.
        assert_eq!(effect, Effect::Hold(20));
        // Every minute a probe is allowed.
        let (_, effect, _) = run(&mut e, 50, 110, &mut q, |_| 48, capped, 40.0);
        assert!(
            matches!(effect, Effect::Probe(20, 2) | Effect::Hold(20)),
            "{effect:?}"
        );
        // With the limit gone and the backlog drained, scaling is effective again.
        let mut drained = 0.0;
        let (_, effect, evidence) = run(&mut e, 110, 120, &mut drained, |_| 40, f64::from, 30.0);
        assert_eq!((effect, evidence), (Effect::Effective, None));
    }

    #[test]
    fn workers_that_help_keep_scaling_effective() {
        let mut e = Estimator::default();
        let mut q = 1000.0;
        run(&mut e, 0, 30, &mut q, |_| 10, f64::from, 40.0);
        let (_, effect, evidence) = run(&mut e, 30, 50, &mut q, |_| 40, f64::from, 40.0);
        assert_eq!((effect, evidence), (Effect::Effective, None));
    }

    #[test]
    fn zero_window_follows_every_recommendation() {
        let mut s = Stabilizer::new(Duration::ZERO);
        let t = Duration::from_secs;
        assert_eq!(s.next(t(0), 5), 5);
        assert_eq!(s.next(t(1), 1), 1);
        assert_eq!(s.next(t(2), 4), 4);
    }
}
