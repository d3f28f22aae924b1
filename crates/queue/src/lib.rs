//! Broker adapters for workerpool-operator, behind two small traits.
//!
//! * [`QueueBroker`] is the operator's side: queue depth (waiting plus in flight), recovery of the
//!   work held by a worker pod that is gone, and a health check. Get one with [`connect`].
//! * [`TaskSource`] is the worker's side: take one task reliably, then acknowledge or requeue it.
//!   Get one with [`task_source`].
//!
//! Supported brokers and how a task is taken reliably (design section 4):
//!
//! | broker | queue is | take | ack | requeue | operator recovery |
//! |---|---|---|---|---|---|
//! | Redis | a list; producers `LPUSH` | `BLMOVE queue RIGHT -> processing LEFT` | `LREM processing 1 task` | back to the queue's right end (taken next) | [`QueueBroker::recover`] moves the processing list back |
//! | RabbitMQ | an AMQP queue | consumer, prefetch 1, manual ack | `basic.ack` | `basic.nack requeue=true` | by the broker when the channel closes |
//! | NATS | a durable pull consumer of [`NatsConfig::stream`] | fetch 1, explicit ack | double ack | NAK | by the server after the consumer's `ack_wait` |
//!
//! The Redis processing list of worker `w` for queue `q` is [`processing_list`]`(q, w)`, i.e.
//! `q:processing:w`.
//!
//! Every broker call is bounded by a timeout ([`CALL_TIMEOUT`], [`CONNECT_TIMEOUT`]) so that a
//! dead broker never hangs a poll, and each [`connect`] holds one reconnecting connection that is
//! reused for every call.

mod batch;
mod config;
mod error;
mod management;
mod nats;
pub mod protocol;
mod rabbitmq;
mod redis_impl;

use std::collections::BTreeSet;
use std::sync::{Arc, Once};
use std::time::Duration;

use async_trait::async_trait;

pub use batch::batched;
pub use config::{BrokerConfig, NatsConfig, RabbitMqConfig, RedisConfig, amqp_url};
pub use error::{BrokerKind, QueueError};
pub use nats::{ensure_nats_queue, nats_subject};
pub use rabbitmq::in_flight_queue;

/// Time limit of one broker call (a command, a request, an acknowledgement).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How many queues the default [`QueueBroker::depths`] reads at a time.
pub const DEPTHS_CONCURRENCY: usize = 16;

/// Time limit of establishing a connection (TCP, TLS, authentication).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Operator side: read a queue's depth and recover the work of workers that are gone.
///
/// Object-safe; one value holds one pooled, reconnecting connection.
#[async_trait]
pub trait QueueBroker: Send + Sync {
    /// Tasks waiting plus tasks in flight for `queue`.
    ///
    /// `workers` are the names of the live worker pods: on Redis their processing lists are
    /// counted as in flight. NATS counts unacknowledged messages itself; RabbitMQ through its
    /// management API, else as the workers marked busy on [`in_flight_queue`] (idle workers
    /// count nothing).
    async fn depth(&self, queue: &str, workers: &[String]) -> Result<u64, QueueError>;

