//! App-capability grants from the tailnet policy file (WhoIs `CapMap`).
//!
//! Each value under the configured capability may be
//! `{"endpoints": ["web", "tick*"], "tools": ["tickets/search_*"]}`. A value
//! that is not exactly that shape (unknown keys, non-strings, invalid globs)
//! is ignored as a whole: an administrator's typo must never widen access.

use serde::Deserialize;

use crate::config::Glob;
use crate::identity::Caller;

/// The grants one caller holds through the capability.
#[derive(Debug, Default)]
pub(super) struct Grants {
    /// Endpoint-name globs.
    pub endpoints: Vec<Glob>,
    /// `endpoint/tool` globs.
    pub tools: Vec<Glob>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
}

impl Grants {
    /// Collects the well-formed grants of `capability` held by `caller`.
    pub fn of(caller: &Caller, capability: Option<&str>) -> Grants {
        let mut grants = Grants::default();
        let Some(values) = capability.and_then(|cap| caller.capabilities.get(cap)) else {
            return grants;
        };
        for value in values {
            let Ok(raw) = RawGrant::deserialize(value) else {
                continue;
            };
            let endpoints: Result<Vec<_>, _> =
                raw.endpoints.iter().map(|g| Glob::name(g)).collect();
            let tools: Result<Vec<_>, _> = raw
                .tools
                .iter()
                .map(|g| {
                    // A tools grant must name its endpoint so one grant cannot
                    // silently cover every endpoint's tools of the same name.
                    if g.split_once('/')
                        .is_some_and(|(e, t)| !e.is_empty() && !t.is_empty())
                    {
                        Glob::name(g)
                    } else {
                        Err(String::new())
                    }
                })
                .collect();
            if let (Ok(e), Ok(t)) = (endpoints, tools) {
                grants.endpoints.extend(e);
                grants.tools.extend(t);
            }
        }
        grants
    }

    /// True if nothing was granted.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.tools.is_empty()
    }

    /// The endpoint glob granting `endpoint`, if any.
    pub fn endpoint(&self, endpoint: &str) -> Option<&Glob> {
        self.endpoints.iter().find(|g| g.matches(endpoint))
    }

    /// The tool glob granting `endpoint/tool`, if any.
    pub fn tool(&self, endpoint: &str, tool: &str) -> Option<&Glob> {
        let full = format!("{endpoint}/{tool}");
        self.tools.iter().find(|g| g.matches(&full))
    }

    /// Whether some tools grant could match a tool of `endpoint`.
    pub fn any_tool_on(&self, endpoint: &str) -> Option<&Glob> {
        self.tools.iter().find(|g| {
            g.as_str()
                .split_once('/')
                .and_then(|(e, _)| Glob::name(e).ok())
                .is_some_and(|e| e.matches(endpoint))
        })
    }
}
