//! The store shared by a node's threads, with room for batches.
//!
//! [`SharedStore::lock`] is a mutex lock, except while one thread applies a batch of received
//! frames in one transaction ([`SharedStore::begin_batch`]): that thread takes the lock as
//! often as it likes, one operation at a time, and every other thread waits until the batch is
//! committed (or rolled back). So nothing another thread writes (a local publish, a decision)
//! ends up inside the batch's transaction, where a crash before the commit would lose what
//! was already acknowledged, and nothing reads the batch's writes before they are durable.
//! Threads that wait go first when the batch is over: a new batch waits (briefly) for them.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use super::{Ops, Store};
use crate::error::Result;
use crate::lock;

/// How long a new batch lets threads that waited for the last one go first, at most.
const WAITERS_FIRST: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Gate {
    /// The thread whose batch is open.
    owner: Option<ThreadId>,
    /// Threads waiting for the batch to end.
    waiting: usize,
}

/// A [`Store`] behind a mutex that a batch can hold across operations (see the module docs).
#[derive(Debug)]
pub(crate) struct SharedStore {
    store: Mutex<Store>,
    gate: Mutex<Gate>,
    changed: Condvar,
}

impl SharedStore {
    /// Shares `store`.
    pub fn new(store: Store) -> Self {
        SharedStore {
            store: Mutex::new(store),
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
        }
    }

    /// Locks the store; waits while another thread's batch is open.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        let me = std::thread::current().id();
        let mut counted = false;
        loop {
            let store = lock(&self.store);
            let mut gate = lock(&self.gate);
            if gate.owner.is_none_or(|o| o == me) {
                if counted {
                    gate.waiting -= 1;
                    self.changed.notify_all();
                }
                return store;
            }
            drop(store);
            if !counted {
                gate.waiting += 1;
                counted = true;
            }
            drop(
                self.changed
                    .wait_while(gate, |g| g.owner.is_some_and(|o| o != me))
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
    }

    /// The store if it is free now (no other thread holds it, no other thread's batch is
    /// open).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, Store>> {
        let store = match self.store.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let me = std::thread::current().id();
        lock(&self.gate)
            .owner
            .is_none_or(|o| o == me)
            .then_some(store)
    }

    /// Opens a batch on this thread ([`Store::begin_batch`], its operations kept apart as
    /// `ops` says); the batch ends when the returned handle is ended or dropped (then rolled
    /// back).
    pub fn begin_batch(&self, ops: Ops) -> Result<Batch<'_>> {
        {
            let gate = lock(&self.gate);
            let _ = self
                .changed
                .wait_timeout_while(gate, WAITERS_FIRST, |g| g.waiting > 0);
        }
        let mut store = self.lock();
        store.begin_batch(ops)?;
        lock(&self.gate).owner = Some(std::thread::current().id());
        drop(store);
        Ok(Batch {
            shared: self,
            open: true,
        })
    }

    /// A batch for a group of `count` operations, or none: for fewer than two (a lone
    /// operation commits on its own), and when it cannot be opened (each operation then
    /// commits on its own; warned as `cannot open a store batch for {what}: {error}`).
    pub(crate) fn batch_for(&self, count: usize, what: &str, ops: Ops) -> Option<Batch<'_>> {
        if count < 2 {
            return None;
        }
        self.begin_batch(ops)
            .inspect_err(|e| tracing::warn!("cannot open a store batch for {what}: {e}"))
            .ok()
    }
}

/// An open batch (see [`SharedStore::begin_batch`]).
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    shared: &'a SharedStore,
    open: bool,
}

impl Batch<'_> {
    /// Commits the batch (`commit`) or rolls it back, and lets other threads at the store.
    pub fn end(mut self, commit: bool) -> Result<()> {
        self.finish(commit)
    }

    fn finish(&mut self, commit: bool) -> Result<()> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        let mut store = self.shared.lock();
        let ended = store.end_batch(commit);
        lock(&self.shared.gate).owner = None;
        drop(store);
        self.shared.changed.notify_all();
        ended
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish(false) {
            tracing::warn!("cannot roll back a store batch: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::temp_store;
    use std::sync::Arc;

    fn shared() -> (tempfile::TempDir, Arc<SharedStore>) {
        let (dir, store) = temp_store();
        (dir, Arc::new(SharedStore::new(store)))
    }

    /// Another thread's write waits for the batch and is not part of it: a rollback of the
    /// batch keeps it, and it never sees the batch's writes before the commit.
    #[test]
    fn other_threads_wait_for_the_batch_and_stay_out_of_it() {
        let (_dir, shared) = shared();
        let batch = shared.begin_batch(Ops::Savepoint).unwrap();
        shared.lock().count("in.batch").unwrap();
        let other = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut store = shared.lock();
                let seen = store.counters().unwrap().get("in.batch").copied();
                store.count("outside").unwrap();
                seen
            })
        };
        // The other thread cannot get in while the batch is open.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!other.is_finished());
        assert!(
            shared.try_lock().is_some(),
            "the batch's own thread gets in"
        );
        batch.end(false).unwrap();
        assert_eq!(other.join().unwrap(), None, "rolled back, never seen");
        let counters = shared.lock().counters().unwrap();
        assert_eq!(counters.get("outside"), Some(&1));
        assert_eq!(counters.get("in.batch"), None);
    }

    /// A batch commits every operation in it at once; a batch dropped without an end is rolled
    /// back.
    #[test]
    fn a_batch_commits_once_and_a_dropped_one_rolls_back() {
        let (_dir, shared) = shared();
        let batch = shared.begin_batch(Ops::Savepoint).unwrap();
        shared.lock().count("a").unwrap();
        shared.lock().count("b").unwrap();
        batch.end(true).unwrap();
        let counters = shared.lock().counters().unwrap();
        assert_eq!((counters.get("a"), counters.get("b")), (Some(&1), Some(&1)));

        let batch = shared.begin_batch(Ops::Savepoint).unwrap();
        shared.lock().count("c").unwrap();
        drop(batch);
        assert_eq!(shared.lock().counters().unwrap().get("c"), None);
        assert!(!shared.lock().in_batch());
    }
}