    /// The depths of several queues, one result per query in the same order, read together
    /// where the broker allows it (Redis: one pipeline for all of them). The default reads them
    /// one by one, [`DEPTHS_CONCURRENCY`] at a time. An error of one queue is that query's
    /// result only.
    ///
    /// RabbitMQ lists the vhost's queues once through the management API, else pipelines the
    /// passive declares on a few channels; NATS lists the stream's consumers once.
    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        one_by_one(self, queries.iter()).await
    }

    /// Returns every task held by worker `worker` (a pod that is gone) to `queue`, so that it is
    /// taken next. Returns the number of tasks moved.
    ///
    /// No-op (`Ok(0)`) for RabbitMQ and NATS, which redeliver unacknowledged messages by
    /// themselves.
    async fn recover(&self, queue: &str, worker: &str) -> Result<u64, QueueError>;

    /// One step of a sweep over the in-flight lists of `queues` (Redis: the non-empty
    /// processing lists `{queue}:processing:{worker}`), so that the operator can return the
    /// tasks of workers that no longer exist. The step starts at `cursor` (0 starts a sweep) and
    /// does at most `budget` bounded calls to the broker (Redis: `SCAN … COUNT` [`SCAN_COUNT`]);
    /// the page's `cursor` continues the sweep, 0 when it is complete. A list may be reported
    /// twice in one sweep. Empty and complete for RabbitMQ and NATS, which track delivery
    /// themselves.
    async fn holders_page(
        &self,
        queues: &BTreeSet<String>,
        cursor: u64,
        budget: u32,
    ) -> Result<HoldersPage, QueueError> {
        let _ = (queues, cursor, budget);
        Ok(HoldersPage::default())
    }

    /// Cheap health check (one round trip).
    async fn ping(&self) -> Result<(), QueueError>;
}

/// [`QueueBroker::depth`] of each query, [`DEPTHS_CONCURRENCY`] at a time, in order.
pub(crate) async fn one_by_one<'a, B: QueueBroker + ?Sized>(
    broker: &B,
    queries: impl IntoIterator<Item = &'a DepthQuery>,
) -> Vec<Result<u64, QueueError>> {
    use futures::StreamExt;
    let mut reads = Vec::new();
    for q in queries {
        reads.push(broker.depth(&q.queue, &q.workers));
    }
    futures::stream::iter(reads)
        .buffered(DEPTHS_CONCURRENCY)
        .collect()
        .await
}

/// One queue whose depth [`QueueBroker::depths`] reads: the queue and the live workers whose
/// in-flight tasks count (as for [`QueueBroker::depth`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DepthQuery {
    /// The queue.
    pub queue: String,
    /// Names of the live worker pods.
    pub workers: Vec<String>,
}

/// How many keys one `SCAN` call of [`QueueBroker::holders_page`] asks Redis to look at.
pub const SCAN_COUNT: u32 = 1000;

/// One worker's non-empty in-flight list, found by [`QueueBroker::holders_page`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    /// The queue the tasks came from.
    pub queue: String,
    /// The worker (pod) name.
    pub worker: String,
}

/// One step of a sweep ([`QueueBroker::holders_page`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldersPage {
    /// The lists found in this step.
    pub holders: Vec<Holder>,
    /// Where the next step starts; 0 when the sweep is complete.
    pub cursor: u64,
}

/// Connects to the broker. The returned value keeps one reconnecting connection for all calls.
pub async fn connect(cfg: &BrokerConfig) -> Result<Arc<dyn QueueBroker>, QueueError> {
    Ok(match cfg {
        BrokerConfig::Redis(c) => Arc::new(redis_impl::RedisBroker::connect(c).await?),
        BrokerConfig::RabbitMq(c) => Arc::new(rabbitmq::RabbitBroker::connect(c).await?),
        BrokerConfig::Nats(c) => Arc::new(nats::NatsBroker::connect(c).await?),
    })
}

/// The Redis list that holds the tasks worker `worker` has taken from `queue` and not yet
/// acknowledged: `{queue}:processing:{worker}`.
pub fn processing_list(queue: &str, worker: &str) -> String {
    format!("{queue}{PROCESSING_INFIX}{worker}")
}

/// What separates the queue from the worker in a [`processing_list`] name.
pub const PROCESSING_INFIX: &str = ":processing:";

