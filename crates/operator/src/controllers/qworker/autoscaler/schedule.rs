//! When polls run: one task and one timer per ScalerConfig connection, not one per QWorker.
//!
//! A QWorker's poll state (its [`Poller`]) is a *member* of the schedule of the connection its
//! queue is read through. The schedule keeps its members' next polls in one ordered set; a
//! member's polls fall on its interval's phase ticks ([`super::next_tick`]), so the members of
//! one interval and phase are due at the same instant, and one timer firing starts all of their
//! polls, whose queue reads then share one broker call. Polls run concurrently inside the
//! schedule's task (a slow status write holds no other poll), and a member whose poll runs is
//! out of the set until it ends. The early-poll probe and a spec change wake one member through
//! the schedule's channel ([`Waker`]); a member woken while it polls polls again as soon as it
//! ends. At rest a schedule is one sleeping task, whatever the number of its members.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::probe::{Connection, Wake};
use super::{Inner, Poller};

/// A member of a schedule: one QWorker's poll, for as long as its QWorker uses the connection.
pub(super) type MemberId = u64;

/// What a poll tells its schedule when it ends.
pub(super) enum Next {
    /// The QWorker is gone (or was replaced): the member leaves.
    Stop,
    /// Poll again at this instant.
    At(Instant),
}

/// A message to a schedule.
pub(super) enum Msg {
    /// A new member, whose first poll starts at once.
    Insert(MemberId, Box<Poller>),
    /// Poll this member now (the probe saw its queue reach its threshold, or its spec changed).
    Wake(MemberId),
    /// The member's QWorker is deleted: it leaves (after its running poll, if any).
    Remove(MemberId),
    /// The member's QWorker now reads through another connection: it moves to that schedule
    /// with its state (after its running poll, if any).
    Move(MemberId, Connection),
}

/// Wakes one member of a schedule (held by the probe's watch of its queue).
pub(super) struct Waker {
    tx: mpsc::UnboundedSender<Msg>,
    id: MemberId,
}

impl Wake for Waker {
    fn wake(&self) {
        // A schedule that ended has no member to wake.
        let _ = self.tx.send(Msg::Wake(self.id));
    }
}

/// The schedules by connection; what [`Inner`] uses to reach them.
#[derive(Default)]
pub(super) struct Schedules {
    senders: std::sync::Mutex<HashMap<Connection, mpsc::UnboundedSender<Msg>>>,
}

impl Schedules {
    /// Sends `msg` to the schedule of `connection`, starting one when there is none (or it
    /// ended). Messages are sent under the lock, so that a schedule that ends finds every one
    /// sent to it before.
    pub(super) fn send(&self, inner: &Arc<Inner>, connection: &Connection, msg: Msg) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let msg = match senders.get(connection) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        if matches!(msg, Msg::Wake(_) | Msg::Remove(_)) {
            // For a member of a schedule that ended: it has none.
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(msg);
        senders.insert(connection.clone(), tx.clone());
        debug!(namespace = %connection.0, scaler_config = %connection.1, "autoscaler schedule starts");
        tokio::spawn(
            Schedule {
                inner: inner.clone(),
                connection: connection.clone(),
                tx,
                rx,
                members: HashMap::new(),
                dues: BTreeSet::new(),
                polls: FuturesUnordered::new(),
            }
            .run(),
        );
    }

    /// Number of running schedules.
    pub(super) fn len(&self) -> usize {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.values().filter(|tx| !tx.is_closed()).count()
    }

    /// Forgets the schedule of `connection` if it has no message waiting (it then ends); false
    /// when it must go on.
    fn retire(&self, connection: &Connection, rx: &mut mpsc::UnboundedReceiver<Msg>) -> bool {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        rx.close();
        if senders.get(connection).is_some_and(|tx| tx.is_closed()) {
            senders.remove(connection);
        }
        true
    }
}

/// Bytes a resting member takes in its schedule besides its poller: its [`Member`], its key
/// in the members' table and its entry in the set of due polls.
#[cfg(test)]
pub(super) const MEMBER_SIZE: usize = std::mem::size_of::<Member>()
    + std::mem::size_of::<MemberId>()
    + std::mem::size_of::<(Instant, MemberId)>();

/// One member's place in its schedule.
enum Member {
    /// Waiting for its next poll, due at this instant (its entry in `dues`).
    Resting(Box<Poller>, Instant),
    /// Its poll runs (the poller is in it); what comes when it ends.
    Polling(Then),
}

