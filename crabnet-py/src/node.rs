//! `NativeNode` and `NativeSubscription`: thin wrappers over [`BlockingNode`] that hand the
//! pure-Python layer (`crabnet/_node.py`) the core's values as the Python objects their serde
//! JSON would decode to (dicts, lists, strings, ints; built directly, without JSON text), which
//! it turns into typed objects. The arguments are checked here (`crate::request`). Every call
//! that may wait releases the GIL; waits that may last (event streams, `run`) wake up every
//! [`SLICE`] to let Python handle signals such as Ctrl-C.

use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crabnet_core::embed::{BlockingSubscription, ListenerId, NetworkSpec};
use crabnet_core::network::{DhtConfig, UdpConfig};
use crabnet_core::{BlockingNode, BlockingWebHandle, Config, Event, SeedId, SeedStatus};
use pyo3::prelude::*;
use serde::Serialize;

use crate::errors::{IntoPyResult, internal, stopped, validation};
use crate::hub::MemoryHub;
use crate::request::{PublishArgs, seconds, text, uint, usize_arg};

/// How often a blocking wait checks for Python signals (Ctrl-C).
pub const SLICE: Duration = Duration::from_millis(50);

/// Longest `wait_for_peers` timeout (the core adds it to the current instant).
const MAX_PEER_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Drops what `slot` holds with the GIL released: dropping a node or a subscription may join
/// threads that wait for the GIL.
fn drop_detached<T: Send>(slot: &mut Mutex<Option<T>>) {
    let value = slot.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(value) = value {
        Python::attach(|py| py.detach(move || drop(value)));
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| internal(format!("cannot encode a value: {e}")))
}

/// A value of the core as the Python objects its serde JSON decodes to (`json.loads`): structs
/// and maps as dicts, sequences as lists, unit enum variants as their names.
pub(crate) fn to_py<T: Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    pythonize::pythonize(py, value)
        .map(Bound::unbind)
        .map_err(|e| internal(format!("cannot convert a value: {e}")))
}

/// Parses an optional wait in seconds: `None` waits forever.
pub(crate) fn parse_timeout(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(validation(format!(
            "timeout must be a non-negative number of seconds or None, got {t}"
        ))),
    }
}

/// Runs `work` on a thread of its own and waits for it with the GIL released, checking for
/// signals every [`SLICE`]. If a signal handler raises (Ctrl-C), its exception is returned at
/// once and `work` finishes in the background (its effects are recorded by the node as usual).
pub(crate) fn wait_interruptibly<T: Send + 'static>(
    py: Python<'_>,
    thread_name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            // The receiver is gone only if the caller was interrupted.
            let _ = tx.send(work());
        })
        .map_err(|e| internal(format!("cannot start a thread: {e}")))?;
    // `Receiver` is not `Sync`; the mutex lets the GIL-free closure borrow it.
    let rx = Mutex::new(rx);
    loop {
        match py.detach(|| lock(&rx).recv_timeout(SLICE)) {
            Ok(value) => return Ok(value),
            Err(mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(internal(format!("the {thread_name} thread panicked")));
            }
        }
    }
}

fn seed_id(text: &str) -> PyResult<SeedId> {
    Python::attach(|py| SeedId::parse(text).py(py))
}

thread_local! {
    /// Set while this thread runs an `on_event` callback.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// A running node (the Python class `crabnet.Node` wraps it).
#[pyclass(module = "crabnet._crabnet", frozen)]
pub struct NativeNode {
    node: Mutex<Option<Arc<BlockingNode>>>,
    /// Held for the whole of a `stop`, so that every caller returns only once it is complete.
    stopping: Mutex<()>,
    node_id: String,
    name: String,
    data_dir: String,
}

impl NativeNode {
    fn get(&self) -> PyResult<Arc<BlockingNode>> {
        lock(&self.node)
            .clone()
            .ok_or_else(|| stopped("the node has been stopped"))
    }

    /// Runs `f` on the node with the GIL released; returns its value (see [`to_py`]).
    fn call<T: Serialize + Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&BlockingNode) -> crabnet_core::Result<T> + Send,
    ) -> PyResult<Py<PyAny>> {
        let node = self.get()?;
        let out = py.detach(move || {
            let out = f(&node);
            // Dropping the last handle (after a concurrent stop) must not hold the GIL either.
            drop(node);
            out
        });
        to_py(py, &out.py(py)?)
    }

    /// Runs `f` on the node on a thread of its own, waiting with [`wait_interruptibly`] (the
    /// thread is named `thread_name`); returns its value (see [`to_py`]).
    fn call_interruptibly<T: Serialize + Send + 'static>(
        &self,
        py: Python<'_>,
        thread_name: &str,
        f: impl FnOnce(&BlockingNode) -> crabnet_core::Result<T> + Send + 'static,
    ) -> PyResult<Py<PyAny>> {
        let node = self.get()?;
        let out = wait_interruptibly(py, thread_name, move || f(&node))?;
        to_py(py, &out.py(py)?)
    }
}

