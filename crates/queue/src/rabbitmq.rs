//! RabbitMQ over AMQP 0-9-1: consumer with prefetch 1 and manual acknowledgement.
//!
//! AMQP tells the ready messages of a queue and its consumers, not the unacknowledged ones. So
//! that the operator can count work in flight without the management API, a worker marks
//! itself busy while it holds a task: it consumes from the queue [`in_flight_queue`] (which
//! never holds messages) from taking a task until it waits for the next one and none is there
//! (a message prefetched meanwhile is held, so the mark stays). The marker goes with the
//! worker's connection, so a worker that dies is unmarked at once, as its unacknowledged
//! message is returned.
//!
//! The depths of several queues ([`QueueBroker::depths`]) come from one list of the vhost's
//! queues when the management API is configured. Over AMQP, the passive declares (the queue and
//! its marker) are pipelined: up to [`PIPELINE`] sent ahead on a channel, the queries spread
//! over up to [`LANES`] channels kept for the next call. A failed declare (a missing queue or
//! marker) closes its channel, and the broker ignores what followed it there; those declares
//! are sent again on a new channel, so a missing queue costs a channel, not the other answers.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::sync::Mutex;

use crate::error::{BrokerKind, QueueError, timed};
use crate::management::Management;
use crate::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, DepthQuery, Handle, QueueBroker, RabbitMqConfig, Task,
    TaskSource, install_crypto_provider, one_by_one,
};

const KIND: BrokerKind = BrokerKind::RabbitMq;

/// Most passive declares sent ahead of their answers on one channel by [`QueueBroker::depths`].
pub(crate) const PIPELINE: usize = 16;

/// Most channels one [`QueueBroker::depths`] call spreads its declares over.
pub(crate) const LANES: usize = 16;

/// Fewest queries per channel of [`QueueBroker::depths`] before another one is used.
const LANE_MIN: usize = 8;

/// The queue whose consumers are the workers of `queue` that hold a task: `{queue}:in-flight`.
/// Workers declare it (durable, empty) and consume from it while busy; the operator reads its
/// consumer count.
pub fn in_flight_queue(queue: &str) -> String {
    format!("{queue}:in-flight")
}

/// Maps a lapin error; `queue` names the queue for `not_found`.
fn map_err(err: lapin::Error, queue: &str) -> QueueError {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                QueueError::not_found(KIND, "queue", queue)
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => QueueError::auth(KIND, amqp),
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => QueueError::connect(KIND, amqp),
            _ => QueueError::protocol(KIND, amqp),
        },
        lapin::ErrorKind::AuthProviderError(_) => QueueError::auth(KIND, err),
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::RuntimeShutdownError(_)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidChannel(_)
        | lapin::ErrorKind::MissingHeartbeatError => QueueError::connect(KIND, err),
        _ => QueueError::protocol(KIND, err),
    }
}

/// Opens one connection (bounded by [`CONNECT_TIMEOUT`]).
async fn open_connection(url: &str) -> Result<Connection, QueueError> {
    if url.starts_with("amqps") {
        install_crypto_provider();
    }
    timed(KIND, "connect", CONNECT_TIMEOUT, async {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| map_err(e, ""))
    })
    .await
}

async fn open_channel(connection: &Connection) -> Result<Channel, QueueError> {
    timed(KIND, "open channel", CALL_TIMEOUT, async {
        connection
            .create_channel()
            .await
            .map_err(|e| map_err(e, ""))
    })
    .await
}

/// Passive declare: checks that the queue exists and reads its ready messages and consumers.
/// A missing queue closes the channel (AMQP soft error); the next call opens a new one.
async fn declare_passive(channel: &Channel, queue: &str) -> Result<lapin::Queue, QueueError> {
    timed(KIND, "queue.declare", CALL_TIMEOUT, async {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err(e, queue))
    })
    .await
}

