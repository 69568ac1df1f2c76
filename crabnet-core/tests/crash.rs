//! Crash test: a process killed with SIGKILL in the middle of a stream of operations leaves a
//! database that opens, passes `PRAGMA integrity_check`, and holds every operation that had
//! returned success.
//!
//! The parent test re-executes this test binary as the child (`child_stream`, an ignored test
//! that only does anything when `CRABNET_CRASH_CHILD_DIR` is set). The child runs a
//! `crabnet_core::Node` and loops publishing seeds, bidding on them and claiming the won ones,
//! printing `ok <seed id> <op> ...` and flushing after every call that returned `Ok`. The
//! parent reads those acknowledgements, SIGKILLs the child after a random number of them, then
//! checks the store. The kill/reopen cycle runs several times on the same directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crabnet_core::monitor::EventKind;
use crabnet_core::store::{Store, StoreConfig};
use crabnet_core::{Config, Node, NodeId, PublishRequest, SeedId, SeedStatus};

const CHILD_DIR_VAR: &str = "CRABNET_CRASH_CHILD_DIR";
const CHILD_SEED_VAR: &str = "CRABNET_CRASH_CHILD_SEED";
const CYCLES: usize = 3;
/// Longest one child may take to produce its acknowledgements before the test gives up.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(45);

/// What the child acknowledged.
#[derive(Debug, Default)]
struct Acks {
    published: BTreeSet<SeedId>,
    /// Seed -> price of this node's acknowledged bid.
    bids: BTreeMap<SeedId, u64>,
    claimed: BTreeSet<SeedId>,
    count: usize,
}

impl Acks {
    /// Records one `ok <seed> <op> [price]` line; ignores anything else (test harness chatter).
    fn record(&mut self, line: &str) -> bool {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ok") {
            return false;
        }
        let (Some(seed), Some(op)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(seed) = SeedId::parse(seed) else {
            return false;
        };
        match op {
            "publish" => {
                self.published.insert(seed);
            }
            "bid" => {
                let price = parts
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("bid line has a price");
                self.bids.insert(seed, price);
            }
            "claim" => {
                self.claimed.insert(seed);
            }
            other => panic!("unknown op {other:?} in child line {line:?}"),
        }
        self.count += 1;
        true
    }
}

/// A cheap pseudo-random number from the clock and the pid (no extra dependencies).
fn random_u64(salt: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The child process: runs forever (until killed), or for at most a minute as a safety net.
#[test]
#[ignore = "helper process for crash_leaves_a_sound_database; does nothing on its own"]
fn child_stream() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let salt: u64 = std::env::var(CHILD_SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let node = Node::start(Config::with_data_dir(&dir))
            .await
            .expect("child: start node");
        let mut out = std::io::stdout().lock();
        // Start on a fresh line: libtest has printed "test child_stream ... " without one.
        writeln!(out, "\nnode {}", node.id()).unwrap();
        out.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i: u64 = 0;
        while Instant::now() < deadline {
            i += 1;
            // Alternate between seeds that close at the first bid (bid -> award -> claim) and
            // seeds that stay open, so every kind of write is in the stream.
            let closes_at_once = i.is_multiple_of(2);
            let mut req = PublishRequest::new(format!("echo crash-{salt}-{i}"));
            req.max_bids = if closes_at_once { 1 } else { 5 };
            req.bid_window_secs = 3600;
            req.min_price = 1;
            req.max_price = 1000;
            let view = node.publish(req).await.expect("child: publish");
            let seed = view.seed.id.clone();
            writeln!(out, "ok {seed} publish").unwrap();
            out.flush().unwrap();

            let price = 1 + (i * 7 + salt) % 1000;
            let view = node.bid(&seed, price).await.expect("child: bid");
            writeln!(out, "ok {seed} bid {price}").unwrap();
            out.flush().unwrap();

            if closes_at_once {
                assert!(
                    view.award.is_some(),
                    "child: max_bids 1 closes bidding at the first bid"
                );
                node.claim(&seed).await.expect("child: claim");
                writeln!(out, "ok {seed} claim").unwrap();
                out.flush().unwrap();
            }
        }
        // Only reached when the parent never killed us.
        let _ = node.stop().await;
    });
}

