//! Leader election on a `coordination.k8s.io` Lease, by optimistic concurrency.
//!
//! The algorithm is client-go's `leaderelection`: every write of the Lease is a create, or a
//! replace (`PUT`) that carries the `resourceVersion` this replica last read, so the API server
//! refuses with 409 Conflict any write based on a state another replica has changed since. Of
//! two replicas that read the same free Lease and both try to take it, exactly one write
//! succeeds; the other learns it lost from the conflict. A replica leads only after the server
//! accepted a write naming it as the holder ([`Outcome::Leading`]), and stops leading as soon
//! as it cannot confirm that again within the renew deadline.
//!
//! A Lease held by another replica is taken only after it stayed unchanged, as this replica
//! observed it, for the whole lease duration: expiry is measured on the local clock from the
//! moment the record was last seen to change, never from the holder's `renewTime`, so clock skew
//! between replicas does not matter. The holder stops acting once its renewals have failed for
//! the renew deadline (two thirds of the duration), before anyone may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The election's clock: how long a Lease lasts, how soon its holder gives up, how often a
/// replica tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A Lease unchanged for this long may be taken by another replica.
    pub duration: Duration,
    /// The holder stops acting when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Time between two tries (to take, or to renew).
    pub retry: Duration,
}

impl Timing {
    /// client-go's proportions (15 s, 10 s, 2 s) for a lease of `seconds` (at least 2).
    pub fn from_lease_seconds(seconds: u64) -> Self {
        let duration = Duration::from_secs(seconds.max(2));
        Self {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: duration * 2 / 15,
        }
    }
}

/// What one try at the Lease ended in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server accepted a write that names this replica as the holder.
    Leading,
    /// Another replica holds the Lease and it has not expired.
    HeldBy(String),
    /// The write raced with another replica's (409): read again before deciding.
    Conflict,
}

/// What to write, decided from the Lease as read (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the Lease naming this replica; `taken` when it changes hands (a new
    /// `acquireTime` and one more transition).
    Write {
        /// Whether this replica takes the Lease over rather than renewing its own.
        taken: bool,
    },
    /// Leave it: another replica holds it.
    Wait(String),
}

/// Decides on a Lease record: renew our own, take a free or expired one, wait for a live one.
/// `unchanged_for` is how long this replica has seen the record unchanged.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    duration: Duration,
) -> Decision {
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == identity => Decision::Write { taken: false },
        Some(h) if unchanged_for < duration => Decision::Wait(h.to_string()),
        _ => Decision::Write { taken: true },
    }
}

/// The record as this replica last read or wrote it, and when it last saw it change.
struct Observed {
    lease: Lease,
    since: Instant,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    params: PostParams,
    observed: Option<Observed>,
}

