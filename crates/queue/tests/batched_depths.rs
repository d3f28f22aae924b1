//! [`QueueBroker::depths`] of RabbitMQ and NATS JetStream against the real local brokers
//! (RabbitMQ 5672 guest/guest and its management API on 15672 when enabled, NATS 4222): the
//! answers of one call equal each queue's own [`QueueBroker::depth`], a missing queue fails only
//! its own query, and the reads are batched. Requests are counted by a forwarding proxy in
//! front of the real broker. Every test uses its own queues and streams.
//!
//! `depths_of_500_queues_timings` (ignored; run it with `--ignored --nocapture`) prints the time
//! of 500 depth reads one by one (the default `depths`, [`DEPTHS_CONCURRENCY`] at a time) and in
//! one `depths` call, for each broker.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::unique;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use workerpool_queue::{
    BrokerConfig, DEPTHS_CONCURRENCY, DepthQuery, NatsConfig, QueueBroker, QueueError,
    RabbitMqConfig, amqp_url, connect, ensure_nats_queue, in_flight_queue, push_batch,
};

const MANAGEMENT: &str = "127.0.0.1:15672";

fn rabbit_cfg(management_url: Option<String>) -> BrokerConfig {
    BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false),
        management_url,
    })
}

fn nats_cfg(stream: &str, port: u16) -> NatsConfig {
    NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        stream: stream.to_string(),
        user: None,
        password: None,
        token: None,
        tls: false,
    }
}

fn queries(queues: &[String]) -> Vec<DepthQuery> {
    queues
        .iter()
        .map(|q| DepthQuery {
            queue: q.clone(),
            workers: vec!["w-0".into()],
        })
        .collect()
}

/// What the default `depths` did: `depth` per query, [`DEPTHS_CONCURRENCY`] at a time.
async fn one_by_one(broker: &dyn QueueBroker, queries: &[DepthQuery]) -> Vec<Answer> {
    let mut reads = Vec::new();
    for q in queries {
        reads.push(broker.depth(&q.queue, &q.workers));
    }
    futures::stream::iter(reads)
        .buffered(DEPTHS_CONCURRENCY)
        .map(summary)
        .collect()
        .await
}

/// A depth or an error's category and text, comparable.
type Answer = Result<u64, (String, String)>;

fn summary(r: Result<u64, QueueError>) -> Answer {
    r.map_err(|e| (e.category().to_string(), e.to_string()))
}

async fn depths(broker: &dyn QueueBroker, queries: &[DepthQuery]) -> Vec<Answer> {
    broker
        .depths(queries)
        .await
        .into_iter()
        .map(summary)
        .collect()
}

/// A TCP proxy to `target` that keeps what clients send, so that a test can count requests.
struct Proxy {
    port: u16,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (sent.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = client_rx.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            log.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend_from_slice(&buf[..n]);
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_tx.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                        let _ = client_tx.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            port,
            sent,
            connections,
        }
    }

    /// How often `needle` occurs in what clients sent since the last [`reset`](Self::reset).
    fn count(&self, needle: &str) -> usize {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
    }

    fn reset(&self) {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

async fn management_up() -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(MANAGEMENT)).await,
        Ok(Ok(_))
    )
}

/// Declares `n` queues (queue `i` with `i % 4` messages; the markers of every
/// `marker_every`-th one), except the one at `missing`.
async fn rabbit_queues(n: usize, missing: usize, marker_every: usize) -> (Vec<String>, Vec<u64>) {
    let cfg = rabbit_cfg(None);
    let queues: Vec<String> = (0..n).map(|i| unique(&format!("bd-rabbit-{i}"))).collect();
    let mut expected = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        if i == missing {
            expected.push(0);
            continue;
        }
        let payloads: Vec<Vec<u8>> = (0..i % 4).map(|j| vec![j as u8]).collect();
        push_batch(&cfg, q, &payloads).await.expect("declare");
        if i % marker_every == 0 {
            push_batch(&cfg, &in_flight_queue(q), &[])
                .await
                .expect("marker");
        }
        expected.push((i % 4) as u64);
    }
    (queues, expected)
}

