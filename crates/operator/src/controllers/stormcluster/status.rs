//! Pure status computation of a StormCluster: from the cluster, its daemons' readiness and what
//! the Storm UI REST API answered, the new status and the Events its change deserves.

use k8s_openapi::jiff::Timestamp;
use workerpool_api::conditions::{self, NewCondition, READY};
use workerpool_api::storm::{ClusterMode, ClusterPhase, StormCluster, StormClusterStatus};
use workerpool_storm::{ClusterSummary, Error as StormError, NimbusStatus, NimbusSummary};

use super::build::scrub_userinfo;
use crate::runtime::Reason;

/// Condition type: the Storm UI REST API answers with a Nimbus leader.
pub const REACHABLE: &str = "Reachable";
/// Condition type: the Nimbus and UI pods of a Managed cluster are ready.
pub const DAEMONS_READY: &str = "DaemonsReady";

/// Ready pods of a Managed cluster's daemons, against the desired counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Daemons {
    /// Ready Nimbus pods (the StatefulSet's `readyReplicas`).
    pub nimbus_ready: i32,
    /// Desired Nimbus pods.
    pub nimbus_desired: i32,
    /// Ready UI pods (the Deployment's `readyReplicas`).
    pub ui_ready: i32,
    /// Desired UI pods.
    pub ui_desired: i32,
}

impl Daemons {
    /// Whether every desired pod is ready.
    pub fn all_ready(&self) -> bool {
        self.nimbus_ready >= self.nimbus_desired && self.ui_ready >= self.ui_desired
    }

    /// `Nimbus 1/1 ready, UI 0/1 ready`.
    pub fn describe(&self) -> String {
        format!(
            "Nimbus {}/{} ready, UI {}/{} ready",
            self.nimbus_ready, self.nimbus_desired, self.ui_ready, self.ui_desired
        )
    }
}

/// What one poll of the UI REST API read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StormRead {
    /// `/api/v1/cluster/summary`.
    pub summary: ClusterSummary,
    /// `/api/v1/nimbus/summary`.
    pub nimbuses: Vec<NimbusSummary>,
}

/// The outcome of one poll.
pub type Poll = Result<StormRead, StormError>;

/// How a poll went, as the status and the poll backoff see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Storm answered with a Nimbus leader.
    Leader,
    /// Storm answered, without a leader (no seed answers, election running).
    NoLeader,
    /// The UI did not answer, or answered something unusable.
    Unreachable,
    /// The UI URL is unusable: a spec error.
    Invalid,
}

/// Classifies a poll.
pub fn outcome(poll: &Poll) -> Outcome {
    match poll {
        Ok(read) if leader(read).is_some() => Outcome::Leader,
        Ok(_) => Outcome::NoLeader,
        Err(e) if e.is_no_nimbus() => Outcome::NoLeader,
        Err(StormError::Invalid(_)) => Outcome::Invalid,
        Err(_) => Outcome::Unreachable,
    }
}

fn leader(read: &StormRead) -> Option<&NimbusSummary> {
    read.nimbuses
        .iter()
        .find(|n| n.status == NimbusStatus::Leader)
}

fn clamp(v: i64) -> i32 {
    i32::try_from(v.max(0)).unwrap_or(i32::MAX)
}

fn error_text(e: &StormError) -> String {
    let text = scrub_userinfo(&e.to_string());
    let first = text.lines().next().unwrap_or_default();
    first.chars().take(300).collect()
}

fn set(status: &mut StormClusterStatus, c: NewCondition, generation: Option<i64>, now: Timestamp) {
    conditions::set_condition(&mut status.conditions, c, generation, now);
}

/// The status of `cluster` after a poll: phase, Storm's figures and the `Ready`, `Reachable`
/// and (Managed) `DaemonsReady` conditions. `daemons` is `None` for an External cluster.
///
/// - `Running`: a Nimbus leader answers (and, Managed, every daemon is ready, no seed offline);
/// - `Degraded`: Storm answers but without a leader, with an offline seed or with a daemon not
///   ready; or the UI stopped answering a cluster that was up (Running or Degraded) before;
/// - `Pending`: a new cluster whose UI does not answer yet, or whose daemons are starting;
/// - `Failed`: the UI URL is unusable.
pub fn compute(
    cluster: &StormCluster,
    daemons: Option<Daemons>,
    poll: &Poll,
    now: Timestamp,
) -> StormClusterStatus {
    let previous = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let before = Before::of(&previous, daemons);
    let mut s = previous;
    s.observed_generation = generation;
    s.ui_url = cluster.ui_url().map(|u| scrub_userinfo(&u));
    s.nimbus_seeds = cluster.nimbus_seeds();
    let verdict = match poll {
        Ok(read) => {
            record_read(&mut s, read);
            answered(&s, read, before)
        }
        Err(e) => {
            s.nimbus_leader = None;
            unanswered(e, outcome(poll), before)
        }
    };
    s.phase = Some(verdict.phase);
    s.message = Some(verdict.message.clone());
    set(
        &mut s,
        NewCondition::new(
            READY,
            verdict.phase == ClusterPhase::Running,
            ready_reason(verdict.phase),
            verdict.message,
        ),
        generation,
        now,
    );
    set(&mut s, verdict.reachable, generation, now);
    set_daemons(&mut s, cluster, daemons, generation, now);
    s
}