impl Elector {
    /// Competes for Lease `namespace/name` as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            params: PostParams {
                field_manager: Some(field_manager(identity)),
                ..PostParams::default()
            },
            observed: None,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The election's timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Remembers `lease`, restarting the expiry clock when its resourceVersion changed.
    fn observe(&mut self, lease: Lease) {
        let rv = lease.metadata.resource_version.clone();
        let since = match &self.observed {
            Some(o) if o.lease.metadata.resource_version == rv => o.since,
            _ => Instant::now(),
        };
        self.observed = Some(Observed { lease, since });
    }

    /// Reads the Lease and takes or renews it when it may: one round of the election.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return self.create().await;
        };
        self.observe(current);
        let Some(observed) = &self.observed else {
            return Ok(Outcome::Conflict);
        };
        let unchanged_for = observed.since.elapsed();
        let spec = observed.lease.spec.as_ref();
        let taken = match decide(spec, &self.identity, unchanged_for, self.timing.duration) {
            Decision::Wait(holder) => return Ok(Outcome::HeldBy(holder)),
            Decision::Write { taken } => taken,
        };
        let now = MicroTime(jiff::Timestamp::now());
        let old = spec.cloned().unwrap_or_default();
        let transitions = old.lease_transitions.unwrap_or(0);
        let mut lease = observed.lease.clone();
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if taken {
                Some(now.clone())
            } else {
                old.acquire_time.or_else(|| Some(now.clone()))
            },
            renew_time: Some(now),
            lease_transitions: Some(if taken {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..old
        });
        // `lease` keeps the resourceVersion read above: the replace is refused if it changed.
        self.replace(&lease).await
    }

    /// Creates the Lease naming this replica; a create that lost the race is a conflict.
    async fn create(&mut self) -> Result<Outcome, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&self.params, &lease).await {
            Ok(created) => {
                self.observe(created);
                Ok(Outcome::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Replaces the Lease with `lease` (its resourceVersion is the precondition).
    async fn replace(&mut self, lease: &Lease) -> Result<Outcome, kube::Error> {
        match self.api.replace(&self.name, &self.params, lease).await {
            Ok(written) => {
                let leading = written
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(self.identity.as_str());
                self.observe(written);
                Ok(if leading {
                    Outcome::Leading
                } else {
                    Outcome::Conflict
                })
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, if the last record this replica saw names it, so that a standby
    /// takes over at its next try instead of after the lease duration. Refused (and harmless)
    /// when the Lease changed since.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(observed) = &self.observed else {
            return Ok(false);
        };
        let spec = observed.lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let mut lease = observed.lease.clone();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            acquire_time: None,
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            lease_duration_seconds: Some(1),
            ..spec
        });
        match self.api.replace(&self.name, &self.params, &lease).await {
            Ok(written) => {
                self.observe(written);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// How leading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The token was cancelled (shutdown); the Lease was released if this replica held it.
    Cancelled,
    /// This replica led and lost the Lease (another holder, or no renewal within the deadline).
    Lost,
}

/// Hooks the election calls when leadership starts and stops.
pub trait Follower {
    /// This replica now leads: the server accepted a write naming it.
    fn start_leading(&self);
    /// This replica must stop acting at once.
    fn stop_leading(&self);
}

/// Stands by until this replica holds the Lease, leads while it renews it, and returns when
/// leadership is lost or `token` is cancelled. `follower` hears of every change; on a lost
/// Lease it hears `stop_leading` before this function returns.
pub async fn run<F: Follower>(mut elector: Elector, follower: F, token: CancellationToken) -> End {
    let timing = elector.timing();
    let mut last_holder: Option<String> = None;
    // Stand by.
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Outcome::Leading) => break,
            Ok(Outcome::HeldBy(holder)) => {
                if last_holder.as_deref() != Some(holder.as_str()) {
                    info!(%holder, "the Lease is held by another replica; standing by");
                    last_holder = Some(holder);
                }
            }
            Ok(Outcome::Conflict) => debug!("another replica wrote the Lease first"),
            Err(e) => warn!(error = %e, "cannot read or write the Lease"),
        }
        if cancelled_during(&token, jittered(timing.retry)).await {
            return End::Cancelled;
        }
    }
    info!(identity = %elector.identity(), "acquired leadership");
    follower.start_leading();
    // Lead: the last instant at which a successful renewal was sent bounds how long this
    // replica may act without confirmation.
    let mut confirmed = Instant::now();
    loop {
        if cancelled_during(&token, timing.retry).await {
            follower.stop_leading();
            match elector.release().await {
                Ok(true) => info!("lease released"),
                Ok(false) => info!("the Lease had changed; nothing to release"),
                Err(e) => warn!(error = %e, "could not release the Lease"),
            }
            return End::Cancelled;
        }
        let sent = Instant::now();
        let left = timing
            .renew_deadline
            .saturating_sub(sent.duration_since(confirmed));
        let outcome = tokio::time::timeout(left, elector.try_acquire_or_renew()).await;
        match outcome {
            Ok(Ok(Outcome::Leading)) => {
                confirmed = sent;
                continue;
            }
            Ok(Ok(Outcome::HeldBy(holder))) => {
                follower.stop_leading();
                warn!(%holder, "another replica holds the Lease");
                return End::Lost;
            }
            Ok(Ok(Outcome::Conflict)) => debug!("a renewal raced with another write"),
            Ok(Err(e)) => warn!(error = %e, "cannot renew the Lease"),
            Err(_) => warn!("renewing the Lease took too long"),
        }
        if confirmed.elapsed() >= timing.renew_deadline {
            follower.stop_leading();
            warn!(
                deadline = ?timing.renew_deadline,
                "could not renew the Lease within the deadline"
            );
            return End::Lost;
        }
    }
}

/// Sleeps for `d`; true when `token` was cancelled first.
async fn cancelled_during(token: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = token.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// `d` stretched by up to 20 % at random, so that standbys started together do not read and
/// write in lock-step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

/// The field manager of a replica's Lease writes: one per identity, so that the Lease's
/// `managedFields` name the replica that wrote it (the writes' safety rests on their
/// resourceVersion preconditions, not on field ownership).
pub fn field_manager(identity: &str) -> String {
    format!("{}-lease-{identity}", crate::FIELD_MANAGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.to_string()),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let d = Duration::from_secs(15);
        let cases = [
            (
                None,
                Duration::ZERO,
                Decision::Write { taken: true },
                "no record: take",
            ),
            (
                Some(held("")),
                Duration::ZERO,
                Decision::Write { taken: true },
                "released (empty holder): take at once",
            ),
            (
                Some(held("me")),
                Duration::from_secs(60),
                Decision::Write { taken: false },
                "ours: renew, even when unchanged for long",
            ),
            (
                Some(held("other")),
                Duration::from_secs(14),
                Decision::Wait("other".into()),
                "another holder seen to change within the duration: wait",
            ),
            (
                Some(held("other")),
                d,
                Decision::Write { taken: true },
                "another holder unchanged for the whole duration: take",
            ),
        ];
        for (spec, unchanged_for, want, what) in cases {
            assert_eq!(
                decide(spec.as_ref(), "me", unchanged_for, d),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn timing_follows_client_go() {
        let t = Timing::from_lease_seconds(15);
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry, Duration::from_secs(2));
        assert!(Timing::from_lease_seconds(0).duration >= Duration::from_secs(2));
    }

    #[test]
    fn field_managers_differ_between_identities() {
        assert_ne!(field_manager("a"), field_manager("b"));
    }
}
