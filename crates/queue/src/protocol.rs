//! The names of the queue-worker protocol (docs/worker-protocol.md), written once and shared by
//! the operator, which sets them on worker pods, and the Rust worker SDK, which reads them. The
//! Python SDK (`sdk/python/src/qworker`) keeps its own copy; a test of this crate checks that it
//! holds the same values.

/// Label of every worker pod: its QWorker's name.
pub const QWORKER_LABEL: &str = "quickube.com/qworker";
/// Label of every worker pod: the pod-spec hash it was created from.
pub const POD_SPEC_HASH_LABEL: &str = "quickube.com/pod-spec-hash";

/// Annotation the operator sets (to a non-empty value) on a pod it wants to leave: the worker
/// finishes its task and exits 0.
pub const DRAIN_ANNOTATION: &str = "quickube.com/drain";
/// Annotation the operator keeps equal to the QWorker's `status.currentPodSpecHash`: a worker
/// whose own hash differs finishes its task and exits 0.
pub const CURRENT_HASH_ANNOTATION: &str = "quickube.com/current-pod-spec-hash";
/// Annotation of a worker pod: the queue it consumes (the key of its processing list).
pub const QUEUE_ANNOTATION: &str = "quickube.com/queue";
/// Annotation of a worker pod: the ScalerConfig its broker connection comes from.
pub const SCALER_CONFIG_ANNOTATION: &str = "quickube.com/scaler-config";
/// Annotation on every worker pod: the name of its worker container (the template's first
/// container), so that the pod's state is read from that container even when an admission
/// webhook inserted a sidecar before it.
pub const WORKER_CONTAINER_ANNOTATION: &str = "quickube.com/worker-container";
/// Finalizer on worker pods: held until a stopped worker's tasks are back on the queue.
pub const RECOVERY_FINALIZER: &str = "quickube.com/task-recovery";

/// Where the downward-API volume with the pod's annotations is mounted.
pub const PODINFO_DIR: &str = "/etc/qworker";
/// The annotations file in [`PODINFO_DIR`].
pub const DEFAULT_ANNOTATIONS_FILE: &str = "/etc/qworker/annotations";

/// Environment: the QWorker's name.
pub const ENV_QWORKER_NAME: &str = "QWORKER_NAME";
/// Environment: the queue to consume.
pub const ENV_QUEUE: &str = "QWORKER_QUEUE";
/// Environment: the pod's name (downward API); names its processing list.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Environment: the pod's namespace (downward API).
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Environment: the pod-spec hash the pod was created from.
pub const ENV_POD_SPEC_HASH: &str = "POD_SPEC_HASH";
/// Environment: the path of the annotations file.
pub const ENV_ANNOTATIONS_FILE: &str = "QWORKER_ANNOTATIONS_FILE";
/// Environment (set by the user): the broker's URL.
pub const ENV_BROKER_URL: &str = "QWORKER_BROKER_URL";
/// Environment (set by the user, from a Secret): the broker's password, replacing the URL's.
pub const ENV_BROKER_PASSWORD: &str = "QWORKER_BROKER_PASSWORD";
/// Environment (optional): seconds a worker may take to finish its task after SIGTERM.
pub const ENV_GRACE_PERIOD_SECONDS: &str = "QWORKER_GRACE_PERIOD_SECONDS";
/// Environment (optional): seconds between two reads of the annotations while idle.
pub const ENV_POLL_SECONDS: &str = "QWORKER_POLL_SECONDS";
/// Environment (optional, NATS, Python SDK only): the JetStream stream, overriding the URL's
/// `?stream=`.
pub const ENV_NATS_STREAM: &str = "QWORKER_NATS_STREAM";

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn python(file: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../sdk/python/src/qworker")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The value of `NAME = "value"` in Python source (module constant or class attribute).
    fn constant(source: &str, name: &str) -> String {
        source
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix('='))
            .and_then(|v| v.trim().strip_prefix('"')?.split('"').next())
            .unwrap_or_else(|| panic!("the Python SDK defines no {name}"))
            .to_string()
    }

    #[test]
    fn the_python_sdk_uses_the_same_names() {
        let annotations = python("annotations.py");
        assert_eq!(constant(&annotations, "ANNOTATION_DRAIN"), DRAIN_ANNOTATION);
        assert_eq!(
            constant(&annotations, "ANNOTATION_CURRENT_POD_SPEC_HASH"),
            CURRENT_HASH_ANNOTATION
        );
        assert_eq!(
            constant(&annotations, "DEFAULT_ANNOTATIONS_FILE"),
            DEFAULT_ANNOTATIONS_FILE
        );
        let worker = python("worker.py");
        for (name, value) in [
            ("WORKER_NAME", ENV_QWORKER_NAME),
            ("POD_NAME", ENV_POD_NAME),
            ("POD_NAMESPACE", ENV_POD_NAMESPACE),
            ("POD_SPEC_HASH", ENV_POD_SPEC_HASH),
            ("BROKER_URL", ENV_BROKER_URL),
            ("BROKER_PASSWORD", ENV_BROKER_PASSWORD),
            ("QUEUE", ENV_QUEUE),
            ("ANNOTATIONS_FILE", ENV_ANNOTATIONS_FILE),
            ("GRACE_PERIOD_SECONDS", ENV_GRACE_PERIOD_SECONDS),
            ("POLL_SECONDS", ENV_POLL_SECONDS),
            ("NATS_STREAM", ENV_NATS_STREAM),
        ] {
            assert_eq!(constant(&worker, name), value, "{name}");
        }
        assert!(DEFAULT_ANNOTATIONS_FILE.starts_with(PODINFO_DIR));
    }
}