/// What a member does when its running poll ends (the last message received decides).
enum Then {
    /// Waits for its next poll.
    Rest,
    /// Polls again at once: it was woken meanwhile.
    PollAgain,
    /// Leaves: its QWorker was deleted.
    Leave,
    /// Moves to this connection's schedule.
    Move(Connection),
}

type Poll = Pin<Box<dyn Future<Output = (MemberId, Box<Poller>, Next)> + Send>>;

/// The schedule of one connection (see the module documentation).
struct Schedule {
    inner: Arc<Inner>,
    connection: Connection,
    /// Its own sender, for its members' [`Waker`]s.
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    members: HashMap<MemberId, Member>,
    /// The members' next polls, earliest first.
    dues: BTreeSet<(Instant, MemberId)>,
    /// The polls that run.
    polls: FuturesUnordered<Poll>,
}

impl Schedule {
    async fn run(mut self) {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            let next = self.dues.first().map(|(at, _)| *at);
            if let Some(at) = next
                && sleep.deadline() != at
            {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                Some((id, poller, next)) = self.polls.next(), if !self.polls.is_empty() => {
                    self.ended(id, poller, next);
                }
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => return,
                },
                () = &mut sleep, if next.is_some() => self.start_due(Instant::now()),
            }
            if self.members.is_empty()
                && self.polls.is_empty()
                && self.inner.schedules.retire(&self.connection, &mut self.rx)
            {
                debug!(namespace = %self.connection.0, scaler_config = %self.connection.1, "autoscaler schedule ends: no QWorker left");
                return;
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Insert(id, mut poller) => {
                poller.set_wake(Arc::new(Waker {
                    tx: self.tx.clone(),
                    id,
                }));
                self.poll(id, poller);
            }
            Msg::Wake(id) => match self.members.get_mut(&id) {
                Some(Member::Polling(then @ Then::Rest)) => *then = Then::PollAgain,
                Some(Member::Resting(..)) => {
                    if let Some(poller) = self.take(id) {
                        self.poll(id, poller);
                    }
                }
                _ => {}
            },
            Msg::Remove(id) => match self.members.get_mut(&id) {
                Some(Member::Polling(then)) => *then = Then::Leave,
                Some(Member::Resting(..)) => drop(self.take(id)),
                None => {}
            },
            Msg::Move(id, to) => match self.members.get_mut(&id) {
                Some(Member::Polling(then)) => *then = Then::Move(to),
                Some(Member::Resting(..)) => {
                    if let Some(poller) = self.take(id) {
                        self.inner
                            .schedules
                            .send(&self.inner, &to, Msg::Insert(id, poller));
                    }
                }
                None => {}
            },
        }
    }

    /// Takes resting member `id` out of the schedule, with its poller.
    fn take(&mut self, id: MemberId) -> Option<Box<Poller>> {
        match self.members.remove(&id)? {
            Member::Resting(poller, at) => {
                self.dues.remove(&(at, id));
                Some(poller)
            }
            polling @ Member::Polling(_) => {
                self.members.insert(id, polling);
                None
            }
        }
    }

    /// Starts a poll of member `id` with its `poller`.
    fn poll(&mut self, id: MemberId, poller: Box<Poller>) {
        self.members.insert(id, Member::Polling(Then::Rest));
        self.polls.push(Box::pin(async move {
            let (poller, next) = poller.turn().await;
            (id, poller, next)
        }));
    }

    /// Starts every poll due at `now`.
    fn start_due(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.dues.first()
            && at <= now
        {
            match self.take(id) {
                Some(poller) => self.poll(id, poller),
                None => {
                    self.dues.pop_first();
                }
            }
        }
    }

    /// The poll of member `id` ended: the member waits for its next one, polls again at once
    /// (woken meanwhile), moves, or leaves.
    fn ended(&mut self, id: MemberId, poller: Box<Poller>, next: Next) {
        let Some(Member::Polling(then)) = self.members.remove(&id) else {
            return;
        };
        match (then, next) {
            (Then::Leave, _) => {}
            (Then::Move(to), _) => {
                self.inner
                    .schedules
                    .send(&self.inner, &to, Msg::Insert(id, poller));
            }
            (_, Next::Stop) => self.inner.stopped(id, poller.key()),
            (Then::PollAgain, Next::At(_)) => self.poll(id, poller),
            (Then::Rest, Next::At(at)) => {
                self.dues.insert((at, id));
                self.members.insert(id, Member::Resting(poller, at));
            }
        }
    }
}
