//! Reconciling one StormTopology: submit it with a Job, follow it in Storm, suspend, resume and
//! rebalance it, and kill it when it is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};
use workerpool_api::conditions::{self, READY};
use workerpool_api::storm::{
    DEFAULT_KILL_WAIT_SECONDS, RebalanceRecord, StormCluster, StormTopology, StormTopologyStatus,
    TopologyPhase,
};
use workerpool_storm::{StormApi, TopologyStatus, TopologySummary};

use super::rebalance::{self, Decision, PoolView};
use super::{
    CLUSTER_RETRY, Context, FINALIZER, KILL_POLL, KILL_TIMEOUT, MAX_BACKOFF, NOT_LISTED_AFTER_SECS,
    REBALANCE_JOB_GRACE_SECS, RESULT_FAILED, RESULT_RUNNING, RESULT_SUCCEEDED, RESYNC, SETTLING,
    build, status,
};
use crate::error::{Error, Result};
use crate::runtime::Reason;
use crate::runtime::{self, BackoffKey};
use build::JobState;
use status::{CLUSTER_READY, REBALANCED, SUBMITTED};

fn object_ref(t: &StormTopology) -> ObjectReference {
    t.object_ref(&())
}

/// Reconciles one StormTopology.
#[instrument(skip_all, fields(topology = %topology.name_any(), namespace = topology.namespace().unwrap_or_default()))]
pub async fn reconcile(topology: Arc<StormTopology>, ctx: Arc<Context>) -> Result<Action> {
    let body = reconcile_inner(&topology, &ctx);
    runtime::reconcile(&*topology, &*ctx, body, async |_: &Error| {}).await
}

/// Writes `st` as `t`'s status unless it already says so.
async fn write_status(t: &StormTopology, ctx: &Context, st: &StormTopologyStatus) -> Result<()> {
    ctx.status.write(&ctx.shared.client, t, st).await.map(drop)
}

/// What Storm says about the topology.
struct Observed {
    api: Arc<dyn StormApi>,
    found: Option<TopologySummary>,
    /// When nothing is listed under the name: the topology listed under the id recorded in
    /// status (its `topologyName` changed since it was submitted).
    previous: Option<TopologySummary>,
    /// The last component error, when `/topology/{id}` answered.
    last_error: Option<Option<String>>,
}

/// Looks the topology up by name in Storm (or, when no topology has that name, by the id
/// `previous_id` recorded in status), then reads its detail by id (a failure of the latter is
/// tolerated).
async fn look(
    ctx: &Context,
    cluster: &StormCluster,
    storm_name: &str,
    previous_id: Option<&str>,
) -> std::result::Result<Observed, String> {
    let url = cluster
        .ui_url()
        .ok_or_else(|| format!("StormCluster {} has no Storm UI URL", cluster.name_any()))?;
    let api = ctx.connector.connect(&url).map_err(|e| e.to_string())?;
    let all = api.topology_summary().await.map_err(|e| e.to_string())?;
    let found = all.iter().find(|t| t.name == storm_name).cloned();
    let previous = match (&found, previous_id) {
        (None, Some(id)) => all.iter().find(|t| t.id == id).cloned(),
        _ => None,
    };
    let last_error = match &found {
        Some(f) => match api.topology(&f.id).await {
            Ok(detail) => Some(detail.last_error()),
            Err(e) => {
                debug!(error = %e, id = %f.id, "topology detail not read; last error kept");
                None
            }
        },
        None => None,
    };
    Ok(Observed {
        api,
        found,
        previous,
        last_error,
    })
}

fn has_finalizer(t: &StormTopology) -> bool {
    t.finalizers().iter().any(|f| f == FINALIZER)
}

