//! Every reason the operator gives its Events, and whether it is a Warning, in one place: a
//! call site names a [`Reason`], never a string and a separate Warning flag. The reference in
//! `docs/operations.md` lists each of [`Reason::ALL`] (a test checks it).

/// The reason of an Event and its type (Normal or Warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason {
    name: &'static str,
    warning: bool,
}

impl Reason {
    /// A Normal Event's reason.
    pub const fn normal(name: &'static str) -> Self {
        Self {
            name,
            warning: false,
        }
    }

    /// A Warning Event's reason; also for a condition reason published as a Warning (an error
    /// category, a broker that cannot be used, a pool that waits).
    pub const fn warning(name: &'static str) -> Self {
        Self {
            name,
            warning: true,
        }
    }

    /// The reason as the Event carries it.
    pub const fn name(self) -> &'static str {
        self.name
    }

    /// Whether the Event is a Warning.
    pub const fn is_warning(self) -> bool {
        self.warning
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $const:ident = $kind:ident($name:literal);)*) => {
        impl Reason {
            $($(#[$doc])* pub const $const: Reason = Reason::$kind($name);)*
            /// Every fixed reason.
            pub const ALL: &[Reason] = &[$(Reason::$const),*];
        }
    };
}

reasons! {
    /// A child object was created.
    CREATED = normal("Created");
    /// A child object was changed.
    UPDATED = normal("Updated");
    /// A child object the resource no longer wants was deleted.
    DELETED = normal("Deleted");
    /// The spec was refused (a rule the API server cannot state).
    INVALID_SPEC = warning("InvalidSpec");
    /// A QWorker's autoscaler raised the desired workers.
    SCALED_UP = normal("ScaledUp");
    /// A QWorker's autoscaler lowered the desired workers.
    SCALED_DOWN = normal("ScaledDown");
    /// Workers were asked to finish their task and exit (scale-down).
    DRAIN_REQUESTED = normal("DrainRequested");
    /// Workers of an older pod spec were asked to finish their task and exit.
    ROLLING_OUT = normal("RollingOut");
    /// In-flight tasks of a worker that is gone went back to the queue.
    TASKS_RECOVERED = normal("TasksRecovered");
    /// A worker pod was released without its tasks returned (the broker did not answer).
    RECOVERY_TIMED_OUT = warning("RecoveryTimedOut");
    /// Workers keep crashing; replacements wait.
    CRASH_LOOPING = warning("CrashLooping");
    /// More workers did not raise the completion rate; the autoscaler holds the count.
    INEFFECTIVE = warning("Ineffective");
    /// More workers raise the completion rate again.
    EFFECTIVE = normal("Effective");
    /// A worker container was OOM-killed; its memory request was raised (`activateVPA`).
    OOM_KILLED = warning("OOMKilled");
    /// A ScalerConfig's broker answers again.
    BROKER_REACHABLE = normal("BrokerReachable");
    /// A ScalerConfig sends credentials in plain text.
    PLAINTEXT_CREDENTIALS = warning("PlaintextCredentials");
    /// A StormWorkerPool's replicas were set from Storm's load.
    STORM_SCALED = normal("StormScaled");
    /// A pool's slots do not fit the topology's workers.
    SLOTS_DO_NOT_FIT = warning("SlotsDoNotFit");
    /// A submission Job was created.
    SUBMITTING = normal("Submitting");
    /// A submission Job submitted the topology.
    SUBMITTED = normal("Submitted");
    /// A submission Job failed.
    SUBMISSION_FAILED = warning("SubmissionFailed");
    /// A topology is submitted again (it was gone from Storm).
    RESUBMITTING = normal("Resubmitting");
    /// A topology is killed to submit its new spec.
    REDEPLOYING = normal("Redeploying");
    /// A topology is killed (its StormTopology is being deleted).
    KILLING = normal("Killing");
    /// A topology is no longer in Storm.
    KILLED = normal("Killed");
    /// Storm refused to kill a topology.
    KILL_FAILED = warning("KillFailed");
    /// A topology was deactivated (`spec.suspend`).
    SUSPENDED = normal("Suspended");
    /// Storm refused to deactivate a topology.
    SUSPEND_FAILED = warning("SuspendFailed");
    /// A topology was activated again.
    RESUMED = normal("Resumed");
    /// Storm refused to activate a topology.
    RESUME_FAILED = warning("ResumeFailed");
    /// A rebalance Job was created.
    REBALANCING = normal("Rebalancing");
    /// A rebalance Job succeeded.
    REBALANCED = normal("Rebalanced");
    /// A rebalance Job failed.
    REBALANCE_FAILED = warning("RebalanceFailed");
    /// Rebalancing stops: Storm cannot place more workers.
    REBALANCE_SETTLED = normal("RebalanceSettled");
    /// The topology the StormTopology names is not listed by Storm.
    NOT_LISTED = warning("NotListed");
    /// A topology's finalizer was removed without a confirmed kill: the kill timed out.
    KILL_TIMED_OUT = warning("KillTimedOut");
    /// A topology's finalizer was removed without a kill: its StormCluster is gone.
    CLUSTER_GONE = warning("ClusterGone");
    /// A StormCluster's UI does not answer.
    STORM_UNREACHABLE = warning("StormUnreachable");
    /// A StormCluster's UI answers again.
    STORM_REACHABLE = normal("StormReachable");
    /// A StormCluster's Nimbus has a (new) leader.
    LEADER_ELECTED = normal("LeaderElected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_name_and_is_in_the_operations_reference() {
        let docs = include_str!("../../../../docs/operations.md");
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a reason is defined twice");
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| !docs.contains(&format!("`{n}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/operations.md does not list {missing:?}"
        );
    }
}
