//! The pod release controller: for a worker pod being deleted that carries the
//! [`RECOVERY_FINALIZER`], it waits until the worker has stopped ([`plan::release`]), returns
//! the worker's in-flight tasks to the queue, and removes the finalizer.
//!
//! It works from the pod alone (its queue and ScalerConfig are in its annotations), so it also
//! serves pods whose QWorker is gone. A finalizer never strands a pod: if the tasks cannot be
//! returned within [`plan::RELEASE_TIMEOUT`] (the broker or the ScalerConfig is gone), the
//! finalizer is released with a Warning Event, and the ScalerConfig's [`super::sweep`] returns
//! the tasks once the broker answers again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};
use workerpool_api::QWorker;

use super::build::{QUEUE_ANNOTATION, SCALER_CONFIG_ANNOTATION};
use super::plan::{self, PodView, RECOVERY_FINALIZER, Release};
use crate::cache;
use crate::context::Shared;
use crate::error::{Error, Result};
use crate::runtime::Reason;

/// Controller name used in metrics and logs.
pub const CONTROLLER: &str = "qworker-pod-release";
/// How soon a recovery that failed is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

/// State of the release controller.
pub struct Context {
    /// Client, recorder, metrics, gate.
    pub shared: Shared,
    /// The QWorker cache (for pods made before their queue was recorded on them).
    pub qworkers: Store<QWorker>,
    /// Broker connections.
    pub brokers: crate::brokers::Brokers,
}

/// Where a pod's worker took its tasks from: (queue, ScalerConfig name).
fn source(pod: &Pod, qworkers: &Store<QWorker>) -> Option<(String, String)> {
    let annotations = pod.annotations();
    if let (Some(queue), Some(sc)) = (
        annotations.get(QUEUE_ANNOTATION),
        annotations.get(SCALER_CONFIG_ANNOTATION),
    ) {
        return Some((queue.clone(), sc.clone()));
    }
    let owner = cache::controller_owner::<QWorker, _>(pod)?;
    let qw = qworkers.get(&owner)?;
    let sc = &qw.spec.scale_config;
    Some((sc.queue.clone(), sc.scaler_config_ref.clone()))
}

/// Whether ScalerConfig `ns/name` names a broker that keeps per-worker lists; a ScalerConfig
/// not in the cache (deleted, or not yet listed) is asked, as before, so nothing is skipped on
/// a guess.
fn keeps_lists(brokers: &crate::brokers::Brokers, ns: &str, name: &str) -> bool {
    brokers
        .configs()
        .get(&ObjectRef::new(name).within(ns))
        .is_none_or(|sc| sc.spec.type_.keeps_processing_lists())
}

/// The object an Event about `pod`'s tasks is reported on: its QWorker, else the pod.
fn subject(pod: &Pod) -> ObjectReference {
    match pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            name: Some(o.name.clone()),
            namespace: pod.namespace(),
            uid: Some(o.uid.clone()),
            ..ObjectReference::default()
        },
        None => pod.object_ref(&()),
    }
}

/// Checks one pod; see the module documentation.
#[instrument(skip_all, fields(pod = %pod.name_any(), namespace = pod.namespace().unwrap_or_default()))]
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    if let Some(action) = ctx.shared.gate.closed() {
        return Ok(action);
    }
    let view = PodView::of(&pod);
    let now = Timestamp::now();
    match plan::release(&view, now) {
        Release::Nothing => Ok(Action::await_change()),
        Release::Wait(delay) => Ok(Action::requeue(delay)),
        Release::LeaveToSweep => {
            debug!("the worker never ran; its list, if any, is left to the sweep");
            unfinalize(&ctx.shared, &pod).await?;
            Ok(Action::await_change())
        }
        Release::RecoverAndRelease => {
            let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
            let name = pod.name_any();
            let ns = pod.namespace().unwrap_or_default();
            let outcome = match source(&pod, &ctx.qworkers) {
                None => Err("the pod names no queue and its QWorker is gone".to_string()),
                // Nothing of the worker's stays in the broker: no connection needed (an outage
                // of that broker, or its deleted ScalerConfig, does not hold the pod).
                Some((queue, sc)) if !keeps_lists(&ctx.brokers, &ns, &sc) => Ok((0, queue)),
                Some((queue, sc)) => match ctx.brokers.get(&ns, &sc).await {
                    Err(e) => Err(e.message),
                    Ok(broker) => broker
                        .recover(&queue, &name)
                        .await
                        .map(|n| (n, queue))
                        .map_err(|e| e.to_string()),
                },
            };
            match outcome {
                Ok((moved, queue)) => {
                    if moved > 0 {
                        info!(tasks = moved, %queue, "returned a stopped worker's tasks to the queue");
                        ctx.shared
                            .event(
                                &subject(&pod),
                                Reason::TASKS_RECOVERED,
                                "Recover",
                                format!(
                                    "Returned {moved} in-flight task(s) of worker {name} to queue {queue}"
                                ),
                            )
                            .await;
                    }
                }
                Err(why) => {
                    let waited = view
                        .deletion
                        .map_or(0.0, |d| now.duration_since(d).as_secs_f64());
                    if waited < plan::RELEASE_TIMEOUT.as_secs_f64() {
                        warn!(reason = %why, "cannot return the tasks of a stopped worker yet");
                        return Ok(Action::requeue(RETRY));
                    }
                    ctx.shared
                        .event(
                            &subject(&pod),
                            Reason::RECOVERY_TIMED_OUT,
                            "Recover",
                            format!(
                                "Released worker pod {name} without returning its tasks ({why}); they stay in the broker and return to the queue at the next sweep"
                            ),
                        )
                        .await;
                }
            }
            unfinalize(&ctx.shared, &pod).await?;
            Ok(Action::await_change())
        }
    }
}

/// Removes the recovery finalizer, guarded by the resourceVersion seen (a concurrent change
/// makes the patch fail with 409 and the pod is checked again).
async fn unfinalize(shared: &Shared, pod: &Pod) -> Result<()> {
    let remaining: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != RECOVERY_FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": pod.resource_version(),
            "finalizers": remaining,
        }
    });
    let api: Api<Pod> =
        Api::namespaced(shared.client.clone(), &pod.namespace().unwrap_or_default());
    match api
        .patch(
            &pod.name_any(),
            &PatchParams {
                field_manager: Some(crate::FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}
impl crate::runtime::ControllerContext for Context {
    const CONTROLLER: &'static str = CONTROLLER;
    fn shared(&self) -> &Shared {
        &self.shared
    }
}
