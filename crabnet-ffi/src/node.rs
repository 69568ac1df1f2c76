//! `crabnet_node` and `crabnet_hub`: starting, driving, observing and stopping a node.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crabnet_core::embed::{ListenerId, NetworkSpec};
use crabnet_core::{
    BlockingNode, BlockingSubscription, Event, MemoryHub, PublishRequest, SeedStatus,
};

use crate::config::crabnet_config;
use crate::error::{FfiError, FfiResult, crabnet_status, ffi};
use crate::handle::{Handle, UserData, arg_json, arg_seed_id, arg_str, ffi_out, to_json};

/// An in-process network (opaque): nodes started on the same hub with
/// `crabnet_node_start_memory` exchange messages without leaving the process.
///
/// Created by `crabnet_hub_new`, freed with `crabnet_hub_free`. Nodes keep the network alive:
/// the hub handle may be freed while nodes still use it. Thread-safe.
#[allow(non_camel_case_types)]
pub struct crabnet_hub {
    hub: MemoryHub,
}

impl Handle for crabnet_hub {}

/// A running node (opaque).
///
/// Created by `crabnet_node_start`, `crabnet_node_start_memory`, `crabnet_node_start_udp` or
/// `crabnet_node_start_dht`;
/// stopped with `crabnet_node_stop` and freed with `crabnet_node_free`. Every function taking
/// a `const crabnet_node *` may be called from any thread at the same time, and from inside
/// an event callback.
#[allow(non_camel_case_types)]
pub struct crabnet_node {
    node: BlockingNode,
    shared: Arc<Shared>,
    poll: Mutex<BlockingSubscription>,
}

// Handles are shared between C threads: make sure the Rust types allow it.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<crabnet_node>();
    shareable::<crabnet_hub>();
};

/// An event callback: `user_data` as given to `crabnet_node_subscribe`, and one event as a
/// JSON object (`{"seq": 7, "at": 1700000000000, "type": "bid_placed", ...}`; `type` names
/// the event, see docs/PROTOCOL.md).
///
/// `event_json` is owned by Crabnet and valid only during the call: copy what you keep, do
/// not free it. Callbacks run on a thread owned by the node (one per node, so the callbacks of
/// one node never run concurrently), never while Crabnet holds a lock: a callback may call any
/// Crabnet function, including subscribe, unsubscribe, stop and free on its own node. A
/// callback must return normally: no C++ exception and no longjmp may leave it.
#[allow(non_camel_case_types)]
pub type crabnet_event_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event_json: *const c_char)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT_NODE_UID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The node whose callback this thread is running (0: none).
    static IN_CALLBACK_OF: Cell<u64> = const { Cell::new(0) };
}

fn in_callback_of(node_uid: u64) -> bool {
    IN_CALLBACK_OF.try_with(Cell::get).unwrap_or(0) == node_uid
}

/// State shared by a node handle and the listeners it registered.
struct Shared {
    uid: u64,
    /// A stop began: no new subscriptions.
    stopping: AtomicBool,
    /// A stop finished: every last event is on the bus.
    stopped: AtomicBool,
    subs: Mutex<HashMap<u64, Arc<Sub>>>,
}

/// One C subscription.
struct Sub {
    callback: unsafe extern "C" fn(*mut c_void, *const c_char),
    user_data: UserData,
    state: Mutex<SubState>,
    idle: Condvar,
}

struct SubState {
    active: bool,
    calling: bool,
}

impl Sub {
    /// Called by the node's events thread for every event.
    fn deliver(&self, node_uid: u64, event: &Event) {
        let Ok(json) = serde_json::to_string(event).map(CString::new) else {
            return;
        };
        let Ok(json) = json else { return };
        {
            let mut state = lock(&self.state);
            if !state.active {
                return;
            }
            state.calling = true;
        }
        let outer = IN_CALLBACK_OF.with(|c| c.replace(node_uid));
        // SAFETY: the host registered this callback and user data for exactly this call; the
        // string lives until the call returns.
        unsafe { (self.callback)(self.user_data.0, json.as_ptr()) };
        IN_CALLBACK_OF.with(|c| c.set(outer));
        lock(&self.state).calling = false;
        self.idle.notify_all();
    }

