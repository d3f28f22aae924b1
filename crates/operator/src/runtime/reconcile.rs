//! The reconcile wrapper and the error policy every controller runs with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, warn};

use super::BackoffKey;
use crate::context::Shared;
use crate::error::{Category, Error, Result};
use crate::runtime::Reason;

/// How soon a reconcile that lost a write race (HTTP 409) is tried again: the next try reads
/// the winner's write, so it needs no back-off.
pub const CONFLICT_RETRY: Duration = Duration::from_millis(250);

/// What the runtime needs from a controller's context.
pub trait ControllerContext: Send + Sync + 'static {
    /// The controller's name: the `controller` label of the reconcile metrics.
    const CONTROLLER: &'static str;
    /// The state every controller shares.
    fn shared(&self) -> &Shared;
}

/// Runs `body`, one reconcile of `object`, the same way for every kind:
/// - nothing while this replica may not act (not the leader, caches not synced yet);
/// - its duration in `workerpool_reconcile_duration_seconds`;
/// - on success, the object's back-off forgotten;
/// - a create refused because the namespace is being deleted is neither reported nor retried
///   (the object goes with its namespace), unless the object is itself being deleted and holds
///   a finalizer, whose clean-up must still happen;
/// - any other failure: a Warning Event with the error's [`Category`] as reason and its text
///   without credentials; when the spec is invalid or the API server refused what it asks for
///   ([`Category::refused`]), `on_refused` puts that on the object's status; then the error goes
///   to [`error_policy`].
pub async fn reconcile<K, C, OnRefused>(
    object: &K,
    ctx: &C,
    body: impl Future<Output = Result<Action>>,
    on_refused: OnRefused,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
    C: ControllerContext,
    OnRefused: AsyncFnOnce(&Error),
{
    let shared = ctx.shared();
    if let Some(action) = shared.gate.closed() {
        return Ok(action);
    }
    let _timer = shared.metrics.reconcile_started(C::CONTROLLER);
    match body.await {
        Ok(action) => {
            shared.backoff.succeeded(&BackoffKey::reconcile(object));
            Ok(action)
        }
        Err(e) if e.namespace_terminating() && !cleaning_up(object) => {
            debug!(
                kind = K::kind(&()).as_ref(),
                object = object.name_any(),
                "namespace is being deleted; nothing to create"
            );
            Ok(Action::await_change())
        }
        Err(e) => {
            let category = e.category();
            shared
                .event(
                    &object.object_ref(&()),
                    Reason::warning(category.as_str()),
                    "Reconcile",
                    e.scrubbed(),
                )
                .await;
            if category == Category::InvalidSpec || category.refused() {
                on_refused(&e).await;
            }
            Err(e)
        }
    }
}

/// Whether `object` is being deleted and holds a finalizer: its clean-up is still to come.
fn cleaning_up<K: Resource>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some()
        && object
            .meta()
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
}

/// What a controller does after a failed reconcile, the same for every kind: counts it in
/// `workerpool_reconcile_errors_total`; an invalid spec waits for the spec to change; a lost
/// write race is tried again after [`CONFLICT_RETRY`]; anything else after the object's
/// back-off (1 s doubling up to 5 min, per kind and uid).
pub fn error_policy<K, C>(object: Arc<K>, err: &Error, ctx: Arc<C>) -> Action
where
    K: Resource<DynamicType = ()>,
    C: ControllerContext,
{
    let shared = ctx.shared();
    let category = err.category();
    shared
        .metrics
        .reconcile_failed(C::CONTROLLER, category.as_str());
    let kind = K::kind(&());
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let delay = match category {
        Category::InvalidSpec => {
            warn!(kind = kind.as_ref(), %namespace, %name, error = %err.scrubbed(), "invalid spec; waiting for a change");
            return Action::await_change();
        }
        Category::Conflict => CONFLICT_RETRY,
        _ => shared.backoff.failed(BackoffKey::reconcile(&*object)),
    };
    warn!(kind = kind.as_ref(), %namespace, %name, %category, error = %err.scrubbed(), ?delay, "reconcile failed");
    Action::requeue(delay)
}
