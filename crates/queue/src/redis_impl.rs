//! Redis: queues are lists; producers `LPUSH`, workers `BLMOVE` from the right end into their
//! own processing list, acknowledge with `LREM`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use crate::error::{BrokerKind, QueueError, timed};
use crate::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, DepthQuery, Handle, Holder, HoldersPage, PROCESSING_INFIX,
    QueueBroker, RedisConfig, SCAN_COUNT, Task, TaskSource, install_crypto_provider,
    processing_list,
};

const KIND: BrokerKind = BrokerKind::Redis;

/// Upper bound of tasks moved by one recovery, so that a processing list that keeps growing
/// (a worker with that name is alive after all) cannot keep the loop going for ever.
const MAX_RECOVER: u64 = 1_000_000;

/// Removes one copy of the task from the processing list and, only if it was there, puts it back
/// at the right end of the queue (where workers take from): atomic, and never duplicates a task
/// that the operator already recovered.
const REQUEUE_SCRIPT: &str = "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then \
     redis.call('RPUSH', KEYS[2], ARGV[1]) return 1 end return 0";

/// The lengths of several queries in one call. `KEYS` holds each query's queue followed by its
/// workers' processing lists, `ARGV[i]` how many keys query `i` has; the answer is each query's
/// summed length, or -1 when one of its keys holds something other than a list (as `LLEN`'s
/// `WRONGTYPE` error in a pipeline fails that query alone).
const DEPTHS_SCRIPT: &str = "local out, k = {}, 1 \
     for i = 1, #ARGV do \
       local total = 0 \
       for _ = 1, tonumber(ARGV[i]) do \
         local n = redis.pcall('LLEN', KEYS[k]) \
         k = k + 1 \
         if type(n) ~= 'number' then total = -1 elseif total >= 0 then total = total + n end \
       end \
       out[i] = total \
     end \
     return out";

/// Whether `e`, the answer to [`DEPTHS_SCRIPT`], says that this server runs no such script (an
/// error reply that is not one of the passing states every command may meet).
fn refuses_scripts(e: &RedisError) -> bool {
    e.code().is_some_and(|code| {
        !matches!(
            code,
            "BUSY" | "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "NOAUTH" | "WRONGPASS"
        )
    })
}

/// Most queries read by one call of [`DEPTHS_SCRIPT`] (a script runs alone on the server, and
/// other clients of a shared Redis wait meanwhile).
const DEPTHS_PER_CALL: usize = 1000;

fn map_err(err: RedisError) -> QueueError {
    if err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        QueueError::auth(KIND, err)
    } else if err.is_timeout() {
        QueueError::Timeout {
            broker: KIND,
            operation: "command",
            after: CALL_TIMEOUT,
        }
    } else if err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.kind() == redis::ErrorKind::InvalidClientConfig
    {
        QueueError::connect(KIND, err)
    } else {
        QueueError::protocol(KIND, err)
    }
}

/// One reconnecting connection. `response_timeout` is `None` for connections that run blocking
/// commands; every call is bounded by [`timed`] anyway.
async fn manager(
    cfg: &RedisConfig,
    response_timeout: Option<Duration>,
) -> Result<ConnectionManager, QueueError> {
    let addr = if cfg.tls {
        install_crypto_provider();
        ConnectionAddr::TcpTls {
            host: cfg.host.clone(),
            port: cfg.port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(cfg.host.clone(), cfg.port)
    };
    let mut settings = RedisConnectionInfo::default().set_db(cfg.db);
    if let Some(password) = &cfg.password {
        settings = settings.set_password(password);
    }
    let info = addr
        .into_connection_info()
        .map_err(map_err)?
        .set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(map_err)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    timed(KIND, "connect", CONNECT_TIMEOUT, async {
        ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_err)
    })
    .await
}

/// Runs one command with the call time limit.
async fn query<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    operation: &'static str,
    cmd: &redis::Cmd,
) -> Result<T, QueueError> {
    timed(KIND, operation, CALL_TIMEOUT, async {
        cmd.query_async(conn).await.map_err(map_err)
    })
    .await
}

/// Moves every element of `from` back to the right end of `to`, oldest last taken first:
/// `LMOVE from to LEFT RIGHT` pops the newest first, so the oldest ends up rightmost.
async fn move_all(conn: &mut ConnectionManager, from: &str, to: &str) -> Result<u64, QueueError> {
    let mut moved = 0;
    let mut cmd = redis::cmd("LMOVE");
    cmd.arg(from).arg(to).arg("LEFT").arg("RIGHT");
    while moved < MAX_RECOVER {
        let element: Option<Vec<u8>> = query(conn, "recover", &cmd).await?;
        if element.is_none() {
            break;
        }
        moved += 1;
    }
    Ok(moved)
}

