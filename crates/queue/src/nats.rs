//! NATS JetStream: each queue is a durable pull consumer (explicit ack) of one stream.
//!
//! A queue's depth is one `CONSUMER.INFO` request; the depths of several queues are one
//! `CONSUMER.LIST` of the stream (256 consumers a page, the pages after the first requested
//! together) instead of a request per queue.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, RetentionPolicy};
use async_nats::jetstream::{self, Context};
use async_nats::{ConnectErrorKind, ConnectOptions};
use async_trait::async_trait;
use futures::StreamExt;

use crate::error::{BrokerKind, QueueError, timed};
use crate::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, DEPTHS_CONCURRENCY, DepthQuery, Handle, NatsConfig, QueueBroker,
    Task, TaskSource, install_crypto_provider, one_by_one,
};

const KIND: BrokerKind = BrokerKind::Nats;

/// The subject [`ensure_nats_queue`] binds queue `queue` of stream `stream` to:
/// `{stream}.{queue}`.
pub fn nats_subject(stream: &str, queue: &str) -> String {
    format!("{stream}.{queue}")
}

/// Maps a JetStream API error: a missing stream or consumer is `not_found`.
fn map_api(err: &jetstream::Error, stream: &str, queue: &str) -> QueueError {
    if err.error_code() == ErrorCode::STREAM_NOT_FOUND {
        QueueError::not_found(KIND, "stream", stream)
    } else if err.error_code() == ErrorCode::CONSUMER_NOT_FOUND || err.code() == 404 {
        QueueError::not_found(KIND, "consumer", queue)
    } else if err.code() == 401 || err.code() == 403 {
        QueueError::auth(KIND, err)
    } else {
        QueueError::protocol(KIND, err)
    }
}

fn map_consumer(err: ConsumerError, stream: &str, queue: &str) -> QueueError {
    match err.kind() {
        ConsumerErrorKind::JetStream(api) => map_api(&api, stream, queue),
        ConsumerErrorKind::TimedOut => QueueError::Timeout {
            broker: KIND,
            operation: "consumer info",
            after: CALL_TIMEOUT,
        },
        ConsumerErrorKind::Request => QueueError::connect(KIND, err),
        _ => QueueError::protocol(KIND, err),
    }
}

/// Refuses URLs whose connections would not honour [`NatsConfig::tls`]: the client puts no TLS
/// on `ws://` URLs even when it is required (and without its websocket support, which this
/// crate does not enable, it speaks plain NATS over TCP to them). Only `nats://`, `tls://` and
/// scheme-less `host:port` are accepted.
fn check_url(cfg: &NatsConfig) -> Result<(), QueueError> {
    let scheme = cfg
        .url
        .split_once("://")
        .map_or("nats", |(scheme, _)| scheme)
        .to_ascii_lowercase();
    if matches!(scheme.as_str(), "nats" | "tls") {
        Ok(())
    } else {
        Err(QueueError::config(
            KIND,
            format!("the URL must be nats:// or tls://, not {scheme}://"),
        ))
    }
}

async fn client(cfg: &NatsConfig) -> Result<async_nats::Client, QueueError> {
    check_url(cfg)?;
    let mut options = ConnectOptions::new()
        .connection_timeout(CALL_TIMEOUT)
        .request_timeout(Some(CALL_TIMEOUT));
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &cfg.token {
        options = options.token(token.clone());
    }
    if cfg.tls {
        install_crypto_provider();
        options = options.require_tls(true);
    }
    timed(KIND, "connect", CONNECT_TIMEOUT, async {
        options
            .connect(cfg.url.as_str())
            .await
            .map_err(|err| match err.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    QueueError::auth(KIND, err)
                }
                ConnectErrorKind::TimedOut => QueueError::Timeout {
                    broker: KIND,
                    operation: "connect",
                    after: CALL_TIMEOUT,
                },
                _ => QueueError::connect(KIND, err),
            })
    })
    .await
}

fn context(client: async_nats::Client) -> Context {
    jetstream::ContextBuilder::new()
        .timeout(CALL_TIMEOUT)
        .build(client)
}

async fn consumer(js: &Context, stream: &str, queue: &str) -> Result<PullConsumer, QueueError> {
    timed(KIND, "consumer info", CALL_TIMEOUT, async {
        js.get_consumer_from_stream::<pull::Config, _, _>(queue, stream)
            .await
            .map_err(|e| map_consumer(e, stream, queue))
    })
    .await
}