/// Where the cluster stood before a poll, as the choice of its phase needs it.
#[derive(Clone, Copy)]
struct Before {
    /// The daemons' readiness (Managed clusters only).
    daemons: Option<Daemons>,
    /// The cluster was Running or Degraded.
    was_up: bool,
    /// A cluster that was not up and whose daemons are not all ready yet.
    starting: bool,
}

impl Before {
    /// Where a cluster with the `previous` status and `daemons` stands.
    fn of(previous: &StormClusterStatus, daemons: Option<Daemons>) -> Self {
        let was_up = matches!(
            previous.phase,
            Some(ClusterPhase::Running | ClusterPhase::Degraded)
        );
        Before {
            daemons,
            was_up,
            starting: daemons.is_some_and(|d| !d.all_ready()) && !was_up,
        }
    }
}

/// A poll's phase, with the message of `Ready` and the `Reachable` condition.
struct Verdict {
    phase: ClusterPhase,
    message: String,
    reachable: NewCondition,
}

/// Copies the leader, Storm's version and the cluster's figures of an answered poll into `s`.
fn record_read(s: &mut StormClusterStatus, read: &StormRead) {
    s.nimbus_leader = leader(read).map(NimbusSummary::address);
    s.storm_version = read
        .summary
        .storm_version
        .clone()
        .or_else(|| leader_version(read));
    s.supervisors = Some(clamp(read.summary.supervisors));
    s.slots_total = Some(clamp(read.summary.slots_total));
    s.slots_used = Some(clamp(read.summary.slots_used));
    s.slots_free = Some(clamp(read.summary.slots_free));
    s.topologies = Some(clamp(read.summary.topologies));
}

/// The verdict of a poll that Storm answered, once [`record_read`] has put it into `s`: `Running`
/// with a leader; without one, `Pending` while the daemons start, else `Degraded`.
fn answered(s: &StormClusterStatus, read: &StormRead, before: Before) -> Verdict {
    let summary = format!(
        "Storm {}, {} supervisor(s), {}/{} slot(s) free, {} topolog(ies)",
        s.storm_version.as_deref().unwrap_or("of unknown version"),
        read.summary.supervisors,
        read.summary.slots_free,
        read.summary.slots_total,
        read.summary.topologies
    );
    let warnings = warnings(read, before.daemons);
    match &s.nimbus_leader {
        Some(l) => Verdict {
            phase: ClusterPhase::Running,
            message: format!("Nimbus leader {l}; {summary}{warnings}"),
            reachable: NewCondition::new(
                REACHABLE,
                true,
                "UIReachable",
                format!("The Storm UI answers; Nimbus leader {l}"),
            ),
        },
        None => Verdict {
            phase: if before.starting {
                ClusterPhase::Pending
            } else {
                ClusterPhase::Degraded
            },
            message: if before.starting {
                format!("Daemons starting: no Nimbus leads yet{warnings}")
            } else {
                format!("Storm answers, but no Nimbus leads; {summary}{warnings}")
            },
            reachable: NewCondition::new(
                REACHABLE,
                false,
                "NoNimbusLeader",
                "The Storm UI answers but reports no Nimbus leader",
            ),
        },
    }
}

/// What is wrong while a leader serves, as a message suffix (`; ...`, or empty): offline Nimbus
/// seeds and daemons that are not ready. Only a missing leader stops pools and topologies; these
/// are only reported.
fn warnings(read: &StormRead, daemons: Option<Daemons>) -> String {
    let mut warnings = Vec::new();
    let offline: Vec<String> = read
        .nimbuses
        .iter()
        .filter(|n| n.status == NimbusStatus::Offline)
        .map(NimbusSummary::address)
        .collect();
    if !offline.is_empty() {
        warnings.push(format!("Nimbus seed(s) offline: {}", offline.join(", ")));
    }
    if let Some(d) = daemons.filter(|d| !d.all_ready()) {
        warnings.push(format!("daemons not ready ({})", d.describe()));
    }
    if warnings.is_empty() {
        String::new()
    } else {
        format!("; {}", warnings.join("; "))
    }
}

