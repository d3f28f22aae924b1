//! A minimal worker: prints each task's payload and acknowledges it.
//!
//! ```text
//! QWORKER_BROKER_URL=redis://127.0.0.1:6379 QWORKER_QUEUE=jobs POD_NAME=echo-1 \
//!     cargo run -p workerpool-worker --example echo_worker
//! redis-cli LPUSH jobs hello
//! ```
//!
//! Stop it with Ctrl-C, or by writing `quickube.com/drain="true"` into the annotations file
//! (`QWORKER_ANNOTATIONS_FILE`, default `/etc/qworker/annotations`).

use workerpool_worker::Worker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()?;
    let reason = worker
        .run(|payload: Vec<u8>| async move {
            println!("{}", String::from_utf8_lossy(&payload));
            Ok::<(), std::convert::Infallible>(())
        })
        .await?;
    eprintln!("echo_worker exiting: {reason}");
    Ok(())
}
