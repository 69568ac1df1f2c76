//! Domain objects: seeds, bids, claims, results, settlements and the messages that carry them.
//!
//! Pure data: nothing here touches sockets, clocks or files. Times are Unix milliseconds passed
//! in by the caller; identifiers are lowercase hexadecimal strings.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, ErrorKind};

/// Unix time in milliseconds.
pub type Millis = u64;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $bytes:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Length of the identifier in bytes (it is written as twice as many hex digits).
            pub const BYTES: usize = $bytes;

            /// Parses an identifier written as lowercase hexadecimal.
            pub fn parse(text: &str) -> Result<Self, Error> {
                let ok = text.len() == 2 * Self::BYTES
                    && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if ok {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(Error::new(
                        ErrorKind::Validation,
                        format!(
                            "invalid {}: expected {} lowercase hex digits, got {:?}",
                            stringify!($name),
                            2 * Self::BYTES,
                            truncate_for_message(text)
                        ),
                    ))
                }
            }

            /// Builds an identifier from raw bytes.
            pub fn from_bytes(bytes: [u8; $bytes]) -> Self {
                Self(hex::encode(bytes))
            }

            /// The identifier as hexadecimal text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first 8 hex digits, for human-readable output.
            pub fn short(&self) -> &str {
                &self.0[..8]
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }
    };
}

hex_id!(
    /// Identifies a node (32 bytes).
    NodeId,
    32
);
hex_id!(
    /// Identifies a seed (16 random bytes chosen by its publisher).
    SeedId,
    16
);
hex_id!(
    /// Identifies a bid (16 random bytes chosen by its bidder).
    BidId,
    16
);
hex_id!(
    /// Identifies a message (16 random bytes chosen by its sender).
    MessageId,
    16
);

pub(crate) fn truncate_for_message(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}...")
    }
}

/// Limits on seed fields, shared by local validation and remote message checks.
pub mod limits {
    /// Longest command, in bytes.
    pub const MAX_COMMAND_BYTES: usize = 8 * 1024;
    /// Longest description, in bytes.
    pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
    /// Longest settlement note, in bytes.
    pub const MAX_NOTE_BYTES: usize = 2 * 1024;
    /// Longest output excerpt carried in a result, in bytes (so that a result fits a UDP
    /// datagram with room for encryption to the whole audience).
    pub const MAX_EXCERPT_BYTES: usize = 16 * 1024;
    /// Most sandbox features a result may list.
    pub const MAX_SANDBOX_FEATURES: usize = 32;
    /// Most nodes a seed may be private to.
    pub const MAX_AUDIENCE: usize = 32;
    /// Longest bid window, in seconds (one week).
    pub const MAX_BID_WINDOW_SECS: u64 = 7 * 24 * 3600;
    /// Longest task timeout, in seconds (one day).
    pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
    /// Most bids a seed may accept.
    pub const MAX_BIDS: u32 = 1000;
    /// Longest claim window, result grace or settlement window, in seconds (30 days).
    pub const MAX_DEADLINE_SECS: u64 = 30 * 24 * 3600;
    /// Most replicas a replicated seed may ask for, escalations included (rules 3).
    pub const MAX_REPLICAS: u32 = 16;
}

/// The lifecycle rule set a seed follows; a node refuses seeds under rules it does not know
/// (see `docs/PROTOCOL.md`, section 4).
pub mod rules {
    /// Rules 1: no deadlines; a seed may wait for its claim, result or settlement forever.
    pub const V1: u32 = 1;
    /// Rules 2: claim, result and settlement deadlines enforced by the publisher's node.
    pub const V2: u32 = 2;
    /// Rules 3: rules 2 plus replicated execution with an output-hash quorum
    /// ([`super::Replication`]).
    pub const V3: u32 = 3;
    /// The newest rule set this build knows. New seeds are written under [`V2`], or under
    /// [`V3`] when they ask for replication, so that nodes that know only rules 2 keep
    /// taking part in every seed that does not need rules 3.
    pub const CURRENT: u32 = V3;
}

fn rules_v1() -> u32 {
    rules::V1
}

fn is_rules_v1(r: &u32) -> bool {
    *r == rules::V1
}

/// How long each later lifecycle step may take (rules 2). Every deadline is acted on by the
/// publisher's node with a signed message, so a seed's state stays a function of its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Deadlines {
    /// Seconds the winner has to claim after an award (or a reassignment); then the publisher
    /// reassigns the seed to the next best bid, or it expires when none is left.
    #[schema(required)]
    pub claim_secs: u64,
    /// Seconds beyond the seed's `timeout_secs` the claimer has to report its result after
    /// claiming; then the publisher may declare the round failed.
    #[schema(required)]
    pub result_grace_secs: u64,
    /// Seconds the publisher has to settle after the result; then its node settles by the
    /// result (accepted if it succeeded, rejected otherwise).
    #[schema(required)]
    pub settle_secs: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            claim_secs: 600,
            result_grace_secs: 300,
            settle_secs: 24 * 3600,
        }
    }
}

