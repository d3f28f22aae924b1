//! The pure rebalance decision of a StormTopology: when the ready worker slots of the pools
//! that serve it differ from the workers Storm gave it, ask Storm for that many workers, at most
//! once per `rebalance.minIntervalSeconds`.
//!
//! Rules, in order (the first that applies holds):
//! - `rebalance.enabled: false` holds ([`Hold::Disabled`]). Without a `rebalance` field,
//!   rebalancing is on, but only for a topology that some pool serves.
//! - No StormWorkerPool in the namespace names the topology in `topologyRef` ([`Hold::NoPools`]).
//! - Storm reports it `REBALANCING` or `KILLED` (Storm refuses a rebalance then), or a status this
//!   operator does not know ([`Hold::StormBusy`]).
//! - The last rebalance Job has not finished ([`Hold::InProgress`]).
//! - A pool is mid-rollout: its Deployment's `updatedReplicas != replicas`, as mirrored in the
//!   pool's status ([`Hold::Rollout`]); the slots would change again within minutes. A rollout
//!   that stalled (the pool `Degraded`: its pods cannot be created, or its progress deadline
//!   passed) is not waited for: it may never end.
//! - The pools have no ready slot ([`Hold::NoReadySlots`]): nothing to schedule workers on.
//! - Storm settled below the last target ([`Hold::Settled`]): the last rebalance asked for
//!   this same target, succeeded, and Storm placed fewer workers (its schedulers use at most
//!   one worker per executor and may place workers anywhere in the cluster). Asking again
//!   would only deactivate the topology for the wait once more; a change of the pools' slots
//!   (a new target) lifts the hold.
//!
//! The target is the pools' ready slots, capped at `maxWorkers` and at the topology's
//! executors (Storm's `executorsTotal`; more workers than executors would stay empty).
//! - The target `min(ready slots, maxWorkers)` (at least 1) equals Storm's workers ([`Hold::Unchanged`]).
//! - The last rebalance started less than `minIntervalSeconds` (default 300) ago ([`Hold::Damped`]).

use k8s_openapi::jiff::Timestamp;
use workerpool_api::storm::{
    DEFAULT_REBALANCE_INTERVAL_SECONDS, PoolPhase, RebalanceSpec, StormWorkerPool,
};
use workerpool_storm::TopologyStatus;

/// What the decision needs of one pool serving the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolView {
    /// `status.replicas` (the Deployment's desired count).
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// Worker slots per pod (`ports.count`).
    pub slots_per_pod: i32,
    /// The pool's rollout is not progressing (phase `Degraded`).
    pub stalled: bool,
}

impl PoolView {
    /// The view of a pool (a pool without status counts as having nothing ready).
    pub fn of(pool: &StormWorkerPool) -> Self {
        // Borrowed: a topology reconciles its pools' views at every resync, and a status
        // carries conditions (a profile at 5,000 pools put 8.6 % of the idle CPU in a clone).
        let none = workerpool_api::StormWorkerPoolStatus::default();
        let status = pool.status.as_ref().unwrap_or(&none);
        Self {
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            updated_replicas: status.updated_replicas,
            slots_per_pod: pool.spec.ports.clone().unwrap_or_default().count,
            stalled: status.phase == Some(PoolPhase::Degraded),
        }
    }

    /// Ready slots of the pool.
    pub fn ready_slots(&self) -> i64 {
        i64::from(self.ready_replicas.max(0)) * i64::from(self.slots_per_pod.max(0))
    }

    /// Whether the pool's Deployment is mid-rollout (and the rollout still progresses).
    pub fn rolling_out(&self) -> bool {
        self.updated_replicas != self.replicas && !self.stalled
    }
}