/// Runs one child on `dir`, kills it with SIGKILL after `kill_after` acknowledgements (plus a
/// short random delay, so the kill lands at an arbitrary point of the next operation), and
/// returns every acknowledgement it printed before it died, plus the node id it reported.
fn run_child_and_kill(dir: &Path, kill_after: usize, salt: u64, acks: &mut Acks) -> NodeId {
    let exe = std::env::current_exe().expect("current test binary");
    let stderr_path = dir.with_extension(format!("child{salt}.stderr"));
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_stream",
            "--nocapture",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_VAR, dir)
        .env(CHILD_SEED_VAR, salt.to_string())
        .env_remove("CRABNET_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn child");

    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + CYCLE_TIMEOUT;
    let mut node: Option<NodeId> = None;
    let mut seen = 0usize;
    let mut killed = false;
    let mut all_lines = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(line) => {
                all_lines.push(line.clone());
                if let Some(id) = line.strip_prefix("node ") {
                    node = Some(NodeId::parse(id.trim()).expect("child prints its node id"));
                }
                if acks.record(&line) {
                    seen += 1;
                    if seen == kill_after && !killed {
                        // Land the kill somewhere inside the following operation(s).
                        let delay = random_u64(salt ^ seen as u64) % 3000;
                        std::thread::sleep(Duration::from_micros(delay));
                        child.kill().expect("SIGKILL the child");
                        killed = true;
                    }
                }
            }
            // The child is gone and its stdout fully read.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child produced only {seen} of {kill_after} acknowledgements within {CYCLE_TIMEOUT:?}\n\
                     --- child stdout\n{}\n--- child stderr\n{}",
                    all_lines.join("\n"),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
    let status = child.wait().expect("reap child");
    reader.join().unwrap();
    assert!(
        killed,
        "the child exited on its own ({status}) after {seen} acknowledgements\n--- child stdout\n{}\n--- child stderr\n{}",
        all_lines.join("\n"),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "child died of SIGKILL: {status}"
        );
    }
    node.expect("child printed its node id")
}

/// Opens the store and checks it against everything acknowledged so far.
fn check_store(config: &Config, acks: &Acks, me: &NodeId) {
    let store = Store::open(&config.db_path(), &StoreConfig::default())
        .expect("database opens after SIGKILL");
    store
        .integrity_check()
        .expect("PRAGMA integrity_check passes");
    assert_eq!(
        store.meta("node_id").unwrap().as_deref(),
        Some(me.as_str()),
        "the node identity survives crashes"
    );

    for seed in &acks.published {
        let view = store
            .seed(seed)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged seed {seed} is missing after the crash"));
        assert_eq!(&view.seed.publisher, me);
    }
    for (seed, price) in &acks.bids {
        let view = store
            .seed(seed)
            .unwrap()
            .unwrap_or_else(|| panic!("seed {seed} of an acknowledged bid is missing"));
        assert!(
            view.bids
                .iter()
                .any(|b| &b.bid.bidder == me && b.bid.price == *price),
            "acknowledged bid {price} on {seed} is missing: {:?}",
            view.bids
        );
        if view.seed.max_bids == 1 {
            // The award is committed by the same `bid` call before it returns.
            let award = view
                .award
                .as_ref()
                .unwrap_or_else(|| panic!("award of {seed} missing"));
            assert_eq!(award.winner_node.as_ref(), Some(me));
            assert_eq!(award.price, Some(*price));
        }
    }
    for seed in &acks.claimed {
        let view = store.seed(seed).unwrap().expect("claimed seed exists");
        assert_eq!(
            view.status,
            SeedStatus::Claimed,
            "acknowledged claim of {seed} is missing"
        );
        assert_eq!(view.claim.as_ref().map(|c| &c.claimer), Some(me));
    }

    // Events: gap-free sequence numbers and one event per acknowledged operation.
    let last = store.last_event_seq().unwrap();
    let events = store.events_after(0, usize::MAX >> 1).unwrap();
    assert_eq!(
        events.len() as u64,
        last,
        "event sequence numbers are gap-free"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "event sequence numbers are gap-free");
    }
    let mut published = BTreeSet::new();
    let mut bid = BTreeSet::new();
    let mut closed = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    for e in &events {
        match &e.kind {
            EventKind::SeedPublished { seed_id, .. } => {
                assert!(
                    published.insert(seed_id.clone()),
                    "seed_published twice for {seed_id}"
                );
            }
            EventKind::BidPlaced {
                seed_id, bidder, ..
            } if bidder == me => {
                bid.insert(seed_id.clone());
            }
            EventKind::BiddingClosed { seed_id, .. } => {
                closed.insert(seed_id.clone());
            }
            EventKind::SeedClaimed { seed_id, .. } => {
                claimed.insert(seed_id.clone());
            }
            _ => {}
        }
    }
    for seed in &acks.published {
        assert!(
            published.contains(seed),
            "seed_published event of {seed} missing"
        );
    }
    for seed in acks.bids.keys() {
        assert!(bid.contains(seed), "bid_placed event of {seed} missing");
    }
    for seed in &acks.claimed {
        assert!(
            closed.contains(seed),
            "bidding_closed event of {seed} missing"
        );
        assert!(
            claimed.contains(seed),
            "seed_claimed event of {seed} missing"
        );
    }
    // Every seed in the database has its publication event (no half-written operation).
    for view in store.all_views().unwrap() {
        assert!(
            published.contains(&view.seed.id),
            "seed {} has no seed_published event",
            view.seed.id
        );
        if !view.bids.is_empty() {
            assert!(
                bid.contains(&view.seed.id),
                "seed {} has a bid but no bid_placed event",
                view.seed.id
            );
        }
        if view.claim.is_some() {
            assert!(
                claimed.contains(&view.seed.id),
                "seed {} claimed without event",
                view.seed.id
            );
        }
    }
    // Nothing was sent (no transport): every local message is still in the outbox.
    let pending = store.outbox_pending().unwrap() as usize;
    assert!(
        pending >= acks.count,
        "outbox holds {pending} messages for {} acknowledged operations",
        acks.count
    );
}

