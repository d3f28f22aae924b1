//! The machine's real Redis (127.0.0.1:6379) as the scenarios' broker. Each run uses one of the
//! databases 1-15 (chosen per process) and its own queue names, so that it shares nothing with
//! other tests.

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// A connection to the scenario's Redis database.
pub struct TestRedis {
    /// The database index the ScalerConfig must name.
    pub db: i64,
    conn: MultiplexedConnection,
}

impl TestRedis {
    /// Connects to the local Redis, to a database picked for this process.
    pub async fn connect() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let db = 1 + i64::from((std::process::id() ^ nanos) % 15);
        let client = redis::Client::open(format!("redis://127.0.0.1:6379/{db}"))
            .map_err(|e| format!("redis URL: {e}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach the local Redis at 127.0.0.1:6379: {e}"))?;
        Ok(Self { db, conn })
    }

    /// The ScalerConfig `spec.config` patch that points at this database (no password).
    pub fn scaler_config_patch(&self) -> serde_json::Value {
        serde_json::json!({"spec": {"config": {
            "host": "127.0.0.1", "port": "6379", "db": self.db, "password": null
        }}})
    }

    /// Replaces `key` with `n` placeholder tasks (`task-1` ...).
    pub async fn set_len(&self, key: &str, n: u64) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let _: () = conn.del(key).await.map_err(|e| format!("DEL {key}: {e}"))?;
        for i in 1..=n {
            let _: () = conn
                .rpush(key, format!("task-{i}"))
                .await
                .map_err(|e| format!("RPUSH {key}: {e}"))?;
        }
        Ok(())
    }

    /// Pushes one task to `key`.
    pub async fn push(&self, key: &str, task: &str) -> Result<(), String> {
        let mut conn = self.conn.clone();
        conn.lpush(key, task)
            .await
            .map_err(|e| format!("LPUSH {key}: {e}"))
    }

    /// The length of list `key`.
    pub async fn len(&self, key: &str) -> Result<u64, String> {
        let mut conn = self.conn.clone();
        conn.llen(key).await.map_err(|e| format!("LLEN {key}: {e}"))
    }

    /// The elements of list `key`.
    pub async fn items(&self, key: &str) -> Result<Vec<String>, String> {
        let mut conn = self.conn.clone();
        conn.lrange(key, 0, -1)
            .await
            .map_err(|e| format!("LRANGE {key}: {e}"))
    }

    /// The keys matching the glob `pattern` (`KEYS`: the scenario's database is small).
    pub async fn keys(&self, pattern: &str) -> Result<Vec<String>, String> {
        let mut conn = self.conn.clone();
        conn.keys(pattern)
            .await
            .map_err(|e| format!("KEYS {pattern}: {e}"))
    }

    /// Deletes `keys` (clean-up).
    pub async fn del(&self, keys: &[String]) {
        let mut conn = self.conn.clone();
        let _: Result<(), _> = conn.del(keys).await;
    }
}
