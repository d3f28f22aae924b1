//! One module per controller, plus what they share.

pub mod qworker;
pub mod scalerconfig;
pub mod stormcluster;
pub mod stormtopology;
pub mod stormworkerpool;

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use workerpool_api::{StormCluster, StormTopology, StormWorkerPool};

use kube::runtime::reflector::{ObjectRef, Store};

use crate::cache::child::{Child, ChildKind};
use crate::cache::{Readiness, SharedWatch};
use crate::runtime::Reason;

/// Pod template annotation carrying the hash of the storm.yaml, so a config change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "storm.apache.org/config-hash";
/// Label selector of every object the operator creates.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=workerpool-operator";
/// Label selector of a StormWorkerPool's children (each kind is watched, and cached, once).
pub const POOL_CHILDREN_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=storm-worker";
/// Label selector of a managed StormCluster's objects.
pub const CLUSTER_CHILDREN_SELECTOR: &str =
    "app.kubernetes.io/managed-by=workerpool-operator,app.kubernetes.io/name=storm";

/// The watches of the Storm kinds, one per kind, shared by the StormWorkerPool, StormTopology
/// and StormCluster controllers (each kind is cached once, whichever controllers read it).
pub struct StormWatches {
    /// StormWorkerPools: the pool controller's objects; the topology controller reads their
    /// slots.
    pub pools: SharedWatch<StormWorkerPool>,
    /// StormTopologies: the topology controller's objects; pools wait for theirs.
    pub topologies: SharedWatch<StormTopology>,
    /// StormClusters: the cluster controller's objects; pools and topologies read theirs.
    pub clusters: SharedWatch<StormCluster>,
}

impl StormWatches {
    /// The watches in `namespace` (or all namespaces), each registered with `readiness`.
    pub fn new(client: &Client, namespace: Option<&str>, readiness: &Readiness) -> Self {
        Self {
            pools: SharedWatch::new(
                scoped(client, namespace),
                watcher::Config::default(),
                readiness.track("stormworkerpools"),
            ),
            topologies: SharedWatch::new(
                scoped(client, namespace),
                watcher::Config::default(),
                readiness.track("stormtopologies"),
            ),
            clusters: SharedWatch::new(
                scoped(client, namespace),
                watcher::Config::default(),
                readiness.track("stormclusters"),
            ),
        }
    }

    /// Starts the watches (after every controller subscribed); they run until the process stops.
    pub fn spawn(&self) {
        self.pools.spawn();
        self.topologies.spawn();
        self.clusters.spawn();
    }
}

/// An API of `K` in `namespace`, or in all namespaces.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What another controller reads of each object of a watched kind, as a digest per object, so
/// that a change of the object that leaves what it reads alone wakes nothing: a StormWorkerPool's
/// status write (its conditions, its timestamps) does not make its topology read Storm again,
/// and a StormTopology's condition change does not wake its five hundred pools.
///
/// A first sight, a changed digest and a deletion wake; memory holds one pair of numbers per
/// object. Losing it (a restart) only wakes once more: everything is reconciled then anyway.
#[derive(Default)]
pub struct Wakes {
    digests: Mutex<HashMap<u64, u64>>,
}

impl Wakes {
    /// Whether this event of `object` should wake what reads `view` of it: `view` differs from
    /// the one of the object's last event, or the object is new, or `store` (the watch's cache)
    /// no longer holds it (a deletion; the digest is dropped).
    pub fn changed<K, V>(&self, store: &Store<K>, object: &K, view: V) -> bool
    where
        K: Resource<DynamicType = ()> + Clone,
        V: std::hash::Hash,
    {
        use std::hash::{BuildHasher, Hash, Hasher};
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let object_ref = ObjectRef::from_obj(object);
        let key = {
            let mut h = hasher.build_hasher();
            object_ref.namespace.hash(&mut h);
            object_ref.name.hash(&mut h);
            object.meta().uid.hash(&mut h);
            h.finish()
        };
        let mut digests = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        if store.get(&object_ref).is_none() {
            digests.remove(&key);
            return true;
        }
        let digest = hasher.hash_one(view);
        digests.insert(key, digest) != Some(digest)
    }