    /// No call starts after this returns, and none is in progress, except the caller itself
    /// when it runs inside a callback of the same node.
    fn deactivate(&self, node_uid: u64) {
        let mut state = lock(&self.state);
        state.active = false;
        if in_callback_of(node_uid) {
            // The only thread that calls this subscription is the caller: nothing to wait for.
            return;
        }
        while state.calling {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Shared {
    fn deactivate_all(&self) {
        let subs: Vec<Arc<Sub>> = lock(&self.subs).drain().map(|(_, s)| s).collect();
        for sub in subs {
            sub.deactivate(self.uid);
        }
    }
}

impl crabnet_node {
    fn new(node: BlockingNode) -> Box<crabnet_node> {
        let poll = Mutex::new(node.subscribe());
        Box::new(crabnet_node {
            node,
            shared: Arc::new(Shared {
                uid: NEXT_NODE_UID.fetch_add(1, Ordering::Relaxed),
                stopping: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                subs: Mutex::new(HashMap::new()),
            }),
            poll,
        })
    }

    /// The node inside.
    pub(crate) fn blocking(&self) -> &BlockingNode {
        &self.node
    }

    fn stop(&self) -> FfiResult<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Delivers the last events and joins the events thread (unless called from it).
        let stopped = self.node.stop();
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.deactivate_all();
        Ok(stopped?)
    }

    fn subscribe(
        &self,
        callback: unsafe extern "C" fn(*mut c_void, *const c_char),
        user_data: *mut c_void,
    ) -> FfiResult<u64> {
        let stopped = || FfiError::new(crabnet_status::Stopped, "the node has been stopped");
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        let sub = Arc::new(Sub {
            callback,
            user_data: UserData(user_data),
            state: Mutex::new(SubState {
                active: true,
                calling: false,
            }),
            idle: Condvar::new(),
        });
        let listener = {
            let sub = sub.clone();
            let uid = self.shared.uid;
            Arc::new(move |event: &Event| sub.deliver(uid, event))
        };
        let id = self.node.add_listener(listener)?;
        lock(&self.shared.subs).insert(id.0, sub.clone());
        if self.shared.stopping.load(Ordering::SeqCst) {
            // A stop began meanwhile and may have missed this subscription.
            lock(&self.shared.subs).remove(&id.0);
            self.node.remove_listener(id);
            sub.deactivate(self.shared.uid);
            return Err(stopped());
        }
        Ok(id.0)
    }

    fn unsubscribe(&self, id: u64) -> FfiResult<()> {
        let sub = lock(&self.shared.subs).remove(&id).ok_or_else(|| {
            FfiError::new(
                crabnet_status::NotFound,
                format!("no subscription {id} on this node"),
            )
        })?;
        self.node.remove_listener(ListenerId(id));
        sub.deactivate(self.shared.uid);
        Ok(())
    }

    fn next_event(&self, timeout: Duration) -> FfiResult<Option<String>> {
        // Waits in short slices so that a stop on another thread ends the wait promptly.
        const SLICE: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + timeout;
        let mut poll = lock(&self.poll);
        loop {
            // Not the core's `is_stopped`: it turns true when a stop begins, before the last
            // events are published.
            let stopped = self.shared.stopped.load(Ordering::SeqCst);
            let wait = if stopped {
                Duration::ZERO
            } else {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(SLICE)
            };
            match poll.recv_timeout(wait)? {
                Some(event) => return to_json(&event).map(Some),
                None if stopped => {
                    return Err(FfiError::new(
                        crabnet_status::Stopped,
                        "the node has been stopped and every event was read",
                    ));
                }
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }
}

impl Handle for crabnet_node {
    fn before_free(&self) {
        // Errors of a stop inside free are lost; call `crabnet_node_stop` first to see them.
        let _ = self.stop();
    }
}

/// Creates an in-process network.
///
/// On success `*out_hub` receives a new handle, freed with `crabnet_hub_free`.
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_hub_new(out_hub: *mut *mut crabnet_hub) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_hub_new", out_hub, "out_hub", || {
            Ok(Box::new(crabnet_hub {
                hub: MemoryHub::new(),
            }))
        })
    }
}

