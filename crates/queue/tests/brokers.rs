//! Adapter tests against the real local brokers: Redis on 6379, RabbitMQ on 5672 (guest/guest),
//! NATS with JetStream on 4222. Every test uses its own queue, stream and key names.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{redis_cfg, unique};

use workerpool_queue::{
    BrokerConfig, NatsConfig, QueueBroker, RabbitMqConfig, RedisConfig, Task, TaskSource, amqp_url,
    connect, ensure_nats_queue, processing_list, push, push_batch, task_source,
};

const WAIT: Duration = Duration::from_millis(500);

fn rabbit_cfg() -> BrokerConfig {
    BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false),
        management_url: None,
    })
}

fn nats_cfg(stream: &str) -> NatsConfig {
    NatsConfig {
        url: "nats://127.0.0.1:4222".into(),
        stream: stream.into(),
        user: None,
        password: None,
        token: None,
        tls: false,
    }
}

fn payloads(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|n| n.as_bytes().to_vec()).collect()
}

async fn take_one(source: &mut Box<dyn TaskSource>) -> Task {
    match source.take(Duration::from_secs(3)).await {
        Ok(Some(task)) => task,
        other => panic!("expected a task, got {other:?}"),
    }
}

/// Polls `depth` until it equals `expected` (brokers update counters asynchronously).
async fn assert_depth(broker: &dyn QueueBroker, queue: &str, workers: &[String], expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let depth = broker.depth(queue, workers).await;
        match depth {
            Ok(d) if d == expected => return,
            _ if Instant::now() > deadline => {
                panic!("depth of {queue} with {workers:?}: {depth:?}, expected {expected}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn redis_cleanup(keys: &[String]) {
    let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
        return;
    };
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let _: Result<u64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

#[tokio::test]
async fn redis_depth_take_ack_requeue_recover() {
    let queue = unique("redis-q");
    let (w1, w2) = (unique("w1"), unique("w2"));
    let cfg = redis_cfg();
    let broker = connect(&cfg).await.expect("connect");
    broker.ping().await.expect("ping");
    assert_eq!(broker.depth(&queue, &[]).await.ok(), Some(0));
    assert_eq!(
        push_batch(&cfg, &queue, &payloads(&["a", "b", "c"]))
            .await
            .ok(),
        Some(3)
    );
    let live = [w1.clone(), w2.clone()];
    assert_depth(&*broker, &queue, &live, 3).await;

    let mut s1 = task_source(&cfg, &queue, &w1).await.expect("source");
    let a = take_one(&mut s1).await;
    assert_eq!(a.payload, b"a", "the first pushed is taken first");
    // In flight: counted only through the live worker's processing list.
    assert_depth(&*broker, &queue, &live, 3).await;
    assert_depth(&*broker, &queue, &[], 2).await;
    s1.ack(a).await.expect("ack");
    assert_depth(&*broker, &queue, &live, 2).await;

    let b = take_one(&mut s1).await;
    assert_eq!(b.payload, b"b");
    s1.requeue(b).await.expect("requeue");
    let b = take_one(&mut s1).await;
    assert_eq!(b.payload, b"b", "a requeued task is taken next");
    assert_depth(&*broker, &queue, &live, 2).await;

    // Worker 1 dies holding b: the operator recovers its processing list.
    drop(s1);
    assert_eq!(broker.recover(&queue, &w1).await.ok(), Some(1));
    assert_eq!(broker.recover(&queue, &w1).await.ok(), Some(0));
    assert_depth(&*broker, &queue, &[], 2).await;
    let mut s2 = task_source(&cfg, &queue, &w2).await.expect("source");
    let b = take_one(&mut s2).await;
    assert_eq!(b.payload, b"b", "recovered tasks are taken next");
    s2.ack(b).await.expect("ack");
    let c = take_one(&mut s2).await;
    assert_eq!(c.payload, b"c");
    s2.ack(c).await.expect("ack");
    assert_eq!(
        s2.take(Duration::from_millis(100))
            .await
            .ok()
            .map(|t| t.is_none()),
        Some(true)
    );
    assert_eq!(
        s2.take(Duration::ZERO).await.ok().map(|t| t.is_none()),
        Some(true)
    );
    s2.close().await.expect("close");
    assert_depth(&*broker, &queue, &live, 0).await;
    redis_cleanup(&[
        queue.clone(),
        processing_list(&queue, &w1),
        processing_list(&queue, &w2),
    ])
    .await;
}

#[tokio::test]
async fn redis_recover_keeps_order_and_restart_requeues_leftovers() {
    let queue = unique("redis-q");
    let w = unique("w");
    let cfg = redis_cfg();
    let broker = connect(&cfg).await.expect("connect");
    push_batch(&cfg, &queue, &payloads(&["1", "2", "3", "4"]))
        .await
        .expect("push");
    // A worker (using the source directly) holds two tasks, then its container restarts.
    let mut s = task_source(&cfg, &queue, &w).await.expect("source");
    let one = take_one(&mut s).await;
    let two = take_one(&mut s).await;
    assert_eq!(
        (one.payload.as_slice(), two.payload.as_slice()),
        (&b"1"[..], &b"2"[..])
    );
    drop(s);
    assert_depth(&*broker, &queue, &[], 2).await;
    // The new container with the same pod name puts them back first, in their order.
    let mut s = task_source(&cfg, &queue, &w).await.expect("source");
    assert_depth(&*broker, &queue, &[], 4).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let task = take_one(&mut s).await;
        order.push(String::from_utf8_lossy(&task.payload).into_owned());
        s.ack(task).await.expect("ack");
    }
    assert_eq!(order, ["1", "2", "3", "4"]);
    redis_cleanup(&[queue.clone(), processing_list(&queue, &w)]).await;
}

#[tokio::test]
async fn redis_take_times_out_empty() {
    let queue = unique("redis-q");
    let cfg = redis_cfg();
    let mut s = task_source(&cfg, &queue, "w").await.expect("source");
    let started = Instant::now();
    assert_eq!(s.take(WAIT).await.ok().map(|t| t.is_none()), Some(true));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn refused_connections_have_category_connect() {
    let redis = BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port: 1,
        password: None,
        db: 0,
        tls: false,
    });
    let rabbit = BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 1, "/", "guest", "guest", false),
        management_url: None,
    });
    let nats = BrokerConfig::Nats(NatsConfig {
        url: "nats://127.0.0.1:1".into(),
        ..nats_cfg("S")
    });
    for cfg in [redis, rabbit, nats] {
        let started = Instant::now();
        let err = connect(&cfg).await.err().expect("connect must fail");
        assert_eq!(err.category(), "connect", "{cfg:?}: {err}");
        let err = task_source(&cfg, "q", "w").await.err().expect("must fail");
        assert_eq!(err.category(), "connect", "{cfg:?}: {err}");
        let err = push(&cfg, "q", b"x").await.expect_err("must fail");
        assert_eq!(err.category(), "connect", "{cfg:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

async fn rabbit_delete(queue: &str) {
    let url = amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false);
    if let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        for q in [queue.to_owned(), workerpool_queue::in_flight_queue(queue)] {
            let _ = channel
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

#[tokio::test]
async fn rabbitmq_depth_take_ack_requeue() {
    let queue = unique("rabbit-q");
    let cfg = rabbit_cfg();
    let broker = connect(&cfg).await.expect("connect");
    broker.ping().await.expect("ping");
    let err = broker
        .depth(&queue, &[])
        .await
        .expect_err("queue does not exist yet");
    assert_eq!(err.category(), "not_found", "{err}");
    let err = task_source(&cfg, &queue, "w")
        .await
        .err()
        .expect("queue does not exist yet");
    assert_eq!(err.category(), "not_found", "{err}");

    push_batch(&cfg, &queue, &payloads(&["a", "b", "c"]))
        .await
        .expect("push");
    // The channel closed by the not_found error is re-created.
    assert_depth(&*broker, &queue, &[], 3).await;
    broker.ping().await.expect("ping");

    let mut s = task_source(&cfg, &queue, "w").await.expect("source");
    let a = take_one(&mut s).await;
    assert_eq!(a.payload, b"a");
    // 2 ready + 1 consumer (holding a).
    assert_depth(&*broker, &queue, &[], 3).await;
    s.ack(a).await.expect("ack");
    // b is prefetched (unacked): 1 ready + 1 consumer.
    assert_depth(&*broker, &queue, &[], 2).await;
    let b = take_one(&mut s).await;
    assert_eq!(b.payload, b"b");
    s.requeue(b).await.expect("requeue");
    let b = take_one(&mut s).await;
    assert_eq!(
        b.payload, b"b",
        "a requeued message is delivered again first"
    );
    assert_eq!(broker.recover(&queue, "w").await.ok(), Some(0));

    // Closing with a task in hand returns it (the broker redelivers unacked messages).
    drop(b);
    s.close().await.expect("close");
    assert_depth(&*broker, &queue, &[], 2).await;
    let mut s = task_source(&cfg, &queue, "w2").await.expect("source");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let t = take_one(&mut s).await;
        seen.push(String::from_utf8_lossy(&t.payload).into_owned());
        s.ack(t).await.expect("ack");
    }
    seen.sort();
    assert_eq!(seen, ["b", "c"]);
    assert_eq!(
        s.take(Duration::from_millis(200))
            .await
            .ok()
            .map(|t| t.is_none()),
        Some(true)
    );
    s.close().await.expect("close");
    assert_depth(&*broker, &queue, &[], 0).await;
    rabbit_delete(&queue).await;
}

#[tokio::test]
async fn rabbitmq_bad_password_is_auth() {
    let cfg = BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 5672, "/", "guest", "wrong-password", false),
        management_url: None,
    });
    let err = connect(&cfg).await.err().expect("must fail");
    assert_eq!(err.category(), "auth", "{err}");
    assert!(!err.to_string().contains("wrong-password"));
}

