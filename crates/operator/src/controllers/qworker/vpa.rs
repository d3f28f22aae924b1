//! activateVPA, the pure part: record the largest CPU and memory use per container, raise
//! memory after an OOM kill, and size new pods' requests from the record.
//!
//! Requests are `recorded maximum × (1 + headroom)`, never below the user's own request and
//! never above the user's limit, rounded up to steps (50m CPU, 64Mi memory) so that a slowly
//! creeping maximum does not roll the pods at every sample. A change of requests changes the
//! pod-spec hash and is rolled out by the drain protocol, so no running task is cut.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use workerpool_api::qworker::OOM_KILLS_SEEN_LIMIT;
use workerpool_api::{OomKill, QWorker};

use crate::quantity;

/// Recorded maximum use: container name → resource (`cpu`, `memory`) → quantity.
pub type Usage = BTreeMap<String, BTreeMap<String, Quantity>>;

/// CPU request granularity, in cores.
pub const CPU_STEP: f64 = 0.05;
/// Memory request granularity, in bytes.
pub const MEMORY_STEP: f64 = 64.0 * 1024.0 * 1024.0;
/// Factor applied to the memory record after an OOM kill.
pub const OOM_FACTOR: f64 = 1.5;
/// At most one raise after OOM kills per window: the pods killed within it mostly ran with the
/// requests from before the last raise.
pub const OOM_RAISE_WINDOW: Duration = Duration::from_secs(300);

fn value(q: &Quantity) -> Option<f64> {
    quantity::parse(&q.0)
}

fn format(resource: &str, v: f64) -> Quantity {
    Quantity(match resource {
        "cpu" => quantity::format_cpu(v),
        _ => quantity::format_memory(v),
    })
}

/// Merges one sample (container → resource → quantity) into `record`, keeping the larger
/// value; returns whether the record changed.
pub fn record(record: &mut Usage, sample: &Usage) -> bool {
    let mut changed = false;
    for (container, resources) in sample {
        for (resource, q) in resources {
            if resource != "cpu" && resource != "memory" {
                continue;
            }
            let Some(v) = value(q) else { continue };
            let entry = record.entry(container.clone()).or_default();
            let current = entry.get(resource).and_then(value);
            if current.is_none_or(|c| v > c) {
                entry.insert(resource.clone(), format(resource, v));
                changed = true;
            }
        }
    }
    changed
}

fn user_memory(qw: &QWorker, container: &str, limits: bool) -> Option<f64> {
    let resources = qw
        .spec
        .pod_spec
        .get()
        .containers
        .into_iter()
        .find(|c| c.name == container)
        .and_then(|c| c.resources)?;
    let map = if limits {
        resources.limits.as_ref()
    } else {
        resources.requests.as_ref()
    };
    map.and_then(|r| r.get("memory")).and_then(value)
}

/// The most memory activateVPA records or requests for `container`: its memory limit, else
/// `scaleConfig.vpaMaxMemory` (default 8Gi).
pub fn memory_cap(qw: &QWorker, container: &str) -> f64 {
    user_memory(qw, container, true)
        .or_else(|| value(&qw.spec.scale_config.vpa_max_memory()))
        .unwrap_or(f64::INFINITY)
}

/// After an OOM kill of `container`, raises its memory record to
/// `max(record, request) × OOM_FACTOR`, at most [`memory_cap`]; returns the old and new record
/// when it changed.
pub fn oom_killed(
    record: &mut Usage,
    qw: &QWorker,
    container: &str,
) -> Option<(Option<Quantity>, Quantity)> {
    let request = user_memory(qw, container, false).unwrap_or(0.0);
    let cap = memory_cap(qw, container);
    let entry = record.entry(container.to_string()).or_default();
    let old = entry.get("memory").cloned();
    let current = old.as_ref().and_then(value).unwrap_or(0.0);
    let raised = (current.max(request) * OOM_FACTOR).min(cap);
    if raised > current {
        let new = format("memory", raised);
        entry.insert("memory".into(), new.clone());
        return Some((old, new));
    }
    None
}

/// What activateVPA remembers of OOM kills (in the status, so a restart does not repeat them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OomMemory {
    /// OOM kills already taken into account, oldest first, at most [`OOM_KILLS_SEEN_LIMIT`].
    pub seen: Vec<OomKill>,
    /// When the last raise happened.
    pub last_raise: Option<Timestamp>,
}