/// Cuts the hub members called `name` off (`isolated` true) or reconnects them (false):
/// messages to or from an isolated member are dropped, as in a network partition. Meant for
/// tests. Errors: `NULL_ARGUMENT`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_hub_set_isolated(
    hub: *const crabnet_hub,
    name: *const c_char,
    isolated: bool,
) -> crabnet_status {
    ffi("crabnet_hub_set_isolated", || {
        // SAFETY: pointer arguments are NULL or valid, as the header requires.
        let (hub, name) = unsafe { (crabnet_hub::borrow(hub, "hub")?, arg_str(name, "name")?) };
        hub.hub.set_isolated(name, isolated);
        Ok(())
    })
}

/// Frees a hub handle. NULL is a no-op. Nodes started on the hub keep working.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_hub_free(hub: *mut crabnet_hub) {
    unsafe { crabnet_hub::free("crabnet_hub_free", hub) }
}

unsafe fn start(
    function: &str,
    config: *const crabnet_config,
    out_node: *mut *mut crabnet_node,
    network: impl FnOnce() -> FfiResult<NetworkSpec>,
) -> crabnet_status {
    unsafe {
        ffi_out(function, out_node, "out_node", || {
            let config = crabnet_config::borrow(config, "config")?.config.clone();
            let network = network()?;
            Ok(crabnet_node::new(BlockingNode::start_on(config, network)?))
        })
    }
}

/// The body of the `crabnet_node_start_*` functions whose network is described by a JSON
/// argument: `settings` (argument `name`, `what` in its errors) parses into `T`, which
/// `network` makes the node's network of.
unsafe fn start_with_settings<T: serde::de::DeserializeOwned>(
    function: &str,
    config: *const crabnet_config,
    settings: *const c_char,
    name: &str,
    what: &str,
    network: fn(T) -> NetworkSpec,
    out_node: *mut *mut crabnet_node,
) -> crabnet_status {
    unsafe {
        start(function, config, out_node, || {
            Ok(network(arg_json(settings, name, what)?))
        })
    }
}

/// Starts a node without a network: local operations, queries and events work; its messages
/// wait in the outbox of its data directory until a node with a network runs on it.
///
/// The configuration is copied; the caller keeps ownership of `config`. On success
/// `*out_node` receives a new handle, freed with `crabnet_node_free`.
/// Errors: `NULL_ARGUMENT`, `CONFIG`, `IO`, `STORE`, `BUSY`, `INTERNAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_start(
    config: *const crabnet_config,
    out_node: *mut *mut crabnet_node,
) -> crabnet_status {
    unsafe {
        start("crabnet_node_start", config, out_node, || {
            Ok(NetworkSpec::Offline)
        })
    }
}

/// Starts a node on an in-process network as member `name`.
///
/// The configuration and the hub are not kept by the caller's handles: the node holds its own
/// reference to the network, so `config` and `hub` may be freed right after. A node with a
/// network holds its data directory's listen lock: a second one on the same directory fails
/// with `BUSY`. On success `*out_node` receives a new handle, freed with `crabnet_node_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `CONFIG`, `IO`, `STORE`, `BUSY`, `INTERNAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_start_memory(
    config: *const crabnet_config,
    hub: *const crabnet_hub,
    name: *const c_char,
    out_node: *mut *mut crabnet_node,
) -> crabnet_status {
    unsafe {
        start("crabnet_node_start_memory", config, out_node, || {
            Ok(NetworkSpec::Memory {
                hub: crabnet_hub::borrow(hub, "hub")?.hub.clone(),
                name: arg_str(name, "name")?.to_owned(),
            })
        })
    }
}