    /// Objects with a digest.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.digests.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// An environment variable read from the pod's own fields (downward API), e.g. `status.podIP`.
pub fn field_env(name: &str, path: &str) -> k8s_openapi::api::core::v1::EnvVar {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Whether `object` is controlled by `owner`: a controller ownerReference with the owner's uid.
pub fn controlled_by<K: Resource, O: Resource>(object: &K, owner: &O) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return false;
    };
    object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Whether `current` (the cached view of a child, or the view of a live one) already holds the
/// apply body `desired`: controlled by `owner`, not being deleted, and carrying the same
/// applied-hash annotation ([`crate::apply::APPLIED_HASH_ANNOTATION`]).
pub fn up_to_date<K: ChildKind, O: Resource>(current: &Child<K>, desired: &K, owner: &O) -> bool {
    let wanted = crate::apply::applied_hash_of(desired);
    controlled_by(current, owner)
        && current.metadata.deletion_timestamp.is_none()
        && wanted.is_some()
        && current.applied_hash.as_deref() == wanted
}

/// The cached view of `desired` (same namespace and name), if any.
pub fn cached<K: ChildKind>(store: &Store<Child<K>>, desired: &K) -> Option<Child<K>> {
    let mut key = ObjectRef::new(&desired.name_any());
    if let Some(ns) = desired.namespace() {
        key = key.within(&ns);
    }
    store.get(&key).map(|c| (*c).clone())
}

/// Applies the child `object` of `owner` (server-side), unless `current` (what the cache shows
/// of it) is [`up_to_date`]; notes on `children` whether the apply created or changed the child
/// (published by [`ChildTracker::publish`], one Event per reason for the whole reconcile);
/// returns the view of the child as stored.
pub async fn apply_child<O, K>(
    children: &ChildTracker,
    owner: &O,
    api: &Api<K>,
    object: &K,
    current: Option<Child<K>>,
) -> crate::error::Result<Child<K>>
where
    O: Resource<DynamicType = ()>,
    K: ChildKind,
{
    if let Some(current) = current.filter(|c| up_to_date(c, object, owner)) {
        tracing::debug!(
            kind = K::KIND,
            name = current.name_any(),
            "child is up to date, not applied"
        );
        return Ok(current);
    }
    let applied = crate::apply::apply(api, object).await?;
    if let Some(change) = children.observe(&applied) {
        children.note(owner, change, K::KIND, &applied.name_any());
    }
    Ok(Child::of(&applied))
}

/// What an apply did to a child, as reported in an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildChange {
    /// The child did not exist before.
    Created,
    /// The child's spec or data changed.
    Updated,
}

impl ChildChange {
    /// Event reason.
    pub fn reason(self) -> Reason {
        match self {
            ChildChange::Created => Reason::CREATED,
            ChildChange::Updated => Reason::UPDATED,
        }
    }
    /// Verb for the Event's message.
    pub fn verb(self) -> &'static str {
        match self {
            ChildChange::Created => "Created",
            ChildChange::Updated => "Updated",
        }
    }
}

/// Remembers the version of each applied child, so that an Event is emitted only when an
/// apply created the child or changed it (its `generation`, or its `resourceVersion` for
/// kinds without one), never for an apply that changed nothing; and the `resourceVersion` the
/// operator's last write of it returned, so that the watch event of that write, which tells
/// the owner nothing its reconcile did not already see, does not wake the owner again
/// ([`Self::is_echo`]).
#[derive(Default)]
pub struct ChildTracker {
    seen: Mutex<HashMap<String, Seen>>,
    /// Changes not yet published, by owner uid: `(reason, "Kind name")`.
    pending: Mutex<HashMap<String, Vec<(ChildChange, String)>>>,
}

/// What [`ChildTracker`] keeps of a child.
#[derive(Default)]
struct Seen {
    /// `g<generation>`, or the resourceVersion for kinds without a generation, after the last
    /// apply (`None`: only written otherwise).
    token: Option<String>,
    /// The resourceVersion the operator's last write returned, when it is a number (as the
    /// API server's are; an opaque one is not compared).
    written: Option<u64>,
}

/// A resourceVersion as a number, when it is one.
fn version_of<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

/// How recent a creation timestamp must be for an unknown child to count as just created.
const JUST_CREATED_SECS: i64 = 30;

