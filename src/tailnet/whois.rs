//! WhoIs answers (tailscale's `apitype.WhoIsResponse` JSON) to [`Caller`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::identity::Caller;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WhoIs {
    node: Node,
    user_profile: Option<UserProfile>,
    #[serde(default)]
    cap_map: Option<BTreeMap<String, Option<Vec<serde_json::Value>>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(rename = "StableID", default)]
    stable_id: String,
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserProfile {
    #[serde(default)]
    login_name: String,
}

/// Parses a WhoIs answer for the peer at `addr`.
///
/// A tagged node's profile is the placeholder `tagged-devices`; such a node
/// has no user, only its tags.
pub(super) fn parse(addr: SocketAddr, json: &str) -> Result<Caller, serde_json::Error> {
    let who: WhoIs = serde_json::from_str(json)?;
    let tags = who.node.tags.unwrap_or_default();
    let user = match who.user_profile {
        Some(p) if tags.is_empty() && !p.login_name.is_empty() => Some(p.login_name),
        _ => None,
    };
    let capabilities = who
        .cap_map
        .unwrap_or_default()
        .into_iter()
        .map(|(cap, values)| (cap, values.unwrap_or_default()))
        .collect();
    Ok(Caller {
        addr,
        node_id: who.node.stable_id,
        node: who.node.name.trim_end_matches('.').to_string(),
        user,
        tags,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "100.64.0.7:41000".parse().expect("literal")
    }

    #[test]
    fn user_node() {
        let json = r#"{"Node":{"ID":3,"StableID":"nS1","Name":"laptop.tailnet.test.","Tags":null},
            "UserProfile":{"ID":1,"LoginName":"alice@","DisplayName":"Alice"},"CapMap":null}"#;
        let c = parse(addr(), json).expect("parses");
        assert_eq!(c.node, "laptop.tailnet.test");
        assert_eq!(c.node_id, "nS1");
        assert_eq!(c.user.as_deref(), Some("alice@"));
        assert!(c.tags.is_empty());
        assert!(c.capabilities.is_empty());
    }

    #[test]
    fn tagged_node_has_no_user() {
        let json = r#"{"Node":{"StableID":"n2","Name":"agent.tailnet.test.","Tags":["tag:agent"]},
            "UserProfile":{"LoginName":"tagged-devices"},
            "CapMap":{"example.com/cap/portcullis":[{"endpoints":["web"]}],"other":null}}"#;
        let c = parse(addr(), json).expect("parses");
        assert_eq!(c.user, None);
        assert_eq!(c.tags, vec!["tag:agent".to_string()]);
        assert_eq!(c.capabilities["example.com/cap/portcullis"].len(), 1);
        assert!(c.capabilities["other"].is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(addr(), "{}").is_err());
        assert!(parse(addr(), "not json").is_err());
    }
}