/// Starts a node on UDP, described by a JSON object:
/// `{"bind": "127.0.0.1:7946", "peers": ["127.0.0.1:7947"], "broadcast": null}`. Every
/// message is sent to each peer; `broadcast` (an address, off by default) also sends it to a
/// broadcast address. Keys are optional (`bind` defaults to 127.0.0.1:7946); unknown keys are
/// errors.
///
/// The caller keeps ownership of `config` and `udp_json`. On success `*out_node` receives a
/// new handle, freed with `crabnet_node_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON), `NETWORK` (cannot bind),
/// `CONFIG`, `IO`, `STORE`, `BUSY`, `INTERNAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_start_udp(
    config: *const crabnet_config,
    udp_json: *const c_char,
    out_node: *mut *mut crabnet_node,
) -> crabnet_status {
    unsafe {
        start_with_settings(
            "crabnet_node_start_udp",
            config,
            udp_json,
            "udp_json",
            "UDP settings",
            NetworkSpec::Udp,
            out_node,
        )
    }
}

/// Starts a node on libp2p (gossipsub, Kademlia, identify, sync over request-response, TCP and
/// QUIC), described by a JSON object, every key optional:
/// `{"listen": ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"],
/// "peers": ["/ip4/127.0.0.1/tcp/4002"], "bootstrap": ["/ip4/.../tcp/PORT/p2p/PEER_ID"],
/// "mdns": false, "udp_fallback": {"bind": "127.0.0.1:7946", "peers": []}}`. `listen`
/// defaults to TCP on 127.0.0.1 with a free port (QUIC only when listed, as above). mDNS is off
/// unless enabled. With `udp_fallback`, frames also go over UDP while libp2p has no peer (or
/// when it cannot start); a `transport_status` event says so. Unknown keys are errors.
///
/// The caller keeps ownership of `config` and `dht_json`. On success `*out_node` receives a
/// new handle, freed with `crabnet_node_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON), `NETWORK` (bad address,
/// cannot listen), `CONFIG`, `IO`, `STORE`, `BUSY`, `INTERNAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_start_dht(
    config: *const crabnet_config,
    dht_json: *const c_char,
    out_node: *mut *mut crabnet_node,
) -> crabnet_status {
    unsafe {
        start_with_settings(
            "crabnet_node_start_dht",
            config,
            dht_json,
            "dht_json",
            "libp2p settings",
            NetworkSpec::Dht,
            out_node,
        )
    }
}

/// Stops the node gracefully: refuses new operations; gives a task in progress (a
/// `crabnet_node_run` blocked on another thread) `runner.stop_grace_ms` milliseconds (default 0)
/// to finish, then kills it (its whole process group, or its PID namespace) and records and
/// reports its result with `"interrupted": true` (that `crabnet_node_run` then returns `OK` with
/// this result); sends what is due, records the last events, delivers them to every callback,
/// waits for the callbacks in progress, and releases the data directory. No task process of
/// this node is left running when it returns. No callback of this node runs after it returns.
/// Calling it again is fine. Because it waits for callbacks, do not call it while holding a
/// lock that a callback takes.
///
/// Called from inside one of this node's callbacks, it cannot wait for that callback (the
/// caller): it returns at once, and no other callback of this node runs afterwards (the last
/// events remain readable with `crabnet_node_next_event` and `crabnet_node_events_after`).
///
/// The handle stays valid until `crabnet_node_free`; calls that need the running node then
/// fail with `STOPPED` (`crabnet_node_id` and `crabnet_node_next_event` still work).
/// Errors: `NULL_ARGUMENT`, `STORE`, `IO`, `INTERNAL`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_stop(node: *const crabnet_node) -> crabnet_status {
    ffi("crabnet_node_stop", || {
        // SAFETY: NULL or a live handle, as the header requires.
        unsafe { crabnet_node::borrow(node, "node") }?.stop()
    })
}

