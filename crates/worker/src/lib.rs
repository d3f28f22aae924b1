//! Rust worker SDK for QWorker pods (design section 4, the queue-worker protocol).
//!
//! A [`Worker`] takes one task at a time with a reliable primitive (Redis `BLMOVE` into its own
//! processing list, RabbitMQ manual ack with prefetch 1 and a busy mark on `<queue>:in-flight`
//! so that the operator can count work in flight, NATS JetStream explicit ack), runs the
//! handler, and acknowledges the task when the handler succeeds or requeues it when it fails.
//! Between tasks it reads the pod's annotations (downward-API volume file) and exits when asked
//! to drain or when its pod-spec hash is stale. On SIGTERM or SIGINT it stops taking tasks, lets
//! the current handler finish within a grace period, and requeues the task if it cannot. A task
//! is never dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), workerpool_worker::WorkerError> {
//! let worker = workerpool_worker::Worker::from_env()?;
//! let reason = worker
//!     .run(|payload: Vec<u8>| async move {
//!         println!("got {} bytes", payload.len());
//!         Ok::<(), std::io::Error>(())
//!     })
//!     .await?;
//! println!("exiting: {reason}");
//! # Ok(()) }
//! ```
//!
//! # Environment
//!
//! | variable | required | meaning |
//! |---|---|---|
//! | `QWORKER_BROKER_URL` | yes | broker, see [`BrokerConfig::from_url`]: `redis://[:PASSWORD@]HOST[:PORT][/DB]` (`rediss://` for TLS), `amqp://USER:PASSWORD@HOST[:PORT]/VHOST` (`amqps://`), `nats://[USER:PASSWORD@\|TOKEN@]HOST[:PORT]?stream=STREAM` (`tls://`) |
//! | `QWORKER_BROKER_PASSWORD` | no | replaces the URL's secret (Redis/AMQP password; NATS password if a user is set, else token), so it can come from a Secret |
//! | `QWORKER_QUEUE` | yes | queue name (Redis list, AMQP queue, NATS durable consumer) |
//! | `POD_NAME` | yes (else `HOSTNAME`) | this worker's identity; its Redis processing list is `{queue}:processing:{POD_NAME}` |
//! | `POD_SPEC_HASH` | no | this pod's spec hash; without it the stale-hash check is off |
//! | `QWORKER_NAME`, `POD_NAMESPACE` | no | logged |
//! | `QWORKER_ANNOTATIONS_FILE` | no | downward-API annotations file, default `/etc/qworker/annotations` |
//! | `QWORKER_GRACE_PERIOD_SECONDS` | no | time the current task may take after SIGTERM, default 25 |
//! | `QWORKER_POLL_SECONDS` | no | longest wait for a task before re-checking annotations, default 1 |
//!
//! The operator sets `QWORKER_NAME`, `POD_SPEC_HASH`, `POD_NAME`, `POD_NAMESPACE` and mounts the
//! annotations file; the pod template sets the broker variables.

mod annotations;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;
use workerpool_queue::{BrokerConfig, QueueError, Task, TaskSource, protocol};

pub use annotations::{
    CURRENT_HASH_ANNOTATION, DEFAULT_ANNOTATIONS_FILE, DRAIN_ANNOTATION, exit_decision,
    parse_annotations, read_annotations, unquote,
};
pub use workerpool_queue;

use annotations::AnnotationWatch;

/// Default grace period for the current task after SIGTERM/SIGINT.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(25);

/// Default longest wait for a task before annotations and signals are checked again.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The annotations file is re-read at most this often.
pub const ANNOTATIONS_REFRESH: Duration = Duration::from_millis(200);

/// Why [`Worker::run`] returned. Every reason is a clean exit (status 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// The pod was asked to drain (annotation [`DRAIN_ANNOTATION`]).
    Drained,
    /// The pod's spec hash differs from the QWorker's current one.
    StaleHash,
    /// SIGTERM or SIGINT (or [`ShutdownHandle::shutdown`]).
    Signal,
}

impl ExitReason {
    /// `drained`, `stale_hash` or `signal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drained => "drained",
            Self::StaleHash => "stale_hash",
            Self::Signal => "signal",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors that stop a worker before or outside task processing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A required environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// An environment variable has an invalid value.
    #[error("environment variable {name}: {message}")]
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The broker failed when opening the task source.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[from] std::io::Error),
}

