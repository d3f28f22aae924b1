//! The queue autoscaler: one lightweight poll per QWorker at its interval (on the leader
//! only, since it runs inside the controllers), writing `status.desiredReplicas`. The polls
//! are not tasks of their own: the polls of every QWorker reading through one ScalerConfig are
//! run by that ScalerConfig's [`schedule`], one task with one timer that fires at each interval
//! phase with QWorkers due.
//!
//! A poll reads the queue depth (waiting plus in flight) through the ScalerConfig's pooled
//! connection, applies [`policy`], and writes the status with its own field manager when the
//! answer changes. When the broker cannot be read the last desired count is kept,
//! `BrokerReachable=False` is set with the reason, a Warning Event is published, and polls
//! back off; the autoscaler never scales down on an error.
//!
//! An idle QWorker (an empty queue, no worker, at `minReplicas` under the specification's rule)
//! has nothing to decide until a task comes: its poll *parks* and waits for the [`probe`] that
//! reads its queue a few times per interval anyway, which wakes it at the first task or when the
//! queue cannot be read, and comes at least every [`PARKED_POLL`]. At rest a thousand idle
//! QWorkers then cost their share of the probe's batched reads rather than a thousand polls a
//! second; what a poll writes, and when, does not change.

pub mod answer;
pub mod probe;
mod schedule;

use workerpool_scaling as policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};
use workerpool_api::conditions::{self, BROKER_REACHABLE, NewCondition};
use workerpool_api::{QWorker, ScalerConfig};

use crate::brokers::{BrokerUnavailable, Brokers};
use crate::context::Shared;
use crate::controllers::qworker::status::AutoscalerStatus;
use crate::metrics::{BrokerErrorLabels, QWorkerLabels};
use crate::runtime::Reason;
use probe::{Connection, Probes, Wake};
use schedule::{MemberId, Msg, Next, Schedules};

pub use crate::AUTOSCALER_MANAGER;
pub use answer::{Answer, Handover};
/// Longest wait between polls while the broker fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// An unchanged desired count with a changed queue length is written at most this often.
pub const QUEUE_LENGTH_REFRESH: Duration = Duration::from_secs(15);
/// Default reads per poll interval of the queues that may need an early poll ([`probe`];
/// `--early-polls`).
pub const EARLY_POLLS: u32 = 4;
/// Longest wait of a parked poll: an idle QWorker's poll waits for its probe to see a task (see
/// the module documentation).
pub const PARKED_POLL: Duration = Duration::from_secs(30);

/// The policy's settings from a QWorker's `scaleConfig`.
pub fn knobs(sc: &workerpool_api::ScaleConfig) -> policy::Knobs {
    policy::Knobs {
        scaling_factor: sc.scaling_factor,
        min: sc.min_replicas,
        max: sc.max_replicas,
        mode: match sc.scaling_policy() {
            workerpool_api::qworker::ScalingPolicy::Rate => policy::Mode::Rate,
            workerpool_api::qworker::ScalingPolicy::QueueLength => policy::Mode::QueueLength,
        },
        target_drain_seconds: f64::from(sc.target_drain_seconds()),
        max_surge: f64::from(sc.max_surge_percent()) / 100.0,
    }
}

/// Time between two polls of a QWorker (`pollIntervalSeconds`).
fn poll_interval(sc: &workerpool_api::ScaleConfig) -> Duration {
    Duration::from_secs(u64::from(sc.poll_interval_seconds()))
}

/// What a poll sees of a QWorker's pods in the cache, at `now`: ready workers (not draining),
/// ready workers asked to drain, the ages of those not ready yet, and the median start-up time
/// (creation to the Ready condition's last transition) of the ready ones.
pub fn pod_observation(
    pods: &[Arc<Pod>],
    qw: &QWorker,
    at: Duration,
    queue_length: u64,
    now: Timestamp,
) -> policy::Observation {
    use workerpool_queue::protocol::DRAIN_ANNOTATION;
    let uid = qw.metadata.uid.as_deref();
    let mut obs = policy::Observation {
        at,
        queue_length,
        ..policy::Observation::default()
    };
    let mut startups = Vec::new();
    for pod in pods {
        if pod.namespace() != qw.namespace()
            || !owned_by(pod, uid)
            || pod.metadata.deletion_timestamp.is_some()
            || matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let ready = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready" && c.status == "True");
        let draining = pod.annotations().contains_key(DRAIN_ANNOTATION);
        match (ready, draining) {
            (Some(_), true) => obs.draining += 1,
            (Some(c), false) => {
                obs.ready += 1;
                if let (Some(created), Some(t)) = (created, c.last_transition_time.as_ref()) {
                    startups.push(seconds_between(created, t.0));
                }
            }
            (None, true) => {}
            (None, false) => obs
                .starting
                .push(created.map_or(0.0, |c| seconds_between(c, now))),
        }
    }
    if !startups.is_empty() {
        startups.sort_by(f64::total_cmp);
        obs.startup_seconds = Some(startups[startups.len() / 2]);
    }
    obs
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()).max(0) as f64 / 1000.0
}

/// `status.lastScaleDecision` for a change from `from` decided by `d` on `obs`.
pub fn scale_decision(
    from: i32,
    obs: &policy::Observation,
    d: &policy::Decision,
    sc: &workerpool_api::ScaleConfig,
) -> workerpool_api::qworker::ScaleDecision {
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let rate = sc.scaling_policy() == workerpool_api::qworker::ScalingPolicy::Rate;
    let starting = i32::try_from(obs.starting.len()).unwrap_or(i32::MAX);
    let ready = i32::try_from(obs.ready).unwrap_or(i32::MAX);
    let mut message = format!(
        "Desired workers {from} -> {} by {}: queue length {}",
        d.replicas,
        d.term.as_str(),
        obs.queue_length,
    );
    if rate {
        message.push_str(&format!(
            ", {ready} ready and {starting} starting worker(s)"
        ));
    }
    match d.rates {
        Some(r) if d.term != policy::Term::QueueLength => {
            message.push_str(&format!(
                ", arrivals {:.2}/s, completions {:.2}/s at {:.2}/s per worker: {:.1} worker(s) for the arrivals, {:.1} for a backlog of {:.0} task(s) expected when a new worker is ready",
                r.arrival,
                r.completion,
                r.throughput,
                d.arrival_need,
                d.backlog_workers,
                d.projected_backlog
            ));
        }
        _ => message.push_str(&format!(", scalingFactor {}", sc.scaling_factor)),
    }
    if let Some(e) = d.evidence {
        message.push_str(&format!("; scaling is ineffective: {e}"));
    }
    workerpool_api::qworker::ScaleDecision {
        time: Time(Timestamp::now()),
        from,
        to: d.replicas,
        term: d.term.as_str().to_string(),
        queue_length: i64::try_from(obs.queue_length).unwrap_or(i64::MAX),
        ready_workers: rate.then_some(ready),
        starting_workers: rate.then_some(starting),
        arrival_rate: d.rates.map(|r| round(r.arrival)),
        completion_rate: d.rates.map(|r| round(r.completion)),
        worker_throughput: d.rates.map(|r| round(r.throughput)),
        startup_seconds: obs.startup_seconds.map(round),
        message,
    }
}

