//! Reconciling one QWorker: observe its pods, let the planner decide, create, drain and delete
//! pods, return the tasks of crashed workers, and write the reconciler's part of the status.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};
use workerpool_api::QWorker;

use super::{Context, RESYNC, SETTLING, autoscaler, build, plan, status, vpa};
use crate::cache;
use crate::controllers::qworker::autoscaler::owned_by;
use crate::error::{Error, Result};
use crate::runtime;
use crate::runtime::Reason;
use plan::{DrainReason, Observed, PodView};

/// Reconciles one QWorker.
#[instrument(skip_all, fields(qworker = %qw.name_any(), namespace = qw.namespace().unwrap_or_default()))]
pub async fn reconcile(qw: Arc<QWorker>, ctx: Arc<Context>) -> Result<Action> {
    let body = reconcile_inner(&qw, &ctx);
    runtime::reconcile(&*qw, &*ctx, body, async |e: &Error| {
        // `InvalidSpec`, or the API server's refusal of what the spec asks for (`Rejected`,
        // `Forbidden`: a pod refused by admission).
        let reason = e.category().as_str();
        if let Err(write) = report_refused(&qw, &ctx, reason, &e.scrubbed()).await {
            warn!(error = %write, "could not report the refused spec");
        }
    })
    .await
}

/// Sets `Ready=False` with `reason` and the message.
async fn report_refused(qw: &QWorker, ctx: &Context, reason: &str, message: &str) -> Result<()> {
    let fields = status::refused(qw, reason, message, Timestamp::now());
    status::write(qw, &ctx.shared.client, &fields, None)
        .await
        .map(drop)
}

/// The requests activateVPA gives new pods, from `status.maxContainerResourcesUsage`.
pub fn vpa_requests(qw: &QWorker) -> BTreeMap<String, BTreeMap<String, String>> {
    let record = qw
        .status
        .as_ref()
        .map(|s| s.max_container_resources_usage.clone())
        .unwrap_or_default();
    vpa::requests(qw, &record)
}

/// Starts the autoscaler's poll of `qw` if needed and returns its first fields when it hands
/// them over (a new QWorker: they go out with this reconcile's status); `Err` with the requeue
/// when it has not looked at the queue yet (after a start, nothing is decided from a desired
/// count older than its first look, which comes within one poll), or when it has but the cache
/// shows no status yet: the first status write (the hand-over's or the autoscaler's own) is on
/// its way, and an apply computed without it would remove the fields it wrote.
fn autoscaler_answer(
    qw: &QWorker,
    ctx: &Context,
) -> std::result::Result<Option<autoscaler::Handover>, Action> {
    let Some(autoscaler) = &ctx.autoscaler else {
        return Ok(None);
    };
    autoscaler.ensure(qw);
    match autoscaler.answer(qw) {
        autoscaler::Answer::NotYet => Err(Action::requeue(cache::NOT_READY_RETRY)),
        autoscaler::Answer::Answered if qw.status.is_none() => {
            Err(Action::requeue(cache::NOT_READY_RETRY))
        }
        autoscaler::Answer::Answered => Ok(None),
        autoscaler::Answer::HandOver(h) => Ok(Some(h)),
    }
}

/// Writes the reconciler's `fields` (with the autoscaler's `handover`, if any) and tells the
/// autoscaler whether its handed fields were written.
async fn write_status(
    qw: &QWorker,
    ctx: &Context,
    fields: &status::ReconcilerStatus,
    handover: Option<autoscaler::Handover>,
) -> Result<()> {
    let handed = handover.as_ref().map(|h| h.fields.clone());
    let written = status::write(qw, &ctx.shared.client, fields, handed).await;
    if let Some(h) = handover {
        h.landed(matches!(written, Ok(true)));
    }
    written.map(drop)
}