/// One task taken from a queue. It stays owned by the worker that took it until
/// [`TaskSource::ack`] or [`TaskSource::requeue`].
pub struct Task {
    /// The task's bytes, as the producer sent them.
    pub payload: Vec<u8>,
    handle: Handle,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What a broker needs to acknowledge or requeue a task.
enum Handle {
    /// The element as it sits in the processing list (the payload field may be changed by the user).
    Redis { raw: Vec<u8> },
    /// The delivery's acknowledger, bound to the channel it came on.
    RabbitMq(lapin::Acker),
    /// The message's acknowledger.
    Nats(Box<async_nats::jetstream::message::Acker>),
}

/// Worker side: take tasks one at a time, reliably.
#[async_trait]
pub trait TaskSource: Send {
    /// Waits up to `wait` for one task, taken reliably: it stays owned by this worker until
    /// [`ack`](Self::ack) or [`requeue`](Self::requeue). `Ok(None)` when none came in time.
    async fn take(&mut self, wait: Duration) -> Result<Option<Task>, QueueError>;

    /// Acknowledges a task: it is done and leaves the queue for good.
    async fn ack(&mut self, task: Task) -> Result<(), QueueError>;

    /// Gives the task back for another worker (on shutdown when a handler cannot finish, or on
    /// a handler error). It is taken next.
    async fn requeue(&mut self, task: Task) -> Result<(), QueueError>;

    /// How often a task in hand must be reported as still in progress, for brokers that
    /// redeliver a task not acknowledged in time (NATS JetStream's `ack_wait`): a third of that
    /// time. `None` where the broker waits for ever (Redis lists, RabbitMQ).
    fn progress_every(&self) -> Option<Duration> {
        None
    }

    /// Tells the broker that `task` is still being worked on, so that it is not redelivered to
    /// another worker meanwhile.
    async fn progress(&mut self, _task: &Task) -> Result<(), QueueError> {
        Ok(())
    }

    /// Releases the connection. Call when no task is held any more: on Redis it also returns to
    /// the queue anything left in this worker's processing list (e.g. by a take that was cut
    /// short); on RabbitMQ it closes the channel so that a prefetched message goes back at once.
    async fn close(&mut self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Opens a task source for `queue` as worker `worker` (the pod name).
///
/// On Redis this first returns to the queue anything left in this worker's own processing list
/// (a restarted container with the same pod name). On RabbitMQ and NATS the queue (consumer) must
/// exist, otherwise the error has category `not_found`.
pub async fn task_source(
    cfg: &BrokerConfig,
    queue: &str,
    worker: &str,
) -> Result<Box<dyn TaskSource>, QueueError> {
    Ok(match cfg {
        BrokerConfig::Redis(c) => Box::new(redis_impl::RedisSource::open(c, queue, worker).await?),
        BrokerConfig::RabbitMq(c) => {
            Box::new(rabbitmq::RabbitSource::open(c, queue, worker).await?)
        }
        BrokerConfig::Nats(c) => Box::new(nats::NatsSource::open(c, queue).await?),
    })
}

/// Adds one task to `queue` (for tests and benchmarks).
///
/// Redis: `LPUSH`. RabbitMQ: declares `queue` durable and publishes to the default exchange with
/// routing key `queue`, waiting for the publisher confirm. NATS: publishes to the subject of the
/// durable consumer `queue` (its filter subject, else [`nats_subject`]) and waits for the ack.
pub async fn push(cfg: &BrokerConfig, queue: &str, payload: &[u8]) -> Result<(), QueueError> {
    push_batch(cfg, queue, &[payload.to_vec()])
        .await
        .map(|_| ())
}

/// Adds many tasks to `queue` over one connection, in order (the first is taken first). Returns
/// the number pushed. See [`push`].
pub async fn push_batch(
    cfg: &BrokerConfig,
    queue: &str,
    payloads: &[Vec<u8>],
) -> Result<u64, QueueError> {
    match cfg {
        BrokerConfig::Redis(c) => redis_impl::push_batch(c, queue, payloads).await,
        BrokerConfig::RabbitMq(c) => rabbitmq::push_batch(c, queue, payloads).await,
        BrokerConfig::Nats(c) => nats::push_batch(c, queue, payloads).await,
    }
}

/// Installs rustls' ring crypto provider as the process default, once. Needed for TLS with
/// clients that use the process default (Redis) when more than one provider is compiled in.
pub(crate) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