/// `Scaling=False` with reason `Ineffective` while the autoscaler holds the count because more
/// workers did not raise the completion rate (its last decision says so, with the rates).
pub fn ineffective_condition(status: &workerpool_api::QWorkerStatus) -> Option<NewCondition> {
    let d = status.last_scale_decision.as_ref()?;
    let held =
        d.term == policy::Term::Ineffective.as_str() || d.term == policy::Term::Probe.as_str();
    held.then(|| {
        NewCondition::new(
            workerpool_api::conditions::SCALING,
            false,
            "Ineffective",
            d.message.clone(),
        )
    })
}

/// The live pods of a QWorker, by the controller ownerReference (terminal and terminating pods excluded).
pub fn live_worker_names(pods: &crate::cache::Owned<Pod>, qw: &QWorker) -> Vec<String> {
    let uid = qw.metadata.uid.as_deref();
    pods.owned_by(uid.unwrap_or_default())
        .iter()
        .filter(|p| p.namespace() == qw.namespace() && owned_by(p, uid))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| p.name_any())
        .collect()
}

/// Whether `pod` carries a controller ownerReference to the object with `uid`.
pub fn owned_by(pod: &Pod, uid: Option<&str>) -> bool {
    let Some(uid) = uid else { return false };
    pod.owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// A QWorker's poll: the uid and generation it polls for, its member of the schedule of its
/// connection ([`schedule`]), and its answer to the reconciler.
struct Registered {
    uid: String,
    generation: Option<i64>,
    member: MemberId,
    connection: Connection,
    answer: Arc<answer::Slot>,
}

/// The polls by QWorker key.
type Registry = Mutex<HashMap<String, Registered>>;

/// Runs and tracks one poll per QWorker, scheduled by connection ([`schedule`]).
#[derive(Clone)]
pub struct Autoscaler {
    /// Shared by the pollers (each holds a pointer, not a copy).
    inner: Arc<Inner>,
}

/// What the pollers share.
struct Inner {
    shared: Shared,
    brokers: Brokers,
    qworkers: Store<QWorker>,
    pods: crate::cache::Owned<Pod>,
    polls: Registry,
    /// One schedule (a poll and a timer) per connection.
    schedules: Schedules,
    /// The last [`MemberId`] given.
    members: std::sync::atomic::AtomicU64,
    /// Polls are due at whole multiples of their interval from here, shifted by the QWorker's
    /// phase ([`phase`]), so that the QWorkers of one interval and phase wake together and their
    /// queue reads share one broker call.
    epoch: tokio::time::Instant,
    /// The queues read between polls to wake a poll early ([`probe`]).
    probes: Probes,
    /// Reads of each such queue per poll interval (0: no early polls).
    early_polls: std::sync::atomic::AtomicU32,
}

fn key(qw: &QWorker) -> String {
    format!("{}/{}", qw.namespace().unwrap_or_default(), qw.name_any())
}

/// The connection (`namespace`, ScalerConfig name) a QWorker's queue is read through.
fn connection(qw: &QWorker) -> Connection {
    (
        qw.namespace().unwrap_or_default(),
        qw.spec.scale_config.scaler_config_ref.clone(),
    )
}

impl Inner {
    /// The poll of member `id` (QWorker `key`) stopped by itself (its QWorker is gone): it is
    /// forgotten, so that [`Autoscaler::ensure`] starts a new one if the QWorker comes back.
    fn stopped(&self, id: MemberId, key: &str) {
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        if polls.get(key).is_some_and(|t| t.member == id) {
            polls.remove(key);
        }
    }
}

impl Autoscaler {
    /// An autoscaler reading QWorkers and pods from the controllers' caches.
    pub fn new(
        shared: Shared,
        brokers: Brokers,
        qworkers: Store<QWorker>,
        pods: impl Into<crate::cache::Owned<Pod>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                brokers,
                qworkers,
                pods: pods.into(),
                polls: Mutex::default(),
                schedules: Schedules::default(),
                members: 0.into(),
                epoch: tokio::time::Instant::now(),
                probes: Probes::default(),
                early_polls: EARLY_POLLS.into(),
            }),
        }
    }

    /// The same autoscaler reading the queues that may need an early poll `n` times per poll
    /// interval (0: polls come at their interval only; see [`probe`]).
    pub fn with_early_polls(self, n: u32) -> Self {
        self.inner
            .early_polls
            .store(n, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The broker connections.
    pub fn brokers(&self) -> &Brokers {
        &self.inner.brokers
    }

    /// The cache of the worker pods.
    pub fn pods(&self) -> Store<Pod> {
        self.inner.pods.store().clone()
    }

    /// Starts the poll of `qw` unless it runs; a running one whose QWorker's spec changed (new
    /// bounds, new queue) polls at once instead of finishing its wait or backoff, and moves to
    /// the schedule of its new connection if the ScalerConfig changed.
    pub fn ensure(&self, qw: &QWorker) {
        let k = key(qw);
        let uid = qw.metadata.uid.clone().unwrap_or_default();
        let inner = &self.inner;
        let mut polls = inner.polls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(poll) = polls.get_mut(&k) {
            if poll.uid == uid {
                if poll.generation == qw.metadata.generation {
                    return;
                }
                poll.generation = qw.metadata.generation;
                let to = connection(qw);
                let msg = if to == poll.connection {
                    Msg::Wake(poll.member)
                } else {
                    Msg::Move(poll.member, to.clone())
                };
                inner.schedules.send(inner, &poll.connection, msg);
                poll.connection = to;
                return;
            }
            // The same name, another QWorker: the old one's poll stops.
            inner
                .schedules
                .send(inner, &poll.connection, Msg::Remove(poll.member));
        }
        let answer = Arc::new(answer::Slot::default());
        let member = inner
            .members
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let poller = Box::new(Poller::new(inner.clone(), qw, answer.clone()));
        let to = connection(qw);
        debug!(qworker = %k, "starting autoscaler poll");
        inner
            .schedules
            .send(inner, &to, Msg::Insert(member, poller));
        polls.insert(
            k,
            Registered {
                uid,
                generation: qw.metadata.generation,
                member,
                connection: to,
                answer,
            },
        );
    }

    /// Whether the poll of `qw` has looked at the queue at least once since it started (a
    /// desired count written before may be stale after an operator restart), and its first
    /// status fields when it hands them to the reconciler ([`answer`]).
    pub fn answer(&self, qw: &QWorker) -> Answer {
        let slot = {
            let polls = self.inner.polls.lock().unwrap_or_else(|p| p.into_inner());
            match polls.get(&key(qw)) {
                Some(t) if Some(t.uid.as_str()) == qw.metadata.uid.as_deref() => t.answer.clone(),
                _ => return Answer::NotYet,
            }
        };
        slot.answer()
    }

    /// Stops the poll of a deleted QWorker and forgets it (its activateVPA memory goes with it).
    pub fn forget(&self, qw: &QWorker) {
        let mut polls = self.inner.polls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(poll) = polls.remove(&key(qw)) {
            self.inner
                .schedules
                .send(&self.inner, &poll.connection, Msg::Remove(poll.member));
        }
    }

    /// Number of QWorkers polled.
    pub fn running(&self) -> usize {
        let polls = self.inner.polls.lock().unwrap_or_else(|p| p.into_inner());
        polls.len()
    }

    /// Number of schedules (one poll and one timer each) that run the polls.
    pub fn schedules(&self) -> usize {
        self.inner.schedules.len()
    }
}

/// What a poll last wrote, to write only changes.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    desired: i32,
    queue_length: Option<u64>,
    reachable: Option<&'static str>,
    /// When it was written; `None` when read from the status at the start (stale).
    at: Option<Instant>,
}

