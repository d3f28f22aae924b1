//! A node stand-in for API servers without nodes: it does to the worker pods of one namespace
//! what a scheduler and a kubelet would report, without running anything. New pods are bound
//! (the `binding` subresource) and reported Running and Ready with every container running; a
//! pod being deleted gets every container reported terminated, as a kubelet does once it has
//! killed them, and then its deletion finished (grace period 0). The scenario writes any other state itself (a worker that finished, ...).
//!
//! `hold` keeps new pods unbound and Pending (a cluster that cannot place them).
//!
//! The pods are bound to the Node [`NODE`], which the stand-in registers, as a kubelet does,
//! and keeps `Ready` (a heartbeat every 10 s): kube-controller-manager's pod garbage collector
//! force-deletes every pod bound to a node that does not exist, some 40 s after it first sees
//! one (and every 40 s after), and would take the scenarios' workers from under them. The Node
//! is never deleted: scenarios of other processes may bind to it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::{FIELD_MANAGER, NAMESPACE_LABEL};

/// The Node the stand-in binds pods to.
pub const NODE: &str = "e2e-node";
/// How often the stand-in renews its Node's `Ready` condition.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

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
        let nodes: Api<Node> = Api::all(client.clone());
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let selector = selector.to_string();
        let held = hold.clone();
        let task = tokio::spawn(async move {
            let mut beat: Option<std::time::Instant> = None;
            loop {
                if beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) && heartbeat(&nodes).await {
                    beat = Some(std::time::Instant::now());
                }
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

/// Registers [`NODE`] unless it exists and reports it `Ready`; whether that worked.
pub async fn heartbeat(nodes: &Api<Node>) -> bool {
    let now = Timestamp::now().to_string();
    match nodes.get_opt(NODE).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "labels": {
                    "kubernetes.io/hostname": NODE, NAMESPACE_LABEL: FIELD_MANAGER}},
            });
            let Ok(node) = serde_json::from_value::<Node>(node) else {
                return false;
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    eprintln!("e2e: the node stand-in cannot register Node {NODE}: {e}");
                    return false;
                }
            }
        }
        Err(_) => return false,
    }
    let ready = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "the e2e node stand-in", "lastHeartbeatTime": now
    }]}});
    nodes
        .patch_status(NODE, &status_patch(), &Patch::Merge(&ready))
        .await
        .is_ok()
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
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}
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
