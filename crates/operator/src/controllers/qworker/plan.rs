//! The QWorker controller's decisions, as pure functions of what it observed: which pods to
//! create, drain and delete, which in-flight task lists to return to the queue, and when the
//! task-recovery finalizer of a deleted pod may be released.
//!
//! Crashed pods (the worker exited non-zero and will not be restarted, as under
//! `restartPolicy: Never`, whatever the pod's phase: a sidecar may keep it `Running`) are kept
//! for inspection, the newest [`KEEP_FAILED`], and their replacements back off exponentially
//! ([`crash_backoff`]); the state of the backoff is in the API: the pods' `finishedAt` and their
//! [`CRASH_STREAK_ANNOTATION`]. A pod that was evicted, preempted or stopped by a node shutdown
//! ([`PodView::disrupted`]) did not crash: it is replaced at once.
//!
//! The worker container is found by name: the name recorded on the pod at creation
//! ([`WORKER_CONTAINER_ANNOTATION`]), else (pods of older versions) the first container of the
//! spec. Admission webhooks may insert sidecars anywhere, first too. Only the worker container
//! takes tasks, so a pod's work is over when its worker container has terminated and will not
//! be restarted, whatever the pod's phase.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::build::{
    DRAIN_ANNOTATION, POD_NAME_ALPHABET, POD_SPEC_HASH_LABEL, WORKER_CONTAINER_ANNOTATION,
};

pub use workerpool_queue::protocol::RECOVERY_FINALIZER;
/// After a deleted pod's kill deadline (`deletionTimestamp`) has passed by this much, its
/// containers are taken as stopped even if no kubelet reported so.
pub const STOP_MARGIN: Duration = Duration::from_secs(10);
/// How long a stopped pod's finalizer is held while its tasks cannot be returned (the broker
/// is unreachable); then it is released and the periodic sweep returns the tasks later.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(300);
/// How many crashed pods (phase Failed, worker exited non-zero) are kept for inspection, newest
/// first; older ones are deleted.
pub const KEEP_FAILED: usize = 3;
/// A kept crashed pod is deleted this long after its worker ended.
pub const FAILED_RETENTION: Duration = Duration::from_secs(3600);
/// Wait before replacing the first crashed pod of a streak; doubled for each further crash.
pub const CRASH_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest wait before replacing crashed pods.
pub const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A crash that ends this long or more after the previous one starts a new streak.
pub const CRASH_STREAK_RESET: Duration = Duration::from_secs(600);
/// How soon a QWorker whose worker crash-loops in place is looked at again.
pub const IN_PLACE_RECHECK: Duration = Duration::from_secs(30);
/// Annotation a crashed pod gets once its in-flight tasks went back to the queue: its place
/// (1, 2, ...) in the QWorker's streak of crashes. Kept in the API, so an operator restart does
/// not reset the backoff.
pub const CRASH_STREAK_ANNOTATION: &str = "quickube.com/crash-streak";

/// Why a pod is asked to drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainReason {
    /// The desired count went down.
    ScaleDown,
    /// The pod runs an old pod template.
    StaleHash,
}

impl DrainReason {
    /// The drain annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::ScaleDown => "scale-down",
            DrainReason::StaleHash => "stale-hash",
        }
    }
}

/// The state of a pod's worker container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    /// No status reported for it yet.
    Unknown,
    /// Waiting and never ran (creating, pulling its image, ...).
    NeverRan,
    /// Running, or waiting to be restarted after it ran.
    Ran,
    /// Terminated (and not restarted).
    Terminated,
}

/// What the planner needs to know of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its `quickube.com/pod-spec-hash` label.
    pub hash: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `metadata.deletionTimestamp`: the pod is being deleted; its containers are killed by then.
    pub deletion: Option<Timestamp>,
    /// Carries the drain annotation.
    pub draining: bool,
    /// The Ready condition is true.
    pub ready: bool,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// `spec.nodeName` is set: the pod may have run.
    pub bound: bool,
    /// The worker container's state.
    pub worker: Worker,
    /// Carries [`RECOVERY_FINALIZER`].
    pub finalizer: bool,
    /// The worker container's exit, when it terminated: (exit code, reason, finishedAt).
    pub exit: Option<Exit>,
    /// The [`CRASH_STREAK_ANNOTATION`] value: the pod's crash was counted and its tasks returned.
    pub streak: Option<u32>,
    /// `spec.restartPolicy` (`Always`, the API's default, when unset).
    pub restart_policy: Option<String>,
    /// The pod was evicted, preempted or stopped by a node shutdown (see
    /// [`PodView::disrupted`]): why, as the API reports it.
    pub disruption: Option<String>,
    /// The worker container waits in `CrashLoopBackOff` (restarted in place by the kubelet
    /// after crashes, under `restartPolicy: OnFailure`): its restarts and its last exit.
    pub restarting: Option<(i32, Option<Exit>)>,
}

/// Pod `status.reason` values of a pod that was stopped from outside, not by its worker:
/// kubelet evictions under node pressure, graceful node shutdowns, preemption.
const DISRUPTION_REASONS: [&str; 5] = [
    "Evicted",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "Preempting",
];

