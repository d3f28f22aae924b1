//! `qworker-echo`: a queue worker that logs each task, used by the tests.
//!
//! Configured by the SDK's environment variables (see `workerpool_worker`), plus:
//!
//! | variable | meaning |
//! |---|---|
//! | `QWORKER_ECHO_SLEEP_MS` | time each task takes, default 0 |
//! | `QWORKER_ECHO_RECORD_HASH` | if set, `HINCRBY <hash> <payload> 1` for each processed task |
//! | `QWORKER_ECHO_RECORD_URL` | Redis URL for the record, default `QWORKER_BROKER_URL` |
//! | `RUST_LOG` | log filter, default `info` |
//!
//! Exits 0 when drained, stale or signalled; 1 on a configuration or broker error.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use workerpool_worker::{Worker, WorkerError};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn recorder() -> Result<Option<(redis::aio::MultiplexedConnection, String)>, String> {
    let Some(hash) = env("QWORKER_ECHO_RECORD_HASH") else {
        return Ok(None);
    };
    let url = env("QWORKER_ECHO_RECORD_URL")
        .or_else(|| env("QWORKER_BROKER_URL"))
        .ok_or("QWORKER_ECHO_RECORD_URL is not set")?;
    let client = redis::Client::open(url).map_err(|e| format!("record URL: {e}"))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "record connection timed out".to_owned())?
    .map_err(|e| format!("record connection: {e}"))?;
    Ok(Some((conn, hash)))
}

async fn run() -> Result<(), String> {
    let sleep = env("QWORKER_ECHO_SLEEP_MS")
        .map(|ms| {
            ms.parse::<u64>()
                .map_err(|_| format!("QWORKER_ECHO_SLEEP_MS={ms:?}"))
        })
        .transpose()?
        .map_or(Duration::ZERO, Duration::from_millis);
    let record = recorder().await?;
    let worker = Worker::from_env().map_err(|e: WorkerError| e.to_string())?;
    let reason = worker
        .run(|payload: Vec<u8>| {
            let record = record.clone();
            async move {
                tokio::time::sleep(sleep).await;
                if let Some((mut conn, hash)) = record {
                    let mut cmd = redis::cmd("HINCRBY");
                    cmd.arg(&hash).arg(payload.as_slice()).arg(1);
                    tokio::time::timeout(Duration::from_secs(2), cmd.query_async::<i64>(&mut conn))
                        .await
                        .map_err(|_| "record timed out".to_owned())?
                        .map_err(|e| format!("record: {e}"))?;
                }
                tracing::debug!(task = %String::from_utf8_lossy(&payload), "processed");
                Ok::<(), String>(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%reason, "exit");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "qworker-echo failed");
            ExitCode::FAILURE
        }
    }
}
