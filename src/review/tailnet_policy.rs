//! Which peers the connector's devices will see under a tailnet policy file
//! (Tailscale's or headscale's `acls` and `grants`).
//!
//! Two nodes see each other (each is in the other's network map) when some
//! rule lets either open connections to the other. A connector's devices
//! only accept connections, so under the recommended policy
//! (`examples/tailnet-policy.hujson`) a device sees the agents and nothing
//! else. A policy under which devices see each other makes every device
//! carry every other one as a peer, which costs memory and CPU in every
//! node of the process; one under which devices may open connections makes
//! a device a way into the tailnet. Both are warnings.
//!
//! The tailnet's actual nodes are not known here, so peers are named by
//! the selectors the policy uses (`tag:agent`, `group:sre`, `*`).

use serde::Serialize;
use serde_json::Value;

use super::Warning;

/// How the devices stand under one tailnet policy file.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Policy file as given.
    pub file: String,
    /// Tags the devices carry, as assumed for the analysis.
    pub device_tags: Vec<String>,
    /// Who reaches the devices: each peer selector with the rules that
    /// let it, in file order. Every device sees these peers.
    pub inbound: Vec<PeerRule>,
    /// What the devices may reach; each is also a peer of every device.
    pub outbound: Vec<PeerRule>,
    /// Whether the devices see each other.
    pub devices_see_each_other: bool,
    /// Findings, with the rule they are about as the path.
    pub warnings: Vec<Warning>,
}

/// A peer selector and the rules that make it a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRule {
    /// The selector as written (`tag:agent`, `*`, `group:sre`, `10.0.0.0/8`).
    pub peers: String,
    /// Rule paths, e.g. `grants[0]`, `acls[2]`.
    pub rules: Vec<String>,
}

/// Whether a selector names the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    /// An address or host alias: cannot tell without the devices' IPs.
    Unknown,
}

/// Analyses policy `text` (HuJSON) for devices tagged `device_tags`.
pub fn analyse(file: &str, text: &str, device_tags: &[String]) -> Result<PeerView, String> {
    let policy = super::hujson::parse(text).map_err(|e| format!("{file}: {e}"))?;
    let object = policy
        .as_object()
        .ok_or_else(|| format!("{file}: a policy file is a JSON object"))?;
    let mut view = PeerView {
        file: file.to_owned(),
        device_tags: device_tags.to_vec(),
        inbound: Vec::new(),
        outbound: Vec::new(),
        devices_see_each_other: false,
        warnings: Vec::new(),
    };
    for section in ["acls", "grants"] {
        let Some(rules) = object.get(section) else {
            continue;
        };
        let rules = rules
            .as_array()
            .ok_or_else(|| format!("{file}: `{section}` must be a list"))?;
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("{section}[{i}]");
            if rule
                .get("action")
                .and_then(Value::as_str)
                .is_some_and(|a| a != "accept")
            {
                continue;
            }
            let src = strings(rule, "src", &path, file)?;
            let dst: Vec<String> = strings(rule, "dst", &path, file)?
                .into_iter()
                .map(|d| {
                    if section == "acls" {
                        strip_ports(&d)
                    } else {
                        d
                    }
                })
                .collect();
            view.add_rule(&path, &src, &dst, device_tags);
        }
    }
    view.warn(device_tags);
    Ok(view)
}

fn strings(rule: &Value, key: &str, path: &str, file: &str) -> Result<Vec<String>, String> {
    match rule.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{file}: {path}.{key}: entries must be strings"))
            })
            .collect(),
        Some(_) => Err(format!("{file}: {path}.{key} must be a list")),
    }
}

/// `tag:db:5432` -> `tag:db`, `*:*` -> `*`, `[fd7a::1]:80` -> `fd7a::1`.
fn strip_ports(dst: &str) -> String {
    if let Some(rest) = dst.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match dst.rsplit_once(':') {
        Some((host, _ports)) if !host.is_empty() => host.to_owned(),
        _ => dst.to_owned(),
    }
}

/// Whether `selector` names a device tagged `tags`. Devices are tagged
/// nodes: user, group and member selectors never name them.
fn names_devices(selector: &str, tags: &[String]) -> Match {
    match selector {
        "*" | "autogroup:tagged" | "0.0.0.0/0" | "::/0" => Match::Yes,
        s if s.starts_with("tag:") => {
            if tags.iter().any(|t| t == s) {
                Match::Yes
            } else {
                Match::No
            }
        }
        s if s.starts_with("autogroup:") || s.starts_with("group:") || s.contains('@') => Match::No,
        _ => Match::Unknown,
    }
}

