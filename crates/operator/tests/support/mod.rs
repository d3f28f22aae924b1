//! What several of the operator's integration tests share: a connection to the machine's
//! Redis and the poll count `/metrics` gives for a QWorker.
#![allow(dead_code)]

use workerpool_operator::metrics::Metrics;

/// A connection to the machine's Redis (127.0.0.1:6379).
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis at 127.0.0.1:6379")
}

/// How many polls `/metrics` counts for QWorker `namespace/name`.
pub fn polls(metrics: &Metrics, namespace: &str, name: &str) -> u64 {
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let series = format!(
        "qworker_poll_duration_seconds_count{{namespace=\"{namespace}\",qworker=\"{name}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().expect("count"))
}
