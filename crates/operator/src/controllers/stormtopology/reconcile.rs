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

/// Whether `job` is a submission Job (not a rebalance Job).
fn is_submit_job(job: &Job) -> bool {
    job.labels().get(build::JOB_LABEL).map(String::as_str) == Some(build::JOB_SUBMIT)
}

/// What one reconcile of a topology found, passed to its steps.
struct Seen<'a> {
    t: &'a StormTopology,
    ctx: &'a Context,
    cluster: &'a StormCluster,
    observed: &'a Observed,
    /// The Jobs this topology controls.
    jobs: &'a [Job],
    now: Timestamp,
}

async fn reconcile_inner(t: &StormTopology, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    if t.metadata.deletion_timestamp.is_some() {
        return finalize(t, ctx, now).await;
    }
    if let Some(wait) = ctx.pace.wait(t) {
        return Ok(Action::requeue(wait));
    }
    let mut st = t.status.clone().unwrap_or_default();
    if let Err(e) = build::validate(t) {
        return invalid_spec(t, ctx, &mut st, e.to_string(), now).await;
    }
    sync_finalizer(t, ctx).await?;
    let cluster = match ready_cluster(t, ctx) {
        Ok(c) => c,
        Err((reason, message)) => {
            return cluster_not_ready(t, ctx, &mut st, reason, message, now).await;
        }
    };
    cluster_is_ready(t, &cluster, &mut st, now);
    let poll = poll_interval(&cluster);
    let storm_key = BackoffKey::of(t, "storm");
    let observed = match look(ctx, &cluster, &t.storm_name(), st.topology_id.as_deref()).await {
        Ok(o) => {
            ctx.shared.backoff.succeeded(&storm_key);
            o
        }
        Err(message) => {
            let delay = storm_retry(poll, ctx.shared.backoff.failed(storm_key));
            return storm_unreachable(t, ctx, &mut st, message, delay, now).await;
        }
    };
    record_metrics(t, ctx, &observed);
    let jobs = owned_jobs(t, ctx);
    let seen = Seen {
        t,
        ctx,
        cluster: &cluster,
        observed: &observed,
        jobs: &jobs,
        now,
    };
    let handled = if t.is_submitted_by_operator() {
        submission(&seen, &mut st).await?
    } else {
        conditions::remove_condition(&mut st.conditions, SUBMITTED);
        None
    };
    let action = match (handled, &observed.found) {
        (Some(action), _) => action,
        (None, None) => {
            not_in_storm_yet(t, &mut st, now);
            Action::requeue(poll)
        }
        (None, Some(found)) => {
            running(&seen, found, &mut st).await?;
            Action::requeue(poll)
        }
    };
    write_status(t, ctx, &st).await?;
    Ok(action)
}

/// Marks the topology `Failed` for an invalid spec, with a Warning Event the first time that
/// message is reported; waits for a change of the spec.
async fn invalid_spec(
    t: &StormTopology,
    ctx: &Context,
    st: &mut StormTopologyStatus,
    message: String,
    now: Timestamp,
) -> Result<Action> {
    let reported = condition_is(st, READY, "InvalidSpec", &message);
    status::set_phase(
        st,
        TopologyPhase::Failed,
        "InvalidSpec",
        &message,
        t.metadata.generation,
        now,
    );
    write_status(t, ctx, st).await?;
    if !reported {
        warn!(%message, "invalid spec");
        ctx.shared
            .event(&object_ref(t), Reason::INVALID_SPEC, "Validate", message)
            .await;
    }
    Ok(Action::await_change())
}

/// Adds the finalizer to a topology the operator submits and removes it from one it does not:
/// only what the operator submits is killed on delete.
async fn sync_finalizer(t: &StormTopology, ctx: &Context) -> Result<()> {
    match (t.is_submitted_by_operator(), has_finalizer(t)) {
        (true, false) => add_finalizer(ctx, t).await,
        (false, true) => remove_finalizer(ctx, t).await,
        _ => Ok(()),
    }
}

