//! Durable state in SQLite: messages, materialized seed views, events, the outbox, the seen
//! table and counters.
//!
//! Every domain operation is one `BEGIN IMMEDIATE` transaction that writes the message, the
//! seed's new state, the events describing the change and (for local operations) the outbox
//! row, so a crash never leaves one without the others. The database runs in WAL mode with
//! foreign keys on and a busy timeout, so several processes may share a data directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::alerts::alert::{ActiveAlert, AlertName};
use crate::alerts::rules::Transition;
use crate::error::{Error, ErrorKind, Result};
use crate::identity::PublicIdentity;
use crate::keycache::ParsedKeys;
use crate::model::{Body, Message, MessageId, Millis, NodeId, SeedId, SeedStatus};
use crate::monitor::{Event, EventKind, RejectReason};
use crate::state::{self, SeedView, Verdict, Violation};

mod busy;
pub(crate) mod config;
mod decisions;
mod prune;
mod reconcile;
mod reputation;
mod shared;
mod watch;
pub use config::{StoreConfig, SyncMode};
pub use prune::{SeedsPruned, TrustPruned};
pub use reconcile::{SyncMark, WantedEnvelope};
pub(crate) use shared::SharedStore;
use watch::Bell;
pub(crate) use watch::CommitWatch;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created by this node.
    Local,
    /// Received from the network.
    Remote,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Remote => "remote",
        }
    }
}

/// What happened to a remote message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Applied to its seed.
    Applied,
    /// Stored; waits for another message.
    Deferred(Violation),
    /// Rejected with this reason.
    Rejected(RejectReason, String),
    /// Already known (including this node's own messages coming back): nothing was written.
    Duplicate,
    /// About a seed this node pruned (see [`crate::retention`]): refused while its tombstone
    /// lasts, so that sync does not bring the seed back. Nothing is written.
    Pruned,
}

/// A node this node has a verified hello from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its keys and id.
    pub identity: PublicIdentity,
    /// Its name.
    pub name: String,
    /// Its announced addresses.
    pub addresses: Vec<String>,
    /// First hello (Unix ms).
    pub first_seen: Millis,
    /// Latest hello (Unix ms).
    pub last_seen: Millis,
    /// Messages from it with a Lamport counter at or below this are replays.
    pub replay_floor: u64,
}

/// When a peer was first and last heard from, and where from: what sizes the hello interval
/// (see [`Store::peer_sightings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSighting {
    /// The peer's node id.
    pub node_id: String,
    /// First hello (Unix ms).
    pub first_seen: Millis,
    /// Latest hello written (Unix ms).
    pub last_seen: Millis,
    /// The IP address it was admitted from when that counted against
    /// `network.max_peers_per_address` (see [`Admission::address`]); `None` for loopback,
    /// exempt and non-UDP sources and for hellos relayed in sync batches.
    pub admitted_from: Option<String>,
}

/// What the alert rules read from the store at each sample ([`Store::alert_readings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertReadings {
    /// Every counter, by name ([`Store::counters`]).
    pub counters: BTreeMap<String, u64>,
    /// When each known peer was heard from ([`Store::peer_sightings`]).
    pub sightings: Vec<PeerSighting>,
    /// Outbox messages not sent yet ([`Store::outbox_pending`]).
    pub outbox_pending: u64,
    /// When the oldest of them was queued ([`Store::outbox_oldest`]).
    pub outbox_oldest: Option<Millis>,
    /// When the oldest waiting received message arrived ([`Store::oldest_pending_message`]).
    pub oldest_pending_message: Option<Millis>,
}

/// What a hello did to the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUpdate {
    /// A new peer (which may have taken the place of an evicted one).
    New,
    /// A new peer refused: the table is full of peers that are neither idle nor hello-only,
    /// or its source address already has as many peers as allowed.
    Refused,
    /// A known peer with the same keys.
    Refreshed,
    /// A known node id with different keys: refused.
    KeyMismatch,
}

/// The limits a new peer is admitted under (see [`Store::upsert_peer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Most peers in the table.
    pub max_peers: usize,
    /// Peers whose latest hello is older than this (Unix ms) are idle.
    pub idle_before: Millis,
    /// The IP address the hello came from, when it counts against a per-address cap.
    pub address: Option<String>,
    /// Most peers admitted from `address`.
    pub max_per_address: usize,
}

/// The largest Lamport counter the store holds (SQLite integers are signed 64-bit); envelopes
/// with larger counters are refused before they reach the store.
pub const MAX_LAMPORT: u64 = i64::MAX as u64;

/// A Lamport counter as an SQLite integer, refused (not wrapped) beyond [`MAX_LAMPORT`].
fn sql_lamport(lamport: u64) -> Result<i64> {
    i64::try_from(lamport).map_err(|_| {
        Error::new(
            ErrorKind::Validation,
            format!(
                "Lamport counter {lamport} is beyond the largest the store holds ({MAX_LAMPORT})"
            ),
        )
    })
}

/// The peer columns a [`Peer`] is read from (a macro, so that the queries are constants).
macro_rules! peer_columns {
    () => {
        "SELECT node_id, name, addresses, signing_public, kem_public, key_epoch,
    first_seen, last_seen, replay_floor FROM peers"
    };
}
/// The query of one peer's row (every received envelope and hello reads its sender's).
const PEER_BY_ID: &str = concat!(peer_columns!(), " WHERE node_id = ?1");

/// Most peers whose parsed keys the store keeps (more than `network.max_peers` allows).
const PARSED_KEYS: usize = 4096;

fn peer_from_row(keys: &ParsedKeys, r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Peer>> {
    let id: String = r.get(0)?;
    let name: String = r.get(1)?;
    let addresses: String = r.get(2)?;
    let signing: Vec<u8> = r.get(3)?;
    let kem: Vec<u8> = r.get(4)?;
    let epoch: i64 = r.get(5)?;
    let first: i64 = r.get(6)?;
    let last: i64 = r.get(7)?;
    let floor: i64 = r.get(8)?;
    Ok((|| {
        let mut identity = keys.identity(&id, &signing, &kem, epoch as u32)?;
        if identity.epoch > 1 {
            // Rotated keys (checked against the node's rotation chain before they were
            // stored): the id is that of its first keys.
            identity.node_id = NodeId::parse(&id)?;
        } else if identity.node_id.as_str() != id {
            return Err(Error::new(
                ErrorKind::Store,
                format!("corrupt peer {id}: keys belong to {}", identity.node_id),
            ));
        }
        Ok(Peer {
            identity,
            name,
            addresses: from_json(&addresses, "peer addresses")?,
            first_seen: first as u64,
            last_seen: last as u64,
            replay_floor: u64::try_from(floor).map_err(|_| {
                Error::new(
                    ErrorKind::Store,
                    format!("corrupt peer {id}: replay floor {floor}"),
                )
            })?,
        })
    })())
}

/// A message waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    /// Outbox row id.
    pub seq: i64,
    /// The message's id.
    pub message_id: MessageId,
    /// The signed envelope to send, byte for byte.
    pub envelope: Vec<u8>,
    /// Attempts so far.
    pub attempts: u32,
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     ) STRICT;
     CREATE TABLE messages (
        id          TEXT PRIMARY KEY,
        seed_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        sender      TEXT NOT NULL,
        lamport     INTEGER NOT NULL,
        timestamp   INTEGER NOT NULL,
        body        TEXT NOT NULL,
        origin      TEXT NOT NULL CHECK (origin IN ('local', 'remote')),
        received_at INTEGER NOT NULL,
        verdict     TEXT
     ) STRICT;
     CREATE INDEX messages_by_seed ON messages(seed_id);
     CREATE TABLE seeds (
        id         TEXT PRIMARY KEY,
        publisher  TEXT NOT NULL,
        status     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        view       TEXT NOT NULL
     ) STRICT;
     CREATE INDEX seeds_by_status ON seeds(status);
     CREATE INDEX seeds_by_created ON seeds(created_at);
     CREATE TABLE events (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,
        at   INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL
     ) STRICT;
     CREATE TABLE outbox (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id      TEXT NOT NULL REFERENCES messages(id),
        created_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        sent_at         INTEGER
     ) STRICT;
     CREATE INDEX outbox_pending ON outbox(sent_at, next_attempt_at);
     CREATE TABLE seen (
        message_id TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX seen_by_expiry ON seen(expires_at);
     CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE runs (
        seed_id    TEXT PRIMARY KEY,
        pid        INTEGER NOT NULL,
        started_at INTEGER NOT NULL
     ) STRICT;",
    // 2: signed envelopes, the peer table, replay floors
    "ALTER TABLE messages ADD COLUMN envelope BLOB;
     ALTER TABLE seen ADD COLUMN sender TEXT;
     ALTER TABLE seen ADD COLUMN lamport INTEGER;
     CREATE TABLE peers (
        node_id        TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        addresses      TEXT NOT NULL,
        signing_public BLOB NOT NULL,
        kem_public     BLOB NOT NULL,
        key_epoch      INTEGER NOT NULL,
        first_seen     INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL,
        replay_floor   INTEGER NOT NULL DEFAULT 0
     ) STRICT;",
    // 3: each peer's latest verified hello, relayed to late joiners by sync
    "ALTER TABLE peers ADD COLUMN hello BLOB;",
    // 4: the trust policy: accepted membership certificates and revocations (verified before
    // they are stored, verified again when loaded)
    "CREATE TABLE certificates (
        node_id     TEXT PRIMARY KEY,
        body        BLOB NOT NULL,
        received_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE revocations (
        id          TEXT PRIMARY KEY,
        body        BLOB NOT NULL,
        received_at INTEGER NOT NULL
     ) STRICT;",
    // 5: Lamport counters within SQLite's range (older versions stored counters >= 2^63
    // wrapped to negative numbers, and one such counter pinned the clock at 2^64 - 1); peer
    // activity and admission source for the capped peer table
    "UPDATE messages SET lamport = 9223372036854775807 WHERE lamport < 0;
     UPDATE seen SET lamport = NULL WHERE lamport < 0;
     UPDATE peers SET replay_floor = 0 WHERE replay_floor < 0;
     UPDATE meta SET value = CAST((SELECT COALESCE(MAX(lamport), 0) FROM messages
                                   WHERE lamport < 9223372036854775807) AS TEXT)
      WHERE key = 'lamport' AND (length(value) > 19 OR CAST(value AS INTEGER) >= 9223372036854775807);
     ALTER TABLE peers ADD COLUMN last_active INTEGER;
     ALTER TABLE peers ADD COLUMN admitted_from TEXT;
     CREATE INDEX peers_by_source ON peers(admitted_from);",
    // 6: retention: when each seed ended (see `retention::ended_at`), the seed each event is
    // about (so a pruned seed's events go with it), tombstones of pruned seeds, and the outbox
    // by message (pruning deletes a seed's outbox rows, and the foreign key checks them)
    "ALTER TABLE seeds ADD COLUMN ended_at INTEGER;
     UPDATE seeds SET ended_at = COALESCE(CASE status
            WHEN 'settled' THEN json_extract(view, '$.settlement.settled_at')
            WHEN 'cancelled' THEN json_extract(view, '$.cancelled_at')
            WHEN 'failed' THEN json_extract(view, '$.failed_at')
            WHEN 'expired' THEN json_extract(view, '$.award.round_started_at') END,
          json_extract(view, '$.updated_at'), updated_at)
      WHERE status IN ('settled', 'cancelled', 'failed', 'expired');
     CREATE INDEX seeds_by_end ON seeds(ended_at) WHERE ended_at IS NOT NULL;
     ALTER TABLE events ADD COLUMN seed_id TEXT;
     UPDATE events SET seed_id = json_extract(body, '$.seed_id');
     UPDATE events SET seed_id = (SELECT m.seed_id FROM messages m
                                  WHERE m.id = json_extract(events.body, '$.message_id'))
      WHERE seed_id IS NULL
        AND kind IN ('message_accepted', 'message_deferred', 'message_rejected');
     CREATE INDEX events_by_seed ON events(seed_id) WHERE seed_id IS NOT NULL;
     CREATE TABLE pruned_seeds (
        seed_id   TEXT PRIMARY KEY,
        ended_at  INTEGER NOT NULL,
        pruned_at INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX pruned_seeds_by_time ON pruned_seeds(pruned_at);
     CREATE INDEX outbox_by_message ON outbox(message_id);",
    // 7: alerting: the alerts firing now, and the webhook deliveries waiting to be sent
    "CREATE TABLE alerts (
        name      TEXT PRIMARY KEY,
        since     INTEGER NOT NULL,
        value     INTEGER NOT NULL,
        threshold INTEGER NOT NULL,
        detail    TEXT NOT NULL
     ) STRICT;
     CREATE TABLE webhook_queue (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        url             TEXT NOT NULL,
        body            BLOB NOT NULL,
        created_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error      TEXT
     ) STRICT;
     CREATE INDEX webhook_queue_due ON webhook_queue(next_attempt_at);
     CREATE INDEX webhook_queue_by_url ON webhook_queue(url, seq);",
    // 8: key rotation statements (verified before they are stored, verified again when loaded)
    "CREATE TABLE rotations (
        node_id     TEXT NOT NULL,
        epoch       INTEGER NOT NULL,
        body        BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, epoch)
     ) STRICT;",
    // 9: reputation (issue 17): per seed and runner, what the seed's state says about the
    // runner; filled from the stored seed states when it is created (see `migrate`)
    "CREATE TABLE reputation (
        seed_id   TEXT NOT NULL,
        node_id   TEXT NOT NULL,
        agreed    INTEGER NOT NULL,
        dissented INTEGER NOT NULL,
        missed    INTEGER NOT NULL,
        accepted  INTEGER NOT NULL,
        rejected  INTEGER NOT NULL,
        PRIMARY KEY (seed_id, node_id)
     ) STRICT;
     CREATE INDEX reputation_by_node ON reputation(node_id);",
    // 10: the messages of one author, for the trust queries that run after hellos (is a
    // revocation's or a rotation's node the author of a stored message?) without reading
    // every stored envelope
    "CREATE INDEX messages_by_sender ON messages(sender);",
    // 11: seeds by their last change, for the sync digest, which lists the most recently
    // changed seeds: without it every stored message was sorted for each digest a peer sent
    "CREATE INDEX seeds_by_update ON seeds(updated_at DESC, id);",
    // 12: when each seed's publisher next owes a decision (`store/decisions.rs`), so the
    // decision timer reads the due seeds alone; the node's own seeds that may owe one are
    // marked due at once, and the timer's first read gives each its time
    // (`Store::due_decisions`)
    "ALTER TABLE seeds ADD COLUMN decide_at INTEGER;
     UPDATE seeds SET decide_at = 0
      WHERE status IN ('open', 'claimed', 'completed')
        AND publisher = (SELECT value FROM meta WHERE key = 'node_id');
     CREATE INDEX seeds_by_decision ON seeds(publisher, decide_at) WHERE decide_at IS NOT NULL;",
    // 13: the received messages that wait for another, for the alert sample's `sync_lag`
    // (every `alerts.interval_ms`): without it every sample read every stored message
    "CREATE INDEX messages_pending ON messages(received_at)
     WHERE json_extract(verdict, '$.verdict') = 'pending';",
    // 14: each seed's share of the state digest (`state::view_hash`), written with its state,
    // so that a digest (every overview: the monitor, `/metrics`, `crabnet status`) reads one
    // index entry a seed instead of parsing every state (a column after the state in the row
    // would still be reached through the state's overflow pages); filled from the stored
    // states (see `migrate`). A later migration that rewrites `seeds.view` must write
    // `view_hash` in the same UPDATE: the triggers would take it for an older version's write.
    // The triggers catch a process of an older version that had the database open before the
    // migration (a newer one refuses to start on it afterwards): its writes change a seed's
    // state without its share or its decision time; the share is then dropped (a digest hashes
    // the state) and the seed is put on its publisher's timer at once (the node reads it and
    // finds its real time).
    "ALTER TABLE seeds ADD COLUMN view_hash BLOB;
     CREATE INDEX seeds_digest ON seeds(id, view_hash);
     CREATE TRIGGER seeds_written_by_an_older_version AFTER UPDATE OF view ON seeds
       WHEN NEW.view IS NOT OLD.view AND NEW.view_hash IS OLD.view_hash
     BEGIN
       UPDATE seeds SET view_hash = NULL,
           decide_at = CASE WHEN NEW.status IN ('open', 'claimed', 'completed') THEN 0 END
         WHERE id = NEW.id;
     END;
     CREATE TRIGGER seeds_inserted_by_an_older_version AFTER INSERT ON seeds
       WHEN NEW.view_hash IS NULL
     BEGIN
       UPDATE seeds SET
           decide_at = CASE WHEN NEW.status IN ('open', 'claimed', 'completed') THEN 0 END
         WHERE id = NEW.id;
     END;",
];