impl Deadlines {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("claim window", self.claim_secs),
            ("result grace", self.result_grace_secs),
            ("settlement window", self.settle_secs),
        ] {
            if v == 0 || v > limits::MAX_DEADLINE_SECS {
                return Err(format!(
                    "{name} must be between 1 and {} seconds, got {v}",
                    limits::MAX_DEADLINE_SECS
                ));
            }
        }
        Ok(())
    }
}

/// A task offered to the network: a shell command with a price range and a bid window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Seed {
    /// Seed identifier.
    pub id: SeedId,
    /// The node that published the seed; only it may close bidding, cancel and settle.
    pub publisher: NodeId,
    /// Shell command the winning bidder runs.
    pub command: String,
    /// Free-form description for humans.
    pub description: String,
    /// Lowest acceptable bid price (inclusive).
    pub min_price: u64,
    /// Highest acceptable bid price (inclusive).
    pub max_price: u64,
    /// Seconds after `created_at` during which bids are accepted.
    pub bid_window_secs: u64,
    /// Most bids taken into account; bidding closes early when this many arrive.
    pub max_bids: u32,
    /// Wall-clock limit for running the command, in seconds.
    pub timeout_secs: u64,
    /// Publication time (Unix ms); equal to the timestamp of the message that created it.
    pub created_at: Millis,
    /// Nodes the seed is private to (besides the publisher): every message about it is sealed
    /// to them. Empty for a public seed.
    #[serde(default)]
    #[schema(required)]
    pub audience: Vec<NodeId>,
    /// Whether the command needs network access. A node bids on such a seed only when its
    /// `runner.allow_network` is set; otherwise tasks run without any network.
    #[serde(default, skip_serializing_if = "is_false")]
    pub network: bool,
    /// The strongest sandbox the command can work under (default [`SandboxLevel::Full`]: the
    /// task needs nothing the full sandbox takes away). A node bids only when the sandbox it
    /// would build is no stronger than this.
    #[serde(default, skip_serializing_if = "SandboxLevel::is_full")]
    pub isolation: SandboxLevel,
    /// The lifecycle rule set ([`rules`]); absent means rules 1. New seeds use rules 2, or
    /// rules 3 when they ask for replication.
    #[serde(default = "rules_v1", skip_serializing_if = "is_rules_v1")]
    pub rules: u32,
    /// The deadlines of later steps: present exactly when `rules` is 2 or later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<Deadlines>,
    /// Replicated execution (rules 3): how many runners run the command and how many of
    /// their results must agree. Absent: one runner, whose result counts as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// What a replicated seed asks for (rules 3): `replicas` runners run the command
/// independently, and the seed completes once `quorum` of them report the same
/// [`ResultKey`] (output hash and exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replication {
    /// Runners awarded at the close of bidding.
    pub replicas: u32,
    /// Agreeing results needed; more than half of `replicas`, so that at most one result can
    /// ever reach it.
    pub quorum: u32,
    /// Most runners the seed may ever be awarded to: without a quorum, the publisher's node
    /// escalates by awarding more (the next best bids) up to this many. At least `replicas`.
    pub max_replicas: u32,
    /// What the output hash covers: the combined stdout and stderr stream (default) or
    /// stdout alone (for commands whose diagnostics differ between machines).
    #[serde(default, skip_serializing_if = "OutputHash::is_combined")]
    pub hash: OutputHash,
}

impl Replication {
    /// Checks the bounds: `1 <= quorum <= replicas <= max_replicas <= MAX_REPLICAS` and
    /// `2 * quorum > replicas`.
    pub fn check(&self) -> Result<(), String> {
        let Replication {
            replicas,
            quorum,
            max_replicas,
            ..
        } = *self;
        if replicas == 0 || replicas > limits::MAX_REPLICAS {
            return Err(format!(
                "replicas must be between 1 and {}, got {replicas}",
                limits::MAX_REPLICAS
            ));
        }
        if quorum == 0 || quorum > replicas {
            return Err(format!(
                "quorum must be between 1 and the replicas ({replicas}), got {quorum}"
            ));
        }
        if 2 * quorum <= replicas {
            return Err(format!(
                "quorum {quorum} must be more than half of the replicas ({replicas}), so that only one result can reach it"
            ));
        }
        if max_replicas < replicas || max_replicas > limits::MAX_REPLICAS {
            return Err(format!(
                "max replicas must be between the replicas ({replicas}) and {}, got {max_replicas}",
                limits::MAX_REPLICAS
            ));
        }
        Ok(())
    }
}

