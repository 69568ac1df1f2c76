//! Unit tests of the boundary rules: status mapping, the panic barrier, argument checks and
//! the callback lifetime rules. They call the exports the way C does.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crabnet_core::ErrorKind;

use crate::config::*;
use crate::error::*;
use crate::handle::ffi_out;
use crate::json::*;
use crate::node::*;

fn last_error() -> String {
    unsafe { CStr::from_ptr(crabnet_last_error()) }
        .to_str()
        .unwrap()
        .to_owned()
}

/// Takes a string returned by Crabnet and frees it.
fn take(s: *mut c_char) -> String {
    assert!(!s.is_null());
    let text = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_owned();
    unsafe { crabnet_string_free(s) };
    text
}

/// Asserts that a call succeeded; a failure shows the call's last error.
#[track_caller]
fn ok(status: crabnet_status) {
    assert_eq!(status, crabnet_status::Ok, "{}", last_error());
}

fn json_string(json: &str, pointer: &str) -> String {
    let (json, pointer) = (CString::new(json).unwrap(), CString::new(pointer).unwrap());
    let mut out = ptr::null_mut();
    let status = unsafe { crabnet_json_get_string(json.as_ptr(), pointer.as_ptr(), &mut out) };
    ok(status);
    take(out)
}

#[test]
fn statuses_mirror_every_error_kind_one_to_one() {
    let mut seen = std::collections::HashSet::new();
    for kind in ErrorKind::ALL {
        let status = crabnet_status::from_kind(kind);
        assert!(seen.insert(status), "{kind} shares a status");
        assert_eq!(status.name().to_str().unwrap(), kind.as_str());
        assert!(status as i32 >= 10);
    }
    let mut values: Vec<i32> = ALL_STATUSES.iter().map(|s| *s as i32).collect();
    values.dedup();
    assert_eq!(values.len(), ALL_STATUSES.len());
    for s in ALL_STATUSES {
        let name = unsafe { CStr::from_ptr(crabnet_status_name(s as i32)) };
        assert_eq!(name, s.name());
    }
    let unknown = unsafe { CStr::from_ptr(crabnet_status_name(999)) };
    assert_eq!(unknown, c"unknown");
    let e = crabnet_core::Error::new(ErrorKind::State, "not open");
    assert_eq!(FfiError::from(e).status, crabnet_status::State);
}

#[test]
fn panics_become_a_status_and_a_message_never_an_unwind() {
    let status = ffi("crabnet_test_panic", || -> FfiResult<()> { panic!("boom") });
    assert_eq!(status, crabnet_status::Panic);
    assert_eq!(last_error(), "crabnet_test_panic: panic in Crabnet: boom");

    // A String payload, and functions that return no status or a pointer.
    let status = ffi("crabnet_test_panic", || -> FfiResult<()> {
        panic!("{} {}", "formatted", 42)
    });
    assert_eq!(status, crabnet_status::Panic);
    assert!(last_error().ends_with("formatted 42"), "{}", last_error());
    ffi("crabnet_test_void", || -> () {
        panic!("in a free function")
    });
    assert!(last_error().contains("in a free function"));
    let p = ffi("crabnet_test_ptr", || -> *const c_char {
        panic!("in a getter")
    });
    assert_eq!(unsafe { CStr::from_ptr(p) }, c"");

    // An out-parameter is left alone when the body panics.
    let mut out: u64 = 7;
    let status = unsafe {
        ffi_out("crabnet_test_out", &mut out, "out", || -> FfiResult<u64> {
            panic!("before the result")
        })
    };
    assert_eq!((status, out), (crabnet_status::Panic, 7));

    // The next call that returns a status clears the message; other threads have their own.
    let status = ffi("crabnet_test_ok", || -> FfiResult<()> { Ok(()) });
    assert_eq!((status, last_error().as_str()), (crabnet_status::Ok, ""));
    ffi("crabnet_test_panic", || -> FfiResult<()> { panic!("here") });
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(last_error().contains("here"));
}