/// The nodes (other than `?1`) with stored rotation statements that are neither in the peer
/// table nor the author of a stored message.
pub(crate) const ROTATIONS_OF_STRANGERS: &str = "SELECT DISTINCT node_id FROM rotations
    WHERE node_id != ?1
      AND NOT EXISTS (SELECT 1 FROM peers WHERE peers.node_id = rotations.node_id)
      AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.sender = rotations.node_id)";

/// The migration that creates the reputation table (1-based schema version).
const REPUTATION_MIGRATION: usize = 9;

/// The migration that adds each seed's share of the state digest (1-based schema version).
const VIEW_HASH_MIGRATION: usize = 14;

/// [`Store::sync_digest`]'s statement: the `?1` most recently changed seeds with stored
/// envelopes (`seeds_by_update`, each checked through `messages_by_seed`), then their
/// messages, grouped by seed in the same order.
const SYNC_DIGEST_SQL: &str = "SELECT s.id, m.id FROM
      (SELECT id, updated_at FROM seeds
       WHERE EXISTS (SELECT 1 FROM messages
                     WHERE messages.seed_id = seeds.id AND messages.envelope IS NOT NULL)
       ORDER BY updated_at DESC, id LIMIT ?1) s
    JOIN messages m ON m.seed_id = s.id
    WHERE m.envelope IS NOT NULL
    ORDER BY s.updated_at DESC, s.id";

/// [`Store::events_after`]'s statement (a `LIMIT ?`: see `Store::open` on recompiling).
const EVENTS_AFTER_SQL: &str =
    "SELECT seq, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// [`Store::oldest_pending_message`]'s statement: its `WHERE` is the partial index
/// `messages_pending`'s, so that SQLite reads that index.
const OLDEST_PENDING_SQL: &str = "SELECT MIN(received_at) FROM messages
    WHERE json_extract(verdict, '$.verdict') = 'pending'";

/// [`Store::digest`]'s statement: every seed's share of the digest, in seed id order, read
/// from the index `seeds_digest` alone.
const DIGEST_SQL: &str = "SELECT id, view_hash FROM seeds ORDER BY id";

/// The current schema version (SQLite `user_version`).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A connection to a node's database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    config: StoreConfig,
    /// Peers' keys, parsed once (reading a peer is on the path of every received frame).
    keys: ParsedKeys,
    /// The open batch ([`Store::begin_batch`]) and how its operations are kept apart.
    batch: Option<Ops>,
    /// An operation of the open [`Ops::Shared`] batch failed after it wrote: the batch can
    /// only be rolled back.
    spoiled: std::cell::Cell<bool>,
    /// The highest Lamport counter this connection stamped, received or handed out
    /// ([`Store::lamport_counter`]); never below the stored clock once the store is open.
    clock: Arc<AtomicU64>,
    /// The name of the bell this store rings after each commit ([`CommitWatch`]), when it has
    /// one.
    bell: Option<String>,
    /// Commits that wrote to the log since the store opened (each rings the bell).
    #[cfg(test)]
    commits: Arc<AtomicU64>,
}

/// How the operations of a batch ([`Store::begin_batch`]) are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ops {
    /// Each in a savepoint of its own: one that fails rolls back its own writes only, and the
    /// batch commits the others. A savepoint journals the image of every page its operation
    /// changes (20 or more for a received seed), which SQLite moves to a temporary file past
    /// 64 KiB.
    Savepoint,
    /// All in the batch's transaction, with no savepoint (so no journal of their pages; see
    /// "Statement journals" above `insert_events` for those of single statements): one that
    /// fails after it wrote *spoils* the batch ([`Store::batch_failed`]; every later operation
    /// fails at once), and the batch can only be rolled back. For a caller that can do the
    /// batch's work again without it (each operation on its own transaction). The operations
    /// whose rules may refuse them after they wrote (the node's own messages:
    /// [`Store::commit_local`], [`Store::commit_signed`]) still take a savepoint of their own,
    /// so that a refusal, which is not a fault, never spoils a batch.
    Shared,
}

/// The transaction of one store operation: its own (`BEGIN`), a savepoint inside the open
/// batch ([`Store::begin_batch`]), or a share of the batch's transaction ([`Ops::Shared`]),
/// committed with the rest of the batch.
enum Tx<'a> {
    Own(Transaction<'a>),
    InBatch(rusqlite::Savepoint<'a>),
    Shared(SharedOp<'a>),
}

/// One operation of an [`Ops::Shared`] batch: dropped without its commit after it changed a
/// row, it spoils the batch (its writes cannot be taken back alone).
struct SharedOp<'a> {
    conn: &'a Connection,
    spoiled: &'a std::cell::Cell<bool>,
    /// The connection's count of changed rows when the operation began.
    changes: u64,
    committed: bool,
}

impl Drop for SharedOp<'_> {
    fn drop(&mut self) {
        // A statement that fails with a journal of its own undoes its changes and does not
        // count them (but for the changes of triggers it ran, counted as each trigger
        // completes: then a batch is spoiled for nothing, which costs a second pass and loses
        // nothing); an `OR FAIL` statement keeps and counts the rows it wrote, which spoils the
        // batch. (An error other than a constraint's, raised in a trigger after its row was
        // written, keeps the row uncounted; every received operation wrote rows before it
        // reaches the `seeds` write, so that case spoils the batch too.)
        if !self.committed && self.conn.total_changes() != self.changes {
            self.spoiled.set(true);
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Tx::Own(tx) => tx,
            Tx::InBatch(sp) => sp,
            Tx::Shared(op) => op.conn,
        }
    }
}

impl Tx<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            Tx::Own(tx) => tx.commit(),
            Tx::InBatch(sp) => sp.commit(),
            Tx::Shared(mut op) => {
                op.committed = true;
                Ok(())
            }
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode: {e}")))
}

fn batch_spoiled() -> Error {
    Error::new(
        ErrorKind::Store,
        "an operation of the batch failed after it wrote: the batch is rolled back",
    )
}

fn batch_lost() -> Error {
    Error::new(
        ErrorKind::Store,
        "the database rolled the batch transaction back after an error",
    )
}

/// The seeds whose digest share is missing (all of them in the migration that adds the
/// column; at a node's start, those an older version wrote since) or corrupt, found through
/// the covering index `seeds_digest` (not the seeds' rows).
const MISSING_SHARES_SQL: &str = "SELECT id FROM seeds INDEXED BY seeds_digest
    WHERE view_hash IS NULL OR length(view_hash) != 32";

/// A seed's share of the digest from its stored text: the state rewritten as this version
/// writes it, with its hash, so that a share is always the hash of the stored text (a later
/// write of the same state then changes neither, and the triggers tell an older version's
/// writes by a changed state under an unchanged share). A state that cannot be read keeps its
/// text and gets the hash of that (with a warning): a digest covers it as it is.
fn share_of(id: &str, text: &str) -> Result<(Option<String>, [u8; 32])> {
    match from_json::<SeedView>(text, "seed state") {
        Ok(view) => {
            let json = to_json(&view)?;
            let hash = state::view_hash(json.as_bytes());
            Ok((Some(json), hash))
        }
        Err(e) => {
            tracing::warn!(seed = %id, "digest share of an unreadable state: {e}");
            Ok((None, state::view_hash(text.as_bytes())))
        }
    }
}

/// Fills the missing or corrupt digest shares ([`MISSING_SHARES_SQL`], [`share_of`]); returns
/// how many.
fn fill_view_hashes(conn: &Connection) -> Result<usize> {
    let missing: Vec<String> = conn
        .prepare(MISSING_SHARES_SQL)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut filled = 0;
    for id in missing {
        let text: String =
            conn.query_row("SELECT view FROM seeds WHERE id = ?1", [&id], |r| r.get(0))?;
        let (json, hash) = share_of(&id, &text)?;
        filled += conn.execute(
            "UPDATE seeds SET view = COALESCE(?2, view), view_hash = ?3 WHERE id = ?1",
            params![id, json, &hash[..]],
        )?;
    }
    Ok(filled)
}

/// What each migration from the fourth on added (its schema version, the SQL that drops it),
/// for tests that need a store as an older version left it ([`downgrade`]). Data a migration
/// rewrote stays as it is.
#[cfg(test)]
const UNDO: &[(usize, &str)] = &[
    (
        14,
        "DROP INDEX seeds_digest; DROP TRIGGER seeds_written_by_an_older_version;
         DROP TRIGGER seeds_inserted_by_an_older_version; ALTER TABLE seeds DROP COLUMN view_hash;",
    ),
    (13, "DROP INDEX messages_pending;"),
    (
        12,
        "DROP INDEX seeds_by_decision; ALTER TABLE seeds DROP COLUMN decide_at;",
    ),
    (11, "DROP INDEX seeds_by_update;"),
    (10, "DROP INDEX messages_by_sender;"),
    (9, "DROP INDEX reputation_by_node; DROP TABLE reputation;"),
    (8, "DROP TABLE rotations;"),
    (7, "DROP TABLE alerts; DROP TABLE webhook_queue;"),
    (
        6,
        "DROP INDEX seeds_by_end; ALTER TABLE seeds DROP COLUMN ended_at;
         DROP INDEX events_by_seed; ALTER TABLE events DROP COLUMN seed_id;
         DROP TABLE pruned_seeds; DROP INDEX outbox_by_message;",
    ),
    (
        5,
        "DROP INDEX peers_by_source; ALTER TABLE peers DROP COLUMN admitted_from;
         ALTER TABLE peers DROP COLUMN last_active;",
    ),
    (4, "DROP TABLE certificates; DROP TABLE revocations;"),
];

/// Turns the schema of the database behind `conn` back to version `to` (at least 3), as an
/// older version left it ([`UNDO`]).
#[cfg(test)]
pub(crate) fn downgrade(conn: &Connection, to: usize) {
    for (version, sql) in UNDO.iter().filter(|(v, _)| *v > to) {
        conn.execute_batch(sql)
            .unwrap_or_else(|e| panic!("undo of migration {version}: {e}"));
    }
    conn.pragma_update(None, "user_version", to as i64).unwrap();
}

/// A time or count as an SQLite integer (signed): values past `i64::MAX` are stored as it.
fn to_sql(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

fn from_json<T: for<'de> Deserialize<'de>>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::new(ErrorKind::Store, format!("corrupt {what} in database: {e}")))
}

/// SQLite's own checkpoint threshold (`SQLITE_DEFAULT_WAL_AUTOCHECKPOINT`, pages in the log):
/// a WAL hook replaces its automatic checkpoint, so [`ring_after_commits`] runs it.
const WAL_AUTOCHECKPOINT_PAGES: i32 = 1000;

/// Makes `conn` ring its bell ([`CommitWatch`]) after each commit, once the commit is visible
/// to other connections, and returns the bell's name. The WAL hook this sets replaces SQLite's
/// automatic checkpoint, which it runs the same way (passive, at the same size, failures left
/// to the next commit). Without a bell (its directory cannot be written) nothing is rung and
/// other processes see this store's commits at their next full look.
fn ring_after_commits(
    conn: &mut Connection,
    path: &Path,
    commits: Arc<AtomicU64>,
) -> Result<Option<String>> {
    let bell = match Bell::new(path) {
        Ok(bell) => Some(bell),
        Err(e) => {
            tracing::warn!(
                "no commit bell for {}: a node listening on it sees this process's commits \
                 only at its next full look (up to 10 s): {e}",
                path.display()
            );
            None
        }
    };
    let name = bell.as_ref().map(|b| b.name().to_owned());
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
        commits.fetch_add(1, Ordering::Relaxed);
        if let Some(bell) = &bell {
            bell.ring();
        }
        if pages >= WAL_AUTOCHECKPOINT_PAGES {
            let _ = wal.checkpoint();
        }
        Ok(())
    }))?;
    Ok(name)
}

/// Compiled statements kept per connection (rusqlite keeps 16 by default: fewer than one
/// received message runs).
const STATEMENT_CACHE: usize = 128;

