//! The discrete-time model: a FIFO queue, workers that start, serve and leave, and one
//! controller that sets the requested replica count.

use std::collections::VecDeque;

use super::controllers::{Controller, HpaModel, OursModel};
pub use super::controllers::{TICK, TICK_MS, View};
use super::trace::Trace;
use super::{Params, Policy};

/// Work left below this counts as done (floating-point slack).
const EPS: f64 = 1e-9;

/// The figures of one run. Times are seconds; only the simulated window `[0, duration)` counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Integral of the number of pods over time, start-up and draining included.
    pub worker_seconds: f64,
    /// Integral of the number of waiting tasks (not yet in service) over time.
    pub backlog_seconds: f64,
    /// 95th percentile of task wait (nearest rank) over tasks that arrived in the window.
    pub p95_wait: f64,
    /// Longest task wait.
    pub max_wait: f64,
    /// Mean task wait.
    pub mean_wait: f64,
    /// Number of changes of the requested replica count.
    pub scale_events: u64,
    /// Highest requested replica count.
    pub peak_replicas: i32,
    /// Tasks present at the start (waiting or in flight; the warm start's backlog).
    pub initial_tasks: u64,
    /// Tasks that arrived during the run.
    pub arrived: u64,
    /// Tasks completed during the run.
    pub completed: u64,
    /// Tasks still waiting at the end.
    pub waiting_at_end: u64,
    /// Tasks in service at the end.
    pub in_flight_at_end: u64,
    /// Services interrupted by a pod removal whose task went back to the queue.
    pub requeued: u64,
    /// Tasks unaccounted for: `initial + arrived − completed − waiting − in flight` (0 unless the
    /// model is broken; no policy here drops tasks).
    pub lost: u64,
}

/// One row of `replicas.csv`: the state at the start of a second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the start of the trace.
    pub time: f64,
    /// Trace arrival rate, tasks per second.
    pub arrival_rate: f64,
    /// Waiting plus in-flight tasks.
    pub queue_length: u64,
    /// Requested replica count.
    pub replicas: i32,
    /// Pods that exist (starting, serving, idle or draining).
    pub pods: u32,
}

/// The result of replaying a trace under one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Which policy ran.
    pub policy: Policy,
    /// Totals and wait percentiles.
    pub stats: Stats,
    /// One sample per simulated second.
    pub samples: Vec<Sample>,
    /// Ours: every decision that changed the count, with its time in seconds.
    pub decisions: Vec<(f64, workerpool_scaling::Decision)>,
}

#[derive(Clone, Copy, Debug)]
struct Task {
    arrival: f64,
    started: f64,
    remaining: f64,
}

#[derive(Clone, Debug)]
struct Worker {
    created: f64,
    ready_at: f64,
    task: Option<Task>,
    draining: bool,
    gone: bool,
}

impl Worker {
    fn new(now: f64, startup: f64) -> Self {
        Self {
            created: now,
            ready_at: now + startup,
            task: None,
            draining: false,
            gone: false,
        }
    }

    fn ready(&self, now: f64) -> bool {
        self.ready_at <= now + EPS
    }
}

struct World {
    service_rate: f64,
    startup: f64,
    policy: Policy,
    queue: VecDeque<f64>,
    workers: Vec<Worker>,
    requested: i32,
    /// Tasks in service (kept in step with the workers' `task`).
    busy: u64,
    /// Workers that are draining.
    draining: usize,
    arrival_debt: f64,
    waits: Vec<f64>,
    stats: Stats,
}

impl World {
    fn waiting(&self) -> u64 {
        self.queue.len() as u64
    }

    fn in_flight(&self) -> u64 {
        self.busy
    }

    fn view(&self, now: f64) -> View {
        let pods = match self.policy {
            Policy::Ours => self.workers.len() - self.draining,
            Policy::Hpa => self.workers.len(),
        };
        let mut view = View {
            queue_length: self.waiting() + self.in_flight(),
            pods: u32::try_from(pods).unwrap_or(u32::MAX),
            ..View::default()
        };
        if self.policy == Policy::Ours {
            // The pod cache's view: readiness, ages, start-up times (only ours reads them).
            let mut startups = Vec::new();
            for w in &self.workers {
                if w.draining {
                    view.draining += u32::from(w.ready(now));
                } else if w.ready(now) {
                    view.ready += 1;
                    startups.push(w.ready_at - w.created);
                } else {
                    view.starting.push(now - w.created);
                }
            }
            if !startups.is_empty() {
                view.startup_seconds = Some(percentile(&mut startups, 0.5).max(0.0));
            }
        }
        view
    }