impl Written {
    /// What `status` says was written, for a poll that has not written yet (its queue length
    /// counts as due for a refresh).
    fn of_status(status: &workerpool_api::QWorkerStatus) -> Self {
        Written {
            desired: status.desired_replicas,
            queue_length: status.queue_length.and_then(|l| u64::try_from(l).ok()),
            reachable: conditions::find(&status.conditions, BROKER_REACHABLE)
                .map(|c| if c.status == "True" { "" } else { "unknown" }),
            at: None,
        }
    }

    /// Whether a queue `length` read differs from the written one, which is
    /// [`QUEUE_LENGTH_REFRESH`] old.
    fn stale_length(&self, length: Option<u64>) -> bool {
        length.is_some()
            && self.queue_length != length
            && self.at.is_none_or(|t| t.elapsed() >= QUEUE_LENGTH_REFRESH)
    }
}

struct Poller {
    scaler: Arc<Inner>,
    object: ObjectRef<QWorker>,
    uid: String,
    /// Rate estimates, effectiveness test and scale-down window (in memory: after a restart
    /// the first decisions fall back to the specification's rule).
    scaling: policy::Scaler,
    /// `status.lastScaleDecision` as this manager last applied it (repeated in every apply).
    last_decision: Option<serde_json::Value>,
    /// Whether scaling is held as ineffective (for the Events of the change).
    ineffective: bool,
    origin: Instant,
    failures: u32,
    last: Option<Written>,
    vpa: VpaState,
    /// Wakes this poll through its schedule; set when it joins one.
    wake: Option<Arc<dyn Wake>>,
    answer: Arc<answer::Slot>,
    /// This QWorker's `qworker_poll_duration_seconds` (looked up once, not per poll).
    poll_duration: prometheus_client::metrics::histogram::Histogram,
    /// Its [`phase`], from its first poll.
    phase: Option<f64>,
    /// `namespace/name` of the QWorker.
    key: String,
    /// The QWorker's connection as of its last poll (boxed: every QWorker's task holds it).
    connection: Option<Box<Connection>>,
    /// Its watch by the probe of `connection`, while the probe watches its queue.
    watch: Option<Arc<probe::Watch>>,
    /// The ScalerConfig its last poll read through ([`Poller::config_ref`]).
    config: Option<Arc<ObjectRef<ScalerConfig>>>,
    /// Whether the last poll parked ([`Poller::idle`]): the next comes when the probe wakes it,
    /// or after [`PARKED_POLL`].
    parked: bool,
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.as_deref().filter(|_| self.watch.is_some()) {
            self.scaler.probes.remove(connection, &self.key);
        }
    }
}

/// Phases of a poll interval: the QWorkers are spread over this many evenly spaced ticks per
/// interval, so that their reads are batched in a few broker calls while the status writes of a
/// burst of queue changes do not all reach the API server in the same instant.
pub const PHASES: u64 = 10;

/// The phase, as a fraction of `interval` (`0`, `0.1`, ... `0.9`), of a QWorker whose first poll
/// came `since_epoch` after the epoch: the phase at or before that poll, so that the next poll
/// comes nearly one interval later (90-100 %). QWorkers first polled at different times spread
/// over the phases by themselves.
pub fn phase(since_epoch: Duration, interval: Duration) -> f64 {
    let step = interval.as_nanos().max(1);
    let within = since_epoch.as_nanos() % step;
    let slot = within * u128::from(PHASES) / step;
    slot as f64 / PHASES as f64
}

/// The first multiple of `interval` after `epoch` that is later than `now` (the next tick of
/// that interval).
pub fn next_tick(
    epoch: tokio::time::Instant,
    now: tokio::time::Instant,
    interval: Duration,
) -> tokio::time::Instant {
    let step = interval.as_nanos().max(1);
    let elapsed = now.saturating_duration_since(epoch).as_nanos();
    let ticks = elapsed / step + 1;
    epoch + Duration::from_nanos(u64::try_from(ticks * step).unwrap_or(u64::MAX))
}

/// activateVPA state of one poller: the usage record and when it was last sampled.
#[derive(Default)]
struct VpaState {
    /// Loaded from the status on the first sample, then kept here.
    record: Option<crate::controllers::qworker::vpa::Usage>,
    condition: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    last_sample: Option<Instant>,
    /// OOM kills taken into account and the last raise; loaded from the status with `record`.
    ooms: crate::controllers::qworker::vpa::OomMemory,
    dirty: bool,
}

impl VpaState {
    /// The usage record and the OOM memory, both loaded from `status` on the first sample.
    fn load(
        &mut self,
        status: &workerpool_api::QWorkerStatus,
    ) -> (
        &mut crate::controllers::qworker::vpa::Usage,
        &mut crate::controllers::qworker::vpa::OomMemory,
    ) {
        if self.record.is_none() {
            self.ooms = crate::controllers::qworker::vpa::OomMemory {
                seen: status.oom_kills_seen.clone(),
                last_raise: status.last_oom_raise_time.as_ref().map(|t| t.0),
            };
        }
        let record = self
            .record
            .get_or_insert_with(|| status.max_container_resources_usage.clone());
        (record, &mut self.ooms)
    }
}

/// How often activateVPA reads pod metrics (one list call per QWorker).
pub const VPA_INTERVAL: Duration = Duration::from_secs(15);

fn pod_metrics_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

impl Poller {
    /// The poll of `qw`, telling `answer` once it looked at the queue.
    fn new(scaler: Arc<Inner>, qw: &QWorker, answer: Arc<answer::Slot>) -> Self {
        let poll_duration = scaler
            .shared
            .metrics
            .poll_duration
            .get_or_create(&Self::labels(qw))
            .clone();
        Self {
            scaler,
            object: ObjectRef::from_obj(qw),
            uid: qw.metadata.uid.clone().unwrap_or_default(),
            scaling: policy::Scaler::new(Duration::from_secs(u64::from(
                qw.spec.scale_config.scale_down_stabilization_seconds(),
            ))),
            last_decision: None,
            ineffective: false,
            origin: Instant::now(),
            failures: 0,
            last: None,
            vpa: VpaState::default(),
            wake: None,
            answer,
            poll_duration,
            phase: None,
            key: key(qw),
            connection: None,
            watch: None,
            config: None,
            parked: false,
        }
    }