/// Ready messages and consumers from a passive declare.
type Counts = (u32, u32);

/// Passive declares of `names` sent one after the other on `channel` without waiting for the
/// answers, then their answers in the same order.
async fn pipelined(channel: &Channel, names: &[String]) -> Vec<lapin::Result<Counts>> {
    let mut sent = Vec::with_capacity(names.len());
    for name in names {
        let mut declare = Box::pin(channel.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ));
        // The first poll queues the frame: the declares go out in this order.
        sent.push(match futures::poll!(declare.as_mut()) {
            Poll::Ready(done) => futures::future::Either::Left(futures::future::ready(done)),
            Poll::Pending => futures::future::Either::Right(declare),
        });
    }
    let mut answers = Vec::with_capacity(sent.len());
    for declare in sent {
        answers.push(
            declare
                .await
                .map(|q| (q.message_count(), q.consumer_count())),
        );
    }
    answers
}

/// Passive declares of `names`, in order, on a channel of `link`'s connection, [`PIPELINE`] at
/// a time. The broker answers a channel's declares in order and, after a failed one, closes
/// the channel and ignores the rest, which lapin then fails with that same error: so the first
/// failure of a window is its queue's answer, and what followed it is sent again on a new
/// channel.
async fn declare_lane(link: &Link, names: &[String]) -> Vec<Result<Counts, QueueError>> {
    let mut results = Vec::with_capacity(names.len());
    let mut kept: Option<Channel> = None;
    while results.len() < names.len() {
        let channel = match kept.take() {
            Some(channel) => channel,
            None => match link.spare().await {
                Ok(channel) => channel,
                Err(e) => {
                    results.resize(names.len(), Err(e));
                    break;
                }
            },
        };
        let start = results.len();
        let window = &names[start..names.len().min(start + PIPELINE)];
        let answers = timed(KIND, "queue.declare", CALL_TIMEOUT, async {
            Ok(pipelined(&channel, window).await)
        })
        .await;
        let answers = match answers {
            Ok(answers) => answers,
            Err(e) => {
                results.resize(names.len(), Err(e));
                break;
            }
        };
        for (name, answer) in window.iter().zip(answers) {
            match answer {
                Ok(counts) => results.push(Ok(counts)),
                Err(e) => {
                    results.push(Err(map_err(e, name)));
                    break;
                }
            }
        }
        if channel.status().connected() {
            kept = Some(channel);
        }
    }
    if let Some(channel) = kept {
        link.give_back(channel);
    }
    results
}

/// A queue's depth from its passive declare and its marker's (see [`QueueBroker::depth`]).
fn amqp_depth(
    queue: Result<Counts, QueueError>,
    marker: Result<Counts, QueueError>,
) -> Result<u64, QueueError> {
    let (ready, consumers) = queue?;
    let (ready, consumers) = (u64::from(ready), u64::from(consumers));
    match marker {
        Ok((_, busy)) => Ok(ready + u64::from(busy).min(consumers)),
        Err(e) if e.category() == "not_found" => Ok(ready + consumers),
        Err(e) => Err(e),
    }
}

/// One connection and one channel, re-created when closed; and the channels of
/// [`QueueBroker::depths`] kept for the next call.
struct Link {
    url: String,
    state: Mutex<Option<(Arc<Connection>, Channel)>>,
    spares: std::sync::Mutex<Vec<Channel>>,
}

