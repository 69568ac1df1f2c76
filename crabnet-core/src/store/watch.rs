//! Commits by other processes on the same database, told without asking SQLite.
//!
//! Housekeeping notices other processes' commits (a CLI command, a binding on the same data
//! directory) by SQLite's `data_version`, a read that takes the database's locks. Asked on
//! every tick, an idle node queried its store four times a second for nothing. Watching the
//! write-ahead log instead (inotify) woke a node for its own commits too: a log write does not
//! say whose it is, so each of its own commits brought a run of quick looks (eight, at 1, 2,
//! 4 ... 128 ms) that waited for a commit of another process to become visible.
//!
//! Now every [`Store`](super::Store) has a *bell*: a file of its own in `<database>-bells/`,
//! named `<pid>.<n>.<random>`, that it writes one byte to after each commit, once the commit is
//! visible (SQLite's WAL hook). On Linux a [`CommitWatch`] watches that directory (inotify)
//! and reports writes to any bell but its own store's: a commit of another store, visible by
//! the time it is seen. A write to the database by another program (the `sqlite3` shell) rings
//! nothing; it is seen at the next full look. Where the directory cannot be watched (another
//! system, a file system without inotify, the directory removed) every look says "maybe" and
//! the caller reads `data_version` as before.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The directory of the bells of the database at `db_path`.
fn bells_dir(db_path: &Path) -> PathBuf {
    let mut dir = db_path.as_os_str().to_owned();
    dir.push("-bells");
    PathBuf::from(dir)
}

/// A store's bell: rung after each of its commits. The file is removed on drop.
pub(crate) struct Bell {
    file: File,
    path: PathBuf,
    name: String,
}

impl Bell {
    /// Makes the bell of a new store on the database at `db_path` (and its directory, 0700),
    /// removing the bells of stores that are gone.
    pub(crate) fn new(db_path: &Path) -> std::io::Result<Bell> {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let dir = bells_dir(db_path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        remove_dead_bells(&dir);
        // The pid for people reading the directory; the random part because processes in
        // other PID namespaces (containers sharing the data directory) may have the same pid.
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let name = format!(
            "{}.{}.{}",
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed),
            hex::encode(random)
        );
        let path = dir.join(&name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        // Held while the store is open: how other stores tell a live bell from one a crash
        // left behind.
        if let Err(e) = file.try_lock() {
            let _ = std::fs::remove_file(&path);
            return Err(std::io::Error::other(format!("cannot lock {name}: {e}")));
        }
        Ok(Bell { file, path, name })
    }

    /// The bell's file name (what a watch of this store leaves out).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Tells the watchers that a commit is visible. A failure only delays what they see until
    /// their next full look.
    pub(crate) fn ring(&self) {
        if let Err(e) = self.file.write_at(b"1", 0) {
            tracing::debug!("cannot ring {}: {e}", self.path.display());
        }
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How old an unlocked file in the bells directory must be to be removed: a new bell is
/// locked a moment after it is made.
const BELL_GRACE: Duration = Duration::from_secs(10);

/// Removes the bells no open store holds (their lock is free: left by a crash), and symbolic
/// links planted in the directory.
fn remove_dead_bells(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            if meta.is_symlink() {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age >= BELL_GRACE);
        if !old {
            continue;
        }
        // (Never blocks, should a FIFO have taken the file's place since the check.)
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Watches the bells of a database's stores, all but one's own. Made inside a Tokio runtime.
pub(crate) struct CommitWatch {
    #[cfg(target_os = "linux")]
    inner: Option<linux::Inotify>,
}

impl CommitWatch {
    /// Watches the bells of the database at `db_path`, leaving out the bell named `own` (the
    /// watching store's: `None` when it has none). Never fails: without a watch,
    /// [`CommitWatch::maybe_written`] is always true.
    pub(crate) fn new(db_path: &Path, own: Option<&str>) -> CommitWatch {
        let dir = bells_dir(db_path);
        #[cfg(target_os = "linux")]
        {
            let inner = match linux::Inotify::watch(&dir, own) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::debug!("cannot watch {}, polling the database: {e}", dir.display());
                    None
                }
            };
            CommitWatch { inner }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (dir, own);
            CommitWatch {}
        }
    }

    /// A watch of nothing: every look says "maybe" (a node that does not watch yet).
    pub(crate) fn unwatched() -> CommitWatch {
        CommitWatch {
            #[cfg(target_os = "linux")]
            inner: None,
        }
    }

    /// Whether another store may have committed since the last call (true while nothing is
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
                    tracing::debug!("the database's bells are no longer watched, polling");
                    self.inner = None;
                    true
                }
                Err(e) => {
                    tracing::debug!("cannot read the bells' watch, polling the database: {e}");
                    self.inner = None;
                    true
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        true
    }

    /// Waits until another store may have committed since [`CommitWatch::maybe_written`] last
    /// looked (at once when one did); never returns while nothing is watched.
    pub(crate) async fn written(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(watch) = self.inner.as_mut() {
            watch.readable().await;
            return;
        }
        std::future::pending::<()>().await
    }

    /// Whether the bells are watched (false: every look says "maybe").
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
    use std::path::{Path, PathBuf};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// What the watch saw since the last drain.
    #[derive(Clone, Copy)]
    pub(super) enum Seen {
        Nothing,
        Written,
        /// The directory was deleted, moved or its file system unmounted: the watch is gone.
        Lost,
    }

    /// A non-blocking inotify instance, registered with Tokio, watching a directory of bells
    /// for new ones and each bell but its own for writes: the store's own commits do not wake
    /// the watch at all.
    pub(super) struct Inotify {
        fd: AsyncFd<OwnedFd>,
        dir: PathBuf,
        dir_wd: libc::c_int,
        own: Option<Vec<u8>>,
        /// What [`Inotify::readable`] read while it waited, for the next drain.
        pending: Seen,
    }

    fn add_watch(fd: libc::c_int, path: &Path, mask: u32) -> io::Result<libc::c_int> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(wd)
    }

