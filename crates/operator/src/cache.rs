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
}

impl Readiness {
    /// Registers a cache named `name` (not yet synced).
    pub fn track(&self, name: &'static str) -> Synced {
        let synced = Synced {
            name,
            tx: Arc::new(watch::channel(false).0),
        };
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(synced.clone());
        synced
    }

    /// Whether every registered cache has synced (false while none is registered).
    pub fn is_ready(&self) -> bool {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        !caches.is_empty() && caches.iter().all(Synced::is_synced)
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

/// Removes what no decision needs from a cached object (managedFields).
pub fn slim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
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
    K: Resource<DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim::<K>)
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                synced.mark();
            }
        })
        .touched_objects();
    (reader, stream)
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