/// Why a pod was disrupted: its `DisruptionTarget` condition (eviction API, preemption, taint
/// manager, kubelet termination), else a [`DISRUPTION_REASONS`] status reason.
fn disruption(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if let Some(c) = condition {
        return Some(
            c.reason
                .clone()
                .unwrap_or_else(|| "DisruptionTarget".into()),
        );
    }
    status
        .reason
        .as_deref()
        .filter(|r| DISRUPTION_REASONS.contains(r))
        .map(str::to_string)
}

/// How a worker container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code.
    pub code: i32,
    /// The kubelet's reason (`Error`, `OOMKilled`, ...).
    pub reason: Option<String>,
    /// When it ended.
    pub finished: Option<Timestamp>,
}

fn worker_exit(status: Option<&ContainerStatus>) -> Option<Exit> {
    let t = status?.state.as_ref()?.terminated.as_ref()?;
    Some(Exit {
        code: t.exit_code,
        reason: t.reason.clone(),
        finished: t.finished_at.as_ref().map(|t| t.0),
    })
}

fn worker_state(status: Option<&ContainerStatus>) -> Worker {
    let Some(cs) = status else {
        return Worker::Unknown;
    };
    let state = cs.state.as_ref();
    if state.is_some_and(|s| s.terminated.is_some()) {
        Worker::Terminated
    } else if state.is_some_and(|s| s.running.is_some())
        || cs.restart_count > 0
        || cs
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
    {
        Worker::Ran
    } else if state.is_some_and(|s| s.waiting.is_some()) {
        Worker::NeverRan
    } else {
        Worker::Unknown
    }
}

impl PodView {
    /// The planner's view of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let worker_name = pod
            .annotations()
            .get(WORKER_CONTAINER_ANNOTATION)
            .or_else(|| spec.and_then(|s| s.containers.first()).map(|c| &c.name));
        let worker_status = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| Some(&c.name) == worker_name));
        Self {
            name: pod.name_any(),
            hash: pod.labels().get(POD_SPEC_HASH_LABEL).cloned(),
            phase: status.and_then(|s| s.phase.clone()),
            deletion: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            draining: pod
                .annotations()
                .get(DRAIN_ANNOTATION)
                .is_some_and(|v| !v.is_empty()),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            bound: spec.and_then(|s| s.node_name.as_ref()).is_some(),
            worker: worker_state(worker_status),
            finalizer: pod.finalizers().iter().any(|f| f == RECOVERY_FINALIZER),
            exit: worker_exit(worker_status),
            streak: pod
                .annotations()
                .get(CRASH_STREAK_ANNOTATION)
                .and_then(|v| v.parse().ok()),
            restart_policy: spec.and_then(|s| s.restart_policy.clone()),
            disruption: disruption(pod),
            restarting: worker_status
                .filter(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                })
                .map(|c| {
                    let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
                    let exit = last.map(|t| Exit {
                        code: t.exit_code,
                        reason: t.reason.clone(),
                        finished: t.finished_at.as_ref().map(|t| t.0),
                    });
                    (c.restart_count, exit)
                }),
        }
    }

    /// Stopped from outside (evicted, preempted, a node shutdown), not by its worker.
    pub fn disrupted(&self) -> bool {
        self.disruption.is_some()
    }

    /// The worker container terminated and the kubelet will not start it again: any exit under
    /// `Never`, a successful one under `OnFailure` (never under `Always`).
    pub fn worker_done(&self) -> bool {
        self.worker == Worker::Terminated
            && match self.restart_policy.as_deref() {
                Some("Never") => true,
                Some("OnFailure") => self.exit.as_ref().is_some_and(|e| e.code == 0),
                _ => false,
            }
    }

    /// The worker exited with a non-zero code and will not be restarted (whatever the pod's
    /// phase: a sidecar may keep it `Running`), and the pod was not stopped from outside.
    pub fn crashed(&self) -> bool {
        !self.disrupted()
            && self.exit.as_ref().is_some_and(|e| e.code != 0)
            && (self.phase.as_deref() == Some("Failed") || self.worker_done())
    }

    /// When the worker ended, else when the pod was created.
    fn ended(&self) -> Option<Timestamp> {
        self.exit.as_ref().and_then(|e| e.finished).or(self.created)
    }

    /// The pod's work is over: Succeeded or Failed, or its worker is done (a sidecar may keep
    /// the pod `Running`).
    pub fn terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed")) || self.worker_done()
    }

    /// Being deleted.
    pub fn terminating(&self) -> bool {
        self.deletion.is_some()
    }

    /// The worker never ran, so the pod holds no task: it can be deleted instead of drained.
    pub fn never_started(&self) -> bool {
        !self.terminal() && (!self.bound || self.worker == Worker::NeverRan)
    }

    /// The worker container will take no more tasks: it terminated, never ran, or the pod is
    /// finished; for a pod being deleted, also once its kill deadline passed by [`STOP_MARGIN`].
    pub fn worker_stopped(&self, now: Timestamp) -> bool {
        self.terminal()
            || self.never_started()
            || self.worker == Worker::Terminated
            || self
                .deletion
                .is_some_and(|d| now.duration_since(d).as_secs_f64() >= STOP_MARGIN.as_secs_f64())
    }
}

