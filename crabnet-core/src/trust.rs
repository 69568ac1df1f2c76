//! The trust policy: which nodes a node admits (docs/PROTOCOL.md section 2f).
//!
//! The receive path asks [`Trust::check_frame`] about every frame right after its header is
//! parsed, before any signature check or database access: frames whose author is not admitted
//! are dropped as [`RejectReason::NotAdmitted`](crate::monitor::RejectReason::NotAdmitted).
//!
//! * `[trust] deny = [..]`: these node ids are never admitted.
//! * `[trust] allow = [..]`: when not empty, only these node ids are admitted (a node both
//!   allowed and denied is denied).

use serde::{Deserialize, Deserializer, Serialize};

use crate::envelope::Header;
use crate::model::NodeId;

/// The trust policy (section `[trust]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// When not empty, only these nodes are admitted.
    #[serde(deserialize_with = "allow_list")]
    pub allow: Vec<NodeId>,
    /// These nodes are never admitted (this wins over `allow`).
    #[serde(deserialize_with = "deny_list")]
    pub deny: Vec<NodeId>,
}

fn node_ids<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Vec<NodeId>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            NodeId::parse(t).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{key}: {t:?} is not a node id (64 lowercase hex digits)"
                ))
            })
        })
        .collect()
}

fn allow_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    node_ids(d, "trust.allow")
}

fn deny_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
    node_ids(d, "trust.deny")
}

/// A node's trust policy at run time.
#[derive(Debug)]
pub(crate) struct Trust {
    me: NodeId,
    allow: std::collections::HashSet<NodeId>,
    deny: std::collections::HashSet<NodeId>,
}

impl Trust {
    /// The policy of node `me` under `config`.
    pub fn new(me: &NodeId, config: &TrustConfig) -> Trust {
        Trust {
            me: me.clone(),
            allow: config.allow.iter().cloned().collect(),
            deny: config.deny.iter().cloned().collect(),
        }
    }

    /// Whether the author of a frame with this header is admitted; the error explains why not.
    /// Cheap: no signature check, no database access. This node's own frames are always
    /// admitted here (they are checked against its own keys).
    pub fn check_frame(&self, header: &Header) -> Result<(), String> {
        let sender = &header.sender;
        if *sender == self.me {
            return Ok(());
        }
        if self.deny.contains(sender) {
            return Err("the sender is in trust.deny".into());
        }
        if !self.allow.is_empty() && !self.allow.contains(sender) {
            return Err("the sender is not in trust.allow".into());
        }
        Ok(())
    }
}