impl Link {
    async fn open(url: &str) -> Result<Self, QueueError> {
        let connection = open_connection(url).await?;
        let channel = open_channel(&connection).await?;
        Ok(Self {
            url: url.to_owned(),
            state: Mutex::new(Some((Arc::new(connection), channel))),
            spares: std::sync::Mutex::default(),
        })
    }

    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Vec<Channel>> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A channel for one caller alone: a kept one that is still open, else a new one on the
    /// connection (reconnecting if it was closed).
    async fn spare(&self) -> Result<Channel, QueueError> {
        loop {
            let Some(channel) = self.lock_spares().pop() else {
                break;
            };
            if channel.status().connected() {
                return Ok(channel);
            }
        }
        let mut retried = false;
        loop {
            self.channel().await?;
            let connection = match self.state.lock().await.as_ref() {
                Some((connection, _)) => connection.clone(),
                None => return Err(QueueError::connect(KIND, "not connected")),
            };
            match open_channel(&connection).await {
                Ok(channel) => return Ok(channel),
                // See `channel`: a new connection opens channels again.
                Err(e) if retried => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "cannot open a rabbitmq channel; reconnecting");
                    self.drop_connection(&connection).await;
                    retried = true;
                }
            }
        }
    }

    /// Keeps an open channel from [`spare`](Self::spare) for the next call (at most
    /// [`LANES`]); others are closed as they are dropped.
    fn give_back(&self, channel: Channel) {
        let mut spares = self.lock_spares();
        if spares.len() < LANES && channel.status().connected() {
            spares.push(channel);
        }
    }

    /// The open channel, re-creating the channel (or the whole connection) if it was closed.
    ///
    /// lapin keeps the error of each channel the broker closed (a failed passive declare) and
    /// fails a new channel that reuses its id with it, which happens once `channel_max` (2047)
    /// channels were opened: a channel that cannot be opened is therefore retried on a new
    /// connection.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut state = self.state.lock().await;
        if let Some((connection, channel)) = state.as_mut() {
            if connection.status().connected() {
                if channel.status().connected() {
                    return Ok(channel.clone());
                }
                match open_channel(connection).await {
                    Ok(opened) => {
                        *channel = opened.clone();
                        return Ok(opened);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "cannot open a rabbitmq channel; reconnecting")
                    }
                }
            } else {
                tracing::info!("rabbitmq connection closed; reconnecting");
            }
        }
        *state = None;
        self.lock_spares().clear();
        let connection = open_connection(&self.url).await?;
        let channel = open_channel(&connection).await?;
        *state = Some((Arc::new(connection), channel.clone()));
        Ok(channel)
    }

    /// Drops the connection `broken` (if still the current one), so that the next call
    /// reconnects.
    async fn drop_connection(&self, broken: &Arc<Connection>) {
        let mut state = self.state.lock().await;
        if state
            .as_ref()
            .is_some_and(|(connection, _)| Arc::ptr_eq(connection, broken))
        {
            *state = None;
        }
    }
}

/// Operator side.
pub(crate) struct RabbitBroker {
    link: Link,
    management: Option<Management>,
}

impl RabbitBroker {
    pub(crate) async fn connect(cfg: &RabbitMqConfig) -> Result<Self, QueueError> {
        let management = cfg
            .management_url
            .as_deref()
            .map(|m| Management::new(m, &cfg.url))
            .transpose()?;
        Ok(Self {
            link: Link::open(&cfg.url).await?,
            management,
        })
    }
}

#[async_trait]
impl QueueBroker for RabbitBroker {
    /// Ready plus unacknowledged messages.
    ///
    /// With a management URL both come from the management HTTP API
    /// (`messages_ready + messages_unacknowledged`). Without one, AMQP tells the ready messages
    /// (`message_count`) and the consumers; the workers that hold a task are the consumers of
    /// [`in_flight_queue`], so the depth is `ready + min(busy, consumers)`, and idle workers
    /// count nothing: the pool can scale to zero. Workers use prefetch 1, so each busy one holds
    /// one unacknowledged message. When the marker queue does not exist (workers of an SDK that
    /// does not mark themselves), the depth falls back to `ready + consumers`, an upper bound
    /// that never falls below the number of connected workers.
    async fn depth(&self, queue: &str, _workers: &[String]) -> Result<u64, QueueError> {
        if let Some(management) = &self.management
            && let Some(depth) = management.depth(queue).await?
        {
            return Ok(depth);
        }
        let channel = self.link.channel().await?;
        let counts = |q: lapin::Queue| (q.message_count(), q.consumer_count());
        let declared = declare_passive(&channel, queue).await.map(counts)?;
        // A failed declare of the marker closes the channel; the next call opens a new one.
        let marker = declare_passive(&channel, &in_flight_queue(queue))
            .await
            .map(counts);
        amqp_depth(Ok(declared), marker)
    }