    /// Has the probe of the QWorker's connection wake this poll once the queue holds `threshold`
    /// tasks (`None`: stop watching), reading it `early_polls` times per `interval`.
    fn watch_queue(&mut self, qw: &QWorker, threshold: Option<u64>, interval: Duration) {
        let sc = &qw.spec.scale_config;
        let ns = qw.metadata.namespace.as_deref().unwrap_or_default();
        // Built only when it changes: this runs on every poll.
        let same = self
            .connection
            .as_deref()
            .is_some_and(|c| c.0 == ns && c.1 == sc.scaler_config_ref);
        if !same {
            if let Some(old) = self.connection.as_deref().filter(|_| self.watch.is_some()) {
                self.scaler.probes.remove(old, &self.key);
            }
            self.watch = None;
            self.connection = Some(Box::new((ns.to_string(), sc.scaler_config_ref.clone())));
        }
        let (Some(connection), Some(wake)) = (self.connection.as_deref(), self.wake.as_ref())
        else {
            return;
        };
        let n = self
            .scaler
            .early_polls
            .load(std::sync::atomic::Ordering::Relaxed);
        let watch = threshold.filter(|_| n > 0).map(|t| (t, interval / n));
        // The common case, at every poll of an idle queue: the same watch with a new threshold.
        if let (Some((threshold, period)), Some(current)) = (watch, self.watch.as_deref())
            && current.is(&sc.queue, period)
        {
            current.retarget(threshold);
            return;
        }
        let (handle, started) =
            self.scaler
                .probes
                .set(connection, &self.key, &sc.queue, watch, wake.clone());
        self.watch = handle;
        if started {
            let brokers = self.scaler.brokers.clone();
            let gate = self.scaler.shared.gate.clone();
            let target = connection.clone();
            tokio::spawn(self.scaler.probes.clone().run(
                connection.clone(),
                move || gate.closed().is_none(),
                move |queries| {
                    let (brokers, target) = (brokers.clone(), target.clone());
                    async move {
                        let broker = brokers.get(&target.0, &target.1).await.ok()?;
                        let lengths = broker.depths(&queries).await;
                        Some(lengths.into_iter().map(Result::ok).collect())
                    }
                },
            ));
        }
    }

    /// Has the probe wake this poll through `wake` (its schedule's [`schedule::Waker`]).
    fn set_wake(&mut self, wake: Arc<dyn Wake>) {
        self.wake = Some(wake);
    }

    /// `namespace/name` of the QWorker.
    fn key(&self) -> &str {
        &self.key
    }

    /// One turn of the poll, run by its schedule: polls (unless the QWorker is gone, or this
    /// replica may not act), and says when the next one is due. The poller comes back with the
    /// answer, so that nothing holds it while it waits.
    async fn turn(mut self: Box<Self>) -> (Box<Self>, Next) {
        let Some(qw) = self.scaler.qworkers.get(&self.object) else {
            debug!(qworker = %self.object, "QWorker gone; autoscaler poll stops");
            return (self, Next::Stop);
        };
        if qw.metadata.uid.as_deref() != Some(self.uid.as_str()) {
            return (self, Next::Stop);
        }
        if self.scaler.shared.gate.closed().is_some() {
            // Not the leader (any more), or the pod cache is not synced: decide nothing.
            let at = tokio::time::Instant::now() + crate::cache::NOT_READY_RETRY;
            return (self, Next::At(at));
        }
        let interval = poll_interval(&qw.spec.scale_config);
        let outcome = self.poll(&qw).await;
        self.answer.set_answered();
        let now = tokio::time::Instant::now();
        let due = match outcome {
            Ok(()) => {
                self.failures = 0;
                let phase = *self.phase.get_or_insert_with(|| {
                    phase(now.saturating_duration_since(self.scaler.epoch), interval)
                });
                // A parked poll still comes on its phase's ticks, the last one within
                // PARKED_POLL (its reads are batched with the others').
                let wait = if self.parked {
                    PARKED_POLL.saturating_sub(interval)
                } else {
                    Duration::ZERO
                };
                next_tick(
                    self.scaler.epoch + interval.mul_f64(phase),
                    now + wait,
                    interval,
                )
            }
            Err(()) => {
                self.failures = self.failures.saturating_add(1);
                now + (interval * 2u32.saturating_pow(self.failures.min(6))).min(MAX_BACKOFF)
            }
        };
        (self, Next::At(due))
    }

    fn labels(qw: &QWorker) -> QWorkerLabels {
        QWorkerLabels {
            namespace: qw.namespace().unwrap_or_default(),
            qworker: qw.name_any(),
        }
    }

    /// One poll. `Err` when the broker could not be read.
    async fn poll(&mut self, qw: &QWorker) -> Result<(), ()> {
        let sc = &qw.spec.scale_config;
        self.scaling.set_window(Duration::from_secs(u64::from(
            sc.scale_down_stabilization_seconds(),
        )));
        let started = Instant::now();
        let depth = self.read_depth(qw).await;
        self.poll_duration.observe(started.elapsed().as_secs_f64());
        if sc.activate_vpa
            && self
                .vpa
                .last_sample
                .is_none_or(|t| t.elapsed() >= VPA_INTERVAL)
        {
            Box::pin(self.sample_usage(qw)).await;
        }
        match depth {
            Ok((length, workers)) => {
                self.scale(qw, length, workers).await;
                Ok(())
            }
            Err(e) => {
                self.parked = false;
                self.broker_failed(qw, e).await;
                Err(())
            }
        }
    }

    /// Reads the depth of `qw`'s queue (waiting plus in flight at its live workers) through its
    /// ScalerConfig's connection; with the number of live workers.
    async fn read_depth(&mut self, qw: &QWorker) -> Result<(u64, usize), BrokerUnavailable> {
        let sc = &qw.spec.scale_config;
        let config = self.config_ref(qw);
        match self.scaler.brokers.get_ref(&config).await {
            Ok(broker) => {
                let workers = live_worker_names(&self.scaler.pods, qw);
                broker
                    .depth(&sc.queue, &workers)
                    .await
                    .map(|depth| (depth, workers.len()))
                    .map_err(|e| BrokerUnavailable::from_queue(&e))
            }
            Err(e) => Err(e),
        }
    }

    /// The QWorker's ScalerConfig, built again only when the QWorker names another.
    fn config_ref(&mut self, qw: &QWorker) -> Arc<ObjectRef<ScalerConfig>> {
        let name = qw.spec.scale_config.scaler_config_ref.as_str();
        let namespace = qw.metadata.namespace.as_deref();
        match &self.config {
            Some(c) if c.name == name && c.namespace.as_deref() == namespace => c.clone(),
            _ => {
                let c = Arc::new(ObjectRef::new(name).within(namespace.unwrap_or_default()));
                self.config = Some(c.clone());
                c
            }
        }
    }