/// Everything the decision looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The pools whose `topologyRef` names the topology.
    pub pools: &'a [PoolView],
    /// Storm's `workersTotal` of the topology.
    pub workers: i32,
    /// Storm's status of the topology.
    pub storm_status: TopologyStatus,
    /// The topology's `spec.rebalance`.
    pub spec: Option<&'a RebalanceSpec>,
    /// When the last rebalance started (status `lastRebalance.time`).
    pub last: Option<Timestamp>,
    /// Whether the last rebalance's Job is still running.
    pub last_running: bool,
    /// Workers the last rebalance asked for, when it succeeded.
    pub last_succeeded_target: Option<i32>,
    /// Storm's `executorsTotal` of the topology (0: unknown, no cap).
    pub executors: i64,
    /// The time of the decision.
    pub now: Timestamp,
}

/// Why no rebalance is started now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `rebalance.enabled` is false.
    Disabled,
    /// No pool serves the topology.
    NoPools,
    /// Storm's status refuses a rebalance (`REBALANCING`, `KILLED`).
    StormBusy(TopologyStatus),
    /// The previous rebalance Job is still running.
    InProgress,
    /// A pool is rolling out.
    Rollout,
    /// The pools have no ready slot.
    NoReadySlots,
    /// The workers already match the target.
    Unchanged,
    /// The last rebalance asked for `asked` workers and succeeded; Storm runs `got`.
    Settled {
        /// Workers asked for (the target now too).
        asked: i32,
        /// Workers Storm runs.
        got: i32,
    },
    /// The last rebalance is too recent; `remaining_secs` until the next may start.
    Damped {
        /// Seconds until `minIntervalSeconds` has passed.
        remaining_secs: i64,
    },
}

impl Hold {
    /// A short explanation, for logs.
    pub fn describe(&self) -> String {
        match self {
            Hold::Disabled => "rebalance.enabled is false".into(),
            Hold::NoPools => "no StormWorkerPool serves the topology".into(),
            Hold::StormBusy(s) => format!("Storm reports the topology {}", s.as_str()),
            Hold::InProgress => "the last rebalance Job is still running".into(),
            Hold::Rollout => "a pool serving the topology is rolling out".into(),
            Hold::NoReadySlots => "the pools serving the topology have no ready slot".into(),
            Hold::Unchanged => "the workers match the pools' ready slots".into(),
            Hold::Settled { asked, got } => format!(
                "Storm settled at {got} of the {asked} workers the last rebalance asked for; not asked again until the pools' ready slots change"
            ),
            Hold::Damped { remaining_secs } => {
                format!("damped: the last rebalance was recent ({remaining_secs} s to wait)")
            }
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask Storm for `to` workers instead of `from`.
    Rebalance {
        /// Storm's workers now.
        from: i32,
        /// Workers to ask for.
        to: i32,
        /// Why, e.g. `ready slots of pools: 8`.
        reason: String,
    },
    /// Leave the topology as it is.
    Hold(Hold),
}

/// Decides whether to rebalance; see the module documentation for the rules.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let defaults = RebalanceSpec::default();
    let spec = inputs.spec.unwrap_or(&defaults);
    if !spec.enabled {
        return Decision::Hold(Hold::Disabled);
    }
    if inputs.pools.is_empty() {
        return Decision::Hold(Hold::NoPools);
    }
    match inputs.storm_status {
        TopologyStatus::Active | TopologyStatus::Inactive => {}
        other => return Decision::Hold(Hold::StormBusy(other)),
    }
    if inputs.last_running {
        return Decision::Hold(Hold::InProgress);
    }
    if inputs.pools.iter().any(PoolView::rolling_out) {
        return Decision::Hold(Hold::Rollout);
    }
    let slots: i64 = inputs.pools.iter().map(PoolView::ready_slots).sum();
    if slots <= 0 {
        return Decision::Hold(Hold::NoReadySlots);
    }
    let max = spec.max_workers.map_or(i64::MAX, |m| i64::from(m.max(1)));
    let executors = if inputs.executors > 0 {
        inputs.executors
    } else {
        i64::MAX
    };
    let target = i32::try_from(slots.min(max).min(executors).max(1)).unwrap_or(i32::MAX);
    if target == inputs.workers {
        return Decision::Hold(Hold::Unchanged);
    }
    if inputs.last_succeeded_target == Some(target) && inputs.workers < target {
        return Decision::Hold(Hold::Settled {
            asked: target,
            got: inputs.workers,
        });
    }
    let interval = i64::from(
        spec.min_interval_seconds
            .unwrap_or(DEFAULT_REBALANCE_INTERVAL_SECONDS)
            .max(0),
    );
    if let Some(last) = inputs.last {
        let since = inputs.now.as_second() - last.as_second();
        if since < interval {
            return Decision::Hold(Hold::Damped {
                remaining_secs: interval - since,
            });
        }
    }
    let reason = if i64::from(target) < slots && i64::from(target) == executors {
        format!("ready slots of pools: {slots}, capped at the topology's {executors} executors")
    } else if i64::from(target) < slots {
        format!(
            "ready slots of pools: {slots}, capped at maxWorkers {}",
            spec.max_workers.unwrap_or(target)
        )
    } else {
        format!("ready slots of pools: {slots}")
    };
    Decision::Rebalance {
        from: inputs.workers,
        to: target,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ready: i32) -> PoolView {
        PoolView {
            replicas: ready,
            ready_replicas: ready,
            updated_replicas: ready,
            slots_per_pod: 4,
            stalled: false,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("timestamp")
    }

    fn inputs<'a>(pools: &'a [PoolView], workers: i32, now: Timestamp) -> Inputs<'a> {
        Inputs {
            pools,
            workers,
            storm_status: TopologyStatus::Active,
            spec: None,
            last: None,
            last_running: false,
            last_succeeded_target: None,
            executors: 0,
            now,
        }
    }