/// Operator side.
pub(crate) struct RedisBroker {
    conn: ConnectionManager,
    /// Set once the server refused [`DEPTHS_SCRIPT`]: depths are read with a pipeline.
    no_scripts: AtomicBool,
}

impl RedisBroker {
    pub(crate) async fn connect(cfg: &RedisConfig) -> Result<Self, QueueError> {
        Ok(Self {
            conn: manager(cfg, Some(CALL_TIMEOUT)).await?,
            no_scripts: AtomicBool::new(false),
        })
    }

    /// [`QueueBroker::depths`] in one `EVAL` of [`DEPTHS_SCRIPT`]: the keys and the counts are
    /// written into one command and the answer is one array, so that reading a thousand queues
    /// allocates a few buffers, not a command and a reply per queue. `Err` with the server's
    /// error when the script could not run at all.
    async fn depths_by_script(
        &self,
        queries: &[DepthQuery],
    ) -> Result<Vec<Result<u64, QueueError>>, RedisError> {
        let keys: usize = queries.iter().map(|q| 1 + q.workers.len()).sum();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DEPTHS_SCRIPT).arg(keys);
        for q in queries {
            cmd.arg(&q.queue);
            for worker in &q.workers {
                cmd.arg(processing_list(&q.queue, worker));
            }
        }
        for q in queries {
            cmd.arg(1 + q.workers.len());
        }
        let mut conn = self.conn.clone();
        let lengths: Vec<i64> =
            match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
                Ok(result) => result?,
                Err(_) => {
                    let e = QueueError::Timeout {
                        broker: KIND,
                        operation: "depth",
                        after: CALL_TIMEOUT,
                    };
                    return Ok(queries.iter().map(|_| Err(e.clone())).collect());
                }
            };
        if lengths.len() != queries.len() {
            let e = QueueError::protocol(
                KIND,
                format!(
                    "the depth script answered {} lengths for {} queues",
                    lengths.len(),
                    queries.len()
                ),
            );
            return Ok(queries.iter().map(|_| Err(e.clone())).collect());
        }
        Ok(lengths
            .into_iter()
            .zip(queries)
            .map(|(n, q)| {
                u64::try_from(n).map_err(|_| {
                    QueueError::protocol(
                        KIND,
                        format!(
                            "WRONGTYPE: {} or one of its processing lists is not a list",
                            q.queue
                        ),
                    )
                })
            })
            .collect())
    }

    /// [`QueueBroker::depths`] in one pipeline of `LLEN` commands.
    async fn depths_by_pipeline(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for q in queries {
            pipe.cmd("LLEN").arg(&q.queue);
            for worker in &q.workers {
                pipe.cmd("LLEN").arg(processing_list(&q.queue, worker));
            }
        }
        let mut conn = self.conn.clone();
        let replies: Result<Vec<redis::RedisResult<u64>>, QueueError> =
            timed(KIND, "depth", CALL_TIMEOUT, async {
                pipe.query_async(&mut conn).await.map_err(map_err)
            })
            .await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) => return vec![Err(e); queries.len()],
        };
        let mut replies = replies.into_iter();
        queries
            .iter()
            .map(|q| {
                // Every command's reply is taken, so that the next query starts at its own.
                let mut total = Ok(0u64);
                for reply in replies.by_ref().take(1 + q.workers.len()) {
                    total = match (total, reply) {
                        (Ok(sum), Ok(n)) => Ok(sum + n),
                        (Err(e), _) => Err(e),
                        (Ok(_), Err(e)) => Err(map_err(e)),
                    };
                }
                total
            })
            .collect()
    }
}