    /// Brings the pods to the requested count, the way each policy's actuator does.
    fn reconcile(&mut self, now: f64) {
        let want = usize::try_from(self.requested.max(0)).unwrap_or(0);
        match self.policy {
            Policy::Ours => self.reconcile_drain(now, want),
            Policy::Hpa => self.reconcile_kill(now, want),
        }
    }

    /// Ours: the operator keeps `want` pods that are not draining. Surplus pods are chosen not
    /// ready first, then idle, then busy, youngest first in each class; a pod without a task
    /// leaves at once, a busy one drains (takes no new task and exits after its current one).
    fn reconcile_drain(&mut self, now: f64, want: usize) {
        let active: Vec<usize> = (0..self.workers.len())
            .filter(|&i| !self.workers[i].draining)
            .collect();
        if active.len() < want {
            let add = want - active.len();
            self.spawn(now, add);
            return;
        }
        let surplus = active.len() - want;
        if surplus == 0 {
            return;
        }
        let mut ranked = active;
        ranked.sort_by(|&a, &b| {
            let (wa, wb) = (&self.workers[a], &self.workers[b]);
            drain_class(wa, now)
                .cmp(&drain_class(wb, now))
                .then(wb.created.total_cmp(&wa.created))
        });
        for &i in ranked.iter().take(surplus) {
            let w = &mut self.workers[i];
            if w.task.is_some() {
                w.draining = true;
                self.draining += 1;
            } else {
                w.gone = true;
            }
        }
        self.workers.retain(|w| !w.gone);
    }

    /// HPA: the ReplicaSet keeps `want` pods. Surplus pods are deleted not ready first, then the
    /// most recently ready (ReplicaSet's ranking), and vanish at once; a task in flight goes back
    /// to the head of the queue (the charitable assumption: requeued, not lost).
    fn reconcile_kill(&mut self, now: f64, want: usize) {
        let have = self.workers.len();
        if have < want {
            self.spawn(now, want - have);
            return;
        }
        let surplus = have - want;
        if surplus == 0 {
            return;
        }
        let mut ranked: Vec<usize> = (0..have).collect();
        ranked.sort_by(|&a, &b| {
            let (wa, wb) = (&self.workers[a], &self.workers[b]);
            wa.ready(now)
                .cmp(&wb.ready(now))
                .then(wb.ready_at.total_cmp(&wa.ready_at))
                .then(wb.created.total_cmp(&wa.created))
        });
        for &i in ranked.iter().take(surplus) {
            let w = &mut self.workers[i];
            if let Some(task) = w.task.take() {
                self.queue.push_front(task.arrival);
                self.stats.requeued += 1;
                self.busy -= 1;
            }
            w.gone = true;
        }
        self.workers.retain(|w| !w.gone);
    }

    fn spawn(&mut self, now: f64, n: usize) {
        let startup = self.startup;
        self.workers
            .extend(std::iter::repeat_with(|| Worker::new(now, startup)).take(n));
    }

    /// Arrivals of one step at `rate` tasks per second, as a fluid: whole tasks are released
    /// when the accumulated arrivals reach them; they are stamped with the step's start.
    fn arrive(&mut self, rate: f64, now: f64) {
        self.arrival_debt += rate * TICK;
        let n = (self.arrival_debt + EPS).floor();
        if n >= 1.0 {
            self.arrival_debt -= n;
            let n = n as u64;
            self.stats.arrived += n;
            self.queue.extend(std::iter::repeat_n(now, n as usize));
        }
    }

