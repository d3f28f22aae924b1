//! What every controller runs on: one reconcile wrapper ([`reconcile`]) and one error policy
//! ([`error_policy`]) for every kind, with retry back-off kept per kind and object uid
//! ([`backoff`]). A controller supplies its own reconcile body and, where a failure should also
//! show on the object's status, a hook for that; the rules around them (the leader gate, the
//! duration metric, the Warning Event, a namespace being deleted, how long to wait before the
//! next try) are written here once, and so is the writing of a status ([`status`]).

pub mod backoff;
pub mod events;
pub mod pace;
pub mod publisher;
mod reconcile;
pub mod status;

pub use backoff::{Backoff, BackoffKey};
pub use events::Reason;
pub use pace::Pace;
pub use publisher::Publisher;
pub use reconcile::{ControllerContext, error_policy, reconcile};
pub use status::{HasStatus, StatusWriter};