    /// Decides the desired count from the queue `length` read (with `workers` live workers),
    /// watches the queue for an early poll, writes the status, and parks the poll when it has
    /// nothing to do until a task comes.
    async fn scale(&mut self, qw: &QWorker, length: u64, workers: usize) {
        let sc = &qw.spec.scale_config;
        let observation = self.observe(qw, length);
        let current = self.current_desired(qw);
        let knobs = knobs(sc);
        let decision = self.scaling.step(&observation, &knobs, current);
        self.record_decision(qw, &observation, &decision);
        let interval = poll_interval(sc);
        // Held in the poller, not across the write below (see `size_tests`).
        self.parked = Self::idle(qw, length, workers, current, decision.replicas);
        // An idle poll is woken by the first task, whatever count that task leads to.
        let threshold = policy::wake_threshold(&knobs, decision.replicas, Some(length))
            .map(|t| if self.parked { 1 } else { t });
        self.watch_queue(qw, threshold, interval);
        // Boxed: it runs to completion at once unless there is something to write.
        Box::pin(self.write(
            qw,
            decision.replicas,
            Some(length),
            None,
            Some((&observation, &decision)),
        ))
        .await;
        self.parked = self.parked && self.written(qw, decision.replicas, length);
        if let Some(watch) = self.watch.as_deref() {
            watch.park(self.parked);
        } else {
            self.parked = false;
        }
    }

    /// Whether a QWorker has nothing for its poll to do until a task comes: the specification's
    /// rule (`QueueLength`, a function of the queue length alone), no activateVPA sampling, an
    /// empty queue, no live worker (so that nothing is in flight) and a decision that keeps the
    /// count at its lowest (`minReplicas`, with no higher recommendation left in the scale-down
    /// window). Its poll then parks: it comes again when the probe sees a task or cannot read
    /// the queue, when its spec changes, or after [`PARKED_POLL`], and writes the same as an
    /// unparked poll would.
    fn idle(qw: &QWorker, length: u64, workers: usize, current: i32, decided: i32) -> bool {
        let sc = &qw.spec.scale_config;
        sc.scaling_policy() == workerpool_api::qworker::ScalingPolicy::QueueLength
            && !sc.activate_vpa
            && length == 0
            && workers == 0
            && decided == current
            && decided == sc.min_replicas.max(0)
    }

    /// Whether the status says what this poll decided and read: nothing is left to write.
    fn written(&self, qw: &QWorker, desired: i32, length: u64) -> bool {
        let no_status = workerpool_api::QWorkerStatus::default();
        let w = self.previous(qw.status.as_ref().unwrap_or(&no_status));
        !self.vpa.dirty
            && (w.desired, w.queue_length, w.reachable) == (desired, Some(length), Some(""))
    }

    /// What this poll last wrote, or what `status` says was written before its first write.
    fn previous(&self, status: &workerpool_api::QWorkerStatus) -> Written {
        self.last
            .clone()
            .unwrap_or_else(|| Written::of_status(status))
    }

    /// What the policy sees at this poll. The pod cache is read only for the rate policy (the
    /// specification's rule needs the queue length alone, and a poll stays as cheap as before).
    fn observe(&self, qw: &QWorker, length: u64) -> policy::Observation {
        match qw.spec.scale_config.scaling_policy() {
            workerpool_api::qworker::ScalingPolicy::Rate => pod_observation(
                &self
                    .scaler
                    .pods
                    .owned_by(qw.metadata.uid.as_deref().unwrap_or_default()),
                qw,
                self.origin.elapsed(),
                length,
                Timestamp::now(),
            ),
            workerpool_api::qworker::ScalingPolicy::QueueLength => policy::Observation {
                at: self.origin.elapsed(),
                queue_length: length,
                ..policy::Observation::default()
            },
        }
    }

    /// The desired count the decision starts from: the last one written, else the status's.
    fn current_desired(&self, qw: &QWorker) -> i32 {
        self.last.as_ref().map_or_else(
            || {
                qw.status
                    .as_ref()
                    .map_or(qw.spec.scale_config.min_replicas, |s| s.desired_replicas)
            },
            |w| w.desired,
        )
    }

    /// The broker could not be read: counts the error, drops a connection whose credentials were
    /// refused, stops the early reads, and writes the error with the last desired count kept.
    async fn broker_failed(&mut self, qw: &QWorker, e: BrokerUnavailable) {
        let sc = &qw.spec.scale_config;
        let ns = qw.namespace().unwrap_or_default();
        self.scaler
            .shared
            .metrics
            .broker_errors
            .get_or_create(&BrokerErrorLabels {
                namespace: ns.clone(),
                qworker: qw.name_any(),
                category: e.category,
            })
            .inc();
        if e.is_auth_failure() {
            self.scaler.brokers.invalidate(&ns, &sc.scaler_config_ref);
        }
        // Failing polls back off; nothing reads the queue early meanwhile.
        self.watch_queue(qw, None, Duration::ZERO);
        let desired = qw
            .status
            .as_ref()
            .map_or(sc.min_replicas, |s| s.desired_replicas)
            // Keep the last answer, within bounds that may have changed since.
            .clamp(sc.min_replicas.max(0), sc.max_replicas.max(0));
        Box::pin(self.write(qw, desired, None, Some(&e), None)).await;
    }

    /// activateVPA: reads the PodMetrics of the QWorker's pods (one list call by label
    /// selector), records the largest use per container, raises memory after an OOM kill, and
    /// marks the status for writing when the record or the `ResourceMetricsAvailable`
    /// condition changed. Missing metrics never stop scaling.
    async fn sample_usage(&mut self, qw: &QWorker) {
        use crate::controllers::qworker::vpa;
        self.vpa.last_sample = Some(Instant::now());
        let status = qw.status.clone().unwrap_or_default();
        let (record, ooms) = self.vpa.load(&status);
        let listed = list_pod_metrics(&self.scaler.shared.client, qw).await;
        let live = live_worker_names(&self.scaler.pods, qw).len();
        let (condition, mut changed) = match listed {
            Ok(list) => (
                metrics_condition(list.items.len(), live),
                record_usage(record, &list.items),
            ),
            Err(e) => (metrics_unavailable(&e), false),
        };
        // OOM kills: each counted once (the seen ones are kept in the status), at most one
        // raise per window, capped; an Event names the evidence of each raise.
        let evidence = oom_evidence(&self.scaler.pods, qw);
        let (raises, oom_changed) = vpa::oom_kills(record, ooms, qw, &evidence, Timestamp::now());
        changed |= oom_changed;
        self.announce_raises(qw, &raises).await;
        let new_condition = metrics_condition_of(&status.conditions, condition, qw);
        let condition_changed = self.vpa.condition.as_ref().map(|c| (&c.status, &c.reason))
            != new_condition.as_ref().map(|c| (&c.status, &c.reason));
        self.vpa.condition = new_condition;
        self.vpa.dirty |= changed || condition_changed;
    }

    /// An Event for each memory raise after OOM kills, naming its evidence.
    async fn announce_raises(
        &self,
        qw: &QWorker,
        raises: &[crate::controllers::qworker::vpa::Raise],
    ) {
        for raise in raises {
            info!(qworker = %self.object, pod = %raise.evidence.pod, container = %raise.evidence.container, new = %raise.new.0, "OOM kill raises the memory record");
            self.scaler
                .shared
                .event(
                    &qw.object_ref(&()),
                    Reason::OOM_KILLED,
                    "ActivateVPA",
                    raise.message(),
                )
                .await;
        }
    }