#[test]
fn crash_leaves_a_sound_database() {
    let tmp = tempfile::Builder::new()
        .prefix("crabnet-crash-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("node");
    let config = Config::with_data_dir(&dir);
    let mut acks = Acks::default();
    let mut me: Option<NodeId> = None;
    let started = Instant::now();

    for cycle in 0..CYCLES {
        let salt = random_u64(cycle as u64);
        let kill_after = 20 + (salt % 41) as usize; // 20..=60
        let before = acks.count;
        let id = run_child_and_kill(&dir, kill_after, salt, &mut acks);
        if let Some(prev) = &me {
            assert_eq!(prev, &id, "the node id is stable across crashes");
        }
        me = Some(id.clone());
        assert!(
            acks.count - before >= kill_after,
            "cycle {cycle}: too few acknowledgements"
        );
        eprintln!(
            "cycle {cycle}: killed after {kill_after} acks ({} acknowledged in this cycle, {} in total)",
            acks.count - before,
            acks.count
        );
        check_store(&config, &acks, &id);
    }
    let me = me.unwrap();

    // A new node starts on the crashed directory, sees everything, and works.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (new_seed, bid_price) = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let node = Node::start(config.clone())
                .await
                .expect("node starts after crashes");
            assert_eq!(node.id(), &me);
            let seeds = node.seeds(None).await.unwrap();
            for s in &acks.published {
                assert!(
                    seeds.iter().any(|v| &v.seed.id == s),
                    "{s} visible through a new node"
                );
            }
            let view = node
                .publish(PublishRequest::new("echo after-crash"))
                .await
                .expect("publish after crashes");
            let id = view.seed.id.clone();
            let view = node.bid(&id, 42).await.expect("bid after crashes");
            assert_eq!(view.bids.len(), 1);
            node.stop().await.expect("clean stop");
            (id, 42u64)
        })
        .await
        .expect("a node on the crashed directory starts, publishes and stops within 30 s")
    });
    acks.published.insert(new_seed.clone());
    acks.bids.insert(new_seed.clone(), bid_price);
    acks.count += 2;
    check_store(&config, &acks, &me);

    // After the clean stop the NDJSON log has caught up: every line parses and every event of
    // the database is in it exactly once, in order.
    let store = Store::open(&config.db_path(), &StoreConfig::default()).unwrap();
    let last = store.last_event_seq().unwrap();
    let log = std::fs::read_to_string(config.event_log_path()).expect("events.ndjson exists");
    let mut logged = BTreeSet::new();
    let mut lines = 0u64;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("corrupt NDJSON line ({e}): {line:?}"));
        logged.insert(v["seq"].as_u64().expect("seq"));
        lines += 1;
    }
    let expected: BTreeSet<u64> = (1..=last).collect();
    assert_eq!(
        logged, expected,
        "events.ndjson must hold every event after a clean restart"
    );
    assert_eq!(lines, last, "events.ndjson must hold each event once");
    eprintln!(
        "crash test: {} acknowledged operations, {last} events, {lines} log lines ({} duplicated), {:?}",
        acks.count,
        lines - logged.len() as u64,
        started.elapsed()
    );
}
