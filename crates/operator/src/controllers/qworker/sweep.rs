//! The sweep of in-flight lists, per ScalerConfig: the tasks held by workers that no longer
//! exist go back to their queue, also when their QWorker is gone.
//!
//! A worker pod's list is normally returned when the pod goes ([`super::release`]); the sweep
//! catches what that missed (a release that timed out while the broker was down, a pod
//! force-deleted while the operator was not running). One task, outside the reconciles, looks
//! every [`TICK`] for the ScalerConfigs whose sweep is due (at the start of leadership, then every
//! [`SWEEP_INTERVAL`]) and takes one bounded step of each: at most [`SCAN_BUDGET`] `SCAN` calls,
//! the cursor kept until the next tick, so that a large keyspace costs time, not reconcile slots.
//!
//! A sweep looks for the queues of the QWorkers and worker pods that use the ScalerConfig, and
//! for the queues recorded in its `status.queues`: a queue stays recorded after its QWorker is
//! gone until a complete sweep finds no list of it, so lists left behind by a deleted QWorker
//! are still returned, after a restart too. A list is returned only when no pod of its worker's
//! name exists in any namespace the operator watches: the cached pods first, then the API server
//! itself, asked by name, so that a pod the cache has not seen yet is never taken for gone; and
//! only lists whose worker has the shape of a pod name this operator gives
//! ([`is_generated_pod_name`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tracing::{debug, info, warn};
use workerpool_api::QWorker;
use workerpool_api::qworker::ScalerConfig;
use workerpool_queue::{Holder, QueueBroker};

use super::build::{QUEUE_ANNOTATION, SCALER_CONFIG_ANNOTATION};
use super::plan::is_generated_pod_name;
use crate::apply;
use crate::brokers::Brokers;
use crate::context::Shared;
use crate::controllers::scoped;
use crate::runtime::Reason;

/// How often a ScalerConfig's in-flight lists are swept for workers that no longer exist.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(300);
/// How often the sweeper looks for sweeps that are due, and takes the next step of each.
pub const TICK: Duration = Duration::from_secs(5);
/// At most this many `SCAN` calls (of [`workerpool_queue::SCAN_COUNT`] keys) per ScalerConfig
/// and tick.
pub const SCAN_BUDGET: u32 = 20;
/// The field manager of `status.queues`: the health check writes the rest of the status with
/// the operator's own manager, and neither removes the other's fields.
pub const FIELD_MANAGER: &str = "workerpool-operator-sweep";

/// The queues each ScalerConfig (`namespace`, name) is used for: its QWorkers' queues and the
/// queues recorded on its worker pods (a pod made before a queue edit still consumes the old one).
pub fn queues_in_use<'a>(
    qworkers: impl IntoIterator<Item = &'a QWorker>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> HashMap<(String, String), BTreeSet<String>> {
    let mut out: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for qw in qworkers {
        let sc = &qw.spec.scale_config;
        out.entry((
            qw.namespace().unwrap_or_default(),
            sc.scaler_config_ref.clone(),
        ))
        .or_default()
        .insert(sc.queue.clone());
    }
    for pod in pods {
        let annotations = pod.annotations();
        if let (Some(queue), Some(sc)) = (
            annotations.get(QUEUE_ANNOTATION),
            annotations.get(SCALER_CONFIG_ANNOTATION),
        ) {
            out.entry((pod.namespace().unwrap_or_default(), sc.clone()))
                .or_default()
                .insert(queue.clone());
        }
    }
    out
}

/// The queues to record in `status.queues`: those in use, and the recorded ones that the last
/// complete sweep (`found`, when one just ended) still found lists of.
pub fn kept_queues(
    in_use: &BTreeSet<String>,
    recorded: &[String],
    found: Option<&BTreeSet<String>>,
) -> Vec<String> {
    let mut kept = in_use.clone();
    kept.extend(
        recorded
            .iter()
            .filter(|q| found.is_none_or(|f| f.contains(*q)))
            .cloned(),
    );
    kept.into_iter().collect()
}

/// One ScalerConfig's sweep in progress.
struct Round {
    /// Where the next step starts.
    cursor: u64,
    /// The queues this sweep looks for.
    tracked: BTreeSet<String>,
    /// The queues in use when it started.
    in_use: BTreeSet<String>,
    /// `status.queues` as the sweep left it when it started.
    recorded: Vec<String>,
    /// The queues it found lists of so far.
    found: BTreeSet<String>,
}

