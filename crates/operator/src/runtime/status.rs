//! One way to write a status, for every kind: a server-side apply of the status subresource
//! by the operator's field manager, skipped when the object already says the same.
//!
//! "The same" ignores the `lastTransitionTime` of a condition whose type and status did not
//! change ([`unchanged`]). A reconcile can run before the watch delivers the object's own last
//! status write (an event of a child woke it); the writer remembers each write until the cache
//! shows another version of the object (or for [`IN_FLIGHT_FOR`], so that the writes of deleted
//! objects are not kept), so that such a reconcile sends nothing again, and several writes in
//! one reconcile compare with the previous one.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use workerpool_api::conditions;
use workerpool_api::qworker::{ScalerConfig, ScalerConfigStatus};
use workerpool_api::{
    StormCluster, StormClusterStatus, StormTopology, StormTopologyStatus, StormWorkerPool,
    StormWorkerPoolStatus,
};

use crate::apply;
use crate::error::Result;

/// How long a write is remembered at most: far longer than a watch takes to deliver it.
pub const IN_FLIGHT_FOR: Duration = Duration::from_secs(60);

/// A status with conditions.
pub trait Conditioned: Clone + PartialEq + Serialize + Send + Sync {
    /// Its conditions.
    fn conditions(&self) -> &[Condition];
    /// Its conditions, to change.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// A kind whose whole status the operator writes.
pub trait HasStatus:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
    /// The status type.
    type Status: Conditioned;
    /// The status the object carries, if any.
    fn status(&self) -> Option<&Self::Status>;
}

