//! A bound on the operator's concurrent API requests: a tower layer on the kube client that
//! lets at most N requests (other than watches, which stay open for minutes) be in flight, so
//! that a burst of reconciles and status writes at start-up queues inside the process instead
//! of opening one connection per request and overloading the API server.
//!
//! When the API server sheds load (HTTP 429, as API Priority and Fairness answers, with
//! `Retry-After`), the permit of that request is held for the time the server asked (at most
//! [`MAX_RETRY_AFTER`]) before it returns to the pool: the whole client slows down while the
//! server is overloaded, instead of each reconcile retrying at once.
//!
//! The layer counts what it sees in [`ApiStats`] (requests sent, answers outstanding, 429s),
//! which `/metrics` reports ([`crate::metrics::OperatorCollector`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;

/// The longest a 429's `Retry-After` holds a permit.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How long a response asks the client to wait: `Retry-After` seconds of a 429 (1 s when the
/// header is missing or not a number of seconds), capped at [`MAX_RETRY_AFTER`]; `None` for any
/// other status.
pub fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    if response.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let seconds = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Counts of the API requests that passed a [`LimitLayer`].
#[derive(Debug, Default)]
pub struct ApiStats {
    requests: AtomicU64,
    in_flight: AtomicI64,
    throttled: AtomicU64,
    limit: AtomicU64,
}

impl ApiStats {
    /// Requests sent (watches included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests sent whose answer has not arrived yet (watches excepted).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Answers with HTTP 429 (the API server shedding load).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// The bound on requests in flight.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether at least half of the bound is in flight (never without a bound): what can wait,
    /// an Event, waits then.
    pub fn busy(&self) -> bool {
        let limit = self.limit();
        limit > 0 && u64::try_from(self.in_flight()).unwrap_or(0) >= limit.div_ceil(2)
    }
}

/// The process's API counts: the operator has one bounded client, and its `/metrics` reports
/// these.
pub fn api_stats() -> Arc<ApiStats> {
    static STATS: LazyLock<Arc<ApiStats>> = LazyLock::new(Arc::default);
    STATS.clone()
}

/// Counts one request as in flight until dropped.
struct InFlight(Arc<ApiStats>);

impl InFlight {
    fn new(stats: Arc<ApiStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The layer; see the module documentation.
#[derive(Clone)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    stats: Arc<ApiStats>,
}

impl LimitLayer {
    /// At most `max` requests (watches excepted) in flight at once (`max` is at least 1),
    /// counted in the process's [`api_stats`].
    pub fn new(max: usize) -> Self {
        Self::with_stats(max, api_stats())
    }

    /// Like [`LimitLayer::new`], counting in `stats`.
    pub fn with_stats(max: usize, stats: Arc<ApiStats>) -> Self {
        let max = max.max(1);
        stats.limit.store(max as u64, Ordering::Relaxed);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            stats,
        }
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            permits: self.permits.clone(),
            poll: tokio_util::sync::PollSemaphore::new(self.permits.clone()),
            permit: None,
            stats: self.stats.clone(),
        }
    }
}

/// The service of [`LimitLayer`]: like tower's concurrency limit, it takes a permit when the
/// caller asks whether it is ready, and holds it until the response has arrived; a watch gives
/// its permit back at once.
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    poll: tokio_util::sync::PollSemaphore,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stats: Arc<ApiStats>,
}

impl<S: Clone> Clone for Limit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            permits: self.permits.clone(),
            poll: tokio_util::sync::PollSemaphore::new(self.permits.clone()),
            permit: None,
            stats: self.stats.clone(),
        }
    }
}

/// Whether a request opens a watch (query `watch=true` or `watch=1`).
pub fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