/// Whether `name` has the shape of a worker pod name this operator gives
/// (`<qworker>-<5 characters of the pod-name alphabet>`, the QWorker's name cut to 57
/// characters): the sweep leaves alone the lists of workers that are not pods of it (a worker
/// run outside Kubernetes on the same queue, `worker-1`).
pub fn is_generated_pod_name(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(prefix, suffix)| {
        (1..=57).contains(&prefix.chars().count())
            && suffix.len() == 5
            && suffix.bytes().all(|b| POD_NAME_ALPHABET.contains(&b))
    })
}

/// What the QWorker reconciler observed.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The QWorker's name.
    pub qworker: &'a str,
    /// Its pods (by controller ownerReference), terminating ones included.
    pub pods: &'a [PodView],
    /// The current pod-spec hash.
    pub hash: &'a str,
    /// The desired number of workers, within the bounds.
    pub desired: i32,
    /// Names of pods created but not yet seen in the cache.
    pub pending_creates: &'a HashSet<String>,
    /// Names of pods asked to drain but not yet seen so in the cache.
    pub pending_drains: &'a HashSet<String>,
    /// The time of the decision.
    pub now: Timestamp,
}

/// Replacements of crashed pods wait: the pool is crash-looping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashLoop {
    /// The newest crashed pod.
    pub pod: String,
    /// Its worker's exit code.
    pub exit_code: i32,
    /// Its worker's exit reason.
    pub reason: Option<String>,
    /// Crashes in a row.
    pub streak: u32,
    /// When pods may be created again, from now.
    pub retry_in: Duration,
    /// The kubelet restarts the crashing worker in place (`restartPolicy: OnFailure`): the pod
    /// is not replaced and `streak` counts its restarts.
    pub in_place: bool,
}

impl CrashLoop {
    /// The `Scaling=False, CrashLooping` condition message.
    pub fn message(&self) -> String {
        if self.in_place {
            return format!(
                "the worker of pod {} keeps crashing: exit code {} ({}), restarted {} time(s) by the kubelet, now in CrashLoopBackOff (kubectl logs {} --previous)",
                self.pod,
                self.exit_code,
                self.reason.as_deref().unwrap_or("no reason"),
                self.streak,
                self.pod
            );
        }
        format!(
            "worker pod {} failed with exit code {} ({}), {} crash(es) in a row; the next pod is created {}s after that crash (the pod is kept for inspection: kubectl logs {})",
            self.pod,
            self.exit_code,
            self.reason.as_deref().unwrap_or("no reason"),
            self.streak,
            crash_backoff(self.streak).as_secs(),
            self.pod
        )
    }
}

/// The wait before replacing a pod after `streak` crashes in a row.
pub fn crash_backoff(streak: u32) -> Duration {
    let factor = 2u32.saturating_pow(streak.saturating_sub(1).min(16));
    CRASH_BACKOFF_BASE
        .saturating_mul(factor)
        .min(CRASH_BACKOFF_MAX)
}

/// What one reconcile does to a QWorker's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New pods to create.
    pub create: usize,
    /// Pods to ask to drain, with the reason.
    pub drain: Vec<(String, DrainReason)>,
    /// Pods to delete: finished (crashed ones beyond those kept), drained and done, or never
    /// started.
    pub delete: Vec<String>,
    /// Workers whose in-flight tasks go back to the queue first: pods to delete that carry no
    /// recovery finalizer (made by an older version).
    pub recover: Vec<String>,
    /// Live workers after the plan: not terminal, not terminating, not draining.
    pub current: i32,
    /// Crashed pods kept for inspection, seen for the first time: return their in-flight
    /// tasks to the queue, then annotate them with their place in the crash streak.
    pub mark_crashed: Vec<(String, u32)>,
    /// Set while creations wait for the crash backoff.
    pub crash_loop: Option<CrashLoop>,
    /// When the first kept crashed pod's retention ([`FAILED_RETENTION`]) ends, from now: the
    /// QWorker is looked at again then, as no event marks it.
    pub next_expiry: Option<Duration>,
}

impl Plan {
    /// Plans the deletion of `p`, and the return of its tasks when no finalizer will return them.
    fn delete_pod(&mut self, p: &PodView) {
        self.delete.push(p.name.clone());
        if !p.finalizer && !p.never_started() {
            self.recover.push(p.name.clone());
        }
    }
}

/// The crashed pods not being deleted, oldest first, so that each crash's streak follows from
/// the one before.
fn crashed_oldest_first(pods: &[PodView]) -> Vec<&PodView> {
    let mut crashed: Vec<&PodView> = pods
        .iter()
        .filter(|p| !p.terminating() && p.crashed())
        .collect();
    crashed.sort_by(|a, b| a.ended().cmp(&b.ended()).then_with(|| a.name.cmp(&b.name)));
    crashed
}

/// Each crashed pod's place in its streak: its annotation, else one more than the crash
/// before when that ended less than [`CRASH_STREAK_RESET`] earlier, else 1.
fn crash_streaks(crashed: &[&PodView]) -> Vec<u32> {
    let mut streaks: Vec<u32> = Vec::with_capacity(crashed.len());
    for (i, p) in crashed.iter().enumerate() {
        let streak = p.streak.unwrap_or_else(|| match i.checked_sub(1) {
            Some(prev) => {
                let gap = match (crashed[prev].ended(), p.ended()) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
                    _ => 0.0,
                };
                if gap < CRASH_STREAK_RESET.as_secs_f64() {
                    streaks[prev].saturating_add(1)
                } else {
                    1
                }
            }
            None => 1,
        });
        streaks.push(streak);
    }
    streaks
}

