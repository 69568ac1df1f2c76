//! Support for creating futures that represent timeouts.
//!
//! This module contains the `Delay` type which is a future that will resolve
//! at a particular point in the future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::arc_list::Node;
use super::AtomicWaker;
use super::{global, ScheduledTimer, TimerHandle};

/// A future representing the notification that an elapsed duration has
/// occurred.
///
/// This is created through the `Delay::new` method indicating when the future should fire.
/// Note that these futures are not intended for high resolution timers, but rather they will
/// likely fire some granularity after the exact instant that they're otherwise indicated to fire
/// at.
pub struct Delay {
    state: Option<Arc<Node<ScheduledTimer>>>,
    /// Crabnet's fork: set when the `Delay` was made inside a Tokio runtime, whose own timer
    /// then runs it (`state` is `None` and the helper thread never hears of it).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// When a delay of `dur` from now ends, on Tokio's clock; a duration too long for the clock
/// ends about thirty years from now (as `tokio::time::sleep` does).
fn tokio_deadline(dur: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(dur)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

impl Delay {
    /// Creates a new future which will fire at `dur` time into the future.
    ///
    /// Made inside a Tokio runtime (Crabnet's fork), the returned object is run by that
    /// runtime's timer, which must be enabled (`enable_time`); it may be polled from any
    /// thread while the runtime runs. Made elsewhere, it is bound to the timer of the global
    /// helper thread, which is started when none runs (see `stop_global_thread`).
    #[inline]
    pub fn new(dur: Duration) -> Delay {
        if tokio::runtime::Handle::try_current().is_ok() {
            let sleep = tokio::time::sleep_until(tokio_deadline(dur));
            return Delay {
                state: None,
                sleep: Some(Box::pin(sleep)),
            };
        }
        Delay::new_handle(Instant::now() + dur, global::register_delay())
    }

    /// Creates a new future which will fire at the time specified by `at`.
    ///
    /// The returned instance of `Delay` will be bound to the timer specified by
    /// the `handle` argument.
    pub(crate) fn new_handle(at: Instant, handle: TimerHandle) -> Delay {
        let inner = match handle.inner.upgrade() {
            Some(i) => i,
            None => {
                return Delay {
                    state: None,
                    sleep: None,
                }
            }
        };
        let state = Arc::new(Node::new(ScheduledTimer {
            at: Mutex::new(Some(at)),
            state: AtomicUsize::new(0),
            waker: AtomicWaker::new(),
            inner: handle.inner,
            slot: Mutex::new(None),
        }));

        // If we fail to actually push our node then we've become an inert
        // timer, meaning that we'll want to immediately return an error from
        // `poll`.
        if inner.list.push(&state).is_err() {
            return Delay {
                state: None,
                sleep: None,
            };
        }

        inner.waker.wake();
        Delay {
            state: Some(state),
            sleep: None,
        }
    }

    /// Resets this timeout to an new timeout which will fire at the time
    /// specified by `at`.
    #[inline]
    pub fn reset(&mut self, dur: Duration) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(tokio_deadline(dur));
            return;
        }
        if self._reset(dur).is_err() {
            self.state = None
        }
    }

    fn _reset(&mut self, dur: Duration) -> Result<(), ()> {
        let state = match self.state {
            Some(ref state) => state,
            None => return Err(()),
        };
        if let Some(timeouts) = state.inner.upgrade() {
            let mut bits = state.state.load(SeqCst);
            loop {
                // If we've been invalidated, cancel this reset
                if bits & 0b10 != 0 {
                    return Err(());
                }
                let new = bits.wrapping_add(0b100) & !0b11;
                match state.state.compare_exchange(bits, new, SeqCst, SeqCst) {
                    Ok(_) => break,
                    Err(s) => bits = s,
                }
            }
            *state.at.lock().unwrap() = Some(Instant::now() + dur);
            // If we fail to push our node then we've become an inert timer, so
            // we'll want to clear our `state` field accordingly
            timeouts.list.push(state)?;
            timeouts.waker.wake();
        }

        Ok(())
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(sleep) = &mut self.sleep {
            return sleep.as_mut().poll(cx);
        }
        let state = match self.state {
            Some(ref state) => state,
            None => panic!("timer has gone away"),
        };

        if state.state.load(SeqCst) & 1 != 0 {
            return Poll::Ready(());
        }

        state.waker.register(cx.waker());

        // Now that we've registered, do the full check of our own internal
        // state. If we've fired the first bit is set, and if we've been
        // invalidated the second bit is set.
        match state.state.load(SeqCst) {
            n if n & 0b01 != 0 => Poll::Ready(()),
            n if n & 0b10 != 0 => panic!("timer has gone away"),
            _ => Poll::Pending,
        }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if self.sleep.is_some() {
            // Run by a Tokio runtime: never counted, and the helper thread never knew it.
            return;
        }
        if let Some(ref state) = self.state {
            if let Some(timeouts) = state.inner.upgrade() {
                *state.at.lock().unwrap() = None;
                if timeouts.list.push(state).is_ok() {
                    timeouts.waker.wake();
                }
            }
        }
        // Every `Delay` comes from `Delay::new`, which counted it; uncounted last, once
        // the timer no longer needs to hear from it.
        global::delay_dropped();
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        f.debug_struct("Delay").finish()
    }
}

// Upstream's `Delay` is `Send` and `Sync`, and libp2p relies on it.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Delay>();
};