impl Store {
    /// The steps of SQLite's plan for `sql` run with `params` (`EXPLAIN QUERY PLAN`), for
    /// tests that a query reads through an index.
    #[cfg(test)]
    pub(crate) fn query_plan(&self, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        self.conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Asserts that SQLite runs `sql` by searching `index`, scanning no table or index: its
    /// cost does not grow with the rows it does not return.
    #[cfg(test)]
    pub(crate) fn assert_searches(&self, sql: &str, params: impl rusqlite::Params, index: &str) {
        let plan = self.query_plan(sql, params);
        assert!(
            plan.iter().any(|step| step.contains(index))
                && !plan.iter().any(|step| step.starts_with("SCAN")),
            "{sql}\n{plan:#?}"
        );
    }

    /// The name of the bell this store rings after each commit: a [`CommitWatch`] of this
    /// store leaves it out.
    pub(crate) fn bell(&self) -> Option<&str> {
        self.bell.as_deref()
    }

    /// How many commits of this store wrote to the database since it opened.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Store> {
        let mut conn = Connection::open(path).map_err(|e| {
            Error::with_source(
                ErrorKind::Store,
                format!("cannot open database {}: {e}", path.display()),
                e,
            )
        })?;
        let busy_timeout = Duration::from_millis(config.busy_timeout_ms);
        conn.busy_handler(Some(busy::handler(busy_timeout)))?;
        // The receive and publish paths run the same few dozen statements per message: each is
        // compiled once (`prepare_cached`), not parsed again every time.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // And kept compiled: without the query planner stability guarantee SQLite compiles a
        // statement again whenever a parameter its plan looked at is bound anew (any
        // `LIMIT ?`, for one: `events_after`, run after every store call), which was a tenth
        // of a receiving node's CPU. The plans here do not depend on parameter values.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::new(
                ErrorKind::Store,
                format!("database {} cannot use WAL mode ({mode})", path.display()),
            ));
        }
        conn.execute_batch(match config.sync {
            SyncMode::Full => "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
            SyncMode::Normal => "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
        })?;
        let commits = Arc::new(AtomicU64::new(0));
        let bell = ring_after_commits(&mut conn, path, commits.clone())?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            config: config.clone(),
            keys: ParsedKeys::new(PARSED_KEYS),
            batch: None,
            spoiled: std::cell::Cell::new(false),
            clock: Arc::default(),
            bell,
            #[cfg(test)]
            commits,
        };
        store.migrate()?;
        let stored = store.lamport_clock()?;
        store.clock.fetch_max(stored, Ordering::SeqCst);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a transaction for one operation: its own, or its part of the open batch (see
    /// [`Ops`]).
    fn tx(&mut self, behavior: TransactionBehavior) -> Result<Tx<'_>> {
        self.tx_of(behavior, false)
    }

    /// [`Store::tx`] for an operation whose rules may refuse it after it wrote: in a batch,
    /// always in a savepoint of its own ([`Ops::Shared`]).
    fn tx_apart(&mut self, behavior: TransactionBehavior) -> Result<Tx<'_>> {
        self.tx_of(behavior, true)
    }

    fn tx_of(&mut self, behavior: TransactionBehavior, apart: bool) -> Result<Tx<'_>> {
        let Some(ops) = self.batch else {
            roll_back_abandoned(&self.conn)?;
            return Ok(Tx::Own(self.conn.transaction_with_behavior(behavior)?));
        };
        if self.conn.is_autocommit() {
            // SQLite rolls a transaction back by itself after some errors (a full disk, an
            // I/O error): nothing more is written in this batch.
            return Err(batch_lost());
        }
        match ops {
            Ops::Shared if self.spoiled.get() => Err(batch_spoiled()),
            Ops::Shared if !apart => Ok(Tx::Shared(SharedOp {
                conn: &self.conn,
                spoiled: &self.spoiled,
                changes: self.conn.total_changes(),
                committed: false,
            })),
            Ops::Shared | Ops::Savepoint => Ok(Tx::InBatch(self.conn.savepoint()?)),
        }
    }

    /// The Lamport counter this store keeps in memory beside the stored clock, for a node
    /// that stamps a message before its transaction ([`LamportCounter::next`]): a counter
    /// taken from it is above every counter this store stamped, received or handed out so
    /// far, and no local commit of this store stamps it again.
    pub(crate) fn lamport_counter(&self) -> LamportCounter {
        LamportCounter(self.clock.clone())
    }

    /// Opens a batch: until [`Store::end_batch`], every operation on this store is part of
    /// one `BEGIN IMMEDIATE` transaction (kept apart as `ops` says), committed once, and so
    /// synced once under `store.sync = full`. Reads see the batch's writes.
    pub(crate) fn begin_batch(&mut self, ops: Ops) -> Result<()> {
        if self.batch.is_some() {
            return Err(Error::internal("a store batch is already open"));
        }
        roll_back_abandoned(&self.conn)?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.batch = Some(ops);
        self.spoiled.set(false);
        Ok(())
    }

    /// Whether a batch is open.
    pub(crate) fn in_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Whether an operation of the open [`Ops::Shared`] batch failed after it wrote: the
    /// batch can only be rolled back ([`Store::end_batch`] does, and says so).
    #[cfg(test)]
    pub(crate) fn batch_spoiled(&self) -> bool {
        self.spoiled.get()
    }

    /// Whether the open batch is lost: spoiled (see [`Ops::Shared`]), or rolled back by
    /// SQLite itself after an error (a full disk, an I/O error). Nothing more is written in
    /// it.
    pub(crate) fn batch_failed(&self) -> bool {
        self.batch.is_some() && (self.spoiled.get() || self.conn.is_autocommit())
    }

    /// Closes the open batch: commits it (`commit`), or rolls it back. A failed commit rolls
    /// back too, as does a spoiled batch (see [`Ops::Shared`]; an error if `commit`):
    /// then nothing of the batch was written.
    pub(crate) fn end_batch(&mut self, commit: bool) -> Result<()> {
        if self.batch.take().is_none() {
            return Err(Error::internal("no store batch is open"));
        }
        let spoiled = self.spoiled.replace(false);
        if self.conn.is_autocommit() {
            return if commit { Err(batch_lost()) } else { Ok(()) };
        }
        if spoiled {
            self.conn.execute_batch("ROLLBACK")?;
            return if commit { Err(batch_spoiled()) } else { Ok(()) };
        }
        if !commit {
            self.conn.execute_batch("ROLLBACK")?;
            return Ok(());
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<()> {
        let tx = immediate(&mut self.conn, self.batch)?;
        let version = tx
            .prepare_cached("PRAGMA user_version")?
            .query_row([], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            return Err(Error::new(
                ErrorKind::Store,
                format!(
                    "database {} has schema version {version}, newer than this build supports ({}); upgrade crabnet",
                    self.path.display(),
                    MIGRATIONS.len()
                ),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)?;
            match i + 1 {
                REPUTATION_MIGRATION => reputation::backfill(&tx)?,
                VIEW_HASH_MIGRATION => {
                    fill_view_hashes(&tx)?;
                }
                _ => {}
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows this store's connection inserted, updated or deleted since it opened (SQLite's
    /// `total_changes`): unchanged, this connection wrote nothing meanwhile.
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }

    /// Reads a metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Returns the node id stored in the database, storing `candidate` if there is none yet.
    pub fn node_id_or_init(&mut self, candidate: &NodeId) -> Result<NodeId> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'node_id'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let id = match existing {
            Some(text) => NodeId::parse(&text).map_err(|e| {
                Error::new(
                    ErrorKind::Store,
                    format!("corrupt node id in database: {e}"),
                )
            })?,
            None => {
                tx.prepare_cached("INSERT INTO meta(key, value) VALUES ('node_id', ?1)")?
                    .execute([candidate.as_str()])?;
                candidate.clone()
            }
        };
        tx.commit()?;
        Ok(id)
    }

    /// Runs a local operation on one seed as one transaction: `build` sees the seed's current
    /// state (`None` for a new seed) and returns the message body; the message is stamped with
    /// this node's next Lamport counter, applied through the state machine, and stored with its
    /// events and an outbox row. A body the state machine does not apply is an error and
    /// nothing is written.
    pub fn commit_local(
        &mut self,
        me: &NodeId,
        seed_id: &SeedId,
        now: Millis,
        build: impl FnOnce(Option<&SeedView>) -> Result<Body>,
        seal: impl FnOnce(&Message, &SeedView) -> Result<Vec<u8>>,
    ) -> Result<(Message, SeedView, Vec<Event>)> {
        let clock = self.clock.clone();
        let tx = self.tx_apart(TransactionBehavior::Immediate)?;
        let current = load_view(&tx, seed_id)?;
        let body = build(current.as_ref())?;
        if body.seed_id() != seed_id {
            return Err(Error::internal(
                "local operation built a body for another seed",
            ));
        }
        let lamport = bump_lamport(&tx, &clock, None)?;
        let message = Message {
            id: MessageId::from_bytes(crate::clock::random_bytes()),
            sender: me.clone(),
            lamport,
            timestamp: now,
            body,
        };
        let (view, events) = insert_local(&tx, &message, now, seal)?;
        tx.commit()?;
        Ok((message, view, events))
    }

    /// Commits a local message that was stamped and signed before its transaction (a new
    /// seed, whose body does not depend on any stored state; its Lamport counter comes from
    /// [`Store::lamport_counter`]), with its `envelope`, events and outbox row, as
    /// [`Store::commit_local`] does. The stored clock moves up to its counter. A message the
    /// state machine does not apply (or one whose id is taken) is an error and nothing is
    /// written.
    pub(crate) fn commit_signed(
        &mut self,
        message: &Message,
        envelope: &[u8],
        now: Millis,
    ) -> Result<(SeedView, Vec<Event>)> {
        let clock = self.clock.clone();
        let tx = self.tx_apart(TransactionBehavior::Immediate)?;
        bump_lamport(&tx, &clock, Some(message.lamport))?;
        let (view, events) = insert_local(&tx, message, now, |_, _| Ok(envelope.to_vec()))?;
        tx.commit()?;
        Ok((view, events))
    }

    /// Applies a message received from the network, idempotently: a message id already seen
    /// changes nothing and writes nothing ([`RemoteOutcome::Duplicate`], for the caller to
    /// count).
    pub fn apply_remote(
        &mut self,
        message: &Message,
        envelope: &[u8],
        now: Millis,
    ) -> Result<(RemoteOutcome, Vec<Event>)> {
        let until = self.seen_until(now);
        let clock = self.clock.clone();
        let tx = self.tx(TransactionBehavior::Immediate)?;
        if prune::is_pruned(&tx, message.seed_id())? {
            // Nothing is written: the caller counts it (`retention.refused`).
            return Ok((RemoteOutcome::Pruned, Vec::new()));
        }
        let id = message.id.as_str();
        let known: bool = tx
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM seen WHERE message_id = ?1)
                 OR EXISTS(SELECT 1 FROM messages WHERE id = ?1)",
            )?
            .query_row([id], |r| r.get(0))?;
        if known {
            // A copy (gossip, sync): nothing is written (the transaction is rolled back); the
            // caller counts it in memory, so that a copy costs no commit.
            return Ok((RemoteOutcome::Duplicate, Vec::new()));
        }
        let mut events = Vec::new();
        insert_seen(
            &tx,
            &message.id,
            &message.sender,
            message.lamport,
            now,
            until,
        )?;
        bump_lamport(&tx, &clock, Some(message.lamport))?;
        let outcome = match message.check_well_formed() {
            Err(detail) => {
                bump_counter(&tx, "rejected.malformed")?;
                events.push(rejection(
                    message,
                    RejectReason::Malformed,
                    None,
                    detail.clone(),
                ));
                RemoteOutcome::Rejected(RejectReason::Malformed, detail)
            }
            Ok(()) => {
                let (_, verdict) = refold(&tx, message, Origin::Remote, now, &mut events)?;
                insert_message(&tx, message, Origin::Remote, envelope, &verdict, now)?;
                if matches!(verdict, Verdict::Applied | Verdict::Pending { .. }) {
                    // An author of stored messages is not evicted for a newcomer. The
                    // eviction asks only whether a peer authored any: set once, so that
                    // its later messages do not write the peer's row again.
                    tx.prepare_cached(
                        "UPDATE peers SET last_active = ?2
                         WHERE node_id = ?1 AND last_active IS NULL",
                    )?
                    .execute(params![message.sender.as_str(), now as i64])?;
                }
                match verdict {
                    Verdict::Applied => {
                        bump_counter(&tx, "messages.accepted")?;
                        RemoteOutcome::Applied
                    }
                    Verdict::Pending { reason } => {
                        bump_counter(&tx, "messages.deferred")?;
                        RemoteOutcome::Deferred(reason)
                    }
                    Verdict::Rejected { reason } => {
                        bump_counter(&tx, "rejected.rule")?;
                        RemoteOutcome::Rejected(RejectReason::Rule, reason.to_string())
                    }
                }
            }
        };
        let events = insert_events(&tx, now, events, Some(message.seed_id()))?;
        tx.commit()?;
        Ok((outcome, events))
    }

    /// Records an event that is not tied to a message (node lifecycle, task start, send
    /// failures, rejections at the trust boundary; their counters come through
    /// [`Store::add_counters`]).
    pub fn record_event(&mut self, now: Millis, kind: EventKind) -> Result<Event> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        let mut events = insert_events(&tx, now, vec![kind], None)?;
        tx.commit()?;
        Ok(events.remove(0))
    }

    /// One seed's state.
    pub fn seed(&self, id: &SeedId) -> Result<Option<SeedView>> {
        load_view(&self.conn, id)
    }

    /// Seeds, newest first, optionally only those with `status`, at most `limit`.
    pub fn seeds(&self, status: Option<SeedStatus>, limit: usize) -> Result<Vec<SeedView>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT view FROM seeds WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at DESC, id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![
                status.map(|s| s.as_str()),
                limit.min(i64::MAX as usize) as i64
            ],
            |r| r.get::<_, String>(0),
        )?;
        rows.map(|r| from_json(&r?, "seed view")).collect()
    }

    /// Number of seeds per status (every status present, zero if none).
    pub fn status_counts(&self) -> Result<BTreeMap<SeedStatus, u64>> {
        let mut counts: BTreeMap<SeedStatus, u64> =
            SeedStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM seeds GROUP BY status")?;
        let rows = stmt.query_map([], |r| <(String, i64)>::try_from(r))?;
        for row in rows {
            let (status, n) = row?;
            let status = SeedStatus::parse(&status).ok_or_else(|| {
                Error::new(ErrorKind::Store, format!("corrupt seed status {status:?}"))
            })?;
            counts.insert(status, n as u64);
        }
        Ok(counts)
    }

    /// All counters (accepted, deferred, rejected by reason, sent...).
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, value FROM counters ORDER BY name")?;
        let rows = stmt.query_map([], |r| <(String, i64)>::try_from(r))?;
        rows.map(|r| r.map(|(k, v)| (k, v as u64)).map_err(Error::from))
            .collect()
    }

    /// Events with sequence number above `after`, oldest first, at most `limit`. Any `u64` is
    /// a valid cursor: one at or past the last event (SQLite's sequence numbers end at
    /// `i64::MAX`) lists nothing.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(EVENTS_AFTER_SQL)?;
        let rows = stmt.query_map(params![after, limit], |r| <(i64, i64, String)>::try_from(r))?;
        rows.map(|r| {
            let (seq, at, body) = r?;
            let seq = u64::try_from(seq)
                .map_err(|_| Error::new(ErrorKind::Store, format!("corrupt event seq {seq}")))?;
            Ok(Event {
                seq,
                at: at as u64,
                kind: from_json(&body, "event")?,
            })
        })
        .collect()
    }

    /// The one non-negative number `sql` answers (a count, a highest sequence number); `sql`
    /// is compiled once and kept in the statement cache.
    fn number(&self, sql: &str) -> Result<u64> {
        let n: i64 = self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// The highest event sequence number (0 when there are none).
    pub fn last_event_seq(&self) -> Result<u64> {
        self.number("SELECT COALESCE(MAX(seq), 0) FROM events")
    }

    /// The highest event sequence number this database ever gave (0 when none): events are
    /// numbered without reuse, so this holds after retention removed them.
    pub fn last_event_seq_issued(&self) -> Result<u64> {
        self.number("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)")
    }

    /// The sequence number of the last event written to the NDJSON log.
    pub fn log_cursor(&self) -> Result<u64> {
        Ok(self
            .meta("ndjson_seq")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Stores the NDJSON log cursor.
    pub fn set_log_cursor(&mut self, seq: u64) -> Result<()> {
        self.add_counters_with_cursor(0, &BTreeMap::new(), Vec::new(), Some(seq))
            .map(|_| ())
    }

    /// Outbox messages due for sending at `now`, oldest first.
    pub fn outbox_due(&self, now: Millis, limit: usize) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT o.seq, o.attempts, m.id, m.envelope FROM outbox o
             JOIN messages m ON m.id = o.message_id
             WHERE o.sent_at IS NULL AND o.next_attempt_at <= ?1 AND m.envelope IS NOT NULL
             ORDER BY o.seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now as i64, limit as i64], |r| {
            <(i64, i64, String, Vec<u8>)>::try_from(r)
        })?;
        rows.map(|r| {
            let (seq, attempts, id, envelope) = r?;
            Ok(OutboxItem {
                seq,
                attempts: attempts as u32,
                message_id: MessageId::parse(&id)?,
                envelope,
            })
        })
        .collect()
    }

    /// When the earliest unsent outbox message is due (Unix ms), if there is one.
    pub fn outbox_next_attempt(&self) -> Result<Option<Millis>> {
        self.earliest("SELECT MIN(next_attempt_at) FROM outbox WHERE sent_at IS NULL")
    }

    /// The earliest expiry of a seen message id (Unix ms), if any.
    pub fn next_seen_expiry(&self) -> Result<Option<Millis>> {
        self.earliest("SELECT MIN(expires_at) FROM seen")
    }

    /// The time (Unix ms; a negative one, which no stored time is, as 0) that `sql`, a query of
    /// one nullable number (its statement cached), returns, if any.
    fn earliest(&self, sql: &str) -> Result<Option<Millis>> {
        let at: Option<i64> = self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
        Ok(at.map(|t| t.max(0) as Millis))
    }

    /// Frees the pages SQLite caches for this connection (up to 2 MB) that no statement
    /// holds: a node that worked and went quiet releases them with its heap (`crate::heap`).
    /// The next reads take their pages from the operating system's file cache again.
    pub(crate) fn release_cache(&self) -> Result<()> {
        Ok(self.conn.release_memory()?)
    }

    /// The bytes of SQLite's page cache this connection holds.
    #[cfg(test)]
    pub(crate) fn cache_bytes(&self) -> i64 {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is this open connection's; sqlite3_db_status only reads its
        // counters into the two integers.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                self.conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut highest,
                0,
            )
        };
        assert_eq!(rc, 0, "sqlite3_db_status");
        i64::from(current)
    }

    /// SQLite's `data_version`: changes when another connection (another process, another
    /// handle) commits to the database; commits through this one leave it as it is. Reads no
    /// table, so it is cheap enough to poll.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// A value that changes whenever the database may have changed: when another connection
    /// committed ([`Store::data_version`]) or this one changed a row (SQLite's
    /// `total_changes`). Cheap: reads no table. Equal values mean nothing changed in between.
    pub fn generation(&self) -> Result<(i64, u64)> {
        Ok((self.data_version()?, self.conn.total_changes()))
    }

    /// Number of outbox messages not sent yet.
    pub fn outbox_pending(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Records what became of outbox messages handed to the transport, all in one transaction
    /// (one fsync under `store.sync = full`, however many there are): those in `sent` are
    /// marked sent at `now` (counter `messages.sent`), each `(seq, at)` in `retry` gets another
    /// attempt at `at`, and the events in `failed` (the failed sends' `send_failed`) are
    /// recorded. Marking is bookkeeping, not a promise to anyone: if it is lost in a crash,
    /// the messages are sent again and peers drop the copies.
    pub fn outbox_settle(
        &mut self,
        sent: &[i64],
        retry: &[(i64, Millis)],
        failed: Vec<EventKind>,
        now: Millis,
    ) -> Result<()> {
        if sent.is_empty() && retry.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let tx = self.tx(TransactionBehavior::Immediate)?;
        {
            let mut mark = tx.prepare_cached(
                "UPDATE outbox SET sent_at = ?2, attempts = attempts + 1 WHERE seq = ?1",
            )?;
            for seq in sent {
                mark.execute(params![seq, now as i64])?;
            }
            let mut again = tx.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2 WHERE seq = ?1",
            )?;
            for (seq, at) in retry {
                again.execute(params![seq, *at as i64])?;
            }
        }
        prune::add_counter(&tx, "messages.sent", sent.len() as u64)?;
        insert_events(&tx, now, failed, None)?;
        tx.commit()?;
        Ok(())
    }

    /// This node's Lamport clock: the highest counter it stamped or received.
    pub fn lamport_clock(&self) -> Result<u64> {
        Ok(self
            .meta("lamport")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Forgets seen message ids whose time is up; returns how many (counter `seen.expired`).
    /// Each sender's replay floor rises to the highest Lamport counter forgotten, so a replay
    /// of a forgotten message is still recognised, also after a restart.
    pub fn prune_seen(&mut self, now: Millis) -> Result<usize> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        tx.prepare_cached("UPDATE peers SET replay_floor = MAX(replay_floor, (
                 SELECT MAX(lamport) FROM seen
                 WHERE seen.sender = peers.node_id AND seen.expires_at <= ?1))
             WHERE EXISTS (SELECT 1 FROM seen
                 WHERE seen.sender = peers.node_id AND seen.expires_at <= ?1 AND seen.lamport IS NOT NULL)")?.execute(
            [now as i64],
        )?;
        let n = tx
            .prepare_cached("DELETE FROM seen WHERE expires_at <= ?1")?
            .execute([now as i64])?;
        prune::add_counter(&tx, "seen.expired", n as u64)?;
        tx.commit()?;
        Ok(n)
    }

    fn seen_until(&self, now: Millis) -> Millis {
        now.saturating_add(self.config.seen_ttl_secs.saturating_mul(1000))
    }

    /// Whether a message id was seen (in the seen window) or is stored.
    pub fn is_known(&self, id: &MessageId) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM seen WHERE message_id = ?1)
                 OR EXISTS(SELECT 1 FROM messages WHERE id = ?1)",
            )?
            .query_row([id.as_str()], |r| r.get(0))?)
    }

    /// Remembers a message id that is not applied here (a hello, or an envelope sealed to
    /// other nodes) so that it is deduplicated, and counts it under `counter`.
    pub fn remember(
        &mut self,
        id: &MessageId,
        sender: &NodeId,
        lamport: u64,
        now: Millis,
        counter: &str,
    ) -> Result<()> {
        let until = self.seen_until(now);
        let tx = self.tx(TransactionBehavior::Deferred)?;
        insert_seen(&tx, id, sender, lamport, now, until)?;
        bump_counter(&tx, counter)?;
        tx.commit()?;
        Ok(())
    }

    /// Bumps a counter by one.
    pub fn count(&mut self, counter: &str) -> Result<()> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        bump_counter(&tx, counter)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds to counters and records events, in one transaction.
    pub fn add_counters(
        &mut self,
        now: Millis,
        counters: &BTreeMap<String, u64>,
        events: Vec<EventKind>,
    ) -> Result<Vec<Event>> {
        self.add_counters_with_cursor(now, counters, events, None)
    }

    /// [`Store::add_counters`] and, with `cursor`, [`Store::set_log_cursor`] in the same
    /// transaction (a stopping node's last commit: the events recorded come after the cursor).
    pub(crate) fn add_counters_with_cursor(
        &mut self,
        now: Millis,
        counters: &BTreeMap<String, u64>,
        events: Vec<EventKind>,
        cursor: Option<u64>,
    ) -> Result<Vec<Event>> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        add_to_counters(&tx, counters)?;
        let events = insert_events(&tx, now, events, None)?;
        if let Some(seq) = cursor {
            tx.prepare_cached(
                "INSERT INTO meta(key, value) VALUES ('ndjson_seq', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([seq.to_string()])?;
        }
        tx.commit()?;
        Ok(events)
    }

    /// The parsed keys cached for `id` when they were parsed from exactly these encoded keys
    /// (a periodic hello repeats its sender's stored keys), else `None`: the caller parses
    /// them with [`PublicIdentity::from_parts`], outside the store's lock. As from
    /// `from_parts`, the node id is the one derived from the keys, not `id`.
    pub(crate) fn cached_identity(
        &self,
        id: &NodeId,
        signing: &[u8],
        kem: &[u8],
        epoch: u32,
    ) -> Option<PublicIdentity> {
        self.keys.cached(id.as_str(), signing, kem, epoch)
    }

    /// A known peer.
    pub fn peer(&self, id: &NodeId) -> Result<Option<Peer>> {
        self.conn
            .prepare_cached(PEER_BY_ID)?
            .query_row([id.as_str()], |r| peer_from_row(&self.keys, r))
            .optional()?
            .transpose()
    }

    /// How many peers the peer table holds.
    pub fn peer_count(&self) -> Result<usize> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM peers")?
            .query_row([], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// When each peer was first and last heard from, and where from (one row per peer, in no
    /// particular order): read once per periodic hello to size the hello interval.
    pub fn peer_sightings(&self) -> Result<Vec<PeerSighting>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node_id, first_seen, last_seen, admitted_from FROM peers")?;
        let rows = stmt.query_map([], |r| {
            Ok(PeerSighting {
                node_id: r.get(0)?,
                first_seen: r.get::<_, i64>(1)?.max(0) as u64,
                last_seen: r.get::<_, i64>(2)?.max(0) as u64,
                admitted_from: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every known peer, by node id.
    pub fn peers(&self) -> Result<Vec<Peer>> {
        let mut stmt = self
            .conn
            .prepare_cached(concat!(peer_columns!(), " ORDER BY node_id"))?;
        let rows = stmt.query_map([], |r| peer_from_row(&self.keys, r))?;
        rows.map(|r| r?).collect()
    }

    /// Sync digest entries for every seed with stored envelopes, most recently changed first,
    /// at most `limit`. Reads those seeds' messages only (a peer's digest asks for ours): the
    /// seeds come from their index in order, and only `limit` of them are sorted with their
    /// messages.
    pub fn sync_digest(&self, limit: usize) -> Result<Vec<crate::sync::SeedDigest>> {
        let mut stmt = self.conn.prepare_cached(SYNC_DIGEST_SQL)?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit_sql], |r| <(String, String)>::try_from(r))?;
        let mut out = Vec::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for row in rows {
            let (seed, id) = row?;
            match &mut current {
                Some((s, ids)) if *s == seed => ids.push(id),
                _ => {
                    if let Some((s, mut ids)) = current.take() {
                        out.push(crate::sync::seed_digest(&SeedId::parse(&s)?, &mut ids));
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                    current = Some((seed, vec![id]));
                }
            }
        }
        if let Some((s, mut ids)) = current
            && out.len() < limit
        {
            out.push(crate::sync::seed_digest(&SeedId::parse(&s)?, &mut ids));
        }
        Ok(out)
    }

    /// The stored envelopes of a seed with their senders, creation first.
    pub fn seed_envelopes(&self, seed: &SeedId) -> Result<Vec<(NodeId, Vec<u8>)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sender, envelope FROM messages WHERE seed_id = ?1 AND envelope IS NOT NULL
             ORDER BY kind = 'seed_created' DESC, lamport, id",
        )?;
        let rows = stmt.query_map([seed.as_str()], |r| <(String, Vec<u8>)>::try_from(r))?;
        rows.map(|r| {
            let (sender, envelope) = r?;
            Ok((NodeId::parse(&sender)?, envelope))
        })
        .collect()
    }

    /// A peer's latest verified hello envelope.
    pub fn peer_hello(&self, id: &NodeId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hello FROM peers WHERE node_id = ?1")?
            .query_row([id.as_str()], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// Stores a node's accepted membership certificate (replacing the one held before).
    pub fn put_certificate(&mut self, node: &NodeId, body: &[u8], now: Millis) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO certificates(node_id, body, received_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(node_id) DO UPDATE SET body = ?2, received_at = ?3",
            )?
            .execute(params![node.as_str(), body, now as i64])?;
        Ok(())
    }

    /// Every stored certificate.
    pub fn certificates(&self) -> Result<Vec<Vec<u8>>> {
        self.bodies("SELECT body FROM certificates ORDER BY node_id")
    }

    /// The `body` column of every row `sql` selects (certificates, revocations, rotations),
    /// in its order.
    fn bodies(&self, sql: &str) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores a verified revocation under its id; returns whether it was new.
    pub fn put_revocation(&mut self, id: &str, body: &[u8], now: Millis) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO revocations(id, body, received_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, body, now as i64])?;
        Ok(n == 1)
    }

    /// Every stored revocation, oldest first.
    pub fn revocations(&self) -> Result<Vec<Vec<u8>>> {
        self.bodies("SELECT body FROM revocations ORDER BY received_at, id")
    }

    /// How many revocations are stored.
    pub fn revocation_count(&self) -> Result<u64> {
        self.number("SELECT COUNT(*) FROM revocations")
    }

    /// Stores a verified key rotation statement of `node` to `epoch`; returns whether it was
    /// new.
    pub fn put_rotation(
        &mut self,
        node: &NodeId,
        epoch: u32,
        body: &[u8],
        now: Millis,
    ) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO rotations(node_id, epoch, body, received_at)
             VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![node.as_str(), epoch as i64, body, now as i64])?;
        Ok(n == 1)
    }

    /// Every stored rotation statement, each node's in epoch order.
    pub fn rotations(&self) -> Result<Vec<Vec<u8>>> {
        self.bodies("SELECT body FROM rotations ORDER BY node_id, epoch")
    }

    /// Deletes the rotation statements of nodes that are neither `me`, nor in the peer table,
    /// nor the author of a stored message (peers evicted from the table, strangers); returns
    /// those nodes. The statements deleted are counted as `trust.rotations_pruned`. A node that
    /// comes back brings its chain in its hello.
    pub fn prune_rotations(&mut self, me: &NodeId) -> Result<Vec<NodeId>> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        // Cheap first (the peer table's key): only then the scan of the messages' authors.
        let candidates: bool = tx
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM rotations WHERE node_id != ?1
                 AND node_id NOT IN (SELECT node_id FROM peers))",
            )?
            .query_row([me.as_str()], |r| r.get(0))?;
        if !candidates {
            return Ok(Vec::new());
        }
        let nodes: Vec<String> = {
            let mut stmt = tx.prepare(ROTATIONS_OF_STRANGERS)?;
            let rows = stmt.query_map([me.as_str()], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut deleted = 0u64;
        for node in &nodes {
            deleted += tx
                .prepare_cached("DELETE FROM rotations WHERE node_id = ?1")?
                .execute([node])? as u64;
        }
        prune::add_counter(&tx, "trust.rotations_pruned", deleted)?;
        tx.commit()?;
        nodes.iter().map(|n| NodeId::parse(n)).collect()
    }

    /// How many rotation statements are stored.
    pub fn rotation_count(&self) -> Result<u64> {
        self.number("SELECT COUNT(*) FROM rotations")
    }

    /// A known peer moves to the keys of a verified rotation (`identity`, a later epoch than
    /// the one stored); returns whether the peer is known and was behind. The peer's latest
    /// hello is cleared until it sends one with the new keys.
    pub fn rotate_peer(&mut self, identity: &PublicIdentity) -> Result<bool> {
        let n = self.conn.prepare_cached("UPDATE peers SET signing_public = ?2, kem_public = ?3, key_epoch = ?4, hello = NULL
             WHERE node_id = ?1 AND key_epoch < ?4")?.execute(
            params![
                identity.node_id.as_str(),
                identity.signing.to_bytes(),
                identity.kem.to_bytes(),
                identity.epoch as i64
            ],
        )?;
        Ok(n == 1)
    }

    /// Records a verified hello. A known node id announcing different keys is refused. A new
    /// peer is admitted under `admission`: when its source address already has
    /// `max_per_address` peers it is refused; when the table is full, it takes the place of
    /// the peer evicted first (idle peers, then peers that never authored a stored message,
    /// oldest hello first; counted as `peers.evicted`), or is refused if every peer is active.
    pub fn upsert_peer(
        &mut self,
        identity: &PublicIdentity,
        name: &str,
        addresses: &[String],
        hello: &[u8],
        now: Millis,
        admission: &Admission,
    ) -> Result<PeerUpdate> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        let signing = identity.signing.to_bytes();
        let kem = identity.kem.to_bytes();
        let known: Option<(Vec<u8>, Vec<u8>, i64)> = tx
            .prepare_cached(
                "SELECT signing_public, kem_public, key_epoch FROM peers WHERE node_id = ?1",
            )?
            .query_row([identity.node_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let addresses_json = to_json(&addresses)?;
        let update = match known {
            Some((s, k, e)) if s != signing || k != kem || e as u32 != identity.epoch => {
                return Ok(PeerUpdate::KeyMismatch);
            }
            Some(_) => {
                tx.prepare_cached(
                    "UPDATE peers SET name = ?2, addresses = ?3, last_seen = ?4, hello = ?5
                     WHERE node_id = ?1",
                )?
                .execute(params![
                    identity.node_id.as_str(),
                    name,
                    addresses_json,
                    now as i64,
                    hello
                ])?;
                PeerUpdate::Refreshed
            }
            None => {
                if !admit(&tx, admission)? {
                    // Counted by the caller, in memory (`peers.refused`): a refused hello (its
                    // copies, a stream of fresh identities) costs no write. What `admit`
                    // evicted on the way stays evicted.
                    tx.commit()?;
                    return Ok(PeerUpdate::Refused);
                }
                tx.prepare_cached(
                    "INSERT INTO peers(node_id, name, addresses, signing_public, kem_public,
                         key_epoch, first_seen, last_seen, hello, admitted_from)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                )?
                .execute(params![
                    identity.node_id.as_str(),
                    name,
                    addresses_json,
                    signing,
                    kem,
                    identity.epoch as i64,
                    now as i64,
                    hello,
                    admission.address
                ])?;
                PeerUpdate::New
            }
        };
        tx.commit()?;
        Ok(update)
    }

    /// Moves the `last_seen` of peers forward (never back), in one transaction; peers no
    /// longer in the table are skipped.
    pub fn touch_peers(&mut self, seen: &[(NodeId, Millis)]) -> Result<()> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE peers SET last_seen = MAX(last_seen, ?2) WHERE node_id = ?1",
            )?;
            for (node, at) in seen {
                update.execute(params![node.as_str(), *at as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks a task run as started by process `pid`. Fails with [`ErrorKind::Busy`] while
    /// another live process runs it.
    pub fn begin_run(&mut self, seed_id: &SeedId, pid: u32, now: Millis) -> Result<()> {
        let tx = self.tx(TransactionBehavior::Immediate)?;
        let holder: Option<(i64, i64)> = tx
            .query_row(
                "SELECT pid, started_at FROM runs WHERE seed_id = ?1",
                [seed_id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((other, started)) = holder
            && process_alive(other as u32)
        {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "seed {seed_id} is already being run by process {other} since {}",
                    crate::clock::format_ms(started as u64)
                ),
            ));
        }
        tx.prepare_cached("INSERT INTO runs(seed_id, pid, started_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(seed_id) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at")?.execute(
            params![seed_id.as_str(), pid as i64, now as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The runs begun by a process that is gone (it crashed or was killed before it recorded
    /// a result), as `(seed, pid, started_at)`, oldest first. A run of this process counts as
    /// live.
    pub fn orphaned_runs(&self) -> Result<Vec<(SeedId, u32, Millis)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seed_id, pid, started_at FROM runs ORDER BY started_at, seed_id")?;
        let rows = stmt
            .query_map([], |r| <(String, i64, i64)>::try_from(r))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for (seed_id, pid, started_at) in rows {
            let pid = u32::try_from(pid).unwrap_or(0);
            if pid != 0 && process_alive(pid) {
                continue;
            }
            out.push((
                SeedId::parse(&seed_id)?,
                pid,
                u64::try_from(started_at).unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Clears the run marker of a seed.
    pub fn end_run(&mut self, seed_id: &SeedId) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM runs WHERE seed_id = ?1")?
            .execute([seed_id.as_str()])?;
        Ok(())
    }

    /// All seed views (for digests and exports).
    pub fn all_views(&self) -> Result<Vec<SeedView>> {
        self.seeds(None, usize::MAX)
    }

    /// Fills the digest shares of the seeds an older version wrote (see the triggers of schema
    /// version 14); a node does it when it starts. Returns how many it filled.
    pub(crate) fn fill_digest_shares(&mut self) -> Result<usize> {
        let none: bool = self.conn.query_row(
            &format!("SELECT NOT EXISTS ({MISSING_SHARES_SQL})"),
            [],
            |r| r.get(0),
        )?;
        if none {
            return Ok(0);
        }
        let tx = immediate(&mut self.conn, self.batch)?;
        let filled = fill_view_hashes(&tx)?;
        tx.commit()?;
        Ok(filled)
    }

    /// A digest of the whole seed state ([`state::digest`]); equal on replicas that converged.
    /// Reads each seed's stored share of it, in seed id order, from the index that holds them
    /// (a seed written by an older version, without one, is hashed from its state; a state
    /// that cannot be read, from its text: one bad row does not fail every overview).
    pub fn digest(&self) -> Result<String> {
        let mut stmt = self.conn.prepare_cached(DIGEST_SQL)?;
        let mut rows = stmt.query([])?;
        let mut hashes = Vec::new();
        while let Some(row) = rows.next()? {
            let (id, hash) = <(String, Option<Vec<u8>>)>::try_from(row)?;
            let hash = match hash.map(<[u8; 32]>::try_from) {
                Some(Ok(hash)) => hash,
                // Written by an older version, or corrupt: from the stored state (a node's
                // start stores it).
                _ => {
                    let text: String = self.conn.query_row(
                        "SELECT view FROM seeds WHERE id = ?1",
                        [&id],
                        |r| r.get(0),
                    )?;
                    share_of(&id, &text)?.1
                }
            };
            hashes.push(hash);
        }
        Ok(state::digest_of_hashes(hashes))
    }

    /// Runs SQLite's integrity check; `Ok(())` when the database is sound.
    pub fn integrity_check(&self) -> Result<()> {
        let result: String = self
            .conn
            .prepare_cached("PRAGMA integrity_check")?
            .query_row([], |r| r.get(0))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Store,
                format!("integrity check failed: {result}"),
            ))
        }
    }
}

/// A queued webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Its position in the queue (also its delivery id).
    pub seq: i64,
    /// The webhook.
    pub url: String,
    /// The signed JSON body.
    pub body: Vec<u8>,
    /// Attempts so far.
    pub attempts: u32,
}

/// Alerting: the alerts firing now and the webhook queue (see [`crate::alerts`]).
impl Store {
    /// The alerts firing now, in rule order.
    pub fn active_alerts(&self) -> Result<Vec<ActiveAlert>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, since, value, threshold, detail FROM alerts")?;
        let rows = stmt.query_map([], |r| <(String, i64, i64, i64, String)>::try_from(r))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, since, value, threshold, detail) = row?;
            let alert = AlertName::parse(&name).ok_or_else(|| {
                Error::new(ErrorKind::Store, format!("corrupt alert name {name:?}"))
            })?;
            out.push(ActiveAlert {
                alert,
                since: since as Millis,
                value: value as u64,
                threshold: threshold as u64,
                detail,
            });
        }
        out.sort_by_key(|a| a.alert);
        Ok(out)
    }

    /// Records an alert transition in one transaction: its event, the alert's row, and a
    /// delivery of `body(event)` to each of `webhooks` (dropping the oldest deliveries of a
    /// webhook beyond `queue_max`).
    pub fn record_alert(
        &mut self,
        now: Millis,
        transition: &Transition,
        webhooks: &[String],
        queue_max: u64,
        body: &dyn Fn(&Event) -> Result<Vec<u8>>,
    ) -> Result<Event> {
        let sql_u64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let tx = self.tx(TransactionBehavior::Deferred)?;
        let kind = match transition {
            Transition::Firing(a) => {
                tx.prepare_cached(
                    "INSERT INTO alerts(name, since, value, threshold, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(name) DO UPDATE SET since = excluded.since,
                       value = excluded.value, threshold = excluded.threshold,
                       detail = excluded.detail",
                )?
                .execute(params![
                    a.alert.as_str(),
                    sql_u64(a.since),
                    sql_u64(a.value),
                    sql_u64(a.threshold),
                    a.detail
                ])?;
                EventKind::AlertFiring {
                    alert: a.alert,
                    value: a.value,
                    threshold: a.threshold,
                    detail: a.detail.clone(),
                }
            }
            Transition::Resolved { alert, value } => {
                tx.prepare_cached("DELETE FROM alerts WHERE name = ?1")?
                    .execute([alert.alert.as_str()])?;
                EventKind::AlertResolved {
                    alert: alert.alert,
                    value: *value,
                    threshold: alert.threshold,
                    since: alert.since,
                    detail: alert.detail.clone(),
                }
            }
        };
        let event = insert_events(&tx, now, vec![kind], None)?.remove(0);
        if !webhooks.is_empty() {
            let bytes = body(&event)?;
            for url in webhooks {
                tx.prepare_cached(
                    "INSERT INTO webhook_queue(url, body, created_at, next_attempt_at)
                     VALUES (?1, ?2, ?3, ?3)",
                )?
                .execute(params![url, bytes, sql_u64(now)])?;
                let dropped = tx
                    .prepare_cached(
                        "DELETE FROM webhook_queue WHERE url = ?1 AND seq NOT IN
                       (SELECT seq FROM webhook_queue WHERE url = ?1 ORDER BY seq DESC LIMIT ?2)",
                    )?
                    .execute(params![url, sql_u64(queue_max)])?;
                prune::add_counter(&tx, "alerts.webhook_dropped", dropped as u64)?;
            }
        }
        tx.commit()?;
        Ok(event)
    }

    /// Webhook deliveries due at `now`, oldest first, at most `limit`.
    pub fn webhook_due(&self, now: Millis, limit: usize) -> Result<Vec<WebhookDelivery>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, url, body, attempts FROM webhook_queue WHERE next_attempt_at <= ?1
             ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![
                i64::try_from(now).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok(WebhookDelivery {
                    seq: r.get(0)?,
                    url: r.get(1)?,
                    body: r.get(2)?,
                    attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                })
            },
        )?;
        rows.map(|r| r.map_err(Error::from)).collect()
    }

    /// Removes a delivery: sent (`alerts.webhook_delivered`) or given up
    /// (`alerts.webhook_dropped`).
    pub fn webhook_finish(&mut self, seq: i64, delivered: bool) -> Result<()> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        if tx
            .prepare_cached("DELETE FROM webhook_queue WHERE seq = ?1")?
            .execute([seq])?
            > 0
        {
            bump_counter(
                &tx,
                if delivered {
                    "alerts.webhook_delivered"
                } else {
                    "alerts.webhook_dropped"
                },
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Schedules the next attempt of a delivery that failed (`alerts.webhook_failed`).
    pub fn webhook_retry(&mut self, seq: i64, next_at: Millis, error: &str) -> Result<()> {
        let tx = self.tx(TransactionBehavior::Deferred)?;
        tx.prepare_cached(
            "UPDATE webhook_queue SET attempts = attempts + 1, next_attempt_at = ?2,
               last_error = ?3 WHERE seq = ?1",
        )?
        .execute(params![
            seq,
            i64::try_from(next_at).unwrap_or(i64::MAX),
            error
        ])?;
        bump_counter(&tx, "alerts.webhook_failed")?;
        tx.commit()?;
        Ok(())
    }

    /// Deliveries waiting in the webhook queue.
    pub fn webhook_pending(&self) -> Result<u64> {
        self.number("SELECT COUNT(*) FROM webhook_queue")
    }

    /// When the oldest unsent outbox message was created (Unix ms), if any.
    pub fn outbox_oldest(&self) -> Result<Option<Millis>> {
        self.earliest("SELECT MIN(created_at) FROM outbox WHERE sent_at IS NULL")
    }

    /// When the oldest received message that still waits for another arrived (Unix ms): one
    /// read of the index of waiting messages, whatever the number of stored messages.
    pub fn oldest_pending_message(&self) -> Result<Option<Millis>> {
        self.earliest(OLDEST_PENDING_SQL)
    }

    /// Every store read of one alert sample (`alerts.interval_ms`; what an idle node does most
    /// often): the counters, the peers' sightings (not their keys), the outbox and the oldest
    /// waiting message. Each read goes through an index or a small table.
    pub fn alert_readings(&self) -> Result<AlertReadings> {
        Ok(AlertReadings {
            counters: self.counters()?,
            sightings: self.peer_sightings()?,
            outbox_pending: self.outbox_pending()?,
            outbox_oldest: self.outbox_oldest()?,
            oldest_pending_message: self.oldest_pending_message()?,
        })
    }
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        if pid == std::process::id() {
            return true;
        }
        // SAFETY: kill with signal 0 only checks for existence and permission.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        pid == std::process::id()
    }
}

