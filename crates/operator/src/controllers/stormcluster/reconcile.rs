//! Reconciling one StormCluster: apply a managed cluster's Nimbus, UI and configuration, poll its Storm UI, and write its status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};
use workerpool_api::conditions::{self, READY};
use workerpool_api::storm::{ClusterMode, StormCluster, StormClusterStatus};

use super::{Context, build, key, status};
use crate::cache::child::{Child, ChildKind};
use crate::controllers::cached;
use crate::error::{Category, Error, Result};
use crate::runtime;
use crate::runtime::Reason;
use status::{Daemons, Outcome, Poll, StormRead};

fn object_ref(cluster: &StormCluster) -> ObjectReference {
    cluster.object_ref(&())
}

/// Reconciles one cluster: applies a Managed cluster's objects, polls Storm, writes the status
/// when it changed, and requeues for the next poll. API failures return `Err` (retried with
/// backoff); an apply rejected as invalid also sets the phase `Failed`.
#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<StormCluster>, ctx: Arc<Context>) -> Result<Action> {
    let body = async {
        if cluster.metadata.deletion_timestamp.is_some() {
            // Owner references delete the objects; only what the operator keeps is dropped.
            ctx.forget(
                &cluster.namespace().unwrap_or_default(),
                &cluster.name_any(),
            );
            return Ok(Action::await_change());
        }
        let result = reconcile_inner(&cluster, &ctx).await;
        ctx.children.publish(&ctx.shared, &*cluster).await;
        result
    };
    runtime::reconcile(&*cluster, &*ctx, body, async |e: &Error| {
        let failed = status::failed(&cluster, "ApplyRejected", &e.scrubbed(), Timestamp::now());
        if write_status(&cluster, &ctx, &failed).await.is_ok() {
            observe(&cluster, &ctx, &failed);
        }
    })
    .await
}

async fn reconcile_inner(cluster: &StormCluster, ctx: &Context) -> Result<Action> {
    let now = Timestamp::now();
    if let Err(e) = build::validate(cluster) {
        return report_invalid(cluster, ctx, &e, now).await;
    }
    let daemons = match cluster.spec.mode {
        ClusterMode::External => None,
        ClusterMode::Managed => {
            let children = match build::children(cluster) {
                Ok(c) => c,
                Err(e) => return report_invalid(cluster, ctx, &e, now).await,
            };
            Some(apply_children(cluster, ctx, &children).await?)
        }
    };
    let ui_url = cluster.ui_url().unwrap_or_default();
    let poll = poll(ctx, &ui_url).await;
    let outcome = status::outcome(&poll);
    if let Err(e) = &poll {
        debug!(error = %build::scrub_userinfo(&e.to_string()), ?outcome, "Storm UI read failed");
    }
    let new_status = status::compute(cluster, daemons, &poll, now);
    let notes = status::notes(cluster.status.as_ref(), &new_status);
    write_status(cluster, ctx, &new_status).await?;
    for note in notes {
        if note.reason.is_warning() {
            warn!(reason = note.reason.name(), message = %note.message, "Storm cluster");
        } else {
            info!(reason = note.reason.name(), message = %note.message, "Storm cluster");
        }
        ctx.shared
            .event(&object_ref(cluster), note.reason, "PollStorm", note.message)
            .await;
    }
    observe(cluster, ctx, &new_status);
    if outcome == Outcome::Invalid {
        return Ok(Action::await_change());
    }
    let delay = ctx.next_poll(&key(cluster), cluster.poll_interval_seconds(), outcome);
    Ok(Action::requeue(delay))
}

fn observe(cluster: &StormCluster, ctx: &Context, status: &StormClusterStatus) {
    ctx.metrics.observe(
        &cluster.namespace().unwrap_or_default(),
        &cluster.name_any(),
        cluster.spec.mode,
        status,
        status::is_reachable(status),
    );
}