/// Stops the node if needed (as `crabnet_node_stop`, whose errors are lost here) and frees the
/// handle. NULL is a no-op.
///
/// No other thread may use the handle during or after this call. It may be called from
/// inside one of this node's callbacks; the handle must not be used after it returns, also
/// not by that callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_free(node: *mut crabnet_node) {
    unsafe { crabnet_node::free("crabnet_node_free", node) }
}

/// Writes this node's id (64 lowercase hex digits).
///
/// On success `*out_id` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_id(
    node: *const crabnet_node,
    out_id: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out("crabnet_node_id", out_id, "out_id", || {
            Ok(crabnet_node::borrow(node, "node")?
                .node
                .node()
                .id()
                .to_string())
        })
    }
}

/// The body of the functions that run `op` on the node and write its value as JSON to `out`
/// (argument `out_name`): `out` is checked first, then `node`, then what `op` checks.
unsafe fn node_json<T: serde::Serialize>(
    function: &str,
    node: *const crabnet_node,
    out: *mut *mut c_char,
    out_name: &str,
    op: impl FnOnce(&BlockingNode) -> FfiResult<T>,
) -> crabnet_status {
    unsafe {
        ffi_out(function, out, out_name, || {
            let node = crabnet_node::borrow(node, "node")?;
            to_json(&op(&node.node)?)
        })
    }
}

/// Runs `op` on the node and the parsed seed id, and returns the seed's state as JSON.
unsafe fn seed_op(
    function: &str,
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
    op: impl FnOnce(
        &BlockingNode,
        &crabnet_core::SeedId,
    ) -> crabnet_core::Result<crabnet_core::SeedView>,
) -> crabnet_status {
    unsafe {
        node_json(function, node, out_seed_json, "out_seed_json", |n| {
            let seed_id = arg_seed_id(seed_id, "seed_id")?;
            Ok(op(n, &seed_id)?)
        })
    }
}

/// Publishes a seed described by a JSON object:
/// `{"command": "make test", "description": "", "min_price": 1, "max_price": 100,
/// "bid_window_secs": 30, "max_bids": 5, "timeout_secs": 60, "private_to": [],
/// "network": false, "isolation": "full"}`. Only `command` is required; the other keys take
/// these defaults; unknown keys are errors. `network: true` says the command needs network
/// access (only nodes with `runner.allow_network` bid); `isolation` is the strongest task
/// sandbox the command works under (`"full"`, `"partial"` or `"none"`). (`crabnet_json_quote`
/// turns any text into a JSON string literal.) `"replication": {"replicas": 3, "quorum": 2,
/// "max_replicas": 5, "hash": "stdout"}` runs the command on several nodes and completes on
/// a quorum of agreeing results (`hash` is optional: `"combined"` by default); such a seed
/// follows rules 3, which nodes of earlier versions refuse.
///
/// On success `*out_seed_json` receives the seed's state (a JSON object with `seed`,
/// `status`, `bids`, `award`, `claim`, `result`, `settlement`; the id is at `/seed/id`), freed
/// with `crabnet_string_free`. `/seed/network` and `/seed/isolation` are present only when
/// they differ from the defaults. A replicated seed's state lists its runners under
/// `/replicas` (each with `runner`, `step`, `result` and `standing`: `awarded`, `claimed`,
/// `reported`, `agreed`, `dissented` or `lapsed`).
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (bad JSON, empty command, bad terms),
/// `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_publish(
    node: *const crabnet_node,
    request_json: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_publish",
            node,
            out_seed_json,
            "out_seed_json",
            |n| {
                let request: PublishRequest =
                    arg_json(request_json, "request_json", "publish request")?;
                Ok(n.publish(request)?)
            },
        )
    }
}