impl<S, B, RB> tower::Service<Request<B>> for Limit<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // The semaphore is never closed, so `None` cannot happen; wait again if it did.
            match self.poll.poll_acquire(cx) {
                Poll::Ready(Some(permit)) => self.permit = Some(permit),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let permit = self.permit.take();
        let watch = is_watch(request.uri().query());
        let stats = self.stats.clone();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let in_flight = (!watch).then(|| InFlight::new(stats.clone()));
        let response = self.inner.call(request);
        if watch {
            drop(permit);
            return Box::pin(async move {
                let result = response.await;
                if result.as_ref().ok().and_then(retry_after).is_some() {
                    stats.throttled.fetch_add(1, Ordering::Relaxed);
                }
                result
            });
        }
        Box::pin(async move {
            let result = response.await;
            drop(in_flight);
            if let Some(wait) = result.as_ref().ok().and_then(retry_after) {
                stats.throttled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?wait, "the API server is shedding load (429); slowing down");
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    drop(permit);
                });
            } else {
                drop(permit);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn busy_from_half_of_the_bound_in_flight() {
        let unbounded = Arc::new(ApiStats::default());
        let _held: Vec<InFlight> = (0..100).map(|_| InFlight::new(unbounded.clone())).collect();
        assert!(!unbounded.busy(), "no bound: never busy");
        let stats = Arc::new(ApiStats::default());
        let _layer = LimitLayer::with_stats(16, stats.clone());
        let mut held: Vec<InFlight> = (0..7).map(|_| InFlight::new(stats.clone())).collect();
        assert!(!stats.busy(), "7 of 16");
        held.push(InFlight::new(stats.clone()));
        assert!(stats.busy(), "8 of 16");
        held.clear();
        assert!(!stats.busy(), "all answered");
    }

    #[test]
    fn watches_are_recognised() {
        assert!(is_watch(Some(
            "labelSelector=a&watch=true&resourceVersion=1"
        )));
        assert!(is_watch(Some("watch=1")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(Some("allowWatchBookmarks=true")));
        assert!(!is_watch(None));
    }

    #[tokio::test]
    async fn at_most_n_requests_are_in_flight_and_watches_pass() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (f, m) = (in_flight.clone(), most.clone());
        let inner = tower::service_fn(move |req: Request<()>| {
            let (f, m) = (f.clone(), m.clone());
            async move {
                if !is_watch(req.uri().query()) {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                } else {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        });
        let service = LimitLayer::new(3).layer(inner);
        // Five watches that never end do not take permits.
        let mut watches = Vec::new();
        for _ in 0..5 {
            let svc = service.clone();
            watches.push(tokio::spawn(async move {
                let req = Request::get("/api/v1/pods?watch=true")
                    .body(())
                    .expect("request");
                svc.oneshot(req).await
            }));
        }
        let mut calls = Vec::new();
        for _ in 0..20 {
            let mut svc = service.clone();
            calls.push(tokio::spawn(async move {
                let req = Request::get("/api/v1/pods").body(()).expect("request");
                svc.ready().await.expect("ready").call(req).await
            }));
        }
        for c in calls {
            tokio::time::timeout(Duration::from_secs(5), c)
                .await
                .expect("requests finish while watches stay open")
                .expect("task")
                .expect("call");
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        for w in watches {
            w.abort();
        }
    }

    #[test]
    fn retry_after_is_read_from_429_only_and_capped() {
        let response = |status: u16, header: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(h) = header {
                b = b.header(http::header::RETRY_AFTER, h);
            }
            b.body(()).expect("response")
        };
        assert_eq!(
            retry_after(&response(429, Some("3"))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&response(429, None)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_after(&response(429, Some("soon"))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_after(&response(429, Some("3600"))),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(&response(503, Some("3"))), None);
        assert_eq!(retry_after(&response(200, None)), None);
    }

    #[tokio::test]
    async fn a_429_holds_its_permit_for_retry_after() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                let status = if n == 0 { 429 } else { 200 };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header(http::header::RETRY_AFTER, "1")
                        .body(())
                        .expect("response"),
                )
            }
        });
        let stats = Arc::new(ApiStats::default());
        let service = LimitLayer::with_stats(1, stats.clone()).layer(inner);
        let started = std::time::Instant::now();
        let first = service
            .clone()
            .oneshot(Request::get("/api/v1/pods").body(()).expect("request"))
            .await
            .expect("call");
        assert_eq!(first.status(), 429);
        let second = service
            .clone()
            .oneshot(Request::get("/api/v1/pods").body(()).expect("request"))
            .await
            .expect("call");
        assert_eq!(second.status(), 200);
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "the next request waited for Retry-After: {:?}",
            started.elapsed()
        );
        assert_eq!(
            (stats.requests(), stats.throttled(), stats.in_flight()),
            (2, 1, 0)
        );
    }

    #[tokio::test]
    async fn requests_count_as_in_flight_until_answered() {
        let stats = Arc::new(ApiStats::default());
        let seen = stats.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            let during = seen.in_flight();
            async move { Ok::<_, std::convert::Infallible>(Response::new(during)) }
        });
        let service = LimitLayer::with_stats(4, stats.clone()).layer(inner);
        let response = service
            .clone()
            .oneshot(Request::get("/api/v1/pods").body(()).expect("request"))
            .await
            .expect("call");
        assert_eq!(*response.body(), 1, "in flight while the call runs");
        assert_eq!(
            (stats.in_flight(), stats.requests(), stats.limit()),
            (0, 1, 4)
        );
    }
}
