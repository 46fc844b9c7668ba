//! Who is calling: the tailnet identity of a peer, as WhoIs reports it.
//!
//! `tailnet` produces a [`Caller`] for every accepted connection; `policy`,
//! `audit` and the request handlers only consume it. It never comes from
//! anything the caller sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The verified identity of a peer on the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Tailnet address and port the connection came from.
    pub addr: SocketAddr,
    /// Stable node ID (survives renames).
    pub node_id: String,
    /// Node name as the control server reports it (FQDN, trailing dot removed).
    pub node: String,
    /// Login name of the node's owner. Tagged nodes have no user: `None`.
    pub user: Option<String>,
    /// ACL tags of the node, e.g. `tag:agent`.
    pub tags: Vec<String>,
    /// App capabilities granted to this peer by the tailnet policy
    /// (WhoIs `CapMap`): capability name -> list of JSON values.
    pub capabilities: BTreeMap<String, Vec<serde_json::Value>>,
}

impl Caller {
    /// A short human label: the user login, or the tags of a tagged node.
    pub fn label(&self) -> String {
        match &self.user {
            Some(user) => user.clone(),
            None if !self.tags.is_empty() => self.tags.join(","),
            None => self.node.clone(),
        }
    }
}
