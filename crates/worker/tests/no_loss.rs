//! NO-LOSS test against the real local Redis (127.0.0.1:6379).
//!
//! Pushes uniquely numbered tasks, runs several `qworker-echo` worker PROCESSES that record each
//! task they process (`HINCRBY` in a per-test hash), and meanwhile: SIGKILLs workers mid-task and
//! recovers their processing lists as the operator would; drains one worker and makes another
//! stale through their annotation files and checks they exit 0; SIGTERMs one mid-task and checks
//! it exits 0 holding nothing; starts replacements until the queue and every processing list are
//! empty. Then every task must have been processed at least once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};
use workerpool_worker::workerpool_queue::{
    self, BrokerConfig, QueueBroker, RedisConfig, processing_list,
};

const TASKS: usize = 1200;
const TASK_MS: u64 = 25;
const DEADLINE: Duration = Duration::from_secs(120);

struct Fleet {
    queue: String,
    record: String,
    dir: PathBuf,
    next: usize,
    live: BTreeMap<String, Child>,
    /// Every worker name ever started, for the final processing-list check.
    names: Vec<String>,
    broker: Arc<dyn QueueBroker>,
    conn: redis::aio::MultiplexedConnection,
}

impl Fleet {
    fn annotations(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.annotations"))
    }

    fn spawn(&mut self, hash: &str) -> String {
        let name = format!("{}-w{}", self.queue, self.next);
        self.next += 1;
        let annotations = self.annotations(&name);
        std::fs::write(
            &annotations,
            format!("quickube.com/current-pod-spec-hash=\"{hash}\"\n"),
        )
        .expect("write annotations");
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_qworker-echo"))
            .env("QWORKER_BROKER_URL", "redis://127.0.0.1:6379")
            .env("QWORKER_QUEUE", &self.queue)
            .env("POD_NAME", &name)
            .env("POD_SPEC_HASH", hash)
            .env("QWORKER_NAME", "no-loss")
            .env("QWORKER_ANNOTATIONS_FILE", &annotations)
            .env("QWORKER_POLL_SECONDS", "0.2")
            .env("QWORKER_ECHO_SLEEP_MS", TASK_MS.to_string())
            .env("QWORKER_ECHO_RECORD_HASH", &self.record)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qworker-echo");
        self.live.insert(name.clone(), child);
        self.names.push(name.clone());
        name
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn llen(&mut self, key: &str) -> u64 {
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .expect("LLEN")
    }

    async fn held(&mut self, name: &str) -> u64 {
        let key = processing_list(&self.queue, name);
        self.llen(&key).await
    }

    async fn processed(&mut self) -> u64 {
        redis::cmd("HLEN")
            .arg(&self.record)
            .query_async(&mut self.conn)
            .await
            .expect("HLEN")
    }

    /// Waits (bounded) until worker `name` holds a task, i.e. is mid-task.
    async fn wait_mid_task(&mut self, name: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if self.held(name).await > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }

    async fn wait_exit(&mut self, name: &str, within: Duration) -> ExitStatus {
        let mut child = self.live.remove(name).expect("live worker");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => status,
            other => panic!(
                "{name} did not exit in {within:?}: {other:?}\n{}",
                self.log(name)
            ),
        }
    }

    /// SIGKILL, then recover its processing list as the operator would. Returns
    /// (tasks held at death, tasks recovered).
    async fn kill_and_recover(&mut self, name: &str) -> (u64, u64) {
        self.wait_mid_task(name).await;
        if let Some(child) = self.live.get_mut(name) {
            child.start_kill().expect("SIGKILL");
        }
        let status = self.wait_exit(name, Duration::from_secs(10)).await;
        assert!(!status.success(), "{name} was killed");
        let held = self.held(name).await;
        let recovered = self
            .broker
            .recover(&self.queue, name)
            .await
            .expect("recover");
        assert_eq!(self.held(name).await, 0);
        (held, recovered)
    }

    fn signal(&self, name: &str, signal: &str) {
        let pid = self.live.get(name).and_then(Child::id).expect("pid");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Reaps workers that exited by themselves; they must have exited 0.
    fn reap(&mut self) {
        let mut exited = Vec::new();
        for (name, child) in &mut self.live {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((name.clone(), status));
            }
        }
        for (name, status) in exited {
            self.live.remove(&name);
            assert!(
                status.success(),
                "{name} failed: {status}\n{}",
                self.log(&name)
            );
        }
    }

    async fn everything_empty(&mut self) -> bool {
        let queue = self.queue.clone();
        if self.llen(&queue).await > 0 {
            return false;
        }
        for name in self.names.clone() {
            if self.held(&name).await > 0 {
                return false;
            }
        }
        true
    }