async fn nats_delete(stream: &str) {
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(stream).await;
    }
}

#[tokio::test]
async fn nats_depth_take_ack_requeue() {
    let stream = unique("S").replace('-', "_");
    let queue = unique("q").replace('-', "_");
    let nats = nats_cfg(&stream);
    let cfg = BrokerConfig::Nats(nats.clone());
    let broker = connect(&cfg).await.expect("connect");
    broker.ping().await.expect("ping");
    let err = broker.depth(&queue, &[]).await.expect_err("no stream yet");
    assert_eq!(err.category(), "not_found", "{err}");
    ensure_nats_queue(&nats, &queue, Duration::from_secs(30))
        .await
        .expect("ensure");
    ensure_nats_queue(&nats, &queue, Duration::from_secs(30))
        .await
        .expect("ensure is idempotent");
    let err = broker
        .depth("missing", &[])
        .await
        .expect_err("no such consumer");
    assert_eq!(err.category(), "not_found", "{err}");
    let err = task_source(&cfg, "missing", "w")
        .await
        .err()
        .expect("no such consumer");
    assert_eq!(err.category(), "not_found", "{err}");

    push_batch(&cfg, &queue, &payloads(&["a", "b", "c"]))
        .await
        .expect("push");
    assert_depth(&*broker, &queue, &[], 3).await;
    let mut s = task_source(&cfg, &queue, "w").await.expect("source");
    let a = take_one(&mut s).await;
    assert_eq!(a.payload, b"a");
    // 2 pending + 1 ack pending.
    assert_depth(&*broker, &queue, &[], 3).await;
    s.ack(a).await.expect("ack");
    assert_depth(&*broker, &queue, &[], 2).await;
    let b = take_one(&mut s).await;
    assert_eq!(b.payload, b"b");
    s.requeue(b).await.expect("nak");
    assert_depth(&*broker, &queue, &[], 2).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let t = take_one(&mut s).await;
        seen.push(String::from_utf8_lossy(&t.payload).into_owned());
        s.ack(t).await.expect("ack");
    }
    seen.sort();
    assert_eq!(seen, ["b", "c"], "the NAKed message is redelivered");
    assert_eq!(
        s.take(Duration::from_millis(200))
            .await
            .ok()
            .map(|t| t.is_none()),
        Some(true)
    );
    assert_depth(&*broker, &queue, &[], 0).await;
    assert_eq!(broker.recover(&queue, "w").await.ok(), Some(0));
    nats_delete(&stream).await;
}