impl PeerView {
    fn add_rule(&mut self, path: &str, src: &[String], dst: &[String], tags: &[String]) {
        let any =
            |list: &[String], want: Match| list.iter().any(|s| names_devices(s, tags) == want);
        if any(dst, Match::Yes) {
            for s in src {
                add(&mut self.inbound, s, path);
            }
        }
        if any(src, Match::Yes) {
            for d in dst {
                add(&mut self.outbound, d, path);
            }
        }
        if any(src, Match::Yes) && any(dst, Match::Yes) {
            self.devices_see_each_other = true;
        }
        for s in src.iter().chain(dst) {
            if names_devices(s, tags) == Match::Unknown {
                self.warnings.push(Warning {
                    code: "tailnet_policy_unknown_selector",
                    message: format!(
                        "{s:?} names addresses or hosts; whether it covers the devices depends on their tailnet addresses"
                    ),
                    path: path.to_owned(),
                });
            }
        }
    }

    fn warn(&mut self, tags: &[String]) {
        let rules = |list: &[PeerRule], pred: &dyn Fn(&str) -> bool| -> Vec<String> {
            let mut out: Vec<String> = list
                .iter()
                .filter(|r| pred(&r.peers))
                .flat_map(|r| r.rules.iter().cloned())
                .collect();
            out.dedup();
            out
        };
        if self.devices_see_each_other {
            let paths = rules(&self.outbound, &|p| names_devices(p, tags) == Match::Yes);
            self.warnings.push(Warning {
                code: "tailnet_devices_see_each_other",
                message: "devices can reach each other, so every device carries every other one \
                          as a peer (memory and CPU in every node); grant only agents -> devices"
                    .to_owned(),
                path: paths.join(", "),
            });
        }
        // Anything but the devices' own tags: `*` covers the rest of the
        // tailnet too.
        let elsewhere = |p: &str| !tags.iter().any(|t| t == p);
        let reach_out = rules(&self.outbound, &elsewhere);
        if !reach_out.is_empty() {
            let peers: Vec<&str> = self
                .outbound
                .iter()
                .filter(|r| elsewhere(&r.peers))
                .map(|r| r.peers.as_str())
                .collect();
            self.warnings.push(Warning {
                code: "tailnet_devices_reach_out",
                message: format!(
                    "devices may open connections to {}: a device only accepts, so no rule should have it as a source",
                    peers.join(", ")
                ),
                path: reach_out.join(", "),
            });
        }
        let everyone = rules(&self.inbound, &|p| p == "*");
        if !everyone.is_empty() {
            self.warnings.push(Warning {
                code: "tailnet_everyone_reaches_devices",
                message: "every node of the tailnet reaches the devices; only endpoints.toml's allow lists stand between them and the endpoints"
                    .to_owned(),
                path: everyone.join(", "),
            });
        }
        if self.inbound.is_empty() {
            self.warnings.push(Warning {
                code: "tailnet_devices_unreachable",
                message: format!(
                    "no rule lets anything reach {}: no agent can use the devices",
                    tags.join(", ")
                ),
                path: String::new(),
            });
        }
    }
}

impl PeerView {
    /// The Markdown section `review` prints for `--tailnet-policy`.
    pub fn render_markdown(&self) -> String {
        use std::fmt::Write;
        let mut out = format!("## Tailnet policy: {}\n\n", self.file);
        let _ = writeln!(
            out,
            "Devices carry {}. Each device will see these peers:\n",
            self.device_tags.join(", ")
        );
        let rows = self
            .inbound
            .iter()
            .map(|r| (r, "reaches the devices"))
            .chain(self.outbound.iter().map(|r| (r, "reached by the devices")));
        let mut any = false;
        for (rule, how) in rows {
            any = true;
            let _ = writeln!(out, "- `{}`: {how} ({})", rule.peers, rule.rules.join(", "));
        }
        if !any {
            out.push_str("- none\n");
        }
        let _ = writeln!(
            out,
            "\nDevices see each other: {}.",
            if self.devices_see_each_other {
                "**yes**"
            } else {
                "no"
            }
        );
        if !self.warnings.is_empty() {
            out.push_str("\n### Tailnet policy warnings\n\n");
            for w in &self.warnings {
                let at = if w.path.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", w.path)
                };
                let _ = writeln!(out, "- `{}`{at}: {}", w.code, w.message);
            }
        }
        out
    }
}

fn add(list: &mut Vec<PeerRule>, peers: &str, path: &str) {
    match list.iter_mut().find(|r| r.peers == peers) {
        Some(r) if r.rules.last().is_some_and(|p| p == path) => {}
        Some(r) => r.rules.push(path.to_owned()),
        None => list.push(PeerRule {
            peers: peers.to_owned(),
            rules: vec![path.to_owned()],
        }),
    }
}

#[cfg(test)]
#[path = "tailnet_policy_tests.rs"]
mod tests;