/// The verdict of a poll that failed with `e`, classified as `outcome`.
fn unanswered(e: &StormError, outcome: Outcome, before: Before) -> Verdict {
    let text = error_text(e);
    match outcome {
        Outcome::Invalid => Verdict {
            phase: ClusterPhase::Failed,
            message: format!("The Storm UI URL is unusable: {text}"),
            reachable: NewCondition::new(REACHABLE, false, "InvalidUIUrl", text),
        },
        Outcome::NoLeader => no_leader(&text, before),
        _ => no_answer(e, text, before),
    }
}

/// Storm answers but finds no Nimbus leader: `Pending` while the daemons start, else `Degraded`.
fn no_leader(text: &str, before: Before) -> Verdict {
    let reachable = NewCondition::new(
        REACHABLE,
        false,
        "NoNimbusLeader",
        "The Storm UI answers but finds no Nimbus leader",
    );
    if before.starting {
        let d = before.daemons.unwrap_or_default();
        Verdict {
            phase: ClusterPhase::Pending,
            message: format!("Daemons starting ({}); no Nimbus leader yet", d.describe()),
            reachable,
        }
    } else {
        Verdict {
            phase: ClusterPhase::Degraded,
            message: format!("Storm answers, but no Nimbus leader: {text}"),
            reachable,
        }
    }
}

/// The UI did not answer (or answered something unusable) with `e`: `Degraded` for a cluster
/// that was up, else `Pending`.
fn no_answer(e: &StormError, text: String, before: Before) -> Verdict {
    let reason = match e {
        StormError::Unreachable { .. } => "UIUnreachable",
        _ => "UIError",
    };
    let reachable = NewCondition::new(REACHABLE, false, reason, text.clone());
    let (phase, message) = if before.was_up {
        (
            ClusterPhase::Degraded,
            format!("The Storm UI stopped answering: {text}"),
        )
    } else if let Some(d) = before.daemons.filter(|_| before.starting) {
        (
            ClusterPhase::Pending,
            format!(
                "Daemons starting ({}); the Storm UI does not answer yet",
                d.describe()
            ),
        )
    } else {
        (
            ClusterPhase::Pending,
            format!("Waiting for the Storm UI to answer: {text}"),
        )
    };
    Verdict {
        phase,
        message,
        reachable,
    }
}

/// The `Ready` reason of a phase.
fn ready_reason(phase: ClusterPhase) -> &'static str {
    match phase {
        ClusterPhase::Running => "Running",
        ClusterPhase::Degraded => "Degraded",
        ClusterPhase::Pending => "Pending",
        ClusterPhase::Failed => "InvalidSpec",
    }
}

fn leader_version(read: &StormRead) -> Option<String> {
    leader(read)
        .and_then(|l| l.version.clone())
        .filter(|v| v != "Not applicable")
}

fn set_daemons(
    s: &mut StormClusterStatus,
    cluster: &StormCluster,
    daemons: Option<Daemons>,
    generation: Option<i64>,
    now: Timestamp,
) {
    match (cluster.spec.mode, daemons) {
        (ClusterMode::Managed, Some(d)) => {
            let (ready, reason) = if d.all_ready() {
                (true, "DaemonsReady")
            } else {
                (false, "DaemonsNotReady")
            };
            set(
                s,
                NewCondition::new(DAEMONS_READY, ready, reason, d.describe()),
                generation,
                now,
            );
        }
        (ClusterMode::Managed, None) => {}
        (ClusterMode::External, _) => {
            conditions::remove_condition(&mut s.conditions, DAEMONS_READY)
        }
    }
}