fn load_view(conn: &Connection, id: &SeedId) -> Result<Option<SeedView>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT view FROM seeds WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    text.map(|t| from_json(&t, "seed view")).transpose()
}

/// Makes room for one new peer under `admission`; `false` when it must be refused.
fn admit(tx: &Connection, admission: &Admission) -> Result<bool> {
    if let Some(address) = &admission.address {
        let from_there: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM peers WHERE admitted_from = ?1")?
            .query_row([address], |r| r.get(0))?;
        if from_there as u64 >= admission.max_per_address as u64 {
            return Ok(false);
        }
    }
    loop {
        let count: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM peers")?
            .query_row([], |r| r.get(0))?;
        if (count as u64) < admission.max_peers as u64 {
            return Ok(true);
        }
        let victim: Option<String> = tx
            .query_row(
                "SELECT node_id FROM peers WHERE last_seen < ?1 OR last_active IS NULL
                 ORDER BY last_seen >= ?1, last_active IS NOT NULL, last_seen, node_id LIMIT 1",
                [admission.idle_before as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(victim) = victim else {
            return Ok(false);
        };
        tx.prepare_cached("DELETE FROM peers WHERE node_id = ?1")?
            .execute([&victim])?;
        bump_counter(tx, "peers.evicted")?;
    }
}

fn bump_lamport(tx: &Connection, clock: &AtomicU64, seen: Option<u64>) -> Result<u64> {
    let current: u64 = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'lamport'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let next = match seen {
        // Above the counters handed out before their transaction, too.
        None => {
            clock.fetch_max(current, Ordering::SeqCst);
            clock.fetch_add(1, Ordering::SeqCst).saturating_add(1)
        }
        Some(remote) => current.max(remote),
    };
    if next > MAX_LAMPORT {
        return Err(Error::new(
            ErrorKind::Store,
            format!("the Lamport clock would pass {MAX_LAMPORT}"),
        ));
    }
    clock.fetch_max(next, Ordering::SeqCst);
    tx.prepare_cached(
        "INSERT INTO meta(key, value) VALUES ('lamport', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([next.to_string()])?;
    Ok(next)
}

/// Hands out local Lamport counters before their transaction (see [`Store::lamport_counter`]).
#[derive(Debug, Clone)]
pub(crate) struct LamportCounter(Arc<AtomicU64>);

impl LamportCounter {
    /// The next local counter: above every counter the store stamped, received or handed out
    /// before. A counter handed out but never committed is skipped, as a rolled-back one is.
    pub fn next(&self) -> Result<u64> {
        let next = self.0.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        if next > MAX_LAMPORT {
            return Err(Error::new(
                ErrorKind::Store,
                format!("the Lamport clock would pass {MAX_LAMPORT}"),
            ));
        }
        Ok(next)
    }
}

/// The part of a local commit after the message is stamped: checks it, applies it through the
/// state machine with its seed's stored messages (it must apply), seals it (`seal`, called once
/// the new state is known), then stores it with its envelope and verdict, its outbox row and
/// its events.
fn insert_local(
    tx: &Connection,
    message: &Message,
    now: Millis,
    seal: impl FnOnce(&Message, &SeedView) -> Result<Vec<u8>>,
) -> Result<(SeedView, Vec<Event>)> {
    if let Err(reason) = message.check_well_formed() {
        return Err(Error::new(ErrorKind::Validation, reason));
    }
    let seed_id = message.seed_id();
    let mut events = Vec::new();
    let (view, verdict) = refold(tx, message, Origin::Local, now, &mut events)?;
    match verdict {
        Verdict::Applied => {}
        Verdict::Pending { reason } | Verdict::Rejected { reason } => {
            return Err(reason.into());
        }
    }
    let view = view.ok_or_else(|| Error::internal("applied message left no seed"))?;
    let envelope = seal(message, &view)?;
    insert_message(tx, message, Origin::Local, &envelope, &verdict, now)?;
    tx.prepare_cached(
        "INSERT INTO outbox(message_id, created_at, next_attempt_at) VALUES (?1, ?2, ?2)",
    )?
    .execute(params![message.id.as_str(), now as i64])?;
    let events = insert_events(tx, now, events, Some(seed_id))?;
    Ok((view, events))
}

fn insert_seen(
    tx: &Connection,
    id: &MessageId,
    sender: &NodeId,
    lamport: u64,
    now: Millis,
    until: Millis,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO seen(message_id, first_seen, expires_at, sender, lamport)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.as_str(),
        now as i64,
        until as i64,
        sender.as_str(),
        sql_lamport(lamport)?
    ])?;
    Ok(())
}

/// Adds each of `counters` to its stored counter.
fn add_to_counters(tx: &Connection, counters: &BTreeMap<String, u64>) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counters(name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = value + ?2",
    )?;
    for (name, add) in counters {
        stmt.execute(params![name, i64::try_from(*add).unwrap_or(i64::MAX)])?;
    }
    Ok(())
}

