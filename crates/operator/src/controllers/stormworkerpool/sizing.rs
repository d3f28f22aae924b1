//! Memory sizing of a pool's supervisors from the worker container's memory (pure).
//!
//! A supervisor pod runs the supervisor JVM (`supervisor.childopts: -Xmx256m`) and, per slot, a
//! worker JVM and its LogWriter (`-Xmx64m`). A JVM needs memory beyond its heap (metaspace,
//! code cache, thread stacks, direct buffers), so the operator gives the workers what is left
//! after [`SUPERVISOR_RESERVE_MB`] and a heap of two thirds of each slot's share:
//!
//! - `supervisor.memory.capacity.mb` = memory − 512 (what the ResourceAwareScheduler may place
//!   on the supervisor);
//! - `worker.heap.memory.mb` = ⌊(memory − 512) / slots × 2/3⌋.
//!
//! The memory is the worker container's limit, else its request; without either nothing is
//! derived (Storm's defaults: 4096 MB capacity, 768 MB heap). Entries of `workerConfig` win.

use workerpool_api::storm::StormWorkerPool;

use crate::quantity;

/// Name of the operator's worker container inside the pod template.
pub const WORKER_CONTAINER: &str = "worker";

/// Memory kept for the supervisor JVM (heap 256 MiB and the rest of the process), in MiB.
pub const SUPERVISOR_RESERVE_MB: u64 = 512;
/// Smallest heap a worker gets from the sizing, in MiB (Storm's default on-heap request of one
/// executor is 128 MB).
pub const MIN_HEAP_MB: u64 = 128;

/// Where the worker's heap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeapSource {
    /// Derived from the container's memory.
    Derived,
    /// `workerConfig: {worker.heap.memory.mb: …}`.
    WorkerConfig,
    /// The last `-Xmx` of `jvmOpts` (it comes after `-Xmx%HEAP-MEM%m`, so the JVM takes it).
    JvmOpts(String),
}

/// The sizing of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// The worker container's memory in MiB and which field it came from.
    pub memory: Option<(u64, &'static str)>,
    /// Slots per pod (`ports.count`).
    pub slots: u64,
    /// `supervisor.memory.capacity.mb` to write, when derived.
    pub capacity_mb: Option<u64>,
    /// `worker.heap.memory.mb` to write, when derived.
    pub heap_mb: Option<u64>,
    /// The heap one worker runs with, and where it comes from (when known).
    pub effective_heap: Option<(u64, HeapSource)>,
}

/// Memory in MiB of a quantity (`1Gi` → 1024).
fn mebibytes(q: &str) -> Option<u64> {
    let bytes = quantity::parse(q)?;
    (bytes.is_finite() && bytes > 0.0).then(|| (bytes / (1024.0 * 1024.0)).floor() as u64)
}

/// The heap of a `-Xmx` option in MiB (`-Xmx2g`, `-Xmx2048m`, `-Xmx2097152k`, bytes).
pub fn xmx_mb(option: &str) -> Option<u64> {
    let value = option.strip_prefix("-Xmx")?;
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = digits.parse().ok()?;
    match unit.to_ascii_lowercase().as_str() {
        "k" => Some(n / 1024),
        "m" => Some(n),
        "g" => Some(n * 1024),
        "t" => Some(n * 1024 * 1024),
        _ => None,
    }
    .or_else(|| (unit.is_empty()).then_some(n / (1024 * 1024)))
}

fn last_xmx(opts: &[String]) -> Option<(u64, String)> {
    opts.iter()
        .rev()
        .flat_map(|o| o.split_whitespace().rev())
        .find_map(|o| xmx_mb(o).map(|mb| (mb, o.to_string())))
}

/// The heap and capacity of `memory_mb` split over `slots`: `(heap, capacity)`.
pub fn derive(memory_mb: u64, slots: u64) -> (u64, u64) {
    let capacity = memory_mb.saturating_sub(SUPERVISOR_RESERVE_MB);
    let heap = capacity / slots.max(1) * 2 / 3;
    (heap, capacity)
}