    #[test]
    fn executors_cap_the_target() {
        // 3 pods × 4 slots, but the topology has 7 executors: 7 workers, not 12.
        let pools = [pool(3)];
        let mut i = inputs(&pools, 3, at(0));
        i.executors = 7;
        assert_eq!(
            decide(&i),
            Decision::Rebalance {
                from: 3,
                to: 7,
                reason: "ready slots of pools: 12, capped at the topology's 7 executors".into()
            }
        );
        i.workers = 7;
        assert_eq!(decide(&i), Decision::Hold(Hold::Unchanged));
    }

    #[test]
    fn storm_settling_below_the_target_is_not_asked_again() {
        // Asked 12 last time (succeeded), Storm runs 9: hold, however long ago that was.
        let pools = [pool(3)];
        let mut i = inputs(&pools, 9, at(100_000));
        i.last = Some(at(0));
        i.last_succeeded_target = Some(12);
        assert_eq!(
            decide(&i),
            Decision::Hold(Hold::Settled { asked: 12, got: 9 })
        );
        // The pools grow: a new target, a new rebalance.
        let grown = [pool(4)];
        i.pools = &grown;
        assert!(matches!(decide(&i), Decision::Rebalance { to: 16, .. }));
        // A failed last rebalance is tried again (after the interval).
        i.pools = &pools;
        i.last_succeeded_target = None;
        assert!(matches!(decide(&i), Decision::Rebalance { to: 12, .. }));
    }

    #[test]
    fn a_sequence_of_pool_changes() {
        // One pool, one ready pod with 4 slots; Storm runs 4 workers: nothing to do.
        let one = [pool(1)];
        assert_eq!(
            decide(&inputs(&one, 4, at(0))),
            Decision::Hold(Hold::Unchanged)
        );
        // The pool scales to 2 ready pods: 8 slots.
        let two = [pool(2)];
        let d = decide(&inputs(&two, 4, at(10)));
        assert_eq!(
            d,
            Decision::Rebalance {
                from: 4,
                to: 8,
                reason: "ready slots of pools: 8".into()
            }
        );
        // Storm reports REBALANCING while the Job runs.
        let mut i = inputs(&two, 4, at(20));
        i.storm_status = TopologyStatus::Rebalancing;
        i.last = Some(at(10));
        assert_eq!(
            decide(&i),
            Decision::Hold(Hold::StormBusy(TopologyStatus::Rebalancing))
        );
        // The Job has not finished yet.
        let mut i = inputs(&two, 4, at(30));
        i.last = Some(at(10));
        i.last_running = true;
        assert_eq!(decide(&i), Decision::Hold(Hold::InProgress));
        // 60 s later the pool has 3 ready pods: damped until 300 s after the last rebalance.
        let three = [pool(3)];
        let mut i = inputs(&three, 8, at(70));
        i.last = Some(at(10));
        assert_eq!(
            decide(&i),
            Decision::Hold(Hold::Damped {
                remaining_secs: 240
            })
        );
        // Once the interval has passed it goes ahead.
        let mut i = inputs(&three, 8, at(310));
        i.last = Some(at(10));
        assert!(matches!(
            decide(&i),
            Decision::Rebalance {
                from: 8,
                to: 12,
                ..
            }
        ));
    }

