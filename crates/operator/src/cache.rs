//! The operator's watch caches, their readiness, and the gate every controller passes before
//! it acts.
//!
//! Every watch is built by [`watch`]: a reflector whose stream marks its [`Synced`] flag on the
//! watcher's first `InitDone`. `/readyz` answers 200 once every flag is set, on the leader and on a
//! standby alike (a standby runs the same watches; only its reconcilers stay idle). A flag is
//! a `tokio::sync::watch` channel, so any number of tasks may wait on it (kube-runtime's
//! `Store::wait_until_ready` wakes a single waiter only).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub mod child;

/// How soon a reconcile that arrived before the caches synced (or on a standby that has just
/// become leader) is tried again.
pub const NOT_READY_RETRY: Duration = Duration::from_millis(500);

/// One cache's synced flag.
#[derive(Clone)]
pub struct Synced {
    name: &'static str,
    tx: Arc<watch::Sender<bool>>,
}

impl Synced {
    /// Marks the cache as synced (idempotent).
    pub fn mark(&self) {
        if !*self.tx.borrow() {
            tracing::info!(cache = self.name, "cache synced");
            self.tx.send_replace(true);
        }
    }

    /// Whether the cache has synced.
    pub fn is_synced(&self) -> bool {
        *self.tx.borrow()
    }
}

/// The synced flags of every cache the operator needs before it acts.
#[derive(Clone, Default)]
pub struct Readiness {
    caches: Arc<Mutex<Vec<Synced>>>,
    /// Set once every cache registered so far has synced (a cache never unsyncs): the gate is
    /// asked on every poll of every QWorker.
    all: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// Registers a cache named `name` (not yet synced).
    pub fn track(&self, name: &'static str) -> Synced {
        let synced = Synced {
            name,
            tx: Arc::new(watch::channel(false).0),
        };
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.push(synced.clone());
        self.all.store(false, std::sync::atomic::Ordering::SeqCst);
        synced
    }

    /// Whether every registered cache has synced (false while none is registered).
    pub fn is_ready(&self) -> bool {
        if self.all.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let ready = !caches.is_empty() && caches.iter().all(Synced::is_synced);
        if ready {
            // Under the lock, so that a cache registered meanwhile clears it after this.
            self.all.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        ready
    }

    /// Names of the caches that have not synced yet.
    pub fn pending(&self) -> Vec<&'static str> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .iter()
            .filter(|c| !c.is_synced())
            .map(|c| c.name)
            .collect()
    }

    /// Waits until every cache registered so far has synced.
    pub async fn wait(&self) {
        let flags: Vec<Synced> = self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for flag in flags {
            let mut rx = flag.tx.subscribe();
            // An error means the sender is gone, which cannot happen while `flag` lives.
            let _ = rx.wait_for(|synced| *synced).await;
        }
    }
}

/// Whether this replica may act: it leads (or runs without leader election) and its caches
/// have synced. Reconcilers and autoscaler polls ask it first; nothing is decided from a cache
/// that has not synced, and a standby only watches.
#[derive(Clone)]
pub struct Gate {
    /// The caches' readiness.
    pub readiness: Readiness,
    leader: watch::Receiver<bool>,
}

impl Gate {
    /// A gate over `readiness` and the leadership flag `leader`.
    pub fn new(readiness: Readiness, leader: watch::Receiver<bool>) -> Self {
        Self { readiness, leader }
    }

    /// A gate that is always open once the caches in `readiness` synced (no leader election).
    pub fn always_leader(readiness: Readiness) -> Self {
        let (tx, rx) = watch::channel(true);
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        Self::new(readiness, rx)
    }

