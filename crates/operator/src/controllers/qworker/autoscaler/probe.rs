//! Early polls. A QWorker's poll comes once per interval, so a task pushed just after a poll
//! would wait nearly a whole interval to be seen. Between polls, one probe per ScalerConfig
//! reads the length of every queue it watches, `n` times per poll interval (`--early-polls`),
//! all of them in one broker call (Redis: one pipeline), and wakes the poll of each QWorker
//! whose queue reached its wake threshold ([`policy::wake_threshold`](super::policy::wake_threshold)):
//! the length at which the next decision adds workers. Only that poll runs early; its interval,
//! its phase and what it writes do not change. The probe counts the tasks waiting in the queue
//! (not those in flight), so it may miss a wake, never add one the rule would not act on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use workerpool_queue::DepthQuery;

/// The shortest time between two reads of the probes (a poll interval of 1 s read 4 times per
/// interval is read every 250 ms).
pub const MIN_PROBE_PERIOD: Duration = Duration::from_millis(100);

/// The ScalerConfig (`namespace/name`) whose connection a probe reads through.
pub type Connection = (String, String);

/// One watched queue.
struct Watched {
    queue: String,
    threshold: u64,
    /// Time between two reads of this queue (its poll interval / `n`).
    period: Duration,
    due: Instant,
    wake: Arc<Notify>,
}

/// The queues watched through one connection, by QWorker key.
#[derive(Default)]
struct Group {
    watched: HashMap<String, Watched>,
}

/// The probes of every connection; cloning shares them.
#[derive(Clone, Default)]
pub struct Probes {
    groups: Arc<Mutex<HashMap<Connection, Group>>>,
}