    /// The decision's numbers on `/metrics`.
    fn record_decision(
        &self,
        qw: &QWorker,
        obs: &policy::Observation,
        decision: &policy::Decision,
    ) {
        if qw.spec.scale_config.scaling_policy() != workerpool_api::qworker::ScalingPolicy::Rate {
            return;
        }
        let m = &self.scaler.shared.metrics;
        let set = |quantity: &'static str, value: f64| {
            m.scaling
                .get_or_create(&crate::metrics::ScalingLabels {
                    namespace: qw.namespace().unwrap_or_default(),
                    qworker: qw.name_any(),
                    quantity,
                })
                .set(value);
        };
        if let Some(r) = decision.rates {
            set("arrival_rate", r.arrival);
            set("completion_rate", r.completion);
            set("worker_throughput", r.throughput);
        }
        set("arrival_need", decision.arrival_need);
        set("projected_backlog", decision.projected_backlog);
        set("ready_workers", f64::from(obs.ready));
        set("starting_workers", obs.starting.len() as f64);
        set("startup_seconds", obs.startup_seconds.unwrap_or(0.0));
        set(
            "ineffective",
            if decision.evidence.is_some() {
                1.0
            } else {
                0.0
            },
        );
    }

    /// A Warning Event when scaling becomes ineffective (with the evidence), a Normal one when
    /// it helps again.
    async fn ineffective_events(&mut self, qw: &QWorker, decision: Option<&policy::Decision>) {
        let Some(d) = decision else { return };
        let now = d.evidence.is_some();
        if now == self.ineffective {
            return;
        }
        self.ineffective = now;
        let object = qw.object_ref(&());
        match d.evidence {
            Some(e) => {
                warn!(qworker = %self.object, evidence = %e, "scaling is ineffective; holding the worker count");
                self.scaler
                    .shared
                    .event(
                        &object,
                        Reason::INEFFECTIVE,
                        "Autoscale",
                        format!(
                            "More workers do not raise the completion rate ({e}); holding at most {} worker(s) and probing every {} s",
                            d.replicas,
                            policy::PROBE_SECONDS
                        ),
                    )
                    .await;
            }
            None => {
                self.scaler
                    .shared
                    .event(
                        &object,
                        Reason::EFFECTIVE,
                        "Autoscale",
                        "More workers raise the completion rate again; scaling resumes".into(),
                    )
                    .await;
            }
        }
    }

    /// Writes the autoscaler's part of the status if it changed.
    async fn write(
        &mut self,
        qw: &QWorker,
        desired: i32,
        length: Option<u64>,
        error: Option<&BrokerUnavailable>,
        decision: Option<(&policy::Observation, &policy::Decision)>,
    ) {
        let reachable_key = error.map(|e| e.reason).or(Some(""));
        // Borrowed: this runs on every poll of every QWorker, and the status can be large.
        let no_status = workerpool_api::QWorkerStatus::default();
        let status = qw.status.as_ref().unwrap_or(&no_status);
        let previous = self.previous(status);
        let changed_desired = previous.desired != desired;
        if self.last_decision.is_none() {
            self.restore_decision(status);
        }
        // Whether scaling became ineffective or effective again: recorded even without a change
        // of the count, so that the Scaling condition follows.
        let changed_effect =
            decision.is_some_and(|(_, d)| d.evidence.is_some() != self.ineffective);
        let new_decision = match decision {
            Some((obs, d)) if changed_desired || changed_effect => {
                Some(self.keep_decision(qw, previous.desired, obs, d))
            }
            _ => None,
        };
        self.ineffective_events(qw, decision.map(|(_, d)| d)).await;
        let changed_reachability = previous.reachable != reachable_key;
        if !(changed_desired
            || changed_effect
            || changed_reachability
            || previous.stale_length(length)
            || self.vpa.dirty)
        {
            return;
        }
        let now = Timestamp::now();
        let written_length = length.or(previous.queue_length);
        let fields = self.status_fields(
            desired,
            broker_condition(qw, status, length, error, now),
            last_scale_time(status, changed_desired, now),
            written_length,
        );
        let handed_over =
            self.may_hand_over(qw, error) && Box::pin(self.hand_over(desired, &fields)).await;
        if !handed_over && !self.apply(qw, &fields).await {
            return;
        }
        self.vpa.dirty = false;
        self.last = Some(Written {
            desired,
            queue_length: written_length,
            reachable: reachable_key,
            at: Some(Instant::now()),
        });
        if changed_desired {
            self.announce_scale(qw, previous.desired, desired, length, new_decision.as_ref())
                .await;
        }
        if changed_reachability {
            self.announce_reachability(qw, error, previous.reachable, desired)
                .await;
        }
    }

    /// Whether this write may go through the reconciler ([`answer`]): the first of this poll,
    /// for a QWorker without a status, with the queue read.
    fn may_hand_over(&self, qw: &QWorker, error: Option<&BrokerUnavailable>) -> bool {
        self.last.is_none() && qw.status.is_none() && error.is_none()
    }

    /// Hands `fields` to the reconciler, to be written with its own; whether they were.
    async fn hand_over(&self, desired: i32, fields: &AutoscalerStatus<'_>) -> bool {
        let Ok(fields) = serde_json::to_value(fields) else {
            return false;
        };
        let written = self.answer.hand_over(desired, fields).await;
        debug!(qworker = %self.object, ?written, "first status fields handed to the reconciler");
        written == Some(true)
    }

    /// Applies the autoscaler's status `fields` to `qw`; false (with a warning) when that failed.
    async fn apply(&self, qw: &QWorker, fields: &AutoscalerStatus<'_>) -> bool {
        let api: Api<QWorker> = Api::namespaced(
            self.scaler.shared.client.clone(),
            &qw.namespace().unwrap_or_default(),
        );
        // Boxed while it runs (see `size_tests`).
        if let Err(e) = Box::pin(crate::apply::apply_status_as(
            &api,
            &qw.name_any(),
            AUTOSCALER_MANAGER,
            fields,
        ))
        .await
        {
            warn!(qworker = %self.object, error = %e, "could not write the desired count");
            return false;
        }
        true
    }

    /// First write since the start: takes the last decision from the status (a hold recorded
    /// before a restart is lifted by the next decision, which starts afresh).
    fn restore_decision(&mut self, status: &workerpool_api::QWorkerStatus) {
        self.last_decision = status
            .last_scale_decision
            .as_ref()
            .and_then(|d| serde_json::to_value(d).ok());
        self.ineffective = ineffective_condition(status).is_some();
    }

    /// The status record of the decision `d` on `obs` that changes the count from `from` (or
    /// the effect of scaling): counted on `/metrics` and kept for the status writes.
    fn keep_decision(
        &mut self,
        qw: &QWorker,
        from: i32,
        obs: &policy::Observation,
        d: &policy::Decision,
    ) -> workerpool_api::qworker::ScaleDecision {
        let record = scale_decision(from, obs, d, &qw.spec.scale_config);
        self.scaler
            .shared
            .metrics
            .scale_decisions
            .get_or_create(&crate::metrics::DecisionLabels {
                namespace: qw.namespace().unwrap_or_default(),
                qworker: qw.name_any(),
                term: d.term.as_str(),
            })
            .inc();
        self.last_decision = serde_json::to_value(&record).ok();
        record
    }

    /// The status fields the autoscaler applies: `desired`, the conditions, the last decision,
    /// the queue length and the activateVPA record.
    fn status_fields(
        &self,
        desired: i32,
        broker_condition: Option<Condition>,
        last_scale_time: Option<Time>,
        queue_length: Option<u64>,
    ) -> AutoscalerStatus<'_> {
        let vpa = self.vpa.record.as_ref();
        AutoscalerStatus {
            desired_replicas: desired,
            conditions: broker_condition
                .into_iter()
                .chain(self.vpa.condition.clone())
                .collect(),
            last_scale_time,
            last_scale_decision: self.last_decision.as_ref(),
            queue_length,
            max_container_resources_usage: vpa,
            oom_kills_seen: vpa.map(|_| self.vpa.ooms.seen.as_slice()),
            last_oom_raise_time: vpa.and(self.vpa.ooms.last_raise).map(Time),
        }
    }

    /// An Event for a written change of the desired count from `from` to `desired`, with the
    /// decision's message when there is one.
    async fn announce_scale(
        &self,
        qw: &QWorker,
        from: i32,
        desired: i32,
        length: Option<u64>,
        decision: Option<&workerpool_api::qworker::ScaleDecision>,
    ) {
        let direction = if desired > from {
            Reason::SCALED_UP
        } else {
            Reason::SCALED_DOWN
        };
        info!(qworker = %self.object, from, to = desired, queue_length = ?length, term = decision.map(|d| d.term.as_str()), "desired workers changed");
        let message = decision.map_or_else(
            || {
                format!(
                    "Desired workers {from} -> {desired} (queue length {}, scalingFactor {})",
                    length.map_or_else(|| "unknown".to_string(), |l| l.to_string()),
                    qw.spec.scale_config.scaling_factor
                )
            },
            |d| d.message.clone(),
        );
        self.scaler
            .shared
            .event(&qw.object_ref(&()), direction, "Autoscale", message)
            .await;
    }

    /// An Event for a written change of the broker's reachability: a Warning with the `error`,
    /// or a Normal one when the queue can be read again after an error.
    async fn announce_reachability(
        &self,
        qw: &QWorker,
        error: Option<&BrokerUnavailable>,
        previous: Option<&'static str>,
        desired: i32,
    ) {
        match error {
            Some(e) => {
                warn!(qworker = %self.object, reason = e.reason, "broker unreachable; keeping {desired} desired workers");
                self.scaler
                    .shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::warning(e.reason),
                        "ReadQueue",
                        format!("{}; keeping {desired} desired worker(s)", e.message),
                    )
                    .await;
            }
            None if previous.is_some_and(|r| !r.is_empty()) => {
                self.scaler
                    .shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::BROKER_REACHABLE,
                        "ReadQueue",
                        "The queue can be read again".into(),
                    )
                    .await;
            }
            None => {}
        }
    }
}

