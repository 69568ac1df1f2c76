//! A node whose disk fills up: nothing stored is lost or corrupted, its own writes fail with a
//! clear error while reads go on, what its peers sent meanwhile arrives once there is room
//! again, and it keeps working afterwards.
//!
//! The disk is a small tmpfs mounted inside a user and mount namespace the test makes
//! (`unshare -rm`, [`support::namespace`]): the outer `#[test]` re-runs the `#[ignore]`d inner
//! one there.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crabnet_core::{ErrorKind, MemoryHub, Node, PublishRequest, SeedId};
use support::forge::{lively_config, poll, stop_all};
use support::namespace::{self, Kind};

/// Set by the outer test for the inner one it runs in the namespace.
const INSIDE: &str = "CRABNET_FULL_DISK_NAMESPACE";
/// How long anything here may take (the nodes sync every second).
const WITHIN: Duration = Duration::from_secs(60);

#[test]
fn a_full_disk_loses_nothing_and_the_node_catches_up() {
    namespace::run_inside(
        Kind::Mnt,
        "inner_a_full_disk_loses_nothing_and_the_node_catches_up",
        INSIDE,
        &[&["mount", "--version"], &["umount", "--version"]],
    );
}

fn request(n: usize) -> PublishRequest {
    let mut req = PublishRequest::new(format!("echo full disk {n}"));
    // Room for the seeds to take pages: a disk fills with real records.
    req.description = format!("seed {n} {}", "x".repeat(2_000));
    req.bid_window_secs = 3600;
    req
}

/// Fills the file system under `path` with one file, until a write fails for want of room.
fn fill(path: &Path) -> PathBuf {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // What is left is less than a chunk: take it too.
    let byte = [0xa5u8; 1];
    while file.write(&byte).is_ok_and(|n| n == 1) {}
    path.to_owned()
}

/// Waits until `node` holds every seed of `ids`.
async fn holds_all(node: &Node, ids: &[SeedId], what: &str) {
    let what = || {
        format!(
            "{} never held all {} seeds {what}",
            node.config().name,
            ids.len()
        )
    };
    poll(WITHIN, what, || async {
        for id in ids {
            if node.seed(id).await.is_err() {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a file system: runs inside the namespace \
            a_full_disk_loses_nothing_and_the_node_catches_up makes"]
async fn inner_a_full_disk_loses_nothing_and_the_node_catches_up() {
    namespace::check_inside(Kind::Mnt, INSIDE, "the mounts");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Mounted::tmpfs(small, "24m");
    let small = mounted.0.as_path();

    let hub = MemoryHub::new();
    let a = Node::start_with_transport(lively_config(dir.path(), "a"), Box::new(hub.join("a")))
        .await
        .unwrap();
    let b = Node::start_with_transport(lively_config(small, "b"), Box::new(hub.join("b")))
        .await
        .unwrap();
    for n in [&a, &b] {
        n.wait_for_peers(1, WITHIN).await.unwrap();
    }
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(a.publish(request(n)).await.unwrap().seed.id);
    }
    holds_all(&b, &ids, "before the disk filled").await;
    let own_before = b.publish(request(1_000)).await.unwrap().seed.id;

    // The disk fills. What a peer publishes meanwhile cannot be stored on it.
    let ballast = fill(&small.join("ballast"));
    for n in 10..40 {
        ids.push(a.publish(request(n)).await.unwrap().seed.id);
    }
    // Until there is room again, what arrived is not kept (a frame is stored whole or not at
    // all).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut missed = 0;
    for id in &ids[10..] {
        missed += usize::from(b.seed(id).await.is_err());
    }
    assert!(missed > 0, "the node stored every seed on a full disk");
    // The node's own writes fail, saying why; its reads go on.
    let err = b.publish(request(1_001)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store, "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    let overview = b.overview().await.unwrap();
    assert!(
        overview.seeds_by_status.values().sum::<u64>() >= 11,
        "{overview:?}"
    );
    b.seed(&own_before).await.unwrap();

    // Room again: what it missed arrives, and it works as before.
    std::fs::remove_file(&ballast).unwrap();
    holds_all(&b, &ids, "after the disk had room again").await;
    let own_after = b.publish(request(1_002)).await.unwrap().seed.id;
    holds_all(&a, &[own_before.clone(), own_after.clone()], "from b").await;
    stop_all([a, b]).await;

    // Nothing stored was lost or damaged.
    let db = rusqlite::Connection::open(small.join("b").join("crabnet.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    let b = Node::start(lively_config(small, "b")).await.unwrap();
    holds_all(&b, &ids, "after a restart").await;
    holds_all(&b, &[own_before, own_after], "of its own after a restart").await;
    let last = b.overview().await.unwrap().last_event_seq;
    b.stop().await.unwrap();
    // Its event log holds every event once, in order, each line whole (up to the last one
    // recorded, at its stop or after the look above).
    let log = std::fs::read_to_string(small.join("b").join("events.ndjson")).unwrap();
    let seqs: Vec<u64> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a broken line in the event log ({e}): {l:?}"));
            v["seq"].as_u64().unwrap()
        })
        .collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "the event log");
    assert!(
        seqs.len() as u64 >= last,
        "{} events in the log, {last} recorded",
        seqs.len()
    );
}

/// A file system mounted on a directory, unmounted when dropped (so that the temporary
/// directory holding it can be removed; the mount itself ends with the namespace anyway).
struct Mounted(PathBuf);

impl Mounted {
    /// Mounts a tmpfs of `size` (`mount -o size=`) on `dir`.
    fn tmpfs(dir: PathBuf, size: &str) -> Mounted {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs: {status}");
        Mounted(dir)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
