//! In-process tests of `Worker::run` against the real local brokers (Redis 6379, RabbitMQ 5672,
//! NATS 4222): drain, stale hash, handler errors, shutdown with and without enough grace.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use workerpool_worker::workerpool_queue::{
    self, BrokerConfig, NatsConfig, RabbitMqConfig, RedisConfig, amqp_url, processing_list,
};
use workerpool_worker::{ExitReason, Worker, WorkerBuilder};

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn redis_cfg() -> BrokerConfig {
    BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port: 6379,
        password: None,
        db: 0,
        tls: false,
    })
}

fn annotations_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}.annotations"))
}

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("t{i}").into_bytes()).collect()
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

async fn llen(key: &str) -> u64 {
    let mut conn = redis_conn().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("LLEN")
}

async fn lrange(key: &str) -> Vec<String> {
    let mut conn = redis_conn().await;
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("LRANGE")
}

async fn del(keys: &[String]) {
    let mut conn = redis_conn().await;
    let _: Result<u64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
}

fn builder(queue: &str, pod: &str, annotations: &PathBuf) -> WorkerBuilder {
    Worker::builder(redis_cfg(), queue, pod)
        .pod_spec_hash("h1")
        .annotations_file(annotations)
        .poll_interval(Duration::from_millis(200))
        .error_backoff(Duration::from_millis(10))
}

async fn run_bounded(
    worker: Worker,
    handler: impl AsyncFnMut(Vec<u8>) -> Result<(), String>,
) -> ExitReason {
    tokio::time::timeout(Duration::from_secs(30), worker.run(handler))
        .await
        .expect("worker must exit in time")
        .expect("worker must not fail")
}