/// Sets `ClusterReady=False` and phase `Pending` with `reason` and `message`, and retries later.
async fn cluster_not_ready(
    t: &StormTopology,
    ctx: &Context,
    st: &mut StormTopologyStatus,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<Action> {
    let generation = t.metadata.generation;
    status::set(st, CLUSTER_READY, false, reason, &message, generation, now);
    status::set_phase(st, TopologyPhase::Pending, reason, message, generation, now);
    write_status(t, ctx, st).await?;
    Ok(Action::requeue(CLUSTER_RETRY))
}

/// Sets `ClusterReady=True` for the Running `cluster`.
fn cluster_is_ready(
    t: &StormTopology,
    cluster: &StormCluster,
    st: &mut StormTopologyStatus,
    now: Timestamp,
) {
    let ns = t.namespace().unwrap_or_default();
    status::set(
        st,
        CLUSTER_READY,
        true,
        "ClusterRunning",
        format!("StormCluster {ns}/{} is Running", cluster.name_any()),
        t.metadata.generation,
        now,
    );
}

/// How often the cluster asks its topologies to be polled (at least a second).
fn poll_interval(cluster: &StormCluster) -> Duration {
    Duration::from_secs(u64::try_from(cluster.poll_interval_seconds().max(1)).unwrap_or(15))
}

/// The delay before asking Storm again after a failure: the poll interval times the backoff's
/// `factor` (1 s, 2 s, 4 s, ... read as 1, 2, 4, ...), at most [`MAX_BACKOFF`], so that it doubles
/// from the poll interval while Storm does not answer.
fn storm_retry(poll: Duration, factor: Duration) -> Duration {
    let factor = factor.as_secs().max(1);
    poll.saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// Reports Storm as unreachable in `Ready` and retries after `delay`.
async fn storm_unreachable(
    t: &StormTopology,
    ctx: &Context,
    st: &mut StormTopologyStatus,
    message: String,
    delay: Duration,
    now: Timestamp,
) -> Result<Action> {
    let generation = t.metadata.generation;
    warn!(%message, ?delay, "Storm is unreachable");
    st.message = Some(message.clone());
    status::set(
        st,
        READY,
        false,
        "StormUnreachable",
        message,
        generation,
        now,
    );
    st.observed_generation = generation;
    write_status(t, ctx, st).await?;
    Ok(Action::requeue(delay))
}

/// Exports what Storm reports of the topology, or that it is not listed, as metrics.
fn record_metrics(t: &StormTopology, ctx: &Context, observed: &Observed) {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    match &observed.found {
        Some(found) => ctx.metrics.observe(&ns, &name, found),
        None => ctx.metrics.absent(&ns, &name),
    }
}

/// Phase `Pending` for a topology that is not in Storm and that nothing is submitting.
fn not_in_storm_yet(t: &StormTopology, st: &mut StormTopologyStatus, now: Timestamp) {
    status::forget_storm(st);
    status::set_phase(
        st,
        TopologyPhase::Pending,
        "NotSubmitted",
        format!("waiting for {} to be submitted to Storm", t.storm_name()),
        t.metadata.generation,
        now,
    );
}

/// The Job that submits the current spec, and how far it got.
struct Submission<'a> {
    /// The hash of the current spec.
    hash: String,
    job_name: String,
    job: Option<&'a Job>,
    state: Option<JobState>,
}

impl<'a> Submission<'a> {
    /// The submission of `t`'s current spec, found among `jobs`.
    fn of(t: &StormTopology, jobs: &'a [Job]) -> Self {
        let hash = build::spec_hash(t);
        let job_name = build::submit_job_name(&t.name_any(), &hash);
        let job = jobs.iter().find(|j| j.name_any() == job_name);
        let state = job.map(build::job_state);
        Submission {
            hash,
            job_name,
            job,
            state,
        }
    }
}

/// The submission part of a topology with a `jar`: records a succeeded Job, deletes Jobs of
/// older specs, kills an outdated topology (redeploy), and submits when the topology is not in
/// Storm. Returns the action when it decided the phase; `None` when the topology is in Storm
/// and runs the current spec (or one the operator did not submit).
async fn submission(seen: &Seen<'_>, st: &mut StormTopologyStatus) -> Result<Option<Action>> {
    let sub = Submission::of(seen.t, seen.jobs);
    if sub.state == Some(JobState::Succeeded) {
        record_success(seen, &sub, st).await?;
    }
    if sub.job.is_some() {
        st.submit_job = Some(sub.job_name.clone());
    }
    let outdated = st.submitted_hash.as_ref().is_some_and(|h| *h != sub.hash);
    if seen.observed.found.is_some() && submitted_in_storm(seen, &sub, outdated, st) {
        return Ok(None);
    }
    if let Some(found) = redeploy_target(seen.observed, sub.state.as_ref(), outdated) {
        return redeploy(seen, &sub, found, st).await.map(Some);
    }
    not_in_storm(seen, &sub, st).await.map(Some)
}

/// Records the current spec's succeeded Job as the submission (with an Event the first time),
/// then deletes the Jobs of older specs: they are no longer needed.
async fn record_success(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<()> {
    let (t, ctx) = (seen.t, seen.ctx);
    let ns = t.namespace().unwrap_or_default();
    let job_name = &sub.job_name;
    if st.submitted_hash.as_deref() != Some(sub.hash.as_str()) {
        st.submitted_hash = Some(sub.hash.clone());
        ctx.metrics.submission(&ns, &t.name_any(), "succeeded");
        info!(job = %job_name, "submission succeeded");
        ctx.shared
            .event(
                &object_ref(t),
                Reason::SUBMITTED,
                "Submit",
                format!(
                    "Job {job_name} submitted topology {} to Storm",
                    t.storm_name()
                ),
            )
            .await;
    }
    for old in seen
        .jobs
        .iter()
        .filter(|j| j.name_any() != *job_name && is_submit_job(j))
    {
        delete_job(ctx, &ns, &old.name_any()).await?;
        debug!(job = %old.name_any(), "deleted the submission Job of an older spec");
    }
    Ok(())
}

/// For a topology in Storm: sets `Submitted` from the current spec's Job (or, without one, from
/// the recorded submission) and says so; false, without a change, when the spec changed since
/// the last submission and no Job of the current spec exists (a redeploy is due).
fn submitted_in_storm(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    outdated: bool,
    st: &mut StormTopologyStatus,
) -> bool {
    let job_name = &sub.job_name;
    let (ok, reason, message) = match &sub.state {
        Some(JobState::Running) => (
            false,
            "Submitting",
            format!("Job {job_name} is submitting the current spec"),
        ),
        Some(JobState::Failed(why)) => (
            false,
            "SubmissionFailed",
            format!("submission Job {job_name} failed: {why}"),
        ),
        Some(JobState::Succeeded) => (
            true,
            "Submitted",
            format!("Job {job_name} submitted the current spec"),
        ),
        None if outdated => return false,
        None if st.submitted_hash.is_none() => (
            true,
            "FoundInStorm",
            format!(
                "{} was already in Storm; the operator did not submit it",
                seen.t.storm_name()
            ),
        ),
        None => (
            true,
            "Submitted",
            format!("Job {job_name} submitted the current spec"),
        ),
    };
    status::set(
        st,
        SUBMITTED,
        ok,
        reason,
        message,
        seen.t.metadata.generation,
        seen.now,
    );
    true
}

/// The topology a redeploy kills, when one is due: the one listed under the name, or under the
/// recorded id when the name changed and the spec changed since the last successful submission
/// with no Job of the current spec yet.
fn redeploy_target<'o>(
    observed: &'o Observed,
    state: Option<&JobState>,
    outdated: bool,
) -> Option<&'o TopologySummary> {
    match (&observed.found, state) {
        (Some(found), _) => Some(found),
        (None, None) if outdated => observed.previous.as_ref(),
        _ => None,
    }
}

