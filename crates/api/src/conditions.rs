//! Helpers for `metav1.Condition`-style status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition type: the resource's children exist and its workers are ready.
pub const READY: &str = "Ready";
/// Condition type: the HorizontalPodAutoscaler of a StormWorkerPool is active.
pub const AUTOSCALING: &str = "Autoscaling";
/// Condition type: the broker of a QWorker or ScalerConfig could be read.
pub const BROKER_REACHABLE: &str = "BrokerReachable";
/// Condition type: a QWorker is creating or draining pods to reach its desired count.
pub const SCALING: &str = "Scaling";
/// Condition type: pod resource metrics could be read for activateVPA.
pub const RESOURCE_METRICS_AVAILABLE: &str = "ResourceMetricsAvailable";

/// A condition to be written, without the transition time (which [`set_condition`] manages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    /// The condition type, e.g. [`READY`].
    pub type_: &'static str,
    /// Whether the condition holds.
    pub status: bool,
    /// A CamelCase reason, one of a bounded set.
    pub reason: String,
    /// A human readable message.
    pub message: String,
}

impl NewCondition {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Sets `new` in `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    new: NewCondition,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let status = status_str(new.status).to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == new.type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = new.reason;
            c.message = new.message;
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: new.type_.to_string(),
            status,
            reason: new.reason,
            message: new.message,
            observed_generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Removes the condition of `type_`, if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Finds the condition of `type_`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            NewCondition::new(READY, false, "Pending", "waiting"),
            Some(1),
            ts(10),
        );
        set_condition(
            &mut conds,
            NewCondition::new(READY, false, "StillPending", "still"),
            Some(2),
            ts(20),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(ts(10)));
        assert_eq!(conds[0].reason, "StillPending");
        assert_eq!(conds[0].observed_generation, Some(2));
        set_condition(
            &mut conds,
            NewCondition::new(READY, true, "WorkersReady", "ok"),
            Some(2),
            ts(30),
        );
        assert_eq!(conds[0].last_transition_time, Time(ts(30)));
        assert!(is_true(&conds, READY));
        remove_condition(&mut conds, READY);
        assert!(find(&conds, READY).is_none());
    }
}