    /// One step of service: every ready worker has `service_rate × TICK` tasks of capacity and
    /// takes tasks from the head of the queue while it has capacity left.
    /// With a downstream limit of `downstream` tasks per second in all, the ready workers share
    /// it equally (each at most `service_rate`).
    fn serve(&mut self, now: f64, downstream: f64) {
        let ready = self.workers.iter().filter(|w| w.ready(now)).count().max(1);
        let rate = self.service_rate.min(downstream / ready as f64).max(1e-9);
        let capacity = rate * TICK;
        let Self {
            workers,
            queue,
            waits,
            stats,
            busy,
            draining,
            ..
        } = self;
        if queue.is_empty() && *busy == 0 {
            return;
        }
        for w in workers.iter_mut() {
            if !w.ready(now) {
                continue;
            }
            let mut budget = capacity;
            let mut clock = now;
            loop {
                if let Some(task) = w.task.as_mut() {
                    let used = budget.min(task.remaining);
                    task.remaining -= used;
                    budget -= used;
                    clock += used / rate;
                    if task.remaining > EPS {
                        break;
                    }
                    let done = *task;
                    w.task = None;
                    *busy -= 1;
                    stats.completed += 1;
                    if done.arrival >= 0.0 {
                        waits.push(done.started - done.arrival);
                    }
                    if w.draining {
                        w.gone = true;
                        *draining -= 1;
                        break;
                    }
                } else if w.draining {
                    w.gone = true;
                    *draining -= 1;
                    break;
                } else if budget > EPS {
                    let Some(arrival) = queue.pop_front() else {
                        break;
                    };
                    w.task = Some(Task {
                        arrival,
                        started: clock,
                        remaining: 1.0,
                    });
                    *busy += 1;
                } else {
                    break;
                }
            }
        }
        workers.retain(|w| !w.gone);
    }

    fn sample(&self, time: f64, arrival_rate: f64) -> Sample {
        Sample {
            time,
            arrival_rate,
            queue_length: self.waiting() + self.in_flight(),
            replicas: self.requested,
            pods: u32::try_from(self.workers.len()).unwrap_or(u32::MAX),
        }
    }
}

/// Ours: 0 = not ready, 1 = idle, 2 = busy.
fn drain_class(w: &Worker, now: f64) -> u8 {
    if !w.ready(now) {
        0
    } else if w.task.is_none() {
        1
    } else {
        2
    }
}

/// Replays `trace` for `params.duration()` seconds under `policy`.
pub fn simulate(trace: &Trace, params: &Params, policy: Policy) -> Outcome {
    let duration = params.duration.unwrap_or_else(|| trace.length());
    let mut world = World {
        service_rate: params.service_rate,
        startup: params.startup_delay,
        policy,
        queue: VecDeque::new(),
        workers: Vec::new(),
        requested: 0,
        busy: 0,
        draining: 0,
        arrival_debt: 0.0,
        waits: Vec::new(),
        stats: Stats::default(),
    };
    let mut controller: Box<dyn Controller> = match policy {
        Policy::Ours => Box::new(OursModel::new(params)),
        Policy::Hpa => Box::new(HpaModel::new(params)),
    };
    initialise(&mut world, trace, params);
    controller.start(world.requested);
    world.stats.initial_tasks = world.waiting() + world.in_flight();
    world.stats.peak_replicas = world.requested;

    let ticks = (duration / TICK).round() as u64;
    let per_sample = (1000 / TICK_MS).max(1);
    let mut samples = Vec::with_capacity(usize::try_from(ticks / per_sample + 2).unwrap_or(0));
    for k in 0..ticks {
        let now_ms = k * TICK_MS;
        let now = k as f64 * TICK;
        let rate = trace.rate_at(now);
        // The step's arrivals come first, so that a poll counts every task in service for its
        // whole service time (a task that completes at the end of a step is replaced by one that
        // arrived at its start), as a broker's in-flight count does.
        world.arrive(rate, now);
        let view = world.view(now);
        if let Some(replicas) = controller.tick(now_ms, &view)
            && replicas != world.requested
        {
            world.requested = replicas;
            world.stats.scale_events += 1;
            world.stats.peak_replicas = world.stats.peak_replicas.max(replicas);
            // Pods change only through the actuator: reconciling on a change is enough.
            world.reconcile(now);
        }
        if k.is_multiple_of(per_sample) {
            samples.push(world.sample(now, rate));
        }
        world.stats.worker_seconds += world.workers.len() as f64 * TICK;
        world.serve(now, trace.downstream_at(now));
        world.stats.backlog_seconds += world.waiting() as f64 * TICK;
    }
    let end = ticks as f64 * TICK;
    samples.push(world.sample(end, trace.rate_at(end)));
    let mut outcome = finish(world, end, policy, samples);
    outcome.decisions = controller
        .decisions()
        .iter()
        .map(|&(ms, d)| (ms as f64 / 1000.0, d))
        .collect();
    outcome
}

