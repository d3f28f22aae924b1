//! Depth reads of many queues at once, against the real local Redis (6379) and NATS (4222):
//! [`QueueBroker::depths`] answers each query on its own, and [`batched`] gathers concurrent
//! reads into few calls with the same answers. Every test uses its own keys and streams.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{redis_cfg, unique};

use async_trait::async_trait;
use workerpool_queue::{
    BrokerConfig, BrokerKind, DepthQuery, NatsConfig, QueueBroker, QueueError, batched, connect,
    ensure_nats_queue, processing_list, push_batch,
};

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis on 6379")
}

async fn rpush(conn: &mut redis::aio::MultiplexedConnection, key: &str, n: usize) {
    let items: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let _: u64 = redis::cmd("RPUSH")
        .arg(key)
        .arg(items)
        .query_async(conn)
        .await
        .expect("rpush");
}

async fn del(conn: &mut redis::aio::MultiplexedConnection, keys: &[String]) {
    let _: Result<u64, _> = redis::cmd("DEL").arg(keys).query_async(conn).await;
}

/// Counts the calls that reach a real broker; with `panic_first`, its first batched read panics.
struct Counting {
    inner: Arc<dyn QueueBroker>,
    depth_calls: AtomicUsize,
    depths_calls: AtomicUsize,
    panic_first: bool,
}

impl Counting {
    async fn redis(panic_first: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: connect(&redis_cfg()).await.expect("connect"),
            depth_calls: AtomicUsize::new(0),
            depths_calls: AtomicUsize::new(0),
            panic_first,
        })
    }
}

#[async_trait]
impl QueueBroker for Counting {
    async fn depth(&self, queue: &str, workers: &[String]) -> Result<u64, QueueError> {
        self.depth_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.depth(queue, workers).await
    }
    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        let before = self.depths_calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            !(self.panic_first && before == 0),
            "the first batched read fails"
        );
        self.inner.depths(queries).await
    }
    async fn recover(&self, queue: &str, worker: &str) -> Result<u64, QueueError> {
        self.inner.recover(queue, worker).await
    }
    async fn ping(&self) -> Result<(), QueueError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn redis_depths_sum_each_queue_with_its_workers_and_keep_errors_to_their_query() {
    let broker = connect(&redis_cfg()).await.expect("connect");
    let mut conn = redis().await;
    let (a, b, wrong, empty) = (
        unique("depths-a"),
        unique("depths-b"),
        unique("depths-wrong"),
        unique("depths-empty"),
    );
    rpush(&mut conn, &a, 3).await;
    rpush(&mut conn, &processing_list(&a, "w1"), 1).await;
    rpush(&mut conn, &processing_list(&a, "w2"), 2).await;
    rpush(&mut conn, &b, 5).await;
    let _: () = redis::cmd("SET")
        .arg(&wrong)
        .arg("not a list")
        .query_async(&mut conn)
        .await
        .expect("set");
    let queries = vec![
        DepthQuery {
            queue: a.clone(),
            workers: vec!["w1".into(), "w2".into(), "w3".into()],
        },
        DepthQuery {
            queue: wrong.clone(),
            workers: vec!["w1".into()],
        },
        DepthQuery {
            queue: b.clone(),
            workers: vec![],
        },
        DepthQuery {
            queue: empty.clone(),
            workers: vec!["w1".into()],
        },
    ];
    let got = broker.depths(&queries).await;
    del(
        &mut conn,
        &[
            a.clone(),
            b,
            wrong,
            processing_list(&a, "w1"),
            processing_list(&a, "w2"),
        ],
    )
    .await;
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0].as_ref().ok(),
        Some(&6),
        "3 waiting + 1 + 2 in flight"
    );
    let err = got[1].as_ref().expect_err("a key that is not a list");
    assert_eq!(err.category(), "protocol", "{err}");
    assert_eq!(got[2].as_ref().ok(), Some(&5), "the query after the error");
    assert_eq!(got[3].as_ref().ok(), Some(&0));
    assert!(broker.depths(&[]).await.is_empty());
}