    /// One management list of the vhost's queues for several queries (a queue it lists without
    /// counts yet is read over AMQP, as [`depth`](Self::depth) does; one it does not list is
    /// `not_found`, or read on its own when the list took several pages or was not finished).
    /// Without the management API, or for what it leaves, the passive declares are pipelined
    /// (see the module's documentation).
    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        if queries.len() < 2 {
            return one_by_one(self, queries).await;
        }
        let mut results: Vec<Option<Result<u64, QueueError>>> = vec![None; queries.len()];
        let mut alone = Vec::new();
        let mut amqp = Vec::new();
        match &self.management {
            None => amqp.extend(0..queries.len()),
            Some(management) => match management.list_depths(queries.len()).await {
                Ok(list) => {
                    for (i, q) in queries.iter().enumerate() {
                        match list.depths.get(&q.queue) {
                            Some(Some(depth)) => results[i] = Some(Ok(*depth)),
                            Some(None) => amqp.push(i),
                            None if list.authoritative => {
                                results[i] =
                                    Some(Err(QueueError::not_found(KIND, "queue", &q.queue)));
                            }
                            None => alone.push(i),
                        }
                    }
                }
                Err(e) => {
                    for (i, q) in queries.iter().enumerate() {
                        results[i] = Some(Err(if e.category() == "not_found" {
                            QueueError::not_found(KIND, "queue", &q.queue)
                        } else {
                            e.clone()
                        }));
                    }
                }
            },
        }
        let mut singles = Vec::with_capacity(alone.len());
        for &i in &alone {
            singles.push(&queries[i]);
        }
        for (i, answer) in alone.iter().zip(one_by_one(self, singles).await) {
            results[*i] = Some(answer);
        }
        let mut names = Vec::with_capacity(amqp.len() * 2);
        for &i in &amqp {
            names.push(queries[i].queue.clone());
            names.push(in_flight_queue(&queries[i].queue));
        }
        let lanes = amqp.len().div_ceil(LANE_MIN).clamp(1, LANES);
        let per_lane = amqp.len().div_ceil(lanes) * 2;
        let mut lane_reads = Vec::with_capacity(lanes);
        for chunk in names.chunks(per_lane.max(2)) {
            lane_reads.push(declare_lane(&self.link, chunk));
        }
        let declared: Vec<Result<Counts, QueueError>> = futures::future::join_all(lane_reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut declared = declared.into_iter();
        for &i in &amqp {
            let (Some(queue), Some(marker)) = (declared.next(), declared.next()) else {
                break;
            };
            results[i] = Some(amqp_depth(queue, marker));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::protocol(KIND, "depth not read"))))
            .collect()
    }

    async fn recover(&self, _queue: &str, _worker: &str) -> Result<u64, QueueError> {
        Ok(0)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let channel = self.link.channel().await?;
        timed(KIND, "ping", CALL_TIMEOUT, async {
            channel
                .exchange_declare(
                    "amq.direct".into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| map_err(e, ""))
        })
        .await
    }
}

/// Worker side: one connection, one channel with prefetch 1, one consumer; and a second
/// channel that consumes from [`in_flight_queue`] while a task is held (the busy marker).
pub(crate) struct RabbitSource {
    url: String,
    queue: String,
    tag: String,
    state: Option<(Connection, Channel, Consumer)>,
    /// The marker channel, when the marker queue could be declared.
    marker: Option<Channel>,
    /// The marker consumer while a task is held.
    busy: Option<Consumer>,
}