/// Status of a cluster whose spec is invalid or whose objects the API server rejects (phase
/// `Failed`, `Ready` false with `reason`). Storm's last figures are kept.
pub fn failed(
    cluster: &StormCluster,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> StormClusterStatus {
    let mut s = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let message = scrub_userinfo(message);
    s.observed_generation = generation;
    s.phase = Some(ClusterPhase::Failed);
    s.message = Some(message.clone());
    s.nimbus_leader = None;
    set(
        &mut s,
        NewCondition::new(READY, false, reason, message),
        generation,
        now,
    );
    s
}

pub use crate::runtime::status::unchanged;

/// Whether the status says that the Storm UI answers with a leader (`Reachable` true).
pub fn is_reachable(status: &StormClusterStatus) -> bool {
    conditions::is_true(&status.conditions, REACHABLE)
}

/// An Event a status change deserves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `StormUnreachable` (a Warning), `StormReachable` or `LeaderElected`.
    pub reason: Reason,
    /// Human readable.
    pub message: String,
}

/// The Events of the change from `previous` to `new`: `StormUnreachable` (Warning) when the
/// `Reachable` condition turns false or changes its reason while false, `StormReachable` when
/// it turns true, `LeaderElected` when a (new) leader answers. Nothing when nothing changed.
pub fn notes(previous: Option<&StormClusterStatus>, new: &StormClusterStatus) -> Vec<Note> {
    let mut out = Vec::new();
    let before = previous.and_then(|p| conditions::find(&p.conditions, REACHABLE));
    if let Some(now) = conditions::find(&new.conditions, REACHABLE) {
        let changed = before.is_none_or(|b| b.status != now.status || b.reason != now.reason);
        if changed && now.status == "False" && now.reason != "InvalidUIUrl" {
            out.push(Note {
                reason: Reason::STORM_UNREACHABLE,
                message: format!("{} ({})", now.message, now.reason),
            });
        } else if now.status == "True" && before.is_none_or(|b| b.status != "True") {
            out.push(Note {
                reason: Reason::STORM_REACHABLE,
                message: format!(
                    "The Storm UI at {} answers",
                    new.ui_url.as_deref().unwrap_or_default()
                ),
            });
        }
    }
    if let Some(l) = &new.nimbus_leader
        && previous.and_then(|p| p.nimbus_leader.as_ref()) != Some(l)
    {
        out.push(Note {
            reason: Reason::LEADER_ELECTED,
            message: format!("Nimbus leader is {l}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use workerpool_api::storm::StormClusterSpec;
    use workerpool_storm::model::NumberOrText;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn cluster(mode: ClusterMode, phase: Option<ClusterPhase>) -> StormCluster {
        let mut c = StormCluster::new(
            "storm",
            StormClusterSpec {
                mode,
                zookeeper_servers: vec!["zk".into()],
                ..StormClusterSpec::default()
            },
        );
        c.metadata.namespace = Some("team-a".into());
        c.metadata.generation = Some(4);
        if mode == ClusterMode::External {
            c.spec.ui_url = Some("http://admin:secret@ui.example:8080".into());
            c.spec.nimbus_seeds = vec!["nimbus-a".into()];
        }
        c.status = phase.map(|p| StormClusterStatus {
            phase: Some(p),
            ..StormClusterStatus::default()
        });
        c
    }

    fn nimbus(host: &str, status: NimbusStatus) -> NimbusSummary {
        NimbusSummary {
            host: host.into(),
            port: if status == NimbusStatus::Offline {
                NumberOrText::Text("6627".into())
            } else {
                NumberOrText::Number(6627)
            },
            status,
            version: Some("2.8.8".into()),
            nimbus_up_time_seconds: None,
        }
    }

    fn read(nimbuses: Vec<NimbusSummary>) -> Poll {
        Ok(StormRead {
            summary: ClusterSummary {
                storm_version: Some("2.8.8".into()),
                supervisors: 2,
                topologies: 1,
                slots_used: 3,
                slots_total: 8,
                slots_free: 5,
                ..ClusterSummary::default()
            },
            nimbuses,
        })
    }

    fn unreachable() -> Poll {
        Err(StormError::Unreachable {
            url: "http://admin:secret@ui.example:8080/api/v1/cluster/summary".into(),
            message: "connection refused".into(),
        })
    }

    fn no_nimbus() -> Poll {
        Err(StormError::Storm {
            status: 500,
            error: "500 Server Error".into(),
            message: "Could not find leader nimbus from seed hosts [x]. Did you specify a valid list of nimbus hosts for config nimbus.seeds?".into(),
        })
    }

    const READY_D: Daemons = Daemons {
        nimbus_ready: 1,
        nimbus_desired: 1,
        ui_ready: 1,
        ui_desired: 1,
    };
    const STARTING: Daemons = Daemons {
        nimbus_ready: 0,
        nimbus_desired: 1,
        ui_ready: 0,
        ui_desired: 1,
    };

    fn cond<'a>(s: &'a StormClusterStatus, t: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&s.conditions, t).unwrap_or_else(|| panic!("no {t}"));
        (c.status.as_str(), c.reason.as_str())
    }

    /// (what, mode, previous phase, daemons, poll, expected phase, expected Reachable).
    type Case = (
        &'static str,
        ClusterMode,
        Option<ClusterPhase>,
        Option<Daemons>,
        Poll,
        ClusterPhase,
        (&'static str, &'static str),
    );

    #[test]
    fn phase_table() {
        use ClusterMode::*;
        use ClusterPhase::*;
        let leader = || read(vec![nimbus("n0", NimbusStatus::Leader)]);
        let offline = || {
            read(vec![
                nimbus("n0", NimbusStatus::Leader),
                nimbus("storm-nimbus", NimbusStatus::Offline),
            ])
        };
        let no_leader = || read(vec![nimbus("n0", NimbusStatus::NotALeader)]);
        let cases: Vec<Case> = vec![
            (
                "external leader",
                External,
                None,
                None,
                leader(),
                Running,
                ("True", "UIReachable"),
            ),
            (
                "managed leader, ready",
                Managed,
                None,
                Some(READY_D),
                leader(),
                Running,
                ("True", "UIReachable"),
            ),
            (
                "managed leader, starting, new (the leader serves)",
                Managed,
                None,
                Some(STARTING),
                leader(),
                Running,
                ("True", "UIReachable"),
            ),
            (
                "managed leader, daemon down, was running (reported, not blocking)",
                Managed,
                Some(Running),
                Some(STARTING),
                leader(),
                Running,
                ("True", "UIReachable"),
            ),
            (
                "offline seed (reported, not blocking)",
                External,
                Some(Running),
                None,
                offline(),
                Running,
                ("True", "UIReachable"),
            ),
            (
                "no leader in summary",
                External,
                None,
                None,
                no_leader(),
                Degraded,
                ("False", "NoNimbusLeader"),
            ),
            (
                "no nimbus error",
                External,
                None,
                None,
                no_nimbus(),
                Degraded,
                ("False", "NoNimbusLeader"),
            ),
            (
                "no nimbus, managed starting",
                Managed,
                None,
                Some(STARTING),
                no_nimbus(),
                Pending,
                ("False", "NoNimbusLeader"),
            ),
            (
                "unreachable, new",
                External,
                None,
                None,
                unreachable(),
                Pending,
                ("False", "UIUnreachable"),
            ),
            (
                "unreachable, managed starting",
                Managed,
                None,
                Some(STARTING),
                unreachable(),
                Pending,
                ("False", "UIUnreachable"),
            ),
            (
                "unreachable, was running",
                External,
                Some(Running),
                None,
                unreachable(),
                Degraded,
                ("False", "UIUnreachable"),
            ),
            (
                "unreachable, was running, managed",
                Managed,
                Some(Running),
                Some(READY_D),
                unreachable(),
                Degraded,
                ("False", "UIUnreachable"),
            ),
            (
                "unreachable, was failed",
                External,
                Some(Failed),
                None,
                unreachable(),
                Pending,
                ("False", "UIUnreachable"),
            ),
            (
                "decode error",
                External,
                None,
                None,
                Err(StormError::Decode {
                    url: "u".into(),
                    message: "m".into(),
                }),
                Pending,
                ("False", "UIError"),
            ),
            (
                "invalid url",
                External,
                None,
                None,
                Err(StormError::Invalid("bad url".into())),
                Failed,
                ("False", "InvalidUIUrl"),
            ),
        ];
        for (what, mode, prev, daemons, poll, phase, reach) in cases {
            let c = cluster(mode, prev);
            let s = compute(&c, daemons, &poll, ts(10));
            assert_eq!(s.phase, Some(phase), "{what}: {:?}", s.message);
            assert_eq!(cond(&s, REACHABLE), reach, "{what}");
            assert_eq!(
                cond(&s, READY).0,
                if phase == Running { "True" } else { "False" },
                "{what}"
            );
            assert_eq!(s.observed_generation, Some(4), "{what}");
            assert!(
                s.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(4))
            );
            let json = serde_json::to_string(&s).expect("json");
            assert!(!json.contains("secret"), "{what}: {json}");
            match mode {
                Managed => assert!(
                    conditions::find(&s.conditions, DAEMONS_READY).is_some(),
                    "{what}"
                ),
                External => assert!(
                    conditions::find(&s.conditions, DAEMONS_READY).is_none(),
                    "{what}"
                ),
            }
        }
    }

    #[test]
    fn running_status_carries_storms_figures() {
        let c = cluster(ClusterMode::External, None);
        let s = compute(
            &c,
            None,
            &read(vec![nimbus("n0.x.svc", NimbusStatus::Leader)]),
            ts(1),
        );
        assert_eq!(s.nimbus_leader.as_deref(), Some("n0.x.svc:6627"));
        assert_eq!(s.storm_version.as_deref(), Some("2.8.8"));
        assert_eq!(
            (
                s.supervisors,
                s.slots_total,
                s.slots_used,
                s.slots_free,
                s.topologies
            ),
            (Some(2), Some(8), Some(3), Some(5), Some(1))
        );
        assert_eq!(s.ui_url.as_deref(), Some("http://ui.example:8080"));
        assert_eq!(s.nimbus_seeds, vec!["nimbus-a".to_string()]);
        assert_eq!(
            s.message.as_deref(),
            Some(
                "Nimbus leader n0.x.svc:6627; Storm 2.8.8, 2 supervisor(s), 5/8 slot(s) free, 1 topolog(ies)"
            )
        );
        let m = compute(
            &cluster(ClusterMode::Managed, None),
            Some(READY_D),
            &read(vec![nimbus("n0", NimbusStatus::Leader)]),
            ts(1),
        );
        assert_eq!(m.ui_url.as_deref(), Some("http://storm-ui.team-a.svc:8080"));
        assert_eq!(cond(&m, DAEMONS_READY), ("True", "DaemonsReady"));
    }

    #[test]
    fn a_steady_cluster_computes_an_unchanged_status() {
        let mut c = cluster(ClusterMode::Managed, None);
        let poll = read(vec![nimbus("n0", NimbusStatus::Leader)]);
        let first = compute(&c, Some(READY_D), &poll, ts(1));
        c.status = Some(first.clone());
        let second = compute(&c, Some(READY_D), &poll, ts(100));
        assert!(unchanged(Some(&first), &second));
        assert!(notes(Some(&first), &second).is_empty());
        let degraded = compute(&c, Some(STARTING), &poll, ts(100));
        assert!(!unchanged(Some(&first), &degraded));
        assert_eq!(degraded.phase, Some(ClusterPhase::Running));
        assert_eq!(cond(&degraded, DAEMONS_READY).0, "False");
        assert!(!unchanged(None, &first));
    }

    #[test]
    fn events_only_on_changes() {
        let mut c = cluster(ClusterMode::External, None);
        let down = compute(&c, None, &unreachable(), ts(1));
        let n = notes(c.status.as_ref(), &down);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, Reason::STORM_UNREACHABLE);
        assert!(n[0].reason.is_warning());
        assert!(!n[0].message.contains("secret"), "{}", n[0].message);
        c.status = Some(down.clone());
        let still = compute(&c, None, &unreachable(), ts(2));
        assert!(notes(Some(&down), &still).is_empty(), "no repeat");
        let up = compute(
            &c,
            None,
            &read(vec![nimbus("n0", NimbusStatus::Leader)]),
            ts(3),
        );
        let n = notes(Some(&down), &up);
        let reasons: Vec<_> = n
            .iter()
            .map(|n| (n.reason.is_warning(), n.reason.name()))
            .collect();
        assert_eq!(
            reasons,
            vec![(false, "StormReachable"), (false, "LeaderElected")]
        );
        c.status = Some(up.clone());
        let moved = compute(
            &c,
            None,
            &read(vec![nimbus("n1", NimbusStatus::Leader)]),
            ts(4),
        );
        let n = notes(Some(&up), &moved);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, Reason::LEADER_ELECTED);
        assert_eq!(n[0].message, "Nimbus leader is n1:6627");
    }

    #[test]
    fn failed_keeps_figures_and_scrubs() {
        let mut c = cluster(ClusterMode::External, Some(ClusterPhase::Running));
        if let Some(s) = c.status.as_mut() {
            s.supervisors = Some(2);
            s.nimbus_leader = Some("n0:6627".into());
        }
        let s = failed(&c, "ApplyRejected", "rejected http://a:b@x/y", ts(1));
        assert_eq!(s.phase, Some(ClusterPhase::Failed));
        assert_eq!(s.supervisors, Some(2));
        assert_eq!(s.nimbus_leader, None);
        assert_eq!(cond(&s, READY), ("False", "ApplyRejected"));
        assert_eq!(s.message.as_deref(), Some("rejected http://x/y"));
    }
}
