//! Exponential retry back-off per object: 1 s after the first failure, doubling up to 5 min,
//! forgotten after a success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Resource, ResourceExt};

/// The longest wait between two tries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// Whose failures are counted: a kind, an object of it (by uid, so that two kinds, or a
/// deleted object and its successor of the same name, never share a counter) and what was
/// tried (a reconcile, or a part of it with a back-off of its own, such as reaching Storm).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackoffKey {
    kind: String,
    object: String,
    what: &'static str,
}

impl BackoffKey {
    /// The reconciles of `object`.
    pub fn reconcile<K: Resource<DynamicType = ()>>(object: &K) -> Self {
        Self::of(object, "reconcile")
    }

    /// Tries of `what` for `object`.
    pub fn of<K: Resource<DynamicType = ()>>(object: &K, what: &'static str) -> Self {
        // An object always has a uid once stored; namespace/name stands in for objects built
        // in tests or not stored yet.
        let object_id = object.meta().uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            )
        });
        Self {
            kind: K::kind(&()).into_owned(),
            object: object_id,
            what,
        }
    }
}

/// Failure counts per [`BackoffKey`], shared by every controller.
#[derive(Clone, Default)]
pub struct Backoff {
    failures: Arc<Mutex<HashMap<BackoffKey, u32>>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: BackoffKey) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(MAX_DELAY)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &BackoffKey) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }

    /// Forgets every counter of the object with `uid` (the object was deleted).
    pub fn forget_object(&self, uid: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|k, _| k.object != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use workerpool_api::{StormCluster, StormWorkerPool};

    fn meta(uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("same-name".into()),
            namespace: Some("ns".into()),
            uid: uid.map(Into::into),
            ..ObjectMeta::default()
        }
    }

    fn pool(uid: Option<&str>) -> StormWorkerPool {
        StormWorkerPool {
            metadata: meta(uid),
            spec: Default::default(),
            status: None,
        }
    }

    fn cluster(uid: Option<&str>) -> StormCluster {
        StormCluster {
            metadata: meta(uid),
            spec: serde_json::from_value(serde_json::json!({"mode": "External", "uiUrl": "http://ui", "zookeeperServers": ["zk"]}))
                .expect("a valid StormCluster spec"),
            status: None,
        }
    }

    #[test]
    fn the_delay_doubles_from_one_second_up_to_five_minutes() {
        let backoff = Backoff::default();
        let key = BackoffKey::reconcile(&pool(Some("u1")));
        let delays: Vec<u64> = (0..11)
            .map(|_| backoff.failed(key.clone()).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        backoff.succeeded(&key);
        assert_eq!(backoff.failed(key).as_secs(), 1);
    }

    #[test]
    fn two_kinds_with_the_same_name_back_off_independently() {
        let backoff = Backoff::default();
        for (p, c) in [
            (pool(Some("u1")), cluster(Some("u2"))),
            (pool(None), cluster(None)),
        ] {
            let (p, c) = (BackoffKey::reconcile(&p), BackoffKey::reconcile(&c));
            for _ in 0..5 {
                backoff.failed(p.clone());
            }
            assert_eq!(
                backoff.failed(c.clone()).as_secs(),
                1,
                "the cluster's first failure"
            );
            assert_eq!(
                backoff.failed(p.clone()).as_secs(),
                32,
                "the pool's sixth failure"
            );
            backoff.succeeded(&c);
            assert_eq!(
                backoff.failed(p).as_secs(),
                64,
                "a cluster's success leaves the pool's count"
            );
        }
    }

    #[test]
    fn an_object_recreated_with_the_same_name_starts_afresh() {
        let backoff = Backoff::default();
        let old = BackoffKey::reconcile(&pool(Some("old")));
        for _ in 0..4 {
            backoff.failed(old.clone());
        }
        assert_eq!(
            backoff
                .failed(BackoffKey::reconcile(&pool(Some("new"))))
                .as_secs(),
            1
        );
        let storm = BackoffKey::of(&pool(Some("old")), "storm");
        assert_eq!(
            backoff.failed(storm).as_secs(),
            1,
            "another purpose counts on its own"
        );
        backoff.forget_object("old");
        assert_eq!(backoff.failed(old).as_secs(), 1);
    }
}
