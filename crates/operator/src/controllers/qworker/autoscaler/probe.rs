//! Early polls. A QWorker's poll comes once per interval, so a task pushed just after a poll
//! would wait nearly a whole interval to be seen. Between polls, one probe per ScalerConfig
//! reads the length of every queue it watches, `n` times per poll interval (`--early-polls`),
//! all of them in one broker call (Redis: one script call), and wakes the poll of each QWorker
//! whose queue reached its wake threshold ([`policy::wake_threshold`](super::policy::wake_threshold)):
//! the length at which the next decision adds workers. Only that poll runs early; its interval,
//! its phase and what it writes do not change. The probe counts the tasks waiting in the queue
//! (not those in flight), so it may miss a wake, never add one the rule would not act on.
//!
//! A poll with nothing to do until a task comes (an idle QWorker at its lowest count, see
//! `Poller::idle`) is *parked*: it waits for its probe rather than for its interval, so that
//! an idle QWorker costs a share of one read instead of a poll every interval. Its watch wakes it
//! at the first task and when its queue cannot be read (its poll then reports the error).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// What the probe wakes: a QWorker's poll (through its schedule, see `schedule`), or in tests
/// a [`Notify`].
pub trait Wake: Send + Sync {
    /// Has the poll run now.
    fn wake(&self);
}

impl Wake for Notify {
    fn wake(&self) {
        self.notify_one();
    }
}

/// A QWorker's watch of its queue, shared by its poll and the probe: the poll moves the
/// threshold at each poll without a lock or a lookup ([`Watch::retarget`]); the probe ends the
/// watch when the queue reaches it.
pub struct Watch {
    queue: String,
    /// Time between two reads of this queue (its poll interval / `n`).
    period: Duration,
    threshold: AtomicU64,
    active: AtomicBool,
    /// Whether its poll waits for this watch alone (it is then also woken by a failed read).
    parked: AtomicBool,
}

impl Watch {
    /// Whether this watch reads `queue` every `period` and still runs.
    pub fn is(&self, queue: &str, period: Duration) -> bool {
        self.active.load(Ordering::Acquire)
            && self.period == period.max(MIN_PROBE_PERIOD)
            && self.queue == queue
    }

    /// Wakes the poll once the queue holds `threshold` tasks from now on.
    pub fn retarget(&self, threshold: u64) {
        self.threshold.store(threshold, Ordering::Release);
    }

    /// Marks the poll as parked (waiting for this watch) or not.
    pub fn park(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }

    /// Whether a read `length` (`None`: the queue could not be read) wakes the poll of a running
    /// watch: it reached the threshold, or it failed while the poll is parked.
    fn reached(&self, length: Option<u64>) -> bool {
        self.active.load(Ordering::Acquire)
            && match length {
                Some(l) => l >= self.threshold.load(Ordering::Acquire),
                None => self.parked.load(Ordering::Acquire),
            }
    }
}

/// One watched queue.
struct Watched {
    watch: Arc<Watch>,
    /// When it was first watched with this period.
    since: Instant,
    wake: Arc<dyn Wake>,
}

/// The watched queues of one period, read together: their keys and queries are built once,
/// when the set changes, and shared by every read (a read of a thousand idle queues copies no
/// string).
struct Round {
    period: Duration,
    due: Instant,
    keys: Arc<[String]>,
    queries: Arc<[DepthQuery]>,
    watches: Arc<[Arc<Watch>]>,
}

/// The queues watched through one connection, by QWorker key.
#[derive(Default)]
struct Group {
    watched: HashMap<String, Watched>,
    /// `watched` by period; rebuilt when a queue or a period changes.
    rounds: Vec<Round>,
    changed: bool,
}