fn bump_counter(tx: &Connection, name: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO counters(name, value) VALUES (?1, 1)
         ON CONFLICT(name) DO UPDATE SET value = value + 1",
    )?
    .execute([name])?;
    Ok(())
}

/// Stores a message with its envelope and verdict ([`refold`] works the verdict out before the
/// message is stored): one write of the row, where a second and a third rewrote it, its
/// envelope's overflow pages included.
fn insert_message(
    tx: &Connection,
    m: &Message,
    origin: Origin,
    envelope: &[u8],
    verdict: &Verdict,
    now: Millis,
) -> Result<()> {
    tx.prepare_cached("INSERT INTO messages(id, seed_id, kind, sender, lamport, timestamp, body, origin, received_at, envelope, verdict)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")?.execute(
        params![
            m.id.as_str(),
            m.seed_id().as_str(),
            m.kind().as_str(),
            m.sender.as_str(),
            sql_lamport(m.lamport)?,
            m.timestamp as i64,
            to_json(m)?,
            origin.as_str(),
            now as i64,
            envelope,
            to_json(verdict)?
        ],
    )?;
    Ok(())
}

// Statement journals. SQLite gives a statement a journal of its own (the image of every page the
// statement changes: in memory up to 64 KiB, then in a temporary file) when it may write more
// than one row (a trigger on its table counts, and SQLite runs `RETURNING` as a trigger) and
// may abort (an `ABORT` constraint check, the default; also any SQL function call, a
// `RAISE(ABORT)`, an immediate foreign key check in such a statement). The store never needs
// one statement undone alone: a statement that fails fails its whole operation, which its
// transaction or savepoint rolls back. The statements of every applied message therefore avoid
// them: no `RETURNING`, and `OR FAIL` (the checks without the undo) on `seeds`, which has
// triggers (a trigger that called a function would bring the journal back). In a profile of a
// node applying a stream of seeds they had been a tenth of its time. One difference remains:
// on a full disk or out of memory, SQLite rolls back a statement that has a journal and the
// whole transaction for one that has none (as it did for most statements already), so such an
// error in an API group fails every operation of the group (docs/PROTOCOL.md, "Group commit").