/// Asks a running worker to stop as SIGTERM would. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Stop taking tasks; the current one may finish within the grace period.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// Builds a [`Worker`]; start from [`Worker::builder`] or [`WorkerBuilder::from_env`].
#[derive(Clone, Debug)]
pub struct WorkerBuilder {
    broker: BrokerConfig,
    queue: String,
    pod_name: String,
    pod_spec_hash: Option<String>,
    qworker: Option<String>,
    namespace: Option<String>,
    annotations_file: PathBuf,
    grace_period: Duration,
    poll_interval: Duration,
    error_backoff: Duration,
}

fn seconds(
    name: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, WorkerError> {
    match value {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| WorkerError::InvalidEnv {
                name,
                message: format!("{text:?} is not a number of seconds"),
            }),
    }
}

impl WorkerBuilder {
    /// Reads the settings from the environment (see the crate documentation).
    pub fn from_env() -> Result<Self, WorkerError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), with variables looked up by `lookup`. Empty values
    /// count as unset.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, WorkerError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let url = get(protocol::ENV_BROKER_URL)
            .ok_or(WorkerError::MissingEnv(protocol::ENV_BROKER_URL))?;
        let mut broker = BrokerConfig::from_url(&url).map_err(|e| WorkerError::InvalidEnv {
            name: protocol::ENV_BROKER_URL,
            message: e.to_string(),
        })?;
        if let Some(password) = get(protocol::ENV_BROKER_PASSWORD) {
            broker = broker
                .with_password(&password)
                .map_err(|e| WorkerError::InvalidEnv {
                    name: protocol::ENV_BROKER_URL,
                    message: e.to_string(),
                })?;
        }
        let queue = get(protocol::ENV_QUEUE).ok_or(WorkerError::MissingEnv(protocol::ENV_QUEUE))?;
        let pod_name = get(protocol::ENV_POD_NAME)
            .or_else(|| get("HOSTNAME"))
            .ok_or(WorkerError::MissingEnv(protocol::ENV_POD_NAME))?;
        let mut builder = Worker::builder(broker, queue, pod_name);
        builder.pod_spec_hash = get(protocol::ENV_POD_SPEC_HASH);
        builder.qworker = get(protocol::ENV_QWORKER_NAME);
        builder.namespace = get(protocol::ENV_POD_NAMESPACE);
        if let Some(path) = get(protocol::ENV_ANNOTATIONS_FILE) {
            builder.annotations_file = PathBuf::from(path);
        }
        builder.grace_period = seconds(
            protocol::ENV_GRACE_PERIOD_SECONDS,
            get(protocol::ENV_GRACE_PERIOD_SECONDS),
            DEFAULT_GRACE_PERIOD,
        )?;
        builder.poll_interval = seconds(
            protocol::ENV_POLL_SECONDS,
            get(protocol::ENV_POLL_SECONDS),
            DEFAULT_POLL_INTERVAL,
        )?;
        Ok(builder)
    }

    /// This pod's spec hash, compared with annotation [`CURRENT_HASH_ANNOTATION`].
    pub fn pod_spec_hash(mut self, hash: impl Into<String>) -> Self {
        self.pod_spec_hash = Some(hash.into());
        self
    }

    /// The QWorker's name (for logs).
    pub fn qworker_name(mut self, name: impl Into<String>) -> Self {
        self.qworker = Some(name.into());
        self
    }

    /// The pod's namespace (for logs).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The downward-API annotations file (default [`DEFAULT_ANNOTATIONS_FILE`]).
    pub fn annotations_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.annotations_file = path.into();
        self
    }

    /// How long the current task may still run after a shutdown signal (default 25 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Longest wait for a task before annotations and signals are checked again (default 1 s).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll_interval = poll;
        self
    }

    /// Pause after a handler error, so that a failing task does not spin (default 1 s).
    pub fn error_backoff(mut self, backoff: Duration) -> Self {
        self.error_backoff = backoff;
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        let (tx, _) = watch::channel(false);
        Worker {
            settings: self,
            shutdown: Arc::new(tx),
        }
    }
}

