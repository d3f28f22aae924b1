//! RabbitMQ over AMQP 0-9-1: consumer with prefetch 1 and manual acknowledgement.
//!
//! AMQP tells the ready messages of a queue and its consumers, not the unacknowledged ones. So
//! that the operator can count work in flight without the management API, a worker marks
//! itself busy while it holds a task: it consumes from the queue [`in_flight_queue`] (which
//! never holds messages) from taking a task until it waits for the next one and none is there
//! (a message prefetched meanwhile is held, so the mark stays). The marker goes with the
//! worker's connection, so a worker that dies is unmarked at once, as its unacknowledged
//! message is returned.

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
    CALL_TIMEOUT, CONNECT_TIMEOUT, Handle, QueueBroker, RabbitMqConfig, Task, TaskSource,
    install_crypto_provider,
};

const KIND: BrokerKind = BrokerKind::RabbitMq;

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

/// One connection and one channel, re-created when closed.
struct Link {
    url: String,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl Link {
    async fn open(url: &str) -> Result<Self, QueueError> {
        let connection = open_connection(url).await?;
        let channel = open_channel(&connection).await?;
        Ok(Self {
            url: url.to_owned(),
            state: Mutex::new(Some((connection, channel))),
        })
    }

    /// The open channel, re-creating the channel (or the whole connection) if it was closed.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut state = self.state.lock().await;
        if let Some((connection, channel)) = state.as_mut() {
            if connection.status().connected() {
                if !channel.status().connected() {
                    *channel = open_channel(connection).await?;
                }
                return Ok(channel.clone());
            }
            tracing::info!("rabbitmq connection closed; reconnecting");
        }
        *state = None;
        let connection = open_connection(&self.url).await?;
        let channel = open_channel(&connection).await?;
        *state = Some((connection, channel.clone()));
        Ok(channel)
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
        let declared = declare_passive(&channel, queue).await?;
        let ready = u64::from(declared.message_count());
        let consumers = u64::from(declared.consumer_count());
        match declare_passive(&channel, &in_flight_queue(queue)).await {
            Ok(marker) => Ok(ready + u64::from(marker.consumer_count()).min(consumers)),
            // The failed declare closed the channel; the next call opens a new one.
            Err(e) if e.category() == "not_found" => Ok(ready + consumers),
            Err(e) => Err(e),
        }
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
