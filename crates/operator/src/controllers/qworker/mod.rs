//! The QWorker controller.

use kube::runtime::reflector::{self, Store};
use workerpool_api::QWorker;

/// Placeholder until the QWorker system lands.
pub fn controller(
    _shared: crate::context::Shared,
    _namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Store<QWorker>, impl std::future::Future<Output = ()> + Send) {
    let (reader, _writer) = reflector::store();
    (reader, shutdown)
}