#[tokio::test]
async fn redis_bad_password_is_auth() {
    let cfg = BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port: 6379,
        password: Some("wrong-password".into()),
        db: 0,
        tls: false,
    });
    let err = connect(&cfg).await.err().expect("must fail");
    assert_eq!(err.category(), "auth", "{err}");
    assert!(!err.to_string().contains("wrong-password"));
}

/// A server that accepts TCP connections and never answers: every call gives up in time.
#[tokio::test]
async fn silent_server_times_out_instead_of_hanging() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let configs = [
        BrokerConfig::Redis(RedisConfig {
            host: "127.0.0.1".into(),
            port,
            password: None,
            db: 0,
            tls: false,
        }),
        BrokerConfig::RabbitMq(RabbitMqConfig {
            url: amqp_url("127.0.0.1", port, "/", "guest", "guest", false),
            management_url: None,
        }),
        BrokerConfig::Nats(NatsConfig {
            url: format!("nats://127.0.0.1:{port}"),
            ..nats_cfg("S")
        }),
    ];
    for cfg in configs {
        let started = Instant::now();
        let err = connect(&cfg).await.err().expect("must fail");
        let took = started.elapsed();
        assert!(
            matches!(err.category(), "timeout" | "connect"),
            "{cfg:?}: {err}"
        );
        assert!(took < Duration::from_secs(8), "{cfg:?} took {took:?}");
    }
    drop(listener);
}

