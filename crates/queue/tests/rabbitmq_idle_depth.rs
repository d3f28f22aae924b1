//! RabbitMQ depth without the management API, against the real local broker (5672,
//! guest/guest): idle workers hold consumers but count nothing, busy workers count one each,
//! so a pool of idle workers over an empty queue can scale to zero.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use workerpool_queue::{
    BrokerConfig, QueueBroker, RabbitMqConfig, TaskSource, amqp_url, connect, in_flight_queue,
    push_batch, task_source,
};

fn cfg() -> BrokerConfig {
    BrokerConfig::RabbitMq(RabbitMqConfig {
        url: amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false),
        management_url: None,
    })
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Polls `depth` until it equals `expected` (RabbitMQ updates counters asynchronously).
async fn assert_depth(broker: &dyn QueueBroker, queue: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let depth = broker.depth(queue, &[]).await;
        match depth {
            Ok(d) if d == expected => return,
            _ if Instant::now() > deadline => {
                panic!("depth of {queue}: {depth:?}, expected {expected}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn delete(queues: &[String]) {
    let url = amqp_url("127.0.0.1", 5672, "/", "guest", "guest", false);
    if let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        for q in queues {
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
async fn idle_workers_count_nothing_busy_ones_count_one_each() {
    let queue = unique("rabbit-idle");
    let cfg = cfg();
    // The queue exists, empty.
    push_batch(&cfg, &queue, &[]).await.expect("declare");
    let broker = connect(&cfg).await.expect("connect");

    // Three idle workers: real consumers of the queue, waiting for a task.
    let mut workers: Vec<Box<dyn TaskSource>> = Vec::new();
    for i in 0..3 {
        workers.push(
            task_source(&cfg, &queue, &format!("w-{i}"))
                .await
                .expect("source"),
        );
    }
    for w in &mut workers {
        assert!(
            w.take(Duration::from_millis(200))
                .await
                .expect("take")
                .is_none()
        );
    }
    // 0 ready, 3 consumers, none busy: depth 0, so ceil(0 × scalingFactor) = 0 workers.
    assert_depth(&*broker, &queue, 0).await;

    // Two tasks: two workers hold one each (unacknowledged), the third waits.
    push_batch(&cfg, &queue, &[b"a".to_vec(), b"b".to_vec()])
        .await
        .expect("push");
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 2 && Instant::now() < deadline {
        for (i, w) in workers.iter_mut().enumerate() {
            if held.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if let Some(task) = w.take(Duration::from_millis(100)).await.expect("take") {
                held.push((i, task));
            }
        }
    }
    assert_eq!(held.len(), 2, "both tasks taken");
    assert_depth(&*broker, &queue, 2).await;

    // Done: acknowledged, the workers wait again and count nothing.
    for (i, task) in held {
        workers[i].ack(task).await.expect("ack");
    }
    for w in &mut workers {
        assert!(
            w.take(Duration::from_millis(200))
                .await
                .expect("take")
                .is_none()
        );
    }
    assert_depth(&*broker, &queue, 0).await;

    // A busy worker that goes away is unmarked with its connection, and its task is ready again.
    push_batch(&cfg, &queue, &[b"c".to_vec()])
        .await
        .expect("push");
    let mut holder = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.is_none() && Instant::now() < deadline {
        for (i, w) in workers.iter_mut().enumerate() {
            if holder.is_none()
                && let Some(task) = w.take(Duration::from_millis(100)).await.expect("take")
            {
                holder = Some((i, task));
            }
        }
    }
    let (i, task) = holder.expect("c taken");
    assert_depth(&*broker, &queue, 1).await;
    drop(task);
    workers[i].close().await.expect("close");
    // Redelivered to a waiting worker, which marks itself busy.
    let mut retaken = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while retaken.is_none() && Instant::now() < deadline {
        for (j, w) in workers.iter_mut().enumerate() {
            if j != i
                && retaken.is_none()
                && let Some(task) = w.take(Duration::from_millis(100)).await.expect("take")
            {
                assert_eq!(task.payload, b"c");
                retaken = Some((j, task));
            }
        }
    }
    let (j, task) = retaken.expect("c taken again");
    assert_depth(&*broker, &queue, 1).await;
    workers[j].ack(task).await.expect("ack");

    for mut w in workers {
        let _ = w.close().await;
    }
    delete(&[queue.clone(), in_flight_queue(&queue)]).await;
}

#[tokio::test]
async fn without_the_marker_queue_depth_counts_consumers() {
    // Workers of an SDK that does not mark itself: the marker queue does not exist, and the
    // depth falls back to ready + consumers (an upper bound).
    let queue = unique("rabbit-legacy");
    let cfg = cfg();
    push_batch(&cfg, &queue, &[b"x".to_vec()])
        .await
        .expect("push");
    let broker = connect(&cfg).await.expect("connect");
    assert_depth(&*broker, &queue, 1).await;
    // The failed marker lookup does not break the next calls.
    assert_depth(&*broker, &queue, 1).await;
    broker.ping().await.expect("ping");
    delete(&[queue]).await;
}