/// A queue worker: see the crate documentation.
#[derive(Debug)]
pub struct Worker {
    settings: WorkerBuilder,
    shutdown: Arc<watch::Sender<bool>>,
}

/// How the handler of one task ended.
enum Outcome<E> {
    Finished(Result<(), E>),
    GraceExpired,
}

impl Worker {
    /// Starts a builder: broker, queue and this worker's name (the pod name).
    pub fn builder(
        broker: BrokerConfig,
        queue: impl Into<String>,
        pod_name: impl Into<String>,
    ) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            queue: queue.into(),
            pod_name: pod_name.into(),
            pod_spec_hash: None,
            qworker: None,
            namespace: None,
            annotations_file: PathBuf::from(DEFAULT_ANNOTATIONS_FILE),
            grace_period: DEFAULT_GRACE_PERIOD,
            poll_interval: DEFAULT_POLL_INTERVAL,
            error_backoff: Duration::from_secs(1),
        }
    }

    /// A worker configured from the environment (see the crate documentation).
    pub fn from_env() -> Result<Self, WorkerError> {
        Ok(WorkerBuilder::from_env()?.build())
    }

    /// A handle that stops this worker as SIGTERM would.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: Arc::clone(&self.shutdown),
        }
    }

    /// Processes tasks until drained, stale or signalled.
    ///
    /// `handler` is an async closure or a closure returning a future, called with the task's
    /// payload. For each task: `Ok` acknowledges the task, `Err` requeues it (logged), then
    /// pauses for the error backoff.
    /// Signals, the drain annotation and the pod-spec hash are checked only between tasks. On
    /// SIGTERM/SIGINT during a task, the handler gets the grace period to finish (then the task
    /// is acknowledged or requeued as usual); if it does not, it is dropped and its task
    /// requeued. Broker errors while taking are retried with backoff.
    pub async fn run<H, E>(self, mut handler: H) -> Result<ExitReason, WorkerError>
    where
        H: AsyncFnMut(Vec<u8>) -> Result<(), E>,
        E: fmt::Display,
    {
        let settings = &self.settings;
        let span = tracing::info_span!(
            "worker",
            worker = %settings.pod_name,
            queue = %settings.queue,
            qworker = settings.qworker.as_deref().unwrap_or(""),
            namespace = settings.namespace.as_deref().unwrap_or(""),
        );
        let signals = spawn_signal_listener(Arc::clone(&self.shutdown))?;
        let result = self.run_inner(&mut handler).instrument(span).await;
        signals.abort();
        result
    }

    async fn run_inner<H, E>(&self, handler: &mut H) -> Result<ExitReason, WorkerError>
    where
        H: AsyncFnMut(Vec<u8>) -> Result<(), E>,
        E: fmt::Display,
    {
        let s = &self.settings;
        let mut shutdown = self.shutdown.subscribe();
        let mut watch = AnnotationWatch::new(
            s.annotations_file.clone(),
            s.pod_spec_hash.clone(),
            ANNOTATIONS_REFRESH,
        );
        if s.pod_spec_hash.is_none() {
            tracing::info!("POD_SPEC_HASH not set; the stale-hash check is off");
        }
        let mut source = workerpool_queue::task_source(&s.broker, &s.queue, &s.pod_name).await?;
        tracing::info!(broker = %s.broker.kind(), "worker started");
        let mut done: u64 = 0;
        let mut take_failures: u32 = 0;
        let reason = loop {
            if *shutdown.borrow() {
                break ExitReason::Signal;
            }
            if let Some(reason) = watch.check() {
                break reason;
            }
            let next = take_task(
                source.as_mut(),
                s.poll_interval,
                &mut shutdown,
                &mut take_failures,
            )
            .await;
            let Some(mut task) = next else {
                continue;
            };
            if *shutdown.borrow() {
                give_back(source.as_mut(), task, "shutdown before the task started").await;
                break ExitReason::Signal;
            }
            let outcome = work_on(
                source.as_mut(),
                &mut task,
                handler,
                &mut shutdown,
                s.grace_period,
            )
            .await;
            let stop = settle(source.as_mut(), task, outcome, &mut shutdown, s, &mut done).await;
            if let Some(reason) = stop {
                break reason;
            }
        };
        if let Err(error) = source.close().await {
            tracing::warn!(%error, "closing the task source failed");
        }
        tracing::info!(%reason, tasks = done, "worker exiting");
        Ok(reason)
    }
}