/// `status.lastScaleTime` after a write: now when the desired count changed, else as it was.
fn last_scale_time(
    status: &workerpool_api::QWorkerStatus,
    changed_desired: bool,
    now: Timestamp,
) -> Option<Time> {
    if changed_desired {
        Some(Time(now))
    } else {
        status.last_scale_time.clone()
    }
}

/// The `BrokerReachable` condition as `status` has it after a poll that read `length`, or
/// failed with `error`.
fn broker_condition(
    qw: &QWorker,
    status: &workerpool_api::QWorkerStatus,
    length: Option<u64>,
    error: Option<&BrokerUnavailable>,
    now: Timestamp,
) -> Option<Condition> {
    let mut conds = status.conditions.clone();
    let condition = match error {
        None => NewCondition::new(
            BROKER_REACHABLE,
            true,
            "QueueRead",
            format!("queue length {}", length.unwrap_or(0)),
        ),
        Some(e) => NewCondition::new(BROKER_REACHABLE, false, e.reason, &e.message),
    };
    conditions::set_condition(&mut conds, condition, qw.metadata.generation, now);
    conditions::find(&conds, BROKER_REACHABLE).cloned()
}

/// Lists the PodMetrics of `qw`'s pods (one call by label selector).
async fn list_pod_metrics(
    client: &kube::Client,
    qw: &QWorker,
) -> kube::Result<kube::core::ObjectList<kube::core::DynamicObject>> {
    use crate::controllers::qworker::build;
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &qw.namespace().unwrap_or_default(),
        &pod_metrics_resource(),
    );
    Box::pin(api.list(&kube::api::ListParams::default().labels(&build::selector(qw)))).await
}

/// Records in `record` the use of each container of the PodMetrics `items`, keeping the
/// largest; says whether the record changed.
fn record_usage(
    record: &mut crate::controllers::qworker::vpa::Usage,
    items: &[kube::core::DynamicObject],
) -> bool {
    use crate::controllers::qworker::vpa;
    let mut changed = false;
    for item in items {
        for c in item.data["containers"].as_array().into_iter().flatten() {
            let Some(name) = c["name"].as_str() else {
                continue;
            };
            let Ok(usage) = serde_json::from_value(c["usage"].clone()) else {
                continue;
            };
            // One container of one pod at a time: the record keeps the largest.
            let sample = vpa::Usage::from([(name.to_string(), usage)]);
            changed |= vpa::record(record, &sample);
        }
    }
    changed
}

/// `ResourceMetricsAvailable` after `read` of the `live` worker pods had metrics.
fn metrics_condition(read: usize, live: usize) -> NewCondition {
    use workerpool_api::conditions::RESOURCE_METRICS_AVAILABLE;
    if read < live {
        NewCondition::new(
            RESOURCE_METRICS_AVAILABLE,
            false,
            "MetricsPending",
            format!("{read} of {live} worker pod(s) have metrics yet; scaling goes on"),
        )
    } else {
        NewCondition::new(
            RESOURCE_METRICS_AVAILABLE,
            true,
            "MetricsRead",
            format!("usage read for {read} pod(s)"),
        )
    }
}

/// `ResourceMetricsAvailable` when the PodMetrics could not be listed.
fn metrics_unavailable(e: &kube::Error) -> NewCondition {
    NewCondition::new(
        workerpool_api::conditions::RESOURCE_METRICS_AVAILABLE,
        false,
        "MetricsUnavailable",
        format!(
            "cannot read metrics.k8s.io PodMetrics ({e}); is metrics-server installed? Scaling goes on"
        ),
    )
}

/// `ResourceMetricsAvailable` as the QWorker's `conditions` have it once `condition` is set.
fn metrics_condition_of(
    conditions: &[Condition],
    condition: NewCondition,
    qw: &QWorker,
) -> Option<Condition> {
    let mut conds = conditions.to_vec();
    conditions::set_condition(
        &mut conds,
        condition,
        qw.metadata.generation,
        Timestamp::now(),
    );
    conditions::find(
        &conds,
        workerpool_api::conditions::RESOURCE_METRICS_AVAILABLE,
    )
    .cloned()
}