/// One raise of a container's memory record, with the OOM kill that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct Raise {
    /// The OOM kill.
    pub evidence: OomKill,
    /// The record before.
    pub old: Option<Quantity>,
    /// The record after.
    pub new: Quantity,
}

impl Raise {
    /// The Event message naming the evidence.
    pub fn message(&self) -> String {
        format!(
            "Container {} of pod {} was OOM-killed at {}; its memory record goes {} -> {}",
            self.evidence.container,
            self.evidence.pod,
            self.evidence
                .finished_at
                .as_ref()
                .map_or_else(|| "an unknown time".to_string(), |t| t.0.to_string()),
            self.old.as_ref().map_or("none", |q| q.0.as_str()),
            self.new.0
        )
    }
}

fn same_kill(a: &OomKill, b: &OomKill) -> bool {
    a.pod_uid == b.pod_uid && a.container == b.container && a.finished_at == b.finished_at
}

/// Takes the OOM kills visible now (`evidence`, from the pods' container statuses) into
/// account: each kill is counted once (keyed by pod uid, container and `finishedAt`, remembered
/// in `memory`), records are raised at most once per [`OOM_RAISE_WINDOW`] (each OOM-killed
/// container once, by [`OOM_FACTOR`]) and never above [`memory_cap`]. Returns the raises and
/// whether `memory` changed.
pub fn oom_kills(
    record: &mut Usage,
    memory: &mut OomMemory,
    qw: &QWorker,
    evidence: &[OomKill],
    now: Timestamp,
) -> (Vec<Raise>, bool) {
    // When the list is full, kills older than its oldest entry were seen and forgotten.
    let horizon = (memory.seen.len() >= OOM_KILLS_SEEN_LIMIT)
        .then(|| memory.seen.first().and_then(|k| k.finished_at.clone()))
        .flatten();
    let mut new: Vec<OomKill> = Vec::new();
    for kill in evidence {
        let forgotten = horizon
            .as_ref()
            .is_some_and(|h| kill.finished_at.as_ref().is_none_or(|t| t.0 <= h.0));
        if forgotten
            || memory.seen.iter().any(|k| same_kill(k, kill))
            || new.iter().any(|k| same_kill(k, kill))
        {
            continue;
        }
        new.push(kill.clone());
    }
    if new.is_empty() {
        return (Vec::new(), false);
    }
    memory.seen.extend(new.iter().cloned());
    memory.seen.sort_by(|a, b| {
        a.finished_at
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.finished_at.as_ref().map(|t| t.0))
    });
    let excess = memory.seen.len().saturating_sub(OOM_KILLS_SEEN_LIMIT);
    memory.seen.drain(..excess);
    let in_window = memory
        .last_raise
        .is_some_and(|t| now.duration_since(t).as_secs_f64() < OOM_RAISE_WINDOW.as_secs_f64());
    let mut raises: Vec<Raise> = Vec::new();
    if !in_window {
        // The newest kill of each container is the evidence of its raise.
        new.sort_by(|a, b| {
            b.finished_at
                .as_ref()
                .map(|t| t.0)
                .cmp(&a.finished_at.as_ref().map(|t| t.0))
        });
        for kill in &new {
            if raises
                .iter()
                .any(|r| r.evidence.container == kill.container)
            {
                continue;
            }
            if let Some((old, new)) = oom_killed(record, qw, &kill.container) {
                raises.push(Raise {
                    evidence: kill.clone(),
                    old,
                    new,
                });
            }
        }
        if !raises.is_empty() {
            memory.last_raise = Some(now);
        }
    }
    (raises, true)
}