/// Every list [`QueueBroker::holders_page`] reports for `queues`, step by step with `budget`;
/// also the number of steps.
async fn sweep(
    broker: &dyn QueueBroker,
    queues: &[&str],
    budget: u32,
) -> (Vec<(String, String)>, usize) {
    let queues: BTreeSet<String> = queues.iter().map(|q| q.to_string()).collect();
    let (mut found, mut steps, mut cursor) = (Vec::new(), 0, 0);
    loop {
        let page = broker
            .holders_page(&queues, cursor, budget)
            .await
            .expect("holders_page");
        steps += 1;
        found.extend(page.holders.into_iter().map(|h| (h.queue, h.worker)));
        cursor = page.cursor;
        if cursor == 0 {
            break;
        }
    }
    found.sort();
    found.dedup();
    (found, steps)
}

#[tokio::test]
async fn redis_holders_are_the_workers_with_tasks_in_flight() {
    // A queue name with glob characters: the scan must match it literally.
    let queue = unique("redis-h*?[x]");
    let other = format!("{queue}x");
    let unasked = unique("redis-h-unasked");
    let cfg = redis_cfg();
    let broker = connect(&cfg).await.expect("connect");
    let pair = |q: &str, w: &str| (q.to_string(), w.to_string());
    assert_eq!(sweep(&*broker, &[&queue], 100).await.0, vec![]);
    push_batch(&cfg, &queue, &payloads(&["a", "b"]))
        .await
        .expect("push");
    push_batch(&cfg, &other, &payloads(&["c"]))
        .await
        .expect("push");
    push_batch(&cfg, &unasked, &payloads(&["d"]))
        .await
        .expect("push");
    let mut s1 = task_source(&cfg, &queue, "w-1").await.expect("source");
    let mut s2 = task_source(&cfg, &queue, "w-2").await.expect("source");
    let mut s3 = task_source(&cfg, &other, "w-3").await.expect("source");
    let mut s4 = task_source(&cfg, &unasked, "w-4").await.expect("source");
    let _t1 = take_one(&mut s1).await;
    let t2 = take_one(&mut s2).await;
    let _t3 = take_one(&mut s3).await;
    let _t4 = take_one(&mut s4).await;
    assert_eq!(
        sweep(&*broker, &[&queue], 100).await.0,
        vec![pair(&queue, "w-1"), pair(&queue, "w-2")]
    );
    // Several queues: one pass over the keyspace, a queue not asked for is left out, and a
    // budget of one call per step still finds everything, in more steps.
    let (found, _) = sweep(&*broker, &[&queue, &other], 1).await;
    assert_eq!(
        found,
        vec![
            pair(&queue, "w-1"),
            pair(&queue, "w-2"),
            pair(&other, "w-3")
        ]
    );
    let (_, steps_at_once) = sweep(&*broker, &[&queue, &other], 1_000).await;
    assert_eq!(steps_at_once, 1, "a step goes on until its budget is spent");
    s2.ack(t2).await.expect("ack");
    assert_eq!(
        sweep(&*broker, &[&queue], 100).await.0,
        vec![pair(&queue, "w-1")],
        "an empty processing list does not exist in Redis"
    );
    assert_eq!(broker.recover(&queue, "w-1").await.ok(), Some(1));
    assert_eq!(sweep(&*broker, &[&queue], 100).await.0, vec![]);
    redis_cleanup(&[
        queue.clone(),
        other.clone(),
        processing_list(&queue, "w-1"),
        processing_list(&other, "w-3"),
        unasked.clone(),
        processing_list(&unasked, "w-4"),
    ])
    .await;
}
