//! One leader at a time: rounds of two and three replicas with `--leader-election`, started at
//! the same instant on one Lease. Every 100 ms each replica's `workerpool_operator_leader`
//! gauge is read; no sample may show two replicas acting. Then the leader is stopped
//! (SIGTERM in even rounds: it releases the Lease; SIGKILL in odd ones: it just vanishes) and a
//! remaining replica must lead within the time the election promises.
//!
//! `WPO_E2E_LEADER_ROUNDS` sets the number of rounds (default 4).

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{Operator, Scenario, http_get};

/// Lease duration of the rounds (seconds): short, so that a crashed leader is replaced fast.
const LEASE_SECONDS: u64 = 4;
/// How often every replica's gauge is read.
const SAMPLE: Duration = Duration::from_millis(100);

/// What one sample of a replica's `/metrics` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Leader,
    Standby,
    /// No answer (not serving yet, or stopped).
    Unknown,
}

async fn sample(port: u16) -> Seen {
    match http_get(port, "/metrics").await {
        Ok((200, body)) => match body
            .lines()
            .find_map(|l| l.strip_prefix("workerpool_operator_leader "))
            .map(str::trim)
        {
            Some("1") => Seen::Leader,
            Some(_) => Seen::Standby,
            None => Seen::Unknown,
        },
        _ => Seen::Unknown,
    }
}

/// Samples every replica still in `live` until `done` holds for a sample or `timeout` passes;
/// fails at the first sample with two leaders. Returns the last sample and the time taken.
async fn watch(
    s: &Scenario,
    what: &str,
    replicas: &[Operator],
    live: &[bool],
    timeout: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> (Vec<Seen>, Duration) {
    let started = Instant::now();
    loop {
        let seen: Vec<Seen> = join_all(replicas.iter().zip(live).map(|(r, &up)| async move {
            if up {
                sample(r.port).await
            } else {
                Seen::Unknown
            }
        }))
        .await;
        let leaders = seen.iter().filter(|v| **v == Seen::Leader).count();
        if leaders > 1 {
            let logs: Vec<String> = replicas.iter().map(|r| r.log_tail(15)).collect();
            s.fail(format!(
                "{what}: {leaders} replicas act at once after {:?}: {seen:?}\n{}",
                started.elapsed(),
                logs.join("\n---\n")
            ));
        }
        if done(&seen) {
            return (seen, started.elapsed());
        }
        if started.elapsed() > timeout {
            s.fail(format!(
                "{what}: not reached within {timeout:?}; last sample {seen:?}"
            ));
        }
        tokio::time::sleep(SAMPLE).await;
    }
}

fn leader_of(seen: &[Seen]) -> Option<usize> {
    seen.iter().position(|v| *v == Seen::Leader)
}

/// The scenario.
pub async fn run(s: Scenario) {
    let s = &s;
    let rounds: usize = std::env::var("WPO_E2E_LEADER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let lease = Duration::from_secs(LEASE_SECONDS);
    // A standby retries every 2/15 of the lease, stretched by up to 20 %.
    let retry = lease * 2 / 15 * 6 / 5;
    let mut first_leads = Vec::new();
    let mut handovers = Vec::new();
    for round in 0..rounds {
        let n = 2 + round % 2;
        let lease_name = format!("leader-e2e-{round}");
        let seconds = LEASE_SECONDS.to_string();
        // Start every replica before waiting for any: as close to the same instant as spawning
        // processes gets.
        let replicas: Vec<Operator> = (0..n)
            .map(|i| {
                let id = format!("r{round}-{i}");
                let args = [
                    "--leader-election",
                    "--lease-namespace",
                    s.ns.as_str(),
                    "--lease-name",
                    lease_name.as_str(),
                    "--lease-duration-seconds",
                    seconds.as_str(),
                    "--pod-name",
                    id.as_str(),
                ];
                Operator::start_with(&s.ns, None, &args, &format!("-leader-{id}"))
                    .unwrap_or_else(|e| s.fail(e))
            })
            .collect();
        let mut live = vec![true; n];
        // A fresh Lease is taken at the first try; allow for the processes' start.
        let (seen, took) = watch(
            s,
            &format!("round {round}: {n} replicas elect"),
            &replicas,
            &live,
            Duration::from_secs(30),
            |seen| leader_of(seen).is_some() && seen.iter().all(|v| *v != Seen::Unknown),
        )
        .await;
        first_leads.push(took);
        let leader = leader_of(&seen).unwrap_or_else(|| s.fail("no leader"));
        // Stay a while: a second taker would show up at its next renewal.
        let steady = Duration::from_secs(2 * LEASE_SECONDS);
        watch(
            s,
            &format!("round {round}: steady"),
            &replicas,
            &live,
            steady + SAMPLE,
            {
                let started = Instant::now();
                move |_| started.elapsed() >= steady
            },
        )
        .await;

        let graceful = round % 2 == 0;
        if graceful {
            replicas[leader].terminate();
        } else {
            replicas[leader].stop();
        }
        let stopped = Instant::now();
        live[leader] = false;
        // SIGTERM releases the Lease: a standby takes it at its next try. SIGKILL leaves it to
        // expire: the standbys count the lease from the last renewal they saw.
        let bound = if graceful {
            lease
        } else {
            lease + 2 * retry + Duration::from_secs(1)
        };
        let (seen, _) = watch(
            s,
            &format!(
                "round {round}: hand-over after the leader's {}",
                if graceful { "SIGTERM" } else { "SIGKILL" }
            ),
            &replicas,
            &live,
            bound,
            |seen| leader_of(seen).is_some(),
        )
        .await;
        let took = stopped.elapsed();
        handovers.push((graceful, took));
        s.note(format!(
            "round {round}: {n} replicas, {} led after {:.1} s; after its {} {} led {:.1} s later",
            leader,
            first_leads[round].as_secs_f64(),
            if graceful { "SIGTERM" } else { "SIGKILL" },
            leader_of(&seen).unwrap_or(usize::MAX),
            took.as_secs_f64()
        ));
        for r in &replicas {
            r.stop();
        }
    }
    let worst = |graceful: bool| {
        handovers
            .iter()
            .filter(|(g, _)| *g == graceful)
            .map(|(_, d)| d.as_secs_f64())
            .fold(0.0, f64::max)
    };
    s.note(format!(
        "{rounds} rounds: never two leaders in any 100 ms sample; worst hand-over {:.1} s after SIGTERM, {:.1} s after SIGKILL (lease {LEASE_SECONDS} s)",
        worst(true),
        worst(false)
    ));
}