/// What a runner's output hash covers (see [`Replication::hash`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputHash {
    /// SHA-256 over the combined stdout and stderr stream.
    #[default]
    Combined,
    /// SHA-256 over stdout alone.
    Stdout,
}

impl OutputHash {
    fn is_combined(&self) -> bool {
        *self == OutputHash::Combined
    }

    /// The name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputHash::Combined => "combined",
            OutputHash::Stdout => "stdout",
        }
    }
}

/// What replicated results are compared by: two results agree when both are equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct ResultKey {
    /// The output hash ([`TaskResult::output_sha256`]).
    pub output_sha256: String,
    /// The exit code (`None`: ended by a signal).
    #[schema(required)]
    pub exit_code: Option<i32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How strongly a task is isolated from the node that runs it (see `runner.sandbox` and the
/// README section "Running strangers' tasks").
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SandboxLevel {
    /// No isolation: the task runs as the node's user with resource limits only.
    None,
    /// Some isolation features were active, not all (see [`SandboxInfo::features`]).
    Partial,
    /// Every isolation feature: filesystem allow-list, private /tmp and /proc, PID, user and
    /// network namespaces, seccomp filter, no new privileges.
    #[default]
    Full,
}

impl SandboxLevel {
    fn is_full(&self) -> bool {
        *self == SandboxLevel::Full
    }

    /// The level's name as used in config files, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxLevel::None => "none",
            SandboxLevel::Partial => "partial",
            SandboxLevel::Full => "full",
        }
    }
}

crate::display_as_str!(SandboxLevel);

/// The sandbox a task ran in, as recorded by its runner in the [`TaskResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    /// Overall level.
    pub level: SandboxLevel,
    /// The isolation features that were active, by name (for example `landlock_fs`,
    /// `seccomp`, `pid_ns`, `net_ns`, `disk_quota`); see the README for the list.
    pub features: Vec<String>,
    /// Whether the task had network access (the seed asked for it and the runner allowed it).
    #[serde(default)]
    #[schema(required)]
    pub network: bool,
}

impl Default for SandboxInfo {
    /// What a result without sandbox information means: nothing is known to have been active.
    fn default() -> Self {
        SandboxInfo {
            level: SandboxLevel::None,
            features: Vec::new(),
            network: false,
        }
    }
}

impl SandboxInfo {
    fn is_unknown(&self) -> bool {
        *self == SandboxInfo::default()
    }

    fn check_fields(&self) -> Result<(), String> {
        if self.features.len() > limits::MAX_SANDBOX_FEATURES {
            return Err(format!(
                "sandbox lists {} features, the limit is {}",
                self.features.len(),
                limits::MAX_SANDBOX_FEATURES
            ));
        }
        let bad = |f: &String| {
            f.is_empty()
                || f.len() > 32
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if let Some(f) = self.features.iter().find(|f| bad(f)) {
            return Err(format!(
                "sandbox feature {:?} is not 1-32 characters of [a-z0-9_]",
                truncate_for_message(f)
            ));
        }
        Ok(())
    }
}

impl Seed {
    /// The instant (Unix ms) at which the bid window closes.
    pub fn window_end(&self) -> Millis {
        self.created_at
            .saturating_add(self.bid_window_secs.saturating_mul(1000))
    }

