//! The QWorker controller's decisions, as pure functions of what it observed: which pods to
//! create, drain and delete, which in-flight task lists to return to the queue, and when the
//! task-recovery finalizer of a deleted pod may be released.
//!
//! The worker container is the first container of the pod spec; sidecars come after it (or are
//! init containers). Only the worker container takes tasks, so a pod's work is over when its
//! worker container has terminated, whatever the pod's phase.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::build::{DRAIN_ANNOTATION, POD_NAME_ALPHABET, POD_SPEC_HASH_LABEL};

/// Finalizer on every worker pod: the pod object stays until its worker has stopped and its
/// in-flight tasks are back on the queue.
pub const RECOVERY_FINALIZER: &str = "quickube.com/task-recovery";
/// After a deleted pod's kill deadline (`deletionTimestamp`) has passed by this much, its
/// containers are taken as stopped even if no kubelet reported so.
pub const STOP_MARGIN: Duration = Duration::from_secs(10);
/// How long a stopped pod's finalizer is held while its tasks cannot be returned (the broker
/// is unreachable); then it is released and the periodic sweep returns the tasks later.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(300);

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
        let worker_name = spec.and_then(|s| s.containers.first()).map(|c| &c.name);
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
        }
    }

    /// Succeeded or Failed: the pod's containers will not run again.
    pub fn terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
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

/// Whether `name` is a pod name the QWorker `qworker` could have given one of its pods
/// (`<qworker>-<5 characters of the pod-name alphabet>`, the prefix cut to 57 characters).
pub fn is_worker_name(qworker: &str, name: &str) -> bool {
    let prefix: String = qworker.chars().take(57).collect();
    name.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| {
            suffix.len() == 5 && suffix.bytes().all(|b| POD_NAME_ALPHABET.contains(&b))
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
    /// Workers that hold tasks in the broker (a sweep ran this time), else `None`.
    pub holders: Option<&'a [String]>,
    /// Every worker pod name of the namespace in the cache (all QWorkers, terminating ones too).
    pub known_pods: &'a HashSet<String>,
}

/// What one reconcile does to a QWorker's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New pods to create.
    pub create: usize,
    /// Pods to ask to drain, with the reason.
    pub drain: Vec<(String, DrainReason)>,
    /// Pods to delete: finished, drained and done, or never started.
    pub delete: Vec<String>,
    /// Workers whose in-flight tasks go back to the queue first: pods that no longer exist,
    /// and pods to delete that carry no recovery finalizer (made by an older version).
    pub recover: Vec<String>,
    /// Live workers after the plan: not terminal, not terminating, not draining.
    pub current: i32,
}