/// Reads the cluster and Nimbus summaries from the UI at `ui_url`.
async fn poll(ctx: &Context, ui_url: &str) -> Poll {
    let api = ctx.connector.connect(ui_url)?;
    let summary = api.cluster_summary().await?;
    let nimbuses = api.nimbus_summary().await?;
    Ok(StormRead { summary, nimbuses })
}

async fn report_invalid(
    cluster: &StormCluster,
    ctx: &Context,
    err: &Error,
    now: Timestamp,
) -> Result<Action> {
    let message = build::scrub_userinfo(&err.to_string());
    let unchanged = cluster
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, READY))
        .is_some_and(|c| c.reason == Category::InvalidSpec.as_str() && c.message == message);
    let failed = status::failed(cluster, "InvalidSpec", &message, now);
    write_status(cluster, ctx, &failed).await?;
    observe(cluster, ctx, &failed);
    if !unchanged {
        warn!(%message, "invalid spec");
        ctx.shared
            .event(
                &object_ref(cluster),
                Reason::INVALID_SPEC,
                "Validate",
                message,
            )
            .await;
    }
    Ok(Action::await_change())
}

/// Applies a Managed cluster's objects (each skipped when its cached copy is up to date) and
/// returns its daemons' readiness as the StatefulSet and Deployment report it.
async fn apply_children(
    cluster: &StormCluster,
    ctx: &Context,
    children: &build::Children,
) -> Result<Daemons> {
    let client = ctx.shared.client.clone();
    let ns = cluster.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let caches = &ctx.caches;

    let cm = &children.config_map;
    apply_child(
        ctx,
        cluster,
        &config_maps,
        cm,
        cached(&caches.config_maps, cm),
    )
    .await?;
    let svc = &children.nimbus_service;
    apply_child(ctx, cluster, &services, svc, cached(&caches.services, svc)).await?;
    let sts = &children.nimbus;
    let nimbus = apply_child(
        ctx,
        cluster,
        &statefulsets,
        sts,
        cached(&caches.statefulsets, sts).filter(|c| same_replicas_sts(c, sts)),
    )
    .await?;
    let ui = &children.ui;
    let ui = apply_child(
        ctx,
        cluster,
        &deployments,
        ui,
        cached(&caches.deployments, ui).filter(|c| same_replicas_deploy(c, ui)),
    )
    .await?;
    let svc = &children.ui_service;
    apply_child(ctx, cluster, &services, svc, cached(&caches.services, svc)).await?;

    Ok(Daemons {
        nimbus_ready: nimbus
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        nimbus_desired: cluster.nimbus_replicas(),
        ui_ready: ui
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        ui_desired: build::ui_replicas(cluster),
    })
}

/// A replica count changed by someone else (`kubectl scale`) keeps the hash: set it back.
fn same_replicas_sts(current: &Child<StatefulSet>, desired: &StatefulSet) -> bool {
    current.spec.as_ref().and_then(|s| s.replicas) == desired.spec.as_ref().and_then(|s| s.replicas)
}

fn same_replicas_deploy(current: &Child<Deployment>, desired: &Deployment) -> bool {
    current.spec.as_ref().and_then(|s| s.replicas) == desired.spec.as_ref().and_then(|s| s.replicas)
}

/// Applies `object` unless the cached `current` is up to date (see
/// [`crate::controllers::apply_child`]).
async fn apply_child<K>(
    ctx: &Context,
    cluster: &StormCluster,
    api: &Api<K>,
    object: &K,
    current: Option<Child<K>>,
) -> Result<Child<K>>
where
    K: ChildKind,
{
    crate::controllers::apply_child(&ctx.children, cluster, api, object, current).await
}

async fn write_status(
    cluster: &StormCluster,
    ctx: &Context,
    status: &StormClusterStatus,
) -> Result<()> {
    ctx.status
        .write(&ctx.shared.client, cluster, status)
        .await
        .map(drop)
}