    /// A gate that is always open: leader, and caches taken as synced (tests and tools that
    /// drive a controller directly).
    pub fn open() -> Self {
        let readiness = Readiness::default();
        readiness
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Synced {
                name: "none",
                tx: Arc::new(watch::channel(true).0),
            });
        Self::always_leader(readiness)
    }

    /// Whether this replica holds leadership.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// `None` when the replica may act; otherwise the action a reconcile returns instead.
    pub fn closed(&self) -> Option<Action> {
        if !self.is_leader() {
            // A standby's reconciles are dropped; every object is reconciled again when this
            // replica becomes the leader (see `on_leadership`).
            Some(Action::await_change())
        } else if !self.readiness.is_ready() {
            Some(Action::requeue(NOT_READY_RETRY))
        } else {
            None
        }
    }

    /// A stream that yields once each time this replica becomes the leader, to reconcile every
    /// object then (`Controller::reconcile_all_on`).
    pub fn on_leadership(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.leader.clone();
        futures::stream::unfold((rx, false), |(mut rx, mut was)| async move {
            loop {
                let now = *rx.borrow_and_update();
                if now && !was {
                    return Some(((), (rx, true)));
                }
                was = now;
                if rx.changed().await.is_err() {
                    // The value can no longer change: yield nothing more.
                    return None;
                }
            }
        })
    }
}

/// The annotation a client-side `kubectl apply` leaves: a full copy of the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a cached object keeps: only the fields some decision of the operator reads, so that the
/// caches of thousands of objects stay small. Every kind loses `managedFields` and the
/// last-applied annotation; the children the operator applies are cached as [`child::Child`]
/// views, which never decode more than their owner reads. Reading anything else from a cache is
/// a bug: read the live object instead (as the hand-off of `spec.replicas` does).
pub trait Slim {
    /// Drops, in place, what no decision needs.
    fn slim(&mut self);
}

/// Strips the bulk every kind carries in its metadata.
pub fn slim_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Kinds whose cached copy keeps everything but the metadata bulk.
macro_rules! slim_metadata_only {
    ($($kind:ty),* $(,)?) => {$(
        impl Slim for $kind {
            fn slim(&mut self) {
                slim_metadata(self);
            }
        }
    )*};
}

slim_metadata_only!(
    workerpool_api::ScalerConfig,
    workerpool_api::StormWorkerPool,
    workerpool_api::StormTopology,
    workerpool_api::StormCluster,
    k8s_openapi::api::batch::v1::Job,
);

impl Slim for workerpool_api::QWorker {
    /// Keeps of `managedFields` only whether the autoscaler has applied the status, as an
    /// empty list (no allocation): see [`autoscaler_applied`].
    fn slim(&mut self) {
        let applied = autoscaler_applied(self);
        slim_metadata(self);
        if applied {
            self.metadata.managed_fields = Some(Vec::new());
        }
    }
}

/// Whether the QWorker autoscaler's field manager has applied `qw`'s status, on a live object
/// (an entry of [`crate::AUTOSCALER_MANAGER`] on the status subresource) or a cached one (which
/// keeps that as an empty `managedFields`). Until it has, the reconciler owns the autoscaler's
/// fields it wrote for it at the start (see `controllers::qworker::status`).
pub fn autoscaler_applied(qw: &workerpool_api::QWorker) -> bool {
    qw.metadata.managed_fields.as_ref().is_some_and(|entries| {
        entries.is_empty()
            || entries.iter().any(|e| {
                e.manager.as_deref() == Some(crate::AUTOSCALER_MANAGER)
                    && e.subresource.as_deref() == Some("status")
            })
    })
}

impl Slim for k8s_openapi::api::core::v1::Pod {
    /// Keeps metadata, the containers' names (the first is the worker, unless the pod names
    /// its worker), the node it is bound to, the restart policy and the status: everything
    /// [`PodView`](crate::controllers::qworker::plan::PodView) and the release controller read.
    fn slim(&mut self) {
        slim_metadata(self);
        if let Some(spec) = self.spec.as_mut() {
            let containers = std::mem::take(&mut spec.containers)
                .into_iter()
                .map(|c| k8s_openapi::api::core::v1::Container {
                    name: c.name,
                    ..Default::default()
                })
                .collect();
            *spec = k8s_openapi::api::core::v1::PodSpec {
                containers,
                node_name: spec.node_name.take(),
                restart_policy: spec.restart_policy.take(),
                ..Default::default()
            };
        }
        if let Some(status) = self.status.as_mut() {
            status.pod_ips = None;
            status.host_ips = None;
            for c in status.container_statuses.iter_mut().flatten() {
                c.image_id = String::new();
                c.volume_mounts = None;
            }
        }
    }
}