/// Operator side.
pub(crate) struct NatsBroker {
    client: async_nats::Client,
    js: Context,
    stream: String,
}

impl NatsBroker {
    pub(crate) async fn connect(cfg: &NatsConfig) -> Result<Self, QueueError> {
        let client = client(cfg).await?;
        Ok(Self {
            js: context(client.clone()),
            client,
            stream: cfg.stream.clone(),
        })
    }
}

/// One page of `CONSUMER.LIST`: the infos of consumers `offset..offset + limit` of `total`.
struct ConsumerPage {
    total: usize,
    limit: usize,
    consumers: Vec<jetstream::consumer::Info>,
}

/// The consumers of a stream as far as [`NatsBroker::list_consumers`] read them.
struct ConsumerList {
    consumers: HashMap<String, jetstream::consumer::Info>,
    /// Whether the list is one answer of the server, so that a consumer missing from it does
    /// not exist; a list read in several pages may miss one (consumers created or deleted
    /// between the pages shift the offsets), and an unfinished one misses the rest.
    authoritative: bool,
}

/// `num_pending + num_ack_pending`.
fn info_depth(info: &jetstream::consumer::Info) -> u64 {
    info.num_pending + info.num_ack_pending as u64
}

impl NatsBroker {
    /// Page `offset` of the stream's consumers (one `CONSUMER.LIST` request).
    async fn consumer_page(&self, offset: usize) -> Result<ConsumerPage, QueueError> {
        let stream = self.stream.as_str();
        let response: Response<serde_json::Value> =
            timed(KIND, "consumer list", CALL_TIMEOUT, async {
                self.js
                    .request(
                        format!("CONSUMER.LIST.{stream}"),
                        &serde_json::json!({ "offset": offset }),
                    )
                    .await
                    .map_err(|e| match e.kind() {
                        jetstream::context::RequestErrorKind::TimedOut => QueueError::Timeout {
                            broker: KIND,
                            operation: "consumer list",
                            after: CALL_TIMEOUT,
                        },
                        _ => QueueError::connect(KIND, e),
                    })
            })
            .await?;
        let page = match response {
            Response::Ok(page) => page,
            Response::Err { error } => return Err(map_api(&error, stream, "")),
        };
        let count = |key: &str| {
            page.get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        let (Some(total), limit) = (count("total"), count("limit")) else {
            return Err(QueueError::protocol(KIND, "the consumer list has no total"));
        };
        let consumers = match page.get("consumers") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(list) => serde_json::from_value(list.clone())
                .map_err(|e| QueueError::protocol(KIND, format!("invalid consumer list: {e}")))?,
        };
        Ok(ConsumerPage {
            total,
            limit: limit.unwrap_or(0),
            consumers,
        })
    }

    /// The stream's consumers: the first page, then the others together unless the first
    /// holds all of `wanted` or the others are more pages than the wanted consumers it lacks (a
    /// request per consumer is then cheaper).
    async fn list_consumers(&self, wanted: &[&str]) -> Result<ConsumerList, QueueError> {
        let first = self.consumer_page(0).await?;
        let read = first.consumers.len();
        let mut list = ConsumerList {
            consumers: HashMap::with_capacity(first.total),
            authoritative: read >= first.total,
        };
        let limit = first.limit.max(read);
        list.consumers
            .extend(first.consumers.into_iter().map(|i| (i.name.clone(), i)));
        let lacking = wanted
            .iter()
            .filter(|name| !list.consumers.contains_key(**name))
            .count();
        if list.authoritative || limit == 0 || lacking == 0 {
            return Ok(list);
        }
        let offsets: Vec<usize> = (read..first.total).step_by(limit).collect();
        if offsets.len() > lacking {
            return Ok(list);
        }
        let mut requests = Vec::with_capacity(offsets.len());
        for offset in offsets {
            requests.push(self.consumer_page(offset));
        }
        let mut pages = futures::stream::iter(requests).buffer_unordered(DEPTHS_CONCURRENCY);
        while let Some(page) = pages.next().await {
            list.consumers
                .extend(page?.consumers.into_iter().map(|i| (i.name.clone(), i)));
        }
        Ok(list)
    }
}

#[async_trait]
impl QueueBroker for NatsBroker {
    /// `num_pending + num_ack_pending` of the durable consumer `queue`.
    async fn depth(&self, queue: &str, _workers: &[String]) -> Result<u64, QueueError> {
        let consumer = consumer(&self.js, &self.stream, queue).await?;
        Ok(info_depth(consumer.cached_info()))
    }

