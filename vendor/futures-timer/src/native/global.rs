//! The global helper thread that runs the timer of every `Delay`.
//!
//! Crabnet's fork (see `PATCHED.md`): upstream 3.0.3 starts this thread on the first
//! `Delay::new`, detaches it and never stops it, so a process cannot end without a thread that
//! it started still running, and memory checkers (valgrind) report the thread's handle and TLS
//! block as "possibly lost". Here the thread is kept in [`GLOBAL`], every `Delay` is counted in
//! [`DELAYS`], and [`stop_global_thread`] stops and joins the thread once no `Delay` exists; the
//! next `Delay::new` starts a new one.

use std::future::Future;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, RawWaker, RawWakerVTable, Waker};
use std::thread;
use std::thread::Thread;
use std::time::Instant;

use super::{Timer, TimerHandle};

/// The running helper thread, if any. Locked while a `Delay` is registered with it and while
/// it is taken out to be stopped, so that no `Delay` is ever bound to a stopping thread.
static GLOBAL: Mutex<Option<HelperThread>> = Mutex::new(None);

/// How many `Delay`s exist (created by `Delay::new` and not dropped yet).
static DELAYS: AtomicUsize = AtomicUsize::new(0);

fn global() -> MutexGuard<'static, Option<HelperThread>> {
    // Nothing panics while the lock is held except a failed thread spawn's allocation; the
    // state stays consistent, so a poisoned lock is used as it is.
    GLOBAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a new `Delay` and returns the handle of the helper thread's timer, starting the
/// thread when none runs. When the thread cannot be started, the handle is a dead one and the
/// `Delay` is inert (as upstream).
pub(crate) fn register_delay() -> TimerHandle {
    let mut global = global();
    DELAYS.fetch_add(1, Ordering::SeqCst);
    if global.is_none() {
        match HelperThread::new() {
            Ok(helper) => *global = Some(helper),
            Err(_) => return TimerHandle { inner: Weak::new() },
        }
    }
    global
        .as_ref()
        .map(HelperThread::handle)
        .expect("started above")
}

/// Uncounts a dropped `Delay` (after it has told the timer to forget it).
pub(crate) fn delay_dropped() {
    DELAYS.fetch_sub(1, Ordering::SeqCst);
}

/// Stops the global helper thread and waits for it to end, if no `Delay` exists; the next
/// `Delay::new` starts a new thread. Returns whether no helper thread runs on return (`false`:
/// some `Delay` still exists, and the thread keeps running for it).
///
/// Call it when the work that used timers is over (for example after dropping the async
/// runtime whose tasks held them), so that no thread of this crate outlives that work.
pub fn stop_global_thread() -> bool {
    let helper = {
        let mut global = global();
        if DELAYS.load(Ordering::SeqCst) != 0 {
            return global.is_none();
        }
        global.take()
    };
    // Dropping it stops and joins the thread (outside the lock: a `Delay::new` meanwhile
    // starts a new thread instead of waiting).
    drop(helper);
    true
}

/// Whether the global helper thread runs (for tests).
pub fn global_thread_running() -> bool {
    global().is_some()
}

struct HelperThread {
    thread: Option<thread::JoinHandle<()>>,
    timer: TimerHandle,
    done: Arc<AtomicBool>,
}

impl HelperThread {
    fn new() -> io::Result<HelperThread> {
        let timer = Timer::new();
        let timer_handle = timer.handle();
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        let thread = thread::Builder::new()
            .name("futures-timer".to_owned())
            .spawn(move || run(timer, done2))?;

        Ok(HelperThread {
            thread: Some(thread),
            done,
            timer: timer_handle,
        })
    }

    fn handle(&self) -> TimerHandle {
        self.timer.clone()
    }
}

impl Drop for HelperThread {
    fn drop(&mut self) {
        let thread = match self.thread.take() {
            Some(thread) => thread,
            None => return,
        };
        self.done.store(true, Ordering::SeqCst);
        thread.thread().unpark();
        drop(thread.join());
    }
}

fn run(mut timer: Timer, done: Arc<AtomicBool>) {
    let waker = current_thread_waker();
    let mut cx = Context::from_waker(&waker);

    while !done.load(Ordering::SeqCst) {
        let _ = Pin::new(&mut timer).poll(&mut cx);

        timer.advance();
        match timer.next_event() {
            // Ok, block for the specified time
            Some(when) => {
                let now = Instant::now();
                if now < when {
                    thread::park_timeout(when - now)
                } else {
                    // .. continue...
                }
            }

            // Just wait for one of our futures to wake up
            None => thread::park(),
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(raw_clone, raw_wake, raw_wake_by_ref, raw_drop);

fn raw_clone(ptr: *const ()) -> RawWaker {
    let me = ManuallyDrop::new(unsafe { Arc::from_raw(ptr as *const Thread) });
    mem::forget(me.clone());
    RawWaker::new(ptr, &VTABLE)
}

fn raw_wake(ptr: *const ()) {
    unsafe { Arc::from_raw(ptr as *const Thread) }.unpark()
}

fn raw_wake_by_ref(ptr: *const ()) {
    ManuallyDrop::new(unsafe { Arc::from_raw(ptr as *const Thread) }).unpark()
}

fn raw_drop(ptr: *const ()) {
    unsafe { Arc::from_raw(ptr as *const Thread) };
}

fn current_thread_waker() -> Waker {
    let thread = Arc::new(thread::current());
    unsafe { Waker::from_raw(RawWaker::new(Arc::into_raw(thread) as *const (), &VTABLE)) }
}