/// Sets the topology's finalizers to `finalizers`, guarded by the resourceVersion seen (a
/// concurrent change makes the patch fail with 409 and the topology is reconciled again).
async fn patch_finalizers(ctx: &Context, t: &StormTopology, finalizers: Vec<String>) -> Result<()> {
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": t.resource_version(),
            "finalizers": finalizers,
        }
    });
    let api: Api<StormTopology> = Api::namespaced(
        ctx.shared.client.clone(),
        &t.namespace().unwrap_or_default(),
    );
    match api
        .patch(
            &t.name_any(),
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

async fn add_finalizer(ctx: &Context, t: &StormTopology) -> Result<()> {
    let mut finalizers = t.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    patch_finalizers(ctx, t, finalizers).await
}

async fn remove_finalizer(ctx: &Context, t: &StormTopology) -> Result<()> {
    let finalizers = t
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    patch_finalizers(ctx, t, finalizers).await
}

/// The topology's cluster when it is Running; otherwise the reason and message of `ClusterReady=False`.
fn ready_cluster(
    t: &StormTopology,
    ctx: &Context,
) -> std::result::Result<StormCluster, (&'static str, String)> {
    let ns = t.namespace().unwrap_or_default();
    let name = &t.spec.cluster_ref;
    let Some(cluster) = ctx.clusters.get(&ObjectRef::new(name).within(&ns)) else {
        return Err((
            "ClusterNotFound",
            format!("StormCluster {ns}/{name} does not exist"),
        ));
    };
    if !cluster.is_running() {
        let phase = cluster.status.as_ref().and_then(|s| s.phase);
        return Err((
            "ClusterNotRunning",
            format!(
                "StormCluster {ns}/{name} is {}, waiting for Running",
                phase.map_or("without a phase", |p| p.as_str())
            ),
        ));
    }
    Ok((*cluster).clone())
}

/// The Jobs in the cache that this topology controls.
fn owned_jobs(t: &StormTopology, ctx: &Context) -> Vec<Job> {
    let ns = t.namespace();
    ctx.jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace() == ns && build::controlled_by(&**j, t))
        .map(|j| (*j).clone())
        .collect()
}