/// Appends events; each is filed under the seed it names, else under `seed` (the seed of the
/// message it describes), so that pruning a seed removes its events.
fn insert_events(
    tx: &Connection,
    now: Millis,
    kinds: Vec<EventKind>,
    seed: Option<&SeedId>,
) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(kinds.len());
    // The new row's `seq` from the connection's last inserted rowid (`Statement::insert`), not
    // from `RETURNING` (see "Statement journals" above).
    let mut stmt =
        tx.prepare_cached("INSERT INTO events(at, kind, body, seed_id) VALUES (?1, ?2, ?3, ?4)")?;
    for kind in kinds {
        let about = prune::event_seed(&kind).or(seed).map(SeedId::as_str);
        let seq = stmt.insert(params![now as i64, kind.name(), to_json(&kind)?, about])?;
        out.push(Event {
            seq: seq as u64,
            at: now,
            kind,
        });
    }
    Ok(out)
}

fn rejection(
    m: &Message,
    reason: RejectReason,
    violation: Option<Violation>,
    detail: String,
) -> EventKind {
    EventKind::MessageRejected {
        message_id: Some(m.id.clone()),
        message_kind: Some(m.kind()),
        sender: Some(m.sender.clone()),
        reason,
        violation,
        detail,
        source: None,
        count: 1,
    }
}

/// The event describing an applied message.
fn applied_event(m: &Message, view: &SeedView) -> EventKind {
    match &m.body {
        Body::SeedCreated(seed) => EventKind::SeedPublished {
            seed_id: seed.id.clone(),
            publisher: seed.publisher.clone(),
            command: seed.command.clone(),
        },
        Body::BidPlaced(bid) => EventKind::BidPlaced {
            seed_id: bid.seed_id.clone(),
            bid_id: bid.id.clone(),
            bidder: bid.bidder.clone(),
            price: bid.price,
        },
        Body::BiddingClosed(award) => EventKind::BiddingClosed {
            seed_id: award.seed_id.clone(),
            winner: award.winner.clone(),
            winner_node: view.award.as_ref().and_then(|a| a.winner_node.clone()),
            price: view.award.as_ref().and_then(|a| a.price),
        },
        Body::SeedClaimed(c) => EventKind::SeedClaimed {
            seed_id: c.seed_id.clone(),
            claimer: c.claimer.clone(),
        },
        Body::ResultReported(r) => EventKind::ResultRecorded {
            seed_id: r.seed_id.clone(),
            runner: r.runner.clone(),
            success: r.success,
            interrupted: r.interrupted,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            output_sha256: r.output_sha256.clone(),
        },
        Body::SeedSettled(s) => EventKind::SeedSettled {
            seed_id: s.seed_id.clone(),
            outcome: s.outcome,
            amount: s.amount,
        },
        Body::SeedCancelled(c) => EventKind::SeedCancelled {
            seed_id: c.seed_id.clone(),
        },
        Body::SeedReassigned(r) => {
            let winner = r
                .winner
                .as_ref()
                .and_then(|id| view.bids.iter().find(|b| &b.bid.id == id));
            EventKind::SeedReassigned {
                seed_id: r.seed_id.clone(),
                round: r.round,
                winner: r.winner.clone(),
                winner_node: winner.map(|b| b.bid.bidder.clone()),
                price: winner.map(|b| b.bid.price),
            }
        }
        Body::SeedFailed(f) => EventKind::SeedFailed {
            seed_id: f.seed_id.clone(),
            round: f.round,
            claimer: view
                .past_rounds
                .iter()
                .find(|r| r.round == f.round)
                .map(|r| r.winner_node.clone())
                .or_else(|| view.claim.as_ref().map(|c| c.claimer.clone())),
        },
        Body::SeedEscalated(e) => EventKind::SeedEscalated {
            seed_id: e.seed_id.clone(),
            step: e.step,
            winners: view
                .replicas
                .iter()
                .filter(|r| r.step == e.step)
                .map(|r| r.runner.clone())
                .collect(),
        },
    }
}

/// Re-computes one seed from its stored messages and `new`, a message of it that is not stored
/// yet; stores the new view and the verdicts of stored messages that changed, and appends
/// events for every message whose verdict changed, `new` included. Returns the view and the
/// verdict of `new`, which the caller stores with it ([`insert_message`]): a message row is
/// written once, not again for its verdict.
fn refold(
    tx: &Connection,
    new: &Message,
    origin: Origin,
    now: Millis,
    events: &mut Vec<EventKind>,
) -> Result<(Option<SeedView>, Verdict)> {
    let seed_id = new.seed_id();
    let mut stmt = tx.prepare_cached(
        "SELECT body, verdict, origin FROM messages WHERE seed_id = ?1 ORDER BY lamport, id",
    )?;
    let rows = stmt.query_map([seed_id.as_str()], |r| {
        <(String, Option<String>, String)>::try_from(r)
    })?;
    let mut messages = Vec::new();
    let mut previous = BTreeMap::new();
    let mut origins = BTreeMap::new();
    for row in rows {
        let (body, verdict, origin) = row?;
        let m: Message = from_json(&body, "message")?;
        if let Some(v) = verdict {
            previous.insert(m.id.clone(), from_json::<Verdict>(&v, "verdict")?);
        }
        origins.insert(m.id.clone(), origin);
        messages.push(m);
    }
    drop(stmt);
    // In the order of the query (Lamport counter, then id; SQLite compares text bytewise), so
    // that the events come out in that order; the fold sorts its input itself.
    let at = messages.partition_point(|m| m.order_key() < new.order_key());
    messages.insert(at, new.clone());
    origins.insert(new.id.clone(), origin.as_str().to_owned());
    let old_view = load_view(tx, seed_id)?;
    let folded = state::fold(&messages);

    let mut update = tx.prepare_cached("UPDATE messages SET verdict = ?2 WHERE id = ?1")?;
    for m in &messages {
        let verdict = &folded.verdicts[&m.id];
        let old = previous.get(&m.id);
        if old == Some(verdict) {
            continue;
        }
        if m.id != new.id {
            update.execute(params![m.id.as_str(), to_json(verdict)?])?;
        }
        let remote = origins.get(&m.id).map(String::as_str) == Some("remote");
        match verdict {
            Verdict::Applied => {
                if let Some(view) = &folded.view {
                    events.push(applied_event(m, view));
                }
                if remote && old.is_none() {
                    events.push(EventKind::MessageAccepted {
                        message_id: m.id.clone(),
                        message_kind: m.kind(),
                        sender: m.sender.clone(),
                    });
                }
            }
            Verdict::Pending { reason } if remote => events.push(EventKind::MessageDeferred {
                message_id: m.id.clone(),
                message_kind: m.kind(),
                sender: m.sender.clone(),
                reason: reason.clone(),
            }),
            Verdict::Rejected { reason } if remote => events.push(rejection(
                m,
                RejectReason::Rule,
                Some(reason.clone()),
                reason.to_string(),
            )),
            Verdict::Pending { .. } | Verdict::Rejected { .. } => {}
        }
    }
    drop(update);

    if let Some(view) = &folded.view {
        let old_status = old_view.as_ref().map(|v| v.status);
        if old_status != Some(view.status) {
            events.push(EventKind::StatusChanged {
                seed_id: seed_id.clone(),
                from: old_status,
                to: view.status,
            });
        }
        let json = to_json(view)?;
        let hash = state::view_hash(json.as_bytes());
        let decide_at = decisions::decide_at_written(tx, view)?;
        let row = params![
            seed_id.as_str(),
            view.seed.publisher.as_str(),
            view.status.as_str(),
            view.seed.created_at as i64,
            now as i64,
            json,
            state::ended_at(view).map(to_sql),
            decide_at,
            &hash[..]
        ];
        // An update, else an insert, each `OR FAIL`, not one upsert (whose update part may always
        // abort): see "Statement journals" above `insert_events`.
        let updated = tx
            .prepare_cached(
                "UPDATE OR FAIL seeds SET status = ?3, updated_at = ?5, view = ?6, ended_at = ?7,
                     decide_at = ?8, view_hash = ?9
                 WHERE id = ?1",
            )?
            .execute(row)?;
        if updated == 0 {
            tx.prepare_cached(
                "INSERT OR FAIL INTO seeds(id, publisher, status, created_at, updated_at, view,
                                           ended_at, decide_at, view_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(row)?;
        }
        reputation::write_seed(tx, view)?;
    }
    let verdict = folded
        .verdicts
        .get(&new.id)
        .cloned()
        .ok_or_else(|| Error::internal("folded message has no verdict"))?;
    Ok((folded.view, verdict))
}

/// A store in a fresh temporary directory, which lives as long as the returned guard: for
/// unit tests.
#[cfg(test)]
pub(crate) fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), &StoreConfig::default()).unwrap();
    (dir, store)
}

/// Makes SQLite fail every insert into `table` whose `column` is `value` (a temporary
/// trigger on this connection), as an I/O error or a bug would fail a write: for unit tests.
#[cfg(test)]
pub(crate) fn fail_writes(s: &Store, table: &str, column: &str, value: &str) {
    s.conn
        .execute_batch(&format!(
            "CREATE TEMP TRIGGER fault_{table} BEFORE INSERT ON main.{table}
             WHEN NEW.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        ))
        .unwrap();
}

/// Takes back [`fail_writes`] on `table`: for unit tests.
#[cfg(test)]
pub(crate) fn heal_writes(s: &Store, table: &str) {
    s.conn
        .execute_batch(&format!("DROP TRIGGER temp.fault_{table}"))
        .unwrap();
}

/// The integer column `column` of seed `id`'s row, as stored: for unit tests.
#[cfg(test)]
pub(crate) fn seed_column(s: &Store, column: &str, id: &SeedId) -> Option<i64> {
    s.conn
        .query_row(
            &format!("SELECT {column} FROM seeds WHERE id = ?1"),
            [id.as_str()],
            |r| r.get(0),
        )
        .unwrap()
}

/// A node id made of the byte `tag` repeated: for unit tests.
#[cfg(test)]
pub(crate) fn test_node(tag: u8) -> NodeId {
    NodeId::parse(&format!("{tag:02x}").repeat(32)).unwrap()
}

/// Stores a seed `publisher` published at `at` (its id made of `tag`), as the node's own
/// operation: for tests that need a stored message by some author.
#[cfg(test)]
pub(crate) fn publish_test_seed(
    s: &mut Store,
    publisher: &NodeId,
    tag: u8,
    at: Millis,
) -> (SeedId, Message) {
    let seed = test_seed(publisher, tag, at);
    let id = seed.id.clone();
    let (m, _, _) = s
        .commit_local(
            publisher,
            &id,
            at,
            |_| Ok(Body::SeedCreated(seed)),
            |_, _| Ok(b"env".to_vec()),
        )
        .unwrap();
    (id, m)
}

/// A seed `publisher` published at `at`, its id made of `tag`.
#[cfg(test)]
pub(crate) fn test_seed(publisher: &NodeId, tag: u8, at: Millis) -> crate::model::Seed {
    crate::model::Seed {
        id: SeedId::from_bytes([tag; 16]),
        publisher: publisher.clone(),
        command: "true".into(),
        description: String::new(),
        min_price: 1,
        max_price: 10,
        bid_window_secs: 1,
        max_bids: 1,
        timeout_secs: 10,
        created_at: at,
        audience: Vec::new(),
        network: false,
        isolation: Default::default(),
        rules: crate::model::rules::V1,
        deadlines: None,
        replication: None,
    }
}

