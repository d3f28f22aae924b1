//! Helpers shared by the adapter tests against the real local brokers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use workerpool_queue::{BrokerConfig, RedisConfig};

/// A name no other test (or run) uses: `prefix`, the process id, the time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The local Redis on 6379.
#[allow(dead_code, reason = "not every test binary talks to Redis")]
pub fn redis_cfg() -> BrokerConfig {
    BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port: 6379,
        password: None,
        db: 0,
        tls: false,
    })
}