/// Removes what no decision needs from a cached object (see [`Slim`]).
pub fn slim<K: Slim>(object: &mut K) {
    object.slim();
}

/// What a watched kind must be: a typed resource that can be slimmed, decoded, cloned into a
/// cache and shared between tasks.
pub trait Watched:
    Resource<DynamicType = ()>
    + Slim
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Slim
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch of `api` with `config`: its cache (a reflector store, objects slimmed by [`slim`]),
/// and the stream of changed objects that must be polled to keep the cache current (give it to a
/// controller as trigger). The stream marks `synced` on the watcher's first `InitDone`.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: Synced,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    watch_with(api, config, synced, |_| {})
}

/// [`watch`], calling `on_event` with each watcher event after the store has taken it.
fn watch_with<K, F>(
    api: Api<K>,
    config: watcher::Config,
    synced: Synced,
    mut on_event: F,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim::<K>)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                on_event(event);
                if matches!(event, watcher::Event::InitDone) {
                    synced.mark();
                }
            }
        })
        .touched_objects();
    (reader, stream)
}

/// How many changes a [`SharedWatch`] holds for a subscriber that has not taken them yet; one
/// that falls further behind gets every cached object again (a trigger is idempotent).
pub const SHARED_BUFFER: usize = 1024;

/// One watch of a kind shared by every controller that needs it: one cache (a reflector store,
/// objects slimmed by [`slim`]) and, for each subscriber, the stream of changed objects
/// (applied and deleted) to trigger reconciles with. Subscribe before [`SharedWatch::run`]:
/// the watch starts there and marks its readiness on the first complete list.
pub struct SharedWatch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    changes: tokio::sync::broadcast::Sender<Change<K>>,
    driver: Mutex<Option<futures::future::BoxFuture<'static, ()>>>,
}

/// A change a [`SharedWatch`] announces: the key of an object its cache holds (a subscriber
/// reads the current version there), or a deleted object. Not the object itself: the
/// announcements stay in the channel's buffer until overwritten, and a buffer of old copies of
/// large objects would hold megabytes.
#[derive(Clone, Debug)]
enum Change<K: Resource<DynamicType = ()>> {
    /// Created or changed: in the cache under this key.
    Applied(reflector::ObjectRef<K>),
    /// Deleted: no longer in the cache.
    Deleted(Arc<K>),
}

impl<K: Resource<DynamicType = ()> + Clone> Change<K> {
    /// The change `object` (from the watch) made to `store`.
    fn of(object: K, store: &Store<K>) -> Self {
        let key = reflector::ObjectRef::from_obj(&object);
        match store.get(&key) {
            Some(cached) if cached.meta().uid == object.meta().uid => Change::Applied(key),
            _ => Change::Deleted(Arc::new(object)),
        }
    }
}

impl<K> SharedWatch<K>
where
    K: Watched,
{
    /// A watch of `api` with `config`; `synced` is marked on its first complete list.
    pub fn new(api: Api<K>, config: watcher::Config, synced: Synced) -> Self {
        let (store, stream) = watch(api, config, synced);
        let (changes, _) = tokio::sync::broadcast::channel(SHARED_BUFFER);
        let sender = changes.clone();
        let cache = store.clone();
        let driver = stream.for_each(move |change| {
            match change {
                // No subscriber left is not an error: the object is in the store.
                Ok(object) => drop(sender.send(Change::of(object, &cache))),
                Err(e) => tracing::warn!(
                    kind = K::kind(&()).as_ref(),
                    error = %e,
                    "watch failed; retrying with back-off"
                ),
            }
            futures::future::ready(())
        });
        Self {
            store,
            changes,
            driver: Mutex::new(Some(Box::pin(driver))),
        }
    }

    /// The cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The changed objects from now on, for a controller's trigger (`for_stream`,
    /// `owns_stream`, `watches_stream`).
    pub fn subscribe(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        changes_of(self.changes.subscribe(), self.store.clone())
    }

    /// Starts the watch on the runtime (it fills the cache and feeds the subscribers until the
    /// process stops); later calls do nothing.
    pub fn spawn(&self) {
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            tokio::spawn(driver);
        }
    }
}

