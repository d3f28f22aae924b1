//! workerpool-operator: runs pools of worker pods and scales them to their real load.
//!
//! The binary's subcommands live in [`cli`]; each controller is one module under
//! [`controllers`], split into pure builders and the code that talks to the API.

pub mod api_calls;
pub mod apply;
pub mod brokers;
pub mod build_info;
pub mod cache;
pub mod cli;
pub mod context;
pub mod controllers;
pub mod crds;
pub mod error;
pub mod http;
pub mod leader;
pub mod limit;
#[allow(unsafe_code)]
pub mod memory;
pub mod metrics;
pub mod quantity;
pub mod render;
pub mod run;
pub mod runtime;
#[cfg(feature = "simulate")]
pub mod simulate;
pub mod telemetry;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "workerpool-operator";
/// Field manager that keeps an autoscaled Deployment's `spec.replicas` while ownership passes
/// from the operator to the HPA (`controllers::stormworkerpool::replicas`).
pub const HANDOFF_MANAGER: &str = "workerpool-operator-handoff";
/// Field manager of the QWorker autoscaler's status writes (`desiredReplicas`, `queueLength`,
/// `lastScaleTime`, the `BrokerReachable` condition).
pub const AUTOSCALER_MANAGER: &str = "workerpool-operator-autoscaler";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "workerpool-operator";