/// Bids `price` on a seed (published by another node and known here).
///
/// On success `*out_seed_json` receives the seed's state, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (malformed id, price out of range),
/// `NOT_FOUND`, `STATE` (bidding closed, already bid...), `RUNNER` (this node's runner policy
/// cannot serve the seed: it asks for network access without `runner.allow_network`, needs a
/// weaker sandbox than this node builds, or the sandbox is required and unavailable),
/// `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_bid(
    node: *const crabnet_node,
    seed_id: *const c_char,
    price: u64,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op("crabnet_node_bid", node, seed_id, out_seed_json, |n, id| {
            n.bid(id, price)
        })
    }
}

/// Claims a seed this node won (bidding closed with this node's bid as the winner).
///
/// On success `*out_seed_json` receives the seed's state, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION`, `NOT_FOUND`, `STATE`, `STOPPED`,
/// `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_claim(
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op(
            "crabnet_node_claim",
            node,
            seed_id,
            out_seed_json,
            |n, id| n.claim(id),
        )
    }
}

/// Runs a seed this node claimed (`bash -lc COMMAND` in a fresh working directory inside the
/// task sandbox, with the configured limits), records the result and sends it to the
/// publisher. Blocks until the command ends, times out, or is interrupted by
/// `crabnet_node_stop` on another thread: the command is then killed (after
/// `runner.stop_grace_ms`) and the result, with `"interrupted": true` and `"success": false`,
/// is recorded, sent and returned. A run cut short by a crash of the host is recorded as
/// interrupted when a node starts again on the data directory. A seed is never run again by
/// itself: after an interrupted run, this call fails with `STATE` on it.
///
/// On success `*out_seed_json` receives the seed's state with its `result`, freed with
/// `crabnet_string_free`; `/result/sandbox` tells what the command ran under (`level`:
/// `full`, `partial` or `none`; `features`; `network`).
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION`, `NOT_FOUND`, `STATE`, `BUSY` (a run
/// in progress), `RUNNER` (the runner policy cannot serve the seed, or the command could not
/// be started), `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_run(
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op("crabnet_node_run", node, seed_id, out_seed_json, |n, id| {
            n.run(id)
        })
    }
}

/// Settles a completed seed this node published: `accept` true (the winning price is due) or
/// false (rejected, nothing due), with a free-form `note` (may be empty, not NULL).
///
/// On success `*out_seed_json` receives the seed's state, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION`, `NOT_FOUND`, `STATE`, `STOPPED`,
/// `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_settle(
    node: *const crabnet_node,
    seed_id: *const c_char,
    accept: bool,
    note: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_settle",
            node,
            out_seed_json,
            "out_seed_json",
            |n| {
                let seed_id = arg_seed_id(seed_id, "seed_id")?;
                let note = arg_str(note, "note")?;
                Ok(n.settle(&seed_id, accept, note)?)
            },
        )
    }
}

/// Cancels a seed this node published: while bidding is open, or (rule version 2) once the
/// winner let its claim window pass or its round failed.
///
/// On success `*out_seed_json` receives the seed's state, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION`, `NOT_FOUND`, `STATE`, `STOPPED`,
/// `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_cancel(
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op(
            "crabnet_node_cancel",
            node,
            seed_id,
            out_seed_json,
            |n, id| n.cancel(id),
        )
    }
}

/// Moves a seed this node published to the next best bid whose bidder has not had a round
/// (rule version 2): after its round failed (status `"failed"`), or once the winner let its
/// claim window pass. With no bid left the seed expires.
///
/// On success `*out_seed_json` receives the seed's state, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION`, `NOT_FOUND`, `STATE`, `STOPPED`,
/// `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_reassign(
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op(
            "crabnet_node_reassign",
            node,
            seed_id,
            out_seed_json,
            |n, id| n.reassign(id),
        )
    }
}