    #[test]
    fn a_rollout_holds() {
        let mut rolling = [PoolView {
            replicas: 2,
            ready_replicas: 2,
            updated_replicas: 1,
            slots_per_pod: 4,
            stalled: false,
        }];
        assert_eq!(
            decide(&inputs(&rolling, 4, at(0))),
            Decision::Hold(Hold::Rollout)
        );
        // A stalled rollout (pods that cannot be created: no updated pod at all) is not waited
        // for; the other pools' ready slots count.
        rolling[0].stalled = true;
        rolling[0].updated_replicas = 0;
        let pools = [rolling[0], pool(3)];
        assert_eq!(
            decide(&inputs(&pools, 4, at(0))),
            Decision::Rebalance {
                from: 4,
                to: 20,
                reason: "ready slots of pools: 20".into()
            }
        );
    }

    #[test]
    fn max_workers_caps_the_target() {
        let pools = [pool(3), pool(2)];
        let spec = RebalanceSpec {
            max_workers: Some(6),
            ..RebalanceSpec::default()
        };
        let mut i = inputs(&pools, 4, at(0));
        i.spec = Some(&spec);
        assert_eq!(
            decide(&i),
            Decision::Rebalance {
                from: 4,
                to: 6,
                reason: "ready slots of pools: 20, capped at maxWorkers 6".into()
            }
        );
        i.workers = 6;
        assert_eq!(decide(&i), Decision::Hold(Hold::Unchanged));
    }

    #[test]
    fn disabled_killed_no_pools_and_no_slots_hold() {
        let pools = [pool(2)];
        let spec = RebalanceSpec {
            enabled: false,
            ..RebalanceSpec::default()
        };
        let mut i = inputs(&pools, 4, at(0));
        i.spec = Some(&spec);
        assert_eq!(decide(&i), Decision::Hold(Hold::Disabled));
        assert_eq!(
            decide(&inputs(&[], 4, at(0))),
            Decision::Hold(Hold::NoPools)
        );
        let mut i = inputs(&pools, 4, at(0));
        i.storm_status = TopologyStatus::Killed;
        assert_eq!(
            decide(&i),
            Decision::Hold(Hold::StormBusy(TopologyStatus::Killed))
        );
        let none_ready = [pool(0)];
        assert_eq!(
            decide(&inputs(&none_ready, 4, at(0))),
            Decision::Hold(Hold::NoReadySlots)
        );
        // INACTIVE topologies may be rebalanced.
        let mut i = inputs(&pools, 4, at(0));
        i.storm_status = TopologyStatus::Inactive;
        assert!(matches!(decide(&i), Decision::Rebalance { to: 8, .. }));
    }

    #[test]
    fn a_zero_interval_never_damps() {
        let pools = [pool(2)];
        let spec = RebalanceSpec {
            min_interval_seconds: Some(0),
            ..RebalanceSpec::default()
        };
        let mut i = inputs(&pools, 4, at(5));
        i.spec = Some(&spec);
        i.last = Some(at(5));
        assert!(matches!(decide(&i), Decision::Rebalance { to: 8, .. }));
    }
}