async fn reconcile_inner(qw: &QWorker, ctx: &Context) -> Result<Action> {
    build::validate(qw).map_err(Error::InvalidSpec)?;
    let handover = match autoscaler_answer(qw, ctx) {
        Ok(handover) => handover,
        Err(wait) => return Ok(wait),
    };
    let sc = &qw.spec.scale_config;
    let ns = qw.namespace().unwrap_or_default();
    let uid = qw.metadata.uid.clone().unwrap_or_default();

    // Observe.
    let spec = build::template_spec(qw, &vpa_requests(qw));
    let hash = build::pod_spec_hash(qw, &spec);
    let views: Vec<PodView> = ctx
        .pods
        .owned_by(&uid)
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str()) && owned_by(p, Some(uid.as_str()))
        })
        .map(|p| PodView::of(p))
        .collect();
    let (pending_creates, pending_drains) = ctx.expectations.settle(&uid, &views);
    let desired = handover
        .as_ref()
        .map(|h| h.desired)
        .or_else(|| qw.status.as_ref().map(|s| s.desired_replicas))
        .unwrap_or(0)
        .clamp(sc.min_replicas.max(0), sc.max_replicas.max(0));
    // Decide.
    let plan = plan::plan(&Observed {
        qworker: &qw.name_any(),
        pods: &views,
        hash: &hash,
        desired,
        pending_creates: &pending_creates,
        pending_drains: &pending_drains,
        now: Timestamp::now(),
    });

    // Act.
    let acted = act(qw, ctx, &plan, &spec, &hash).await?;
    let current = plan.current + acted.created as i32;
    let fields = status::observed(
        qw,
        &status::Observed {
            plan: &plan,
            current,
            desired,
            hash: &hash,
            views: &views,
            acted: acted.any(),
            ineffective: qw
                .status
                .as_ref()
                .and_then(autoscaler::ineffective_condition),
        },
        Timestamp::now(),
    );
    write_status(qw, ctx, &fields, handover).await?;
    let waiting = !pending_creates.is_empty()
        || !pending_drains.is_empty()
        || acted.any()
        || views.iter().any(|v| v.draining || v.terminating());
    let next = if waiting { SETTLING } else { RESYNC };
    // Look again when the crash backoff ends, or a kept crashed pod's retention does.
    let timed = [
        plan.crash_loop.as_ref().map(|l| l.retry_in),
        plan.next_expiry,
    ];
    Ok(Action::requeue(
        timed
            .into_iter()
            .flatten()
            .map(|d| d.max(Duration::from_secs(1)))
            .fold(next, Duration::min),
    ))
}

/// What [`act`] did.
#[derive(Default)]
struct Acted {
    created: usize,
    drained: usize,
    deleted: usize,
}

impl Acted {
    fn any(&self) -> bool {
        self.created + self.drained + self.deleted > 0
    }
}

/// Carries out `plan`: recoveries first, then deletions (of pods whose tasks are safe), drains
/// and creations, with an Event for each kind of change.
async fn act(
    qw: &QWorker,
    ctx: &Context,
    plan: &plan::Plan,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    hash: &str,
) -> Result<Acted> {
    let ns = qw.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let target = Target {
        qw,
        ctx,
        pods: &pods,
        labels: crate::metrics::QWorkerLabels {
            namespace: ns.clone(),
            qworker: qw.name_any(),
        },
    };
    let unrecovered = recover(ctx, qw, &plan.recover).await;
    mark_crashed(ctx, qw, &pods, &plan.mark_crashed).await?;
    let deleted = target
        .delete(plan.delete.iter().filter(|p| !unrecovered.contains(*p)))
        .await?;
    let drained = target.drain(&plan.drain, hash).await?;
    let (created, failure) = target.create(plan.create, spec, hash).await;
    let acted = Acted {
        created,
        drained,
        deleted,
    };
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(acted),
    }
}

/// The QWorker a reconcile acts on, with what each step needs.
struct Target<'a> {
    qw: &'a QWorker,
    ctx: &'a Context,
    pods: &'a Api<Pod>,
    labels: crate::metrics::QWorkerLabels,
}