    impl Inotify {
        pub(super) fn watch(dir: &Path, own: Option<&str>) -> io::Result<Inotify> {
            // SAFETY: a plain syscall taking flags only.
            let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let mask = libc::IN_CREATE
                | libc::IN_MOVED_TO
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF
                | libc::IN_ONLYDIR
                | libc::IN_DONT_FOLLOW;
            let dir_wd = add_watch(fd.as_raw_fd(), dir, mask)?;
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other("not inside a Tokio runtime"));
            }
            // SAFETY: an `OwnedFd` stays open, and names the same descriptor, for as long as
            // the `AsyncFd` owns it.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?;
            let watch = Inotify {
                fd,
                dir: dir.to_owned(),
                dir_wd,
                own: own.map(|n| n.as_bytes().to_vec()),
                pending: Seen::Nothing,
            };
            // The bells made before the directory's watch (new ones are its events).
            watch.watch_all()?;
            Ok(watch)
        }

        /// Watches every bell in the directory but the own one (again: a watch already there
        /// stays as it is).
        fn watch_all(&self) -> io::Result<()> {
            for entry in std::fs::read_dir(&self.dir)? {
                self.watch_bell(entry?.file_name().as_bytes())?;
            }
            Ok(())
        }

        /// Watches the bell `name` for writes, unless it is the own one. A bell removed
        /// meanwhile is not an error (its store is gone); any other failure is (the caller
        /// polls instead: a bell it cannot hear would leave that store's commits unseen).
        fn watch_bell(&self, name: &[u8]) -> io::Result<()> {
            if self.own.as_deref() == Some(name) || name.is_empty() {
                return Ok(());
            }
            let path = self.dir.join(std::ffi::OsStr::from_bytes(name));
            let mask = libc::IN_MODIFY | libc::IN_DONT_FOLLOW;
            match add_watch(self.fd.get_ref().as_raw_fd(), &path, mask) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }

        /// Waits until a commit may have been rung since the last drain: events that say
        /// nothing of a commit (a bell removed with its store) are read and passed over.
        pub(super) async fn readable(&mut self) {
            loop {
                if !matches!(self.pending, Seen::Nothing) {
                    return;
                }
                let Ok(mut guard) = self.fd.readable().await else {
                    // The reactor is gone (shutting down): nothing more to wait for.
                    return std::future::pending().await;
                };
                let read = self.read_events();
                if matches!(read, Ok(Seen::Nothing)) {
                    guard.clear_ready();
                    continue;
                }
                drop(guard);
                self.pending = match read {
                    Ok(seen) => seen,
                    Err(e) => {
                        // A bell that cannot be watched (another user's, the watch limit
                        // reached): its store's commits would go unheard, so the caller polls.
                        tracing::debug!("cannot follow the database's bells, polling: {e}");
                        Seen::Lost
                    }
                };
                return;
            }
        }

        /// What was seen since the last drain (events read while waiting, and those queued
        /// now), without waiting.
        pub(super) fn drain(&mut self) -> io::Result<Seen> {
            let waited = std::mem::replace(&mut self.pending, Seen::Nothing);
            let now = self.read_events()?;
            Ok(match (waited, now) {
                (Seen::Lost, _) | (_, Seen::Lost) => Seen::Lost,
                (Seen::Written, _) | (_, Seen::Written) => Seen::Written,
                _ => Seen::Nothing,
            })
        }

        /// Reads every queued event without waiting: a write to a watched bell, a new bell
        /// (now watched; its store may have committed before the watch) and lost events all
        /// say "written".
        fn read_events(&self) -> io::Result<Seen> {
            // Room for many events (16 bytes each, and a name on the directory's).
            let mut buf = [0u8; 4096];
            let mut seen = Seen::Nothing;
            let mut rescan = false;
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
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
                let n = n as usize;
                if n == 0 {
                    break;
                }
                let mut at = 0;
                // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
                while at + 16 <= n {
                    let field = |i: usize| {
                        u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().expect("4 bytes"))
                    };
                    let wd = field(0) as libc::c_int;
                    let mask = field(4);
                    let len = field(12) as usize;
                    let name_end = (at + 16 + len).min(n);
                    let name = &buf[at + 16..name_end];
                    let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                    let gone = libc::IN_DELETE_SELF
                        | libc::IN_MOVE_SELF
                        | libc::IN_IGNORED
                        | libc::IN_UNMOUNT;
                    if matches!(seen, Seen::Lost) {
                        // The directory is gone: nothing else matters.
                    } else if mask & libc::IN_Q_OVERFLOW != 0 {
                        // Events were lost, new bells among them maybe.
                        rescan = true;
                        seen = Seen::Written;
                    } else if wd == self.dir_wd {
                        if mask & gone != 0 {
                            seen = Seen::Lost;
                        }
                        if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0
                            && self.own.as_deref() != Some(name)
                        {
                            self.watch_bell(name)?;
                            seen = Seen::Written;
                        }
                    } else if mask & libc::IN_MODIFY != 0 {
                        seen = Seen::Written;
                    }
                    // (IN_IGNORED on a bell: it was removed, its watch with it.)
                    at += 16 + len;
                }
            }
            if rescan && !matches!(seen, Seen::Lost) {
                self.watch_all()?;
            }
            Ok(seen)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits for the watch to say "written", at most 10 s.
    async fn rung(watch: &mut CommitWatch) {
        tokio::time::timeout(Duration::from_secs(10), watch.written())
            .await
            .expect("the watch woke");
        assert!(watch.maybe_written());
    }

    /// Whether the watch wakes within 200 ms.
    async fn wakes(watch: &mut CommitWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), watch.written())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn another_stores_bell_is_heard_and_the_own_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crabnet.db");
        // No bells yet: nothing to watch, every look says "maybe".
        let mut watch = CommitWatch::new(&db, None);
        assert!(!watch.is_watched());
        assert!(watch.maybe_written());

        let own = Bell::new(&db).unwrap();
        let early = Bell::new(&db).unwrap();
        assert_ne!(own.name(), early.name());
        let mut watch = CommitWatch::new(&db, Some(own.name()));
        if !cfg!(target_os = "linux") {
            assert!(watch.maybe_written());
            return;
        }
        assert!(watch.is_watched());
        assert!(!watch.maybe_written(), "nothing rung yet");
        // The own bell does not even wake the watch.
        own.ring();
        own.ring();
        assert!(!wakes(&mut watch).await, "woken by the own bell");
        assert!(!watch.maybe_written());
        // A bell made before the watch is heard, once per look.
        early.ring();
        early.ring();
        rung(&mut watch).await;
        assert!(!watch.maybe_written(), "heard once");
        // A new store: heard when it appears (it may have committed before its bell was
        // watched), then each time it rings.
        let late = Bell::new(&db).unwrap();
        rung(&mut watch).await;
        assert!(!wakes(&mut watch).await);
        late.ring();
        rung(&mut watch).await;
        // A store that closes removes its bell, and that is not a commit.
        let gone = dir.path().join("crabnet.db-bells").join(late.name());
        drop(late);
        assert!(!gone.exists());
        assert!(!wakes(&mut watch).await, "a bell removed woke the watch");
        assert!(!watch.maybe_written());
        // The directory removed: nothing is watched any more, every look says "maybe".
        drop((own, early));
        std::fs::remove_dir_all(dir.path().join("crabnet.db-bells")).unwrap();
        rung(&mut watch).await;
        assert!(!watch.is_watched());
        assert!(watch.maybe_written());
    }

    #[test]
    fn the_bells_of_stores_that_are_gone_are_removed_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crabnet.db");
        let bells = dir.path().join("crabnet.db-bells");
        let live = Bell::new(&db).unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        let age = |p: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap()
        };
        // A bell a crash left (nobody holds its lock), one just made and not yet locked, and
        // a link planted in the directory.
        let dead = bells.join("1.0.00");
        std::fs::write(&dead, b"1").unwrap();
        age(&dead);
        let new = bells.join("1.1.00");
        std::fs::write(&new, b"").unwrap();
        let link = bells.join("link");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        // A FIFO and a directory, old: opening a FIFO to test its lock would block the store
        // that opens; neither is a bell, and both are left alone.
        let fifo = bells.join("2.0.00");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let subdir = bells.join("3.0.00");
        std::fs::create_dir(&subdir).unwrap();
        for p in [&fifo, &subdir] {
            // (Opening a FIFO to set its time would block: set through its path.)
            let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            let old = libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 0,
            };
            // SAFETY: `path` is NUL-terminated and `times` holds two timespecs; both outlive
            // the call.
            let rc =
                unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [old, old].as_ptr(), 0) };
            assert_eq!(rc, 0);
        }
        // The live bell is as old: its lock keeps it.
        age(&bells.join(live.name()));
        let second = Bell::new(&db).unwrap();
        assert!(!dead.exists(), "a dead store's bell stays");
        assert!(new.exists(), "a bell not yet locked was removed");
        assert!(std::fs::symlink_metadata(&link).is_err(), "the link stays");
        assert!(
            fifo.exists() && subdir.is_dir(),
            "a FIFO or a directory was removed"
        );
        assert!(
            bells.join(live.name()).exists(),
            "a live store's bell removed"
        );
        assert!(bells.join(second.name()).exists());
        assert_ne!(live.name(), second.name());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&bells), 0o700);
        assert_eq!(mode(&bells.join(second.name())), 0o600);
        // Closed: its bell goes.
        let gone = bells.join(second.name());
        drop(second);
        assert!(!gone.exists());
    }
}