#[test]
fn null_and_invalid_utf8_arguments_are_errors_and_outputs_stay_untouched() {
    let sentinel = ptr::dangling_mut::<crabnet_config>();
    let mut out = sentinel;
    let status = unsafe { crabnet_config_new(ptr::null(), &mut out) };
    assert_eq!(status, crabnet_status::NullArgument);
    assert_eq!(out, sentinel);
    assert!(
        last_error().contains("`data_dir` is NULL"),
        "{}",
        last_error()
    );

    let bad = [b'/', b't', 0xff, b'x', 0];
    let status = unsafe { crabnet_config_new(bad.as_ptr().cast(), &mut out) };
    assert_eq!(status, crabnet_status::InvalidUtf8);
    assert_eq!(out, sentinel);
    assert!(last_error().contains("offset 2"), "{}", last_error());

    let status = unsafe { crabnet_config_new(c"/tmp/x".as_ptr(), ptr::null_mut()) };
    assert_eq!(status, crabnet_status::NullArgument);
    assert!(last_error().contains("out_config"));

    let status = unsafe { crabnet_config_from_json(c"{\"nmae\": 1}".as_ptr(), &mut out) };
    assert_eq!(status, crabnet_status::Config);
    assert!(last_error().contains("nmae"), "{}", last_error());
    assert_eq!(out, sentinel);

    // Freeing NULL is fine.
    unsafe {
        crabnet_config_free(ptr::null_mut());
        crabnet_node_free(ptr::null_mut());
        crabnet_hub_free(ptr::null_mut());
        crabnet_string_free(ptr::null_mut());
    }
}

#[test]
fn config_setters_validate_and_keep_the_old_value_on_error() {
    let mut config = ptr::null_mut();
    unsafe {
        ok(crabnet_config_new(
            c"/tmp/crabnet-ffi-unit".as_ptr(),
            &mut config,
        ));
        ok(crabnet_config_set_tick_ms(config, 40));
        assert_eq!(
            crabnet_config_set_tick_ms(config, 0),
            crabnet_status::Config
        );
        ok(crabnet_config_merge_json(
            config,
            c"{\"runner\": {\"cpu_seconds\": 9}}".as_ptr(),
        ));
        assert_eq!(
            crabnet_config_merge_json(config, c"{\"runner\": {\"cpu\": 9}}".as_ptr()),
            crabnet_status::Config
        );
        assert_eq!(
            crabnet_config_merge_json(config, c"[1]".as_ptr()),
            crabnet_status::Config
        );
        let mut json = ptr::null_mut();
        ok(crabnet_config_to_json(config, &mut json));
        let json: serde_json::Value = serde_json::from_str(&take(json)).unwrap();
        assert_eq!(json["network"]["tick_ms"], 40);
        assert_eq!(json["runner"]["cpu_seconds"], 9);
        assert_eq!(json["runner"]["sandbox"], "required");

        // The runner's sandbox settings.
        ok(crabnet_config_set_sandbox(config, c"best_effort".as_ptr()));
        assert_eq!(
            crabnet_config_set_sandbox(config, c"airtight".as_ptr()),
            crabnet_status::Config
        );
        assert!(last_error().contains("airtight"), "{}", last_error());
        assert_eq!(
            crabnet_config_set_sandbox(config, ptr::null()),
            crabnet_status::NullArgument
        );
        ok(crabnet_config_set_allow_network(config, true));
        ok(crabnet_config_set_keep_workdirs(config, true));
        ok(crabnet_config_set_work_root(
            config,
            c"/tmp/crabnet-ffi-work".as_ptr(),
        ));
        let json = config_json(config);
        assert_eq!(json["runner"]["sandbox"], "best_effort");
        assert_eq!(json["runner"]["allow_network"], true);
        assert_eq!(json["runner"]["keep_work_dirs"], true);
        assert_eq!(json["runner"]["work_root"], "/tmp/crabnet-ffi-work");
        ok(crabnet_config_set_work_root(config, ptr::null()));
        assert_eq!(
            config_json(config)["runner"]["work_root"],
            serde_json::Value::Null
        );
        crabnet_config_free(config);
    }
}