impl RabbitSource {
    pub(crate) async fn open(
        cfg: &RabbitMqConfig,
        queue: &str,
        worker: &str,
    ) -> Result<Self, QueueError> {
        let mut source = Self {
            url: cfg.url.clone(),
            queue: queue.to_owned(),
            tag: worker.to_owned(),
            state: None,
            marker: None,
            busy: None,
        };
        source.consumer().await?;
        Ok(source)
    }

    async fn consumer(&mut self) -> Result<&mut Consumer, QueueError> {
        if self.state.is_none() {
            let connection = open_connection(&self.url).await?;
            let channel = open_channel(&connection).await?;
            let queue = self.queue.as_str();
            declare_passive(&channel, queue).await?;
            timed(KIND, "basic.qos", CALL_TIMEOUT, async {
                channel
                    .basic_qos(1, BasicQosOptions::default())
                    .await
                    .map_err(|e| map_err(e, queue))
            })
            .await?;
            let consumer = timed(KIND, "basic.consume", CALL_TIMEOUT, async {
                channel
                    .basic_consume(
                        queue.into(),
                        self.tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| map_err(e, queue))
            })
            .await?;
            self.marker = open_marker(&connection, queue).await;
            self.busy = None;
            self.state = Some((connection, channel, consumer));
        }
        match self.state.as_mut() {
            Some((_, _, consumer)) => Ok(consumer),
            None => Err(QueueError::connect(KIND, "no consumer")),
        }
    }

    /// Marks this worker busy (a consumer of the marker queue); a failure is only logged: the
    /// task is held all the same, and the operator then counts it as waiting for a moment.
    async fn mark_busy(&mut self) {
        let Some(marker) = &self.marker else { return };
        let queue = in_flight_queue(&self.queue);
        let result = timed(KIND, "basic.consume", CALL_TIMEOUT, async {
            marker
                .basic_consume(
                    queue.as_str().into(),
                    self.tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| map_err(e, &queue))
        })
        .await;
        match result {
            Ok(consumer) => self.busy = Some(consumer),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mark the worker busy");
                self.marker = None;
            }
        }
    }

    /// Removes the busy mark: the worker waits for a task and holds none.
    async fn mark_idle(&mut self) {
        let Some(busy) = self.busy.take() else { return };
        let Some(marker) = &self.marker else { return };
        let result = timed(KIND, "basic.cancel", CALL_TIMEOUT, async {
            marker
                .basic_cancel(busy.tag(), BasicCancelOptions::default())
                .await
                .map_err(|e| map_err(e, ""))
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot unmark the worker; reconnecting");
            self.state = None;
            self.marker = None;
        }
    }

    fn acker(task: Task) -> Result<lapin::Acker, QueueError> {
        match task.handle {
            Handle::RabbitMq(acker) => Ok(acker),
            _ => Err(QueueError::protocol(
                KIND,
                "task was not taken from RabbitMQ",
            )),
        }
    }
}

/// `Ok(false)` from an acker means its channel is gone: the broker redelivers the message.
fn settled(result: lapin::Result<bool>, what: &str) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(QueueError::connect(
            KIND,
            format!(
                "cannot {what}: the channel it came on is closed; the broker will redeliver it"
            ),
        )),
        Err(err) => Err(map_err(err, "")),
    }
}

