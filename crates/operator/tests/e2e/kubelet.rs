//! A node stand-in for API servers without nodes: it does to the worker pods of one namespace
//! what a scheduler and a kubelet would report, without running anything. New pods are bound
//! (the `binding` subresource) and reported Running and Ready with every container running; a
//! pod being deleted gets every container reported terminated, as a kubelet does once it has
//! killed them, and then its deletion finished (grace period 0). The scenario writes any other state itself (a worker that finished, ...).
//!
//! `hold` keeps new pods unbound and Pending (a cluster that cannot place them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The stand-in; stops when dropped.
pub struct Kubelet {
    hold: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// Serves the pods of `namespace` that match `selector`, every 200 ms.
    pub fn start(client: Client, namespace: &str, selector: &str) -> Self {
        let hold = Arc::new(AtomicBool::new(false));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let selector = selector.to_string();
        let held = hold.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(pods) = api.list(&ListParams::default().labels(&selector)).await {
                    for pod in pods.items {
                        step(&api, &pod, held.load(Ordering::SeqCst)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { hold, task }
    }

    /// Keeps new pods unbound and Pending (`true`) or places them again (`false`).
    pub fn hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }
}

fn containers(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect()
}

fn status_patch() -> PatchParams {
    PatchParams {
        field_manager: Some("e2e-kubelet".into()),
        ..PatchParams::default()
    }
}

async fn step(api: &Api<Pod>, pod: &Pod, hold: bool) {
    let name = pod.name_any();
    let now = Timestamp::now().to_string();
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        if !bound || statuses.is_empty() {
            return;
        }
        let all_terminated = statuses
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
        if all_terminated {
            // The containers are gone: finish the graceful deletion, as a kubelet does (the
            // object stays while finalizers remain).
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            return;
        }
        let reported: Vec<_> = containers(pod)
            .into_iter()
            .map(|c| {
                json!({"name": c, "image": "", "imageID": "", "ready": false, "restartCount": 0,
                       "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}})
            })
            .collect();
        let _ = api
            .patch_status(
                &name,
                &status_patch(),
                &Patch::Merge(&json!({"status": {"containerStatuses": reported,
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}]}})),
            )
            .await;
        return;
    }
    if !bound {
        if hold {
            return;
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "e2e-node"}
        });
        if api
            .create_subresource::<serde_json::Value, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
            .is_err()
        {
            return;
        }
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Pending")
        || !statuses.is_empty()
    {
        return;
    }
    let running: Vec<_> = containers(pod)
        .into_iter()
        .map(|c| {
            json!({"name": c, "image": "", "imageID": "", "ready": true, "restartCount": 0,
                   "started": true, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let _ = api
        .patch_status(
            &name,
            &status_patch(),
            &Patch::Merge(&json!({"status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "startTime": now,
                "containerStatuses": running,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}
                ]
            }})),
        )
        .await;
}