impl Target<'_> {
    /// Deletes the pods whose work is over; how many went.
    async fn delete<'p>(&self, names: impl Iterator<Item = &'p String>) -> Result<usize> {
        let mut deleted = Vec::new();
        for pod in names {
            match self.pods.delete(pod, &DeleteParams::background()).await {
                Ok(_) => deleted.push(pod.clone()),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !deleted.is_empty() {
            info!(pods = ?deleted, "deleted worker pods whose work is over");
            self.ctx
                .shared
                .event(
                    &self.qw.object_ref(&()),
                    Reason::DELETED,
                    "DeletePod",
                    format!(
                        "Deleted {} worker pod(s) that finished, drained or never started: {}",
                        deleted.len(),
                        deleted.join(", ")
                    ),
                )
                .await;
        }
        Ok(deleted.len())
    }

    /// Asks the pods of `drain` to finish their task and exit (their drain annotation, with
    /// the current pod-spec `hash`); how many were asked.
    async fn drain(&self, drain: &[(String, DrainReason)], hash: &str) -> Result<usize> {
        let uid = self.qw.metadata.uid.clone().unwrap_or_default();
        let params = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let mut drained: Vec<String> = Vec::new();
        for (pod, reason) in drain {
            let patch = serde_json::json!({
                "metadata": { "annotations": {
                    build::DRAIN_ANNOTATION: reason.as_str(),
                    build::CURRENT_HASH_ANNOTATION: hash,
                }}
            });
            match self.pods.patch(pod, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.ctx.expectations.drained(&uid, pod);
                    self.ctx
                        .shared
                        .metrics
                        .drains_requested
                        .get_or_create(&self.labels)
                        .inc();
                    drained.push(format!("{pod} ({})", reason.as_str()));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !drained.is_empty() {
            let scale_down = drain.iter().any(|(_, r)| *r == DrainReason::ScaleDown);
            self.ctx
                .shared
                .event(
                    &self.qw.object_ref(&()),
                    if scale_down {
                        Reason::DRAIN_REQUESTED
                    } else {
                        Reason::ROLLING_OUT
                    },
                    "Drain",
                    format!(
                        "Asked {} worker(s) to finish their task and exit: {}",
                        drained.len(),
                        drained.join(", ")
                    ),
                )
                .await;
        }
        Ok(drained.len())
    }

    /// Creates `count` worker pods of `spec`; how many were created, and the error that
    /// stopped the creation, if any (what was created before it is still announced).
    async fn create(
        &self,
        count: usize,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        hash: &str,
    ) -> (usize, Option<kube::Error>) {
        let uid = self.qw.metadata.uid.clone().unwrap_or_default();
        let params = PostParams {
            field_manager: Some(crate::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let mut created = Vec::new();
        let mut failure = None;
        for _ in 0..count {
            let pod_name = build::pod_name(&self.labels.qworker);
            let pod = build::pod(self.qw, spec, hash, &pod_name);
            match self.pods.create(&params, &pod).await {
                Ok(_) => {
                    self.ctx.expectations.created(&uid, &pod_name);
                    self.ctx
                        .shared
                        .metrics
                        .pods_created
                        .get_or_create(&self.labels)
                        .inc();
                    created.push(pod_name);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !created.is_empty() {
            self.ctx
                .shared
                .event(
                    &self.qw.object_ref(&()),
                    Reason::CREATED,
                    "CreatePod",
                    format!(
                        "Created {} worker pod(s): {}",
                        created.len(),
                        created.join(", ")
                    ),
                )
                .await;
        }
        (created.len(), failure)
    }
}

/// Crashed pods kept for inspection, seen for the first time: their in-flight tasks go back to
/// the queue, then the pod is annotated with its place in the crash streak (which also says its
/// tasks were returned). A pod whose tasks cannot be returned now is tried again next time.
async fn mark_crashed(
    ctx: &Context,
    qw: &QWorker,
    pods: &Api<Pod>,
    marks: &[(String, u32)],
) -> Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = marks.iter().map(|(n, _)| n.clone()).collect();
    let unrecovered = recover(ctx, qw, &names).await;
    let params = PatchParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for (pod, streak) in marks.iter().filter(|(n, _)| !unrecovered.contains(n)) {
        let patch = serde_json::json!({
            "metadata": { "annotations": { plan::CRASH_STREAK_ANNOTATION: streak.to_string() } }
        });
        match pods.patch(pod, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(%pod, streak, "crashed worker pod kept for inspection");
                ctx.shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::CRASH_LOOPING,
                        "KeepFailedPod",
                        format!(
                            "Worker pod {pod} failed ({streak} crash(es) in a row); its tasks are back on the queue and the pod is kept for inspection"
                        ),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Moves the in-flight tasks of the workers `names` (which no longer run) back to the queue;
/// returns the names whose tasks could not be returned now (the broker is unreachable).
async fn recover(ctx: &Context, qw: &QWorker, names: &[String]) -> HashSet<String> {
    if names.is_empty() {
        return HashSet::new();
    }
    let sc = &qw.spec.scale_config;
    let ns = qw.namespace().unwrap_or_default();
    let broker = match ctx.brokers.get(&ns, &sc.scaler_config_ref).await {
        Ok(b) => b,
        Err(e) => {
            warn!(
                reason = e.reason,
                "cannot recover tasks of gone workers yet"
            );
            return names.iter().cloned().collect();
        }
    };
    let mut failed = HashSet::new();
    for pod in names {
        match broker.recover(&sc.queue, pod).await {
            Ok(0) => {}
            Ok(n) => {
                info!(%pod, tasks = n, "returned the tasks of a gone worker to the queue");
                ctx.shared
                    .event(
                        &qw.object_ref(&()),
                        Reason::TASKS_RECOVERED,
                        "Recover",
                        format!(
                            "Returned {n} in-flight task(s) of worker {pod} to queue {}",
                            sc.queue
                        ),
                    )
                    .await;
            }
            Err(e) => {
                warn!(%pod, error = %e, "could not recover tasks");
                failed.insert(pod.clone());
            }
        }
    }
    failed
}
