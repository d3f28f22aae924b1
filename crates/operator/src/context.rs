//! State shared by every controller: the API client, the Event recorder and the metrics.

use crate::runtime::Reason;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::cache::Gate;
use crate::metrics::Metrics;

/// Shared by every controller.
#[derive(Clone)]
pub struct Shared {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Warning Events, aggregating repeats of the same Event into a series (it keeps
    /// every Event it published in the last 6 minutes to do so).
    pub recorder: Recorder,
    /// Who reports the Events.
    reporter: Reporter,
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
            recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
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

    /// Publishes an Event about `object`; a failure to publish is logged, never returned.
    ///
    /// Warnings go through [`Shared::recorder`], which turns a Warning repeated within minutes
    /// (a reconcile failing again and again) into one Event with a count. A Normal Event
    /// announces a change once (created, scaled, elected) and is not aggregated: it is sent
    /// without being kept, so that a burst of them (a thousand pools created at once) does not
    /// leave a thousand copies, and a table sized for them, in memory.
    pub async fn event(
        &self,
        object: &ObjectReference,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        let warning = reason.is_warning();
        let reason = reason.name();
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        // Boxed: an Event is rare, and its request future would otherwise be reserved in every
        // task that may publish one (the autoscaler keeps one such task per QWorker).
        let once;
        let recorder = if warning {
            &self.recorder
        } else {
            once = Recorder::new(self.client.clone(), self.reporter.clone());
            &once
        };
        if let Err(e) = Box::pin(recorder.publish(&event, object)).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}
