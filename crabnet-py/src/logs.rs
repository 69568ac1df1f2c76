//! The bridge from the node's logs to Python's `logging`: [`crabnet_core::logging`] filters
//! (`CRABNET_LOG`, default `warn`) and queues the records, `pyo3-log` hands each one to the
//! logger named after its target under `crabnet` (`crabnet.core.node`, ...).

use crabnet_core::logging::{self, Level, LevelFilter, Record};
use log::Log;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

fn log_level(level: Level) -> log::Level {
    match level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

/// Starts (or, with `enabled=False`, stops) forwarding the node's log records to Python's
/// `logging`, under loggers named `crabnet.*` (`crabnet.core.node`, ...).
///
/// Forwarding starts when the package is imported and stops at interpreter exit. Which
/// records are forwarded is decided by the environment variable `CRABNET_LOG` (a filter such
/// as `debug` or `crabnet_core=debug,libp2p=info`; default `warn`), read again by every call;
/// the `crabnet` loggers' levels and handlers then apply as usual. Records are delivered from
/// a thread owned by Crabnet; when Python falls behind, records are dropped and counted (see
/// `logs_dropped`), never the node slowed down.
#[pyfunction]
#[pyo3(signature = (enabled=true))]
pub(crate) fn forward_logs(py: Python<'_>, enabled: bool) -> PyResult<()> {
    if !enabled {
        // Waits for a record being handed to Python: without the GIL, or it would wait for us.
        py.detach(logging::remove_sink);
        return Ok(());
    }
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?
        // `crabnet_core::logging` filters; the loggers' levels decide the rest.
        .filter(log::LevelFilter::Trace);
    let sink = move |record: &Record| {
        let name = record.logger_name();
        Python::attach(|py| {
            logger.log(
                &log::Record::builder()
                    .level(log_level(record.level))
                    .target(&name)
                    .args(format_args!("{}", record.message))
                    .build(),
            );
            // pyo3-log leaves an exception raised by a handler or filter pending on this
            // thread; report it like Python reports errors in threads nobody joins.
            if let Some(e) = PyErr::take(py) {
                e.write_unraisable(py, None);
            }
        });
    };
    py.detach(|| logging::set_sink(LevelFilter::WARN, sink))
        .py(py)
}

/// How many log records were dropped since the process started because Python did not take
/// them as fast as the node produced them.
#[pyfunction]
pub(crate) fn logs_dropped() -> u64 {
    logging::dropped_records()
}
