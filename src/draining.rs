//! The application's view of a drain: a cheap signal that handlers of long-lived responses
//! (WebSockets, server-sent events, long polls) await, so they can say goodbye to their client
//! as soon as this process starts draining, instead of being cut at hammer time.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

/// Who waits for this process to drain.
static STATE: Mutex<State> = Mutex::new(State {
    next_id: 0,
    waiting: Vec::new(),
});

struct State {
    next_id: u64,
    /// The waker of each pending [`Draining`], by its id; removed when it is dropped, so
    /// streams that end on their own leave nothing behind.
    waiting: Vec<(u64, Waker)>,
}

/// Serializes the unit tests that set this process's drain state.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

/// Whether this process drains. Written under [`STATE`]'s lock, so that a waiter that checks
/// it there is either woken or sees it set; read without the lock where only a check is needed.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process drains now (see [`Draining`] to wait for it).
#[cfg(any(feature = "rustls", feature = "http2"))]
pub(crate) fn now() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the start (or, when an upgrade is rolled back, the end) of this process's drain and
/// wakes every task that awaits a [`Draining`].
pub(crate) fn set(draining: bool) {
    let waiting = {
        let mut state = state();
        DRAINING.store(draining, Ordering::SeqCst);
        if draining {
            std::mem::take(&mut state.waiting)
        } else {
            Vec::new()
        }
    };
    for (_, waker) in waiting {
        waker.wake();
    }
}

/// Resolves when this process starts draining: after it handed over to a new generation, or
/// on a graceful or forced stop (never on `SIGUSR1` or `SIGTSTP`). Cheap to create and clone;
/// also an extractor, so a handler can take it as an argument.
///
/// ```no_run
/// use actix_web::{web, HttpResponse};
///
/// async fn events(draining: actix_endless::Draining) -> HttpResponse {
///     // ... stream events until `draining` resolves, then send a last one and end
///     # drop(draining);
///     HttpResponse::Ok().finish()
/// }
/// ```
#[derive(Debug, Default)]
pub struct Draining {
    /// Set once it waits.
    id: Option<u64>,
}

impl Clone for Draining {
    fn clone(&self) -> Self {
        Draining::default()
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            state().waiting.retain(|(waiting, _)| *waiting != id);
        }
    }
}

/// The drain signal of this process (see [`Draining`]).
pub fn draining() -> Draining {
    Draining::default()
}

impl Draining {
    /// Whether this process drains now.
    pub fn is_draining(&self) -> bool {
        DRAINING.load(Ordering::SeqCst)
    }
}

impl Future for Draining {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = state();
        if DRAINING.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let id = *self.id.get_or_insert_with(|| {
            state.next_id += 1;
            state.next_id
        });
        match state.waiting.iter_mut().find(|(waiting, _)| *waiting == id) {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((_, waker)) => *waker = cx.waker().clone(),
            None => state.waiting.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl FromRequest for Draining {
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Draining, Self::Error>>;

    fn from_request(_: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(draining()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn resolves_on_drain_wakes_waiters_and_forgets_dropped_ones() {
        let _lock = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = draining();
        let mut dropped = draining();
        assert!(!first.is_draining());
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Pending);
        assert_eq!(Pin::new(&mut dropped).poll(&mut cx), Poll::Pending);
        // Polled again: still one registration each.
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Pending);
        assert_eq!(state().waiting.len(), 2);
        drop(dropped);
        assert_eq!(state().waiting.len(), 1);
        set(true);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(first.is_draining());
        assert_eq!(Pin::new(&mut first).poll(&mut cx), Poll::Ready(()));
        assert_eq!(Pin::new(&mut draining()).poll(&mut cx), Poll::Ready(()));
        set(false);
        assert_eq!(Pin::new(&mut draining()).poll(&mut cx), Poll::Pending);
    }
}