/// Creates `job`; an existing Job of that name counts as created (the name is deterministic).
async fn create_job(ctx: &Context, job: &Job) -> Result<bool> {
    let api: Api<Job> = Api::namespaced(
        ctx.shared.client.clone(),
        &job.namespace().unwrap_or_default(),
    );
    let params = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the Job `name` (and its pods); a Job already gone is fine.
async fn delete_job(ctx: &Context, namespace: &str, name: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn kill_wait(t: &StormTopology) -> u32 {
    u32::try_from(
        t.spec
            .kill_wait_seconds
            .unwrap_or(DEFAULT_KILL_WAIT_SECONDS),
    )
    .unwrap_or(0)
}

fn condition_is(st: &StormTopologyStatus, type_: &str, reason: &str, message: &str) -> bool {
    conditions::find(&st.conditions, type_)
        .is_some_and(|c| c.reason == reason && c.message == message)
}

async fn reconcile_inner(t: &StormTopology, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    if t.metadata.deletion_timestamp.is_some() {
        return finalize(t, ctx, now).await;
    }
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    let generation = t.metadata.generation;
    let mut st = t.status.clone().unwrap_or_default();

    if let Err(e) = build::validate(t) {
        let message = e.to_string();
        let reported = condition_is(&st, READY, "InvalidSpec", &message);
        status::set_phase(
            &mut st,
            TopologyPhase::Failed,
            "InvalidSpec",
            &message,
            generation,
            now,
        );
        write_status(t, ctx, &st).await?;
        if !reported {
            warn!(%message, "invalid spec");
            ctx.shared
                .event(&object_ref(t), Reason::INVALID_SPEC, "Validate", message)
                .await;
        }
        return Ok(Action::await_change());
    }

    // Only what the operator submits is killed on delete.
    match (t.is_submitted_by_operator(), has_finalizer(t)) {
        (true, false) => add_finalizer(ctx, t).await?,
        (false, true) => remove_finalizer(ctx, t).await?,
        _ => {}
    }

    let cluster = match ready_cluster(t, ctx) {
        Ok(c) => c,
        Err((reason, message)) => {
            status::set(
                &mut st,
                CLUSTER_READY,
                false,
                reason,
                &message,
                generation,
                now,
            );
            status::set_phase(
                &mut st,
                TopologyPhase::Pending,
                reason,
                message,
                generation,
                now,
            );
            write_status(t, ctx, &st).await?;
            return Ok(Action::requeue(CLUSTER_RETRY));
        }
    };
    status::set(
        &mut st,
        CLUSTER_READY,
        true,
        "ClusterRunning",
        format!("StormCluster {ns}/{} is Running", cluster.name_any()),
        generation,
        now,
    );
    let poll =
        Duration::from_secs(u64::try_from(cluster.poll_interval_seconds().max(1)).unwrap_or(15));
    let storm_name = t.storm_name();
    let storm_key = BackoffKey::of(t, "storm");

    let observed = match look(ctx, &cluster, &storm_name, st.topology_id.as_deref()).await {
        Ok(o) => {
            ctx.shared.backoff.succeeded(&storm_key);
            o
        }
        Err(message) => {
            // Doubles from the poll interval up to MAX_BACKOFF while Storm does not answer.
            let factor = ctx.shared.backoff.failed(storm_key).as_secs().max(1);
            let delay = poll
                .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
                .min(MAX_BACKOFF);
            warn!(%message, ?delay, "Storm is unreachable");
            st.message = Some(message.clone());
            status::set(
                &mut st,
                READY,
                false,
                "StormUnreachable",
                message,
                generation,
                now,
            );
            st.observed_generation = generation;
            write_status(t, ctx, &st).await?;
            return Ok(Action::requeue(delay));
        }
    };
    match &observed.found {
        Some(found) => ctx.metrics.observe(&ns, &name, found),
        None => ctx.metrics.absent(&ns, &name),
    }
    let jobs = owned_jobs(t, ctx);

    let handled = if t.is_submitted_by_operator() {
        submission(t, ctx, &cluster, &observed, &jobs, &mut st, now).await?
    } else {
        conditions::remove_condition(&mut st.conditions, SUBMITTED);
        None
    };
    let action = match (handled, &observed.found) {
        (Some(action), _) => action,
        (None, None) => {
            status::forget_storm(&mut st);
            status::set_phase(
                &mut st,
                TopologyPhase::Pending,
                "NotSubmitted",
                format!("waiting for {storm_name} to be submitted to Storm"),
                generation,
                now,
            );
            Action::requeue(poll)
        }
        (None, Some(found)) => {
            running(t, ctx, &cluster, &observed, found, &jobs, &mut st, now).await?;
            Action::requeue(poll)
        }
    };
    write_status(t, ctx, &st).await?;
    Ok(action)
}

/// The submission part of a topology with a `jar`: records a succeeded Job, deletes Jobs of
/// older specs, kills an outdated topology (redeploy), and submits when the topology is not in
/// Storm. Returns the action when it decided the phase; `None` when the topology is in Storm
/// and runs the current spec (or one the operator did not submit).
async fn submission(
    t: &StormTopology,
    ctx: &Context,
    cluster: &StormCluster,
    observed: &Observed,
    jobs: &[Job],
    st: &mut StormTopologyStatus,
    now: Timestamp,
) -> Result<Option<Action>> {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    let generation = t.metadata.generation;
    let storm_name = t.storm_name();
    let hash = build::spec_hash(t);
    let job_name = build::submit_job_name(&name, &hash);
    let job = jobs.iter().find(|j| j.name_any() == job_name);
    let state = job.map(build::job_state);

    if state == Some(JobState::Succeeded) {
        if st.submitted_hash.as_deref() != Some(hash.as_str()) {
            st.submitted_hash = Some(hash.clone());
            ctx.metrics.submission(&ns, &name, "succeeded");
            info!(job = %job_name, "submission succeeded");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::SUBMITTED,
                    "Submit",
                    format!("Job {job_name} submitted topology {storm_name} to Storm"),
                )
                .await;
        }
        // Jobs of older specs are no longer needed once the current one succeeded.
        for old in jobs.iter().filter(|j| {
            j.name_any() != job_name
                && j.labels().get(build::JOB_LABEL).map(String::as_str) == Some(build::JOB_SUBMIT)
        }) {
            delete_job(ctx, &ns, &old.name_any()).await?;
            debug!(job = %old.name_any(), "deleted the submission Job of an older spec");
        }
    }
    if job.is_some() {
        st.submit_job = Some(job_name.clone());
    }

    let outdated = st.submitted_hash.as_ref().is_some_and(|h| *h != hash);
    if observed.found.is_some() {
        match &state {
            Some(JobState::Running) => {
                status::set(
                    st,
                    SUBMITTED,
                    false,
                    "Submitting",
                    format!("Job {job_name} is submitting the current spec"),
                    generation,
                    now,
                );
                return Ok(None);
            }
            Some(JobState::Failed(why)) => {
                let message = format!("submission Job {job_name} failed: {why}");
                status::set(
                    st,
                    SUBMITTED,
                    false,
                    "SubmissionFailed",
                    message,
                    generation,
                    now,
                );
                return Ok(None);
            }
            Some(JobState::Succeeded) => {
                status::set(
                    st,
                    SUBMITTED,
                    true,
                    "Submitted",
                    format!("Job {job_name} submitted the current spec"),
                    generation,
                    now,
                );
                return Ok(None);
            }
            None if !outdated => {
                if st.submitted_hash.is_none() {
                    status::set(
                        st,
                        SUBMITTED,
                        true,
                        "FoundInStorm",
                        format!(
                            "{storm_name} was already in Storm; the operator did not submit it"
                        ),
                        generation,
                        now,
                    );
                } else {
                    status::set(
                        st,
                        SUBMITTED,
                        true,
                        "Submitted",
                        format!("Job {job_name} submitted the current spec"),
                        generation,
                        now,
                    );
                }
                return Ok(None);
            }
            None => {}
        }
    }
    // Redeploy: the spec changed since the last successful submission, and no Job of the
    // current spec exists yet. The topology to kill is the one listed under the name, or
    // under the recorded id when the name changed.
    let target = match (&observed.found, &state) {
        (Some(found), _) => Some(found),
        (None, None) if outdated => observed.previous.as_ref(),
        _ => None,
    };
    if let Some(found) = target {
        let storm_name = &found.name;
        let wait = kill_wait(t);
        status::observe(
            st,
            found,
            observed
                .last_error
                .clone()
                .unwrap_or_else(|| st.last_error.clone()),
            now,
        );
        if found.status != TopologyStatus::Killed {
            let why = format!(
                "the jar, mainClass, args, config or topologyName changed (submitted spec {}, current {hash})",
                st.submitted_hash.as_deref().unwrap_or_default()
            );
            info!(id = %found.id, %why, "redeploying");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::REDEPLOYING,
                    "Kill",
                    format!("Killing {storm_name} ({}) with a wait of {wait} s to submit the new spec: {why}", found.id),
                )
                .await;
            if let Err(e) = observed.api.kill(&found.id, wait).await {
                warn!(error = %e, "kill for the redeploy failed");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::KILL_FAILED,
                        "Kill",
                        format!(
                            "Could not kill {storm_name} ({}) for the redeploy: {e}",
                            found.id
                        ),
                    )
                    .await;
                return Ok(Some(Action::requeue(SETTLING)));
            }
            st.storm_status = Some(TopologyStatus::Killed.as_str().into());
        }
        status::set(
            st,
            SUBMITTED,
            false,
            "Redeploying",
            format!("waiting for {storm_name} to leave Storm before submitting the new spec"),
            generation,
            now,
        );
        status::set_phase(
            st,
            TopologyPhase::Killing,
            "Redeploying",
            format!("killing {storm_name} ({}) to submit the new spec", found.id),
            generation,
            now,
        );
        return Ok(Some(Action::requeue(SETTLING)));
    }

    // Not in Storm.
    match state {
        None => {
            status::forget_storm(st);
            let job = build::submit_job(t, cluster, &hash)?;
            if create_job(ctx, &job).await? {
                ctx.metrics.submission(&ns, &name, "created");
                info!(job = %job_name, "created the submission Job");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::SUBMITTING,
                        "Submit",
                        format!("Created Job {job_name} to submit {storm_name} (spec {hash})"),
                    )
                    .await;
            }
            st.submit_job = Some(job_name.clone());
            submitting(st, &job_name, generation, now);
            Ok(Some(Action::requeue(SETTLING)))
        }
        Some(JobState::Running) => {
            status::forget_storm(st);
            submitting(st, &job_name, generation, now);
            Ok(Some(Action::requeue(SETTLING)))
        }
        Some(JobState::Failed(why)) => {
            status::forget_storm(st);
            let message = format!("submission Job {job_name} failed: {why}");
            let reported = condition_is(st, SUBMITTED, "SubmissionFailed", &message);
            status::set(
                st,
                SUBMITTED,
                false,
                "SubmissionFailed",
                &message,
                generation,
                now,
            );
            status::set_phase(
                st,
                TopologyPhase::Failed,
                "SubmissionFailed",
                &message,
                generation,
                now,
            );
            if !reported {
                ctx.metrics.submission(&ns, &name, "failed");
                warn!(%message, "submission failed");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::SUBMISSION_FAILED,
                        "Submit",
                        format!(
                            "{message}; change the spec, or delete Job {job_name}, to submit again"
                        ),
                    )
                    .await;
            }
            Ok(Some(Action::requeue(RESYNC)))
        }
        Some(JobState::Succeeded) if st.topology_id.is_some() => {
            // It ran after its submission and has left Storm since (killed from the Storm UI,
            // or Nimbus lost it): submit it again. The id stays in status until the new Job is
            // created, so a reconcile that still sees the deleted Job in the cache deletes it
            // again instead of taking it for a submission that never showed up.
            delete_job(ctx, &ns, &job_name).await?;
            let message = format!(
                "{storm_name} ({}) is no longer in Storm; deleted Job {job_name} to submit it again",
                st.topology_id.as_deref().unwrap_or_default()
            );
            info!(%message, "resubmitting");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::RESUBMITTING,
                    "Submit",
                    message.clone(),
                )
                .await;
            status::set(
                st,
                SUBMITTED,
                false,
                "Resubmitting",
                &message,
                generation,
                now,
            );
            status::set_phase(
                st,
                TopologyPhase::Submitting,
                "Resubmitting",
                message,
                generation,
                now,
            );
            Ok(Some(Action::requeue(SETTLING)))
        }
        Some(JobState::Succeeded) => {
            let done = job
                .and_then(|j| j.status.as_ref())
                .and_then(|s| s.completion_time.as_ref())
                .map(|t| t.0);
            if done.is_some_and(|d| now.as_second() - d.as_second() > NOT_LISTED_AFTER_SECS) {
                // Never listed: the main class did not submit under the name it was given.
                let message = format!(
                    "Job {job_name} succeeded, but Storm has not listed a topology named {storm_name} since: does {} submit the topology under the name given as its first argument?",
                    t.spec.main_class.as_deref().unwrap_or_default()
                );
                let reported = condition_is(st, SUBMITTED, "NotListed", &message);
                status::set(st, SUBMITTED, false, "NotListed", &message, generation, now);
                status::set_phase(
                    st,
                    TopologyPhase::Failed,
                    "NotListed",
                    &message,
                    generation,
                    now,
                );
                if !reported {
                    warn!(%message, "submitted topology not listed");
                    ctx.shared
                        .event(&object_ref(t), Reason::NOT_LISTED, "Submit", message)
                        .await;
                }
                return Ok(Some(Action::requeue(RESYNC)));
            }
            status::set(
                st,
                SUBMITTED,
                true,
                "Submitted",
                format!("Job {job_name} submitted the current spec"),
                generation,
                now,
            );
            status::set_phase(
                st,
                TopologyPhase::Submitting,
                "WaitingForStorm",
                format!("Job {job_name} succeeded; waiting for Storm to list {storm_name}"),
                generation,
                now,
            );
            Ok(Some(Action::requeue(SETTLING)))
        }
    }
}

