//! The Event publisher: a reconcile or a poll hands its Event over and goes on; one background
//! task publishes the Events in order, one at a time, as client-go's event broadcaster does.
//!
//! Events come after the writes that change state: while the operator's API client is busy
//! (at least half of its `--max-api-requests` in flight, as when thousands of objects converge
//! after a start), an Event waits up to [`BUSY_WAIT`] for the client to calm down before it is
//! sent, so that a thousand pools' "Created" Events do not slow the writes those pools need.
//! At most [`QUEUE`] Events wait; more are dropped (as client-go drops them when its queue is
//! full) and counted in `workerpool_operator_events_dropped_total`.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::limit::ApiStats;

/// Events waiting to be published at most (client-go's broadcaster keeps 1,000).
pub const QUEUE: usize = 1000;

/// How long an Event waits at most for a busy API client to calm down.
pub const BUSY_WAIT: Duration = Duration::from_secs(1);

/// How often a waiting Event looks at the client again.
const BUSY_CHECK: Duration = Duration::from_millis(50);

/// An Event on its way.
struct Pending {
    event: Event,
    object: ObjectReference,
    warning: bool,
}

/// Publishes Events in the background; see the module documentation.
pub struct Publisher {
    client: Client,
    reporter: Reporter,
    capacity: usize,
    /// The queue, with its task started at the first Event (inside the runtime).
    queue: OnceLock<mpsc::Sender<Pending>>,
    dropped: Counter,
}

impl Publisher {
    /// A publisher through `client` as `reporter`, counting dropped Events in `dropped`.
    pub fn new(client: Client, reporter: Reporter, dropped: Counter) -> Self {
        Self::with_capacity(client, reporter, dropped, QUEUE)
    }

    /// The same with at most `capacity` Events waiting.
    pub fn with_capacity(
        client: Client,
        reporter: Reporter,
        dropped: Counter,
        capacity: usize,
    ) -> Self {
        Self {
            client,
            reporter,
            capacity: capacity.max(1),
            queue: OnceLock::new(),
            dropped,
        }
    }

    /// Queues `event` about `object`; drops it (counted, logged) when the queue is full.
    /// Warnings go through a recorder that turns a Warning repeated within minutes into one
    /// Event with a count; a Normal Event is sent once and not kept.
    pub fn publish(&self, event: Event, object: ObjectReference, warning: bool) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            tokio::spawn(run(
                self.client.clone(),
                self.reporter.clone(),
                crate::limit::api_stats(),
                rx,
            ));
            tx
        });
        if let Err(e) = queue.try_send(Pending {
            event,
            object,
            warning,
        }) {
            let reason = match &e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => {
                    p.event.reason.clone()
                }
            };
            self.dropped.inc();
            tracing::debug!(reason, "Event queue full; Event dropped");
        }
    }
}

/// Publishes the queued Events until every sender is gone.
async fn run(
    client: Client,
    reporter: Reporter,
    stats: std::sync::Arc<ApiStats>,
    mut queue: mpsc::Receiver<Pending>,
) {
    let aggregated = Recorder::new(client.clone(), reporter.clone());
    while let Some(p) = queue.recv().await {
        let waited = tokio::time::Instant::now();
        while stats.busy() && waited.elapsed() < BUSY_WAIT {
            tokio::time::sleep(BUSY_CHECK).await;
        }
        let result = if p.warning {
            aggregated.publish(&p.event, &p.object).await
        } else {
            Recorder::new(client.clone(), reporter.clone())
                .publish(&p.event, &p.object)
                .await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, reason = p.event.reason, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::EventType;

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(format!("note of {reason}")),
            action: "Test".into(),
            secondary: None,
        }
    }

    fn object() -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some("x".into()),
            namespace: Some("team-a".into()),
            uid: Some("u".into()),
            ..ObjectReference::default()
        }
    }

    fn reporter() -> Reporter {
        Reporter {
            controller: "test".into(),
            instance: None,
        }
    }

    #[tokio::test]
    async fn events_leave_in_order_after_the_caller_went_on() {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let publisher = Publisher::new(
            Client::new(service, "default"),
            reporter(),
            Counter::default(),
        );
        // Returns at once: nothing answers the requests yet.
        for reason in ["First", "Second", "Third"] {
            publisher.publish(event(reason), object(), false);
        }
        let mut reasons = Vec::new();
        for _ in 0..3 {
            let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .expect("an Event within 5 s")
                .expect("client alive");
            assert!(req.uri().path().contains("/apis/events.k8s.io/v1/"));
            let body = req.into_body().collect_bytes().await.expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
            reasons.push(body["reason"].as_str().unwrap_or_default().to_string());
            send.send_response(
                http::Response::builder()
                    .status(201)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).expect("json"),
                    ))
                    .expect("response"),
            );
        }
        assert_eq!(reasons, ["First", "Second", "Third"]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let dropped = Counter::default();
        let publisher = Publisher::with_capacity(
            Client::new(service, "default"),
            reporter(),
            dropped.clone(),
            2,
        );
        // The server never answers: one Event is in flight at most, two wait, the rest drop.
        for i in 0..10 {
            publisher.publish(event(&format!("E{i}")), object(), false);
            tokio::task::yield_now().await;
        }
        assert!(
            (7..=8).contains(&dropped.get()),
            "dropped {} of 10 with room for 2 (+1 in flight)",
            dropped.get()
        );
    }
}