/// Whether `new` says nothing that `current` does not, the transition time of a condition
/// whose type and status stayed the same left aside.
pub fn unchanged<S: Conditioned>(current: Option<&S>, new: &S) -> bool {
    let Some(current) = current else {
        return false;
    };
    let mut new = new.clone();
    for c in new.conditions_mut() {
        if let Some(old) = conditions::find(current.conditions(), &c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    *current == new
}

/// Writes the status of objects of kind `K` (one per controller, shared by its reconciles).
pub struct StatusWriter<K: HasStatus> {
    /// Writes the cache does not show yet, by uid: the resourceVersion each was computed from,
    /// the status written, and when.
    in_flight: Mutex<HashMap<String, Written<K::Status>>>,
}

struct Written<S> {
    version: String,
    status: S,
    at: Instant,
}

impl<K: HasStatus> Default for StatusWriter<K> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: HasStatus> StatusWriter<K> {
    /// Applies `new` as `object`'s status unless `object` (or a write made from the same
    /// version of it) already says so; returns whether it wrote.
    pub async fn write(&self, client: &Client, object: &K, new: &K::Status) -> Result<bool> {
        self.write_fields(client, object, new, new).await
    }

    /// Like [`Self::write`], applying `fields` (the part of `new` that this manager owns: a
    /// field another field manager writes is left out) when `new` is not what `object` says.
    pub async fn write_fields<F: Serialize>(
        &self,
        client: &Client,
        object: &K,
        new: &K::Status,
        fields: &F,
    ) -> Result<bool> {
        if self.unchanged(object, new) {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
        apply::apply_status(&api, &object.name_any(), fields).await?;
        self.record(object, new);
        Ok(true)
    }

    /// Whether `new` is what `object` says, or what was last written from this version of it.
    pub fn unchanged(&self, object: &K, new: &K::Status) -> bool {
        let uid = object.meta().uid.as_deref().unwrap_or_default();
        let mut all = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match all.get(uid) {
            Some(w) if object.meta().resource_version.as_ref() == Some(&w.version) => {
                return unchanged(Some(&w.status), new);
            }
            // The cache shows another version: the write is in it, or was superseded.
            Some(_) => {
                all.remove(uid);
            }
            None => {}
        }
        unchanged(object.status(), new)
    }

    /// The status last written from the version of `object` the cache holds, while the cache
    /// does not show that write yet: a reconcile woken before the watch delivered its own last
    /// write computes from this, not from the cached status, so that it does not apply the
    /// older status again (which would remove what the last write added, such as a scale
    /// decision). `None` when the cache is current.
    pub fn latest(&self, object: &K) -> Option<K::Status> {
        let uid = object.meta().uid.as_deref()?;
        let all = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        all.get(uid)
            .filter(|w| object.meta().resource_version.as_ref() == Some(&w.version))
            .map(|w| w.status.clone())
    }

    fn record(&self, object: &K, status: &K::Status) {
        let (Some(uid), Some(version)) = (&object.meta().uid, &object.meta().resource_version)
        else {
            return;
        };
        let mut all = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, w| w.at.elapsed() < IN_FLIGHT_FOR);
        all.insert(
            uid.clone(),
            Written {
                version: version.clone(),
                status: status.clone(),
                at: Instant::now(),
            },
        );
    }
}

macro_rules! has_status {
    ($kind:ty, $status:ty) => {
        impl Conditioned for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }

        impl HasStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}

has_status!(StormWorkerPool, StormWorkerPoolStatus);
has_status!(StormCluster, StormClusterStatus);
has_status!(StormTopology, StormTopologyStatus);
has_status!(ScalerConfig, ScalerConfigStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use workerpool_api::conditions::NewCondition;

    fn pool(version: &str, status: Option<StormWorkerPoolStatus>) -> StormWorkerPool {
        let mut pool: StormWorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1", "kind": "StormWorkerPool",
            "metadata": {"name": "p", "namespace": "n", "uid": "u1", "resourceVersion": version},
            "spec": {"topologyRef": "t"},
        }))
        .expect("pool");
        pool.status = status;
        pool
    }

    fn ready(status: bool, at: &str) -> StormWorkerPoolStatus {
        let mut s = StormWorkerPoolStatus::default();
        conditions::set_condition(
            &mut s.conditions,
            NewCondition::new("Ready", status, "R", "m"),
            Some(1),
            at.parse::<Timestamp>().expect("timestamp"),
        );
        s
    }

    #[test]
    fn a_condition_that_only_moved_in_time_is_unchanged() {
        let old = ready(true, "2026-01-01T00:00:00Z");
        assert!(unchanged(Some(&old), &ready(true, "2026-02-01T00:00:00Z")));
        assert!(!unchanged(
            Some(&old),
            &ready(false, "2026-01-01T00:00:00Z")
        ));
        assert!(!unchanged(None, &old));
    }

    #[test]
    fn a_write_counts_until_the_cache_shows_another_version() {
        let writer = StatusWriter::<StormWorkerPool>::default();
        let new = ready(true, "2026-01-01T00:00:00Z");
        let seen = pool("7", None);
        assert!(!writer.unchanged(&seen, &new), "nothing written yet");
        writer.record(&seen, &new);
        assert!(
            writer.unchanged(&seen, &new),
            "the same version again: the write is in flight"
        );
        assert!(
            !writer.unchanged(&seen, &ready(false, "2026-01-01T00:00:00Z")),
            "another status is written"
        );
        assert!(
            !writer.unchanged(&pool("8", None), &new),
            "a newer version without it: written again"
        );
        assert!(
            writer.unchanged(&pool("7", Some(new.clone())), &new),
            "the record is gone; the object itself says so"
        );
    }

    #[test]
    fn the_latest_status_is_the_write_the_cache_does_not_show_yet() {
        let writer = StatusWriter::<StormWorkerPool>::default();
        let written = ready(true, "2026-01-01T00:00:00Z");
        let seen = pool("7", Some(ready(false, "2026-01-01T00:00:00Z")));
        assert_eq!(
            writer.latest(&seen),
            None,
            "nothing written: the cache is current"
        );
        writer.record(&seen, &written);
        assert_eq!(
            writer.latest(&seen),
            Some(written.clone()),
            "version 7 again"
        );
        assert_eq!(
            writer.latest(&pool("8", Some(written))),
            None,
            "the cache shows a newer version"
        );
    }
}