/// The OOM kills that the pods of `qw` in the cache show.
fn oom_evidence(pods: &crate::cache::Owned<Pod>, qw: &QWorker) -> Vec<workerpool_api::OomKill> {
    let uid = qw.metadata.uid.as_deref();
    pods.owned_by(uid.unwrap_or_default())
        .iter()
        .filter(|p| p.namespace() == qw.namespace() && owned_by(p, uid))
        .flat_map(|p| crate::controllers::qworker::vpa::oom_evidence(p))
        .collect()
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A QWorker's poll state lives for as long as the QWorker, so it is the per-QWorker memory
    /// of the autoscaler: the rare, large steps of a poll (a status write, an Event, a metrics
    /// read, connecting) are boxed while they run instead of being reserved in every poller, and
    /// a resting poll is its poller and its place in a schedule, not a task and a timer (1.2 KB
    /// per waiting task before, its future holding the poller).
    #[tokio::test]
    async fn a_resting_poll_stays_small() {
        let resting = std::mem::size_of::<Poller>() + schedule::MEMBER_SIZE;
        println!(
            "resting poll: {resting} bytes, of which the poller {} bytes and its place in the schedule {} bytes",
            std::mem::size_of::<Poller>(),
            schedule::MEMBER_SIZE
        );
        assert!(resting <= 896, "a resting poll takes {resting} bytes");
    }
}

#[cfg(test)]
mod tick_tests {
    use super::*;

    #[test]
    fn polls_of_one_interval_fall_on_the_same_ticks() {
        let epoch = tokio::time::Instant::now();
        let s = Duration::from_secs(1);
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        // Two pollers that started out of phase meet on the same tick.
        assert_eq!(next_tick(epoch, at(130), s), at(1000));
        assert_eq!(next_tick(epoch, at(870), s), at(1000));
        // A poll that ends exactly on a tick waits for the next one, never for none.
        assert_eq!(next_tick(epoch, at(1000), s), at(2000));
        assert_eq!(next_tick(epoch, at(0), s), at(1000));
        assert_eq!(next_tick(epoch, at(4500), Duration::from_secs(3)), at(6000));
    }

    #[test]
    fn the_phase_is_the_tenth_of_the_interval_at_or_before_the_first_poll() {
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(phase(ms(0), s), 0.0);
        assert_eq!(phase(ms(330), s), 0.3);
        assert_eq!(phase(ms(399), s), 0.3);
        assert_eq!(phase(ms(7_950), s), 0.9);
        assert_eq!(phase(ms(4_500), Duration::from_secs(3)), 0.5);
        // The next poll then comes 90-100 % of an interval after the first.
        let epoch = tokio::time::Instant::now();
        for first in [130u64, 399, 400, 999, 5_001] {
            let at = epoch + ms(first);
            let p = phase(ms(first), s);
            let next = next_tick(epoch + s.mul_f64(p), at, s);
            let gap = next - at;
            assert!(
                gap > ms(900) && gap <= s,
                "first poll at {first} ms: next after {gap:?}"
            );
        }
    }
}

#[cfg(test)]
mod observation_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn qworker() -> QWorker {
        let mut qw = QWorker::new("w", Default::default());
        qw.metadata.namespace = Some("ns".into());
        qw.metadata.uid = Some("uid-1".into());
        qw
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    /// A pod created at `created`, ready since `ready_at` (if any), maybe draining or ended.
    fn pod(name: &str, created: i64, ready_at: Option<i64>, drain: bool, phase: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.creation_timestamp = Some(Time(t(created)));
        p.metadata.owner_references = Some(vec![OwnerReference {
            uid: "uid-1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        if drain {
            p.metadata.annotations = Some(
                [(
                    workerpool_queue::protocol::DRAIN_ANNOTATION.to_string(),
                    "scale-down".to_string(),
                )]
                .into(),
            );
        }
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: ready_at.map(|r| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(t(r))),
                    ..PodCondition::default()
                }]
            }),
            ..PodStatus::default()
        });
        Arc::new(p)
    }

    #[test]
    fn observation_counts_ready_draining_and_starting_pods_and_the_startup_time() {
        let pods = vec![
            pod("a", 0, Some(10), false, "Running"),
            pod("b", 0, Some(20), false, "Running"),
            pod("c", 0, Some(12), false, "Running"),
            pod("d", 0, Some(5), true, "Running"),
            pod("e", 90, None, false, "Pending"),
            pod("f", 0, Some(5), false, "Succeeded"),
        ];
        let mut foreign = (*pod("g", 0, Some(3), false, "Running")).clone();
        foreign.metadata.owner_references = None;
        let mut pods = pods;
        pods.push(Arc::new(foreign));
        let obs = pod_observation(&pods, &qworker(), Duration::from_secs(7), 42, t(100));
        assert_eq!(obs.at, Duration::from_secs(7));
        assert_eq!(obs.queue_length, 42);
        assert_eq!((obs.ready, obs.draining), (3, 1));
        assert_eq!(obs.starting, vec![10.0]);
        assert_eq!(obs.startup_seconds, Some(12.0), "median of 10, 12 and 20 s");
    }

    #[test]
    fn decision_record_names_the_term_and_the_rates() {
        let obs = policy::Observation {
            queue_length: 450,
            ready: 5,
            starting: vec![1.0, 2.0],
            startup_seconds: Some(10.0),
            ..policy::Observation::default()
        };
        let d = policy::Decision {
            replicas: 55,
            term: policy::Term::Backlog,
            arrival_need: 50.0,
            backlog_workers: 5.0,
            projected_backlog: 895.0,
            rates: Some(policy::Rates {
                arrival: 50.004,
                completion: 5.0,
                throughput: 1.0,
            }),
            evidence: None,
        };
        let sc = qworker().spec.scale_config;
        let r = scale_decision(5, &obs, &d, &sc);
        assert_eq!(
            (r.queue_length, r.ready_workers, r.starting_workers),
            (450, None, None),
            "QueueLength reads no pods"
        );
        let mut rated = qworker().spec.scale_config;
        rated.scaling_policy = Some(workerpool_api::qworker::ScalingPolicy::Rate);
        let r = scale_decision(5, &obs, &d, &rated);
        assert_eq!((r.from, r.to, r.term.as_str()), (5, 55, "Backlog"));
        assert_eq!((r.ready_workers, r.starting_workers), (Some(5), Some(2)));
        assert_eq!(r.arrival_rate, Some(50.0));
        assert!(r.message.contains("arrivals 50.00/s"), "{}", r.message);
        let mut status = workerpool_api::QWorkerStatus::default();
        assert!(ineffective_condition(&status).is_none());
        let mut held = r.clone();
        held.term = "Ineffective".into();
        status.last_scale_decision = Some(held);
        let c = ineffective_condition(&status).expect("condition");
        assert_eq!((c.status, c.reason.as_str()), (false, "Ineffective"));
    }
}