/// The objects `rx` announces (as `store` holds them now); when it lagged behind, every object
/// of `store` instead, copied one at a time as the subscriber takes them.
fn changes_of<K>(
    rx: tokio::sync::broadcast::Receiver<Change<K>>,
    store: Store<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    {
        futures::stream::unfold(rx, move |mut rx| {
            let store = store.clone();
            async move {
                let batch: Vec<Arc<K>> = match rx.recv().await {
                    Ok(Change::Applied(key)) => store.get(&key).into_iter().collect(),
                    Ok(Change::Deleted(object)) => vec![object],
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            kind = K::kind(&()).as_ref(),
                            missed,
                            "a subscriber fell behind; every cached object triggers again"
                        );
                        store.state()
                    }
                    Err(RecvError::Closed) => return None,
                };
                let objects = batch.into_iter().map(|o| Ok((*o).clone()));
                Some((futures::stream::iter(objects), rx))
            }
        })
        .flatten()
    }
}

/// A cache with an index of its objects by the uid of their controller owner, so that "the pods
/// of this QWorker" is a lookup, not a scan of every cached pod (the autoscaler asks once per poll
/// of every QWorker).
pub struct Owned<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    index: Option<Arc<std::sync::RwLock<OwnerIndex<K>>>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Owned<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            index: self.index.clone(),
        }
    }
}

/// Object references by owner uid, and the owner of each reference. A relist is collected aside
/// and replaces the index on `InitDone`, as the store itself does.
struct OwnerIndex<K: Resource<DynamicType = ()>> {
    by_owner: std::collections::HashMap<String, std::collections::HashSet<reflector::ObjectRef<K>>>,
    owner_of: std::collections::HashMap<reflector::ObjectRef<K>, String>,
    relist: Option<Box<OwnerIndex<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for OwnerIndex<K> {
    fn default() -> Self {
        Self {
            by_owner: Default::default(),
            owner_of: Default::default(),
            relist: None,
        }
    }
}

impl<K: Resource<DynamicType = ()>> OwnerIndex<K> {
    fn remove(&mut self, key: &reflector::ObjectRef<K>) {
        if let Some(owner) = self.owner_of.remove(key)
            && let Some(set) = self.by_owner.get_mut(&owner)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn insert(&mut self, object: &K) {
        let key = reflector::ObjectRef::from_obj(object);
        self.remove(&key);
        let owner = object
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone());
        if let Some(owner) = owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.owner_of.insert(key, owner);
        }
    }

    fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) => self.insert(o),
            watcher::Event::Delete(o) => self.remove(&reflector::ObjectRef::from_obj(o)),
            watcher::Event::Init => self.relist = Some(Box::default()),
            watcher::Event::InitApply(o) => self.relist.get_or_insert_default().insert(o),
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relist.take() {
                    self.by_owner = fresh.by_owner;
                    self.owner_of = fresh.owner_of;
                }
            }
        }
    }
}