impl ChildTracker {
    fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", K::kind(&()))
    }

    /// Records the child as returned by an apply and says what the apply did, if anything.
    pub fn observe<K: Resource<DynamicType = ()>>(&self, applied: &K) -> Option<ChildChange> {
        let meta = applied.meta();
        let token = meta
            .generation
            .map(|g| format!("g{g}"))
            .or_else(|| meta.resource_version.clone())?;
        let key = Self::key::<K>(
            &applied.namespace().unwrap_or_default(),
            &applied.name_any(),
        );
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let previous = seen.insert(
            key,
            Seen {
                token: Some(token.clone()),
                written: version_of(applied),
            },
        );
        match previous.and_then(|p| p.token) {
            Some(previous) if previous == token => None,
            Some(_) => Some(ChildChange::Updated),
            None => {
                let now = k8s_openapi::jiff::Timestamp::now();
                let fresh = meta
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| now.duration_since(t.0).as_secs() <= JUST_CREATED_SECS);
                fresh.then_some(ChildChange::Created)
            }
        }
    }

    /// Records the version a write of the child other than its apply returned (a hand-off
    /// patch), for [`Self::is_echo`].
    pub fn written<K: Resource<DynamicType = ()>>(&self, object: &K) {
        let key = Self::key::<K>(&object.namespace().unwrap_or_default(), &object.name_any());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(key).or_default().written = version_of(object);
    }

    /// Whether `object`, as a watch delivers it, is the version the operator's last write of it
    /// returned: the owner's reconcile that wrote it saw it already, so the event need not wake
    /// the owner. A change by anyone else (or a deletion) has another version.
    pub fn is_echo<K: Resource<DynamicType = ()>>(&self, object: &K) -> bool {
        let Some(version) = version_of(object) else {
            return false;
        };
        let key = Self::key::<K>(&object.namespace().unwrap_or_default(), &object.name_any());
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&key).is_some_and(|s| s.written == Some(version))
    }

    /// Notes that an apply of `owner`'s child `kind`/`name` did `change`.
    pub fn note<O: Resource>(&self, owner: &O, change: ChildChange, kind: &str, name: &str) {
        let uid = owner.meta().uid.clone().unwrap_or_default();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .entry(uid)
            .or_default()
            .push((change, format!("{kind} {name}")));
    }

    /// Publishes the noted changes of `owner`'s children: one Event per reason, naming every
    /// child (`Created ConfigMap a, Deployment b, Service c`), so that creating a pool costs one
    /// Event, not one per child.
    pub async fn publish<O: Resource<DynamicType = ()>>(
        &self,
        shared: &crate::context::Shared,
        owner: &O,
    ) {
        let uid = owner.meta().uid.clone().unwrap_or_default();
        let notes = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.remove(&uid).unwrap_or_default()
        };
        for change in [ChildChange::Created, ChildChange::Updated] {
            let children: Vec<&str> = notes
                .iter()
                .filter(|(c, _)| *c == change)
                .map(|(_, child)| child.as_str())
                .collect();
            if children.is_empty() {
                continue;
            }
            shared
                .event(
                    &owner.object_ref(&()),
                    change.reason(),
                    "ApplyChildren",
                    format!("{} {}", change.verb(), children.join(", ")),
                )
                .await;
        }
    }

    /// Forgets a deleted child.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(&Self::key::<K>(namespace, name));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn config_map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn an_event_wakes_only_when_what_is_read_of_the_object_changed() {
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let wakes = Wakes::default();
        let a = config_map("a", "1");
        writer.apply_watcher_event(&watcher::Event::Apply(a.clone()));
        assert!(wakes.changed(&store, &a, "view 1"), "first sight wakes");
        let a2 = config_map("a", "2");
        writer.apply_watcher_event(&watcher::Event::Apply(a2.clone()));
        assert!(
            !wakes.changed(&store, &a2, "view 1"),
            "a new version with the same view (a status write) wakes nothing"
        );
        assert!(wakes.changed(&store, &a2, "view 2"), "a changed view wakes");
        let b = config_map("b", "3");
        writer.apply_watcher_event(&watcher::Event::Apply(b.clone()));
        assert!(
            wakes.changed(&store, &b, "view 2"),
            "another object with the same view is a first sight"
        );
        assert_eq!(wakes.len(), 2);
        writer.apply_watcher_event(&watcher::Event::Delete(a2.clone()));
        assert!(
            wakes.changed(&store, &a2, "view 2"),
            "a deletion wakes, its view unchanged"
        );
        assert_eq!(wakes.len(), 1, "the deleted object's digest is dropped");
    }

    #[test]
    fn only_the_event_of_the_last_write_is_an_echo() {
        let tracker = ChildTracker::default();
        assert!(
            !tracker.is_echo(&config_map("a", "10")),
            "a child never written is no echo"
        );
        tracker.observe(&config_map("a", "10"));
        assert!(
            tracker.is_echo(&config_map("a", "10")),
            "the apply's own event"
        );
        assert!(
            !tracker.is_echo(&config_map("a", "11")),
            "a change by anyone else, or a deletion, has another version"
        );
        assert!(
            !tracker.is_echo(&config_map("b", "10")),
            "another child of the same version"
        );
        tracker.written(&config_map("a", "12"));
        assert!(
            tracker.is_echo(&config_map("a", "12")),
            "a later patch's event"
        );
        assert!(
            !tracker.is_echo(&config_map("a", "10")),
            "an older version is not the last write"
        );
        assert!(
            !tracker.is_echo(&config_map("a", "opaque")),
            "a resourceVersion that is not a number is never taken for an echo"
        );
        tracker.forget::<ConfigMap>("ns", "a");
        assert!(!tracker.is_echo(&config_map("a", "12")), "forgotten");
    }
}