    /// Checks the seed's own fields; returns a description of the first problem found.
    pub fn check_fields(&self) -> Result<(), String> {
        if self.command.trim().is_empty() {
            return Err("command must not be empty".into());
        }
        check_bytes("command", &self.command, limits::MAX_COMMAND_BYTES)?;
        if self.command.contains('\0') {
            return Err("command must not contain NUL bytes".into());
        }
        check_bytes(
            "description",
            &self.description,
            limits::MAX_DESCRIPTION_BYTES,
        )?;
        if self.min_price > self.max_price {
            return Err(format!(
                "min price {} is above max price {}",
                self.min_price, self.max_price
            ));
        }
        check_from_one(
            "bid window",
            self.bid_window_secs,
            limits::MAX_BID_WINDOW_SECS,
            " seconds",
        )?;
        check_from_one(
            "max bids",
            self.max_bids.into(),
            limits::MAX_BIDS.into(),
            "",
        )?;
        if self.audience.len() > limits::MAX_AUDIENCE {
            return Err(format!(
                "a seed may be private to at most {} nodes, got {}",
                limits::MAX_AUDIENCE,
                self.audience.len()
            ));
        }
        if self.audience.contains(&self.publisher) {
            return Err("the audience must not list the publisher".into());
        }
        let mut sorted = self.audience.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.audience.len() {
            return Err("the audience lists a node twice".into());
        }
        check_from_one(
            "timeout",
            self.timeout_secs,
            limits::MAX_TIMEOUT_SECS,
            " seconds",
        )?;
        match (self.rules, &self.replication) {
            (rules::V3, None) => return Err("a rules 3 seed must carry its replication".into()),
            (rules::V3, Some(r)) => r.check()?,
            (_, Some(_)) if self.rules <= rules::V2 => {
                return Err("replication needs rules 3".into());
            }
            _ => {}
        }
        match (self.rules, &self.deadlines) {
            (rules::V1, None) => Ok(()),
            (rules::V1, Some(_)) => Err("a rules 1 seed has no deadlines".into()),
            (rules::V2 | rules::V3, Some(d)) => d.check(),
            (rules::V2 | rules::V3, None) => Err(format!(
                "a rules {} seed must carry its deadlines",
                self.rules
            )),
            (r, _) => Err(format!(
                "rule version {r} is not known here (this node knows 1 to {})",
                rules::CURRENT
            )),
        }
    }

    /// The seed's replication under rules 3, `None` for a seed run once.
    pub fn replication(&self) -> Option<&Replication> {
        self.replication
            .as_ref()
            .filter(|_| self.rules >= rules::V3)
    }

    /// The rule set a new seed with this replication is written under: rules 3 when it asks
    /// for replication, rules 2 otherwise.
    pub fn rules_for(replication: Option<&Replication>) -> u32 {
        if replication.is_some() {
            rules::V3
        } else {
            rules::V2
        }
    }

    /// The deadlines this seed follows, `None` under rules 1.
    pub fn deadlines(&self) -> Option<&Deadlines> {
        self.deadlines.as_ref().filter(|_| self.rules >= rules::V2)
    }
}

/// An offer to run a seed for a price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Bid {
    /// Bid identifier.
    pub id: BidId,
    /// The seed bid on.
    pub seed_id: SeedId,
    /// The bidding node (the message sender).
    pub bidder: NodeId,
    /// Offered price, within the seed's range.
    pub price: u64,
}

/// The publisher's decision that ends bidding: a winner among the considered bids, or none
/// (the seed expires).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// The seed whose bidding closes.
    pub seed_id: SeedId,
    /// Every bid the publisher took into account (at most `max_bids`, distinct bidders).
    pub considered: Vec<BidId>,
    /// The best of the considered bids under the winner rule; `None` only when none were.
    pub winner: Option<BidId>,
    /// Rules 3: every awarded bid, best first (the first `replicas` considered bids by the
    /// winner rule; `winner` is the first). Empty under earlier rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub winners: Vec<BidId>,
}

/// The winning bidder's claim on a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The claimed seed.
    pub seed_id: SeedId,
    /// The claiming node (the winning bidder).
    pub claimer: NodeId,
    /// The winning bid the claim rests on.
    pub bid_id: BidId,
}

/// What running a seed's command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskResult {
    /// The seed that was run.
    pub seed_id: SeedId,
    /// The node that ran it (the claimer).
    pub runner: NodeId,
    /// Exit code, absent when the process was ended by a signal.
    #[schema(required)]
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    #[schema(required)]
    pub signal: Option<i32>,
    /// Whether the wall-clock timeout ended the run.
    pub timed_out: bool,
    /// Whether the run was interrupted: the runner's node stopped (or crashed) while the
    /// command ran, and the command was killed (or found dead after a restart). The output
    /// fields then cover what the command wrote until then (nothing when found after a
    /// crash). Absent (false) in results of nodes that do not report it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Exit code 0, no timeout and not interrupted.
    pub success: bool,
    /// Run time in milliseconds.
    pub duration_ms: u64,
    /// SHA-256 over the whole combined stdout+stderr stream (stdout alone when the seed's
    /// replication asks for [`OutputHash::Stdout`]), lowercase hex.
    pub output_sha256: String,
    /// Total output size in bytes.
    pub output_bytes: u64,
    /// The first bytes of output (size-capped), lossily decoded as UTF-8.
    pub output_excerpt: String,
    /// Whether the excerpt is shorter than the output.
    pub output_truncated: bool,
    /// Start time (Unix ms).
    pub started_at: Millis,
    /// End time (Unix ms).
    pub finished_at: Millis,
    /// The sandbox the command ran in (absent from results of older nodes: level `none`).
    #[serde(default, skip_serializing_if = "SandboxInfo::is_unknown")]
    pub sandbox: SandboxInfo,
}

