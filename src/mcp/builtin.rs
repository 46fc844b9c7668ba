//! Tool routing and the built-in tools `whoami` and `list_endpoints`, plus
//! the per-caller tool list.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::Tool;
use serde_json::{Value, json};

use crate::config::Kind;
use crate::identity::Caller;
use crate::policy::{Action, Policy, decide, visible_endpoints};

use super::error::McpError;
use super::federation::{Federation, UpstreamStatus};
use super::{HTTP_REQUEST_TOOL, LIST_ENDPOINTS_TOOL, NAMESPACE_SEPARATOR, WHOAMI_TOOL};

/// Longest tool name offered (the MCP spec's recommended limit).
const MAX_TOOL_NAME: usize = 128;

/// What a tool name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `whoami`.
    Whoami,
    /// `list_endpoints`.
    ListEndpoints,
    /// `http_request`.
    HttpRequest,
    /// `<endpoint>__<tool>` of a federated upstream.
    Upstream {
        /// Endpoint name.
        endpoint: String,
        /// Upstream tool name.
        tool: String,
    },
}

impl Route {
    /// Resolves a tool name; anything else is [`McpError::UnknownTool`].
    pub fn of(name: &str, federation: &Federation) -> Result<Route, McpError> {
        let unknown = || McpError::UnknownTool {
            name: name.to_owned(),
        };
        match name {
            WHOAMI_TOOL => return Ok(Route::Whoami),
            LIST_ENDPOINTS_TOOL => return Ok(Route::ListEndpoints),
            HTTP_REQUEST_TOOL => return Ok(Route::HttpRequest),
            _ => {}
        }
        let (endpoint, tool) = name.split_once(NAMESPACE_SEPARATOR).ok_or_else(unknown)?;
        if !federation.has(endpoint) || tool.is_empty() {
            return Err(unknown());
        }
        // A connected upstream that lacks the tool makes it unknown; while
        // the upstream is down the call goes on and fails as unavailable.
        if federation.offers(endpoint, tool) == Some(false) {
            return Err(unknown());
        }
        Ok(Route::Upstream {
            endpoint: endpoint.to_owned(),
            tool: tool.to_owned(),
        })
    }
}

fn object(value: Value) -> Arc<serde_json::Map<String, Value>> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

fn empty_schema() -> Arc<serde_json::Map<String, Value>> {
    object(json!({"type": "object", "properties": {}, "additionalProperties": false}))
}

/// Whether `name` can be offered as a tool name.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The tools `caller` may call now, in a stable order: built-ins, then
/// each connected upstream's permitted tools.
pub fn tools_for(policy: &Policy, caller: &Caller, federation: &Federation) -> Vec<Tool> {
    let mut tools = vec![
        Tool::new(
            WHOAMI_TOOL,
            "Who you are on the tailnet (node, user, tags, capabilities) and which endpoints and tools you may use.",
            empty_schema(),
        ),
        Tool::new(
            LIST_ENDPOINTS_TOOL,
            "The endpoints you may use: name, kind, description and tailnet hostname.",
            empty_schema(),
        ),
    ];
    let http_allowed = policy.endpoints().iter().any(|ep| {
        ep.kind == Kind::Http
            && decide(
                policy,
                caller,
                &Action::CallTool {
                    endpoint: &ep.name,
                    tool: HTTP_REQUEST_TOOL,
                },
            )
            .permit
    });
    if http_allowed {
        tools.push(Tool::new(
            HTTP_REQUEST_TOOL,
            "Send one HTTP request to an http endpoint (see list_endpoints). Redirects are returned, not followed; large bodies are truncated.",
            Arc::new(super::http_tool::input_schema()),
        ));
    }
    for (endpoint, upstream_tools) in federation.tools() {
        let listable = decide(
            policy,
            caller,
            &Action::ListTools {
                endpoint: &endpoint,
            },
        );
        if !listable.permit {
            continue;
        }
        for tool in upstream_tools.iter() {
            let action = Action::CallTool {
                endpoint: &endpoint,
                tool: &tool.name,
            };
            if !decide(policy, caller, &action).permit {
                continue;
            }
            let name = format!("{endpoint}{NAMESPACE_SEPARATOR}{}", tool.name);
            if !valid_tool_name(&name) {
                tracing::warn!(%endpoint, tool = %tool.name, "upstream tool name cannot be offered");
                continue;
            }
            let mut offered = tool.clone();
            offered.name = Cow::Owned(name);
            tools.push(offered);
        }
    }
    tools
}

/// The `whoami` result.
pub fn whoami(policy: &Policy, caller: &Caller, federation: &Federation) -> Value {
    let endpoints: Vec<&str> = visible_endpoints(policy, caller)
        .into_iter()
        .map(|e| e.name.as_str())
        .collect();
    let tools: Vec<String> = tools_for(policy, caller, federation)
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect();
    json!({
        "node": caller.node,
        "node_id": caller.node_id,
        "user": caller.user,
        "tags": caller.tags,
        "address": caller.addr.to_string(),
        "capabilities": caller.capabilities.keys().collect::<Vec<_>>(),
        "endpoints": endpoints,
        "tools": tools,
        "policy_fingerprint": policy.fingerprint(),
    })
}

/// The `list_endpoints` result.
pub fn list_endpoints(policy: &Policy, caller: &Caller, federation: &Federation) -> Value {
    let status = federation.status();
    let endpoints: Vec<Value> = visible_endpoints(policy, caller)
        .into_iter()
        .map(|ep| {
            let mut entry = json!({
                "name": ep.name,
                "kind": ep.kind.to_string(),
                "description": ep.description,
                "hostname": ep.hostname,
            });
            match ep.kind {
                Kind::Tcp => entry["ports"] = json!(ep.ports),
                Kind::Http => {
                    entry["methods"] = json!(ep.methods);
                    entry["paths"] = json!(ep.paths.iter().map(|g| g.as_str()).collect::<Vec<_>>());
                    entry["tool"] = json!(HTTP_REQUEST_TOOL);
                }
                Kind::Mcp => {
                    let up = status.iter().find(|(name, _)| *name == ep.name);
                    entry["upstream"] = json!(match up {
                        Some((_, UpstreamStatus::Ready { .. })) => "ready",
                        _ => "unavailable",
                    });
                    entry["tool_prefix"] = json!(format!("{}{NAMESPACE_SEPARATOR}", ep.name));
                }
            }
            entry
        })
        .collect();
    json!({ "endpoints": endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_the_mcp_alphabet() {
        assert!(valid_tool_name("tickets__search_v2.1-x"));
        assert!(!valid_tool_name("tickets__search tickets"));
        assert!(!valid_tool_name("tickets__s/t"));
        assert!(!valid_tool_name(&"a".repeat(129)));
    }
}