/// The sizing of `pool`.
pub fn sizing(pool: &StormWorkerPool) -> Sizing {
    let slots = u64::try_from(pool.spec.ports().count.max(1)).unwrap_or(1);
    let resources = pool
        .spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == WORKER_CONTAINER))
        .and_then(|c| c.resources.as_ref());
    let limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| mebibytes(&q.0))
        .map(|mb| (mb, "limit"));
    let request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| mebibytes(&q.0))
        .map(|mb| (mb, "request"));
    let memory = limit.or(request);
    let derived = memory.map(|(mb, _)| derive(mb, slots));
    let config = pool.spec.worker_config.as_ref();
    let configured_heap = config
        .and_then(|c| c.get("worker.heap.memory.mb"))
        .and_then(serde_json::Value::as_f64)
        .map(|v| v.max(0.0) as u64);
    let effective_heap = match (
        pool.spec.jvm_opts.as_deref().and_then(last_xmx),
        configured_heap,
        derived,
    ) {
        (Some((mb, opt)), _, _) => Some((mb, HeapSource::JvmOpts(opt))),
        (None, Some(mb), _) => Some((mb, HeapSource::WorkerConfig)),
        (None, None, Some((heap, _))) => Some((heap, HeapSource::Derived)),
        (None, None, None) => None,
    };
    Sizing {
        memory,
        slots,
        capacity_mb: derived.map(|(_, capacity)| capacity),
        heap_mb: derived.map(|(heap, _)| heap),
        effective_heap,
    }
}