impl TaskResult {
    /// What replicated results are compared by (rules 3).
    pub fn key(&self) -> ResultKey {
        ResultKey {
            output_sha256: self.output_sha256.clone(),
            exit_code: self.exit_code,
        }
    }

    fn check_fields(&self) -> Result<(), String> {
        let hex_ok = self.output_sha256.len() == 64
            && self
                .output_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err("output hash must be 64 lowercase hex digits".into());
        }
        check_bytes(
            "output excerpt",
            &self.output_excerpt,
            limits::MAX_EXCERPT_BYTES,
        )?;
        if self.success != (self.exit_code == Some(0) && !self.timed_out && !self.interrupted) {
            return Err(
                "success must mean exit code 0 without timeout and without interruption".into(),
            );
        }
        if self.finished_at < self.started_at {
            return Err("result finishes before it starts".into());
        }
        self.sandbox.check_fields()
    }
}

/// How the publisher judged a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SettlementOutcome {
    /// The result is accepted and the winning price is due.
    Accepted,
    /// The result is rejected; nothing is due.
    Rejected,
}

/// The publisher's final word on a completed seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Settlement {
    /// The settled seed.
    pub seed_id: SeedId,
    /// Accepted or rejected.
    pub outcome: SettlementOutcome,
    /// Amount due: the winning price when accepted, 0 when rejected. Rules 3: the sum of the
    /// prices of the runners in `paid`.
    pub amount: u64,
    /// Free-form note.
    pub note: String,
    /// Rules 3, accepted: the runners paid, each one whose result agrees with the quorum
    /// (at least `quorum` of them). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paid: Vec<NodeId>,
}

/// The publisher withdraws a seed: while bidding is open, or (rules 2) once the winner let
/// its claim window pass or the round failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// The cancelled seed.
    pub seed_id: SeedId,
    /// Absent: bidding is still open. Rules 2: how the current round ended (its winner let
    /// the claim window pass, or it failed), so that replicas that have not seen every step
    /// yet never apply the cancellation to the wrong round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<RoundEnd>,
}

/// How a round of an awarded seed ended (rules 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundEnd {
    /// The winner did not claim within the claim window.
    Unclaimed,
    /// The claimer did not report a result within the seed's timeout plus result grace.
    Failed,
}

/// The publisher moves an awarded seed to the next best bid (rules 2): the winner of round
/// `round - 1` did not claim within the claim window, or that round failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The seed.
    pub seed_id: SeedId,
    /// The round this starts (the award is round 0).
    pub round: u32,
    /// The best considered bid whose bidder has not had a round; `None` when none is left
    /// (the seed expires).
    pub winner: Option<BidId>,
    /// How the previous round ended.
    pub after: RoundEnd,
}

/// The publisher declares a claimed round failed (rules 2): no result arrived within the
/// seed's timeout plus its result grace after the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The seed.
    pub seed_id: SeedId,
    /// The round that failed.
    pub round: u32,
}

/// The publisher awards a replicated seed to more runners (rules 3): the results it holds
/// reach no quorum, and every runner still in the race has reported or let its deadline pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// The seed.
    pub seed_id: SeedId,
    /// The escalation this is (the award is step 0).
    pub step: u32,
    /// The next best considered bids, as many as still lack to the quorum; empty when the
    /// quorum can no longer be reached (too few bids left, or `max_replicas` reached): the
    /// seed ends `inconclusive`.
    pub winners: Vec<BidId>,
    /// The claims and results of the runners still in the race that the publisher held when
    /// it escalated. They alone decide which runners count (claimed and reported in time) and
    /// which lapse, so claims and results that arrive later cannot undo the escalation.
    pub seen: Vec<MessageId>,
}

/// Lifecycle status of a seed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SeedStatus {
    /// Accepting bids, or awarded and waiting for the winner's claim.
    Open,
    /// The winning bidder claimed it.
    Claimed,
    /// The claimer reported a result.
    Completed,
    /// The publisher settled it (final).
    Settled,
    /// Bidding closed without bids, or every bidder let its turn lapse (final).
    Expired,
    /// The publisher cancelled it (final).
    Cancelled,
    /// The claimer did not report a result in time (rules 2); the publisher may reassign it
    /// to the next best bid or cancel it.
    Failed,
    /// The replicas' results reached no quorum and no more runners could be awarded
    /// (rules 3, final).
    Inconclusive,
}