/// Redeploy: kills `found` (unless Storm reports it killed already) and waits for it to leave
/// Storm before the new spec is submitted.
async fn redeploy(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    found: &TopologySummary,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    let last_error = seen
        .observed
        .last_error
        .clone()
        .unwrap_or_else(|| st.last_error.clone());
    status::observe(st, found, last_error, seen.now);
    if found.status != TopologyStatus::Killed {
        let why = format!(
            "the jar, mainClass, args, config or topologyName changed (submitted spec {}, current {})",
            st.submitted_hash.as_deref().unwrap_or_default(),
            sub.hash
        );
        if !kill_for_redeploy(seen, found, &why).await {
            return Ok(Action::requeue(SETTLING));
        }
        st.storm_status = Some(TopologyStatus::Killed.as_str().into());
    }
    redeploying(st, found, seen.t.metadata.generation, seen.now);
    Ok(Action::requeue(SETTLING))
}

/// Kills `found` in Storm for a redeploy, with an Event; false (with a Warning Event) when
/// Storm refused.
async fn kill_for_redeploy(seen: &Seen<'_>, found: &TopologySummary, why: &str) -> bool {
    let (t, ctx) = (seen.t, seen.ctx);
    let storm_name = &found.name;
    let wait = kill_wait(t);
    info!(id = %found.id, %why, "redeploying");
    ctx.shared
        .event(
            &object_ref(t),
            Reason::REDEPLOYING,
            "Kill",
            format!(
                "Killing {storm_name} ({}) with a wait of {wait} s to submit the new spec: {why}",
                found.id
            ),
        )
        .await;
    let Err(e) = seen.observed.api.kill(&found.id, wait).await else {
        return true;
    };
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
    false
}

