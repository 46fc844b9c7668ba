//! Authorization: who may do what, as pure functions of
//! (policy, caller, action).
//!
//! [`Policy`] is built from a validated [`Config`] (cheap enough to rebuild
//! on every reload) and carries that config's fingerprint, so every
//! [`Decision`] can be recorded against the file version that made it.
//! [`decide`] is the only entry point; it denies by default and always says
//! why through a [`Reason`] with a stable code for audit and metrics.
//!
//! Identities are matched as follows: `user:` against the caller's login,
//! ignoring ASCII case; `tag:` against any of the caller's tags; `node:`
//! against the node's FQDN, its first DNS label (both ignoring case) or its
//! stable node ID; `group:` against any member; `*` against everyone. An
//! optional tailnet app capability can grant endpoints and tools centrally
//! (see `capability`), but never overrides a `tools_deny`.

mod capability;
mod path;
mod reason;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prop_tests;

use crate::config::{Config, Glob, Identity, Kind};
use crate::identity::Caller;

use capability::Grants;
pub use reason::Reason;

/// The policy in force, shared by devices and the MCP endpoint and
/// swappable by a reload: every decision loads the current value.
pub type SharedPolicy = std::sync::Arc<arc_swap::ArcSwap<Policy>>;

/// Wraps `policy` for sharing between devices, the MCP endpoint and a reloader.
pub fn shared_policy(policy: Policy) -> SharedPolicy {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(policy))
}

/// The built-in MCP tool that sends one HTTP request to an `http` endpoint.
pub const HTTP_REQUEST_TOOL: &str = "http_request";

/// What a caller is trying to do. Endpoints are named by their endpoint name
/// (not the prefixed hostname).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Open a TCP connection to an endpoint's device on `port`.
    Connect {
        /// Endpoint name.
        endpoint: &'a str,
        /// Tailnet port connected to.
        port: u16,
    },
    /// One HTTP request through an `http` endpoint (proxied or via the
    /// `http_request` tool); `path` may carry a query string.
    Http {
        /// Endpoint name.
        endpoint: &'a str,
        /// Request method as sent.
        method: &'a str,
        /// Request target (path and optional query) as sent.
        path: &'a str,
    },
    /// Use the MCP device at all.
    McpAccess,
    /// See an endpoint's tools in `tools/list`.
    ListTools {
        /// Endpoint name.
        endpoint: &'a str,
    },
    /// Call a tool on an endpoint: an upstream tool name on `mcp`
    /// endpoints, or [`HTTP_REQUEST_TOOL`] on `http` endpoints (which then
    /// also needs an [`Action::Http`] decision for the request itself).
    CallTool {
        /// Endpoint name.
        endpoint: &'a str,
        /// Tool name without the endpoint namespace.
        tool: &'a str,
    },
    /// Read the MCP device's `/metrics`.
    Metrics,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action may proceed.
    pub permit: bool,
    /// Why, for audit and for the caller's error message.
    pub reason: Reason,
}

impl Decision {
    fn permit(reason: Reason) -> Self {
        Decision {
            permit: true,
            reason,
        }
    }

    fn deny(reason: Reason) -> Self {
        Decision {
            permit: false,
            reason,
        }
    }
}

/// Authorization rules of one endpoint, apart from the file format.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    /// Endpoint name.
    pub name: String,
    /// Tailnet hostname of its device.
    pub hostname: String,
    /// How the endpoint forwards traffic.
    pub kind: Kind,
    /// Tailnet ports its device listens on.
    pub ports: Vec<u16>,
    /// Who may use it; groups resolved.
    pub allow: Vec<Identity>,
    /// Free text from the file.
    pub description: Option<String>,
    /// Allowed HTTP methods (`http` endpoints; empty otherwise).
    pub methods: Vec<String>,
    /// Allowed path globs (`http` endpoints; empty otherwise).
    pub paths: Vec<Glob>,
    /// Offered upstream tools (`mcp` endpoints; empty otherwise).
    pub tools_allow: Vec<Glob>,
    /// Never-offered upstream tools (`mcp` endpoints; empty otherwise).
    pub tools_deny: Vec<Glob>,
}

/// Authorization rules of the MCP device.
#[derive(Debug, Clone)]
pub struct McpPolicy {
    /// Who may use the MCP endpoint.
    pub allow: Vec<Identity>,
    /// Who may read `/metrics`.
    pub metrics_allow: Vec<Identity>,
    /// App capability that carries central grants.
    pub capability: Option<String>,
}

/// Everything [`decide`] needs, built from one config version.
#[derive(Debug, Clone)]
pub struct Policy {
    fingerprint: String,
    endpoints: Vec<EndpointPolicy>,
    mcp: Option<McpPolicy>,
}