impl SeedStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [SeedStatus; 8] = [
        SeedStatus::Open,
        SeedStatus::Claimed,
        SeedStatus::Completed,
        SeedStatus::Settled,
        SeedStatus::Expired,
        SeedStatus::Cancelled,
        SeedStatus::Failed,
        SeedStatus::Inconclusive,
    ];

    /// The status name used in JSON, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SeedStatus::Open => "open",
            SeedStatus::Claimed => "claimed",
            SeedStatus::Completed => "completed",
            SeedStatus::Settled => "settled",
            SeedStatus::Expired => "expired",
            SeedStatus::Cancelled => "cancelled",
            SeedStatus::Failed => "failed",
            SeedStatus::Inconclusive => "inconclusive",
        }
    }

    /// Parses a status name.
    pub fn parse(text: &str) -> Option<SeedStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether no further transition is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SeedStatus::Settled
                | SeedStatus::Expired
                | SeedStatus::Cancelled
                | SeedStatus::Inconclusive
        )
    }

    /// Whether `next` is reachable from `self` in zero or more lifecycle steps. Under rules 1
    /// the lifecycle only moves forward. Under rules 3 it does too, with one step back: a late
    /// replica's result counts only until the publisher's escalation ends that replica's turn,
    /// which may take a seed back from `completed` to `claimed` (section 3b of
    /// `docs/PROTOCOL.md`). Under rules 2 a round whose claim or result came after its deadline
    /// ends with the publisher's decision (section 4), so every status but the final ones may
    /// lead back to `open` through a reassignment.
    pub fn can_reach(self, next: SeedStatus, rules: u32) -> bool {
        use SeedStatus::*;
        if self.is_final() {
            return next == self;
        }
        if rules == rules::V2 {
            return true;
        }
        match self {
            Open => true,
            Claimed => matches!(next, Claimed | Completed | Settled | Inconclusive),
            Completed if rules == rules::V3 => {
                matches!(next, Claimed | Completed | Settled | Inconclusive)
            }
            Completed => matches!(next, Completed | Settled),
            Failed | Settled | Expired | Cancelled | Inconclusive => next == self,
        }
    }
}

crate::display_as_str!(SeedStatus);

/// The domain content of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Body {
    /// A seed is published.
    SeedCreated(Seed),
    /// A bid is placed.
    BidPlaced(Bid),
    /// The publisher closes bidding (award or expiry).
    BiddingClosed(Award),
    /// The winner claims the seed.
    SeedClaimed(Claim),
    /// The claimer reports its result.
    ResultReported(TaskResult),
    /// The publisher settles.
    SeedSettled(Settlement),
    /// The publisher cancels.
    SeedCancelled(Cancellation),
    /// The publisher moves the seed to the next best bid (rules 2).
    SeedReassigned(Reassignment),
    /// The publisher declares a claimed round failed (rules 2).
    SeedFailed(Failure),
    /// The publisher awards a replicated seed to more runners, or ends it inconclusive
    /// (rules 3).
    SeedEscalated(Escalation),
}

impl Body {
    /// The seed this body is about.
    pub fn seed_id(&self) -> &SeedId {
        match self {
            Body::SeedCreated(s) => &s.id,
            Body::BidPlaced(b) => &b.seed_id,
            Body::BiddingClosed(a) => &a.seed_id,
            Body::SeedClaimed(c) => &c.seed_id,
            Body::ResultReported(r) => &r.seed_id,
            Body::SeedSettled(s) => &s.seed_id,
            Body::SeedCancelled(c) => &c.seed_id,
            Body::SeedReassigned(r) => &r.seed_id,
            Body::SeedFailed(f) => &f.seed_id,
            Body::SeedEscalated(e) => &e.seed_id,
        }
    }

    /// The kind of this body.
    pub fn kind(&self) -> MessageKind {
        match self {
            Body::SeedCreated(_) => MessageKind::SeedCreated,
            Body::BidPlaced(_) => MessageKind::BidPlaced,
            Body::BiddingClosed(_) => MessageKind::BiddingClosed,
            Body::SeedClaimed(_) => MessageKind::SeedClaimed,
            Body::ResultReported(_) => MessageKind::ResultReported,
            Body::SeedSettled(_) => MessageKind::SeedSettled,
            Body::SeedCancelled(_) => MessageKind::SeedCancelled,
            Body::SeedReassigned(_) => MessageKind::SeedReassigned,
            Body::SeedFailed(_) => MessageKind::SeedFailed,
            Body::SeedEscalated(_) => MessageKind::SeedEscalated,
        }
    }
}