/// `Submitted=False` and phase `Killing` while `found` leaves Storm for a redeploy.
fn redeploying(
    st: &mut StormTopologyStatus,
    found: &TopologySummary,
    generation: Option<i64>,
    now: Timestamp,
) {
    let storm_name = &found.name;
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
}

/// A topology that is not in Storm: submits the current spec, follows its Job, or says why it
/// is not listed.
async fn not_in_storm(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    match &sub.state {
        None => create_submission(seen, sub, st).await,
        Some(JobState::Running) => {
            status::forget_storm(st);
            submitting(st, &sub.job_name, seen.t.metadata.generation, seen.now);
            Ok(Action::requeue(SETTLING))
        }
        Some(JobState::Failed(why)) => submission_failed(seen, sub, why, st).await,
        Some(JobState::Succeeded) if st.topology_id.is_some() => resubmit(seen, sub, st).await,
        Some(JobState::Succeeded) => wait_for_listing(seen, sub, st).await,
    }
}

/// Creates the Job that submits the current spec (with an Event when it is new).
async fn create_submission(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    let (t, ctx) = (seen.t, seen.ctx);
    let job_name = &sub.job_name;
    status::forget_storm(st);
    let job = build::submit_job(t, seen.cluster, &sub.hash)?;
    if create_job(ctx, &job).await? {
        ctx.metrics
            .submission(&t.namespace().unwrap_or_default(), &t.name_any(), "created");
        info!(job = %job_name, "created the submission Job");
        ctx.shared
            .event(
                &object_ref(t),
                Reason::SUBMITTING,
                "Submit",
                format!(
                    "Created Job {job_name} to submit {} (spec {})",
                    t.storm_name(),
                    sub.hash
                ),
            )
            .await;
    }
    st.submit_job = Some(job_name.clone());
    submitting(st, job_name, t.metadata.generation, seen.now);
    Ok(Action::requeue(SETTLING))
}