fn submitting(
    st: &mut StormTopologyStatus,
    job_name: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = format!("Job {job_name} is submitting the topology");
    status::set(
        st,
        SUBMITTED,
        false,
        "Submitting",
        &message,
        generation,
        now,
    );
    status::set_phase(
        st,
        TopologyPhase::Submitting,
        "Submitting",
        message,
        generation,
        now,
    );
}

/// A topology found in Storm that runs the current spec: status from Storm, `suspend`, and
/// the rebalance.
#[allow(clippy::too_many_arguments)]
async fn running(
    t: &StormTopology,
    ctx: &Context,
    cluster: &StormCluster,
    observed: &Observed,
    found: &TopologySummary,
    jobs: &[Job],
    st: &mut StormTopologyStatus,
    now: Timestamp,
) -> Result<()> {
    let generation = t.metadata.generation;
    let storm_name = t.storm_name();
    let id = &found.id;
    let last_error = observed
        .last_error
        .clone()
        .unwrap_or_else(|| st.last_error.clone());
    status::observe(st, found, last_error, now);
    let mut storm_status = found.status;
    match (t.spec.suspend, found.status) {
        (true, TopologyStatus::Active) => match observed.api.deactivate(id).await {
            Ok(()) => {
                storm_status = TopologyStatus::Inactive;
                info!(%id, "deactivated");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::SUSPENDED,
                        "Deactivate",
                        format!("Deactivated {storm_name} ({id}) in Storm: spec.suspend is true"),
                    )
                    .await;
            }
            Err(e) => {
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::SUSPEND_FAILED,
                        "Deactivate",
                        format!("Could not deactivate {storm_name} ({id}): {e}"),
                    )
                    .await;
            }
        },
        (false, TopologyStatus::Inactive) => match observed.api.activate(id).await {
            Ok(()) => {
                storm_status = TopologyStatus::Active;
                info!(%id, "activated");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::RESUMED,
                        "Activate",
                        format!("Activated {storm_name} ({id}) in Storm: spec.suspend is false"),
                    )
                    .await;
            }
            Err(e) => {
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::RESUME_FAILED,
                        "Activate",
                        format!("Could not activate {storm_name} ({id}): {e}"),
                    )
                    .await;
            }
        },
        _ => {}
    }
    st.storm_status = Some(storm_status.as_str().into());
    status::set_phase(
        st,
        status::phase_of(storm_status),
        status::storm_reason(storm_status),
        format!(
            "Storm reports {storm_name} ({id}) {}",
            storm_status.as_str()
        ),
        generation,
        now,
    );
    rebalance(t, ctx, cluster, found, storm_status, jobs, st, now).await
}