#[pymethods]
impl NativeNode {
    /// Starts a node. `config_json` is the core `Config` as JSON (missing keys take their
    /// defaults); `transport` is `offline`, `memory` (with `hub`), `udp` (with `udp_json`, the
    /// core `UdpConfig` as JSON) or `dht` (with `dht_json`, the core `DhtConfig` as JSON).
    #[staticmethod]
    #[pyo3(signature = (config_json, transport, hub=None, udp_json=None, dht_json=None))]
    fn start(
        py: Python<'_>,
        config_json: &str,
        transport: &str,
        hub: Option<PyRef<'_, MemoryHub>>,
        udp_json: Option<&str>,
        dht_json: Option<&str>,
    ) -> PyResult<Self> {
        let config: Config = parse_config(py, config_json, "config")?;
        config.validate().py(py)?;
        let network = match (transport, hub, udp_json, dht_json) {
            ("offline", None, None, None) => NetworkSpec::Offline,
            ("memory", Some(hub), None, None) => NetworkSpec::Memory {
                hub: hub.inner.clone(),
                name: config.name.clone(),
            },
            ("udp", None, Some(udp), None) => {
                NetworkSpec::Udp(parse_config::<UdpConfig>(py, udp, "UDP settings")?)
            }
            ("dht", None, None, Some(dht)) => {
                NetworkSpec::Dht(parse_config::<DhtConfig>(py, dht, "libp2p settings")?)
            }
            (other, hub, udp, dht) => {
                return Err(validation(format!(
                    "invalid transport {other:?} (hub given: {}, UDP settings given: {}, libp2p \
                     settings given: {}): use offline, memory with a hub, udp with UDP \
                     settings, or dht with libp2p settings",
                    hub.is_some(),
                    udp.is_some(),
                    dht.is_some()
                )));
            }
        };
        let name = config.name.clone();
        let data_dir = config.data_dir.display().to_string();
        let node = py
            .detach(move || BlockingNode::start_on(config, network))
            .py(py)?;
        Ok(NativeNode {
            node_id: node.node().id().to_string(),
            node: Mutex::new(Some(Arc::new(node))),
            stopping: Mutex::new(()),
            name,
            data_dir,
        })
    }

    /// This node's id (64 hex digits).
    #[getter]
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's name from its configuration.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The node's data directory.
    #[getter]
    fn data_dir(&self) -> &str {
        &self.data_dir
    }

    /// Whether `stop` has not been called yet.
    #[getter]
    fn running(&self) -> bool {
        lock(&self.node).is_some()
    }