async fn rabbit_delete(queues: &[String]) {
    let url = amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false);
    if let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
    {
        for q in queues {
            // A missing queue closes the channel: one per queue.
            if let Ok(channel) = conn.create_channel().await {
                for name in [q.clone(), in_flight_queue(q)] {
                    let _ = channel
                        .queue_delete(
                            name.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await;
                }
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

fn assert_answers(got: &[Answer], expected: &[u64], missing: usize, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        if i == missing {
            let err = g.as_ref().expect_err("the missing queue");
            assert_eq!(err.0, "not_found", "{what}: queue {i}: {err:?}");
        } else {
            assert_eq!(g.as_ref().ok(), Some(e), "{what}: queue {i}");
        }
    }
}

#[tokio::test]
async fn rabbitmq_amqp_depths_match_depth_and_a_missing_queue_fails_only_itself() {
    let (queues, expected) = rabbit_queues(50, 17, 3).await;
    let broker = connect(&rabbit_cfg(None)).await.expect("connect");
    let queries = queries(&queues);
    let start = Instant::now();
    let got = depths(&*broker, &queries).await;
    let batched = start.elapsed();
    let mut alone = Vec::new();
    for q in &queries {
        alone.push(summary(broker.depth(&q.queue, &q.workers).await));
    }
    // Again, on the channels kept from the first call.
    let again = depths(&*broker, &queries).await;
    rabbit_delete(&queues).await;
    eprintln!("rabbitmq amqp: depths of 50 queues (one missing) in {batched:?}");
    assert_eq!(got, alone, "depths equals depth, error for error");
    assert_answers(&got, &expected, 17, "depths");
    assert_eq!(again, got, "second call");
    assert!(broker.depths(&[]).await.is_empty());
}

#[tokio::test]
async fn rabbitmq_depth_keeps_working_after_channel_max_failed_marker_declares() {
    // Each read of a queue without its marker closes a channel; lapin fails a new channel that
    // reuses a closed one's id (after 2047 of them) with that channel's old error.
    let queue = unique("bd-rabbit-reuse");
    let cfg = rabbit_cfg(None);
    push_batch(&cfg, &queue, &[b"x".to_vec()])
        .await
        .expect("declare");
    let broker = connect(&cfg).await.expect("connect");
    let mut failed = None;
    for i in 0..2100 {
        if let Err(e) = broker.depth(&queue, &[]).await {
            failed = Some((i, e));
            break;
        }
    }
    let batch = depths(&*broker, &queries(&[queue.clone(), queue.clone()])).await;
    rabbit_delete(&[queue]).await;
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(batch, vec![Ok(1), Ok(1)]);
}

#[tokio::test]
async fn rabbitmq_management_depths_are_one_list_request() {
    if !management_up().await {
        eprintln!(
            "skipped: the RabbitMQ management API ({MANAGEMENT}) does not answer; \
             enable it with `rabbitmq-plugins enable rabbitmq_management`"
        );
        return;
    }
    let (queues, expected) = rabbit_queues(50, 9, 3).await;
    let proxy = Proxy::start(MANAGEMENT).await;
    let cfg = rabbit_cfg(Some(format!("http://127.0.0.1:{}", proxy.port)));
    let broker = connect(&cfg).await.expect("connect");
    let queries = queries(&queues);
    // The management API publishes a new queue's counts within seconds (its stats interval).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (got, requests) = loop {
        proxy.reset();
        let got = depths(&*broker, &queries).await;
        let requests = proxy.count("GET /api/");
        let settled = got
            .iter()
            .zip(&expected)
            .enumerate()
            .all(|(i, (g, e))| i == 9 || g.as_ref().ok() == Some(e));
        if settled || Instant::now() > deadline {
            break (got, requests);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    proxy.reset();
    let alone = one_by_one(&*broker, &queries).await;
    let alone_requests = proxy.count("GET /api/");
    rabbit_delete(&queues).await;
    eprintln!(
        "rabbitmq management: depths of 50 queues took {requests} request(s), \
         depth one by one {alone_requests}"
    );
    assert_answers(&got, &expected, 9, "depths");
    assert_eq!(got, alone, "depths equals depth, error for error");
    assert_eq!(requests, 1, "one list of the vhost's queues");
    assert_eq!(alone_requests, 50);
}

/// A unique stream (`_`, no `-`) with `n` queues (queue `i` holding `i % 3` messages), through
/// NATS on `port`.
async fn nats_queues(n: usize, port: u16) -> (NatsConfig, Vec<String>, Vec<u64>) {
    let stream = unique("BD").replace('-', "_");
    let nats = nats_cfg(&stream, port);
    let cfg = BrokerConfig::Nats(nats.clone());
    let mut queues = Vec::new();
    let mut expected = Vec::new();
    for i in 0..n {
        let q = format!("q{i}");
        ensure_nats_queue(&nats, &q, Duration::from_secs(30))
            .await
            .expect("ensure");
        let payloads: Vec<Vec<u8>> = (0..i % 3).map(|j| vec![j as u8]).collect();
        push_batch(&cfg, &q, &payloads).await.expect("push");
        queues.push(q);
        expected.push((i % 3) as u64);
    }
    (nats, queues, expected)
}

async fn nats_delete(stream: &str) {
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(stream)
            .await;
    }
}

const INFO: &str = "$JS.API.CONSUMER.INFO.";
const LIST: &str = "$JS.API.CONSUMER.LIST.";

#[tokio::test]
async fn nats_depths_are_one_consumer_list() {
    let proxy = Proxy::start("127.0.0.1:4222").await;
    let (nats, mut queues, mut expected) = nats_queues(50, proxy.port).await;
    queues.insert(20, "missing".into());
    expected.insert(20, 0);
    let broker = connect(&BrokerConfig::Nats(nats.clone()))
        .await
        .expect("connect");
    let queries = queries(&queues);
    proxy.reset();
    let start = Instant::now();
    let got = depths(&*broker, &queries).await;
    let batched = start.elapsed();
    let (lists, infos) = (proxy.count(LIST), proxy.count(INFO));
    proxy.reset();
    let alone = one_by_one(&*broker, &queries).await;
    let alone_infos = proxy.count(INFO);
    nats_delete(&nats.stream).await;
    eprintln!(
        "nats: depths of 51 queues in {batched:?}: {lists} list and {infos} info requests; \
         one by one {alone_infos} info requests"
    );
    assert_answers(&got, &expected, 20, "depths");
    assert_eq!(got, alone, "depths equals depth, error for error");
    assert_eq!((lists, infos), (1, 0), "one consumer list, no info request");
    assert_eq!(alone_infos, 51);
    assert!(proxy.connections.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn nats_depths_read_every_page_and_check_what_a_paged_list_misses() {
    // 300 consumers: two pages of the list (256 a page).
    let proxy = Proxy::start("127.0.0.1:4222").await;
    let (nats, queues, expected) = nats_queues(300, proxy.port).await;
    let broker = connect(&BrokerConfig::Nats(nats.clone()))
        .await
        .expect("connect");
    let picked = [0usize, 7, 150, 299];
    let mut names: Vec<String> = picked.iter().map(|&i| queues[i].clone()).collect();
    names.push("missing".into());
    let queries = queries(&names);
    proxy.reset();
    let got = depths(&*broker, &queries).await;
    let (lists, infos) = (proxy.count(LIST), proxy.count(INFO));
    let alone = one_by_one(&*broker, &queries).await;
    // Two queries: the second page only if the first lacks one of them.
    proxy.reset();
    let few = depths(&*broker, &queries[..2]).await;
    let (few_lists, few_infos) = (proxy.count(LIST), proxy.count(INFO));
    nats_delete(&nats.stream).await;
    for (k, &i) in picked.iter().enumerate() {
        assert_eq!(got[k].as_ref().ok(), Some(&expected[i]), "queue {i}");
    }
    assert_eq!(
        got[4].as_ref().err().map(|e| e.0.as_str()),
        Some("not_found")
    );
    assert_eq!(got, alone, "depths equals depth, error for error");
    // Both pages, then the missing one on its own (a paged list may miss a consumer).
    assert_eq!((lists, infos), (2, 1));
    assert_eq!(few, alone[..2].to_vec());
    assert!(
        few_lists + few_infos <= 2 && few_infos == 0,
        "{few_lists} lists, {few_infos} infos"
    );
}

#[tokio::test]
async fn nats_depths_of_a_missing_stream_are_each_not_found() {
    let stream = unique("BDX").replace('-', "_");
    let broker = connect(&BrokerConfig::Nats(nats_cfg(&stream, 4222)))
        .await
        .expect("connect");
    let queries = queries(&["a".to_string(), "b".to_string(), "c.d".to_string()]);
    let got = depths(&*broker, &queries).await;
    let alone = one_by_one(&*broker, &queries).await;
    assert_eq!(got, alone);
    assert_eq!(
        got[0].as_ref().err().map(|e| e.0.as_str()),
        Some("not_found")
    );
}

/// Prints the time of 500 depth reads, one by one and in one `depths` call, per broker.
#[tokio::test]
#[ignore = "a benchmark: creates 500 queues per broker; run with --ignored --nocapture"]
async fn depths_of_500_queues_timings() {
    const N: usize = 500;
    async fn time(broker: &dyn QueueBroker, queries: &[DepthQuery], what: &str) {
        // One warm-up call of each, then the best of three.
        let mut before = Duration::MAX;
        let mut after = Duration::MAX;
        let mut answers = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let start = Instant::now();
            answers.0 = one_by_one(broker, queries).await;
            before = before.min(start.elapsed());
            let start = Instant::now();
            answers.1 = depths(broker, queries).await;
            after = after.min(start.elapsed());
        }
        let errors = |answers: &[Answer]| answers.iter().filter(|a| a.is_err()).count();
        eprintln!(
            "{what}: {} queues: one by one {:.1} ms ({} errors), depths {:.1} ms ({} errors), \
             answers equal: {}",
            queries.len(),
            before.as_secs_f64() * 1e3,
            errors(&answers.0),
            after.as_secs_f64() * 1e3,
            errors(&answers.1),
            answers.0 == answers.1
        );
    }

    let (queues, _) = rabbit_queues(N, N, 1).await;
    let rabbit_queries = queries(&queues);
    let amqp = connect(&rabbit_cfg(None)).await.expect("connect");
    time(&*amqp, &rabbit_queries, "rabbitmq amqp, every marker").await;
    if management_up().await {
        let management = connect(&rabbit_cfg(Some(format!("http://{MANAGEMENT}"))))
            .await
            .expect("connect");
        time(&*management, &rabbit_queries, "rabbitmq management").await;
    } else {
        eprintln!("rabbitmq management: skipped, {MANAGEMENT} does not answer");
    }
    let markers: Vec<String> = queues.iter().map(|q| in_flight_queue(q)).collect();
    rabbit_delete(&markers).await;
    time(&*amqp, &rabbit_queries, "rabbitmq amqp, no marker").await;
    rabbit_delete(&queues).await;

    let (nats, queues, _) = nats_queues(N, 4222).await;
    let broker = connect(&BrokerConfig::Nats(nats.clone()))
        .await
        .expect("connect");
    time(&*broker, &queries(&queues), "nats").await;
    nats_delete(&nats.stream).await;
}