/// Begins a transaction on `conn` that takes the write lock at once: another process on the
/// data directory may write meanwhile (migrate, prune). Refused while a batch is open (`batch`):
/// the store's maintenance is not part of one.
fn immediate(conn: &mut Connection, batch: Option<Ops>) -> Result<Transaction<'_>> {
    if batch.is_some() {
        return Err(Error::internal("a store batch is open"));
    }
    roll_back_abandoned(conn)?;
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// Rolls back a transaction that a `ROLLBACK` did not close: one that failed before it ran (out
/// of memory while preparing it), which rusqlite's transactions ignore when dropped and
/// [`Store::end_batch`] returns or ignores. Called where this store begins a transaction
/// outside a batch: nothing of it holds one there, so an open one was abandoned. Without this,
/// every later `BEGIN` failed until the node restarted.
fn roll_back_abandoned(conn: &Connection) -> Result<()> {
    if conn.is_autocommit() {
        return Ok(());
    }
    tracing::warn!("rolling back a transaction that a failed rollback left open");
    conn.execute_batch("ROLLBACK")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn public(tag: u8) -> PublicIdentity {
        Identity::from_tag(tag, 0).public().clone()
    }

    /// A received seed's creation by `author`, its id and Lamport counter from `tag`, at 2,000.
    fn created_by(author: &PublicIdentity, tag: u8) -> Message {
        Message {
            id: MessageId::from_bytes([tag; 16]),
            sender: author.node_id.clone(),
            lamport: u64::from(tag),
            timestamp: 2_000,
            body: Body::SeedCreated(test_seed(&author.node_id, tag, 2_000)),
        }
    }

    /// A transaction a `ROLLBACK` did not close (it failed before it ran, out of memory;
    /// rusqlite's transactions ignore that when dropped) is rolled back when the next
    /// operation begins, its writes lost: before, every later transaction failed
    /// ("cannot start a transaction within a transaction") and the node could write nothing
    /// until restarted.
    #[test]
    fn a_transaction_left_open_by_a_failed_rollback_is_rolled_back_not_kept() {
        let (_dir, mut s) = temp_store();
        let me = NodeId::parse(&"ab".repeat(32)).unwrap();
        let leftover = |s: &Store| {
            s.conn
                .execute_batch("BEGIN IMMEDIATE; INSERT INTO meta(key, value) VALUES ('x', 'y')")
                .unwrap();
            assert!(!s.conn.is_autocommit());
        };
        // An operation of its own.
        leftover(&s);
        publish_test_seed(&mut s, &me, 1, 1_700_000_000_000);
        assert!(s.conn.is_autocommit());
        assert_eq!(
            s.meta("x").unwrap(),
            None,
            "the abandoned write was not committed"
        );
        // A batch.
        leftover(&s);
        s.begin_batch(Ops::Savepoint).unwrap();
        publish_test_seed(&mut s, &me, 2, 1_700_000_000_000);
        s.end_batch(true).unwrap();
        assert_eq!(
            s.meta("x").unwrap(),
            None,
            "the abandoned write was not committed"
        );
        // Maintenance inside a batch is refused; the batch is not rolled back for it.
        s.begin_batch(Ops::Savepoint).unwrap();
        publish_test_seed(&mut s, &me, 3, 1_700_000_000_000);
        assert!(s.prune_tombstones(0, 10).is_err());
        s.end_batch(true).unwrap();
        // A transaction of the store's maintenance (`immediate`).
        leftover(&s);
        s.prune_tombstones(0, 10).unwrap();
        assert_eq!(
            s.meta("x").unwrap(),
            None,
            "the abandoned write was not committed"
        );
        assert_eq!(s.seeds(None, 10).unwrap().len(), 3);
    }

    /// A store that read many pages holds them in SQLite's cache until it is asked to let
    /// them go; then it holds a small part, and reads still work.
    #[test]
    fn the_page_cache_is_released_on_request() {
        let (_dir, mut s) = temp_store();
        let me = NodeId::parse(&"ab".repeat(32)).unwrap();
        for tag in 0..=255 {
            publish_test_seed(&mut s, &me, tag, 1_700_000_000_000);
        }
        assert_eq!(s.seeds(None, 1000).unwrap().len(), 256);
        let full = s.cache_bytes();
        assert!(full > 512 * 1024, "the reads cached {full} bytes");
        s.release_cache().unwrap();
        let released = s.cache_bytes();
        assert!(
            released < full / 8,
            "{full} bytes cached, {released} after the release"
        );
        assert_eq!(s.seeds(None, 1000).unwrap().len(), 256);
    }

    #[test]
    fn cached_statements_are_not_compiled_again_when_their_parameters_change() {
        use rusqlite::StatementStatus;
        let (_dir, mut s) = temp_store();
        for at in 0..5 {
            s.record_event(
                at,
                EventKind::NodeStarted {
                    node_id: public(1).node_id,
                    transport: Some("udp".into()),
                },
            )
            .unwrap();
        }
        for (after, limit) in [(0, 10), (1, 2), (3, 1000), (4, 1)] {
            let events = s.events_after(after, limit).unwrap();
            assert_eq!(events.len(), limit.min(5 - after as usize));
        }
        // The statement `events_after` ran, from the cache.
        let stmt = s.conn.prepare_cached(EVENTS_AFTER_SQL).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }

    /// The lookups of the receive, sync and event-log paths run from the statement cache: a
    /// sender's peer row (read for every received envelope and hello), its stored hello (sync
    /// answers), the pruned-seed check of every applied message and the event sequences. An
    /// uncached statement is parsed and compiled again on every call, which showed as SQLite's
    /// parser in the profile of an idle node of 100 (each periodic hello reads its sender's
    /// row).
    #[test]
    fn hot_lookups_are_compiled_once() {
        use rusqlite::StatementStatus;
        let (_dir, s) = temp_store();
        let id = public(1).node_id;
        let seed = SeedId::from_bytes([7; 16]);
        for _ in 0..3 {
            assert!(s.peer(&id).unwrap().is_none());
            assert!(s.peer_hello(&id).unwrap().is_none());
            assert!(!s.is_pruned(&seed).unwrap());
            assert_eq!(s.last_event_seq().unwrap(), 0);
            assert_eq!(s.last_event_seq_issued().unwrap(), 0);
            assert_eq!(s.sync_mark().unwrap().last_row, 0);
        }
        let runs = |sql: &str| {
            let stmt = s.conn.prepare_cached(sql).unwrap();
            stmt.get_status(StatementStatus::Run)
        };
        // Each ran three times from one compiled statement (an uncached one would be new here,
        // never run).
        assert_eq!(runs(PEER_BY_ID), 3);
        assert_eq!(runs("SELECT hello FROM peers WHERE node_id = ?1"), 3);
        assert_eq!(
            runs("SELECT EXISTS(SELECT 1 FROM pruned_seeds WHERE seed_id = ?1)"),
            3
        );
        assert_eq!(runs("SELECT COALESCE(MAX(seq), 0) FROM events"), 3);
        assert_eq!(
            runs("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"),
            3
        );
    }

    /// Every migration from the fourth on can be undone for the tests of old stores: a
    /// database downgraded to version `v` has the schema of one that ran the first `v`
    /// migrations, and one downgraded to version 3 migrates again to the current schema.
    #[test]
    fn every_migration_has_its_undo() {
        let versions: Vec<usize> = UNDO.iter().map(|(v, _)| *v).collect();
        let expected: Vec<usize> = (4..=SCHEMA_VERSION).rev().collect();
        assert_eq!(
            versions, expected,
            "UNDO lists each migration from the newest down"
        );
        let dir = tempfile::tempdir().unwrap();
        let schema = |conn: &Connection| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let open = |name: &str| Store::open(&dir.path().join(name), &StoreConfig::default());
        for v in 3..SCHEMA_VERSION {
            let fresh = Connection::open(dir.path().join(format!("fresh{v}"))).unwrap();
            for sql in &MIGRATIONS[..v] {
                fresh.execute_batch(sql).unwrap();
            }
            let s = open(&format!("down{v}")).unwrap();
            downgrade(&s.conn, v);
            assert_eq!(schema(&s.conn), schema(&fresh), "version {v}");
        }
        let current = schema(&open("current").unwrap().conn);
        assert_eq!(
            schema(&open("down3").unwrap().conn),
            current,
            "migrated again"
        );
    }

    /// The state digest read from the seeds' stored shares equals the digest of their states;
    /// a store from before the shares gets them when it migrates, and a seed written without
    /// one (by a process of an older version) is hashed from its state: the digest is the same.
    #[test]
    fn the_digest_from_stored_shares_is_the_digest_of_the_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let me = public(1).node_id;
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(s.digest().unwrap(), state::digest(&[]));
        for tag in 1..=3 {
            publish_test_seed(&mut s, &me, tag, 1_000 * u64::from(tag));
        }
        let expected = state::digest(&s.all_views().unwrap());
        assert_eq!(s.digest().unwrap(), expected);
        downgrade(&s.conn, 13);
        // An older version wrote another text for the same state.
        s.conn
            .execute_batch("UPDATE seeds SET view = view || ' '")
            .unwrap();
        drop(s);
        let mut s = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(s.digest().unwrap(), expected, "after the migration");
        // Each share is the hash of the stored text, rewritten as this version writes it: a
        // later write of the same state changes neither (and fires no trigger).
        let rows: Vec<(String, Vec<u8>)> = s
            .conn
            .prepare("SELECT view, view_hash FROM seeds")
            .unwrap()
            .query_map([], |r| <(String, Vec<u8>)>::try_from(r))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), 3);
        for (text, share) in rows {
            assert!(!text.ends_with(' '), "{text}");
            assert_eq!(share, state::view_hash(text.as_bytes()));
        }
        let set_share = |share: Option<&[u8]>| {
            let id = SeedId::from_bytes([2; 16]);
            s.conn
                .execute(
                    "UPDATE seeds SET view_hash = ?2 WHERE id = ?1",
                    params![id.as_str(), share],
                )
                .unwrap();
        };
        set_share(None);
        assert_eq!(s.digest().unwrap(), expected, "a seed without its share");
        set_share(Some(&[0]));
        assert_eq!(s.digest().unwrap(), expected, "a corrupt share");
        assert_eq!(s.fill_digest_shares().unwrap(), 1, "repaired at start");
        assert_eq!(s.digest().unwrap(), expected);
        let plan = s.query_plan(DIGEST_SQL, []);
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX seeds_digest")),
            "{plan:#?}"
        );
    }

    /// The alert sample (every `alerts.interval_ms`, on every node) reads the oldest waiting
    /// message from its partial index, not by reading every stored message.
    #[test]
    fn the_oldest_waiting_message_is_read_from_its_index() {
        let (_dir, s) = temp_store();
        s.assert_searches(OLDEST_PENDING_SQL, [], "messages_pending");
    }

    /// A batch of 10,000 received seeds applies in one transaction (a peer's history imported
    /// at once), each in a savepoint of its own, whose statement journal SQLite moves from
    /// memory to a temporary file once it outgrows `SQLITE_CONFIG_STMTJRNL_SPILL` (64 KiB by
    /// default). At 256 KiB (tried in session 27) the 6,942nd seed failed with `SQLITE_FULL`:
    /// SQLite writes the whole in-memory block to the file in one call, and its unix file
    /// layer writes at most 0x1ffff bytes per call (`seekAndWriteFd` masks the length; an
    /// assertion in a `SQLITE_DEBUG` build), so any threshold over 128 KiB fails the statement
    /// that moves the journal. The default writes 64 KiB, well within.
    #[test]
    fn ten_thousand_received_seeds_apply_in_one_batch() {
        let (_dir, mut s) = temp_store();
        // Envelopes of a real one's size: the ML-DSA-44 signature alone is 2,420 bytes.
        let envelope = vec![7u8; 5_000];
        let authors: Vec<PublicIdentity> = (1..=200).map(public).collect();
        s.begin_batch(Ops::Savepoint).unwrap();
        for i in 0..10_000u32 {
            let [a, b, c, d] = i.to_le_bytes();
            let mut message = created_by(&authors[i as usize % authors.len()], 1);
            message.id = MessageId::from_bytes([a, b, c, d, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
            if let Body::SeedCreated(seed) = &mut message.body {
                seed.id = SeedId::from_bytes([a, b, c, d, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]);
            }
            let (outcome, _) = s
                .apply_remote(&message, &envelope, 2_000)
                .unwrap_or_else(|e| panic!("seed {i}: {e}"));
            assert_eq!(outcome, RemoteOutcome::Applied, "seed {i}");
        }
        s.end_batch(true).unwrap();
        assert_eq!(s.status_counts().unwrap()[&SeedStatus::Open], 10_000);
    }

    /// In a batch whose operations share its transaction ([`Ops::Shared`], no savepoint
    /// each), an operation that fails after it wrote spoils the batch: the operations after it
    /// fail at once, and the batch only rolls back: nothing of it is stored, the failing
    /// operation's first writes included. One that fails before it wrote (at its first
    /// statement) or writes nothing (a copy) leaves the batch whole.
    #[test]
    fn an_operation_that_fails_after_it_wrote_spoils_a_shared_batch() {
        let (_dir, mut s) = temp_store();
        let author = public(2);
        let seeds: Vec<Message> = (1..=4).map(|tag| created_by(&author, tag)).collect();
        // The seed's events are its last write: its seen, message and seed rows come first.
        fail_writes(&s, "events", "seed_id", seeds[1].seed_id().as_str());
        // The seen row is its first write.
        fail_writes(&s, "seen", "message_id", seeds[2].id.as_str());
        s.begin_batch(Ops::Shared).unwrap();
        s.apply_remote(&seeds[0], b"one", 2_000).unwrap();
        let err = s.apply_remote(&seeds[2], b"three", 2_000).unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert!(!s.batch_spoiled(), "nothing was written before the failure");
        let (outcome, _) = s.apply_remote(&seeds[0], b"one", 2_000).unwrap();
        assert_eq!(outcome, RemoteOutcome::Duplicate);
        assert!(!s.batch_spoiled(), "a copy writes nothing");
        let err = s.apply_remote(&seeds[1], b"two", 2_000).unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert!(s.batch_spoiled());
        let err = s.apply_remote(&seeds[3], b"four", 2_000).unwrap_err();
        assert!(err.to_string().contains("failed after it wrote"), "{err}");
        let err = s.end_batch(true).unwrap_err();
        assert!(err.to_string().contains("failed after it wrote"), "{err}");
        assert!(!s.in_batch() && !s.batch_spoiled());
        assert!(
            s.seeds(None, 10).unwrap().is_empty(),
            "the batch was rolled back"
        );
        assert!(
            !s.is_known(&seeds[1].id).unwrap(),
            "the failed seed's first writes too"
        );
        // The same operations, the faulty one left out, commit together.
        s.begin_batch(Ops::Shared).unwrap();
        for m in [&seeds[0], &seeds[3]] {
            let (outcome, _) = s.apply_remote(m, b"env", 2_000).unwrap();
            assert_eq!(outcome, RemoteOutcome::Applied);
        }
        s.end_batch(true).unwrap();
        assert_eq!(s.seeds(None, 10).unwrap().len(), 2);
        // In a batch of savepoints the failed operation rolls back alone.
        s.begin_batch(Ops::Savepoint).unwrap();
        assert!(s.apply_remote(&seeds[1], b"two", 2_000).is_err());
        assert!(!s.batch_spoiled());
        s.end_batch(true).unwrap();
        assert!(!s.is_known(&seeds[1].id).unwrap());
    }

    /// A message of the node's own that fails after it wrote (its seal failed: no hello yet
    /// from a member of a private seed's audience, say; or its rules refused it) is no fault:
    /// inside a shared batch (a decision made while frames are received) it takes a
    /// savepoint of its own, rolls back alone and leaves the batch whole. Without it, such a
    /// decision, due again at every frame about its seed, spoiled batch after batch.
    #[test]
    fn a_local_message_refused_after_it_wrote_leaves_a_shared_batch_whole() {
        let (_dir, mut s) = temp_store();
        let me = public(1).node_id;
        let (seed, _) = publish_test_seed(&mut s, &me, 1, 2_000);
        let received = created_by(&public(2), 5);
        s.begin_batch(Ops::Shared).unwrap();
        s.apply_remote(&received, b"env", 2_000).unwrap();
        let clock = s.lamport_clock().unwrap();
        let err = s
            .commit_local(
                &me,
                &seed,
                2_100,
                |_| {
                    Ok(Body::SeedCancelled(crate::model::Cancellation {
                        seed_id: seed.clone(),
                        after: None,
                    }))
                },
                |_, _| Err(Error::internal("cannot seal")),
            )
            .unwrap_err();
        assert!(err.to_string().contains("cannot seal"), "{err}");
        assert!(!s.batch_spoiled());
        assert_eq!(
            s.lamport_clock().unwrap(),
            clock,
            "its writes were rolled back"
        );
        s.end_batch(true).unwrap();
        assert_eq!(s.seeds(None, 10).unwrap().len(), 2);
        assert_eq!(s.status_counts().unwrap()[&SeedStatus::Open], 2);
    }

    /// A message received again is a duplicate that writes nothing, alone or among others in a
    /// batch: its caller counts it in memory (issue 13: a copy cost a commit).
    #[test]
    fn a_known_message_is_a_duplicate_that_writes_nothing() {
        let (_dir, mut s) = temp_store();
        let author = public(2);
        let seed = |tag: u8| created_by(&author, tag);
        let (first, second) = (seed(1), seed(2));
        let (outcome, _) = s.apply_remote(&first, b"one", 2_000).unwrap();
        assert_eq!(outcome, RemoteOutcome::Applied);
        let before = (s.total_changes(), s.counters().unwrap());
        let (outcome, events) = s.apply_remote(&first, b"one", 3_000).unwrap();
        assert_eq!(outcome, RemoteOutcome::Duplicate);
        assert!(events.is_empty());
        assert_eq!((s.total_changes(), s.counters().unwrap()), before);
        let all = [(&first, &b"one"[..]), (&second, b"two"), (&second, b"two")];
        assert_eq!(
            s.apply_remote_all(all, 3_000).unwrap(),
            [
                RemoteOutcome::Duplicate,
                RemoteOutcome::Applied,
                RemoteOutcome::Duplicate
            ]
        );
        assert_eq!(s.seeds(None, 10).unwrap().len(), 2);
    }

    /// A received message is stored in one write of its row, with its envelope and its
    /// verdict, and its author's peer row is written for the first of its stored messages
    /// only. Each further write of a message row wrote its envelope's overflow pages again,
    /// and each write of the peer row its page: about every received frame did both. A stored
    /// message whose verdict a newcomer changes (a bid that waited for its seed) is still
    /// updated.
    #[test]
    fn a_received_message_is_written_once_and_its_author_row_once() {
        use rusqlite::hooks::Action;
        use std::sync::{Arc, Mutex};
        let (_dir, mut s) = temp_store();
        let author = public(2);
        let bidder = public(3);
        for peer in [&author, &bidder] {
            s.upsert_peer(peer, "p", &[], b"hello", 1_000, &admission(8, None))
                .unwrap();
        }
        // A bid on the third seed arrives before the seed: it waits.
        let bid = Message {
            id: MessageId::from_bytes([9; 16]),
            sender: bidder.node_id.clone(),
            lamport: 10,
            timestamp: 2_000,
            body: Body::BidPlaced(crate::model::Bid {
                id: crate::model::BidId::from_bytes([9; 16]),
                seed_id: SeedId::from_bytes([3; 16]),
                bidder: bidder.node_id.clone(),
                price: 5,
            }),
        };
        let (outcome, _) = s.apply_remote(&bid, b"bid", 2_000).unwrap();
        assert!(matches!(outcome, RemoteOutcome::Deferred(_)), "{outcome:?}");
        assert_eq!(s.oldest_pending_message().unwrap(), Some(2_000));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let seen = writes.clone();
        s.conn
            .update_hook(Some(move |action, _: &str, table: &str, _| {
                seen.lock().unwrap().push((action, table.to_owned()));
            }))
            .unwrap();
        for tag in 1..=3u8 {
            let message = created_by(&author, tag);
            let envelope = vec![tag; 5_000];
            let (outcome, _) = s.apply_remote(&message, &envelope, 2_000).unwrap();
            assert_eq!(outcome, RemoteOutcome::Applied);
            let (stored, verdict): (Vec<u8>, String) = s
                .conn
                .query_row(
                    "SELECT envelope, verdict FROM messages WHERE id = ?1",
                    [message.id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(stored, envelope);
            assert_eq!(
                from_json::<Verdict>(&verdict, "verdict").unwrap(),
                Verdict::Applied
            );
        }
        // The third seed took the waiting bid in: its verdict was updated.
        let verdict: String = s
            .conn
            .query_row(
                "SELECT verdict FROM messages WHERE id = ?1",
                [bid.id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            from_json::<Verdict>(&verdict, "verdict").unwrap(),
            Verdict::Applied
        );
        assert_eq!(
            s.oldest_pending_message().unwrap(),
            None,
            "nothing waits any more"
        );
        let view = s.seed(&SeedId::from_bytes([3; 16])).unwrap().unwrap();
        assert_eq!(view.bids.len(), 1, "{view:?}");
        s.conn
            .update_hook(None::<fn(Action, &str, &str, i64)>)
            .unwrap();
        let writes = writes.lock().unwrap();
        let count = |action: Action, table: &str| {
            writes
                .iter()
                .filter(|(a, t)| *a == action && t == table)
                .count()
        };
        assert_eq!(count(Action::SQLITE_INSERT, "messages"), 3);
        assert_eq!(count(Action::SQLITE_UPDATE, "messages"), 1, "{writes:?}");
        assert_eq!(count(Action::SQLITE_UPDATE, "peers"), 1, "{writes:?}");
    }

    /// The WAL hook that rings the bell replaces SQLite's automatic checkpoint: the store runs
    /// it, so the log is reused instead of growing with every commit.
    #[test]
    fn the_log_is_still_checkpointed_behind_the_commit_bell() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            sync: SyncMode::Normal,
            ..StoreConfig::default()
        };
        let path = dir.path().join("db");
        let mut s = Store::open(&path, &config).unwrap();
        assert!(s.bell().is_some());
        let detail = "x".repeat(3000);
        for at in 0..3000 {
            s.record_event(
                at,
                EventKind::NodeStarted {
                    node_id: public(1).node_id,
                    transport: Some(detail.clone()),
                },
            )
            .unwrap();
        }
        // 3,000 commits of a page or more each; checkpointed at 1,000 pages, the log stays
        // near that size (4 MiB of pages).
        let wal = std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
        assert!(wal < 6 << 20, "the log grew to {wal} bytes");
    }

    /// A peer's digest makes the node list its own most recently changed seeds: only those
    /// seeds' messages are read. Before, every stored message was read and sorted, for each
    /// digest (800,000 rows at 100,000 seeds).
    #[test]
    fn the_sync_digest_lists_the_latest_seeds_and_reads_only_their_messages() {
        use crate::model::{Body, Cancellation};
        let (_dir, mut s) = temp_store();
        let me = public(1).node_id;
        let t0: Millis = 1_700_000_000_000;
        let ids: Vec<SeedId> = (1..=5u8)
            .map(|tag| publish_test_seed(&mut s, &me, tag, t0 + u64::from(tag) * 1_000).0)
            .collect();
        // The second changes last.
        let cancel = Body::SeedCancelled(Cancellation {
            seed_id: ids[1].clone(),
            after: None,
        });
        s.commit_local(
            &me,
            &ids[1],
            t0 + 10_000,
            |_| Ok(cancel),
            |_, _| Ok(b"env".to_vec()),
        )
        .unwrap();
        let digest = s.sync_digest(3).unwrap();
        let listed: Vec<String> = digest.iter().map(|d| hex::encode(&d.seed)).collect();
        let expected: Vec<String> = [1, 4, 3].iter().map(|i| ids[*i].to_string()).collect();
        assert_eq!(listed, expected, "most recently changed first, at most 3");
        assert_eq!(digest[0].count, 2, "its creation and its cancellation");
        assert_eq!(digest[1].count, 1);
        assert_eq!(s.sync_digest(100).unwrap().len(), 5);
        // Read through the seeds' index, never a scan of the messages.
        let plan = s.query_plan(SYNC_DIGEST_SQL, [3]);
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN m")),
            "{plan:#?}"
        );
        assert!(
            plan.iter().any(|step| step.contains("seeds_by_update")),
            "{plan:#?}"
        );
    }

    #[test]
    fn only_a_committed_local_operation_queues_an_outbox_row() {
        use crate::model::{Deadlines, SandboxLevel, Seed, rules};
        let (_dir, mut s) = temp_store();
        let me = public(1).node_id;
        let now = 1_700_000_000_000;
        let seed = Seed {
            id: SeedId::from_bytes([3; 16]),
            publisher: me.clone(),
            command: "true".into(),
            description: String::new(),
            min_price: 1,
            max_price: 10,
            bid_window_secs: 30,
            max_bids: 3,
            timeout_secs: 60,
            created_at: now,
            audience: Vec::new(),
            network: false,
            isolation: SandboxLevel::Full,
            rules: rules::V2,
            deadlines: Some(Deadlines::default()),
            replication: None,
        };
        let id = seed.id.clone();
        let failed = s.commit_local(
            &me,
            &id,
            now,
            |_| Err(Error::internal("refused")),
            |_, _| Ok(Vec::new()),
        );
        assert!(failed.is_err());
        assert_eq!(
            s.outbox_pending().unwrap(),
            0,
            "a refused commit queues nothing"
        );
        s.commit_local(
            &me,
            &id,
            now,
            |_| Ok(Body::SeedCreated(seed.clone())),
            |_, _| Ok(b"envelope".to_vec()),
        )
        .unwrap();
        assert_eq!(s.outbox_due(now, 10).unwrap().len(), 1);

        // What became of a batch of sends is written in one go: sent, or tried again later.
        let other = SeedId::from_bytes([4; 16]);
        let seed = Seed {
            id: other.clone(),
            ..seed
        };
        s.commit_local(
            &me,
            &other,
            now,
            |_| Ok(Body::SeedCreated(seed)),
            |_, _| Ok(b"envelope 2".to_vec()),
        )
        .unwrap();
        let due = s.outbox_due(now, 10).unwrap();
        assert_eq!(due.len(), 2);
        let last = s.last_event_seq().unwrap();
        let failed = EventKind::SendFailed {
            message_id: due[1].message_id.clone(),
            detail: "unreachable".into(),
        };
        s.outbox_settle(
            &[due[0].seq],
            &[(due[1].seq, now + 500)],
            vec![failed.clone()],
            now,
        )
        .unwrap();
        assert_eq!(s.outbox_pending().unwrap(), 1, "one sent, one to retry");
        let events = s.events_after(last, 10).unwrap();
        assert_eq!(
            events.iter().map(|e| &e.kind).collect::<Vec<_>>(),
            [&failed],
            "the failed send's event, once"
        );
        assert!(s.outbox_due(now, 10).unwrap().is_empty());
        let again = s.outbox_due(now + 500, 10).unwrap();
        assert_eq!(
            (again.len(), again[0].seq, again[0].attempts),
            (1, due[1].seq, 1)
        );
        assert_eq!(s.outbox_next_attempt().unwrap(), Some(now + 500));
        assert_eq!(s.counters().unwrap().get("messages.sent"), Some(&1));
    }

    fn admission(max_peers: usize, address: Option<&str>) -> Admission {
        Admission {
            max_peers,
            idle_before: 1_000,
            address: address.map(str::to_owned),
            max_per_address: 2,
        }
    }

    fn ids(store: &Store) -> Vec<NodeId> {
        store
            .peers()
            .unwrap()
            .into_iter()
            .map(|p| p.identity.node_id)
            .collect()
    }

    #[test]
    fn a_full_table_evicts_idle_then_hello_only_peers_and_refuses_when_all_are_active() {
        let (_dir, mut s) = temp_store();
        let p: Vec<PublicIdentity> = (1..=6).map(public).collect();
        let add = |s: &mut Store, i: usize, now: Millis, a: &Admission| {
            s.upsert_peer(&p[i], "p", &[], b"hello", now, a).unwrap()
        };
        let a = admission(3, None);
        // 0 is idle (last hello before 1,000), 1 and 2 are active authors.
        assert_eq!(add(&mut s, 0, 500, &a), PeerUpdate::New);
        assert_eq!(add(&mut s, 1, 2_000, &a), PeerUpdate::New);
        assert_eq!(add(&mut s, 2, 3_000, &a), PeerUpdate::New);
        s.conn
            .execute(
                "UPDATE peers SET last_active = 1 WHERE node_id != ?1",
                [p[0].node_id.as_str()],
            )
            .unwrap();
        // The idle peer makes room first.
        assert_eq!(add(&mut s, 3, 4_000, &a), PeerUpdate::New);
        assert!(!ids(&s).contains(&p[0].node_id));
        // Then the hello-only newcomer 3 goes before active peers.
        assert_eq!(add(&mut s, 4, 5_000, &a), PeerUpdate::New);
        assert!(!ids(&s).contains(&p[3].node_id));
        // All active now: a newcomer is refused, a known peer still refreshes.
        s.conn
            .execute("UPDATE peers SET last_active = 1", [])
            .unwrap();
        assert_eq!(add(&mut s, 5, 6_000, &a), PeerUpdate::Refused);
        assert_eq!(add(&mut s, 1, 6_000, &a), PeerUpdate::Refreshed);
        assert_eq!(ids(&s).len(), 3);
        assert_eq!(s.counters().unwrap()["peers.evicted"], 2);
        // The refusal is the caller's to count (in memory): the store wrote nothing for it.
        assert_eq!(s.counters().unwrap().get("peers.refused"), None);
    }

    #[test]
    fn one_address_gets_at_most_its_share_of_the_table() {
        let (_dir, mut s) = temp_store();
        let there = admission(100, Some("192.0.2.1"));
        for tag in 1..=2 {
            let r = s.upsert_peer(&public(tag), "p", &[], b"h", 2_000, &there);
            assert_eq!(r.unwrap(), PeerUpdate::New);
        }
        let r = s.upsert_peer(&public(3), "p", &[], b"h", 2_000, &there);
        assert_eq!(r.unwrap(), PeerUpdate::Refused);
        let elsewhere = admission(100, Some("192.0.2.2"));
        let r = s.upsert_peer(&public(3), "p", &[], b"h", 2_000, &elsewhere);
        assert_eq!(r.unwrap(), PeerUpdate::New);
    }

    #[test]
    fn counters_beyond_i64_are_refused_and_wrapped_ones_are_repaired_by_the_migration() {
        assert!(sql_lamport(MAX_LAMPORT).is_ok());
        let err = sql_lamport(MAX_LAMPORT + 1).unwrap_err();
        assert!(err.to_string().contains("Lamport counter"), "{err}");

        // A version 3 database as an older build left it after a message with 2^64 - 1.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Store::open(&path, &StoreConfig::default()).unwrap();
        let id = public(1).node_id;
        s.conn
            .execute_batch(&format!(
                "INSERT INTO meta(key, value) VALUES ('lamport', '18446744073709551615');
                 INSERT INTO seen(message_id, first_seen, expires_at, sender, lamport)
                     VALUES ('00', 0, 9, '{id}', -1);
                 INSERT INTO messages(id, seed_id, kind, sender, lamport, timestamp, body,
                                      origin, received_at)
                     VALUES ('01', 's', 'seed_created', '{id}', -1, 0, '{{}}', 'remote', 0),
                            ('02', 's', 'bid_placed', '{id}', 7, 0, '{{}}', 'remote', 0);
                 INSERT INTO peers(node_id, name, addresses, signing_public, kem_public,
                                   key_epoch, first_seen, last_seen, replay_floor)
                     VALUES ('{id}', 'p', '[]', x'', x'', 0, 0, 0, -1);"
            ))
            .unwrap();
        downgrade(&s.conn, 3);
        drop(s);
        let s = Store::open(&path, &StoreConfig::default()).unwrap();
        assert_eq!(s.lamport_clock().unwrap(), 7);
        let q = |sql: &str| -> Option<i64> { s.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(q("SELECT lamport FROM seen"), None);
        assert_eq!(
            q("SELECT lamport FROM messages WHERE id = '01'"),
            Some(i64::MAX)
        );
        assert_eq!(q("SELECT replay_floor FROM peers"), Some(0));
    }
}