fn config_json(config: *const crabnet_config) -> serde_json::Value {
    let mut json = ptr::null_mut();
    ok(unsafe { crabnet_config_to_json(config, &mut json) });
    serde_json::from_str(&take(json)).unwrap()
}

/// A test host: a temporary directory, a hub and nodes started through the C API.
struct Host {
    dir: tempfile::TempDir,
    hub: *mut crabnet_hub,
}

impl Host {
    fn new() -> Host {
        let mut hub = ptr::null_mut();
        ok(unsafe { crabnet_hub_new(&mut hub) });
        Host {
            dir: tempfile::tempdir().unwrap(),
            hub,
        }
    }

    fn node(&self, name: &str) -> *mut crabnet_node {
        let dir = CString::new(self.dir.path().join(name).to_str().unwrap()).unwrap();
        let name = CString::new(name).unwrap();
        let mut config = ptr::null_mut();
        let mut node = ptr::null_mut();
        unsafe {
            ok(crabnet_config_new(dir.as_ptr(), &mut config));
            ok(crabnet_config_set_tick_ms(config, 20));
            let status = crabnet_node_start_memory(config, self.hub, name.as_ptr(), &mut node);
            ok(status);
            crabnet_config_free(config);
        }
        node
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        unsafe { crabnet_hub_free(self.hub) };
    }
}

fn publish(node: *const crabnet_node, command: &str) -> String {
    let request = CString::new(format!("{{\"command\": \"{command}\"}}")).unwrap();
    let mut out = ptr::null_mut();
    let status = unsafe { crabnet_node_publish(node, request.as_ptr(), &mut out) };
    ok(status);
    json_string(&take(out), "/seed/id")
}

/// What a test callback saw; passed as `user_data`.
#[derive(Default)]
struct Seen {
    node: AtomicPtr<crabnet_node>,
    events: Mutex<Vec<String>>,
    calls: AtomicUsize,
    own_id: AtomicU64,
    other_id: AtomicU64,
    started: AtomicBool,
    finished: AtomicBool,
    returned_after_stop: AtomicBool,
}

impl Seen {
    fn types(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| json_string(e, "/type"))
            .collect()
    }

    fn user_data(self: &Arc<Self>) -> *mut c_void {
        Arc::as_ptr(self) as *mut c_void
    }
}

unsafe fn seen<'a>(user_data: *mut c_void) -> &'a Seen {
    unsafe { &*(user_data as *const Seen) }
}

unsafe extern "C" fn record(user_data: *mut c_void, event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    let json = unsafe { CStr::from_ptr(event_json) }.to_str().unwrap();
    seen.events.lock().unwrap().push(json.to_owned());
    seen.calls.fetch_add(1, Ordering::SeqCst);
}