/// Warm start (default): the steady state of the first rate `r0`, i.e. `n0 = ceil(r0 / μ)`
/// ready workers (clamped to the bounds), all busy, and as many tasks as both policies aim at
/// for `n0` workers (`n0 / scalingFactor`, rounded down), the older ones waiting. Cold start: an
/// empty queue and the minimum replica count, ready.
fn initialise(world: &mut World, trace: &Trace, params: &Params) {
    let min = params.min_replicas.max(0);
    let max = params.max_replicas.max(min);
    let r0 = trace.rate_at(0.0);
    let n0 = if params.cold_start || r0 <= 0.0 {
        min
    } else {
        let need = (r0 / params.service_rate - EPS)
            .ceil()
            .clamp(0.0, f64::from(max)) as i32;
        need.clamp(min, max)
    };
    // A warm start has work, so KEDA's trigger is active and both policies start at n0.
    world.requested = n0;
    let n = usize::try_from(n0).unwrap_or(0);
    for _ in 0..n {
        let mut w = Worker::new(-params.startup_delay - 60.0, params.startup_delay);
        w.ready_at = -60.0;
        world.workers.push(w);
    }
    if params.cold_start || r0 <= 0.0 || n == 0 {
        return;
    }
    let total = (f64::from(n0) / params.scaling_factor + EPS).floor() as usize;
    let in_flight = total.min(n);
    let waiting = total - in_flight;
    world.busy = in_flight as u64;
    // Waiting tasks arrived at rate r0 before time 0, the oldest first.
    for j in 0..waiting {
        world.queue.push_back(-((waiting - j) as f64) / r0.max(EPS));
    }
    let oldest = -((waiting + 1) as f64) / r0.max(EPS);
    for (i, w) in world.workers.iter_mut().take(in_flight).enumerate() {
        w.task = Some(Task {
            arrival: oldest,
            started: oldest,
            remaining: (i as f64 + 0.5) / in_flight as f64,
        });
    }
}

fn finish(mut world: World, end: f64, policy: Policy, samples: Vec<Sample>) -> Outcome {
    // Tasks that have not started by the end count with the wait they have had so far (a lower
    // bound), so a policy cannot hide its backlog by leaving it unserved.
    let mut waits = std::mem::take(&mut world.waits);
    for w in &world.workers {
        if let Some(t) = &w.task
            && t.arrival >= 0.0
        {
            waits.push(t.started - t.arrival);
        }
    }
    waits.extend(world.queue.iter().filter(|&&a| a >= 0.0).map(|&a| end - a));
    let mut stats = world.stats.clone();
    stats.waiting_at_end = world.waiting();
    stats.in_flight_at_end = world.in_flight();
    let accounted = stats.completed + stats.waiting_at_end + stats.in_flight_at_end;
    stats.lost = (stats.initial_tasks + stats.arrived).saturating_sub(accounted);
    if !waits.is_empty() {
        stats.mean_wait = waits.iter().sum::<f64>() / waits.len() as f64;
        stats.max_wait = waits.iter().copied().fold(0.0, f64::max);
        stats.p95_wait = percentile(&mut waits, 0.95);
    }
    Outcome {
        policy,
        stats,
        samples,
        decisions: Vec::new(),
    }
}

/// Nearest-rank percentile `q` (0..=1) of `values` (reordered in place).
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let (_, v, _) = values.select_nth_unstable_by(rank - 1, f64::total_cmp);
    *v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.95), 95.0);
        let mut one = vec![3.0];
        assert_eq!(percentile(&mut one, 0.95), 3.0);
        assert_eq!(percentile(&mut [], 0.95), 0.0);
    }
}