    /// Stops the node: delivers the last events, ends listener delivery, then shuts down its
    /// threads and closes its database (once no other call is still using it). Idempotent; a
    /// concurrent caller returns when the stop is complete. From inside an `on_event`
    /// callback it returns at once (delivery ends after that callback).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let in_callback = IN_CALLBACK.with(Cell::get);
        py.detach(|| {
            // Waiting for a stop in progress from a callback would wait for this very callback.
            let _stopping = (!in_callback).then(|| lock(&self.stopping));
            let Some(node) = lock(&self.node).take() else {
                return Ok(());
            };
            let stopped = node.stop();
            drop(node);
            stopped
        })
        .py(py)
    }

    /// Publishes a seed: the arguments of `Node.publish` as one dict, `private_to` as node
    /// ids; `None` takes the core's default. Checked by [`PublishArgs::request`].
    fn publish(&self, py: Python<'_>, args: PublishArgs<'_>) -> PyResult<Py<PyAny>> {
        let req = args.request()?;
        self.call(py, move |n| n.publish(req))
    }

    fn bid(&self, py: Python<'_>, seed: &str, price: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let price = uint("price", price, 64)?;
        let id = seed_id(seed)?;
        self.call(py, move |n| n.bid(&id, price))
    }

    fn claim(&self, py: Python<'_>, seed: &str) -> PyResult<Py<PyAny>> {
        let id = seed_id(seed)?;
        self.call(py, move |n| n.claim(&id))
    }

    /// Runs a claimed seed's command; Ctrl-C interrupts the wait only (the run goes on until
    /// the node stops, which kills it and records its result as interrupted).
    fn run(&self, py: Python<'_>, seed: &str) -> PyResult<Py<PyAny>> {
        let id = seed_id(seed)?;
        self.call_interruptibly(py, "crabnet-run", move |n| n.run(&id))
    }

    /// Settles a seed: `accept` is taken for its truth value, `note` must be a `str`.
    #[pyo3(signature = (seed, accept, note))]
    fn settle(
        &self,
        py: Python<'_>,
        seed: &str,
        accept: &Bound<'_, PyAny>,
        note: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let note = text("note", note, "a str")?;
        let accept = accept.is_truthy()?;
        let id = seed_id(seed)?;
        self.call(py, move |n| n.settle(&id, accept, &note))
    }

    fn cancel(&self, py: Python<'_>, seed: &str) -> PyResult<Py<PyAny>> {
        let id = seed_id(seed)?;
        self.call(py, move |n| n.cancel(&id))
    }

    fn reassign(&self, py: Python<'_>, seed: &str) -> PyResult<Py<PyAny>> {
        let id = seed_id(seed)?;
        self.call(py, move |n| n.reassign(&id))
    }

    fn seed(&self, py: Python<'_>, seed: &str) -> PyResult<Py<PyAny>> {
        let id = seed_id(seed)?;
        self.call(py, move |n| n.seed(&id))
    }

    #[pyo3(signature = (status=None))]
    fn seeds(&self, py: Python<'_>, status: Option<&str>) -> PyResult<Py<PyAny>> {
        let status = status
            .map(|s| {
                SeedStatus::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = SeedStatus::ALL.iter().map(|s| s.as_str()).collect();
                    validation(format!(
                        "unknown seed status {s:?}; expected one of {}",
                        all.join(", ")
                    ))
                })
            })
            .transpose()?;
        self.call(py, move |n| n.seeds(status))
    }

    fn overview(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call(py, |n| n.overview())
    }

    /// Rotates the node's keys; returns the core's `RotationInfo`.
    fn rotate_keys(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call(py, |n| n.rotate_keys())
    }

    /// The peers whose hellos this node verified (a list of the core's `PeerInfo`).
    fn peers(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call(py, |n| n.peers())
    }

    /// Waits until at least `count` peers are known, for at most `timeout` seconds (an int or
    /// a float; the core's `NetworkError` after that); returns them. Ctrl-C interrupts the
    /// wait.
    fn wait_for_peers(
        &self,
        py: Python<'_>,
        count: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = seconds("timeout", timeout)?;
        let count = usize_arg("count", count)?;
        let timeout = parse_timeout(Some(timeout))?.unwrap_or(Duration::ZERO);
        if timeout > MAX_PEER_WAIT {
            return Err(validation(format!(
                "timeout must be at most {} seconds",
                MAX_PEER_WAIT.as_secs()
            )));
        }
        self.call_interruptibly(py, "crabnet-peers", move |n| {
            n.wait_for_peers(count, timeout)
        })
    }

    fn events_after(
        &self,
        py: Python<'_>,
        after: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let after = uint("seq", after, 64)?;
        let limit = usize_arg("limit", limit)?;
        self.call(py, move |n| n.events_after(after, limit))
    }

    /// Starts the monitoring API and dashboard: the node's `[web]` settings with the keys of
    /// `overrides_json` (a JSON object, e.g. `{"bind": "127.0.0.1:0"}`) replacing theirs.
    #[pyo3(signature = (overrides_json=None))]
    fn serve_web(&self, py: Python<'_>, overrides_json: Option<&str>) -> PyResult<NativeWeb> {
        let node = self.get()?;
        let mut config = node.node().config().web.clone();
        if let Some(json) = overrides_json {
            config = config.with_json_overrides(json).py(py)?;
        }
        let handle = py.detach(|| node.serve_web(config)).py(py)?;
        py.detach(move || drop(node));
        Ok(NativeWeb {
            url: handle.url(),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// A subscription to events from now on.
    fn subscribe(&self) -> PyResult<NativeSubscription> {
        let node = self.get()?;
        Ok(NativeSubscription {
            inner: Mutex::new(Some(node.subscribe())),
        })
    }

    /// Calls `callback(convert(event))` for every event from now on (see [`to_py`]), on the
    /// node's events
    /// thread (with the GIL). An exception from either is reported through
    /// `sys.unraisablehook` (with `callback` as the object) and delivery goes on.
    fn add_listener(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        convert: Py<PyAny>,
    ) -> PyResult<u64> {
        let node = self.get()?;
        let listener = Arc::new(move |event: &Event| {
            Python::attach(|py| {
                IN_CALLBACK.with(|c| c.set(true));
                let delivered = to_py(py, event)
                    .and_then(|event| convert.call1(py, (event,)))
                    .and_then(|event| callback.call1(py, (event,)));
                IN_CALLBACK.with(|c| c.set(false));
                if let Err(err) = delivered {
                    err.write_unraisable(py, Some(callback.bind(py)));
                }
            })
        });
        let id = py.detach(|| node.add_listener(listener)).py(py)?;
        Ok(id.0)
    }

    /// Removes a listener; returns whether it was registered.
    fn remove_listener(&self, id: u64) -> bool {
        match lock(&self.node).as_ref() {
            Some(node) => node.remove_listener(ListenerId(id)),
            None => false,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeNode(name={:?}, node_id={:?}, running={})",
            self.name,
            &self.node_id[..8],
            if self.running() { "True" } else { "False" }
        )
    }
}

impl Drop for NativeNode {
    fn drop(&mut self) {
        // Stopping waits for the events thread, which may be waiting for the GIL.
        drop_detached(&mut self.node);
    }
}

/// Parses settings the Python layer encoded as JSON; errors are `ConfigError`s.
fn parse_config<T: serde::de::DeserializeOwned>(
    py: Python<'_>,
    json: &str,
    what: &str,
) -> PyResult<T> {
    serde_json::from_str(json).map_err(|e| {
        crate::errors::to_py_err(
            py,
            crabnet_core::Error::new(
                crabnet_core::ErrorKind::Config,
                format!("invalid {what}: {}", serde_message(&e)),
            ),
        )
    })
}

/// The text of a serde error without its JSON position (the JSON is generated by the binding,
/// so positions mean nothing to the user).
pub(crate) fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Events of one node from the moment of subscription, read with blocking waits.
#[pyclass(module = "crabnet._crabnet", frozen)]
pub struct NativeSubscription {
    inner: Mutex<Option<BlockingSubscription>>,
}

#[pymethods]
impl NativeSubscription {
    /// The next event (see [`to_py`]), waiting up to `timeout` seconds (`None`: no limit); `None`
    /// on timeout. Raises `StoppedError` once the node is stopped and every event was read (the
    /// subscription then releases the node's resources). Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let timeout = parse_timeout(timeout)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            let got = py.detach(|| {
                let mut inner = lock(&self.inner);
                let Some(sub) = inner.as_mut() else {
                    return Err(crabnet_core::Error::new(
                        crabnet_core::ErrorKind::Stopped,
                        "the event stream is closed",
                    ));
                };
                let got = sub.recv_timeout(slice);
                if got.is_err() {
                    // The node is gone: release its runtime now rather than at garbage
                    // collection.
                    *inner = None;
                }
                got
            });
            match got.py(py)? {
                Some(event) => return Ok(Some(to_py(py, &event)?)),
                None if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(None),
                None => py.check_signals()?,
            }
        }
    }

    /// Ends the subscription; later `recv` calls raise `StoppedError`.
    fn close(&self, py: Python<'_>) {
        let sub = py.detach(|| lock(&self.inner).take());
        py.detach(move || drop(sub));
    }

    /// Whether `close` was called or the stream ended.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| lock(&self.inner).is_none())
    }
}

impl Drop for NativeSubscription {
    fn drop(&mut self) {
        // It may hold the last handle on a stopped node's runtime, whose shutdown joins
        // threads.
        drop_detached(&mut self.inner);
    }
}

/// A running monitoring API (the Python class `crabnet.WebServer` wraps it).
#[pyclass(module = "crabnet._crabnet", frozen)]
pub struct NativeWeb {
    handle: Mutex<Option<BlockingWebHandle>>,
    url: String,
}

#[pymethods]
impl NativeWeb {
    /// The dashboard's URL, e.g. `http://127.0.0.1:7980/`.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// Stops serving (open requests get up to 5 s); idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| match lock(&self.handle).take() {
            Some(mut handle) => handle.shutdown(),
            None => Ok(()),
        })
        .py(py)
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.handle).is_none()
    }
}

impl Drop for NativeWeb {
    fn drop(&mut self) {
        let handle = self
            .handle
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Dropping stops the server without waiting.
        drop(handle);
    }
}
