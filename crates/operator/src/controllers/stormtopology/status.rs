//! Pure status helpers of a StormTopology: Storm's status as a phase, a launch time that does
//! not move with every poll, the conditions, and the comparison that decides whether a status
//! write is needed.

use k8s_openapi::jiff::{Timestamp, ToSpan};
use workerpool_api::conditions::{self, NewCondition, READY};
use workerpool_api::storm::{StormTopologyStatus, TopologyPhase};
use workerpool_storm::{TopologyStatus, TopologySummary};

/// Condition type: the topology's StormCluster exists and is `Running`.
pub const CLUSTER_READY: &str = "ClusterReady";
/// Condition type: the operator's submission of the current spec succeeded (topologies with a
/// `jar` only).
pub const SUBMITTED: &str = "Submitted";
/// Condition type: the topology's workers are as the pools' ready slots ask (`WorkersMatchSlots`),
/// or as near as Storm could place them (`StormSettled`); false while a rebalance runs.
pub const REBALANCED: &str = "Rebalanced";
/// A launch time computed at a later poll that differs from the recorded one by at most this
/// many seconds is taken to be the same launch (uptime and clocks drift by seconds).
pub const LAUNCH_TIME_TOLERANCE_SECS: i64 = 120;

/// The phase that Storm's status of a found topology gives.
pub fn phase_of(status: TopologyStatus) -> TopologyPhase {
    match status {
        TopologyStatus::Active => TopologyPhase::Running,
        TopologyStatus::Inactive => TopologyPhase::Suspended,
        TopologyStatus::Rebalancing => TopologyPhase::Rebalancing,
        TopologyStatus::Killed => TopologyPhase::Killing,
        // A status this operator does not know: the topology exists, report it as running.
        TopologyStatus::Unknown => TopologyPhase::Running,
    }
}

/// When the topology was launched: `now - uptime`, truncated to the minute (RFC 3339). The
/// `previous` value is kept when it is within [`LAUNCH_TIME_TOLERANCE_SECS`] of that, so that the
/// status does not change from one poll to the next.
pub fn launch_time(now: Timestamp, uptime_seconds: i64, previous: Option<&str>) -> String {
    let launched = now
        .checked_sub(uptime_seconds.max(0).seconds())
        .unwrap_or(now);
    let secs = launched.as_second();
    let minute = secs - secs.rem_euclid(60);
    let computed = Timestamp::from_second(minute).unwrap_or(launched);
    if let Some(prev) = previous.and_then(|p| p.parse::<Timestamp>().ok())
        && (prev.as_second() - computed.as_second()).abs() <= LAUNCH_TIME_TOLERANCE_SECS
    {
        return prev.to_string();
    }
    computed.to_string()
}

/// Copies what Storm reports of a found topology into `status`: id, Storm status, counts,
/// launch time, last error, and the phase Storm's status gives.
pub fn observe(
    status: &mut StormTopologyStatus,
    found: &TopologySummary,
    last_error: Option<String>,
    now: Timestamp,
) {
    status.topology_id = Some(found.id.clone());
    status.storm_status = Some(found.status.as_str().to_string());
    status.workers = Some(clamp(found.workers_total));
    status.executors = Some(clamp(found.executors_total));
    status.tasks = Some(clamp(found.tasks_total));
    status.launch_time = Some(launch_time(
        now,
        found.uptime_seconds,
        status.launch_time.as_deref(),
    ));
    status.last_error = last_error;
    status.phase = Some(phase_of(found.status));
}

/// Clears what only a topology found in Storm has (id, Storm status, counts, launch time, error).
pub fn forget_storm(status: &mut StormTopologyStatus) {
    status.topology_id = None;
    status.storm_status = None;
    status.workers = None;
    status.executors = None;
    status.tasks = None;
    status.launch_time = None;
    status.last_error = None;
}

fn clamp(n: i64) -> i32 {
    i32::try_from(n.max(0)).unwrap_or(i32::MAX)
}

/// Sets the condition `type_` in `status`.
pub fn set(
    status: &mut StormTopologyStatus,
    type_: &'static str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    conditions::set_condition(
        &mut status.conditions,
        NewCondition::new(type_, ok, reason, message),
        generation,
        now,
    );
}

/// Sets phase, message and the `Ready` condition together: `Ready` is true while the topology
/// runs in Storm (phase `Running`, `Suspended` or `Rebalancing`), with `reason`.
pub fn set_phase(
    status: &mut StormTopologyStatus,
    phase: TopologyPhase,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = message.into();
    status.phase = Some(phase);
    status.message = Some(message.clone());
    set(
        status,
        READY,
        phase.serves_pools(),
        reason,
        message,
        generation,
        now,
    );
    status.observed_generation = generation;
}

/// The `Ready` reason of a phase read from Storm.
pub fn storm_reason(status: TopologyStatus) -> &'static str {
    match status {
        TopologyStatus::Active => "Active",
        TopologyStatus::Inactive => "Inactive",
        TopologyStatus::Rebalancing => "Rebalancing",
        TopologyStatus::Killed => "Killed",
        TopologyStatus::Unknown => "UnknownStormStatus",
    }
}

pub use crate::runtime::status::unchanged;

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn storm_status_maps_to_phase() {
        let table = [
            (TopologyStatus::Active, TopologyPhase::Running),
            (TopologyStatus::Inactive, TopologyPhase::Suspended),
            (TopologyStatus::Rebalancing, TopologyPhase::Rebalancing),
            (TopologyStatus::Killed, TopologyPhase::Killing),
        ];
        for (storm, phase) in table {
            assert_eq!(phase_of(storm), phase, "{storm:?}");
        }
        assert!(phase_of(TopologyStatus::Active).serves_pools());
        assert!(!phase_of(TopologyStatus::Killed).serves_pools());
    }

    #[test]
    fn launch_time_is_truncated_to_the_minute_and_stable_across_polls() {
        let first = launch_time(ts("2026-01-01T10:00:45Z"), 3600 + 30, None);
        assert_eq!(first, "2026-01-01T09:00:00Z");
        // 15 s later, uptime 15 s more: the same minute.
        let again = launch_time(ts("2026-01-01T10:01:00Z"), 3600 + 45, Some(&first));
        assert_eq!(again, first);
        // Uptime drifted by 90 s (a slow poll, a clock step): the recorded value is kept.
        let drift = launch_time(
            ts("2026-01-01T10:05:00Z"),
            3600 + 4 * 60 + 45 + 90,
            Some(&first),
        );
        assert_eq!(drift, first);
        // A new launch (a redeploy): uptime 10 s.
        let new = launch_time(ts("2026-01-01T11:00:30Z"), 10, Some(&first));
        assert_eq!(new, "2026-01-01T11:00:00Z");
    }

    #[test]
    fn unchanged_ignores_transition_times_of_unchanged_conditions() {
        let mut a = StormTopologyStatus::default();
        set_phase(
            &mut a,
            TopologyPhase::Running,
            "Active",
            "m",
            Some(1),
            ts("2026-01-01T00:00:00Z"),
        );
        let mut b = a.clone();
        set_phase(
            &mut b,
            TopologyPhase::Running,
            "Active",
            "m",
            Some(1),
            ts("2026-01-02T00:00:00Z"),
        );
        assert!(unchanged(Some(&a), &b));
        set_phase(
            &mut b,
            TopologyPhase::Suspended,
            "Inactive",
            "m",
            Some(1),
            ts("2026-01-02T00:00:00Z"),
        );
        assert!(!unchanged(Some(&a), &b));
        assert!(!unchanged(None, &a));
    }
}