/// The crashed pods kept for inspection (the newest [`KEEP_FAILED`], within
/// [`FAILED_RETENTION`]); those seen for the first time go to `out.mark_crashed`.
fn keep_crashed<'a>(
    o: &Observed<'_>,
    crashed: &[&'a PodView],
    streaks: &[u32],
    out: &mut Plan,
) -> HashSet<&'a str> {
    let keep_from = crashed.len().saturating_sub(KEEP_FAILED);
    let mut kept: HashSet<&str> = HashSet::new();
    for (i, p) in crashed.iter().enumerate() {
        let expired = p.ended().is_some_and(|t| {
            o.now.duration_since(t).as_secs_f64() >= FAILED_RETENTION.as_secs_f64()
        });
        if i >= keep_from && !expired {
            kept.insert(p.name.as_str());
            if let Some(t) = p.ended() {
                let left = (FAILED_RETENTION.as_secs_f64() - o.now.duration_since(t).as_secs_f64())
                    .max(0.0);
                let left = Duration::from_secs_f64(left);
                out.next_expiry = Some(out.next_expiry.map_or(left, |e| e.min(left)));
            }
            if p.streak.is_none() {
                out.mark_crashed.push((p.name.clone(), streaks[i]));
            }
        }
    }
    kept
}

/// The crash backoff still running after the newest crash, if any.
fn crash_backoff_left(
    o: &Observed<'_>,
    crashed: &[&PodView],
    streaks: &[u32],
) -> Option<CrashLoop> {
    let (newest, &streak) = (crashed.last()?, streaks.last()?);
    let since = newest
        .ended()
        .map_or(0.0, |t| o.now.duration_since(t).as_secs_f64().max(0.0));
    let wait = crash_backoff(streak).as_secs_f64() - since;
    (wait > 0.0).then(|| CrashLoop {
        pod: newest.name.clone(),
        exit_code: newest.exit.as_ref().map_or(0, |e| e.code),
        reason: newest.exit.as_ref().and_then(|e| e.reason.clone()),
        streak,
        retry_in: Duration::from_secs_f64(wait),
        in_place: false,
    })
}

/// Sorts the pods that are not kept nor being deleted: finished, drained or stale ones are
/// deleted or drained into `out`; the live pods of the current template are returned.
fn classify<'a>(o: &Observed<'a>, kept: &HashSet<&str>, out: &mut Plan) -> Vec<&'a PodView> {
    let mut fresh: Vec<&PodView> = Vec::new();
    for p in o.pods {
        if p.terminating() || kept.contains(p.name.as_str()) {
            continue;
        }
        if p.terminal() {
            out.delete_pod(p);
        } else if p.draining {
            if p.never_started() || p.worker == Worker::Terminated {
                out.delete_pod(p);
            }
        } else if o.pending_drains.contains(&p.name) {
            continue;
        } else if p.hash.as_deref() != Some(o.hash) {
            if p.never_started() {
                out.delete_pod(p);
            } else {
                out.drain.push((p.name.clone(), DrainReason::StaleHash));
            }
        } else {
            fresh.push(p);
        }
    }
    fresh
}

