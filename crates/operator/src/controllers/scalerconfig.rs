//! The ScalerConfig controller.

/// Placeholder until the QWorker system lands.
pub fn controller(
    _shared: crate::context::Shared,
    _namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl std::future::Future<Output = ()> + Send {
    shutdown
}
