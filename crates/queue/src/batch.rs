//! [`batched`]: a [`QueueBroker`] that gathers the depth reads made at about the same time into
//! one [`QueueBroker::depths`] call, so that a thousand queues polled on the same tick cost one
//! round trip (Redis: one pipeline) instead of a thousand.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::{BrokerKind, DepthQuery, HoldersPage, QueueBroker, QueueError};

/// How long the first read of a batch waits for others to join it.
pub const GATHER: Duration = Duration::from_millis(1);

/// Most queries sent in one call; more wait for the next one.
pub const MAX_BATCH: usize = 1000;

type Waiting = Vec<(DepthQuery, oneshot::Sender<Result<u64, QueueError>>)>;

#[derive(Default)]
struct Pending {
    waiting: Waiting,
    /// Whether a flush task runs (it takes everything that waits, again and again, until
    /// nothing does).
    flushing: bool,
}

struct State {
    inner: Arc<dyn QueueBroker>,
    pending: Mutex<Pending>,
}

struct Batched {
    kind: BrokerKind,
    state: Arc<State>,
}

/// Wraps `inner` so that concurrent [`QueueBroker::depth`] calls are read together: the first
/// waits [`GATHER`] for others, then one [`QueueBroker::depths`] call answers all of them; calls
/// made while it runs go in the next one. Other calls go straight to `inner`, a broker of kind
/// `kind`.
pub fn batched(inner: Arc<dyn QueueBroker>, kind: BrokerKind) -> Arc<dyn QueueBroker> {
    Arc::new(Batched {
        kind,
        state: Arc::new(State {
            inner,
            pending: Mutex::default(),
        }),
    })
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends what waits, in calls of at most [`MAX_BATCH`], until nothing does.
    async fn flush(self: Arc<Self>) {
        /// Should the flush end early (a panic in the broker's code), the next read starts
        /// another one instead of waiting for a flush that never comes.
        struct Reset<'a>(&'a State);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.lock().flushing = false;
                }
            }
        }
        let _reset = Reset(&self);
        tokio::time::sleep(GATHER).await;
        loop {
            let batch: Waiting = {
                let mut pending = self.lock();
                if pending.waiting.is_empty() {
                    // Under the same lock as the check, so that a read added after it starts
                    // a flush of its own.
                    pending.flushing = false;
                    return;
                }
                let n = pending.waiting.len().min(MAX_BATCH);
                pending.waiting.drain(..n).collect()
            };
            let (queries, replies): (Vec<DepthQuery>, Vec<_>) = batch.into_iter().unzip();
            let results = self.inner.depths(&queries).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have gone (its poll was stopped): nothing to tell.
                let _ = reply.send(result);
            }
        }
    }
}

#[async_trait]
impl QueueBroker for Batched {
    async fn depth(&self, queue: &str, workers: &[String]) -> Result<u64, QueueError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut pending = self.state.lock();
            pending.waiting.push((
                DepthQuery {
                    queue: queue.to_string(),
                    workers: workers.to_vec(),
                },
                tx,
            ));
            !std::mem::replace(&mut pending.flushing, true)
        };
        if start {
            tokio::spawn(self.state.clone().flush());
        }
        rx.await.unwrap_or_else(|_| {
            Err(QueueError::protocol(
                self.kind,
                "the batched depth read was dropped",
            ))
        })
    }

    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        self.state.inner.depths(queries).await
    }

    async fn recover(&self, queue: &str, worker: &str) -> Result<u64, QueueError> {
        self.state.inner.recover(queue, worker).await
    }

    async fn holders_page(
        &self,
        queues: &BTreeSet<String>,
        cursor: u64,
        budget: u32,
    ) -> Result<HoldersPage, QueueError> {
        self.state.inner.holders_page(queues, cursor, budget).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.state.inner.ping().await
    }
}