/// Follows the last rebalance Job and starts a new one when [`rebalance::decide`] says so.
#[allow(clippy::too_many_arguments)]
async fn rebalance(
    t: &StormTopology,
    ctx: &Context,
    cluster: &StormCluster,
    found: &TopologySummary,
    storm_status: TopologyStatus,
    jobs: &[Job],
    st: &mut StormTopologyStatus,
    now: Timestamp,
) -> Result<()> {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    let storm_name = t.storm_name();

    // The last rebalance's Job.
    if let Some(record) = st.last_rebalance.as_mut()
        && record.result.as_deref() == Some(RESULT_RUNNING)
        && let Some(job_name) = record.job_name.clone()
    {
        match jobs
            .iter()
            .find(|j| j.name_any() == job_name)
            .map(build::job_state)
        {
            Some(JobState::Succeeded) => {
                record.result = Some(RESULT_SUCCEEDED.into());
                ctx.metrics.rebalance(&ns, &name, "succeeded");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::REBALANCED,
                        "Rebalance",
                        format!(
                            "Job {job_name} rebalanced {storm_name} to {} workers",
                            record.to_workers
                        ),
                    )
                    .await;
            }
            Some(JobState::Failed(why)) => {
                record.result = Some(RESULT_FAILED.into());
                ctx.metrics.rebalance(&ns, &name, "failed");
                ctx.shared
                    .event(
                        &object_ref(t),
                        Reason::REBALANCE_FAILED,
                        "Rebalance",
                        format!(
                            "Rebalance Job {job_name} ({} → {} workers) failed: {why}",
                            record.from_workers, record.to_workers
                        ),
                    )
                    .await;
            }
            Some(JobState::Running) => {}
            None => {
                let started = record.time.parse::<Timestamp>().ok();
                if started
                    .is_none_or(|s| now.as_second() - s.as_second() > REBALANCE_JOB_GRACE_SECS)
                {
                    // Recorded but never created (the operator stopped in between), or deleted.
                    let job = build::rebalance_job(t, cluster, &job_name, record.to_workers);
                    if create_job(ctx, &job).await? {
                        info!(job = %job_name, "created the recorded rebalance Job");
                    }
                }
            }
        }
    }

    let pools: Vec<PoolView> = ctx
        .pools
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.spec.topology_ref == name)
        .map(|p| PoolView::of(&p))
        .collect();
    let record = st.last_rebalance.as_ref();
    let decision = rebalance::decide(&rebalance::Inputs {
        pools: &pools,
        workers: i32::try_from(found.workers_total.max(0)).unwrap_or(i32::MAX),
        storm_status,
        spec: t.spec.rebalance.as_ref(),
        last: record.and_then(|r| r.time.parse().ok()),
        last_running: record.is_some_and(|r| r.result.as_deref() == Some(RESULT_RUNNING)),
        last_succeeded_target: record
            .filter(|r| r.result.as_deref() == Some(RESULT_SUCCEEDED))
            .map(|r| r.to_workers),
        executors: found.executors_total,
        now,
    });
    let generation = t.metadata.generation;
    let Decision::Rebalance { from, to, reason } = decision else {
        let Decision::Hold(hold) = decision else {
            return Ok(());
        };
        debug!(hold = %hold.describe(), "no rebalance");
        match hold {
            rebalance::Hold::Unchanged => {
                status::set(
                    st,
                    REBALANCED,
                    true,
                    "WorkersMatchSlots",
                    hold.describe(),
                    generation,
                    now,
                );
            }
            rebalance::Hold::Settled { .. } => {
                let new = conditions::find(&st.conditions, REBALANCED)
                    .is_none_or(|c| c.reason != "StormSettled");
                status::set(
                    st,
                    REBALANCED,
                    true,
                    "StormSettled",
                    hold.describe(),
                    generation,
                    now,
                );
                if new {
                    info!(hold = %hold.describe(), "rebalance settled");
                    ctx.shared
                        .event(
                            &object_ref(t),
                            Reason::REBALANCE_SETTLED,
                            "Rebalance",
                            hold.describe(),
                        )
                        .await;
                }
            }
            _ => {}
        }
        return Ok(());
    };
    status::set(
        st,
        REBALANCED,
        false,
        "Rebalancing",
        format!("workers {from} → {to}: {reason}"),
        generation,
        now,
    );
    let time = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let job_name = build::rebalance_job_name(&name, time);
    st.last_rebalance = Some(RebalanceRecord {
        time: time.to_string(),
        from_workers: from,
        to_workers: to,
        reason: reason.clone(),
        job_name: Some(job_name.clone()),
        result: Some(RESULT_RUNNING.into()),
    });
    // Recorded first: a restart finds the record and creates the same Job, never a second one.
    write_status(t, ctx, st).await?;
    let job = build::rebalance_job(t, cluster, &job_name, to);
    create_job(ctx, &job).await?;
    ctx.metrics.rebalance(&ns, &name, "started");
    info!(from, to, %reason, job = %job_name, "rebalancing");
    ctx.shared
        .event(
            &object_ref(t),
            Reason::REBALANCING,
            "Rebalance",
            format!("workers {from} → {to}: {reason} (Job {job_name})"),
        )
        .await;
    Ok(())
}