impl Policy {
    /// Builds the policy of a validated config.
    pub fn from_config(config: &Config) -> Policy {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| EndpointPolicy {
                name: e.name.clone(),
                hostname: e.hostname.clone(),
                kind: e.kind,
                ports: e.ports.clone(),
                allow: e.allow.clone(),
                description: e.description.clone(),
                methods: e
                    .http
                    .as_ref()
                    .map(|h| h.methods.clone())
                    .unwrap_or_default(),
                paths: e.http.as_ref().map(|h| h.paths.clone()).unwrap_or_default(),
                tools_allow: e
                    .mcp
                    .as_ref()
                    .map(|m| m.tools_allow.clone())
                    .unwrap_or_default(),
                tools_deny: e
                    .mcp
                    .as_ref()
                    .map(|m| m.tools_deny.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let mcp = config.mcp.as_ref().map(|m| McpPolicy {
            allow: m.allow.clone(),
            metrics_allow: m.metrics_allow.clone(),
            capability: m.capability.clone(),
        });
        Policy {
            fingerprint: config.fingerprint.clone(),
            endpoints,
            mcp,
        }
    }

    /// Fingerprint of the config this policy was built from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// All endpoints, in file order.
    pub fn endpoints(&self) -> &[EndpointPolicy] {
        &self.endpoints
    }

    /// The endpoint with this name.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointPolicy> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The MCP device's rules, if configured.
    pub fn mcp(&self) -> Option<&McpPolicy> {
        self.mcp.as_ref()
    }

    fn grants(&self, caller: &Caller) -> Grants {
        Grants::of(
            caller,
            self.mcp.as_ref().and_then(|m| m.capability.as_deref()),
        )
    }
}

/// Whether `identity` covers `caller` (a group: any of its members).
pub fn matches(identity: &Identity, caller: &Caller) -> bool {
    match identity {
        Identity::User(login) => caller
            .user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(login)),
        Identity::Tag(tag) => caller.tags.iter().any(|t| t == tag),
        Identity::Node(node) => {
            let name = caller.node.trim_end_matches('.');
            let first = name.split('.').next().unwrap_or(name);
            name.eq_ignore_ascii_case(node)
                || first.eq_ignore_ascii_case(node)
                || caller.node_id == *node
        }
        Identity::Group { members, .. } => members.iter().any(|m| matches(m, caller)),
        Identity::Everyone => true,
    }
}

/// The first entry of `allow` covering `caller`, rendered for a reason:
/// `tag:agent`, or `group:sre (user:alice@example.com)`.
fn first_match(allow: &[Identity], caller: &Caller) -> Option<String> {
    allow.iter().find_map(|id| match id {
        Identity::Group { members, .. } => members
            .iter()
            .find(|m| matches(m, caller))
            .map(|m| format!("{id} ({m})")),
        other => matches(other, caller).then(|| other.to_string()),
    })
}

fn endpoint_access(
    policy: &Policy,
    ep: &EndpointPolicy,
    caller: &Caller,
    grants: &Grants,
) -> Option<Reason> {
    if let Some(rule) = first_match(&ep.allow, caller) {
        return Some(Reason::AllowedByIdentity { rule });
    }
    grants
        .endpoint(&ep.name)
        .map(|g| Reason::AllowedByCapability {
            capability: capability_name(policy),
            grant: format!("endpoints: {g}"),
        })
}

fn capability_name(policy: &Policy) -> String {
    policy
        .mcp
        .as_ref()
        .and_then(|m| m.capability.clone())
        .unwrap_or_default()
}

/// Decides whether `caller` may perform `action`. Pure and deny-by-default.
pub fn decide(policy: &Policy, caller: &Caller, action: &Action<'_>) -> Decision {
    let grants = policy.grants(caller);
    let lookup = |name: &str| {
        policy.endpoint(name).ok_or_else(|| {
            Decision::deny(Reason::UnknownEndpoint {
                endpoint: name.to_owned(),
            })
        })
    };
    let not_allowed = |ep: &EndpointPolicy| {
        Decision::deny(Reason::NotInAllowList {
            endpoint: ep.name.clone(),
        })
    };
    let wrong_kind = |ep: &EndpointPolicy, action: &'static str| {
        Decision::deny(Reason::WrongKind {
            endpoint: ep.name.clone(),
            kind: ep.kind,
            action,
        })
    };
    let result = match *action {
        Action::Connect { endpoint, port } => lookup(endpoint).and_then(|ep| {
            let allowed =
                endpoint_access(policy, ep, caller, &grants).ok_or_else(|| not_allowed(ep))?;
            if !ep.ports.contains(&port) {
                return Err(Decision::deny(Reason::PortNotAllowed {
                    endpoint: ep.name.clone(),
                    port,
                }));
            }
            Ok(Decision::permit(allowed))
        }),
        Action::Http {
            endpoint,
            method,
            path,
        } => lookup(endpoint).and_then(|ep| {
            if ep.kind != Kind::Http {
                return Err(wrong_kind(ep, "http"));
            }
            let allowed = endpoint_access(policy, ep, caller, &grants)
                .or_else(|| {
                    grants
                        .tool(&ep.name, HTTP_REQUEST_TOOL)
                        .map(|g| Reason::AllowedByCapability {
                            capability: capability_name(policy),
                            grant: format!("tools: {g}"),
                        })
                })
                .ok_or_else(|| not_allowed(ep))?;
            // HTTP methods are case-sensitive; "get" is not "GET".
            if !ep.methods.iter().any(|m| m == method) {
                return Err(Decision::deny(Reason::MethodNotAllowed {
                    endpoint: ep.name.clone(),
                    method: method.to_owned(),
                }));
            }
            let normal = path::normalise(path).map_err(|why| {
                Decision::deny(Reason::MalformedPath {
                    path: path.to_owned(),
                    why,
                })
            })?;
            if !ep.paths.iter().any(|g| g.matches(&normal)) {
                return Err(Decision::deny(Reason::PathNotAllowed {
                    endpoint: ep.name.clone(),
                    path: normal,
                }));
            }
            Ok(Decision::permit(allowed))
        }),
        Action::McpAccess => match &policy.mcp {
            None => Err(Decision::deny(Reason::McpNotConfigured)),
            Some(mcp) => match first_match(&mcp.allow, caller) {
                Some(rule) => Ok(Decision::permit(Reason::AllowedByIdentity { rule })),
                // Any well-formed grant implies the administrator meant this
                // caller to use the MCP device.
                None if !grants.is_empty() => Ok(Decision::permit(Reason::AllowedByCapability {
                    capability: capability_name(policy),
                    grant: "any grant".to_owned(),
                })),
                None => Err(Decision::deny(Reason::McpNotAllowed)),
            },
        },
        Action::ListTools { endpoint } => lookup(endpoint).and_then(|ep| {
            if ep.kind == Kind::Tcp {
                return Err(wrong_kind(ep, "tools"));
            }
            endpoint_access(policy, ep, caller, &grants)
                .or_else(|| {
                    grants
                        .any_tool_on(&ep.name)
                        .map(|g| Reason::AllowedByCapability {
                            capability: capability_name(policy),
                            grant: format!("tools: {g}"),
                        })
                })
                .map(Decision::permit)
                .ok_or_else(|| not_allowed(ep))
        }),
        Action::CallTool { endpoint, tool } => {
            lookup(endpoint).and_then(|ep| call_tool(policy, ep, caller, &grants, tool))
        }
        Action::Metrics => match &policy.mcp {
            None => Err(Decision::deny(Reason::McpNotConfigured)),
            Some(mcp) => first_match(&mcp.metrics_allow, caller)
                .map(|rule| Decision::permit(Reason::AllowedByIdentity { rule }))
                .ok_or(Decision::deny(Reason::MetricsNotAllowed)),
        },
    };
    result.unwrap_or_else(|deny| deny)
}