#[tokio::test]
async fn batched_reads_of_many_queues_are_few_calls_with_the_same_answers() {
    let counting = Counting::redis(false).await;
    let broker = batched(counting.clone(), BrokerKind::Redis);
    let mut conn = redis().await;
    let queues: Vec<String> = (0..300).map(|i| unique(&format!("batch-{i}"))).collect();
    for (i, q) in queues.iter().enumerate() {
        rpush(&mut conn, q, i % 7 + 1).await;
    }
    let reads = queues.iter().map(|q| {
        let broker = broker.clone();
        let q = q.clone();
        tokio::spawn(async move { broker.depth(&q, &["w".to_string()]).await })
    });
    let got = futures::future::join_all(reads).await;
    del(&mut conn, &queues).await;
    for (i, r) in got.into_iter().enumerate() {
        let depth = r.expect("task").expect("depth");
        assert_eq!(depth, (i % 7 + 1) as u64, "queue {i}");
    }
    assert_eq!(counting.depth_calls.load(Ordering::SeqCst), 0);
    let calls = counting.depths_calls.load(Ordering::SeqCst);
    assert!(
        (1..=10).contains(&calls),
        "300 concurrent reads took {calls} calls"
    );
    // A read on its own is answered too (nothing waits for company that never comes).
    let q = unique("batch-alone");
    rpush(&mut conn, &q, 2).await;
    let alone = tokio::time::timeout(Duration::from_secs(1), broker.depth(&q, &[])).await;
    del(&mut conn, &[q]).await;
    assert_eq!(alone.expect("in time").expect("depth"), 2);
}

#[tokio::test]
async fn batched_errors_reach_only_the_callers_of_their_queue() {
    let broker = batched(
        connect(&redis_cfg()).await.expect("connect"),
        BrokerKind::Redis,
    );
    let mut conn = redis().await;
    let keys: Vec<String> = (0..20).map(|i| unique(&format!("mixed-{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 2 == 0 {
            rpush(&mut conn, k, i + 1).await;
        } else {
            let _: () = redis::cmd("SET")
                .arg(k)
                .arg("x")
                .query_async(&mut conn)
                .await
                .expect("set");
        }
    }
    let reads = keys.iter().map(|k| {
        let broker = broker.clone();
        let k = k.clone();
        tokio::spawn(async move { broker.depth(&k, &[]).await })
    });
    let got = futures::future::join_all(reads).await;
    del(&mut conn, &keys).await;
    for (i, r) in got.into_iter().enumerate() {
        match r.expect("task") {
            Ok(d) => assert!(i % 2 == 0 && d == (i + 1) as u64, "queue {i}: {d}"),
            Err(e) => assert!(i % 2 == 1 && e.category() == "protocol", "queue {i}: {e}"),
        }
    }
}

#[tokio::test]
async fn nats_depths_read_each_consumer() {
    let stream = unique("DS").replace('-', "_");
    let nats = NatsConfig {
        url: "nats://127.0.0.1:4222".into(),
        stream: stream.clone(),
        user: None,
        password: None,
        token: None,
        tls: false,
    };
    let cfg = BrokerConfig::Nats(nats.clone());
    let (q1, q2) = (
        unique("q1").replace('-', "_"),
        unique("q2").replace('-', "_"),
    );
    for q in [&q1, &q2] {
        ensure_nats_queue(&nats, q, Duration::from_secs(30))
            .await
            .expect("ensure");
    }
    push_batch(&cfg, &q1, &[b"a".to_vec(), b"b".to_vec()])
        .await
        .expect("push");
    push_batch(&cfg, &q2, &[b"c".to_vec()]).await.expect("push");
    let broker = batched(connect(&cfg).await.expect("connect"), BrokerKind::Nats);
    let queries: Vec<DepthQuery> = [&q1, &q2, &"missing".to_string()]
        .iter()
        .map(|q| DepthQuery {
            queue: (*q).clone(),
            workers: vec![],
        })
        .collect();
    let got = broker.depths(&queries).await;
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&stream)
            .await;
    }
    assert_eq!(got[0].as_ref().ok(), Some(&2));
    assert_eq!(got[1].as_ref().ok(), Some(&1));
    assert_eq!(
        got[2].as_ref().err().map(QueueError::category),
        Some("not_found")
    );
}

#[tokio::test]
async fn a_failed_batch_answers_its_callers_and_later_reads_still_go_out() {
    let broker = batched(Counting::redis(true).await, BrokerKind::Redis);
    let q = unique("after-panic");
    let first = tokio::time::timeout(Duration::from_secs(2), broker.depth(&q, &[]))
        .await
        .expect("answered, not left waiting");
    assert_eq!(
        first.expect_err("its flush panicked").category(),
        "protocol"
    );
    let second = tokio::time::timeout(Duration::from_secs(2), broker.depth(&q, &[]))
        .await
        .expect("a new flush runs");
    assert_eq!(second.expect("depth"), 0);
}