impl Sizing {
    /// Why `slots` workers of the effective heap cannot fit the container's memory (with the
    /// supervisor's reserve and half a heap of JVM overhead per worker); `None` when they fit
    /// or nothing is known.
    pub fn misfit(&self) -> Option<String> {
        let (memory, field) = self.memory?;
        let (heap, source) = self.effective_heap.clone()?;
        let need = SUPERVISOR_RESERVE_MB + self.slots * (heap * 3 / 2);
        let from = match source {
            HeapSource::Derived => "derived from the memory".to_string(),
            HeapSource::WorkerConfig => "workerConfig worker.heap.memory.mb".to_string(),
            HeapSource::JvmOpts(opt) => format!("jvmOpts {opt}"),
        };
        if heap < MIN_HEAP_MB {
            return Some(format!(
                "{} slot(s) leave a heap of {heap} MiB per worker ({from}), less than {MIN_HEAP_MB} MiB: the worker container's memory {field} is {memory} MiB; lower ports.count or raise the memory",
                self.slots
            ));
        }
        (need > memory).then(|| {
            format!(
                "{} slot(s) × {heap} MiB heap ({from}) need about {need} MiB ({SUPERVISOR_RESERVE_MB} MiB for the supervisor, 1.5 × the heap per worker), but the worker container's memory {field} is {memory} MiB: lower ports.count or the heap, or raise the memory",
                self.slots
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(memory: Option<(&str, &str)>, slots: i32, extra: serde_json::Value) -> StormWorkerPool {
        let mut resources = serde_json::json!({});
        if let Some((field, q)) = memory {
            resources = serde_json::json!({ field: {"memory": q} });
        }
        let mut spec = serde_json::json!({
            "topologyRef": "t",
            "ports": {"start": 6700, "count": slots},
            "template": {"spec": {"containers": [{"name": "worker", "resources": resources}]}},
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
            "metadata": {"name": "p"}, "spec": spec,
        }))
        .expect("pool")
    }

    #[test]
    fn heap_and_capacity_follow_memory_and_slots() {
        // (memory, slots) -> (heap, capacity), all MiB
        let table = [
            (1024, 4, 85, 512),
            (1024, 1, 341, 512),
            (2048, 1, 1024, 1536),
            (2048, 2, 512, 1536),
            (3072, 2, 853, 2560),
            (4096, 4, 597, 3584),
            (8192, 4, 1280, 7680),
            (16384, 8, 1322, 15872),
            (512, 4, 0, 0),
            (256, 1, 0, 0),
        ];
        for (memory, slots, heap, capacity) in table {
            assert_eq!(
                derive(memory, slots),
                (heap, capacity),
                "{memory} MiB, {slots} slot(s)"
            );
        }
    }

    #[test]
    fn the_limit_wins_over_the_request_and_workerconfig_or_jvmopts_over_the_derivation() {
        let s = sizing(&pool(Some(("requests", "1Gi")), 4, serde_json::json!({})));
        assert_eq!(s.memory, Some((1024, "request")));
        assert_eq!((s.heap_mb, s.capacity_mb), (Some(85), Some(512)));
        assert_eq!(s.effective_heap, Some((85, HeapSource::Derived)));
        let misfit = s.misfit().expect("4 slots in 1Gi do not fit");
        assert!(misfit.contains("less than 128 MiB"), "{misfit}");
        assert!(misfit.contains("memory request is 1024 MiB"), "{misfit}");

        let s = sizing(&pool(Some(("limits", "3Gi")), 2, serde_json::json!({})));
        assert_eq!(s.memory, Some((3072, "limit")));
        assert_eq!(s.heap_mb, Some(853));
        assert_eq!(s.misfit(), None, "the derivation fits by construction");

        let full = pool(
            Some(("limits", "3Gi")),
            2,
            serde_json::json!({"jvmOpts": ["-Xmx2g", "-XX:+UseG1GC"],
                "workerConfig": {"worker.heap.memory.mb": 2048}}),
        );
        let s = sizing(&full);
        assert_eq!(
            s.effective_heap,
            Some((2048, HeapSource::JvmOpts("-Xmx2g".into())))
        );
        let misfit = s.misfit().expect("2 × -Xmx2g do not fit 3Gi");
        assert!(
            misfit.contains("2 slot(s) × 2048 MiB heap (jvmOpts -Xmx2g) need about 6656 MiB"),
            "{misfit}"
        );

        let s = sizing(&pool(
            Some(("limits", "8Gi")),
            2,
            serde_json::json!({"workerConfig": {"worker.heap.memory.mb": 1024}}),
        ));
        assert_eq!(s.effective_heap, Some((1024, HeapSource::WorkerConfig)));
        assert_eq!(s.misfit(), None);

        let s = sizing(&pool(None, 4, serde_json::json!({})));
        assert_eq!((s.memory, s.heap_mb, s.capacity_mb), (None, None, None));
        assert_eq!(s.misfit(), None, "nothing known, nothing said");
    }

    #[test]
    fn the_memoryfit_condition_reports_a_misfit_once() {
        use crate::controllers::stormworkerpool::status::{
            MEMORY_FIT, SLOTS_DO_NOT_FIT, memory_fit, new_misfit,
        };
        use workerpool_api::conditions;
        use workerpool_api::storm::StormWorkerPoolStatus;
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        let before = StormWorkerPoolStatus::default();
        let mut st = before.clone();
        let tight = sizing(&pool(Some(("requests", "1Gi")), 4, serde_json::json!({})));
        memory_fit(&mut st, &tight, Some(1), now);
        let c = conditions::find(&st.conditions, MEMORY_FIT).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", SLOTS_DO_NOT_FIT)
        );
        assert!(
            new_misfit(Some(&before), &st).is_some(),
            "a new misfit is announced"
        );
        let mut again = st.clone();
        memory_fit(&mut again, &tight, Some(1), now);
        assert_eq!(new_misfit(Some(&st), &again), None, "once");
        let roomy = sizing(&pool(Some(("limits", "8Gi")), 4, serde_json::json!({})));
        memory_fit(&mut st, &roomy, Some(2), now);
        let c = conditions::find(&st.conditions, MEMORY_FIT).expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "SlotsFit"));
        assert_eq!(new_misfit(None, &st), None);
        let unknown = sizing(&pool(None, 4, serde_json::json!({})));
        memory_fit(&mut st, &unknown, Some(3), now);
        assert!(conditions::find(&st.conditions, MEMORY_FIT).is_none());
    }

    #[test]
    fn xmx_options_are_read_in_every_unit() {
        let cases = [
            ("-Xmx2g", Some(2048)),
            ("-Xmx2G", Some(2048)),
            ("-Xmx1536m", Some(1536)),
            ("-Xmx2097152k", Some(2048)),
            ("-Xmx1073741824", Some(1024)),
            ("-Xms2g", None),
            ("-Xmx", None),
            ("-Xmx2x", None),
        ];
        for (option, want) in cases {
            assert_eq!(xmx_mb(option), want, "{option}");
        }
        let opts = vec!["-Xmx1g -XX:+UseG1GC".to_string(), "-Xmx3g".to_string()];
        assert_eq!(last_xmx(&opts), Some((3072, "-Xmx3g".to_string())));
    }
}