/// Plans creations, drains, deletions and recoveries so that exactly `desired` live,
/// non-draining workers run the current template and no task stays with a worker that is gone.
///
/// Pending creates and drains are expectations: a lagging watch never causes over-creation or a
/// second drain. A pod that never started holds no task and is deleted instead of drained.
pub fn plan(o: &Observed<'_>) -> Plan {
    let mut out = Plan::default();
    let mut fresh: Vec<&PodView> = Vec::new();
    let delete = |out: &mut Plan, p: &PodView| {
        out.delete.push(p.name.clone());
        if !p.finalizer && !p.never_started() {
            out.recover.push(p.name.clone());
        }
    };
    for p in o.pods {
        if p.terminating() {
            continue;
        }
        if p.terminal() {
            delete(&mut out, p);
        } else if p.draining {
            if p.never_started() || p.worker == Worker::Terminated {
                delete(&mut out, p);
            }
        } else if o.pending_drains.contains(&p.name) {
            continue;
        } else if p.hash.as_deref() != Some(o.hash) {
            if p.never_started() {
                delete(&mut out, p);
            } else {
                out.drain.push((p.name.clone(), DrainReason::StaleHash));
            }
        } else {
            fresh.push(p);
        }
    }
    let desired = o.desired.max(0) as usize;
    let pending_creates = o.pending_creates.len();
    let have = fresh.len() + pending_creates;
    if have < desired {
        out.create = desired - have;
    } else if have > desired {
        let excess = (have - desired).min(fresh.len());
        // Victims: never started first, then not ready, then the youngest, then by name.
        fresh.sort_by(|a, b| {
            b.never_started()
                .cmp(&a.never_started())
                .then_with(|| a.ready.cmp(&b.ready))
                .then_with(|| b.created.cmp(&a.created))
                .then_with(|| a.name.cmp(&b.name))
        });
        for victim in fresh.drain(..excess) {
            if victim.never_started() {
                delete(&mut out, victim);
            } else {
                out.drain
                    .push((victim.name.clone(), DrainReason::ScaleDown));
            }
        }
    }
    out.current = (fresh.len() + pending_creates) as i32;
    if let Some(holders) = o.holders {
        for h in holders {
            if is_worker_name(o.qworker, h)
                && !o.known_pods.contains(h)
                && !o.pending_creates.contains(h)
                && !out.recover.contains(h)
            {
                out.recover.push(h.clone());
            }
        }
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
}

/// Decides for a pod being deleted whether its finalizer can be released now.
pub fn release(pod: &PodView, now: Timestamp) -> Release {
    let Some(deletion) = pod.deletion else {
        return Release::Nothing;
    };
    if !pod.finalizer {
        return Release::Nothing;
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
        }
    }

    #[derive(Default)]
    struct Case {
        name: &'static str,
        pods: Vec<PodView>,
        desired: i32,
        pending_creates: Vec<&'static str>,
        holders: Option<Vec<&'static str>>,
        known: Vec<&'static str>,
        create: usize,
        drain: Vec<&'static str>,
        delete: Vec<&'static str>,
        recover: Vec<&'static str>,
        current: i32,
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
                name: "scale to zero",
                pods: vec![view("a", h, true, 10), view("b", h, true, 5)],
                desired: 0,
                drain: vec!["b", "a"],
                ..Case::default()
            },
            Case {
                name: "sweep returns the lists of this QWorker's pods that are gone, only",
                pods: vec![view("w-bbbbb", h, true, 10)],
                desired: 2,
                pending_creates: vec!["w-ddddd"],
                known: vec!["w-bbbbb", "other-ccccc", "w-zzzzz"],
                holders: Some(vec![
                    "w-bbbbb",
                    "w-ccccc",
                    "w-ddddd",
                    "worker-1",
                    "other-ccccc",
                    "w-zzzzz",
                ]),
                recover: vec!["w-ccccc"],
                current: 2,
                ..Case::default()
            },
        ];
        for c in cases {
            let pending_creates: HashSet<String> =
                c.pending_creates.iter().map(|s| s.to_string()).collect();
            let known: HashSet<String> = c.known.iter().map(|s| s.to_string()).collect();
            let holders: Option<Vec<String>> = c
                .holders
                .as_ref()
                .map(|hs| hs.iter().map(|s| s.to_string()).collect());
            let none = HashSet::new();
            let p = plan(&Observed {
                qworker: "w",
                pods: &c.pods,
                hash: h,
                desired: c.desired,
                pending_creates: &pending_creates,
                pending_drains: &none,
                holders: holders.as_deref(),
                known_pods: &known,
            });
            let drained: Vec<&str> = p.drain.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(drained, c.drain, "{}: drain", c.name);
            assert_eq!(p.delete, c.delete, "{}: delete", c.name);
            assert_eq!(p.recover, c.recover, "{}: recover", c.name);
            assert_eq!(p.current, c.current, "{}: current", c.name);
        }
    }

    #[test]
    fn worker_names_are_recognised_by_prefix_and_alphabet() {
        assert!(is_worker_name("w", "w-bcd45"));
        assert!(!is_worker_name("w", "w-bcd4"), "too short");
        assert!(!is_worker_name("w", "w-abcde"), "a is not in the alphabet");
        assert!(!is_worker_name("w", "wx-bcd45"));
        assert!(!is_worker_name("w", "worker-1"));
        let long = "q".repeat(80);
        let name = super::super::build::pod_name(&long);
        assert!(is_worker_name(&long, &name), "{name}");
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
        // Never bound, or never ran: nothing to wait for.
        let unbound = with(graceful.clone(), |p| p.bound = false);
        assert_eq!(release(&unbound, at(0)), Release::RecoverAndRelease);
        let pulling = with(graceful.clone(), |p| p.worker = Worker::NeverRan);
        assert_eq!(release(&pulling, at(0)), Release::RecoverAndRelease);
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
    }
}
