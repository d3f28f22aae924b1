//! State shared by every controller: the API client, the Event recorder and the metrics.

use crate::runtime::Reason;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Reporter};

use crate::cache::Gate;
use crate::metrics::Metrics;

/// Shared by every controller.
#[derive(Clone)]
pub struct Shared {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes the Events in the background, after the writes that change state.
    events: Arc<crate::runtime::Publisher>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether this replica may act (leader, caches synced).
    pub gate: Gate,
    /// At most this many objects of one kind reconciled at once (0: unbounded).
    pub concurrency: u16,
    /// Failure counts per object, for exponential requeue back-off.
    pub backoff: crate::runtime::Backoff,
}

impl Shared {
    /// Shared state around `client`, reporting Events as `workerpool-operator` (`instance` is the
    /// pod name), with an open gate (see [`Shared::with_gate`]).
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            events: Arc::new(crate::runtime::Publisher::new(
                client.clone(),
                reporter,
                metrics.events_dropped.clone(),
            )),
            client,
            metrics,
            gate: Gate::open(),
            concurrency: 0,
            backoff: crate::runtime::Backoff::default(),
        }
    }

    /// The same state with at most `n` concurrent reconciles per controller.
    pub fn with_concurrency(mut self, n: u16) -> Self {
        self.concurrency = n;
        self
    }

    /// The kube-runtime controller configuration these settings give.
    pub fn controller_config(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default().concurrency(self.concurrency)
    }

    /// The same state with `gate` deciding when the controllers may act.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Hands an Event about `object` to the background publisher ([`crate::runtime::publisher`])
    /// and returns at once; a failure to publish is logged there, never returned.
    ///
    /// Warnings are aggregated: a Warning repeated within minutes (a reconcile failing again
    /// and again) becomes one Event with a count. A Normal Event announces a change once
    /// (created, scaled, elected) and is not kept, so that a burst of them (a thousand pools
    /// created at once) does not leave a thousand copies, and a table sized for them, in memory.
    pub async fn event(
        &self,
        object: &ObjectReference,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        let warning = reason.is_warning();
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.name().into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        self.events.publish(event, object.clone(), warning);
    }
}