impl Probes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Connection, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `queue` of QWorker `qworker` through `connection` every `period`, to wake `wake`
    /// once the queue holds `threshold` tasks; `None` stops watching it. Returns `true` when
    /// the connection had no probe: the caller starts one ([`Probes::run`]).
    pub fn set(
        &self,
        connection: &Connection,
        qworker: &str,
        queue: &str,
        watch: Option<(u64, Duration)>,
        wake: &Arc<Notify>,
    ) -> bool {
        let Some((threshold, period)) = watch else {
            self.remove(connection, qworker);
            return false;
        };
        let mut groups = self.lock();
        let started = !groups.contains_key(connection);
        let group = groups.entry(connection.clone()).or_default();
        let period = period.max(MIN_PROBE_PERIOD);
        match group.watched.get_mut(qworker) {
            Some(w) if w.queue == queue => {
                w.threshold = threshold;
                w.period = period;
            }
            _ => {
                group.watched.insert(
                    qworker.to_string(),
                    Watched {
                        queue: queue.to_string(),
                        threshold,
                        period,
                        due: Instant::now() + period,
                        wake: wake.clone(),
                    },
                );
            }
        }
        started
    }

    /// Stops watching the queue of QWorker `qworker` through `connection`.
    pub fn remove(&self, connection: &Connection, qworker: &str) {
        if let Some(group) = self.lock().get_mut(connection) {
            group.watched.remove(qworker);
        }
    }

    /// Number of watched queues (all connections).
    pub fn watched(&self) -> usize {
        self.lock().values().map(|g| g.watched.len()).sum()
    }

    /// The QWorkers and queries due at `now` through `connection` (their next read is
    /// scheduled), or `None` when it watches nothing any more (its probe is then forgotten and
    /// ends).
    fn due(&self, connection: &Connection, now: Instant) -> Option<(Vec<String>, Vec<DepthQuery>)> {
        let mut groups = self.lock();
        let group = groups.get_mut(connection)?;
        if group.watched.is_empty() {
            groups.remove(connection);
            return None;
        }
        Some(
            group
                .watched
                .iter_mut()
                .filter(|(_, w)| w.due <= now)
                .map(|(key, w)| {
                    // On the queue's own schedule, not the probe's ticks (unless far behind).
                    w.due += w.period;
                    if w.due <= now {
                        w.due = now + w.period;
                    }
                    (
                        key.clone(),
                        DepthQuery {
                            queue: w.queue.clone(),
                            workers: Vec::new(),
                        },
                    )
                })
                .unzip(),
        )
    }

    /// Wakes the polls whose queue reached its threshold (each once: its poll sets the next
    /// threshold). A QWorker whose queue changed meanwhile may be woken once for nothing: its
    /// poll is a normal poll.
    fn wake(&self, connection: &Connection, keys: &[String], lengths: &[u64]) {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(connection) else {
            return;
        };
        for (key, &length) in keys.iter().zip(lengths) {
            if group
                .watched
                .get(key)
                .is_some_and(|w| length >= w.threshold)
                && let Some(w) = group.watched.remove(key)
            {
                w.wake.notify_one();
            }
        }
    }

    /// The probe of `connection`: reads the due queues through what `read` gives (the
    /// connection's lengths, or `None` while it cannot be used), wakes the polls, and ends when
    /// nothing is watched any more. `may_act` tells whether this replica may act now.
    pub async fn run<R, F>(self, connection: Connection, may_act: impl Fn() -> bool, read: R)
    where
        R: Fn(Vec<DepthQuery>) -> F,
        F: std::future::Future<Output = Option<Vec<Option<u64>>>>,
    {
        loop {
            tokio::time::sleep(MIN_PROBE_PERIOD).await;
            let Some((keys, queries)) = self.due(&connection, Instant::now()) else {
                return;
            };
            if keys.is_empty() || !may_act() {
                continue;
            }
            let Some(lengths) = read(queries).await else {
                continue;
            };
            // A queue that could not be read counts as empty: its poll reports the error.
            let lengths: Vec<u64> = lengths.into_iter().map(|l| l.unwrap_or(0)).collect();
            self.wake(&connection, &keys, &lengths);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn conn() -> Connection {
        ("ns".into(), "redis".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_reaches_its_threshold_wakes_its_poll_once() {
        let probes = Probes::default();
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let period = Some((3, Duration::from_millis(250)));
        assert!(
            probes.set(&conn(), "ns/a", "qa", period, &a),
            "first: start"
        );
        assert!(!probes.set(
            &conn(),
            "ns/b",
            "qb",
            Some((1, Duration::from_millis(250))),
            &b
        ));
        let lengths: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let (lengths, reads) = (lengths.clone(), reads.clone());
            tokio::spawn(probes.clone().run(
                conn(),
                || true,
                move |queries| {
                    reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let lengths = lengths.lock().expect("lock").clone();
                    async move {
                        Some(
                            queries
                                .iter()
                                .map(|q| lengths.get(&q.queue).copied())
                                .collect(),
                        )
                    }
                },
            ))
        };
        lengths.lock().expect("lock").insert("qa".into(), 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            reads.load(std::sync::atomic::Ordering::SeqCst) >= 3,
            "read every period"
        );
        assert_eq!(probes.watched(), 2, "below its threshold, nothing wakes");
        lengths.lock().expect("lock").insert("qa".into(), 3);
        tokio::time::timeout(Duration::from_millis(300), a.notified())
            .await
            .expect("a reached 3 and is woken within a period");
        assert_eq!(
            probes.watched(),
            1,
            "woken once; its poll sets the next threshold"
        );
        probes.remove(&conn(), "ns/b");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the probe ends when it watches nothing")
            .expect("probe");
        assert!(b.notified().now_or_never().is_none(), "b never reached 1");
    }

    #[tokio::test(start_paused = true)]
    async fn queues_are_read_at_their_own_period_and_not_while_the_replica_may_not_act() {
        let probes = Probes::default();
        let wake = Arc::new(Notify::new());
        probes.set(
            &conn(),
            "ns/fast",
            "fast",
            Some((100, Duration::from_millis(250))),
            &wake,
        );
        probes.set(
            &conn(),
            "ns/slow",
            "slow",
            Some((100, Duration::from_secs(5))),
            &wake,
        );
        let reads: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let acting = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task = {
            let (reads, acting) = (reads.clone(), acting.clone());
            tokio::spawn(probes.clone().run(
                conn(),
                move || acting.load(std::sync::atomic::Ordering::SeqCst),
                move |queries| {
                    let mut r = reads.lock().expect("lock");
                    for q in &queries {
                        *r.entry(q.queue.clone()).or_default() += 1;
                    }
                    async move { Some(vec![Some(0); queries.len()]) }
                },
            ))
        };
        tokio::time::sleep(Duration::from_millis(10_050)).await;
        let (fast, slow) = {
            let r = reads.lock().expect("lock");
            (r["fast"], r["slow"])
        };
        assert!((38..=41).contains(&fast), "4 reads a second: {fast}");
        assert_eq!(slow, 2, "every 5 s");
        acting.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            reads.lock().expect("lock")["fast"],
            fast,
            "a standby reads nothing"
        );
        task.abort();
    }
}
