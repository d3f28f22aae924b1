//! How the topology controller follows the pools that serve its topologies: from the pool
//! controller's own watch (no second cache of pools), reconciling a topology only when what it
//! reads of a pool changed: the pool's `topologyRef` or its [`PoolView`] (replicas, ready and
//! updated replicas, slots per pod). A pool's other status writes wake no topology.

use std::collections::HashMap;

use futures::Stream;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use workerpool_api::{StormTopology, StormWorkerPool};

use super::rebalance::PoolView;

type Seen = HashMap<ObjectRef<StormWorkerPool>, (ObjectRef<StormTopology>, PoolView)>;

/// What the topologies last read of each pool, and the relist being collected.
#[derive(Default)]
pub struct PoolFollower {
    seen: Seen,
    relist: Option<Seen>,
}

fn topology_of(pool: &StormWorkerPool) -> ObjectRef<StormTopology> {
    let topology = ObjectRef::new(&pool.spec.topology_ref);
    match pool.namespace() {
        Some(ns) => topology.within(&ns),
        None => topology,
    }
}

impl PoolFollower {
    /// The topologies to reconcile after `event` of the pool watch.
    pub fn observe(
        &mut self,
        event: &watcher::Event<StormWorkerPool>,
    ) -> Vec<ObjectRef<StormTopology>> {
        let mut wake = Vec::new();
        match event {
            watcher::Event::Apply(pool) => {
                let key = ObjectRef::from_obj(pool);
                let now = (topology_of(pool), PoolView::of(pool));
                changed(self.seen.get(&key), &now, &mut wake);
                self.seen.insert(key, now);
            }
            watcher::Event::Delete(pool) => {
                if let Some((topology, _)) = self.seen.remove(&ObjectRef::from_obj(pool)) {
                    wake.push(topology);
                }
            }
            watcher::Event::Init => self.relist = Some(Seen::new()),
            watcher::Event::InitApply(pool) => {
                let key = ObjectRef::from_obj(pool);
                let now = (topology_of(pool), PoolView::of(pool));
                changed(self.seen.get(&key), &now, &mut wake);
                self.relist.get_or_insert_default().insert(key, now);
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relist.take() {
                    // Pools deleted while the watch was down.
                    for (key, (topology, _)) in &self.seen {
                        if !fresh.contains_key(key) {
                            wake.push(topology.clone());
                        }
                    }
                    self.seen = fresh;
                }
            }
        }
        wake.dedup();
        wake
    }
}

/// Wakes the topology of `now` (and the one the pool left) when it differs from `before`.
fn changed(
    before: Option<&(ObjectRef<StormTopology>, PoolView)>,
    now: &(ObjectRef<StormTopology>, PoolView),
    wake: &mut Vec<ObjectRef<StormTopology>>,
) {
    match before {
        Some(old) if old == now => {}
        Some((old_topology, _)) => {
            if *old_topology != now.0 {
                wake.push(old_topology.clone());
            }
            wake.push(now.0.clone());
        }
        None => wake.push(now.0.clone()),
    }
}

/// A hook for the pool controller's watch ([`crate::controllers::storm::controller`]'s
/// `follow`) and the stream of topologies it wakes, for the topology controller.
pub fn follow_pools() -> (
    impl FnMut(&watcher::Event<StormWorkerPool>) + Send + 'static,
    impl Stream<Item = ObjectRef<StormTopology>> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut follower = PoolFollower::default();
    let hook = move |event: &watcher::Event<StormWorkerPool>| {
        for topology in follower.observe(event) {
            // The topology controller has stopped: nothing to wake.
            let _ = tx.send(topology);
        }
    };
    (hook, tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use workerpool_api::storm::StormWorkerPoolStatus;

    fn pool(name: &str, topology: &str, ready: i32) -> StormWorkerPool {
        let mut p: StormWorkerPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "storm.apache.org/v1beta1",
            "kind": "StormWorkerPool",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"topologyRef": topology, "image": {"repository": "storm", "tag": "2.6.4"}}
        }))
        .expect("pool");
        p.status = Some(StormWorkerPoolStatus {
            replicas: 3,
            ready_replicas: ready,
            updated_replicas: 3,
            ..Default::default()
        });
        p
    }

    fn topo(name: &str) -> ObjectRef<StormTopology> {
        ObjectRef::new(name).within("ns")
    }

    #[test]
    fn only_what_a_topology_reads_of_a_pool_wakes_it() {
        let mut f = PoolFollower::default();
        let p = pool("a", "t1", 1);
        assert_eq!(f.observe(&watcher::Event::Apply(p.clone())), [topo("t1")]);
        // Another status write (a condition, a message): no topology reconcile.
        let mut same = p.clone();
        same.status.as_mut().expect("status").message = Some("another message".into());
        assert!(f.observe(&watcher::Event::Apply(same)).is_empty());
        // A ready replica more: the topology's slots changed.
        assert_eq!(
            f.observe(&watcher::Event::Apply(pool("a", "t1", 2))),
            [topo("t1")]
        );
        // Moved to another topology: both are told.
        assert_eq!(
            f.observe(&watcher::Event::Apply(pool("a", "t2", 2))),
            [topo("t1"), topo("t2")]
        );
        assert_eq!(
            f.observe(&watcher::Event::Delete(pool("a", "t2", 2))),
            [topo("t2")]
        );
    }

    #[test]
    fn a_relist_wakes_the_topologies_of_changed_and_vanished_pools_only() {
        let mut f = PoolFollower::default();
        f.observe(&watcher::Event::Apply(pool("a", "t1", 1)));
        f.observe(&watcher::Event::Apply(pool("b", "t2", 1)));
        f.observe(&watcher::Event::Apply(pool("c", "t3", 1)));
        assert!(f.observe(&watcher::Event::Init).is_empty());
        assert!(
            f.observe(&watcher::Event::InitApply(pool("a", "t1", 1)))
                .is_empty()
        );
        assert_eq!(
            f.observe(&watcher::Event::InitApply(pool("b", "t2", 3))),
            [topo("t2")]
        );
        // `c` is gone: its topology learns it when the relist is complete.
        assert_eq!(f.observe(&watcher::Event::InitDone), [topo("t3")]);
        assert!(
            f.observe(&watcher::Event::Apply(pool("a", "t1", 1)))
                .is_empty()
        );
    }
}
