//! What fixed structures cost a node in heap, counted by a global allocator of this test
//! binary's own (issue 13: idle memory per node). Its own binary: the count is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use libp2p::{PeerId, StreamProtocol};
use libp2p_kad as kad;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to `System` unchanged; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// A Kademlia behaviour as a node builds it, with an empty routing table, holds little heap:
/// its 256 k-buckets take memory as peers arrive (vendor/libp2p-kad/PATCHED.md). Unpatched,
/// each bucket reserved room for 20 peers up front: 1.7 MB per node.
#[test]
fn an_empty_kademlia_routing_table_holds_no_reserved_buckets() {
    let peer = PeerId::random();
    let config = kad::Config::new(StreamProtocol::new("/crabnet/kad/test"));
    let before = LIVE.load(Ordering::Relaxed);
    let behaviour = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), config);
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(behaviour);
    assert!(
        held < 256 * 1024,
        "an empty Kademlia behaviour holds {held} bytes of heap"
    );
}