/// Phase `Failed` for a failed submission Job, with a Warning Event the first time.
async fn submission_failed(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    why: &str,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    let (t, ctx) = (seen.t, seen.ctx);
    let job_name = &sub.job_name;
    status::forget_storm(st);
    let message = format!("submission Job {job_name} failed: {why}");
    let reported = condition_is(st, SUBMITTED, "SubmissionFailed", &message);
    unsubmitted(
        st,
        TopologyPhase::Failed,
        "SubmissionFailed",
        &message,
        t.metadata.generation,
        seen.now,
    );
    if !reported {
        ctx.metrics
            .submission(&t.namespace().unwrap_or_default(), &t.name_any(), "failed");
        warn!(%message, "submission failed");
        ctx.shared
            .event(
                &object_ref(t),
                Reason::SUBMISSION_FAILED,
                "Submit",
                format!("{message}; change the spec, or delete Job {job_name}, to submit again"),
            )
            .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Submits again a topology that ran after its submission and has left Storm since (killed
/// from the Storm UI, or Nimbus lost it), by deleting its succeeded Job. The id stays in status
/// until the new Job is created, so a reconcile that still sees the deleted Job in the cache
/// deletes it again instead of taking it for a submission that never showed up.
async fn resubmit(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    let (t, ctx) = (seen.t, seen.ctx);
    let job_name = &sub.job_name;
    delete_job(ctx, &t.namespace().unwrap_or_default(), job_name).await?;
    let message = format!(
        "{} ({}) is no longer in Storm; deleted Job {job_name} to submit it again",
        t.storm_name(),
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
    unsubmitted(
        st,
        TopologyPhase::Submitting,
        "Resubmitting",
        &message,
        t.metadata.generation,
        seen.now,
    );
    Ok(Action::requeue(SETTLING))
}

/// Whether the submission `job` completed more than [`NOT_LISTED_AFTER_SECS`] ago.
fn listing_overdue(job: Option<&Job>, now: Timestamp) -> bool {
    let done = job
        .and_then(|j| j.status.as_ref())
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0);
    done.is_some_and(|d| now.as_second() - d.as_second() > NOT_LISTED_AFTER_SECS)
}

/// A succeeded submission that Storm does not list yet: waits for Storm, and fails the topology
/// when Storm has not listed it for [`NOT_LISTED_AFTER_SECS`].
async fn wait_for_listing(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    if listing_overdue(sub.job, seen.now) {
        return not_listed(seen, sub, st).await;
    }
    let job_name = &sub.job_name;
    let generation = seen.t.metadata.generation;
    status::set(
        st,
        SUBMITTED,
        true,
        "Submitted",
        format!("Job {job_name} submitted the current spec"),
        generation,
        seen.now,
    );
    status::set_phase(
        st,
        TopologyPhase::Submitting,
        "WaitingForStorm",
        format!(
            "Job {job_name} succeeded; waiting for Storm to list {}",
            seen.t.storm_name()
        ),
        generation,
        seen.now,
    );
    Ok(Action::requeue(SETTLING))
}

/// Phase `Failed` for a submission that Storm never listed: the main class did not submit under
/// the name it was given. With a Warning Event the first time.
async fn not_listed(
    seen: &Seen<'_>,
    sub: &Submission<'_>,
    st: &mut StormTopologyStatus,
) -> Result<Action> {
    let t = seen.t;
    let message = format!(
        "Job {} succeeded, but Storm has not listed a topology named {} since: does {} submit the topology under the name given as its first argument?",
        sub.job_name,
        t.storm_name(),
        t.spec.main_class.as_deref().unwrap_or_default()
    );
    let reported = condition_is(st, SUBMITTED, "NotListed", &message);
    unsubmitted(
        st,
        TopologyPhase::Failed,
        "NotListed",
        &message,
        t.metadata.generation,
        seen.now,
    );
    if !reported {
        warn!(%message, "submitted topology not listed");
        seen.ctx
            .shared
            .event(&object_ref(t), Reason::NOT_LISTED, "Submit", message)
            .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Sets `Submitted=False` and `phase`, both with `reason` and `message`.
fn unsubmitted(
    st: &mut StormTopologyStatus,
    phase: TopologyPhase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    status::set(st, SUBMITTED, false, reason, message, generation, now);
    status::set_phase(st, phase, reason, message, generation, now);
}

/// `Submitted=False` and phase `Submitting` while Job `job_name` submits the topology.
fn submitting(
    st: &mut StormTopologyStatus,
    job_name: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = format!("Job {job_name} is submitting the topology");
    unsubmitted(
        st,
        TopologyPhase::Submitting,
        "Submitting",
        &message,
        generation,
        now,
    );
}

/// A topology found in Storm that runs the current spec: status from Storm, `suspend`, and
/// the rebalance.
async fn running(
    seen: &Seen<'_>,
    found: &TopologySummary,
    st: &mut StormTopologyStatus,
) -> Result<()> {
    let last_error = seen
        .observed
        .last_error
        .clone()
        .unwrap_or_else(|| st.last_error.clone());
    status::observe(st, found, last_error, seen.now);
    let storm_status = apply_suspend(seen, found).await;
    storm_phase(seen.t, found, storm_status, st, seen.now);
    rebalance(seen, found, storm_status, st).await
}

/// Deactivates an active topology whose `spec.suspend` is true and activates an inactive one
/// whose `spec.suspend` is false; returns Storm's status after that.
async fn apply_suspend(seen: &Seen<'_>, found: &TopologySummary) -> TopologyStatus {
    match (seen.t.spec.suspend, found.status) {
        (true, TopologyStatus::Active) => deactivate(seen, &found.id).await,
        (false, TopologyStatus::Inactive) => activate(seen, &found.id).await,
        (_, status) => status,
    }
}

/// Deactivates the topology `id` in Storm, with an Event; returns Storm's status after that.
async fn deactivate(seen: &Seen<'_>, id: &str) -> TopologyStatus {
    let (t, ctx) = (seen.t, seen.ctx);
    let storm_name = t.storm_name();
    match seen.observed.api.deactivate(id).await {
        Ok(()) => {
            info!(%id, "deactivated");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::SUSPENDED,
                    "Deactivate",
                    format!("Deactivated {storm_name} ({id}) in Storm: spec.suspend is true"),
                )
                .await;
            TopologyStatus::Inactive
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
            TopologyStatus::Active
        }
    }
}

/// Activates the topology `id` in Storm, with an Event; returns Storm's status after that.
async fn activate(seen: &Seen<'_>, id: &str) -> TopologyStatus {
    let (t, ctx) = (seen.t, seen.ctx);
    let storm_name = t.storm_name();
    match seen.observed.api.activate(id).await {
        Ok(()) => {
            info!(%id, "activated");
            ctx.shared
                .event(
                    &object_ref(t),
                    Reason::RESUMED,
                    "Activate",
                    format!("Activated {storm_name} ({id}) in Storm: spec.suspend is false"),
                )
                .await;
            TopologyStatus::Active
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
            TopologyStatus::Inactive
        }
    }
}

/// The phase (and `Ready`) that Storm's status `storm_status` of `found` gives.
fn storm_phase(
    t: &StormTopology,
    found: &TopologySummary,
    storm_status: TopologyStatus,
    st: &mut StormTopologyStatus,
    now: Timestamp,
) {
    st.storm_status = Some(storm_status.as_str().into());
    status::set_phase(
        st,
        status::phase_of(storm_status),
        status::storm_reason(storm_status),
        format!(
            "Storm reports {} ({}) {}",
            t.storm_name(),
            found.id,
            storm_status.as_str()
        ),
        t.metadata.generation,
        now,
    );
}

/// Follows the last rebalance Job and starts a new one when [`rebalance::decide`] says so.
async fn rebalance(
    seen: &Seen<'_>,
    found: &TopologySummary,
    storm_status: TopologyStatus,
    st: &mut StormTopologyStatus,
) -> Result<()> {
    follow_rebalance_job(seen, st).await?;
    let pools = pool_views(seen.t, seen.ctx);
    let decision = decide_rebalance(
        seen.t,
        &pools,
        found,
        storm_status,
        st.last_rebalance.as_ref(),
        seen.now,
    );
    match decision {
        Decision::Rebalance { from, to, reason } => {
            start_rebalance(seen, st, from, to, reason).await
        }
        Decision::Hold(hold) => {
            report_hold(seen, st, &hold).await;
            Ok(())
        }
    }
}

/// Follows the Job of the last rebalance while it is recorded as running: records its result
/// (with an Event), or creates it when it was recorded but is missing.
async fn follow_rebalance_job(seen: &Seen<'_>, st: &mut StormTopologyStatus) -> Result<()> {
    let Some(record) = st.last_rebalance.as_mut() else {
        return Ok(());
    };
    if record.result.as_deref() != Some(RESULT_RUNNING) {
        return Ok(());
    }
    let Some(job_name) = record.job_name.clone() else {
        return Ok(());
    };
    let storm_name = seen.t.storm_name();
    match seen
        .jobs
        .iter()
        .find(|j| j.name_any() == job_name)
        .map(build::job_state)
    {
        Some(JobState::Succeeded) => {
            record.result = Some(RESULT_SUCCEEDED.into());
            rebalance_ended(
                seen,
                "succeeded",
                Reason::REBALANCED,
                format!(
                    "Job {job_name} rebalanced {storm_name} to {} workers",
                    record.to_workers
                ),
            )
            .await;
        }
        Some(JobState::Failed(why)) => {
            record.result = Some(RESULT_FAILED.into());
            rebalance_ended(
                seen,
                "failed",
                Reason::REBALANCE_FAILED,
                format!(
                    "Rebalance Job {job_name} ({} → {} workers) failed: {why}",
                    record.from_workers, record.to_workers
                ),
            )
            .await;
        }
        Some(JobState::Running) => {}
        None => create_missing_rebalance_job(seen, record, &job_name).await?,
    }
    Ok(())
}

/// Counts a finished rebalance as `result` and reports it with an Event.
async fn rebalance_ended(seen: &Seen<'_>, result: &'static str, reason: Reason, message: String) {
    let t = seen.t;
    seen.ctx
        .metrics
        .rebalance(&t.namespace().unwrap_or_default(), &t.name_any(), result);
    seen.ctx
        .shared
        .event(&object_ref(t), reason, "Rebalance", message)
        .await;
}

/// Creates the recorded rebalance Job when it is missing past [`REBALANCE_JOB_GRACE_SECS`]:
/// recorded but never created (the operator stopped in between), or deleted.
async fn create_missing_rebalance_job(
    seen: &Seen<'_>,
    record: &RebalanceRecord,
    job_name: &str,
) -> Result<()> {
    let started = record.time.parse::<Timestamp>().ok();
    if started.is_none_or(|s| seen.now.as_second() - s.as_second() > REBALANCE_JOB_GRACE_SECS) {
        let job = build::rebalance_job(seen.t, seen.cluster, job_name, record.to_workers);
        if create_job(seen.ctx, &job).await? {
            info!(job = %job_name, "created the recorded rebalance Job");
        }
    }
    Ok(())
}

/// The pools whose `topologyRef` names the topology, as the rebalance decision sees them.
fn pool_views(t: &StormTopology, ctx: &Context) -> Vec<PoolView> {
    let ns = t.namespace().unwrap_or_default();
    let name = t.name_any();
    ctx.pools
        .state()
        .into_iter()
        // Borrowed names: this runs over every cached pool at each of the topology's polls.
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str()) && p.spec.topology_ref == name
        })
        .map(|p| PoolView::of(&p))
        .collect()
}

/// Whether to rebalance, from the pools, what Storm runs and the last rebalance `record`.
fn decide_rebalance(
    t: &StormTopology,
    pools: &[PoolView],
    found: &TopologySummary,
    storm_status: TopologyStatus,
    record: Option<&RebalanceRecord>,
    now: Timestamp,
) -> Decision {
    rebalance::decide(&rebalance::Inputs {
        pools,
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
    })
}

/// Sets `Rebalanced=True` when the workers match the slots or Storm settled (with an Event when
/// it newly settled); other holds leave the condition as it is.
async fn report_hold(seen: &Seen<'_>, st: &mut StormTopologyStatus, hold: &rebalance::Hold) {
    let generation = seen.t.metadata.generation;
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
                seen.now,
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
                seen.now,
            );
            if new {
                info!(hold = %hold.describe(), "rebalance settled");
                seen.ctx
                    .shared
                    .event(
                        &object_ref(seen.t),
                        Reason::REBALANCE_SETTLED,
                        "Rebalance",
                        hold.describe(),
                    )
                    .await;
            }
        }
        _ => {}
    }
}

