//! Whether the database may have been written since the last look, without asking SQLite.
//!
//! Housekeeping notices other processes' commits (a CLI command, a binding on the same data
//! directory) by SQLite's `data_version`, a read that takes the database's locks. Asked on
//! every tick, an idle node queried its store four times a second for nothing. On Linux the
//! write-ahead log is watched instead (inotify): every commit, by any process, writes to it,
//! so `data_version` is read only after the log was written. Where the log cannot be watched
//! (another system, a file system without inotify, a log replaced under the watch), every
//! look says "maybe" and the caller reads `data_version` as before.

use std::path::Path;

/// Watches a database's write-ahead log (`<database>-wal`). Made inside a Tokio runtime.
pub(crate) struct WalWatch {
    #[cfg(target_os = "linux")]
    inner: Option<linux::Inotify>,
}

impl WalWatch {
    /// Watches the write-ahead log of the database at `db_path` (which must exist: the store
    /// is open). Never fails: without a watch, [`WalWatch::maybe_written`] is always true.
    pub(crate) fn new(db_path: &Path) -> WalWatch {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        #[cfg(target_os = "linux")]
        {
            let inner = match linux::Inotify::watch(Path::new(&wal)) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::debug!("cannot watch {:?}, polling it: {e}", wal);
                    None
                }
            };
            WalWatch { inner }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = wal;
            WalWatch {}
        }
    }

    /// Whether the log may have been written since the last call (true while nothing is
    /// watched). Does not wait.
    pub(crate) fn maybe_written(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let Some(watch) = self.inner.as_mut() else {
                return true;
            };
            match watch.drain() {
                Ok(linux::Seen::Nothing) => false,
                Ok(linux::Seen::Written) => true,
                Ok(linux::Seen::Lost) => {
                    // The log was removed or replaced: its new file is not watched.
                    tracing::debug!("the database log left its watch, polling it");
                    self.inner = None;
                    true
                }
                Err(e) => {
                    tracing::debug!("cannot read the database log's watch, polling it: {e}");
                    self.inner = None;
                    true
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        true
    }

    /// Waits until the log may have been written since [`WalWatch::maybe_written`] last
    /// looked (at once when it was); never returns while nothing is watched.
    pub(crate) async fn written(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(watch) = self.inner.as_mut() {
            watch.readable().await;
            return;
        }
        std::future::pending::<()>().await
    }

    /// Whether the log is watched (false: every look says "maybe").
    pub(crate) fn is_watched(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.inner.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        false
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// What the watch saw since the last drain.
    pub(super) enum Seen {
        Nothing,
        Written,
        /// The file was deleted, moved or its file system unmounted: the watch is gone.
        Lost,
    }

    /// A non-blocking inotify instance watching one file for writes, registered with Tokio.
    pub(super) struct Inotify {
        fd: AsyncFd<OwnedFd>,
    }

    impl Inotify {
        pub(super) fn watch(path: &Path) -> io::Result<Inotify> {
            let path = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: a plain syscall taking flags only.
            let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let mask = libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
            if wd < 0 {
                return Err(io::Error::last_os_error());
            }
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other("not inside a Tokio runtime"));
            }
            // SAFETY: an `OwnedFd` stays open, and names the same descriptor, for as long as
            // the `AsyncFd` owns it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?;
            Ok(Inotify { fd })
        }

        /// Waits until events are queued (readiness the last drain left behind is checked
        /// against the queue, so a drained watch waits for the next event).
        pub(super) async fn readable(&mut self) {
            loop {
                let Ok(mut guard) = self.fd.readable().await else {
                    // The reactor is gone (shutting down): nothing more to wait for.
                    return std::future::pending().await;
                };
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int through the pointer, valid for the call.
                let rc = unsafe {
                    libc::ioctl(
                        self.fd.get_ref().as_raw_fd(),
                        libc::FIONREAD,
                        &mut queued as *mut libc::c_int,
                    )
                };
                if rc < 0 || queued > 0 {
                    // (An error: let the caller look; its drain reports it.)
                    return;
                }
                guard.clear_ready();
            }
        }

        /// Reads every queued event without waiting.
        pub(super) fn drain(&mut self) -> io::Result<Seen> {
            // Room for many events (16 bytes each: a file watch carries no name).
            let mut buf = [0u8; 1024];
            let mut seen = Seen::Nothing;
            loop {
                // SAFETY: `buf` is valid for writes of its length for the whole call.
                let n = unsafe {
                    libc::read(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast::<libc::c_void>(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(seen),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    };
                }
                let n = n as usize;
                if n == 0 {
                    return Ok(seen);
                }
                let mut at = 0;
                // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
                while at + 16 <= n {
                    let field = |i: usize| {
                        u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().expect("4 bytes"))
                    };
                    let mask = field(4);
                    let len = field(12) as usize;
                    let gone = libc::IN_DELETE_SELF
                        | libc::IN_MOVE_SELF
                        | libc::IN_IGNORED
                        | libc::IN_UNMOUNT;
                    if mask & gone != 0 {
                        seen = Seen::Lost;
                    } else if !matches!(seen, Seen::Lost) {
                        // IN_MODIFY, or IN_Q_OVERFLOW (events were lost: maybe written).
                        seen = Seen::Written;
                    }
                    at += 16 + len;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_to_the_log_is_seen_once_and_a_missing_log_means_polling() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crabnet.db");
        let wal = dir.path().join("crabnet.db-wal");
        // No log yet: nothing to watch, every look says "maybe".
        let mut watch = WalWatch::new(&db);
        assert!(!watch.is_watched());
        assert!(watch.maybe_written());

        std::fs::write(&wal, b"").unwrap();
        let mut watch = WalWatch::new(&db);
        if !cfg!(target_os = "linux") {
            assert!(watch.maybe_written());
            return;
        }
        assert!(watch.is_watched());
        assert!(!watch.maybe_written(), "nothing written yet");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(b"frame").unwrap();
        f.write_all(b"frame").unwrap();
        drop(f);
        assert!(watch.maybe_written());
        assert!(!watch.maybe_written(), "seen once");

        // Replaced: the new file is not watched, so every look says "maybe" from then on.
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"").unwrap();
        assert!(watch.maybe_written());
        assert!(!watch.is_watched());
        assert!(watch.maybe_written());
    }

    #[tokio::test]
    async fn another_connections_commit_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crabnet.db");
        let ours = rusqlite::Connection::open(&db).unwrap();
        ours.pragma_update(None, "journal_mode", "wal").unwrap();
        ours.execute("CREATE TABLE t (x)", []).unwrap();
        let mut watch = WalWatch::new(&db);
        assert_eq!(
            watch.is_watched(),
            cfg!(target_os = "linux"),
            "the log exists once WAL is on"
        );
        if !watch.is_watched() {
            return;
        }
        assert!(!watch.maybe_written());
        let other = rusqlite::Connection::open(&db).unwrap();
        other.execute("INSERT INTO t VALUES (1)", []).unwrap();
        // Waiting for it returns (the commit is queued), and a look then sees it.
        tokio::time::timeout(std::time::Duration::from_secs(10), watch.written())
            .await
            .expect("a commit wakes the watch");
        assert!(watch.maybe_written());
        // Drained: waiting now blocks until the next commit.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(200), watch.written()).await;
        assert!(waited.is_err(), "no commit since the look");
        other.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), watch.written())
            .await
            .expect("the next commit wakes the watch");
        assert!(watch.maybe_written());
        // A read by either writes nothing.
        let _: i64 = ours
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(!watch.maybe_written());
    }
}