/// The OOM kills visible in `pod`'s container statuses (current and last state).
pub fn oom_evidence(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<OomKill> {
    let mut out = Vec::new();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    for cs in pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
    {
        let states = [
            cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
            cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
        ];
        for t in states.into_iter().flatten() {
            if t.reason.as_deref() == Some("OOMKilled") {
                out.push(OomKill {
                    pod: name.clone(),
                    pod_uid: uid.clone(),
                    container: cs.name.clone(),
                    finished_at: t.finished_at.clone(),
                });
            }
        }
    }
    out
}

/// `finishedAt` as a [`Time`], for tests and callers that build evidence.
pub fn time(t: Timestamp) -> Time {
    Time(t)
}

/// The requests new pods get from `record` (container → resource → quantity string), or
/// nothing when activateVPA is off.
pub fn requests(qw: &QWorker, record: &Usage) -> BTreeMap<String, BTreeMap<String, String>> {
    let sc = &qw.spec.scale_config;
    let mut out = BTreeMap::new();
    if !sc.activate_vpa {
        return out;
    }
    let headroom = 1.0 + f64::from(sc.vpa_headroom_percent()) / 100.0;
    for c in qw.spec.pod_spec.get().containers {
        let Some(used) = record.get(&c.name) else {
            continue;
        };
        let resources = c.resources.unwrap_or_default();
        let user_request = |r: &str| {
            resources
                .requests
                .as_ref()
                .and_then(|m| m.get(r))
                .and_then(value)
        };
        let user_limit = |r: &str| {
            resources
                .limits
                .as_ref()
                .and_then(|m| m.get(r))
                .and_then(value)
        };
        let mut sized = BTreeMap::new();
        for (resource, step) in [("cpu", CPU_STEP), ("memory", MEMORY_STEP)] {
            let Some(u) = used.get(resource).and_then(value) else {
                continue;
            };
            let mut want = ((u * headroom) / step).ceil() * step;
            if let Some(floor) = user_request(resource) {
                want = want.max(floor);
            }
            if let Some(cap) = user_limit(resource) {
                want = want.min(cap);
            } else if resource == "memory" {
                want = want.min(memory_cap(qw, &c.name));
            }
            if user_request(resource).is_some_and(|r| (r - want).abs() < f64::EPSILON) {
                continue;
            }
            sized.insert(resource.to_string(), format(resource, want).0);
        }
        if !sized.is_empty() {
            out.insert(c.name.clone(), sized);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qw(vpa: bool) -> QWorker {
        let mut q: QWorker =
            serde_yaml::from_str(include_str!("../../../../../examples/qworker.yaml"))
                .expect("example");
        q.spec.scale_config.activate_vpa = vpa;
        q
    }

    fn usage(container: &str, cpu: &str, memory: &str) -> Usage {
        BTreeMap::from([(
            container.to_string(),
            BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ]),
        )])
    }

    #[test]
    fn record_keeps_the_largest_use() {
        let mut r = Usage::new();
        assert!(record(&mut r, &usage("worker", "120m", "100Mi")));
        assert!(record(&mut r, &usage("worker", "80m", "300Mi")));
        assert!(
            !record(&mut r, &usage("worker", "100m", "200Mi")),
            "nothing larger"
        );
        assert_eq!(r["worker"]["cpu"].0, "120m");
        assert_eq!(r["worker"]["memory"].0, "300Mi");
    }

    #[test]
    fn requests_follow_use_plus_headroom_within_the_users_bounds() {
        let q = qw(true);
        // The user asks 500m / 256Mi and sets no limit; headroom 20%.
        let cases = [
            (usage("worker", "1", "512Mi"), Some("1200m"), Some("640Mi")),
            (usage("worker", "100m", "100Mi"), None, None),
            (
                usage("worker", "450m", "250Mi"),
                Some("550m"),
                Some("320Mi"),
            ),
        ];
        for (used, cpu, mem) in cases {
            let r = requests(&q, &used);
            let got = r.get("worker");
            assert_eq!(
                got.and_then(|m| m.get("cpu")).map(String::as_str),
                cpu,
                "{used:?}"
            );
            assert_eq!(
                got.and_then(|m| m.get("memory")).map(String::as_str),
                mem,
                "{used:?}"
            );
        }
    }

    #[test]
    fn limits_cap_the_requests() {
        let mut q = qw(true);
        q.spec.pod_spec.edit(|s| {
            s.containers[0].resources.get_or_insert_default().limits = Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("384Mi".into()),
            )]));
        });
        let r = requests(&q, &usage("worker", "100m", "1Gi"));
        assert_eq!(r["worker"]["memory"], "384Mi");
    }

    #[test]
    fn off_means_no_change_and_oom_raises_memory() {
        assert!(requests(&qw(false), &usage("worker", "4", "4Gi")).is_empty());
        let q = qw(true);
        let mut r = usage("worker", "100m", "200Mi");
        assert!(oom_killed(&mut r, &q, "worker").is_some());
        assert_eq!(
            r["worker"]["memory"].0, "384Mi",
            "max(200Mi, request 256Mi) × 1.5"
        );
    }

    fn kill(pod: &str, container: &str, secs: i64) -> OomKill {
        OomKill {
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            container: container.into(),
            finished_at: Some(time(at(secs))),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + secs).expect("time")
    }

    #[test]
    fn simultaneous_ooms_raise_once() {
        let q = qw(true);
        let mut r = usage("worker", "100m", "200Mi");
        let mut memory = OomMemory::default();
        let evidence: Vec<OomKill> = (0..5)
            .map(|i| kill(&format!("p{i}"), "worker", i))
            .collect();
        let (raises, changed) = oom_kills(&mut r, &mut memory, &q, &evidence, at(10));
        assert!(changed);
        assert_eq!(raises.len(), 1, "{raises:?}");
        assert_eq!(
            r["worker"]["memory"].0, "384Mi",
            "one raise by 1.5, not 1.5^5"
        );
        assert_eq!(raises[0].evidence.pod, "p4", "the newest kill is named");
        assert!(
            raises[0].message().contains("p4") && raises[0].message().contains("200Mi -> 384Mi")
        );
        assert_eq!(memory.seen.len(), 5);
        // The same kills seen again (the next sample) change nothing.
        let (raises, changed) = oom_kills(&mut r, &mut memory, &q, &evidence, at(25));
        assert!(raises.is_empty() && !changed);
        // A new kill within the window is remembered but does not raise.
        let (raises, changed) =
            oom_kills(&mut r, &mut memory, &q, &[kill("p9", "worker", 60)], at(70));
        assert!(raises.is_empty() && changed);
        assert_eq!(r["worker"]["memory"].0, "384Mi");
        // After the window a new kill raises again.
        let (raises, _) = oom_kills(
            &mut r,
            &mut memory,
            &q,
            &[kill("p10", "worker", 400)],
            at(410),
        );
        assert_eq!(raises.len(), 1);
        assert_eq!(r["worker"]["memory"].0, "576Mi");
    }

    #[test]
    fn a_restart_does_not_count_the_same_ooms_again() {
        let q = qw(true);
        let mut r = usage("worker", "100m", "200Mi");
        let mut memory = OomMemory::default();
        let evidence = vec![kill("p1", "worker", 0), kill("p2", "worker", 1)];
        let (raises, _) = oom_kills(&mut r, &mut memory, &q, &evidence, at(10));
        assert_eq!(raises.len(), 1);
        // The status carries the record and the seen kills through a restart.
        let mut status = workerpool_api::QWorkerStatus {
            max_container_resources_usage: r.clone(),
            oom_kills_seen: memory.seen.clone(),
            last_oom_raise_time: memory.last_raise.map(time),
            ..Default::default()
        };
        status =
            serde_json::from_value(serde_json::to_value(&status).expect("json")).expect("status");
        let mut r2 = status.max_container_resources_usage.clone();
        let mut restored = OomMemory {
            seen: status.oom_kills_seen.clone(),
            last_raise: status.last_oom_raise_time.map(|t| t.0),
        };
        // Long after the window: only a new kill may raise, the old ones never again.
        let (raises, changed) = oom_kills(&mut r2, &mut restored, &q, &evidence, at(10_000));
        assert!(raises.is_empty() && !changed);
        assert_eq!(r2, r);
    }

    #[test]
    fn raises_stop_at_the_limit_or_the_maximum() {
        let mut q = qw(true);
        let mut r = usage("worker", "100m", "7Gi");
        assert!(oom_killed(&mut r, &q, "worker").is_some());
        assert_eq!(r["worker"]["memory"].0, "8192Mi", "default maximum 8Gi");
        assert!(oom_killed(&mut r, &q, "worker").is_none(), "at the cap");
        q.spec.pod_spec.edit(|s| {
            s.containers[0].resources.get_or_insert_default().limits = Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("1Gi".into()),
            )]));
        });
        let mut r = usage("worker", "100m", "900Mi");
        assert!(oom_killed(&mut r, &q, "worker").is_some());
        assert_eq!(r["worker"]["memory"].0, "1024Mi", "the container's limit");
        q.spec.pod_spec.edit(|s| s.containers[0].resources = None);
        q.spec.scale_config.vpa_max_memory = Some(Quantity("2Gi".into()));
        let r = usage("worker", "100m", "4Gi");
        assert_eq!(requests(&q, &r)["worker"]["memory"], "2048Mi");
    }
}