#[tokio::test]
async fn drains_between_tasks_when_annotated() {
    let queue = unique("drain");
    let pod = unique("pod");
    let path = annotations_path(&queue);
    std::fs::write(&path, "quickube.com/current-pod-spec-hash=\"h1\"\n").expect("write");
    workerpool_queue::push_batch(&redis_cfg(), &queue, &payloads(10))
        .await
        .expect("push");
    let done = Arc::new(Mutex::new(Vec::new()));
    let worker = builder(&queue, &pod, &path).build();
    let (d, p) = (Arc::clone(&done), path.clone());
    let reason = run_bounded(worker, async move |payload: Vec<u8>| {
        let n = {
            let mut d = d.lock().expect("lock");
            d.push(String::from_utf8_lossy(&payload).into_owned());
            d.len()
        };
        if n == 2 {
            std::fs::write(
                &p,
                "quickube.com/current-pod-spec-hash=\"h1\"\nquickube.com/drain=\"true\"\n",
            )
            .map_err(|e| e.to_string())?;
        }
        // Longer than the annotation refresh, so the next check sees the new file.
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Drained);
    let done = done.lock().expect("lock").clone();
    assert_eq!(
        done,
        ["t0", "t1"],
        "the task in hand finishes, no new one starts"
    );
    assert_eq!(llen(&processing_list(&queue, &pod)).await, 0);
    assert_eq!(llen(&queue).await, 8);
    del(std::slice::from_ref(&queue)).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn exits_on_stale_hash_without_taking() {
    let queue = unique("stale");
    let pod = unique("pod");
    let path = annotations_path(&queue);
    std::fs::write(&path, "quickube.com/current-pod-spec-hash=\"h2\"\n").expect("write");
    workerpool_queue::push_batch(&redis_cfg(), &queue, &payloads(3))
        .await
        .expect("push");
    let reason = run_bounded(builder(&queue, &pod, &path).build(), async |_| {
        Err("must not run".to_owned())
    })
    .await;
    assert_eq!(reason, ExitReason::StaleHash);
    assert_eq!(llen(&queue).await, 3);
    // The same hash as the annotation: not stale, runs until drained.
    std::fs::write(&path, "quickube.com/current-pod-spec-hash=\"h2\"\n").expect("write");
    let worker = builder(&queue, &pod, &path).pod_spec_hash("h2").build();
    let p = path.clone();
    let reason = run_bounded(worker, async move |_| {
        std::fs::write(&p, "quickube.com/drain=\"scale-down\"\n").map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Drained);
    assert_eq!(llen(&queue).await, 2);
    del(std::slice::from_ref(&queue)).await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn handler_error_requeues_then_succeeds() {
    let queue = unique("retry");
    let pod = unique("pod");
    let path = annotations_path(&queue);
    workerpool_queue::push(&redis_cfg(), &queue, b"flaky")
        .await
        .expect("push");
    let worker = builder(&queue, &pod, &path).build();
    let shutdown = worker.shutdown_handle();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = Arc::clone(&attempts);
    let reason = run_bounded(worker, async move |payload: Vec<u8>| {
        assert_eq!(payload, b"flaky");
        if a.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err("transient failure".to_owned());
        }
        shutdown.shutdown();
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Signal);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(llen(&queue).await, 0);
    assert_eq!(llen(&processing_list(&queue, &pod)).await, 0);
}

#[tokio::test]
async fn shutdown_lets_the_current_task_finish_within_grace() {
    let queue = unique("grace");
    let pod = unique("pod");
    let path = annotations_path(&queue);
    workerpool_queue::push_batch(&redis_cfg(), &queue, &payloads(3))
        .await
        .expect("push");
    let worker = builder(&queue, &pod, &path)
        .grace_period(Duration::from_secs(5))
        .build();
    let shutdown = worker.shutdown_handle();
    let done = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&done);
    let reason = run_bounded(worker, async move |payload: Vec<u8>| {
        shutdown.shutdown();
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.lock()
            .expect("lock")
            .push(String::from_utf8_lossy(&payload).into_owned());
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Signal);
    assert_eq!(*done.lock().expect("lock"), ["t0"]);
    assert_eq!(
        lrange(&queue).await,
        ["t2", "t1"],
        "t0 acknowledged, the rest untouched"
    );
    assert_eq!(llen(&processing_list(&queue, &pod)).await, 0);
    del(std::slice::from_ref(&queue)).await;
}

#[tokio::test]
async fn shutdown_requeues_the_task_when_grace_expires() {
    let queue = unique("expire");
    let pod = unique("pod");
    let path = annotations_path(&queue);
    workerpool_queue::push_batch(&redis_cfg(), &queue, &payloads(3))
        .await
        .expect("push");
    let worker = builder(&queue, &pod, &path)
        .grace_period(Duration::from_millis(200))
        .build();
    let shutdown = worker.shutdown_handle();
    let reason = run_bounded(worker, async move |_| {
        shutdown.shutdown();
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Signal);
    // t0 went back to the right end, so it is taken next.
    assert_eq!(lrange(&queue).await, ["t2", "t1", "t0"]);
    assert_eq!(llen(&processing_list(&queue, &pod)).await, 0);
    del(std::slice::from_ref(&queue)).await;
}

/// Processes `n` tasks on `cfg` through `Worker::run`, then stops it; checks depth is 0 after.
async fn process_all(cfg: BrokerConfig, queue: &str, n: usize) {
    workerpool_queue::push_batch(&cfg, queue, &payloads(n))
        .await
        .expect("push");
    let broker = workerpool_queue::connect(&cfg).await.expect("connect");
    assert_eq!(broker.depth(queue, &[]).await.ok(), Some(n as u64));
    let path = annotations_path(queue);
    let worker = Worker::builder(cfg.clone(), queue, unique("pod"))
        .annotations_file(&path)
        .poll_interval(Duration::from_millis(200))
        .build();
    let shutdown = worker.shutdown_handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let reason = run_bounded(worker, async move |payload: Vec<u8>| {
        let count = {
            let mut s = s.lock().expect("lock");
            s.push(String::from_utf8_lossy(&payload).into_owned());
            s.len()
        };
        if count == n {
            shutdown.shutdown();
        }
        Ok(())
    })
    .await;
    assert_eq!(reason, ExitReason::Signal);
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let depth = broker.depth(queue, &[]).await;
        if depth.as_ref().ok() == Some(&0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "depth stays {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn runs_on_rabbitmq() {
    let queue = unique("rabbit");
    let url = amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false);
    let cfg = BrokerConfig::RabbitMq(RabbitMqConfig {
        url: url.clone(),
        management_url: None,
    });
    process_all(cfg, &queue, 5).await;
    if let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        for q in [queue.clone(), workerpool_queue::in_flight_queue(&queue)] {
            let _ = channel
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }
}

#[tokio::test]
async fn runs_on_nats() {
    let stream = unique("S");
    let queue = unique("q");
    let nats = NatsConfig {
        url: "nats://127.0.0.1:4222".into(),
        stream: stream.clone(),
        user: None,
        password: None,
        token: None,
        tls: false,
    };
    workerpool_queue::ensure_nats_queue(&nats, &queue, Duration::from_secs(30))
        .await
        .expect("ensure");
    process_all(BrokerConfig::Nats(nats), &queue, 5).await;
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&stream)
            .await;
    }
}

/// A NATS task that runs longer than the consumer's `ack_wait` is reported in progress while
/// its handler runs, so JetStream does not redeliver it to another worker meanwhile.
#[tokio::test]
async fn a_long_nats_task_is_not_redelivered_while_it_runs() {
    let stream = unique("S");
    let queue = unique("slow");
    let nats = NatsConfig {
        url: "nats://127.0.0.1:4222".into(),
        stream: stream.clone(),
        user: None,
        password: None,
        token: None,
        tls: false,
    };
    let ack_wait = Duration::from_secs(2);
    workerpool_queue::ensure_nats_queue(&nats, &queue, ack_wait)
        .await
        .expect("ensure");
    let cfg = BrokerConfig::Nats(nats);
    workerpool_queue::push_batch(&cfg, &queue, &payloads(1))
        .await
        .expect("push");
    let worker = |pod: String| {
        Worker::builder(cfg.clone(), &queue, pod)
            .annotations_file(annotations_path(&queue))
            .poll_interval(Duration::from_millis(200))
            .build()
    };
    let slow = worker(unique("slow-pod"));
    let slow_stop = slow.shutdown_handle();
    let other = worker(unique("other-pod"));
    let other_stop = other.shutdown_handle();
    let seen_by_other = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&seen_by_other);
    let started = std::time::Instant::now();
    // The other worker starts once the slow one holds the task.
    let (took, taken) = tokio::sync::oneshot::channel::<()>();
    let mut took = Some(took);
    let slow_run = async {
        let reason = run_bounded(slow, async move |_payload: Vec<u8>| {
            if let Some(took) = took.take() {
                let _ = took.send(());
            }
            // Three times the ack wait.
            tokio::time::sleep(ack_wait * 3).await;
            slow_stop.shutdown();
            Ok(())
        })
        .await;
        // One more ack wait for JetStream to redeliver, were the task not acknowledged.
        tokio::time::sleep(ack_wait + Duration::from_millis(500)).await;
        other_stop.shutdown();
        reason
    };
    let other_run = async {
        let _ = taken.await;
        run_bounded(other, async move |payload: Vec<u8>| {
            seen.lock().expect("lock").push(payload);
            Ok(())
        })
        .await
    };
    let (reason, other_reason) = tokio::join!(slow_run, other_run);
    assert_eq!(reason, ExitReason::Signal);
    assert_eq!(other_reason, ExitReason::Signal);
    assert!(started.elapsed() >= ack_wait * 3, "the slow handler ran");
    assert!(
        seen_by_other.lock().expect("lock").is_empty(),
        "the task was redelivered to another worker while it ran"
    );
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&stream)
            .await;
    }
}