    async fn cleanup(&mut self) {
        let mut keys = vec![self.queue.clone(), self.record.clone()];
        keys.extend(self.names.iter().map(|n| processing_list(&self.queue, n)));
        let _: Result<u64, _> = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut self.conn)
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ensure_dir(dir: &Path) {
    std::fs::create_dir_all(dir).expect("temp dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_lost() {
    let started = Instant::now();
    let id = format!(
        "noloss-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let cfg = BrokerConfig::Redis(RedisConfig {
        host: "127.0.0.1".into(),
        port: 6379,
        password: None,
        db: 0,
        tls: false,
    });
    let dir = std::env::temp_dir().join(&id);
    ensure_dir(&dir);
    let conn = redis::Client::open("redis://127.0.0.1:6379")
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut fleet = Fleet {
        queue: id.clone(),
        record: format!("{id}:record"),
        dir,
        next: 0,
        live: BTreeMap::new(),
        names: Vec::new(),
        broker: workerpool_queue::connect(&cfg).await.expect("connect"),
        conn,
    };

    let tasks: Vec<Vec<u8>> = (0..TASKS).map(|i| i.to_string().into_bytes()).collect();
    workerpool_queue::push_batch(&cfg, &fleet.queue, &tasks)
        .await
        .expect("push");

    let first: Vec<String> = (0..4).map(|_| fleet.spawn("h1")).collect();
    let until = Instant::now() + Duration::from_secs(30);
    while fleet.processed().await < 100 {
        assert!(Instant::now() < until, "workers do not process tasks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. SIGKILL two workers mid-task; recover their processing lists. If a kill lands between
    // tasks, kill a replacement too, so at least one kill holds a task (bounded attempts).
    let (mut held_at_death, mut recovered, mut kills) = (0, 0, 0);
    for victim in [first[0].clone(), first[1].clone()] {
        let (h, r) = fleet.kill_and_recover(&victim).await;
        held_at_death += h;
        recovered += r;
        kills += 1;
        fleet.spawn("h1");
    }
    while held_at_death == 0 && kills < 6 {
        let victim = fleet.spawn("h1");
        let (h, r) = fleet.kill_and_recover(&victim).await;
        held_at_death += h;
        recovered += r;
        kills += 1;
    }
    assert!(held_at_death >= 1, "no kill landed mid-task");
    assert_eq!(
        recovered, held_at_death,
        "recover returns exactly what the dead held"
    );

    // 2. Drain one worker through its annotation file: exits 0, holds nothing.
    let drained = first[2].clone();
    std::fs::write(
        fleet.annotations(&drained),
        "quickube.com/current-pod-spec-hash=\"h1\"\nquickube.com/drain=\"true\"\n",
    )
    .expect("write");
    let status = fleet.wait_exit(&drained, Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "drained worker: {status}\n{}",
        fleet.log(&drained)
    );
    assert_eq!(fleet.held(&drained).await, 0);
    assert!(fleet.log(&drained).contains("reason=drained"));

    // 3. Stale hash for another: exits 0, holds nothing; its replacement has the new hash.
    let stale = first[3].clone();
    std::fs::write(
        fleet.annotations(&stale),
        "quickube.com/current-pod-spec-hash=\"h2\"\n",
    )
    .expect("write");
    let status = fleet.wait_exit(&stale, Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "stale worker: {status}\n{}",
        fleet.log(&stale)
    );
    assert_eq!(fleet.held(&stale).await, 0);
    assert!(fleet.log(&stale).contains("reason=stale_hash"));
    fleet.spawn("h2");
    fleet.spawn("h2");

    // 4. SIGTERM one mid-task: it finishes (or requeues) the task and exits 0 holding nothing.
    let termed = fleet.spawn("h2");
    assert!(
        fleet.wait_mid_task(&termed).await,
        "{termed} never took a task"
    );
    fleet.signal(&termed, "TERM");
    let status = fleet.wait_exit(&termed, Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        fleet.log(&termed)
    );
    assert_eq!(fleet.held(&termed).await, 0);
    assert!(fleet.log(&termed).contains("reason=signal"));

    // 5. Keep at least 3 workers until the queue and every processing list are empty.
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "not done after {DEADLINE:?}: {} processed",
            fleet.processed().await
        );
        fleet.reap();
        while fleet.live.len() < 3 {
            fleet.spawn("h2");
        }
        if fleet.everything_empty().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 6. Stop the rest with SIGTERM; all exit 0.
    for name in fleet.live.keys().cloned().collect::<Vec<_>>() {
        fleet.signal(&name, "TERM");
        let status = fleet.wait_exit(&name, Duration::from_secs(30)).await;
        assert!(status.success(), "{name}: {status}\n{}", fleet.log(&name));
    }
    assert!(
        fleet.everything_empty().await,
        "work left behind after shutdown"
    );
    let names = fleet.names.clone();
    assert_eq!(fleet.broker.depth(&fleet.queue, &names).await.ok(), Some(0));

    // 7. Every task processed at least once; count redeliveries.
    let record: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(&fleet.record)
        .query_async(&mut fleet.conn)
        .await
        .expect("HGETALL");
    let missing: Vec<usize> = (0..TASKS)
        .filter(|i| !record.contains_key(&i.to_string()))
        .collect();
    let unknown: Vec<&String> = record
        .keys()
        .filter(|k| k.parse::<usize>().map_or(true, |i| i >= TASKS))
        .collect();
    let executions: u64 = record.values().sum();
    let repeated = record.values().filter(|&&c| c > 1).count();
    println!(
        "no-loss: {TASKS} tasks, {} distinct processed, {executions} executions, \
         {} redeliveries ({repeated} tasks ran more than once), {kills} SIGKILLs holding \
         {held_at_death} tasks, {recovered} recovered, {} worker processes, {:?}",
        record.len(),
        executions - record.len() as u64,
        names.len(),
        started.elapsed()
    );
    fleet.cleanup().await;
    assert!(missing.is_empty(), "lost tasks: {missing:?}");
    assert!(unknown.is_empty(), "unknown tasks: {unknown:?}");
    assert_eq!(record.len(), TASKS);
}