/// Writes one seed's state as JSON.
///
/// On success `*out_seed_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (malformed id), `NOT_FOUND`,
/// `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_seed(
    node: *const crabnet_node,
    seed_id: *const c_char,
    out_seed_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        seed_op(
            "crabnet_node_seed",
            node,
            seed_id,
            out_seed_json,
            |n, id| n.seed(id),
        )
    }
}

/// Writes the seeds known here, newest first, as a JSON array of seed states. `status`
/// filters by status name (`"open"`, `"claimed"`, `"completed"`, `"settled"`, `"expired"`,
/// `"cancelled"`); NULL lists every seed.
///
/// On success `*out_seeds_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `INVALID_UTF8`, `VALIDATION` (unknown status), `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_seeds(
    node: *const crabnet_node,
    status: *const c_char,
    out_seeds_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_seeds",
            node,
            out_seeds_json,
            "out_seeds_json",
            |n| {
                let status = if status.is_null() {
                    None
                } else {
                    let name = arg_str(status, "status")?;
                    Some(SeedStatus::parse(name).ok_or_else(|| {
                        FfiError::validation(format!(
                            "unknown seed status {name:?} (expected one of open, claimed, \
                         completed, settled, expired, cancelled)"
                        ))
                    })?)
                };
                Ok(n.seeds(status)?)
            },
        )
    }
}

/// Writes a summary of the node as a JSON object: `node_id`, `name`, `data_dir`,
/// `transport`, `seeds_by_status`, `outbox_pending`, `counters`, `last_event_seq`,
/// `state_digest` (equal on converged nodes of one version; its value changed with schema
/// version 14), `peers`, `addresses` and
/// `sandbox` (the task sandbox this node builds: `policy`, `level`, `features`, `missing`,
/// `allow_network`, `can_run`).
///
/// On success `*out_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_overview(
    node: *const crabnet_node,
    out_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json("crabnet_node_overview", node, out_json, "out_json", |n| {
            Ok(n.overview()?)
        })
    }
}

/// Rotates this node's keys (new signing and encryption keys for the next key epoch; the
/// node id stays the same; peers accept the old keys for `trust.rotation_grace_secs`), and
/// writes what the rotation statement says as a JSON object with `node_id`, `key_epoch`,
/// `rotated_at` (Unix ms), `signing_public` and `kem_public` (hex).
///
/// On success `*out_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `STOPPED`, `STORE`, `IO`, `CONFIG`, `VALIDATION`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_rotate_keys(
    node: *const crabnet_node,
    out_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_rotate_keys",
            node,
            out_json,
            "out_json",
            |n| Ok(n.rotate_keys()?),
        )
    }
}

/// Writes the peers this node verified a hello from, as a JSON array of objects with
/// `node_id`, `name`, `addresses`, `fingerprint`, `key_epoch`, `first_seen`, `last_seen`.
///
/// On success `*out_peers_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_peers(
    node: *const crabnet_node,
    out_peers_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_peers",
            node,
            out_peers_json,
            "out_peers_json",
            |n| Ok(n.peers()?),
        )
    }
}

/// Waits up to `timeout_ms` milliseconds until this node knows at least `count` peers (their
/// hellos arrived), e.g. before publishing to a network that is still forming.
///
/// On success `*out_peers_json` receives the peers as in `crabnet_node_peers`, freed with
/// `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `NETWORK` (timed out), `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_wait_for_peers(
    node: *const crabnet_node,
    count: usize,
    timeout_ms: u32,
    out_peers_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_wait_for_peers",
            node,
            out_peers_json,
            "out_peers_json",
            |n| {
                let timeout = Duration::from_millis(timeout_ms.into());
                Ok(n.wait_for_peers(count, timeout)?)
            },
        )
    }
}

