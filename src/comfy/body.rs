//! A body wrapper that ends a stream which stays silent too long, so a stalled peer cannot pin a connection, a
//! task and a client forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::uri::PathAndQuery;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The stream was silent for longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("{what} was idle for more than {after:?}")]
pub struct IdleTimeoutError {
    pub what: &'static str,
    pub after: Duration,
}

/// The stream went on for longer than its total deadline (a client sending a byte now and then).
#[derive(Debug, thiserror::Error)]
#[error("{what} took more than {after:?} in all")]
pub struct DeadlineError {
    pub what: &'static str,
    pub after: Duration,
}

/// How long the body whose failure is `error` was given, when it failed for its time: silent too long
/// ([`IdleTimeoutError`]) or too long in all ([`DeadlineError`]), anywhere in the chain of causes.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(idle) = error.downcast_ref::<IdleTimeoutError>() {
            return Some(idle.after);
        }
        if let Some(total) = error.downcast_ref::<DeadlineError>() {
            return Some(total.after);
        }
        cause = error.source();
    }
    None
}

pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    /// The whole stream's deadline, when it has one ([`IdleTimeout::within`]): when it falls, how long that was,
    /// and its timer, made the first time the inner body has nothing ready.
    total: Option<(Instant, Duration)>,
    total_timer: Option<Pin<Box<Sleep>>>,
    /// Made the first time the inner body has nothing ready (a small body that arrives whole never needs a
    /// timer); then reset by every frame.
    deadline: Option<Pin<Box<Sleep>>>,
    what: &'static str,
    /// The client's route, for the log line when the stream is cut (only its path is written, never the query).
    route: Option<PathAndQuery>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration, what: &'static str) -> Self {
        Self {
            inner,
            timeout,
            total: None,
            total_timer: None,
            deadline: None,
            what,
            route: None,
        }
    }

    /// Ends the stream `total` from now, however steadily it trickles.
    pub fn within(mut self, total: Duration) -> Self {
        self.total = Some((Instant::now() + total, total));
        self
    }

    /// Names the route in the warning written when the stream is cut.
    pub fn on_route(mut self, route: Option<PathAndQuery>) -> Self {
        self.route = route;
        self
    }
}

impl<B> IdleTimeout<B> {
    /// Whether the total deadline has fallen; otherwise its timer is polled, to wake the task when it does.
    fn total_elapsed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((when, _)) = self.total else {
            return false;
        };
        self.total_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(when)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(deadline) = this.deadline.as_mut() {
                    deadline.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.total_elapsed(cx) => {
                let after = this.total.map_or(Duration::ZERO, |(_, after)| after);
                tracing::warn!(
                    what = this.what,
                    route = this.route.as_ref().map_or("", PathAndQuery::path),
                    total_secs = after.as_secs_f64(),
                    "stream took too long in all; cut"
                );
                Poll::Ready(Some(Err(Box::new(DeadlineError {
                    what: this.what,
                    after,
                }))))
            }
            Poll::Pending => match this
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.timeout)))
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => {
                    tracing::warn!(
                        what = this.what,
                        route = this.route.as_ref().map_or("", PathAndQuery::path),
                        idle_secs = this.timeout.as_secs_f64(),
                        "stream idle too long; cut"
                    );
                    Poll::Ready(Some(Err(Box::new(IdleTimeoutError {
                        what: this.what,
                        after: this.timeout,
                    }))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body grew past its limit.
#[derive(Debug, thiserror::Error)]
#[error("body larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// A streaming size limit that also raises a flag when it trips. The flag, not the error, is what the gateway
/// reads: an HTTP client reports a failed request body in its own words, and the original error does not always
/// survive the trip through its connection task. A second flag says the body itself failed (the client's framing
/// was broken, or it went away mid-body), which is the client's fault, not the upstream's.
pub struct SizeLimit<B> {
    inner: B,
    left: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl<B> SizeLimit<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let tripped = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                left: limit,
                limit,
                tripped: tripped.clone(),
                failed: Arc::new(AtomicBool::new(false)),
            },
            tripped,
        )
    }

    /// Raised when the inner body yields an error.
    pub fn failed_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }
}

impl<B> Body for SizeLimit<B>
where
    B: Body + Unpin,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.remaining() as u64);
                if len > this.left {
                    this.tripped.store(true, Ordering::SeqCst);
                    return Poll::Ready(Some(Err(Box::new(TooLarge { limit: this.limit }))));
                }
                this.left -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.failed.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(error.into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