/// Removes `excess` of the `fresh` pods: never started first, then not ready, then the
/// youngest, then by name; a pod that never started is deleted, the others drained.
fn choose_deletions(fresh: &mut Vec<&PodView>, excess: usize, out: &mut Plan) {
    fresh.sort_by(|a, b| {
        b.never_started()
            .cmp(&a.never_started())
            .then_with(|| a.ready.cmp(&b.ready))
            .then_with(|| b.created.cmp(&a.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    for victim in fresh.drain(..excess) {
        if victim.never_started() {
            out.delete_pod(victim);
        } else {
            out.drain
                .push((victim.name.clone(), DrainReason::ScaleDown));
        }
    }
}

/// The first of `fresh` whose worker the kubelet restarts in place after crashes; its pod stays
/// (it may recover).
fn in_place_crash_loop(fresh: &[&PodView]) -> Option<CrashLoop> {
    fresh.iter().find_map(|p| {
        let (restarts, exit) = p.restarting.as_ref()?;
        Some(CrashLoop {
            pod: p.name.clone(),
            exit_code: exit.as_ref().map_or(0, |e| e.code),
            reason: exit.as_ref().and_then(|e| e.reason.clone()),
            streak: u32::try_from(*restarts).unwrap_or(0),
            retry_in: IN_PLACE_RECHECK,
            in_place: true,
        })
    })
}

/// Plans creations, drains, deletions and recoveries so that exactly `desired` live,
/// non-draining workers run the current template and no task stays with a worker that is gone.
///
/// Pending creates and drains are expectations: a lagging watch never causes over-creation or a
/// second drain. A pod that never started holds no task and is deleted instead of drained.
pub fn plan(o: &Observed<'_>) -> Plan {
    let mut out = Plan::default();
    let crashed = crashed_oldest_first(o.pods);
    let streaks = crash_streaks(&crashed);
    let kept = keep_crashed(o, &crashed, &streaks, &mut out);
    let backoff = crash_backoff_left(o, &crashed, &streaks);
    let mut fresh = classify(o, &kept, &mut out);
    let desired = o.desired.max(0) as usize;
    let pending_creates = o.pending_creates.len();
    let have = fresh.len() + pending_creates;
    if have < desired {
        // Crashed pods are replaced only after the backoff.
        match backoff {
            Some(crash_loop) => out.crash_loop = Some(crash_loop),
            None => out.create = desired - have,
        }
    } else if have > desired {
        let excess = (have - desired).min(fresh.len());
        choose_deletions(&mut fresh, excess, &mut out);
    }
    out.current = (fresh.len() + pending_creates) as i32;
    if out.crash_loop.is_none() {
        out.crash_loop = in_place_crash_loop(&fresh);
    }
    out
}

/// What to do with a pod that may carry the recovery finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Not being deleted, or not ours to release.
    Nothing,
    /// Its worker may still run: look again after this long.
    Wait(Duration),
    /// Its worker has stopped: return its tasks to the queue, then remove the finalizer.
    RecoverAndRelease,
    /// Its worker never ran as far as the pod shows: remove the finalizer without moving
    /// anything. The pod's status lags the kubelet by a second or two while a worker takes a
    /// task within ~100 ms of its start, so a list moved now could duplicate a task the worker
    /// finishes in its grace period; a task it did take stays in its list and the sweep returns
    /// it once the pod is gone.
    LeaveToSweep,
}

/// Decides for a pod being deleted whether its finalizer can be released now.
pub fn release(pod: &PodView, now: Timestamp) -> Release {
    let Some(deletion) = pod.deletion else {
        return Release::Nothing;
    };
    if !pod.finalizer {
        return Release::Nothing;
    }
    if pod.never_started() {
        return Release::LeaveToSweep;
    }
    if pod.worker_stopped(now) {
        return Release::RecoverAndRelease;
    }
    let left = STOP_MARGIN.as_secs_f64() - now.duration_since(deletion).as_secs_f64();
    Release::Wait(Duration::from_secs_f64(left.clamp(1.0, 10.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).expect("time")
    }

    fn view(name: &str, hash: &str, ready: bool, age_secs: i64) -> PodView {
        PodView {
            name: name.into(),
            hash: Some(hash.into()),
            phase: Some("Running".into()),
            deletion: None,
            draining: false,
            ready,
            created: Some(at(-age_secs)),
            bound: true,
            worker: Worker::Ran,
            finalizer: true,
            exit: None,
            streak: None,
            restart_policy: Some("Never".into()),
            disruption: None,
            restarting: None,
        }
    }

    /// A pod whose worker exited with `code` at `at(ended)` (phase Failed under `Never`).
    fn failed(name: &str, code: i32, ended: i64, streak: Option<u32>) -> PodView {
        with(view(name, "cur", false, 100), |p| {
            p.phase = Some("Failed".into());
            p.worker = Worker::Terminated;
            p.exit = Some(Exit {
                code,
                reason: Some("Error".into()),
                finished: Some(at(ended)),
            });
            p.streak = streak;
        })
    }

    #[derive(Default)]
    struct Case {
        name: &'static str,
        pods: Vec<PodView>,
        desired: i32,
        pending_creates: Vec<&'static str>,
        create: usize,
        drain: Vec<&'static str>,
        delete: Vec<&'static str>,
        recover: Vec<&'static str>,
        current: i32,
        /// Seconds after the reference time the decision is taken at.
        now: i64,
        mark: Vec<(&'static str, u32)>,
        /// (pod, exit code, streak, seconds to wait) of the crash loop.
        crash_loop: Option<(&'static str, i32, u32, u64)>,
    }

    fn with(mut p: PodView, f: impl FnOnce(&mut PodView)) -> PodView {
        f(&mut p);
        p
    }

    #[test]
    fn plan_table() {
        let h = "cur";
        let cases = vec![
            Case {
                name: "empty pool grows",
                desired: 3,
                create: 3,
                ..Case::default()
            },
            Case {
                name: "pending creates count",
                pods: vec![view("w-bbbbb", h, true, 10)],
                desired: 3,
                pending_creates: vec!["w-ccccc", "w-ddddd"],
                current: 3,
                ..Case::default()
            },
            Case {
                name: "scale down drains not ready, then youngest",
                pods: vec![
                    view("a", h, true, 10),
                    view("b", h, true, 5),
                    view("c", h, false, 20),
                ],
                desired: 1,
                drain: vec!["c", "b"],
                current: 1,
                ..Case::default()
            },
            Case {
                name: "steady",
                pods: vec![view("a", h, true, 10), view("b", h, true, 5)],
                desired: 2,
                current: 2,
                ..Case::default()
            },
            Case {
                name: "stale hash drains and is replaced",
                pods: vec![view("old1", "old", true, 10), view("a", h, true, 5)],
                desired: 2,
                create: 1,
                drain: vec!["old1"],
                current: 1,
                ..Case::default()
            },
            Case {
                name: "finished pods are deleted; legacy ones recovered first",
                pods: vec![
                    with(view("done", h, false, 5), |p| {
                        p.phase = Some("Succeeded".into())
                    }),
                    with(view("crashed", h, false, 5), |p| {
                        p.phase = Some("Failed".into());
                        p.finalizer = false;
                    }),
                    view("a", h, true, 5),
                ],
                desired: 2,
                create: 1,
                delete: vec!["done", "crashed"],
                recover: vec!["crashed"],
                current: 1,
                ..Case::default()
            },
            Case {
                name: "terminating and draining pods are not counted",
                pods: vec![
                    with(view("going", h, true, 5), |p| p.deletion = Some(at(0))),
                    with(view("leaving", h, true, 5), |p| p.draining = true),
                ],
                desired: 1,
                create: 1,
                ..Case::default()
            },
            Case {
                name: "a drained pod whose worker ended is deleted, sidecar or not",
                pods: vec![with(view("drained", h, false, 5), |p| {
                    p.draining = true;
                    p.worker = Worker::Terminated;
                })],
                desired: 0,
                delete: vec!["drained"],
                ..Case::default()
            },
            Case {
                name: "a drained pod that never started is deleted",
                pods: vec![
                    with(view("pulling", h, false, 5), |p| {
                        p.draining = true;
                        p.worker = Worker::NeverRan;
                    }),
                    with(view("unbound", h, false, 5), |p| {
                        p.draining = true;
                        p.bound = false;
                        p.worker = Worker::Unknown;
                    }),
                ],
                desired: 0,
                delete: vec!["pulling", "unbound"],
                ..Case::default()
            },
            Case {
                name: "scale down deletes never-started pods before draining",
                pods: vec![
                    view("a", h, true, 10),
                    with(view("pending", h, false, 20), |p| {
                        p.bound = false;
                        p.worker = Worker::Unknown;
                    }),
                ],
                desired: 1,
                delete: vec!["pending"],
                current: 1,
                ..Case::default()
            },
            Case {
                name: "a stale pod that never started is deleted, not drained",
                pods: vec![with(view("old", "old", false, 20), |p| {
                    p.worker = Worker::NeverRan;
                })],
                desired: 1,
                create: 1,
                delete: vec!["old"],
                ..Case::default()
            },
            Case {
                name: "a crashed pod is kept, its tasks returned, its replacement waits",
                pods: vec![failed("w-ccccc", 1, 0, None)],
                desired: 1,
                now: 3,
                mark: vec![("w-ccccc", 1)],
                crash_loop: Some(("w-ccccc", 1, 1, 7)),
                ..Case::default()
            },
            Case {
                name: "after the backoff the crashed pod is replaced and still kept",
                pods: vec![failed("w-ccccc", 1, 0, Some(1))],
                desired: 1,
                now: 10,
                create: 1,
                current: 0,
                ..Case::default()
            },
            Case {
                name: "crashes in a row double the wait; only the newest three are kept",
                pods: vec![
                    failed("c1", 2, 0, Some(1)),
                    failed("c2", 2, 15, Some(2)),
                    failed("c3", 2, 40, Some(3)),
                    failed("c4", 137, 85, None),
                ],
                desired: 2,
                now: 90,
                delete: vec!["c1"],
                mark: vec![("c4", 4)],
                crash_loop: Some(("c4", 137, 4, 75)),
                ..Case::default()
            },
            Case {
                name: "the streak survives a restart: annotations carry it",
                pods: vec![failed("c2", 2, 15, Some(6)), failed("c3", 2, 40, Some(7))],
                desired: 1,
                now: 100,
                crash_loop: Some(("c3", 2, 7, 240)),
                ..Case::default()
            },
            Case {
                name: "a crash long after the last one starts a new streak",
                pods: vec![failed("c1", 2, 0, Some(5)), failed("c2", 2, 700, None)],
                desired: 1,
                now: 701,
                mark: vec![("c2", 1)],
                crash_loop: Some(("c2", 2, 1, 9)),
                ..Case::default()
            },
            Case {
                name: "crashed pods do not count and do not block a pool that is full",
                pods: vec![failed("c1", 1, 0, Some(1)), view("a", h, true, 10)],
                desired: 1,
                now: 1,
                current: 1,
                ..Case::default()
            },
            Case {
                name: "kept crashed pods go after the retention; evicted pods at once",
                pods: vec![
                    failed("old", 1, 0, Some(1)),
                    with(view("evicted", h, false, 5), |p| {
                        p.phase = Some("Failed".into());
                        p.worker = Worker::Terminated;
                        p.exit = Some(Exit {
                            code: 137,
                            reason: Some("Error".into()),
                            finished: Some(at(3599)),
                        });
                        p.disruption = Some("Evicted".into());
                    }),
                ],
                desired: 0,
                now: 3600,
                delete: vec!["old", "evicted"],
                ..Case::default()
            },
            Case {
                name: "a worker that crashed beside a running sidecar (Never) is a crash: not live, kept, its tasks returned, its replacement waits",
                pods: vec![with(failed("sc", 1, 0, None), |p| {
                    p.phase = Some("Running".into());
                })],
                desired: 1,
                now: 1,
                mark: vec![("sc", 1)],
                crash_loop: Some(("sc", 1, 1, 9)),
                ..Case::default()
            },
            Case {
                name: "a worker that finished (exit 0, OnFailure) beside a running sidecar is done: deleted and replaced",
                pods: vec![with(view("done", h, false, 5), |p| {
                    p.restart_policy = Some("OnFailure".into());
                    p.worker = Worker::Terminated;
                    p.exit = Some(Exit {
                        code: 0,
                        reason: Some("Completed".into()),
                        finished: Some(at(0)),
                    });
                })],
                desired: 1,
                now: 1,
                create: 1,
                delete: vec!["done"],
                ..Case::default()
            },
            Case {
                name: "a worker the kubelet restarts after a crash (OnFailure) stays live",
                pods: vec![with(view("again", h, false, 5), |p| {
                    p.restart_policy = Some("OnFailure".into());
                    p.worker = Worker::Terminated;
                    p.exit = Some(Exit {
                        code: 1,
                        reason: Some("Error".into()),
                        finished: Some(at(0)),
                    });
                })],
                desired: 1,
                now: 1,
                current: 1,
                ..Case::default()
            },
            Case {
                name: "a worker restarted in place in CrashLoopBackOff (OnFailure) is reported, its pod kept and live",
                pods: vec![
                    with(view("loop", h, false, 50), |p| {
                        p.restart_policy = Some("OnFailure".into());
                        p.restarting = Some((
                            4,
                            Some(Exit {
                                code: 2,
                                reason: Some("Error".into()),
                                finished: Some(at(0)),
                            }),
                        ));
                    }),
                    view("ok", h, true, 50),
                ],
                desired: 2,
                current: 2,
                crash_loop: Some(("loop", 2, 4, 30)),
                ..Case::default()
            },
            Case {
                name: "an evicted pod (exit 137) is no crash: replaced at once, no back-off",
                pods: vec![
                    with(failed("ev", 137, 0, None), |p| {
                        p.disruption = Some("Evicted".into());
                    }),
                    with(failed("shut", 137, 0, None), |p| {
                        p.disruption = Some("TerminationByKubelet".into());
                    }),
                ],
                desired: 2,
                now: 1,
                create: 2,
                delete: vec!["ev", "shut"],
                ..Case::default()
            },
            Case {
                name: "scale to zero",
                pods: vec![view("a", h, true, 10), view("b", h, true, 5)],
                desired: 0,
                drain: vec!["b", "a"],
                ..Case::default()
            },
        ];
        for c in cases {
            let pending_creates: HashSet<String> =
                c.pending_creates.iter().map(|s| s.to_string()).collect();
            let none = HashSet::new();
            let p = plan(&Observed {
                qworker: "w",
                pods: &c.pods,
                hash: h,
                desired: c.desired,
                pending_creates: &pending_creates,
                pending_drains: &none,
                now: at(c.now),
            });
            let drained: Vec<&str> = p.drain.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(drained, c.drain, "{}: drain", c.name);
            assert_eq!(p.delete, c.delete, "{}: delete", c.name);
            assert_eq!(p.recover, c.recover, "{}: recover", c.name);
            assert_eq!(p.current, c.current, "{}: current", c.name);
            let mark: Vec<(&str, u32)> = p
                .mark_crashed
                .iter()
                .map(|(n, s)| (n.as_str(), *s))
                .collect();
            assert_eq!(mark, c.mark, "{}: mark", c.name);
            let crash = p
                .crash_loop
                .as_ref()
                .map(|l| (l.pod.as_str(), l.exit_code, l.streak, l.retry_in.as_secs()));
            assert_eq!(crash, c.crash_loop, "{}: crash loop", c.name);
        }
    }

    #[test]
    fn a_kept_crashed_pod_is_looked_at_again_when_its_retention_ends() {
        let none = HashSet::new();
        let observe = |pods: &[PodView], now: i64| {
            plan(&Observed {
                qworker: "w",
                pods,
                hash: "cur",
                desired: 0,
                pending_creates: &none,
                pending_drains: &none,
                now: at(now),
            })
        };
        let pods = [failed("a", 1, 0, Some(1)), failed("b", 1, 600, Some(2))];
        assert_eq!(
            observe(&pods, 1000).next_expiry,
            Some(FAILED_RETENTION - Duration::from_secs(1000)),
            "the older pod's retention ends first"
        );
        assert_eq!(
            observe(&pods, 3600).next_expiry,
            Some(FAILED_RETENTION - Duration::from_secs(3000)),
            "a deleted pod no longer counts"
        );
        assert_eq!(observe(&[view("x", "cur", true, 10)], 0).next_expiry, None);
    }

    #[test]
    fn worker_names_are_recognised_by_their_suffix() {
        assert!(is_generated_pod_name("w-bcd45"));
        assert!(!is_generated_pod_name("w-bcd4"), "too short");
        assert!(
            !is_generated_pod_name("w-abcde"),
            "a is not in the alphabet"
        );
        assert!(!is_generated_pod_name("-bcd45"), "no QWorker name");
        assert!(!is_generated_pod_name("worker-1"));
        assert!(!is_generated_pod_name(&format!("{}-bcd45", "q".repeat(58))));
        let long = "q".repeat(80);
        let name = super::super::build::pod_name(&long);
        assert!(is_generated_pod_name(&name), "{name}");
    }

    #[test]
    fn release_waits_for_the_worker_then_recovers() {
        let deleted = |p: PodView, secs: i64| with(p, |p| p.deletion = Some(at(secs)));
        let running = view("a", "h", true, 10);
        assert_eq!(release(&running, at(0)), Release::Nothing, "not deleted");
        let no_finalizer = with(deleted(running.clone(), 0), |p| p.finalizer = false);
        assert_eq!(release(&no_finalizer, at(0)), Release::Nothing);
        // Graceful deletion: the kill deadline is in 30 s; the worker still runs.
        let graceful = deleted(running.clone(), 30);
        assert_eq!(
            release(&graceful, at(0)),
            Release::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            release(&graceful, at(35)),
            Release::Wait(Duration::from_secs(5))
        );
        assert_eq!(release(&graceful, at(40)), Release::RecoverAndRelease);
        // The kubelet reported the worker terminated (a sidecar may still run).
        let ended = with(graceful.clone(), |p| p.worker = Worker::Terminated);
        assert_eq!(release(&ended, at(0)), Release::RecoverAndRelease);
        // Never bound, or never ran as far as the pod shows: nothing to wait for, and nothing
        // moved on a view that may lag (the sweep returns a task taken at the last instant).
        let unbound = with(graceful.clone(), |p| p.bound = false);
        assert_eq!(release(&unbound, at(0)), Release::LeaveToSweep);
        let pulling = with(graceful.clone(), |p| p.worker = Worker::NeverRan);
        assert_eq!(release(&pulling, at(0)), Release::LeaveToSweep);
        // Force-deleted while busy: deadline now, taken as stopped after the margin.
        let forced = deleted(running, 0);
        assert_eq!(
            release(&forced, at(3)),
            Release::Wait(Duration::from_secs(7))
        );
        assert_eq!(release(&forced, at(10)), Release::RecoverAndRelease);
    }

    #[test]
    fn pod_view_reads_the_first_container_as_the_worker() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "w-bbbbb",
                "finalizers": [RECOVERY_FINALIZER],
                "annotations": {DRAIN_ANNOTATION: "scale-down"},
                "labels": {POD_SPEC_HASH_LABEL: "h1"}
            },
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "worker"}, {"name": "sidecar"}]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "sidecar", "image": "", "imageID": "", "ready": true, "restartCount": 0,
                     "state": {"running": {}}},
                    {"name": "worker", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0}}}
                ]
            }
        }))
        .expect("pod");
        let v = PodView::of(&pod);
        assert_eq!(v.worker, Worker::Terminated);
        assert!(v.draining && v.finalizer && v.bound && !v.terminating());
        assert_eq!(v.hash.as_deref(), Some("h1"));
        let mut waiting = pod.clone();
        if let Some(s) = waiting
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            s[1].state = serde_json::from_value(
                serde_json::json!({"waiting": {"reason": "ImagePullBackOff"}}),
            )
            .ok();
        }
        assert_eq!(PodView::of(&waiting).worker, Worker::NeverRan);
        assert!(PodView::of(&waiting).never_started());
        let mut restarted = waiting.clone();
        if let Some(s) = restarted
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            s[1].restart_count = 2;
        }
        assert_eq!(PodView::of(&restarted).worker, Worker::Ran);
        assert_eq!(PodView::of(&restarted).restarting, None);
        if let Some(s) = restarted
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            s[1].state = serde_json::from_value(
                serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            )
            .ok();
            s[1].last_state = serde_json::from_value(
                serde_json::json!({"terminated": {"exitCode": 3, "reason": "Error"}}),
            )
            .ok();
        }
        let (restarts, exit) = PodView::of(&restarted).restarting.expect("crash-looping");
        assert_eq!((restarts, exit.map(|e| e.code)), (2, Some(3)));
    }

    #[test]
    fn pod_view_finds_the_worker_by_its_recorded_name_behind_a_proxy_inserted_first() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "w-bbbbb",
                "finalizers": [RECOVERY_FINALIZER],
                "annotations": {WORKER_CONTAINER_ANNOTATION: "worker"},
                "labels": {POD_SPEC_HASH_LABEL: "h1"}
            },
            "spec": {
                "nodeName": "n1",
                "restartPolicy": "Never",
                "containers": [{"name": "linkerd-proxy"}, {"name": "worker"}]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "linkerd-proxy", "image": "", "imageID": "", "ready": true,
                     "restartCount": 0, "state": {"running": {}}},
                    {"name": "worker", "image": "", "imageID": "", "ready": false,
                     "restartCount": 0,
                     "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ]
            }
        }))
        .expect("pod");
        let v = PodView::of(&pod);
        assert_eq!(
            v.worker,
            Worker::Terminated,
            "read from `worker`, not the proxy"
        );
        assert!(
            v.crashed(),
            "exit 1 under Never beside a running proxy is a crash"
        );
        assert!(v.terminal());
        // The same pod stopped by a node shutdown is not a crash.
        let mut shut = pod.clone();
        if let Some(st) = shut.status.as_mut() {
            st.conditions = serde_json::from_value(serde_json::json!([{
                "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"
            }]))
            .ok();
        }
        let v = PodView::of(&shut);
        assert_eq!(v.disruption.as_deref(), Some("TerminationByKubelet"));
        assert!(!v.crashed() && v.terminal());
        // A kubelet eviction says so in the pod's reason.
        let mut evicted = pod;
        if let Some(st) = evicted.status.as_mut() {
            st.phase = Some("Failed".into());
            st.reason = Some("Evicted".into());
        }
        assert!(!PodView::of(&evicted).crashed());
    }
}