#[async_trait]
impl TaskSource for RabbitSource {
    async fn take(&mut self, wait: Duration) -> Result<Option<Task>, QueueError> {
        use futures::FutureExt as _;
        // A message prefetched while the last task ran is taken at once, the worker still
        // marked busy; otherwise the worker is idle while it waits.
        let consumer = self.consumer().await?;
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                self.mark_idle().await;
                let consumer = self.consumer().await?;
                match tokio::time::timeout(wait, consumer.next()).await {
                    Err(_) => return Ok(None),
                    Ok(next) => next,
                }
            }
        };
        match next {
            Some(Ok(delivery)) => {
                if self.busy.is_none() {
                    self.mark_busy().await;
                }
                Ok(Some(Task {
                    payload: delivery.data,
                    handle: Handle::RabbitMq(delivery.acker),
                }))
            }
            Some(Err(err)) => {
                self.state = None;
                Err(map_err(err, &self.queue))
            }
            None => {
                self.state = None;
                Err(QueueError::connect(
                    KIND,
                    format!("consumer of queue {:?} was cancelled", self.queue),
                ))
            }
        }
    }

    async fn ack(&mut self, task: Task) -> Result<(), QueueError> {
        let acker = Self::acker(task)?;
        let result = timed(KIND, "basic.ack", CALL_TIMEOUT, async {
            settled(acker.ack(BasicAckOptions::default()).await, "ack")
        })
        .await;
        if result.is_err() {
            self.state = None;
            self.busy = None;
        }
        result
    }

    async fn requeue(&mut self, task: Task) -> Result<(), QueueError> {
        let acker = Self::acker(task)?;
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let result = timed(KIND, "basic.nack", CALL_TIMEOUT, async {
            settled(acker.nack(options).await, "requeue")
        })
        .await;
        if result.is_err() {
            self.state = None;
            self.busy = None;
        }
        result
    }

    async fn close(&mut self) -> Result<(), QueueError> {
        // The marker goes with the connection; it is dropped only after the close.
        let _marker = (self.busy.take(), self.marker.take());
        if let Some((connection, channel, _)) = self.state.take() {
            timed(KIND, "close", CALL_TIMEOUT, async {
                // A prefetched, unacknowledged message goes back to the queue with the channel.
                channel
                    .close(200, "worker closing".into())
                    .await
                    .map_err(|e| map_err(e, ""))?;
                connection
                    .close(200, "worker closing".into())
                    .await
                    .map_err(|e| map_err(e, ""))
            })
            .await?;
        }
        Ok(())
    }
}

/// Opens the marker channel and declares [`in_flight_queue`] on it (durable, never holds
/// messages). `None` when that fails (e.g. no configure permission): the worker then runs
/// unmarked and the operator counts connected consumers instead.
async fn open_marker(connection: &Connection, queue: &str) -> Option<Channel> {
    let marker = in_flight_queue(queue);
    let result = async {
        let channel = open_channel(connection).await?;
        timed(KIND, "queue.declare", CALL_TIMEOUT, async {
            channel
                .queue_declare(
                    marker.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| map_err(e, &marker))
        })
        .await?;
        Ok::<_, QueueError>(channel)
    }
    .await;
    match result {
        Ok(channel) => Some(channel),
        Err(e) => {
            tracing::warn!(error = %e, queue = %marker, "cannot declare the in-flight marker queue; the operator will count this worker as busy");
            None
        }
    }
}

/// Declares `queue` durable, then publishes each payload to the default exchange and waits for
/// the publisher confirms.
pub(crate) async fn push_batch(
    cfg: &RabbitMqConfig,
    queue: &str,
    payloads: &[Vec<u8>],
) -> Result<u64, QueueError> {
    let connection = open_connection(&cfg.url).await?;
    let channel = open_channel(&connection).await?;
    let limit = CALL_TIMEOUT * 2 + Duration::from_millis(payloads.len() as u64);
    let result = timed(KIND, "push", limit, async {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| map_err(e, queue))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map_err(e, queue))?;
        let mut confirms = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(|e| map_err(e, queue))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(|e| map_err(e, queue))?;
            if !confirmation.is_ack() {
                return Err(QueueError::protocol(
                    KIND,
                    format!("broker did not confirm a message published to {queue:?}"),
                ));
            }
        }
        Ok(payloads.len() as u64)
    })
    .await;
    let _ = connection.close(200, "done".into()).await;
    result
}