impl Group {
    /// Rebuilds the rounds from `watched`, keeping each period's schedule (a new period's first
    /// read is one period after its first queue was watched).
    fn rebuild(&mut self) {
        let mut by_period: Vec<(Duration, Vec<(&String, &Watched)>)> = Vec::new();
        for (key, w) in &self.watched {
            match by_period.iter_mut().find(|(p, _)| *p == w.watch.period) {
                Some((_, members)) => members.push((key, w)),
                None => by_period.push((w.watch.period, vec![(key, w)])),
            }
        }
        let rounds = by_period
            .into_iter()
            .map(|(period, members)| Round {
                period,
                due: self.rounds.iter().find(|r| r.period == period).map_or_else(
                    || {
                        members
                            .iter()
                            .map(|(_, w)| w.since)
                            .min()
                            .unwrap_or_else(Instant::now)
                            + period
                    },
                    |r| r.due,
                ),
                keys: members.iter().map(|(k, _)| (*k).clone()).collect(),
                queries: members
                    .iter()
                    .map(|(_, w)| DepthQuery {
                        queue: w.watch.queue.clone(),
                        workers: Vec::new(),
                    })
                    .collect(),
                watches: members.iter().map(|(_, w)| w.watch.clone()).collect(),
            })
            .collect();
        self.rounds = rounds;
        self.changed = false;
    }
}