fn subscribe(node: *const crabnet_node, callback: crabnet_event_callback, seen: &Arc<Seen>) -> u64 {
    let mut id = 0;
    let status = unsafe { crabnet_node_subscribe(node, callback, seen.user_data(), &mut id) };
    ok(status);
    id
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stop_delivers_the_last_events_and_no_callback_runs_after_it() {
    let host = Host::new();
    let node = host.node("alice");
    let seen = Arc::new(Seen::default());
    subscribe(node, Some(record), &seen);
    for i in 0..5 {
        publish(node, &format!("echo {i}"));
    }
    ok(unsafe { crabnet_node_stop(node) });
    let after_stop = seen.calls.load(Ordering::SeqCst);
    let types = seen.types();
    assert_eq!(
        types.last().map(String::as_str),
        Some("node_stopped"),
        "{types:?}"
    );
    assert_eq!(types.iter().filter(|t| *t == "seed_published").count(), 5);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(seen.calls.load(Ordering::SeqCst), after_stop);

    // After stop: no new subscription, the old ones are gone, operations fail with STOPPED.
    let mut id = 0;
    let status = unsafe { crabnet_node_subscribe(node, Some(record), seen.user_data(), &mut id) };
    assert_eq!((status, id), (crabnet_status::Stopped, 0));
    assert_eq!(
        unsafe { crabnet_node_unsubscribe(node, 1) },
        crabnet_status::NotFound
    );
    let mut out = ptr::null_mut();
    let status = unsafe { crabnet_node_overview(node, &mut out) };
    assert_eq!((status, out), (crabnet_status::Stopped, ptr::null_mut()));
    ok(unsafe { crabnet_node_stop(node) });
    unsafe { crabnet_node_free(node) };
    assert_eq!(seen.calls.load(Ordering::SeqCst), after_stop);
}

unsafe extern "C" fn swap_subscriptions(user_data: *mut c_void, event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    unsafe { record(user_data, event_json) };
    if seen.calls.load(Ordering::SeqCst) == 1 {
        let node = seen.node.load(Ordering::SeqCst);
        // Subscribe a second callback (same user data), then end this one, from inside.
        let mut other = 0;
        let status =
            unsafe { crabnet_node_subscribe(node, Some(count_other), user_data, &mut other) };
        ok(status);
        seen.other_id.store(other, Ordering::SeqCst);
        let own = seen.own_id.load(Ordering::SeqCst);
        ok(unsafe { crabnet_node_unsubscribe(node, own) });
        // Ending it twice is an error, not a crash.
        assert_eq!(
            unsafe { crabnet_node_unsubscribe(node, own) },
            crabnet_status::NotFound
        );
    }
}

unsafe extern "C" fn count_other(user_data: *mut c_void, _event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    seen.finished.store(true, Ordering::SeqCst);
    let mut out = ptr::null_mut();
    // Calling back into the node from a callback works (no lock is held); the last events
    // come while the node stops.
    let node = seen.node.load(Ordering::SeqCst);
    match unsafe { crabnet_node_overview(node, &mut out) } {
        crabnet_status::Ok => drop(take(out)),
        status => assert_eq!(status, crabnet_status::Stopped),
    }
}

#[test]
fn callbacks_subscribe_and_unsubscribe_from_inside_a_callback() {
    let host = Host::new();
    let node = host.node("alice");
    let seen = Arc::new(Seen::default());
    seen.node.store(node, Ordering::SeqCst);
    // No event comes before the publish below, so the id is known before the first call.
    let id = subscribe(node, Some(swap_subscriptions), &seen);
    seen.own_id.store(id, Ordering::SeqCst);
    publish(node, "echo one");
    wait_until("the second subscription", || {
        seen.other_id.load(Ordering::SeqCst) != 0
    });
    publish(node, "echo two");
    wait_until("an event for the second subscription", || {
        seen.finished.load(Ordering::SeqCst)
    });
    ok(unsafe { crabnet_node_stop(node) });
    // The first callback ran once: it unsubscribed itself during its first call.
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    unsafe { crabnet_node_free(node) };
}

unsafe extern "C" fn slow(user_data: *mut c_void, _event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    if seen.started.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::sleep(Duration::from_millis(300));
    seen.finished.store(true, Ordering::SeqCst);
}

#[test]
fn unsubscribe_waits_for_the_callback_in_progress() {
    let host = Host::new();
    let node = host.node("alice");
    let seen = Arc::new(Seen::default());
    let id = subscribe(node, Some(slow), &seen);
    publish(node, "echo slow");
    wait_until("the callback to start", || {
        seen.started.load(Ordering::SeqCst)
    });
    ok(unsafe { crabnet_node_unsubscribe(node, id) });
    assert!(
        seen.finished.load(Ordering::SeqCst),
        "unsubscribe returned mid-callback"
    );
    unsafe { crabnet_node_free(node) };
}

unsafe extern "C" fn stop_from_inside(user_data: *mut c_void, event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    unsafe { record(user_data, event_json) };
    if seen.calls.load(Ordering::SeqCst) == 1 {
        let node = seen.node.load(Ordering::SeqCst);
        ok(unsafe { crabnet_node_stop(node) });
        seen.returned_after_stop.store(true, Ordering::SeqCst);
    }
}

unsafe extern "C" fn free_from_inside(user_data: *mut c_void, event_json: *const c_char) {
    let seen = unsafe { seen(user_data) };
    unsafe { record(user_data, event_json) };
    let node = seen.node.swap(ptr::null_mut(), Ordering::SeqCst);
    if !node.is_null() {
        unsafe { crabnet_node_free(node) };
        seen.returned_after_stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn stop_and_free_from_inside_a_callback_end_all_callbacks() {
    type Callback = unsafe extern "C" fn(*mut c_void, *const c_char);
    let cases: [(&str, Callback); 2] = [("stop", stop_from_inside), ("free", free_from_inside)];
    for (case, callback) in cases {
        let host = Host::new();
        let node = host.node("alice");
        let seen = Arc::new(Seen::default());
        seen.node.store(node, Ordering::SeqCst);
        subscribe(node, Some(callback), &seen);
        // A later subscription (called after the first one for each event) must not be called
        // after the stop either, not even for the event that triggered it.
        let other = Arc::new(Seen::default());
        subscribe(node, Some(record), &other);
        publish(node, "echo a");
        wait_until("the stop inside the callback", || {
            seen.returned_after_stop.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(seen.calls.load(Ordering::SeqCst), 1, "{case}");
        assert_eq!(other.calls.load(Ordering::SeqCst), 0, "{case}");
        if case == "stop" {
            // The handle survives a stop: the last events are still readable.
            let mut out = ptr::null_mut();
            let mut types = Vec::new();
            loop {
                match unsafe { crabnet_node_next_event(node, 1000, &mut out) } {
                    crabnet_status::Ok if !out.is_null() => {
                        types.push(json_string(&take(out), "/type"));
                    }
                    crabnet_status::Stopped => break,
                    other => panic!("unexpected {other:?} {}", last_error()),
                }
            }
            assert_eq!(types.last().map(String::as_str), Some("node_stopped"));
            unsafe { crabnet_node_free(node) };
        }
    }
}

#[test]
fn next_event_polls_with_a_timeout() {
    let host = Host::new();
    let node = host.node("alice");
    let mut out = ptr::null_mut();
    let started = Instant::now();
    ok(unsafe { crabnet_node_next_event(node, 100, &mut out) });
    assert!(out.is_null());
    assert!(started.elapsed() >= Duration::from_millis(100));
    let id = publish(node, "echo poll");
    let mut types = Vec::new();
    while types.len() < 2 {
        ok(unsafe { crabnet_node_next_event(node, 5000, &mut out) });
        let event = take(out);
        assert_eq!(json_string(&event, "/seed_id"), id);
        types.push(json_string(&event, "/type"));
    }
    assert!(types.contains(&"seed_published".to_string()), "{types:?}");
    // A stop on another thread ends a long wait promptly.
    let node_addr = node as usize;
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        unsafe { crabnet_node_stop(node_addr as *const crabnet_node) }
    });
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match unsafe { crabnet_node_next_event(node, 60_000, &mut out) } {
            crabnet_status::Ok => last = json_string(&take(out), "/type"),
            crabnet_status::Stopped => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stopper.join().unwrap(), crabnet_status::Ok);
    assert_eq!(last, "node_stopped");
    assert!(started.elapsed() < Duration::from_secs(5));
    unsafe { crabnet_node_free(node) };
}

#[test]
fn a_slow_poller_is_told_how_many_events_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().to_str().unwrap()).unwrap();
    let mut config = ptr::null_mut();
    let mut node = ptr::null_mut();
    unsafe {
        ok(crabnet_config_new(path.as_ptr(), &mut config));
        ok(crabnet_config_set_event_capacity(config, 4));
        ok(crabnet_node_start(config, &mut node));
        crabnet_config_free(config);
    }
    for i in 0..5 {
        publish(node, &format!("echo {i}"));
    }
    let mut out = ptr::null_mut();
    ok(unsafe { crabnet_node_next_event(node, 1000, &mut out) });
    let first = take(out);
    assert_eq!(json_string(&first, "/type"), "events_dropped", "{first}");
    let count: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(count["count"].as_u64(), Some(10 - 4), "{first}");
    unsafe { crabnet_node_free(node) };
}
