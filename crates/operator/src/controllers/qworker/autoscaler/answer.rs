//! What a poll tells the reconciler of its QWorker: whether it has looked at the queue since it
//! started and, for a QWorker without a status, its first status fields, for the reconciler to
//! write with its own in one apply. A new QWorker's status is then written once instead of
//! twice (once by each field manager); the reconciler keeps those fields in its later writes
//! until the autoscaler applies them itself (see `controllers::qworker::status`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a poll waits for the reconciler to take its first fields before it writes them
/// itself.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// A poll's first status fields, handed to the reconciler.
#[derive(Debug)]
pub struct Handover {
    /// The desired count the fields carry.
    pub desired: i32,
    /// The autoscaler's status fields, as it would apply them.
    pub fields: serde_json::Value,
    done: oneshot::Sender<bool>,
}

impl Handover {
    /// Tells the poll whether the fields were written (if not, it writes them itself).
    pub fn landed(self, written: bool) {
        let _ = self.done.send(written);
    }
}

/// What the reconciler learns from [`Slot::answer`].
#[derive(Debug)]
pub enum Answer {
    /// The poll has not looked at the queue yet.
    NotYet,
    /// It has, and wrote what it found itself (or the QWorker already has a status).
    Answered,
    /// It has; these are its first fields, for the reconciler to write.
    HandOver(Handover),
}

/// Shared by a QWorker's poll and its reconciler.
#[derive(Debug, Default)]
pub struct Slot {
    answered: AtomicBool,
    /// The reconciler has asked: someone will take a hand-over.
    asked: AtomicBool,
    handover: Mutex<Option<Handover>>,
}

impl Slot {
    /// The poll has looked at the queue.
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::SeqCst);
    }

    /// For the reconciler: the poll's answer, taking a hand-over if one waits.
    pub fn answer(&self) -> Answer {
        self.asked.store(true, Ordering::SeqCst);
        if let Some(h) = self.lock().take() {
            return Answer::HandOver(h);
        }
        if self.answered.load(Ordering::SeqCst) {
            Answer::Answered
        } else {
            Answer::NotYet
        }
    }

    /// Hands `fields` (carrying `desired`) to the reconciler and waits, up to
    /// [`HANDOVER_WAIT`] for it to take them and then for its write: whether they were written.
    /// `None` when no reconciler has asked (the poll then writes them itself).
    pub async fn hand_over(&self, desired: i32, fields: serde_json::Value) -> Option<bool> {
        if !self.asked.load(Ordering::SeqCst) {
            return None;
        }
        let (done, mut written) = oneshot::channel();
        *self.lock() = Some(Handover {
            desired,
            fields,
            done,
        });
        self.set_answered();
        match tokio::time::timeout(HANDOVER_WAIT, &mut written).await {
            Ok(answer) => Some(answer.unwrap_or(false)),
            // Not taken: withdrawn.
            Err(_) if self.lock().take().is_some() => Some(false),
            // Taken meanwhile: its write is under way.
            Err(_) => Some(written.await.unwrap_or(false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Handover>> {
        self.handover.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn nothing_is_handed_over_before_the_reconciler_asked() {
        let slot = Slot::default();
        assert_eq!(slot.hand_over(1, serde_json::json!({})).await, None);
        assert!(matches!(slot.answer(), Answer::NotYet));
        slot.set_answered();
        assert!(matches!(slot.answer(), Answer::Answered));
    }

    #[tokio::test]
    async fn the_poll_learns_whether_the_reconciler_wrote_its_fields() {
        for written in [true, false] {
            let slot = Arc::new(Slot::default());
            assert!(matches!(slot.answer(), Answer::NotYet));
            let poll = tokio::spawn({
                let slot = slot.clone();
                async move {
                    slot.hand_over(2, serde_json::json!({"desiredReplicas": 2}))
                        .await
                }
            });
            let handover = loop {
                match slot.answer() {
                    Answer::HandOver(h) => break h,
                    _ => tokio::task::yield_now().await,
                }
            };
            assert_eq!(handover.desired, 2);
            assert_eq!(handover.fields["desiredReplicas"], 2);
            handover.landed(written);
            assert_eq!(poll.await.expect("poll"), Some(written));
            assert!(matches!(slot.answer(), Answer::Answered), "taken once");
        }
    }

    #[tokio::test]
    async fn a_hand_over_dropped_by_a_failed_reconcile_is_not_written() {
        let slot = Arc::new(Slot::default());
        slot.answer();
        let poll = tokio::spawn({
            let slot = slot.clone();
            async move { slot.hand_over(0, serde_json::json!({})).await }
        });
        loop {
            if let Answer::HandOver(h) = slot.answer() {
                drop(h);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(poll.await.expect("poll"), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_over_nobody_takes_is_withdrawn() {
        let slot = Slot::default();
        slot.answer();
        assert_eq!(slot.hand_over(0, serde_json::json!({})).await, Some(false));
        assert!(
            matches!(slot.answer(), Answer::Answered),
            "withdrawn, the poll writes itself"
        );
    }
}
