//! The queue autoscaler: polls each QWorker's broker and writes `status.desiredReplicas`.

pub mod policy;
