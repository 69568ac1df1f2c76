//! Group commit of the API's local operations (issue 13): many concurrent callers through the
//! async API, each acknowledged once and only after its commit, with one event per operation,
//! and everything still there after a restart. (`crash.rs` kills a process in the middle of
//! concurrent publishes; `node/group.rs` holds the unit tests of a group's failures.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crabnet_core::{Config, ErrorKind, EventKind, Node, PublishRequest, SeedId, SeedStatus};

const PUBLISHERS: usize = 64;
const FAILING: usize = 8;

/// 64 tasks publish at once while 8 others settle unknown seeds and one cancels a seed
/// published before: every publish returns its own seed, every settlement fails with its own
/// `NotFound`, the cancellation commits; each committed operation has exactly one event on
/// the bus and in the store, every operation was in exactly one group, and after a restart
/// the store holds every acknowledged seed with its envelope and outbox row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_commit_once_each_with_one_event_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("node"));
    config.name = "grouped".into();
    let node = Node::start(config.clone()).await.unwrap();
    let mut events = node.subscribe();
    let mut early = PublishRequest::new("echo early");
    early.bid_window_secs = 3600;
    let early = node.publish(early).await.unwrap().seed.id;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PUBLISHERS {
        let n = node.clone();
        tasks.spawn(async move {
            let mut req = PublishRequest::new(format!("echo grouped {i}"));
            req.bid_window_secs = 3600;
            (format!("publish {i}"), n.publish(req).await)
        });
        if i % (PUBLISHERS / FAILING) == 0 {
            let n = node.clone();
            tasks.spawn(async move {
                let unknown = SeedId::from_bytes([i as u8 + 1; 16]);
                (format!("settle {i}"), n.settle(&unknown, true, "").await)
            });
        }
        if i == PUBLISHERS / 2 {
            let (n, id) = (node.clone(), early.clone());
            tasks.spawn(async move { ("cancel".to_owned(), n.cancel(&id).await) });
        }
    }
    let mut published: BTreeMap<SeedId, String> = BTreeMap::new();
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        let (what, result) = done.unwrap();
        match what.split_once(' ') {
            Some(("publish", i)) => {
                let view = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    view.seed.command,
                    format!("echo grouped {i}"),
                    "its own seed"
                );
                assert_eq!(view.status, SeedStatus::Open);
                assert!(
                    published.insert(view.seed.id, what.clone()).is_none(),
                    "one seed per publish"
                );
            }
            Some(("settle", _)) => {
                let e = result.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::NotFound, "{what}: {e}");
                refused += 1;
            }
            _ => assert_eq!(result.unwrap().status, SeedStatus::Cancelled),
        }
    }
    assert_eq!(published.len(), PUBLISHERS);
    assert_eq!(refused, FAILING);

    // Exactly one event per committed operation on the bus.
    let mut bus: BTreeMap<SeedId, usize> = BTreeMap::new();
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bus.values().sum::<usize>() < PUBLISHERS + 1 || cancelled == 0 {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("every event is delivered")
            .expect("the bus is open");
        match e.kind {
            EventKind::SeedPublished { seed_id, .. } => *bus.entry(seed_id).or_default() += 1,
            EventKind::SeedCancelled { .. } => cancelled += 1,
            _ => {}
        }
    }
    // Nothing more comes (no event twice).
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        if let EventKind::SeedPublished { seed_id, .. } = e.kind {
            *bus.entry(seed_id).or_default() += 1;
        }
    }
    assert_eq!(cancelled, 1);
    assert!(bus.values().all(|&n| n == 1), "{bus:?}");
    let expected: BTreeSet<&SeedId> = published.keys().chain([&early]).collect();
    assert_eq!(bus.keys().collect::<BTreeSet<_>>(), expected);

    let counters = node.overview().await.unwrap().counters;
    let (groups, ops) = (counters["local.groups"], counters["local.group_ops"]);
    assert_eq!(
        ops,
        (1 + PUBLISHERS + FAILING + 1) as u64,
        "every operation in one group"
    );
    eprintln!("{ops} local operations in {groups} groups");
    node.stop().await.unwrap();

    // After a restart: every acknowledged seed, its one event and its envelope, waiting to
    // be sent.
    let node = Node::start(config).await.unwrap();
    let seeds = node.seeds(None).await.unwrap();
    assert_eq!(seeds.len(), PUBLISHERS + 1);
    for id in published.keys() {
        assert!(seeds.iter().any(|v| &v.seed.id == id), "{id} after restart");
    }
    let mut stored: BTreeMap<SeedId, usize> = BTreeMap::new();
    for e in node.events_after(0, 100_000).await.unwrap() {
        if let EventKind::SeedPublished { seed_id, .. } = e.kind {
            *stored.entry(seed_id).or_default() += 1;
        }
    }
    assert_eq!(stored.keys().collect::<BTreeSet<_>>(), expected);
    assert!(stored.values().all(|&n| n == 1), "{stored:?}");
    assert_eq!(
        node.overview().await.unwrap().outbox_pending,
        (PUBLISHERS + 2) as u64,
        "one outbox row per committed operation"
    );
    node.stop().await.unwrap();
}