#[async_trait]
impl QueueBroker for RedisBroker {
    async fn depth(&self, queue: &str, workers: &[String]) -> Result<u64, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("LLEN").arg(queue);
        for worker in workers {
            pipe.cmd("LLEN").arg(processing_list(queue, worker));
        }
        let mut conn = self.conn.clone();
        let lengths: Vec<u64> = timed(KIND, "depth", CALL_TIMEOUT, async {
            pipe.query_async(&mut conn).await.map_err(map_err)
        })
        .await?;
        Ok(lengths.iter().sum())
    }

    async fn depths(&self, queries: &[DepthQuery]) -> Vec<Result<u64, QueueError>> {
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(DEPTHS_PER_CALL) {
            if !self.no_scripts.load(Ordering::Relaxed) {
                match self.depths_by_script(chunk).await {
                    Ok(lengths) => {
                        out.extend(lengths);
                        continue;
                    }
                    Err(e) if refuses_scripts(&e) => {
                        // Scripting refused (an ACL without @scripting, a proxy without EVAL,
                        // keys in several cluster slots): the pipeline from now on.
                        tracing::info!(error = %e, "Redis refuses the depth script; reading depths with a pipeline");
                        self.no_scripts.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let e = map_err(e);
                        out.extend(chunk.iter().map(|_| Err(e.clone())));
                        continue;
                    }
                }
            }
            out.extend(self.depths_by_pipeline(chunk).await);
        }
        out
    }

    async fn recover(&self, queue: &str, worker: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let moved = move_all(&mut conn, &processing_list(queue, worker), queue).await?;
        if moved > 0 {
            tracing::info!(
                queue,
                worker,
                moved,
                "returned a gone worker's tasks to the queue"
            );
        }
        Ok(moved)
    }

    async fn holders_page(
        &self,
        queues: &BTreeSet<String>,
        mut cursor: u64,
        budget: u32,
    ) -> Result<HoldersPage, QueueError> {
        let mut page = HoldersPage::default();
        if queues.is_empty() {
            return Ok(page);
        }
        // One queue: Redis filters by its prefix; several: by the processing-list infix, and
        // the keys of queues not asked for are dropped here.
        let pattern = match queues.iter().next() {
            Some(q) if queues.len() == 1 => format!("{}*", glob_escape(&processing_list(q, ""))),
            _ => format!("*{}*", glob_escape(PROCESSING_INFIX)),
        };
        let mut conn = self.conn.clone();
        for _ in 0..budget.max(1) {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = query(&mut conn, "holders", &cmd).await?;
            page.holders.extend(keys.iter().filter_map(|k| {
                let (queue, worker) = k.rsplit_once(PROCESSING_INFIX)?;
                (!worker.is_empty() && queues.contains(queue)).then(|| Holder {
                    queue: queue.to_owned(),
                    worker: worker.to_owned(),
                })
            }));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        page.holders.sort();
        page.holders.dedup();
        page.cursor = cursor;
        Ok(page)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = query(&mut conn, "ping", &redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Escapes the glob characters of a Redis `MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Worker side.
pub(crate) struct RedisSource {
    conn: ConnectionManager,
    queue: String,
    processing: String,
    /// Tasks taken and not yet acknowledged or requeued.
    held: usize,
    /// A take, ack or requeue failed midway: the processing list may hold a task nobody holds.
    dirty: bool,
}

impl RedisSource {
    pub(crate) async fn open(
        cfg: &RedisConfig,
        queue: &str,
        worker: &str,
    ) -> Result<Self, QueueError> {
        let mut source = Self {
            conn: manager(cfg, None).await?,
            queue: queue.to_owned(),
            processing: processing_list(queue, worker),
            held: 0,
            dirty: false,
        };
        let moved = source.requeue_leftovers().await?;
        if moved > 0 {
            tracing::warn!(
                queue,
                worker,
                moved,
                "requeued tasks left in this worker's processing list by an earlier run"
            );
        }
        Ok(source)
    }

    async fn requeue_leftovers(&mut self) -> Result<u64, QueueError> {
        let moved = move_all(&mut self.conn, &self.processing, &self.queue).await?;
        self.dirty = false;
        Ok(moved)
    }

    fn raw(task: Task) -> Result<Vec<u8>, QueueError> {
        match task.handle {
            Handle::Redis { raw } => Ok(raw),
            _ => Err(QueueError::protocol(KIND, "task was not taken from Redis")),
        }
    }
}

#[async_trait]
impl TaskSource for RedisSource {
    async fn take(&mut self, wait: Duration) -> Result<Option<Task>, QueueError> {
        if self.dirty && self.held == 0 {
            let moved = self.requeue_leftovers().await?;
            if moved > 0 {
                tracing::warn!(queue = %self.queue, moved, "requeued tasks orphaned by a failed call");
            }
        }
        let mut cmd;
        if wait.is_zero() {
            cmd = redis::cmd("LMOVE");
            cmd.arg(&self.queue)
                .arg(&self.processing)
                .arg("RIGHT")
                .arg("LEFT");
        } else {
            // BLMOVE's timeout 0 means "for ever": keep at least 10 ms.
            let secs = wait.max(Duration::from_millis(10)).as_secs_f64();
            cmd = redis::cmd("BLMOVE");
            cmd.arg(&self.queue)
                .arg(&self.processing)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(format!("{secs:.3}"));
        }
        let conn = &mut self.conn;
        let taken: Result<Option<Vec<u8>>, QueueError> =
            timed(KIND, "take", wait + CALL_TIMEOUT, async {
                cmd.query_async(conn).await.map_err(map_err)
            })
            .await;
        match taken {
            Ok(Some(raw)) => {
                self.held += 1;
                Ok(Some(Task {
                    payload: raw.clone(),
                    handle: Handle::Redis { raw },
                }))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                self.dirty = true;
                Err(err)
            }
        }
    }

    async fn ack(&mut self, task: Task) -> Result<(), QueueError> {
        let raw = Self::raw(task)?;
        self.held = self.held.saturating_sub(1);
        let mut cmd = redis::cmd("LREM");
        cmd.arg(&self.processing).arg(1).arg(raw);
        match query::<u64>(&mut self.conn, "ack", &cmd).await {
            Ok(0) => {
                tracing::warn!(
                    queue = %self.queue,
                    "acknowledged task was no longer in the processing list (recovered while held?); it may run again"
                );
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(err) => {
                self.dirty = true;
                Err(err)
            }
        }
    }

    async fn requeue(&mut self, task: Task) -> Result<(), QueueError> {
        let raw = Self::raw(task)?;
        self.held = self.held.saturating_sub(1);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REQUEUE_SCRIPT)
            .arg(2)
            .arg(&self.processing)
            .arg(&self.queue)
            .arg(raw);
        match query::<u64>(&mut self.conn, "requeue", &cmd).await {
            Ok(_) => Ok(()),
            Err(err) => {
                self.dirty = true;
                Err(err)
            }
        }
    }

    async fn close(&mut self) -> Result<(), QueueError> {
        if self.held == 0 {
            let moved = self.requeue_leftovers().await?;
            if moved > 0 {
                tracing::warn!(queue = %self.queue, moved, "requeued tasks left in the processing list on close");
            }
        }
        Ok(())
    }
}

/// `LPUSH` in chunks; the first payload ends up rightmost, so it is taken first.
pub(crate) async fn push_batch(
    cfg: &RedisConfig,
    queue: &str,
    payloads: &[Vec<u8>],
) -> Result<u64, QueueError> {
    let mut conn = manager(cfg, Some(CALL_TIMEOUT)).await?;
    for chunk in payloads.chunks(1000) {
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(queue);
        for payload in chunk {
            cmd.arg(payload.as_slice());
        }
        let _: u64 = query(&mut conn, "push", &cmd).await?;
    }
    Ok(payloads.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RedisConfig {
        RedisConfig {
            host: "127.0.0.1".into(),
            port: 6379,
            password: None,
            db: 0,
            tls: false,
        }
    }

    #[tokio::test]
    async fn the_depth_script_answers_as_the_pipeline_in_every_chunk() {
        let broker = RedisBroker::connect(&config()).await.expect("connect");
        let mut conn = broker.conn.clone();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let prefix = format!("depth-script-{}-{nanos}", std::process::id());
        let n = DEPTHS_PER_CALL * 2 + 500;
        let mut pipe = redis::pipe();
        for i in (0..n).step_by(7) {
            pipe.cmd("RPUSH")
                .arg(format!("{prefix}-{i}"))
                .arg("task")
                .ignore();
            pipe.cmd("RPUSH")
                .arg(processing_list(&format!("{prefix}-{i}"), "w1"))
                .arg("task")
                .ignore();
        }
        pipe.cmd("SET")
            .arg(format!("{prefix}-3"))
            .arg("not a list")
            .ignore();
        let _: () = pipe.query_async(&mut conn).await.expect("fill");
        let queries: Vec<DepthQuery> = (0..n)
            .map(|i| DepthQuery {
                queue: format!("{prefix}-{i}"),
                workers: if i % 2 == 0 {
                    vec!["w1".into(), "w2".into()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        let by_script = broker.depths(&queries).await;
        let by_pipeline = broker.depths_by_pipeline(&queries).await;
        let keys: Vec<String> = (0..n)
            .flat_map(|i| {
                let q = format!("{prefix}-{i}");
                [processing_list(&q, "w1"), q]
            })
            .collect();
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("clean up");
        assert!(
            !broker.no_scripts.load(Ordering::Relaxed),
            "this Redis runs scripts"
        );
        assert_eq!(by_script.len(), n);
        for (i, (s, p)) in by_script.iter().zip(&by_pipeline).enumerate() {
            assert_eq!(s.as_ref().ok(), p.as_ref().ok(), "query {i}");
            assert_eq!(
                s.is_err(),
                i == 3,
                "query {i}: only the key that is not a list fails"
            );
        }
        assert_eq!(
            by_script[14].as_ref().ok(),
            Some(&2),
            "1 waiting + 1 in flight at w1"
        );
        assert_eq!(
            by_script[7].as_ref().ok(),
            Some(&1),
            "w1's list does not count without w1"
        );
        assert_eq!(
            by_script[1].as_ref().ok(),
            Some(&0),
            "a missing queue is empty"
        );
    }
}