fn call_tool(
    policy: &Policy,
    ep: &EndpointPolicy,
    caller: &Caller,
    grants: &Grants,
    tool: &str,
) -> Result<Decision, Decision> {
    let tool_grant = grants
        .tool(&ep.name, tool)
        .map(|g| Reason::AllowedByCapability {
            capability: capability_name(policy),
            grant: format!("tools: {g}"),
        });
    let access = endpoint_access(policy, ep, caller, grants);
    if tool_grant.is_none() && access.is_none() {
        return Err(Decision::deny(Reason::NotInAllowList {
            endpoint: ep.name.clone(),
        }));
    }
    let not_allowed = || {
        Decision::deny(Reason::ToolNotAllowed {
            endpoint: ep.name.clone(),
            tool: tool.to_owned(),
        })
    };
    match ep.kind {
        Kind::Tcp => Err(Decision::deny(Reason::WrongKind {
            endpoint: ep.name.clone(),
            kind: ep.kind,
            action: "tools",
        })),
        Kind::Http if tool == HTTP_REQUEST_TOOL => Ok(Decision::permit(
            access.or(tool_grant).ok_or_else(not_allowed)?,
        )),
        Kind::Http => Err(not_allowed()),
        Kind::Mcp => {
            // Deny wins over every grant, including the capability's.
            if let Some(pattern) = ep.tools_deny.iter().find(|g| g.matches(tool)) {
                return Err(Decision::deny(Reason::ToolDenied {
                    endpoint: ep.name.clone(),
                    tool: tool.to_owned(),
                    pattern: pattern.to_string(),
                }));
            }
            if let Some(reason) = tool_grant {
                return Ok(Decision::permit(reason));
            }
            match access {
                Some(reason) if ep.tools_allow.iter().any(|g| g.matches(tool)) => {
                    Ok(Decision::permit(reason))
                }
                _ => Err(not_allowed()),
            }
        }
    }
}

/// The endpoints `caller` can use in some way, in file order: for
/// `list_endpoints` and `whoami`.
pub fn visible_endpoints<'p>(policy: &'p Policy, caller: &Caller) -> Vec<&'p EndpointPolicy> {
    let grants = policy.grants(caller);
    policy
        .endpoints
        .iter()
        .filter(|ep| {
            endpoint_access(policy, ep, caller, &grants).is_some()
                || grants.any_tool_on(&ep.name).is_some()
        })
        .collect()
}