/// Message kinds, in the order the state machine applies them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// See [`Body::SeedCreated`].
    SeedCreated,
    /// See [`Body::BidPlaced`].
    BidPlaced,
    /// See [`Body::BiddingClosed`].
    BiddingClosed,
    /// See [`Body::SeedCancelled`].
    SeedCancelled,
    /// See [`Body::SeedClaimed`].
    SeedClaimed,
    /// See [`Body::ResultReported`].
    ResultReported,
    /// See [`Body::SeedSettled`].
    SeedSettled,
    /// See [`Body::SeedReassigned`].
    SeedReassigned,
    /// See [`Body::SeedFailed`].
    SeedFailed,
    /// See [`Body::SeedEscalated`].
    SeedEscalated,
}

impl MessageKind {
    /// The kind's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::SeedCreated => "seed_created",
            MessageKind::BidPlaced => "bid_placed",
            MessageKind::BiddingClosed => "bidding_closed",
            MessageKind::SeedCancelled => "seed_cancelled",
            MessageKind::SeedClaimed => "seed_claimed",
            MessageKind::ResultReported => "result_reported",
            MessageKind::SeedSettled => "seed_settled",
            MessageKind::SeedReassigned => "seed_reassigned",
            MessageKind::SeedFailed => "seed_failed",
            MessageKind::SeedEscalated => "seed_escalated",
        }
    }
}

crate::display_as_str!(MessageKind);

/// One signed-by-its-sender fact about a seed, as stored and as sent over the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Message identifier (random, chosen by the sender).
    pub id: MessageId,
    /// The sending node; the author of the fact.
    pub sender: NodeId,
    /// The sender's Lamport clock when it created the message.
    pub lamport: u64,
    /// The sender's wall clock when it created the message (Unix ms).
    pub timestamp: Millis,
    /// The fact itself.
    pub body: Body,
}

impl Message {
    /// The seed this message is about.
    pub fn seed_id(&self) -> &SeedId {
        self.body.seed_id()
    }

    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        self.body.kind()
    }

    /// Ordering key inside one kind: Lamport counter, then message id.
    pub(crate) fn order_key(&self) -> (u64, &str) {
        (self.lamport, self.id.as_str())
    }

    /// Checks everything that can be checked without other messages: field formats and sizes,
    /// and that the sender is the author the body names.
    pub fn check_well_formed(&self) -> Result<(), String> {
        match &self.body {
            Body::SeedCreated(seed) => {
                seed.check_fields()?;
                if seed.publisher != self.sender {
                    return Err("seed publisher differs from the message sender".into());
                }
                if seed.created_at != self.timestamp {
                    return Err("seed creation time differs from the message timestamp".into());
                }
            }
            Body::BidPlaced(bid) => {
                if bid.bidder != self.sender {
                    return Err("bidder differs from the message sender".into());
                }
            }
            Body::BiddingClosed(award) => {
                if let Some(w) = &award.winner
                    && !award.considered.contains(w)
                {
                    return Err("the winning bid is not among the considered bids".into());
                }
                if award.considered.len() > limits::MAX_BIDS as usize {
                    return Err("award considers more bids than any seed allows".into());
                }
                if !award.winners.is_empty() {
                    if award.winners.first() != award.winner.as_ref() {
                        return Err("the winner must be the first of the winners".into());
                    }
                    check_winners(&award.winners)?;
                    if award.winners.iter().any(|w| !award.considered.contains(w)) {
                        return Err("a winning bid is not among the considered bids".into());
                    }
                }
            }
            Body::SeedClaimed(claim) => {
                if claim.claimer != self.sender {
                    return Err("claimer differs from the message sender".into());
                }
            }
            Body::ResultReported(result) => {
                if result.runner != self.sender {
                    return Err("result runner differs from the message sender".into());
                }
                result.check_fields()?;
            }
            Body::SeedSettled(s) => {
                check_bytes("settlement note", &s.note, limits::MAX_NOTE_BYTES)?;
                if s.outcome == SettlementOutcome::Rejected && s.amount != 0 {
                    return Err("a rejected settlement must have amount 0".into());
                }
            }
            Body::SeedReassigned(r) => {
                if r.round == 0 {
                    return Err("a reassignment starts round 1 or later".into());
                }
            }
            Body::SeedEscalated(e) => {
                if e.step == 0 {
                    return Err("an escalation is step 1 or later".into());
                }
                check_winners(&e.winners)?;
            }
            Body::SeedCancelled(_) | Body::SeedFailed(_) => {}
        }
        Ok(())
    }
}

/// Winners of a replicated award or escalation: at most [`limits::MAX_REPLICAS`], distinct.
fn check_winners(winners: &[BidId]) -> Result<(), String> {
    if winners.len() > limits::MAX_REPLICAS as usize {
        return Err(format!(
            "{} winners, the limit is {}",
            winners.len(),
            limits::MAX_REPLICAS
        ));
    }
    let mut sorted: Vec<&BidId> = winners.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != winners.len() {
        return Err("a bid is named twice among the winners".into());
    }
    Ok(())
}