/// The QWorker keys of one read, the queries to send and the watches, in the same order.
type Due = (Arc<[String]>, Arc<[DepthQuery]>, Arc<[Arc<Watch>]>);

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
    /// once the queue holds `threshold` tasks; `None` stops watching it. Returns the watch (its
    /// threshold then moves with [`Watch::retarget`] while [`Watch::is`] holds) and `true` when
    /// the connection had no probe: the caller starts one ([`Probes::run`]).
    pub fn set(
        &self,
        connection: &Connection,
        qworker: &str,
        queue: &str,
        watch: Option<(u64, Duration)>,
        wake: Arc<dyn Wake>,
    ) -> (Option<Arc<Watch>>, bool) {
        let Some((threshold, period)) = watch else {
            self.remove(connection, qworker);
            return (None, false);
        };
        let mut groups = self.lock();
        let started = !groups.contains_key(connection);
        let group = groups.entry(connection.clone()).or_default();
        let period = period.max(MIN_PROBE_PERIOD);
        if let Some(w) = group.watched.get(qworker)
            && w.watch.is(queue, period)
        {
            w.watch.retarget(threshold);
            return (Some(w.watch.clone()), started);
        }
        let watch = Arc::new(Watch {
            queue: queue.to_string(),
            period,
            threshold: threshold.into(),
            active: true.into(),
            parked: false.into(),
        });
        if let Some(old) = group.watched.insert(
            qworker.to_string(),
            Watched {
                watch: watch.clone(),
                since: Instant::now(),
                wake,
            },
        ) {
            old.watch.active.store(false, Ordering::Release);
        }
        group.changed = true;
        (Some(watch), started)
    }

    /// Stops watching the queue of QWorker `qworker` through `connection`.
    pub fn remove(&self, connection: &Connection, qworker: &str) {
        if let Some(group) = self.lock().get_mut(connection)
            && let Some(old) = group.watched.remove(qworker)
        {
            old.watch.active.store(false, Ordering::Release);
            group.changed = true;
        }
    }

    /// Number of watched queues (all connections).
    pub fn watched(&self) -> usize {
        self.lock().values().map(|g| g.watched.len()).sum()
    }

    /// The reads due at `now` through `connection` (their next one is scheduled), or `None`
    /// when it watches nothing any more (its probe is then forgotten and ends).
    fn due(&self, connection: &Connection, now: Instant) -> Option<Vec<Due>> {
        let mut groups = self.lock();
        let group = groups.get_mut(connection)?;
        if group.watched.is_empty() {
            groups.remove(connection);
            return None;
        }
        if group.changed {
            group.rebuild();
        }
        Some(
            group
                .rounds
                .iter_mut()
                .filter(|r| r.due <= now)
                .map(|r| {
                    // On the round's own schedule, not the probe's ticks (unless far behind).
                    r.due += r.period;
                    if r.due <= now {
                        r.due = now + r.period;
                    }
                    (r.keys.clone(), r.queries.clone(), r.watches.clone())
                })
                .collect(),
        )
    }

    /// Wakes the polls whose queue reached its threshold (each once: its poll sets the next
    /// threshold). A QWorker whose queue changed meanwhile may be woken once for nothing: its
    /// poll is a normal poll. Takes the lock only for the queues that reached it.
    fn wake(&self, connection: &Connection, due: &Due, lengths: &[Option<u64>]) {
        let (keys, _, watches) = due;
        for ((key, watch), &length) in keys.iter().zip(watches.iter()).zip(lengths) {
            if !watch.reached(length) {
                continue;
            }
            let mut groups = self.lock();
            let Some(group) = groups.get_mut(connection) else {
                return;
            };
            if group
                .watched
                .get(key)
                .is_some_and(|w| Arc::ptr_eq(&w.watch, watch))
                && let Some(w) = group.watched.remove(key)
            {
                w.watch.active.store(false, Ordering::Release);
                group.changed = true;
                w.wake.wake();
            }
        }
    }

    /// The probe of `connection`: reads the due queues through what `read` gives (the
    /// connection's lengths, or `None` while it cannot be used), wakes the polls, and ends when
    /// nothing is watched any more. `may_act` tells whether this replica may act now.
    pub async fn run<R, F>(self, connection: Connection, may_act: impl Fn() -> bool, read: R)
    where
        R: Fn(Arc<[DepthQuery]>) -> F,
        F: std::future::Future<Output = Option<Vec<Option<u64>>>>,
    {
        loop {
            tokio::time::sleep(MIN_PROBE_PERIOD).await;
            let Some(due) = self.due(&connection, Instant::now()) else {
                return;
            };
            if due.is_empty() || !may_act() {
                continue;
            }
            for round in due {
                // A queue that could not be read wakes a parked poll, which reports the error;
                // the others find it at their next poll.
                let lengths = read(round.1.clone())
                    .await
                    .unwrap_or_else(|| vec![None; round.1.len()]);
                self.wake(&connection, &round, &lengths);
            }
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
            probes.set(&conn(), "ns/a", "qa", period, a.clone()).1,
            "first: start"
        );
        let (_, started) = probes.set(
            &conn(),
            "ns/b",
            "qb",
            Some((1, Duration::from_millis(250))),
            b.clone(),
        );
        assert!(!started, "the connection's probe runs");
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
    async fn a_retargeted_watch_wakes_at_its_new_threshold_and_ends_when_it_does() {
        let probes = Probes::default();
        let wake = Arc::new(Notify::new());
        let period = Duration::from_millis(250);
        let (watch, _) = probes.set(&conn(), "ns/a", "qa", Some((2, period)), wake.clone());
        let watch = watch.expect("watched");
        assert!(watch.is("qa", period));
        assert!(!watch.is("qb", period), "another queue");
        assert!(!watch.is("qa", period * 2), "another period");
        watch.retarget(5);
        let length = Arc::new(std::sync::atomic::AtomicU64::new(3));
        let task = {
            let length = length.clone();
            tokio::spawn(probes.clone().run(
                conn(),
                || true,
                move |queries| {
                    let n = length.load(Ordering::SeqCst);
                    async move { Some(vec![Some(n); queries.len()]) }
                },
            ))
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            wake.notified().now_or_never().is_none(),
            "3 is below the new threshold 5"
        );
        length.store(5, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_millis(300), wake.notified())
            .await
            .expect("woken at 5");
        assert!(
            !watch.is("qa", period),
            "a watch that woke its poll has ended"
        );
        task.abort();
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
            wake.clone(),
        );
        probes.set(
            &conn(),
            "ns/slow",
            "slow",
            Some((100, Duration::from_secs(5))),
            wake.clone(),
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
                    for q in queries.iter() {
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