/// `status.queues`, the only field the sweeper writes.
#[derive(Serialize)]
struct QueuesStatus<'a> {
    queues: &'a [String],
}

/// The sweeper: one task for every ScalerConfig.
pub struct Sweeper {
    shared: Shared,
    brokers: Brokers,
    qworkers: Store<QWorker>,
    pods: Store<Pod>,
    /// Where pods are looked up by name: the watched namespace, or all.
    namespace: Option<String>,
    rounds: HashMap<String, Round>,
    done: HashMap<String, Instant>,
}

impl Sweeper {
    /// A sweeper reading ScalerConfigs from `brokers`, QWorkers and worker pods from the
    /// caches, and looking pods up in `namespace` (or all namespaces).
    pub fn new(
        shared: Shared,
        brokers: Brokers,
        qworkers: Store<QWorker>,
        pods: Store<Pod>,
        namespace: Option<&str>,
    ) -> Self {
        Self {
            shared,
            brokers,
            qworkers,
            pods,
            namespace: namespace.map(str::to_owned),
            rounds: HashMap::new(),
            done: HashMap::new(),
        }
    }

    /// Sweeps until `shutdown`.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            if self.shared.gate.closed().is_some() {
                // A standby or an unsynced cache acts on nothing; a new leader sweeps at once.
                self.rounds.clear();
                self.done.clear();
                continue;
            }
            self.tick().await;
        }
    }

    /// One step of every sweep that is due ([`Self::run`] calls it every [`TICK`] while the
    /// gate is open).
    pub async fn tick(&mut self) {
        let configs = self.brokers.configs().state();
        let live: HashSet<&str> = configs
            .iter()
            .filter_map(|sc| sc.metadata.uid.as_deref())
            .collect();
        self.rounds.retain(|uid, _| live.contains(uid.as_str()));
        self.done.retain(|uid, _| live.contains(uid.as_str()));
        let due: Vec<&Arc<ScalerConfig>> = configs
            .iter()
            .filter(|sc| sc.spec.type_.keeps_processing_lists())
            .filter(|sc| {
                let uid = sc.metadata.uid.as_deref().unwrap_or_default();
                self.rounds.contains_key(uid)
                    || self
                        .done
                        .get(uid)
                        .is_none_or(|t| t.elapsed() >= SWEEP_INTERVAL)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let qworkers = self.qworkers.state();
        let pods = self.pods.state();
        let in_use = queues_in_use(
            qworkers.iter().map(|q| q.as_ref()),
            pods.iter().map(|p| p.as_ref()),
        );
        let known: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
        for sc in due {
            let key = (sc.namespace().unwrap_or_default(), sc.name_any());
            let empty = BTreeSet::new();
            self.step(sc, in_use.get(&key).unwrap_or(&empty), &known)
                .await;
        }
    }

    /// One bounded step of ScalerConfig `sc`'s sweep.
    async fn step(
        &mut self,
        sc: &ScalerConfig,
        in_use: &BTreeSet<String>,
        known: &HashSet<String>,
    ) {
        let uid = sc.metadata.uid.clone().unwrap_or_default();
        let (ns, name) = (sc.namespace().unwrap_or_default(), sc.name_any());
        let recorded = sc
            .status
            .as_ref()
            .map(|s| s.queues.clone())
            .unwrap_or_default();
        let broker = match self.brokers.get(&ns, &name).await {
            Ok(b) => b,
            Err(e) => {
                debug!(scalerconfig = %name, namespace = %ns, reason = e.reason, "in-flight sweep postponed");
                return;
            }
        };
        if !self.rounds.contains_key(&uid) {
            // A sweep starts: the queues in use are recorded first, so that a QWorker deleted
            // from now on leaves its queue behind for the sweeps after this one.
            let tracked: BTreeSet<String> = in_use.iter().chain(&recorded).cloned().collect();
            let kept = kept_queues(in_use, &recorded, None);
            if kept != recorded && !self.write(sc, &kept).await {
                return;
            }
            self.rounds.insert(
                uid.clone(),
                Round {
                    cursor: 0,
                    tracked,
                    in_use: in_use.clone(),
                    recorded: kept,
                    found: BTreeSet::new(),
                },
            );
        }
        let Some(round) = self.rounds.get_mut(&uid) else {
            return;
        };
        let page = match broker
            .holders_page(&round.tracked, round.cursor, SCAN_BUDGET)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                debug!(scalerconfig = %name, namespace = %ns, error = %e, "in-flight sweep postponed");
                return;
            }
        };
        round.cursor = page.cursor;
        round
            .found
            .extend(page.holders.iter().map(|h| h.queue.clone()));
        let gone = page
            .holders
            .iter()
            .filter(|h| !known.contains(&h.worker) && is_generated_pod_name(&h.worker));
        for holder in gone {
            self.give_back(sc, broker.as_ref(), holder).await;
        }
        if page.cursor == 0
            && let Some(round) = self.rounds.remove(&uid)
        {
            self.done.insert(uid, Instant::now());
            let kept = kept_queues(&round.in_use, &round.recorded, Some(&round.found));
            if kept != round.recorded {
                self.write(sc, &kept).await;
            }
        }
    }

    /// Returns `holder`'s list to its queue unless a pod of that name exists after all.
    async fn give_back(&self, sc: &ScalerConfig, broker: &dyn QueueBroker, holder: &Holder) {
        let Holder { queue, worker } = holder;
        let pods: Api<Pod> = scoped(&self.shared.client, self.namespace.as_deref());
        let params = ListParams::default()
            .fields(&format!("metadata.name={worker}"))
            .limit(1);
        match pods.list_metadata(&params).await {
            Ok(list) if list.items.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                debug!(%worker, error = %e, "could not check that a worker is gone; its list stays");
                return;
            }
        }
        match broker.recover(queue, worker).await {
            Ok(0) => {}
            Ok(n) => {
                info!(%worker, %queue, tasks = n, "the sweep returned the tasks of a gone worker to the queue");
                self.shared
                    .event(
                        &sc.object_ref(&()),
                        Reason::TASKS_RECOVERED,
                        "Sweep",
                        format!(
                            "Returned {n} in-flight task(s) of worker {worker}, which no longer exists, to queue {queue}"
                        ),
                    )
                    .await;
            }
            Err(e) => {
                warn!(%worker, %queue, error = %e, "could not return the tasks of a gone worker")
            }
        }
    }

    /// Writes `status.queues`; whether it was written.
    async fn write(&self, sc: &ScalerConfig, queues: &[String]) -> bool {
        let api: Api<ScalerConfig> = Api::namespaced(
            self.shared.client.clone(),
            &sc.namespace().unwrap_or_default(),
        );
        match apply::apply_status_as(
            &api,
            &sc.name_any(),
            FIELD_MANAGER,
            &QueuesStatus { queues },
        )
        .await
        {
            Ok(()) => true,
            Err(e) => {
                debug!(scalerconfig = %sc.name_any(), error = %e, "could not record the swept queues");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn queues_in_use_come_from_qworkers_and_from_their_pods() {
        let qw: QWorker = serde_json::from_value(serde_json::json!({
            "apiVersion": "quickube.com/v1alpha1", "kind": "QWorker",
            "metadata": {"name": "w", "namespace": "a"},
            "spec": {"podSpec": {"containers": [{"name": "c", "image": "i"}]},
                     "scaleConfig": {"queue": "new", "scalerConfigRef": "redis",
                                     "minReplicas": 0, "maxReplicas": 2, "scalingFactor": 1}},
        }))
        .expect("QWorker");
        let pod = |ns: &str, queue: &str, sc: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": ns, "annotations": {
                    QUEUE_ANNOTATION: queue, SCALER_CONFIG_ANNOTATION: sc}},
            }))
            .expect("Pod")
        };
        let pods = [pod("a", "old", "redis"), pod("b", "other", "redis")];
        let got = queues_in_use([&qw], pods.iter());
        assert_eq!(
            got.get(&("a".into(), "redis".into())),
            Some(&set(&["new", "old"]))
        );
        assert_eq!(
            got.get(&("b".into(), "redis".into())),
            Some(&set(&["other"]))
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_recorded_queue_is_kept_until_a_complete_sweep_finds_no_list_of_it() {
        let in_use = set(&["q1"]);
        let recorded = strings(&["gone-with-lists", "gone-without", "q1"]);
        assert_eq!(
            kept_queues(&in_use, &recorded, None),
            strings(&["gone-with-lists", "gone-without", "q1"]),
            "while a sweep runs, nothing recorded is dropped"
        );
        assert_eq!(
            kept_queues(&in_use, &recorded, Some(&set(&["gone-with-lists"]))),
            strings(&["gone-with-lists", "q1"]),
            "a queue in use stays even without lists"
        );
        assert_eq!(
            kept_queues(&set(&["q2"]), &[], None),
            strings(&["q2"]),
            "a new queue in use is recorded at once"
        );
    }
}