    /// One `CONSUMER.LIST` of the stream (all its pages) for several queries. A queue the list
    /// does not settle (not in a list read in several pages or unfinished, an invalid name, a
    /// push consumer) is read on its own, so that its answer is [`QueueBroker::depth`]'s.
    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        let wanted: Vec<&str> = queries
            .iter()
            .map(|q| q.queue.as_str())
            .filter(|q| valid_name(q))
            .collect();
        if wanted.len() < 2 || !valid_name(&self.stream) {
            return one_by_one(self, queries).await;
        }
        let list = self.list_consumers(&wanted).await;
        let mut results: Vec<Option<Result<u64, QueueError>>> = queries
            .iter()
            .map(|q| {
                if !valid_name(&q.queue) {
                    return None;
                }
                let list = match &list {
                    Ok(list) => list,
                    Err(e) => return Some(Err(e.clone())),
                };
                match list.consumers.get(&q.queue) {
                    Some(info) if is_pull(info) => Some(Ok(info_depth(info))),
                    None if list.authoritative => {
                        Some(Err(QueueError::not_found(KIND, "consumer", &q.queue)))
                    }
                    _ => None,
                }
            })
            .collect();
        let rest: Vec<usize> = (0..queries.len())
            .filter(|&i| results[i].is_none())
            .collect();
        let mut others = Vec::with_capacity(rest.len());
        for &i in &rest {
            others.push(&queries[i]);
        }
        let answers = one_by_one(self, others).await;
        for (i, answer) in rest.into_iter().zip(answers) {
            results[i] = Some(answer);
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
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(QueueError::connect(KIND, "not connected (reconnecting)"));
        }
        timed(KIND, "ping", CALL_TIMEOUT, async {
            self.client
                .flush()
                .await
                .map_err(|e| QueueError::connect(KIND, e))
        })
        .await
    }
}

/// Whether a consumer with this info is a pull consumer (which [`consumer`] accepts).
fn is_pull(info: &jetstream::consumer::Info) -> bool {
    info.config.deliver_subject.is_none()
}

/// Whether a name is one the client sends to the server (not empty, no whitespace, `.`, `*`
/// or `>`); [`consumer`] refuses other names without asking.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| !c.is_ascii_whitespace() && !matches!(c, b'.' | b'*' | b'>'))
}

/// Worker side.
pub(crate) struct NatsSource {
    consumer: PullConsumer,
    queue: String,
    /// A third of the consumer's `ack_wait`.
    progress_every: Duration,
}

impl NatsSource {
    pub(crate) async fn open(cfg: &NatsConfig, queue: &str) -> Result<Self, QueueError> {
        let js = context(client(cfg).await?);
        let consumer = consumer(&js, &cfg.stream, queue).await?;
        let progress_every = progress_interval(consumer.cached_info().config.ack_wait);
        Ok(Self {
            consumer,
            queue: queue.to_owned(),
            progress_every,
        })
    }

    fn acker(task: Task) -> Result<Box<jetstream::message::Acker>, QueueError> {
        match task.handle {
            Handle::Nats(acker) => Ok(acker),
            _ => Err(QueueError::protocol(KIND, "task was not taken from NATS")),
        }
    }
}

#[async_trait]
impl TaskSource for NatsSource {
    async fn take(&mut self, wait: Duration) -> Result<Option<Task>, QueueError> {
        // The server needs a positive pull expiry; keep at least 100 ms.
        let expires = wait.max(Duration::from_millis(100));
        let consumer = &self.consumer;
        let queue = self.queue.as_str();
        let next = timed(KIND, "take", expires + CALL_TIMEOUT, async {
            let mut batch = consumer
                .batch()
                .max_messages(1)
                .expires(expires)
                .messages()
                .await
                .map_err(|e| QueueError::connect(KIND, format!("pull from {queue:?}: {e}")))?;
            Ok(batch.next().await)
        })
        .await?;
        match next {
            None => Ok(None),
            Some(Ok(message)) => {
                let (message, acker) = message.split();
                Ok(Some(Task {
                    payload: message.payload.to_vec(),
                    handle: Handle::Nats(Box::new(acker)),
                }))
            }
            Some(Err(err)) => Err(QueueError::protocol(
                KIND,
                format!("pull from {queue:?}: {err}"),
            )),
        }
    }