/// Writes up to `limit` events with a sequence number above `after_seq` from the node's
/// durable event log, oldest first, as a JSON array (the same objects callbacks receive).
///
/// On success `*out_events_json` receives a string, freed with `crabnet_string_free`.
/// Errors: `NULL_ARGUMENT`, `STOPPED`, `STORE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_events_after(
    node: *const crabnet_node,
    after_seq: u64,
    limit: usize,
    out_events_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        node_json(
            "crabnet_node_events_after",
            node,
            out_events_json,
            "out_events_json",
            |n| Ok(n.events_after(after_seq, limit)?),
        )
    }
}

/// Registers `callback`, called with `user_data` and every event from now on, until
/// `crabnet_node_unsubscribe` or `crabnet_node_stop`. See `crabnet_event_callback` for the
/// thread it runs on and what it may do. Crabnet keeps `user_data` (without touching it)
/// until the subscription ends; it must stay valid, and usable from the events thread, until
/// then.
///
/// On success `*out_subscription` receives an id for `crabnet_node_unsubscribe` (never 0).
/// Errors: `NULL_ARGUMENT` (node, callback or out-parameter), `STOPPED`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_subscribe(
    node: *const crabnet_node,
    callback: crabnet_event_callback,
    user_data: *mut c_void,
    out_subscription: *mut u64,
) -> crabnet_status {
    unsafe {
        ffi_out(
            "crabnet_node_subscribe",
            out_subscription,
            "out_subscription",
            || {
                let node = crabnet_node::borrow(node, "node")?;
                let callback = callback.ok_or_else(|| FfiError::null("callback"))?;
                node.subscribe(callback, user_data)
            },
        )
    }
}

/// Ends a subscription. When this returns, its callback is not running and will not be called
/// again, so its `user_data` may be freed; the one exception is a call from inside that very
/// callback, which simply returns first. May be called from inside any callback. Because it
/// waits, do not call it while holding a lock that the callback takes.
///
/// Errors: `NULL_ARGUMENT`, `NOT_FOUND` (unknown or already ended id; a stop ends them all).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_unsubscribe(
    node: *const crabnet_node,
    subscription: u64,
) -> crabnet_status {
    ffi("crabnet_node_unsubscribe", || {
        // SAFETY: NULL or a live handle, as the header requires.
        unsafe { crabnet_node::borrow(node, "node") }?.unsubscribe(subscription)
    })
}

/// Waits up to `timeout_ms` milliseconds (0: do not wait) for the next event, for hosts that
/// prefer to pull events on their own thread instead of taking callbacks.
///
/// The node queues events for this function from the moment the start function returns
/// (earlier ones, such as `node_started`, are in the durable log: see
/// `crabnet_node_events_after`). The queue holds as many events as the configured event capacity:
/// when the host reads too slowly, the oldest are dropped and the next read returns an
/// `events_dropped` event with their count (`crabnet_node_events_after` reads them from the
/// durable log). Concurrent calls are served one at a time: a call first waits for the one in
/// progress on another thread. After `crabnet_node_stop`, the remaining events are returned
/// without waiting, then `STOPPED`.
///
/// On success `*out_event_json` receives one event as a JSON object, freed with
/// `crabnet_string_free`, or NULL when no event came within the timeout.
/// Errors: `NULL_ARGUMENT`, `STOPPED`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn crabnet_node_next_event(
    node: *const crabnet_node,
    timeout_ms: u32,
    out_event_json: *mut *mut c_char,
) -> crabnet_status {
    unsafe {
        ffi_out(
            "crabnet_node_next_event",
            out_event_json,
            "out_event_json",
            || {
                let node = crabnet_node::borrow(node, "node")?;
                Ok(NextEvent(
                    node.next_event(Duration::from_millis(timeout_ms.into()))?,
                ))
            },
        )
    }
}

/// An optional event for `crabnet_node_next_event`: NULL when there is none.
struct NextEvent(Option<String>);

impl crate::handle::IntoC for NextEvent {
    type C = *mut c_char;
    fn into_c(self) -> FfiResult<*mut c_char> {
        self.0
            .map_or(Ok(std::ptr::null_mut()), crate::handle::IntoC::into_c)
    }
}