/// Records a rebalance from `from` to `to` workers in status, writes it, then creates its Job.
/// Recorded first: a restart finds the record and creates the same Job, never a second one.
async fn start_rebalance(
    seen: &Seen<'_>,
    st: &mut StormTopologyStatus,
    from: i32,
    to: i32,
    reason: String,
) -> Result<()> {
    let (t, ctx) = (seen.t, seen.ctx);
    let job_name = record_rebalance(t, st, from, to, &reason, seen.now);
    write_status(t, ctx, st).await?;
    let job = build::rebalance_job(t, seen.cluster, &job_name, to);
    create_job(ctx, &job).await?;
    ctx.metrics
        .rebalance(&t.namespace().unwrap_or_default(), &t.name_any(), "started");
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

/// Sets `Rebalanced=False` and records a running rebalance from `from` to `to` workers in
/// status; returns the name of its Job.
fn record_rebalance(
    t: &StormTopology,
    st: &mut StormTopologyStatus,
    from: i32,
    to: i32,
    reason: &str,
    now: Timestamp,
) -> String {
    status::set(
        st,
        REBALANCED,
        false,
        "Rebalancing",
        format!("workers {from} → {to}: {reason}"),
        t.metadata.generation,
        now,
    );
    let time = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let job_name = build::rebalance_job_name(&t.name_any(), time);
    st.last_rebalance = Some(RebalanceRecord {
        time: time.to_string(),
        from_workers: from,
        to_workers: to,
        reason: reason.to_owned(),
        job_name: Some(job_name.clone()),
        result: Some(RESULT_RUNNING.into()),
    });
    job_name
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
        .filter(is_submit_job)
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
    if !has_finalizer(t) {
        ctx.metrics
            .forget(&t.namespace().unwrap_or_default(), &t.name_any());
        return Ok(Action::await_change());
    }
    let waited = since_deletion(t, now);
    let jobs = delete_submissions(t, ctx).await?;
    if !jobs.is_empty() && waited <= KILL_TIMEOUT.as_secs() as i64 {
        return wait_for_submissions(t, ctx, &jobs, now).await;
    }
    let cluster_name = &t.spec.cluster_ref;
    let Some(cluster) = ctx
        .clusters
        .get(&ObjectRef::new(cluster_name).within(&t.namespace().unwrap_or_default()))
    else {
        return release(
            ctx,
            t,
            Reason::CLUSTER_GONE,
            format!("StormCluster {cluster_name} is gone: removed the finalizer without killing {} in Storm", t.storm_name()),
        )
        .await;
    };
    match kill_in_storm(t, ctx, &cluster).await {
        Ok(None) => left_storm(t, ctx).await,
        Ok(Some(found)) => still_listed(t, ctx, &found, waited, now).await,
        Err(message) => storm_silent(t, ctx, message, waited, now).await,
    }
}

/// Seconds since the topology's deletion was asked for.
fn since_deletion(t: &StormTopology, now: Timestamp) -> i64 {
    t.metadata
        .deletion_timestamp
        .as_ref()
        .map_or(0, |d| now.as_second() - d.0.as_second())
}

/// Phase `Killing` while the submission Jobs `jobs` are being deleted, before the kill.
async fn wait_for_submissions(
    t: &StormTopology,
    ctx: &Context,
    jobs: &[String],
    now: Timestamp,
) -> Result<Action> {
    let mut st = t.status.clone().unwrap_or_default();
    status::set_phase(
        &mut st,
        TopologyPhase::Killing,
        "Deleting",
        format!(
            "waiting for the submission Job(s) {} to be gone before killing {}",
            jobs.join(", "),
            t.storm_name()
        ),
        t.metadata.generation,
        now,
    );
    write_status(t, ctx, &st).await?;
    Ok(Action::requeue(SETTLING))
}

/// Kills in Storm, with an Event each, the topologies listed under the current name or the
/// recorded id that Storm does not report killed yet; returns one that is still listed, or the
/// error when Storm did not answer.
async fn kill_in_storm(
    t: &StormTopology,
    ctx: &Context,
    cluster: &StormCluster,
) -> std::result::Result<Option<TopologySummary>, String> {
    let storm_name = t.storm_name();
    let recorded_id = t.status.as_ref().and_then(|s| s.topology_id.clone());
    let wait = kill_wait(t);
    let url = cluster
        .ui_url()
        .ok_or_else(|| format!("StormCluster {} has no Storm UI URL", t.spec.cluster_ref))?;
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
    Ok(remaining.into_iter().next())
}

/// The topology has left Storm: removes the finalizer, with an Event.
async fn left_storm(t: &StormTopology, ctx: &Context) -> Result<Action> {
    info!("the topology has left Storm; releasing");
    ctx.shared
        .event(
            &object_ref(t),
            Reason::KILLED,
            "Kill",
            format!("{} is no longer in Storm", t.storm_name()),
        )
        .await;
    remove_finalizer(ctx, t).await?;
    ctx.metrics
        .forget(&t.namespace().unwrap_or_default(), &t.name_any());
    Ok(Action::await_change())
}

/// Storm still lists `found` after the kill: phase `Killing` and wait, or release it when the
/// kill wait plus [`KILL_TIMEOUT`] has passed since the deletion.
async fn still_listed(
    t: &StormTopology,
    ctx: &Context,
    found: &TopologySummary,
    waited: i64,
    now: Timestamp,
) -> Result<Action> {
    let storm_name = t.storm_name();
    let wait = kill_wait(t);
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
    ctx.metrics
        .observe(&t.namespace().unwrap_or_default(), &t.name_any(), found);
    let mut st = t.status.clone().unwrap_or_default();
    let last_error = st.last_error.clone();
    status::observe(&mut st, found, last_error, now);
    st.storm_status = Some(TopologyStatus::Killed.as_str().into());
    status::set_phase(
        &mut st,
        TopologyPhase::Killing,
        "Deleting",
        format!(
            "killing {storm_name} ({}) with a wait of {wait} s before the StormTopology is removed",
            found.id
        ),
        t.metadata.generation,
        now,
    );
    write_status(t, ctx, &st).await?;
    Ok(Action::requeue(kill_poll(wait)))
}

/// How soon to look again while Storm kills with a wait of `wait` seconds.
fn kill_poll(wait: u32) -> Duration {
    if wait >= 10 { KILL_POLL } else { SETTLING }
}

/// Storm did not answer during the deletion: reports it and retries, or releases the topology
/// when [`KILL_TIMEOUT`] has passed since the deletion.
async fn storm_silent(
    t: &StormTopology,
    ctx: &Context,
    message: String,
    waited: i64,
    now: Timestamp,
) -> Result<Action> {
    if waited > KILL_TIMEOUT.as_secs() as i64 {
        return release(
            ctx,
            t,
            Reason::KILL_TIMED_OUT,
            format!("Storm has not answered for {waited} s since the deletion ({message}); removed the finalizer without confirming that {} was killed", t.storm_name()),
        )
        .await;
    }
    warn!(%message, "cannot kill the topology yet");
    let mut st = t.status.clone().unwrap_or_default();
    st.message = Some(message.clone());
    status::set(
        &mut st,
        READY,
        false,
        "StormUnreachable",
        message,
        t.metadata.generation,
        now,
    );
    write_status(t, ctx, &st).await?;
    Ok(Action::requeue(KILL_POLL))
}