    async fn ack(&mut self, task: Task) -> Result<(), QueueError> {
        let acker = Self::acker(task)?;
        timed(KIND, "ack", CALL_TIMEOUT + CALL_TIMEOUT, async {
            acker
                .double_ack()
                .await
                .map_err(|e| QueueError::connect(KIND, format!("ack: {e}")))
        })
        .await
    }

    fn progress_every(&self) -> Option<Duration> {
        Some(self.progress_every)
    }

    async fn progress(&mut self, task: &Task) -> Result<(), QueueError> {
        let Handle::Nats(acker) = &task.handle else {
            return Err(QueueError::protocol(KIND, "task was not taken from NATS"));
        };
        timed(KIND, "in progress", CALL_TIMEOUT, async {
            acker
                .ack_with(AckKind::Progress)
                .await
                .map_err(|e| QueueError::connect(KIND, format!("in progress: {e}")))
        })
        .await
    }

    async fn requeue(&mut self, task: Task) -> Result<(), QueueError> {
        let acker = Self::acker(task)?;
        timed(KIND, "nak", CALL_TIMEOUT + CALL_TIMEOUT, async {
            acker
                .double_ack_with(AckKind::Nak(None))
                .await
                .map_err(|e| QueueError::connect(KIND, format!("nak: {e}")))
        })
        .await
    }
}

/// How often a worker reports a task in progress on a consumer with `ack_wait`: a third of it
/// (as the Python SDK), at least once a second; 10 s where the consumer reports no `ack_wait`
/// (the server's default is 30 s).
pub(crate) fn progress_interval(ack_wait: Duration) -> Duration {
    if ack_wait.is_zero() {
        Duration::from_secs(10)
    } else {
        (ack_wait / 3).max(Duration::from_secs(1))
    }
}

/// Makes sure stream `cfg.stream` exists (created with subjects `{stream}.>` and work-queue
/// retention if missing) and has the durable pull consumer `queue` (created with explicit ack,
/// `ack_wait`, and filter subject [`nats_subject`]`(stream, queue)` if missing). Existing ones
/// are left as they are.
///
/// `ack_wait` must exceed the longest task: an unacknowledged message is redelivered after it.
pub async fn ensure_nats_queue(
    cfg: &NatsConfig,
    queue: &str,
    ack_wait: Duration,
) -> Result<(), QueueError> {
    let js = context(client(cfg).await?);
    let stream_name = cfg.stream.as_str();
    timed(
        KIND,
        "ensure stream and consumer",
        CALL_TIMEOUT * 3,
        async {
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: stream_name.to_owned(),
                    subjects: vec![format!("{stream_name}.>")],
                    retention: RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await
                .map_err(|e| match e.kind() {
                    jetstream::context::CreateStreamErrorKind::JetStream(api) => {
                        map_api(&api, stream_name, queue)
                    }
                    jetstream::context::CreateStreamErrorKind::TimedOut => QueueError::Timeout {
                        broker: KIND,
                        operation: "create stream",
                        after: CALL_TIMEOUT,
                    },
                    _ => QueueError::protocol(KIND, e),
                })?;
            stream
                .get_or_create_consumer(
                    queue,
                    pull::Config {
                        durable_name: Some(queue.to_owned()),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait,
                        filter_subject: nats_subject(stream_name, queue),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| map_consumer(e, stream_name, queue))?;
            Ok(())
        },
    )
    .await
}

/// Publishes to the consumer's filter subject (or [`nats_subject`]) and waits for each ack.
pub(crate) async fn push_batch(
    cfg: &NatsConfig,
    queue: &str,
    payloads: &[Vec<u8>],
) -> Result<u64, QueueError> {
    let js = context(client(cfg).await?);
    let info = consumer(&js, &cfg.stream, queue)
        .await?
        .cached_info()
        .clone();
    let subject = [info.config.filter_subject.clone()]
        .into_iter()
        .chain(info.config.filter_subjects.iter().cloned())
        .find(|s| !s.is_empty() && !s.contains(['*', '>']))
        .unwrap_or_else(|| nats_subject(&cfg.stream, queue));
    let limit = CALL_TIMEOUT * 2 + Duration::from_millis(payloads.len() as u64);
    timed(KIND, "push", limit, async {
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let ack = js
                .publish(subject.clone(), bytes::Bytes::from(payload.clone()))
                .await
                .map_err(|e| QueueError::protocol(KIND, format!("publish: {e}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| QueueError::protocol(KIND, format!("publish ack: {e}")))?;
        }
        Ok(payloads.len() as u64)
    })
    .await
}