/// Checks a text field against its limit in bytes: `{what} is {n} bytes, the limit is {limit}`.
fn check_bytes(what: &str, text: &str, limit: usize) -> Result<(), String> {
    if text.len() > limit {
        return Err(format!(
            "{what} is {} bytes, the limit is {limit}",
            text.len()
        ));
    }
    Ok(())
}

/// Checks that `value` is between 1 and `max` (`unit` follows `max` in the message).
fn check_from_one(what: &str, value: u64, max: u64, unit: &str) -> Result<(), String> {
    if value == 0 || value > max {
        return Err(format!(
            "{what} must be between 1 and {max}{unit}, got {value}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names print as text that honours width and alignment, as the CLI's tables ask:
    /// `seed list` lines its STATUS column up with `{:<9}`.
    #[test]
    fn names_fill_the_width_they_are_given() {
        assert_eq!(format!("{:<9}|", SeedStatus::Open), "open     |");
        assert_eq!(format!("{:>6}|", SandboxLevel::Full), "  full|");
        assert_eq!(format!("{}", MessageKind::BidPlaced), "bid_placed");
    }

    /// A runner's sandbox record arrives from the network: its size and names are bounded.
    #[test]
    fn sandbox_records_from_peers_are_bounded() {
        let ok = SandboxInfo {
            level: SandboxLevel::Full,
            features: vec!["landlock_fs".into(), "pid_ns".into()],
            network: false,
        };
        assert!(ok.check_fields().is_ok());
        let too_many = SandboxInfo {
            features: (0..=limits::MAX_SANDBOX_FEATURES)
                .map(|i| format!("f{i}"))
                .collect(),
            ..ok.clone()
        };
        assert!(too_many.check_fields().unwrap_err().contains("limit"));
        for bad in ["", "UPPER", "with space", "\u{1b}[31m", &"x".repeat(33)] {
            let info = SandboxInfo {
                features: vec![bad.to_owned()],
                ..ok.clone()
            };
            assert!(info.check_fields().is_err(), "{bad:?} accepted");
        }
        // Absent from older nodes' results: decodes as level none, and is left out again.
        assert!(SandboxInfo::default().is_unknown());
        assert_eq!(SandboxInfo::default().level, SandboxLevel::None);
    }

    #[test]
    fn ids_parse_only_lowercase_hex_of_the_right_length() {
        assert!(SeedId::parse("00112233445566778899aabbccddeeff").is_ok());
        assert!(SeedId::parse("00112233445566778899AABBCCDDEEFF").is_err());
        assert!(SeedId::parse("0011").is_err());
        assert!(SeedId::parse("zz112233445566778899aabbccddeeff").is_err());
        let err = NodeId::parse("nope").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(err.to_string().contains("64 lowercase hex digits"), "{err}");
    }

    #[test]
    fn ids_round_trip_through_json_and_reject_bad_json() {
        let id = BidId::from_bytes([7; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<BidId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<BidId>("\"xyz\"").is_err());
    }

    #[test]
    fn reachability_never_goes_backwards() {
        use SeedStatus::*;
        let v1 = rules::V1;
        assert!(Open.can_reach(Settled, v1));
        assert!(Claimed.can_reach(Completed, v1));
        assert!(!Claimed.can_reach(Open, v1));
        assert!(!Completed.can_reach(Claimed, v1));
        assert!(Completed.can_reach(Claimed, rules::V3));
        assert!(!Settled.can_reach(Claimed, rules::V3));
        assert!(!Settled.can_reach(Completed, v1));
        assert!(!Cancelled.can_reach(Open, v1));
        assert!(!Expired.can_reach(Claimed, v1));
        // Rules 2: a failed round is reassigned; final statuses stay final.
        assert!(Claimed.can_reach(Open, rules::V2));
        assert!(Failed.can_reach(Open, rules::V2));
        assert!(!Settled.can_reach(Open, rules::V2));
        // Rules 3: forward only; inconclusive is final.
        let v3 = rules::V3;
        assert!(Claimed.can_reach(Inconclusive, v3));
        assert!(!Claimed.can_reach(Open, v3));
        assert!(!Inconclusive.can_reach(Claimed, v3));
        assert!(Inconclusive.is_final());
        for s in SeedStatus::ALL {
            assert!(s.can_reach(s, v1) && s.can_reach(s, rules::V2));
            assert_eq!(SeedStatus::parse(s.as_str()), Some(s));
        }
    }
}
