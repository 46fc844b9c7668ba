//! Backend targets: `host:port`, where host is an IP literal or a DNS name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// A backend address as written in the file. Names are resolved by the
/// runtime once per load, never here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// IP literal or DNS name.
    pub host: Host,
    /// TCP port, never 0.
    pub port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower-cased, without a trailing dot.
    Name(String),
}

impl Host {
    /// Whether the host is an IP literal that is loopback, private (RFC 1918,
    /// unique-local), link-local or CGNAT/tailnet (100.64.0.0/10). DNS names
    /// are not known to be private until resolved, so they return `false`.
    pub fn is_private(&self) -> bool {
        match self {
            Host::Ip(IpAddr::V4(ip)) => is_private_v4(*ip),
            Host::Ip(IpAddr::V6(ip)) => is_private_v6(*ip),
            Host::Name(name) => name == "localhost",
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Target {
    /// Parses `host:port`; IPv6 literals must be bracketed.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("invalid target {s:?}: expected \"[ipv6]:port\""))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| format!("invalid target {s:?}: {ip:?} is not an IPv6 address"))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| {
                format!("invalid target {s:?}: missing port (expected host:port)")
            })?;
            if host.contains(':') {
                return Err(format!(
                    "invalid target {s:?}: IPv6 addresses must be bracketed, e.g. \"[::1]:8080\""
                ));
            }
            (
                parse_host(host).map_err(|why| format!("invalid target {s:?}: {why}"))?,
                port,
            )
        };
        let port: u16 = port.parse().map_err(|_| {
            format!("invalid target {s:?}: port {port:?} is not a number in 1..=65535")
        })?;
        if port == 0 {
            return Err(format!("invalid target {s:?}: port 0 is not allowed"));
        }
        Ok(Target { host, port })
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("missing host".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    // An all-numeric last label is a mistyped IPv4 address, not a name.
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok || numeric_tld {
        return Err(format!(
            "{host:?} is neither an IP address nor a valid DNS name"
        ));
    }
    Ok(Host::Name(name))
}