/// Takes the next task; `None` when none came within `wait`, or the broker failed (then after
/// a pause that grows with `failures`, the failures in a row).
async fn take_task(
    source: &mut dyn TaskSource,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
    failures: &mut u32,
) -> Option<Task> {
    match source.take(wait).await {
        Ok(Some(task)) => {
            *failures = 0;
            Some(task)
        }
        Ok(None) => {
            *failures = 0;
            None
        }
        Err(error) => {
            *failures = failures.saturating_add(1);
            let pause = Duration::from_millis(200)
                .saturating_mul(1 << (*failures).min(5))
                .min(Duration::from_secs(5));
            tracing::warn!(%error, category = error.category(), ?pause, "cannot take a task");
            pause_unless_shutdown(shutdown, pause).await;
            None
        }
    }
}

/// Runs `handler` on the task's payload (see [`run_handler`]); meanwhile the broker hears that
/// the task is still in progress, if it wants to.
async fn work_on<H, E>(
    source: &mut dyn TaskSource,
    task: &mut Task,
    handler: &mut H,
    shutdown: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Outcome<E>
where
    H: AsyncFnMut(Vec<u8>) -> Result<(), E>,
{
    let payload = std::mem::take(&mut task.payload);
    let work = run_handler(handler(payload), shutdown, grace);
    match source.progress_every() {
        None => work.await,
        Some(every) => {
            let beat = report_progress(source, task, every);
            tokio::select! {
                outcome = work => outcome,
                never = beat => match never {},
            }
        }
    }
}

/// Acknowledges or requeues `task` by the handler's `outcome` (counting it in `done` when
/// finished); the reason to stop when the grace period expired.
async fn settle<E: fmt::Display>(
    source: &mut dyn TaskSource,
    task: Task,
    outcome: Outcome<E>,
    shutdown: &mut watch::Receiver<bool>,
    s: &WorkerBuilder,
    done: &mut u64,
) -> Option<ExitReason> {
    match outcome {
        Outcome::Finished(Ok(())) => {
            if let Err(error) = source.ack(task).await {
                tracing::error!(%error, category = error.category(), "cannot acknowledge a finished task; it will run again");
            }
            *done += 1;
        }
        Outcome::Finished(Err(error)) => {
            tracing::warn!(%error, "handler failed; requeueing the task");
            give_back(source, task, "handler error").await;
            pause_unless_shutdown(shutdown, s.error_backoff).await;
        }
        Outcome::GraceExpired => {
            tracing::warn!(grace = ?s.grace_period, "grace period expired during a task; requeueing it");
            give_back(source, task, "grace period expired").await;
            return Some(ExitReason::Signal);
        }
    }
    None
}

/// Reports `task` in progress every `every`, for ever (dropped when the handler ends); a
/// failed report is logged and the next one tried as usual.
async fn report_progress(
    source: &mut dyn TaskSource,
    task: &workerpool_queue::Task,
    every: Duration,
) -> std::convert::Infallible {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        if let Err(error) = source.progress(task).await {
            tracing::warn!(%error, category = error.category(), "cannot report the task in progress");
        }
    }
}

/// Requeues a task, logging failures (the broker's own recovery then returns it).
async fn give_back(source: &mut dyn TaskSource, task: Task, why: &str) {
    if let Err(error) = source.requeue(task).await {
        tracing::error!(%error, category = error.category(), why, "cannot requeue a task; the broker's recovery will return it");
    }
}

/// Sleeps `pause`, or less if shutdown is requested.
async fn pause_unless_shutdown(shutdown: &mut watch::Receiver<bool>, pause: Duration) {
    let _ = tokio::time::timeout(pause, shutdown.wait_for(|stop| *stop)).await;
}