/// Removes the finalizer of a topology whose kill could not be confirmed, with a Warning Event.
async fn release(
    ctx: &Context,
    t: &StormTopology,
    reason: Reason,
    message: String,
) -> Result<Action> {
    warn!(reason = reason.name(), %message, "releasing without a confirmed kill");
    ctx.shared
        .event(&object_ref(t), reason, "Kill", message)
        .await;
    remove_finalizer(ctx, t).await?;
    ctx.metrics
        .forget(&t.namespace().unwrap_or_default(), &t.name_any());
    Ok(Action::await_change())
}

/// Deletes the topology's submission Jobs (foreground: a Job goes only after its pods, so no
/// `storm jar` can still be running) and says whether any is left.
async fn delete_submissions(t: &StormTopology, ctx: &Context) -> Result<Vec<String>> {
    let ns = t.namespace().unwrap_or_default();
    let jobs: Vec<Job> = owned_jobs(t, ctx)
        .into_iter()
        .filter(|j| j.labels().get(build::JOB_LABEL).map(String::as_str) == Some(build::JOB_SUBMIT))
        .collect();
    for job in jobs
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
    {
        let api: Api<Job> = Api::namespaced(ctx.shared.client.clone(), &ns);
        match api
            .delete(&job.name_any(), &DeleteParams::foreground())
            .await
        {
            Ok(_) => info!(job = %job.name_any(), "deleted the submission Job before the kill"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(jobs.iter().map(ResourceExt::name_any).collect())
}

/// A topology being deleted: delete its submission Jobs and wait until they are gone (a Job
/// still running could submit after the kill), then kill in Storm (once; `KILLED` counts as
/// done) the topology with the recorded `status.topologyId` and the one with the current name
/// (they differ when `topologyName` changed mid-redeploy), wait until both have left
/// `/topology/summary`, then remove the finalizer. Released anyway, with a Warning Event, when
/// its cluster is gone or Storm cannot confirm the kill for [`KILL_TIMEOUT`].
async fn finalize(t: &StormTopology, ctx: &Context, now: Timestamp) -> Result<Action> {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    if !has_finalizer(t) {
        ctx.metrics.forget(&ns, &name);
        return Ok(Action::await_change());
    }
    let generation = t.metadata.generation;
    let storm_name = t.storm_name();
    let waited = t
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(0, |d| now.as_second() - d.0.as_second());
    let wait = kill_wait(t);
    let jobs = delete_submissions(t, ctx).await?;
    if !jobs.is_empty() && waited <= KILL_TIMEOUT.as_secs() as i64 {
        let mut st = t.status.clone().unwrap_or_default();
        status::set_phase(
            &mut st,
            TopologyPhase::Killing,
            "Deleting",
            format!(
                "waiting for the submission Job(s) {} to be gone before killing {storm_name}",
                jobs.join(", ")
            ),
            generation,
            now,
        );
        write_status(t, ctx, &st).await?;
        return Ok(Action::requeue(SETTLING));
    }
    let recorded_id = t.status.as_ref().and_then(|s| s.topology_id.clone());
    let cluster_name = &t.spec.cluster_ref;
    let Some(cluster) = ctx
        .clusters
        .get(&ObjectRef::new(cluster_name).within(&t.namespace().unwrap_or_default()))
    else {
        return release(
            ctx,
            t,
            Reason::CLUSTER_GONE,
            format!("StormCluster {cluster_name} is gone: removed the finalizer without killing {storm_name} in Storm"),
        )
        .await;
    };
    let outcome = async {
        let url = cluster
            .ui_url()
            .ok_or_else(|| format!("StormCluster {cluster_name} has no Storm UI URL"))?;
        let api = ctx.connector.connect(&url).map_err(|e| e.to_string())?;
        let remaining: Vec<TopologySummary> = api
            .topology_summary()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| s.name == storm_name || recorded_id.as_deref() == Some(s.id.as_str()))
            .collect();
        for f in remaining
            .iter()
            .filter(|f| f.status != TopologyStatus::Killed)
        {
            let storm_name = &f.name;
            api.kill(&f.id, wait).await.map_err(|e| e.to_string())?;
            info!(id = %f.id, wait, "killed");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::KILLING,
                    "Kill",
                    format!("Killing {storm_name} ({}) in Storm with a wait of {wait} s: the StormTopology is being deleted", f.id),
                )
                .await;
        }
        Ok::<_, String>(remaining.into_iter().next())
    }
    .await;

    let mut st = t.status.clone().unwrap_or_default();
    match outcome {
        Ok(None) => {
            info!("the topology has left Storm; releasing");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::KILLED,
                    "Kill",
                    format!("{storm_name} is no longer in Storm"),
                )
                .await;
            remove_finalizer(ctx, t).await?;
            ctx.metrics.forget(&ns, &name);
            Ok(Action::await_change())
        }
        Ok(Some(found)) => {
            let limit = i64::from(wait) + KILL_TIMEOUT.as_secs() as i64;
            if waited > limit {
                return release(
            ctx,
            t,
                    Reason::KILL_TIMED_OUT,
                    format!("{storm_name} ({}) is still listed by Storm ({}) {waited} s after the deletion; removed the finalizer anyway", found.id, found.status.as_str()),
                )
                .await;
            }
            ctx.metrics.observe(&ns, &name, &found);
            let last_error = st.last_error.clone();
            status::observe(&mut st, &found, last_error, now);
            st.storm_status = Some(TopologyStatus::Killed.as_str().into());
            status::set_phase(
                &mut st,
                TopologyPhase::Killing,
                "Deleting",
                format!(
                    "killing {storm_name} ({}) with a wait of {wait} s before the StormTopology is removed",
                    found.id
                ),
                generation,
                now,
            );
            write_status(t, ctx, &st).await?;
            Ok(Action::requeue(if wait >= 10 {
                KILL_POLL
            } else {
                SETTLING
            }))
        }
        Err(message) => {
            if waited > KILL_TIMEOUT.as_secs() as i64 {
                return release(
            ctx,
            t,
                    Reason::KILL_TIMED_OUT,
                    format!("Storm has not answered for {waited} s since the deletion ({message}); removed the finalizer without confirming that {storm_name} was killed"),
                )
                .await;
            }
            warn!(%message, "cannot kill the topology yet");
            st.message = Some(message.clone());
            status::set(
                &mut st,
                READY,
                false,
                "StormUnreachable",
                message,
                generation,
                now,
            );
            write_status(t, ctx, &st).await?;
            Ok(Action::requeue(KILL_POLL))
        }
    }
}