impl<K> Owned<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The objects whose controller owner has `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        match &self.index {
            Some(index) => {
                let index = index.read().unwrap_or_else(|p| p.into_inner());
                index
                    .by_owner
                    .get(uid)
                    .into_iter()
                    .flatten()
                    .filter_map(|key| self.store.get(key))
                    .collect()
            }
            None => self
                .store
                .state()
                .into_iter()
                .filter(|o| {
                    o.owner_references()
                        .iter()
                        .any(|r| r.controller == Some(true) && r.uid == uid)
                })
                .collect(),
        }
    }

    /// The cache itself.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

impl<K: Resource<DynamicType = ()> + 'static> From<Store<K>> for Owned<K> {
    /// A cache without an index ([`Owned::owned_by`] scans it): for stores that tests fill.
    fn from(store: Store<K>) -> Self {
        Self { store, index: None }
    }
}

/// [`watch`], with the cache indexed by controller owner ([`Owned`]).
pub fn watch_owned<K>(
    api: Api<K>,
    config: watcher::Config,
    synced: Synced,
) -> (
    Owned<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    let index: Arc<std::sync::RwLock<OwnerIndex<K>>> = Arc::default();
    let writes = index.clone();
    let (store, stream) = watch_with(api, config, synced, move |event| {
        writes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(event);
    });
    (
        Owned {
            store,
            index: Some(index),
        },
        stream,
    )
}

/// Passes `events` (a [`watch`] stream) through, calling `on_delete` with each object that its
/// cache `store` no longer holds under the same uid: the watch reported it deleted. Whatever the
/// operator keeps per object (connections, tasks, metric series, expectations) is freed there.
pub fn on_deleted<K, S, F>(
    events: S,
    store: Store<K>,
    on_delete: F,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    F: Fn(&K) + Send + 'static,
{
    events.inspect(move |event| {
        if let Ok(object) = event {
            let cached = store.get(&reflector::ObjectRef::from_obj(object));
            if cached.is_none_or(|c| c.meta().uid != object.meta().uid) {
                on_delete(object);
            }
        }
    })
}

/// The `kube` object reference of the controller owner of `object` of kind `K`, if any.
pub fn controller_owner<K, O>(object: &O) -> Option<reflector::ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
    O: Resource,
{
    let owner = object
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == K::kind(&()))?;
    let mut reference = reflector::ObjectRef::new(&owner.name);
    if let Some(ns) = object.namespace() {
        reference = reference.within(&ns);
    }
    Some(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(name: &str) -> k8s_openapi::api::core::v1::ConfigMap {
        k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_each_change_and_everything_again_when_it_lagged() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let (tx, _) = tokio::sync::broadcast::channel(2);
        let names = |items: Vec<Result<ConfigMap, watcher::Error>>| {
            let mut names: Vec<String> = items
                .into_iter()
                .map(|i| i.expect("no error").name_any())
                .collect();
            names.sort();
            names
        };

        let mut on_time = Box::pin(changes_of(tx.subscribe(), store.clone()));
        let lagging = changes_of(tx.subscribe(), store.clone());
        for name in ["a", "b", "c"] {
            writer.apply_watcher_event(&watcher::Event::Apply(config_map(name)));
            let change = Change::of(config_map(name), &store);
            assert!(matches!(change, Change::Applied(_)), "{name} is cached");
            tx.send(change).expect("subscribers");
            let seen = on_time.next().await.expect("a change").expect("no error");
            assert_eq!(
                seen.name_any(),
                name,
                "the subscriber that keeps up sees each change"
            );
        }
        writer.apply_watcher_event(&watcher::Event::Delete(config_map("a")));
        let change = Change::of(config_map("a"), &store);
        assert!(matches!(change, Change::Deleted(_)), "a is gone");
        tx.send(change).expect("subscribers");
        let seen = on_time.next().await.expect("a change").expect("no error");
        assert_eq!(seen.name_any(), "a", "a deletion carries the object");
        drop(tx);
        // The other one missed "a" and "b" (a buffer of 2): it gets every cached object (b, c),
        // then "c" and the deletion of "a" as they were announced, and ends with the watch.
        let all = names(lagging.collect().await);
        assert_eq!(all, ["a", "b", "c", "c"]);
    }

    #[test]
    fn a_slimmed_qworker_keeps_only_whether_the_autoscaler_applied_its_status() {
        let qworker = |managers: serde_json::Value| -> workerpool_api::QWorker {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
                "metadata": {"name": "q", "namespace": "ns", "managedFields": managers},
                "spec": {"podSpec": {"containers": [{"name": "worker", "image": "w"}]},
                    "scaleConfig": {"scalerConfigRef": "r", "queue": "q", "minReplicas": 0,
                        "maxReplicas": 1, "scalingFactor": 1}}
            }))
            .expect("a QWorker")
        };
        let entry = |manager: &str, subresource: Option<&str>| {
            serde_json::json!({"manager": manager, "operation": "Apply", "subresource": subresource,
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:desiredReplicas": {}}}})
        };
        let applied = qworker(serde_json::json!([
            entry(crate::FIELD_MANAGER, Some("status")),
            entry(crate::AUTOSCALER_MANAGER, Some("status")),
        ]));
        let not_yet = qworker(serde_json::json!([
            entry(crate::FIELD_MANAGER, Some("status")),
            entry(crate::AUTOSCALER_MANAGER, None),
        ]));
        assert!(autoscaler_applied(&applied));
        assert!(
            !autoscaler_applied(&not_yet),
            "not on the status subresource"
        );
        let (mut a, mut n) = (applied, not_yet);
        Slim::slim(&mut a);
        Slim::slim(&mut n);
        assert_eq!(
            a.metadata.managed_fields,
            Some(Vec::new()),
            "only the mark is kept"
        );
        assert!(autoscaler_applied(&a));
        assert_eq!(n.metadata.managed_fields, None);
        assert!(!autoscaler_applied(&n));
    }

    #[test]
    fn a_slimmed_pod_looks_the_same_to_the_planner() {
        use crate::controllers::qworker::plan::PodView;
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-1", "namespace": "ns", "uid": "u1",
                "labels": {"quickube.com/pod-spec-hash": "abc"},
                "annotations": {"quickube.com/drain": "stale-spec-hash",
                                "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "finalizers": ["quickube.com/task-recovery"],
                "creationTimestamp": "2026-11-26T10:00:00Z",
                "managedFields": [{"manager": "x", "operation": "Apply"}]},
            "spec": {"nodeName": "node-1", "restartPolicy": "Never",
                "containers": [{"name": "worker", "image": "w", "env": [{"name": "A", "value": "1"}]},
                               {"name": "sidecar", "image": "s"}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "worker", "image": "w", "imageID": "sha256:x",
                    "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2026-11-26T10:00:05Z"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-11-26T10:00:04Z"}}}]}
        }))
        .expect("a pod");
        let mut slim = pod.clone();
        Slim::slim(&mut slim);
        assert_eq!(PodView::of(&slim), PodView::of(&pod));
        assert!(
            PodView::of(&slim).bound,
            "the node binding decides drain or delete"
        );
        assert!(slim.metadata.managed_fields.is_none());
        assert!(!slim.annotations().contains_key(LAST_APPLIED));
        let spec = slim.spec.expect("spec");
        assert!(spec.volumes.is_none() && spec.containers[0].env.is_none());
        assert_eq!(spec.containers.len(), 2);
    }

    #[tokio::test]
    async fn ready_only_when_every_cache_synced_and_waiters_all_wake() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready(), "nothing registered is not ready");
        let a = readiness.track("a");
        let b = readiness.track("b");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = readiness.clone();
                tokio::spawn(async move { r.wait().await })
            })
            .collect();
        a.mark();
        assert!(!readiness.is_ready());
        assert_eq!(readiness.pending(), vec!["b"]);
        b.mark();
        assert!(readiness.is_ready());
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("every waiter wakes")
                .expect("waiter");
        }
    }

    #[tokio::test]
    async fn gate_is_closed_for_a_standby_and_before_sync() {
        let readiness = Readiness::default();
        let synced = readiness.track("pods");
        let (tx, rx) = watch::channel(false);
        let gate = Gate::new(readiness, rx);
        assert_eq!(gate.closed(), Some(Action::await_change()));
        tx.send_replace(true);
        assert_eq!(gate.closed(), Some(Action::requeue(NOT_READY_RETRY)));
        synced.mark();
        assert_eq!(gate.closed(), None);
    }

    #[tokio::test]
    async fn leadership_stream_yields_on_each_gain() {
        let (tx, rx) = watch::channel(false);
        let gate = Gate::new(Readiness::default(), rx);
        let mut gains = Box::pin(gate.on_leadership());
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), gains.next())
            .await
            .expect("a gain is reported")
            .expect("stream open");
        drop(tx);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), gains.next())
                .await
                .expect("ends")
                .is_none()
        );
    }
}
