//! activateVPA, the pure part: record the largest CPU and memory use per container, raise
//! memory after an OOM kill, and size new pods' requests from the record.
//!
//! Requests are `recorded maximum × (1 + headroom)`, never below the user's own request and
//! never above the user's limit, rounded up to steps (50m CPU, 64Mi memory) so that a slowly
//! creeping maximum does not roll the pods at every sample. A change of requests changes the
//! pod-spec hash and is rolled out by the drain protocol, so no running task is cut.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use workerpool_api::QWorker;

use crate::quantity;

/// Recorded maximum use: container name → resource (`cpu`, `memory`) → quantity.
pub type Usage = BTreeMap<String, BTreeMap<String, Quantity>>;

/// CPU request granularity, in cores.
pub const CPU_STEP: f64 = 0.05;
/// Memory request granularity, in bytes.
pub const MEMORY_STEP: f64 = 64.0 * 1024.0 * 1024.0;
/// Factor applied to the memory record after an OOM kill.
pub const OOM_FACTOR: f64 = 1.5;

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

/// After an OOM kill of `container`, raises its memory record to at least
/// `max(record, request) × OOM_FACTOR`; returns whether the record changed.
pub fn oom_killed(record: &mut Usage, qw: &QWorker, container: &str) -> bool {
    let request = qw
        .spec
        .pod_spec
        .containers
        .iter()
        .find(|c| c.name == container)
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(value)
        .unwrap_or(0.0);
    let entry = record.entry(container.to_string()).or_default();
    let current = entry.get("memory").and_then(value).unwrap_or(0.0);
    let raised = current.max(request) * OOM_FACTOR;
    if raised > current {
        entry.insert("memory".into(), format("memory", raised));
        return true;
    }
    false
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
    for c in &qw.spec.pod_spec.containers {
        let Some(used) = record.get(&c.name) else {
            continue;
        };
        let resources = c.resources.clone().unwrap_or_default();
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
        let resources = q.spec.pod_spec.containers[0]
            .resources
            .get_or_insert_default();
        resources.limits = Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("384Mi".into()),
        )]));
        let r = requests(&q, &usage("worker", "100m", "1Gi"));
        assert_eq!(r["worker"]["memory"], "384Mi");
    }

    #[test]
    fn off_means_no_change_and_oom_raises_memory() {
        assert!(requests(&qw(false), &usage("worker", "4", "4Gi")).is_empty());
        let q = qw(true);
        let mut r = usage("worker", "100m", "200Mi");
        assert!(oom_killed(&mut r, &q, "worker"));
        assert_eq!(
            r["worker"]["memory"].0, "384Mi",
            "max(200Mi, request 256Mi) × 1.5"
        );
    }
}