/// Runs one handler future; on shutdown gives it `grace` more time.
async fn run_handler<Fut, E>(
    fut: Fut,
    shutdown: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Outcome<E>
where
    Fut: Future<Output = Result<(), E>>,
{
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        result = fut.as_mut() => Outcome::Finished(result),
        Ok(_) = shutdown.wait_for(|stop| *stop) => {
            tracing::info!(?grace, "shutdown requested; letting the current task finish");
            match tokio::time::timeout(grace, fut.as_mut()).await {
                Ok(result) => Outcome::Finished(result),
                Err(_) => Outcome::GraceExpired,
            }
        }
    }
}

/// Turns SIGTERM and SIGINT into a shutdown request.
fn spawn_signal_listener(
    tx: Arc<watch::Sender<bool>>,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping: no new tasks");
        tx.send_replace(true);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn reads_settings_from_env() {
        let builder = WorkerBuilder::from_vars(vars(&[
            ("QWORKER_BROKER_URL", "redis://cache:6380/1"),
            ("QWORKER_BROKER_PASSWORD", "s3cret"),
            ("QWORKER_QUEUE", "jobs"),
            ("POD_NAME", "jobs-x7k2p"),
            ("POD_SPEC_HASH", "abc"),
            ("QWORKER_NAME", "jobs"),
            ("POD_NAMESPACE", "default"),
            ("QWORKER_ANNOTATIONS_FILE", "/tmp/a"),
            ("QWORKER_GRACE_PERIOD_SECONDS", "2.5"),
            ("QWORKER_POLL_SECONDS", "0.2"),
        ]));
        let Ok(b) = builder else {
            panic!("valid settings: {builder:?}");
        };
        assert_eq!(b.queue, "jobs");
        assert_eq!(b.pod_name, "jobs-x7k2p");
        assert_eq!(b.pod_spec_hash.as_deref(), Some("abc"));
        assert_eq!(b.annotations_file, PathBuf::from("/tmp/a"));
        assert_eq!(b.grace_period, Duration::from_millis(2500));
        assert_eq!(b.poll_interval, Duration::from_millis(200));
        assert!(matches!(
            &b.broker,
            BrokerConfig::Redis(r) if r.host == "cache" && r.port == 6380 && r.db == 1 && r.password.as_deref() == Some("s3cret")
        ));
        assert!(!format!("{b:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_and_errors() {
        let b = WorkerBuilder::from_vars(vars(&[
            ("QWORKER_BROKER_URL", "amqp://guest:guest@rabbit/%2F"),
            ("QWORKER_QUEUE", "jobs"),
            ("HOSTNAME", "host-1"),
            ("POD_SPEC_HASH", ""),
        ]));
        let Ok(b) = b else {
            panic!("valid settings");
        };
        assert_eq!(b.pod_name, "host-1");
        assert_eq!(b.pod_spec_hash, None);
        assert_eq!(b.annotations_file, PathBuf::from(DEFAULT_ANNOTATIONS_FILE));
        assert_eq!(b.grace_period, DEFAULT_GRACE_PERIOD);

        let missing = WorkerBuilder::from_vars(vars(&[("QWORKER_QUEUE", "q"), ("POD_NAME", "p")]));
        assert!(matches!(
            missing,
            Err(WorkerError::MissingEnv("QWORKER_BROKER_URL"))
        ));
        let missing = WorkerBuilder::from_vars(vars(&[
            ("QWORKER_BROKER_URL", "redis://r"),
            ("POD_NAME", "p"),
        ]));
        assert!(matches!(
            missing,
            Err(WorkerError::MissingEnv("QWORKER_QUEUE"))
        ));
        let bad = WorkerBuilder::from_vars(vars(&[
            ("QWORKER_BROKER_URL", "redis://r"),
            ("QWORKER_QUEUE", "q"),
            ("POD_NAME", "p"),
            ("QWORKER_GRACE_PERIOD_SECONDS", "soon"),
        ]));
        assert!(matches!(
            bad,
            Err(WorkerError::InvalidEnv {
                name: "QWORKER_GRACE_PERIOD_SECONDS",
                ..
            })
        ));
        let bad = WorkerBuilder::from_vars(vars(&[
            ("QWORKER_BROKER_URL", "nats://n:4222"),
            ("QWORKER_QUEUE", "q"),
            ("POD_NAME", "p"),
        ]));
        assert!(matches!(
            bad,
            Err(WorkerError::InvalidEnv {
                name: "QWORKER_BROKER_URL",
                ..
            })
        ));
    }
}
